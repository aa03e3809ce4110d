"""``vlafoundry data inspect`` / ``verify`` for LeRobot v3.0 folders (see docs/interop.md).

:func:`verify_lerobot` checks the structure lerobot 0.6.1 writes and reads, each problem named with what was
expected and what was found: ``meta/info.json`` (version, required keys, feature dtypes and shapes, totals),
``meta/tasks.parquet`` (indices 0..T-1), ``meta/episodes`` (indices 0..E-1, lengths, ``dataset_from_index`` /
``dataset_to_index`` ranges and the data file each names) against the rows of ``data/`` (per episode: its rows,
``index``, ``frame_index``, ``timestamp`` = frame_index / fps, ``task_index``, value shapes), ``meta/stats.json``
(stat shapes against feature shapes) and the camera videos (file present, frame size, as many frames in each
episode's ``[from_timestamp, to_timestamp)`` window as the episode has frames). :func:`inspect_lerobot` summarises.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.data.lerobot import (
    CODEBASE_VERSION,
    EPISODES_DIR,
    EXTRA_FILE,
    IMAGE_DTYPES,
    INDEX_FEATURES,
    INFO_FILE,
    STATS_FILE,
    TASKS_FILE,
    column_array,
    load_info,
    read_stats,
    read_table,
    read_tasks,
)
from vlafoundry.io import read_json

#: info.json keys lerobot 0.6.1 needs to open a dataset
REQUIRED_INFO = ("codebase_version", "fps", "features", "total_episodes", "total_frames", "total_tasks",
                 "data_path", "chunks_size")
EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                   "dataset_to_index")
VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
TIME_TOL_S = 1e-4  # lerobot's own tolerance on timestamps


def _cameras(features: dict[str, Any]) -> list[str]:
    return sorted(k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") in IMAGE_DTYPES)


def _check_info(info: dict[str, Any]) -> list[str]:
    p: list[str] = []
    if info.get("codebase_version") != CODEBASE_VERSION:
        p.append(f"{INFO_FILE}: codebase_version expected {CODEBASE_VERSION!r}, got {info.get('codebase_version')!r}")
    missing = [k for k in REQUIRED_INFO if k not in info]
    if missing:
        p.append(f"{INFO_FILE}: missing keys {missing} (expected all of {list(REQUIRED_INFO)})")
    fps = info.get("fps")
    if "fps" in info and not (isinstance(fps, int) and fps > 0):
        p.append(f"{INFO_FILE}: fps expected a positive integer, got {fps!r}")
    feats = info.get("features")
    if not isinstance(feats, dict):
        return p + [f"{INFO_FILE}: features expected a mapping, got {type(feats).__name__}"]
    for key in INDEX_FEATURES:
        if key not in feats:
            p.append(f"{INFO_FILE}: feature {key!r} missing (every LeRobot frame has {list(INDEX_FEATURES)})")
    for key, f in feats.items():
        if not isinstance(f, dict) or "dtype" not in f or "shape" not in f:
            p.append(f"{INFO_FILE}: feature {key!r} expected dtype and shape, got {f!r}")
            continue
        shape = f["shape"]
        if not (isinstance(shape, list) and shape and all(isinstance(v, int) and v > 0 for v in shape)):
            p.append(f"{INFO_FILE}: feature {key!r} shape expected a list of positive integers, got {shape!r}")
        elif f["dtype"] in IMAGE_DTYPES and (len(shape) != 3 or shape[-1] not in (1, 3, 4)):
            p.append(f"{INFO_FILE}: camera {key!r} shape expected [height, width, channels], got {shape}")
    if any(f.get("dtype") == "video" for f in feats.values() if isinstance(f, dict)) and not info.get("video_path"):
        p.append(f"{INFO_FILE}: video features {[k for k in _cameras(feats) if feats[k]['dtype'] == 'video']} but "
                 f"video_path is {info.get('video_path')!r} (expected a path template)")
    return p


def _check_stats(root: Path, feats: dict[str, Any]) -> list[str]:
    if not (root / STATS_FILE).is_file():
        return [f"{STATS_FILE}: missing (lerobot writes per-feature statistics at finalize())"]
    p: list[str] = []
    try:
        stats = read_stats(root)
    except ValueError as exc:
        return [f"{STATS_FILE}: unreadable ({exc})"]
    for key, entry in stats.items():
        if key not in feats:
            p.append(f"{STATS_FILE}: statistics for {key!r}, which is not a feature in {INFO_FILE}")
            continue
        shape = list(feats[key]["shape"])
        want = [shape[-1], 1, 1] if feats[key]["dtype"] in IMAGE_DTYPES else shape
        for stat, value in entry.items():
            got = list(np.shape(value))
            expected = [1] if stat == "count" else want
            if got != expected:
                p.append(f"{STATS_FILE}: {key}/{stat} shape expected {expected}, got {got}")
    return p


def _check_tasks(root: Path, total: Any) -> tuple[list[str], dict[int, str]]:
    try:
        tasks = read_tasks(root)
    except (OSError, ValueError, KeyError) as exc:
        return [f"{TASKS_FILE}: unreadable ({exc})"], {}
    p = []
    if sorted(tasks) != list(range(len(tasks))):
        p.append(f"{TASKS_FILE}: task_index expected 0..{len(tasks) - 1}, got {sorted(tasks)}")
    if total is not None and len(tasks) != total:
        p.append(f"{TASKS_FILE}: {len(tasks)} tasks, {INFO_FILE} total_tasks says {total}")
    return p, tasks


def _check_frames(root: Path, info: dict[str, Any], episodes: list[dict[str, Any]], tasks: dict[int, str]
                  ) -> list[str]:
    """data/ rows against the episode table: per episode its rows, index range, frame_index, timestamp, task."""
    feats, fps = info["features"], info.get("fps") or 1
    p: list[str] = []
    cols = [k for k, f in feats.items() if f.get("dtype") != "video"]
    try:
        table = read_table(root, "data")
    except (OSError, ValueError) as exc:
        return [f"data/: unreadable ({exc})"]
    absent = [c for c in cols if c not in table.column_names]
    if absent:
        p.append(f"data/: columns {absent} missing (features in {INFO_FILE}; the files have {table.column_names})")
    if info.get("total_frames") is not None and table.num_rows != info["total_frames"]:
        p.append(f"data/: {table.num_rows} rows, {INFO_FILE} total_frames says {info['total_frames']}")
    arrays: dict[str, np.ndarray] = {}
    for c in cols:
        if c in absent or feats[c]["dtype"] in IMAGE_DTYPES or feats[c]["dtype"] == "string":
            continue
        try:
            arrays[c] = column_array(table, c, feats[c]["shape"], "float64" if feats[c]["dtype"] != "bool" else "bool")
        except (ValueError, TypeError) as exc:
            p.append(f"data/: feature {c!r}: {exc}")
    if any(c not in arrays for c in INDEX_FEATURES):
        return p
    ep_col = arrays["episode_index"].astype(np.int64)
    for ep in episodes:
        e, n = int(ep["episode_index"]), int(ep["length"])
        lo, hi = int(ep["dataset_from_index"]), int(ep["dataset_to_index"])
        rows = np.flatnonzero(ep_col == e)
        if len(rows) != n:
            p.append(f"episode {e}: length {n} in {EPISODES_DIR}, {len(rows)} rows in data/")
            continue
        idx = arrays["index"][rows].astype(np.int64)
        if not np.array_equal(np.sort(idx), np.arange(lo, hi)):
            p.append(f"episode {e}: index expected {lo}..{hi - 1} (dataset_from_index..dataset_to_index - 1), got "
                     f"{int(idx.min())}..{int(idx.max())} ({len(idx)} rows)")
        order = rows[np.argsort(idx, kind="stable")]
        frame = arrays["frame_index"][order].astype(np.int64)
        if not np.array_equal(frame, np.arange(n)):
            p.append(f"episode {e}: frame_index expected 0..{n - 1} in index order, got {frame[:8].tolist()}...")
        ts = arrays["timestamp"][order]
        bad = np.abs(ts - frame / fps) > TIME_TOL_S
        if bad.any():
            i = int(np.argmax(bad))
            p.append(f"episode {e}: timestamp of frame {int(frame[i])} expected {frame[i] / fps:.4f} s "
                     f"(frame_index / fps), got {ts[i]:.4f} s")
        unknown = sorted({int(t) for t in arrays["task_index"][rows]} - set(tasks))
        if tasks and unknown:
            p.append(f"episode {e}: task_index {unknown} not in {TASKS_FILE} (indices {sorted(tasks)})")
    return p


def _check_episodes(root: Path, info: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        episodes = read_table(root, EPISODES_DIR).to_pylist()
    except (OSError, ValueError) as exc:
        return [f"{EPISODES_DIR}: unreadable ({exc})"], []
    p: list[str] = []
    if not episodes:
        return [f"{EPISODES_DIR}: no episodes"], []
    absent = [c for c in EPISODE_COLUMNS if c not in episodes[0]]
    if absent:
        return [f"{EPISODES_DIR}: columns {absent} missing (expected {list(EPISODE_COLUMNS)})"], []
    episodes.sort(key=lambda r: int(r["episode_index"]))
    idx = [int(r["episode_index"]) for r in episodes]
    if idx != list(range(len(idx))):
        p.append(f"{EPISODES_DIR}: episode_index expected 0..{len(idx) - 1} once each, got {idx[:10]}"
                 + ("..." if len(idx) > 10 else ""))
    if info.get("total_episodes") is not None and len(idx) != info["total_episodes"]:
        p.append(f"{EPISODES_DIR}: {len(idx)} episodes, {INFO_FILE} total_episodes says {info['total_episodes']}")
    total = sum(int(r["length"]) for r in episodes)
    if info.get("total_frames") is not None and total != info["total_frames"]:
        p.append(f"{EPISODES_DIR}: lengths sum to {total}, {INFO_FILE} total_frames says {info['total_frames']}")
    expected_from = 0
    for r in episodes:
        e, n, lo, hi = (int(r[k]) for k in ("episode_index", "length", "dataset_from_index", "dataset_to_index"))
        if hi - lo != n or lo != expected_from:
            p.append(f"episode {e}: dataset_from_index..dataset_to_index expected {expected_from}..{expected_from + n} "
                     f"(length {n}, after the previous episode), got {lo}..{hi}")
        expected_from = lo + n if hi - lo == n else expected_from + n
        data = root / str(info.get("data_path", "")).format(chunk_index=int(r["data/chunk_index"]),
                                                          file_index=int(r["data/file_index"]))
        if not data.is_file():
            p.append(f"episode {e}: data file {data.relative_to(root)} missing")
    return p, episodes


def _check_videos(root: Path, info: dict[str, Any], episodes: list[dict[str, Any]]) -> list[str]:
    from vlafoundry.data.video import _av, probe_video

    av = _av()

    feats, fps = info["features"], info.get("fps") or 1
    template = info.get("video_path") or DEFAULT_VIDEO_PATH
    p: list[str] = []
    for key in [k for k in _cameras(feats) if feats[k]["dtype"] == "video"]:
        cols = [f"videos/{key}/{c}" for c in VIDEO_COLUMNS]
        if episodes and any(c not in episodes[0] for c in cols):
            p.append(f"{EPISODES_DIR}: camera {key!r} needs columns {cols}; missing "
                     f"{[c for c in cols if c not in episodes[0]]}")
            continue
        probed: dict[Path, Any] = {}
        h, w = feats[key]["shape"][:2]
        for r in episodes:
            e, n = int(r["episode_index"]), int(r["length"])
            rel = template.format(video_key=key, chunk_index=int(r[cols[0]]), file_index=int(r[cols[1]]))
            path = root / rel
            if path not in probed:
                if not path.is_file():
                    probed[path] = None
                    p.append(f"{rel}: missing (camera {key!r}, episode {e} and any others in that file)")
                else:
                    try:
                        probed[path] = probe_video(path)
                    except (OSError, ValueError, av.FFmpegError) as exc:  # PyAV's errors for damaged files
                        probed[path] = None
                        p.append(f"{rel}: cannot be decoded ({type(exc).__name__}: {exc})")
                        continue
                    if probed[path][1] != (h, w):
                        p.append(f"{rel}: frames of {probed[path][1][0]}x{probed[path][1][1]}, feature {key!r} "
                                 f"says {h}x{w}")
            if probed[path] is None:
                continue
            times = probed[path][0]
            t0, t1 = float(r[cols[2]]), float(r[cols[3]])
            half = 0.5 / fps
            got = int(((times >= t0 - half) & (times < t1 - half)).sum())
            if got != n or abs((t1 - t0) - n / fps) > TIME_TOL_S + half:
                p.append(f"{rel}: episode {e} expected {n} frames in [{t0:.3f}, {t1:.3f}) s, got {got} "
                         f"(the file holds {len(times)} frames)")
    return p


def verify_lerobot(root: str | os.PathLike[str]) -> list[str]:
    """Every problem found in the LeRobot v3.0 dataset at ``root`` (empty: OK)."""
    root = Path(root)
    if not (root / INFO_FILE).is_file():
        return [f"{INFO_FILE}: missing (not a LeRobot dataset)"]
    try:
        info = read_json(root / INFO_FILE)
    except (OSError, ValueError) as exc:
        return [f"{INFO_FILE}: unreadable ({exc})"]
    problems = _check_info(info)
    if not isinstance(info.get("features"), dict) or "data_path" not in info:
        return problems
    feats = info["features"]
    problems += _check_stats(root, feats)
    task_problems, tasks = _check_tasks(root, info.get("total_tasks"))
    problems += task_problems
    ep_problems, episodes = _check_episodes(root, info)
    problems += ep_problems
    if episodes:
        problems += _check_frames(root, info, episodes, tasks)
        problems += _check_videos(root, info, episodes)
    return problems


def inspect_lerobot(root: str | os.PathLike[str]) -> str:
    """A human summary: version, fps, episodes/frames, features, cameras, tasks, statistics, the feature map."""
    root = Path(root)
    meta = load_info(root)
    info, feats = meta.info, meta.features
    episodes = read_table(root, EPISODES_DIR, columns=["length"]).column("length").to_pylist()
    tasks = read_tasks(root)
    stats = read_stats(root)
    lines = [
        f"LeRobot dataset {root}",
        f"  format      {info.get('codebase_version')} (robot_type {info.get('robot_type')})",
        f"  fps         {info.get('fps')}",
        f"  episodes    {len(episodes)} (info.json: {info.get('total_episodes')}), frames {sum(episodes)} "
        f"(info.json: {info.get('total_frames')}), length min/mean/max "
        + (f"{min(episodes)}/{np.mean(episodes):.1f}/{max(episodes)}" if episodes else "-"),
        f"  tasks       {len(tasks)}",
    ]
    lines += [f"    [{i}] {t}" for i, t in sorted(tasks.items())[:10]]
    if len(tasks) > 10:
        lines.append(f"    ... {len(tasks) - 10} more")
    lines.append("  features")
    for key, f in feats.items():
        if key in INDEX_FEATURES:
            continue
        kind = {"video": "camera, video", "image": "camera, image"}.get(f["dtype"], "")
        codec = (f.get("info") or {}).get("video.codec")
        lines.append(f"    {key:32s} {f['dtype']:8s} {f['shape']}" + (f"  ({kind}" + (f" {codec}" if codec else "")
                                                                            + ")" if kind else ""))
    lines.append(f"    (index columns: {', '.join(k for k in INDEX_FEATURES if k in feats)})")
    cams = _cameras(feats)
    lines.append(f"  cameras     {len(cams)}" + (": " + ", ".join(f"{k} ({feats[k]['dtype']})" for k in cams)
                                                  if cams else ""))
    with_stats = [k for k in feats if k in stats]
    without = [k for k in feats if k not in stats]
    lines.append("  stats.json  " + ("missing" if not (root / STATS_FILE).is_file() else
                                       f"{len(with_stats)}/{len(feats)} features" + (f" (none for {without})"
                                                                                      if without else "")))
    m = meta.mapping
    lines.append(f"  vlafoundry  state={m.state}, action={m.action} ({'discrete' if m.discrete else 'continuous'}), "
                 f"image={m.image}" + (" (stacked (K, H, W, 3) in this order)" if len(m.cameras) > 1 else ""))
    env = (meta.extra.get("env") or {}).get("name")
    lines.append(f"  env         {env} (from {EXTRA_FILE})" if env else
                 "  env         none recorded (closed-loop evaluation needs --data.env)")
    return "\n".join(lines)
