"""Write a LeRobot v3.0 dataset from vlafoundry episodes (``vlafoundry data export DIR --format lerobot``).

Features written (see docs/interop.md): ``observation.state`` float32 (S,), ``action`` int64 (1,) [discrete] or
float32 (A,), ``next.reward`` float32 (1,), ``next.done`` bool (1,), the five index columns, and the image:
RGB frames as the MP4 video feature ``observation.images.rgb`` (K cameras, frames (K, H, W, 3): one video feature
per camera, named by ``camera_keys``, default ``observation.images.cam0..``); BabyAI's symbolic grids (object/colour/state codes,
not a camera image) as the uint8 feature ``observation.grid`` (H, W, 3). The instruction is the LeRobot task.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.data.episodes import Episode
from vlafoundry.data.lerobot import (
    CODEBASE_VERSION,
    EPISODES_DIR,
    EXTRA_FILE,
    INFO_FILE,
    STATS_FILE,
    TASKS_FILE,
    _pa,
)
from vlafoundry.io import write_json_atomic

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CHUNKS_SIZE = 1000
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
RGB_KEY = "observation.images.rgb"
GRID_KEY = "observation.grid"


def feature_stats(x: np.ndarray, image: bool = False) -> dict[str, list[Any]]:
    """LeRobot's statistics of one feature: per dimension min/max/mean/std, count and quantiles q01..q99.

    Images (N, H, W, C) uint8: per channel, scaled to [0, 1], shaped (C, 1, 1) as LeRobot stores them."""
    x = np.asarray(x)
    if image:
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    else:
        flat = x.reshape(len(x), -1).astype(np.float64)
    out: dict[str, Any] = {
        "min": flat.min(0), "max": flat.max(0), "mean": flat.mean(0), "std": flat.std(0),
        **{f"q{round(q * 100):02d}": np.quantile(flat, q, axis=0) for q in QUANTILES},
    }
    shape = (x.shape[-1], 1, 1) if image else (x.shape[1:] or (1,))
    res: dict[str, list[Any]] = {k: np.asarray(v).reshape(shape).tolist() for k, v in out.items()}
    res["count"] = [len(x)]
    return res


def _file_index(k: int) -> dict[str, int]:
    return {"chunk_index": k // CHUNKS_SIZE, "file_index": k % CHUNKS_SIZE}


def _fixed_list(values: np.ndarray, pa_type: Any) -> Any:
    pa = _pa()
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=pa_type)
    for dim in reversed(values.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, int(dim))
    return flat


def _tasks_table(tasks: list[str]) -> Any:
    """meta/tasks.parquet as pandas writes it: the task strings are the index (named "task") beside task_index."""
    pa = _pa()
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [], "creator": {"library": "vlafoundry"},
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "pandas_version": "2.2.0",
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def export_lerobot(
    episodes: Iterable[Episode],
    out: str | os.PathLike[str],
    *,
    env: dict[str, Any],
    fps: int = 10,
    image_mode: str | None = None,
    repo_id: str = "vlafoundry/export",
    episodes_per_file: int = 1000,
    overwrite: bool = False,
    video_codec: str | None = None,
    camera_keys: list[str] | None = None,
) -> dict[str, Any]:
    """Write ``episodes`` (dicts of :mod:`vlafoundry.data.episodes`) as a LeRobot v3.0 dataset in ``out``.

    ``env``: the ``env`` section of the source's vlafoundry.json (name, family, tasks, spec), recorded in
    ``meta/vlafoundry.json`` so the dataset trains and evaluates in vlafoundry without ``--data.env``.
    ``image_mode``: "rgb" (MP4 video), "symbolic" (uint8 grid feature) or None (no image). RGB frames of K cameras,
    ``(K, H, W, 3)`` per step, become one video feature per camera: ``camera_keys`` (K names, in the stacking order,
    which ``meta/vlafoundry.json`` records so the import stacks them back the same way), default
    ``observation.images.rgb`` for one camera, ``observation.images.cam0``.. for several. Returns info.json.
    """
    pa = _pa()
    import pyarrow.parquet as pq

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    if fps < 1:
        raise ValueError(f"fps: expected an integer >= 1, got {fps}")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    eps = list(episodes)
    if not eps:
        raise ValueError("export: zero episodes")
    discrete = env["spec"]["action_type"] == "discrete"
    tasks: list[str] = []
    task_ids: dict[str, int] = {}
    env_tasks = list(env["tasks"])
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("state", "action", "image", "reward", "done", "episode",
                                                         "frame", "task")}
    for e, ep in enumerate(eps):
        n = len(ep["action"])
        if ep["instruction"] not in task_ids:
            task_ids[ep["instruction"]] = len(tasks)
            tasks.append(ep["instruction"])
        cols["state"].append(np.asarray(ep["state"][:n], np.float32))
        cols["action"].append(np.asarray(ep["action"]).reshape(n, -1).astype(np.int64 if discrete else np.float32))
        if image_mode and ep.get("image") is not None:
            cols["image"].append(np.asarray(ep["image"][:n], np.uint8))
        cols["reward"].append(np.asarray(ep["reward"], np.float32))
        done = np.asarray(ep["terminated"], bool) | np.asarray(ep["truncated"], bool)
        done[-1] = True
        cols["done"].append(done)
        cols["episode"].append(np.full(n, e, np.int64))
        cols["frame"].append(np.arange(n, dtype=np.int64))
        cols["task"].append(np.full(n, task_ids[ep["instruction"]], np.int64))
    if image_mode and len(cols["image"]) != len(eps):
        raise ValueError(f"image_mode {image_mode!r}: {len(eps) - len(cols['image'])} episodes have no image")
    arr = {k: np.concatenate(v) for k, v in cols.items() if v}
    lengths = np.asarray([len(ep["action"]) for ep in eps], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    total = int(lengths.sum())
    state_dim, action_dim = arr["state"].shape[1], arr["action"].shape[1]
    cams: list[str] = []  # the camera video features, in stacking order
    if image_mode == "rgb":
        multi = arr["image"].ndim == 5  # (N, K, H, W, 3)
        k_cams = arr["image"].shape[1] if multi else 1
        cams = list(camera_keys) if camera_keys else (
            [f"observation.images.cam{k}" for k in range(k_cams)] if multi else [RGB_KEY])
        if len(cams) != k_cams or len(set(cams)) != len(cams):
            raise ValueError(f"camera_keys: expected {k_cams} distinct names for frames of shape "
                             f"{arr['image'].shape[1:]}, got {cams}")
        if arr["image"].shape[-1] != 3:
            raise ValueError(f"rgb images: expected (H, W, 3) or (K, H, W, 3) frames, got {arr['image'].shape[1:]}")
    elif camera_keys:
        raise ValueError(f"camera_keys {camera_keys}: only for image_mode 'rgb', got {image_mode!r}")
    cam_frames = {key: (arr["image"][:, k] if len(cams) > 1 or arr["image"].ndim == 5 else arr["image"])
                  for k, key in enumerate(cams)}  # key -> (N, H, W, 3)

    features: dict[str, Any] = {
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": [f"s{i}" for i in range(state_dim)]},
        "action": {"dtype": "int64" if discrete else "float32", "shape": [action_dim],
                   "names": ["action"] if discrete else [f"a{i}" for i in range(action_dim)]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }
    image_key = None  # the grid feature (symbolic mode)
    if image_mode == "symbolic":
        h, w, c = arr["image"].shape[1:]
        image_key = GRID_KEY
        features[image_key] = {"dtype": "uint8", "shape": [int(h), int(w), int(c)],
                               "names": ["height", "width", "channels"]}
    for key in cams:
        h, w, c = cam_frames[key].shape[1:]
        features[key] = {"dtype": "video", "shape": [int(h), int(w), int(c)], "names": ["height", "width", "channels"]}
    features.update({
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    })
    timestamp = (arr["frame"] / fps).astype(np.float32)

    ep_rows: list[dict[str, Any]] = []
    video_info: dict[str, dict[str, Any]] = {}
    for k, first in enumerate(range(0, len(eps), episodes_per_file)):
        ep_ids = range(first, min(first + episodes_per_file, len(eps)))
        lo, hi = int(starts[ep_ids[0]]), int(starts[ep_ids[-1]] + lengths[ep_ids[-1]])
        data = {
            "observation.state": _fixed_list(arr["state"][lo:hi], pa.float32()),
            "action": (pa.array(arr["action"][lo:hi, 0], pa.int64()) if discrete
                       else _fixed_list(arr["action"][lo:hi], pa.float32())),
            "next.reward": pa.array(arr["reward"][lo:hi], pa.float32()),
            "next.done": pa.array(arr["done"][lo:hi], pa.bool_()),
        }
        if image_mode == "symbolic":
            data[GRID_KEY] = _fixed_list(arr["image"][lo:hi], pa.uint8())
        data.update({
            "timestamp": pa.array(timestamp[lo:hi], pa.float32()),
            "frame_index": pa.array(arr["frame"][lo:hi], pa.int64()),
            "episode_index": pa.array(arr["episode"][lo:hi], pa.int64()),
            "index": pa.array(np.arange(lo, hi, dtype=np.int64), pa.int64()),
            "task_index": pa.array(arr["task"][lo:hi], pa.int64()),
        })
        path = tmp / DATA_PATH.format(**_file_index(k))
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(data), path)
        for key in cams:
            from vlafoundry.data.video import encode_video

            vpath = tmp / VIDEO_PATH.format(video_key=key, **_file_index(k))
            kw = {"codec": video_codec} if video_codec else {}
            video_info[key] = encode_video(cam_frames[key][lo:hi], vpath, fps, **kw)
        for e in ep_ids:
            s, n = int(starts[e]), int(lengths[e])
            row: dict[str, Any] = {
                "episode_index": e, "tasks": [eps[e]["instruction"]], "length": n,
                "data/chunk_index": _file_index(k)["chunk_index"], "data/file_index": _file_index(k)["file_index"],
                "dataset_from_index": s, "dataset_to_index": s + n,
            }
            for key in cams:
                row.update({f"videos/{key}/chunk_index": _file_index(k)["chunk_index"],
                            f"videos/{key}/file_index": _file_index(k)["file_index"],
                            f"videos/{key}/from_timestamp": (s - lo) / fps,
                            f"videos/{key}/to_timestamp": (s - lo + n) / fps})
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            ep_rows.append(row)
    for key, vinfo in video_info.items():
        features[key]["info"] = vinfo

    # per-episode statistics as LeRobot's episode files carry them (stats/<feature>/<stat>)
    stat_keys = [k for k in features if k != image_key]  # not the symbolic grid (codes, not pixels)
    sources = {"observation.state": arr["state"], "action": arr["action"], "next.reward": arr["reward"],
               "next.done": arr["done"], "timestamp": timestamp, "frame_index": arr["frame"],
               "episode_index": arr["episode"], "index": np.arange(total, dtype=np.int64), "task_index": arr["task"]}
    sources.update(cam_frames)
    for row in ep_rows:
        lo, hi = row["dataset_from_index"], row["dataset_to_index"]
        for key in stat_keys:
            for stat, value in feature_stats(sources[key][lo:hi], image=key in cams).items():
                row[f"stats/{key}/{stat}"] = value
    pq.write_table(pa.Table.from_pylist(ep_rows), _mk(tmp / EPISODES_DIR / "chunk-000/file-000.parquet"))
    stats = {key: feature_stats(sources[key], image=key in cams) for key in stat_keys}
    write_json_atomic(tmp / STATS_FILE, stats)
    pq.write_table(_tasks_table(tasks), _mk(tmp / TASKS_FILE))
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": None,
        "total_episodes": len(eps), "total_frames": total, "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": int(fps),
        "splits": {"train": f"0:{len(eps)}"}, "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if cams else None, "features": features,
    }
    write_json_atomic(tmp / INFO_FILE, info)
    extra = {
        "format": "vlafoundry extras for a LeRobot dataset",
        "repo_id": repo_id,
        "env": {k: env[k] for k in ("name", "family", "tasks") if k in env}
        | {"image": image_mode, "spec": dict(env["spec"], image_shape=list(arr["image"].shape[1:]) if image_mode else None)},
        "features": {"state": "observation.state", "action": "action",
                     "image": (cams if len(cams) > 1 else cams[0]) if cams else (image_key or "none"),
                     "discrete": discrete},
        "episode_seed": [int(ep["seed"]) for ep in eps],
        "episode_task": [env_tasks.index(ep["task"]) if ep["task"] in env_tasks else 0 for ep in eps],
    }
    write_json_atomic(tmp / EXTRA_FILE, extra)
    os.replace(tmp, out)
    return info


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def export_dataset_lerobot(root: str | os.PathLike[str], out: str | os.PathLike[str], *, fps: int = 10,
                           images: bool = True, overwrite: bool = False, video_codec: str | None = None,
                           env_name: str | None = None) -> tuple[dict[str, Any], str | None]:
    """Export any dataset DemoDataset reads (vlafoundry, Minari, LeRobot) to LeRobot v3.0 in ``out``.

    Returns (info.json, a note on what was not exported or None)."""
    from vlafoundry.data.source import iterate_source_episodes, resolve_source

    src = resolve_source(root, env_name=env_name)
    env = dict(src.metadata["env"])
    if not env.get("name"):
        raise ValueError(f"{root}: no vlafoundry env recorded; pass --env")
    episodes = list(iterate_source_episodes(src))
    has_image = any(ep.get("image") is not None for ep in episodes)
    mode = env.get("image") if has_image else None
    if has_image and mode is None:  # a user's Minari dataset does not say: BabyAI grids are 7x7, renderings larger
        mode = "rgb" if np.asarray(episodes[0]["image"]).shape[-2] > 16 else "symbolic"  # (n+1, [K,] H, W, C)
    note = None
    if has_image and not images:
        note = f"images ({mode}) not exported (--no-images): the LeRobot dataset holds states, actions and tasks only"
        mode = None
    cameras = None
    if src.kind == "lerobot" and mode == "rgb":  # keep a LeRobot source's camera names (and their order)
        from vlafoundry.data.lerobot import FeatureMap

        cameras = list(FeatureMap(image=src.metadata["lerobot"]["features"]["image"]).cameras) or None
    info = export_lerobot(episodes, out, env=env, fps=fps, image_mode=mode if has_image else None,
                          overwrite=overwrite, video_codec=video_codec, camera_keys=cameras)
    return info, note
