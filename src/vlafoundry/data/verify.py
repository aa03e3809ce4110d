"""``vlafoundry data inspect`` / ``verify``, and opening our datasets with Minari."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.data.cache import CACHE_META
from vlafoundry.data.format import (
    META_FILE,
    SCHEMA_VERSION,
    minari_datasets_path,
    read_json,
    sha256_file,
)
from vlafoundry.data.frames import (
    BLOB_FILE,
    OFFSETS_FILE,
    CompressedFrames,
    CorruptFramesError,
)


def load_minari(root: str | os.PathLike[str]) -> Any:
    """Our dataset as a ``minari.MinariDataset``, through ``minari.load_dataset``.

    Equivalent to ``MINARI_DATASETS_PATH=<root>/minari`` + ``minari.load_dataset(<dataset_id>)``.
    """
    import minari

    meta = read_json(Path(root) / META_FILE)
    with minari_datasets_path(Path(root) / meta["minari"]["datasets_path"]):
        return minari.load_dataset(meta["minari"]["dataset_id"])


def _check_file(root: Path, rel: str, rec: dict[str, Any]) -> str | None:
    path = root / rel
    if not path.is_file():
        return f"{rel}: missing"
    size = path.stat().st_size
    if size != rec["bytes"]:
        kind = "truncated" if size < rec["bytes"] else "has extra bytes"
        return f"{rel}: {size} bytes, expected {rec['bytes']} (file {kind})"
    digest = sha256_file(path)
    if digest != rec["sha256"]:
        return f"{rel}: sha256 {digest[:16]}..., expected {rec['sha256'][:16]}... (file corrupted)"
    return None


def _check_minari_structure(root: Path, meta: dict[str, Any]) -> list[str]:
    import h5py

    rel = meta["minari"]["main_file"]
    problems: list[str] = []
    try:
        with h5py.File(root / rel, "r") as f:
            n_eps = len(f.keys())
            if n_eps != meta["counts"]["episodes"]:
                problems.append(f"{rel}: {n_eps} episodes, vlafoundry.json says {meta['counts']['episodes']}")
            total = 0
            for e in range(n_eps):
                name = f"episode_{e}"
                if name not in f:
                    problems.append(f"{rel}: {name} missing")
                    continue
                grp = f[name]
                n = int(grp["actions"].shape[0])
                total += n
                if int(grp.attrs.get("total_steps", n)) != n:
                    problems.append(f"{rel}: {name} has {n} actions but total_steps={grp.attrs['total_steps']}")
                for key in ("rewards", "terminations", "truncations"):
                    if grp[key].shape[0] != n:
                        problems.append(f"{rel}: {name}/{key} has {grp[key].shape[0]} rows, expected {n}")
                for key, ds in grp["observations"].items():
                    if ds.shape[0] != n + 1:
                        problems.append(f"{rel}: {name}/observations/{key} has {ds.shape[0]} rows, expected {n + 1}")
            if total != meta["counts"]["steps"]:
                problems.append(f"{rel}: {total} steps, vlafoundry.json says {meta['counts']['steps']}")
    except Exception as exc:  # h5py raises many types on damaged files
        problems.append(f"{rel}: cannot be read as HDF5 ({type(exc).__name__}: {exc})")
    return problems


def _check_cache(root: Path, meta: dict[str, Any]) -> list[str]:
    cache_rel = meta["cache"]["path"]
    cache_dir = root / cache_rel
    problems: list[str] = []
    try:
        cmeta = read_json(cache_dir / CACHE_META)
    except (OSError, ValueError) as exc:
        return [f"{cache_rel}/{CACHE_META}: unreadable ({exc}); delete {cache_rel}/ to rebuild it"]
    main_sha = meta["files"][meta["minari"]["main_file"]]["sha256"]
    if cmeta.get("source", {}).get("sha256") != main_sha:
        problems.append(f"{cache_rel}/{CACHE_META}: built from a different {meta['minari']['main_file']} (stale cache)")
    for name, rec in cmeta.get("files", {}).items():
        problem = _check_file(cache_dir, name, rec)
        if problem:
            problems.append(f"{cache_rel}/{problem}")
    if problems:
        return problems
    steps = meta["counts"]["steps"]
    for name in cmeta["files"]:
        if not name.endswith(".npy"):
            continue
        arr = np.load(cache_dir / name, mmap_mode="r", allow_pickle=False)
        rows = meta["counts"]["episodes"] if name.startswith("episode_") else steps
        if name == OFFSETS_FILE:  # one offset per blob of `group` steps, plus the end
            rows = -(-steps // int(cmeta.get("image", {}).get("group", 1))) + 1
        if arr.shape[0] != rows:
            problems.append(f"{cache_rel}/{name}: {arr.shape[0]} rows, expected {rows}")
    if "image" in cmeta and not problems:
        try:  # every frame inflates to its shape (the checksums above already vouch for the bytes)
            frames = CompressedFrames(cache_dir, cmeta["image"])
            for a in range(0, len(frames), 4096):
                rows_ = np.arange(a, min(a + 4096, len(frames)), dtype=np.int64)
                frames.decode_into(rows_, np.empty((len(rows_), *frames.frame_shape), dtype=np.uint8))
        except (CorruptFramesError, ValueError, OSError) as exc:
            problems.append(f"{cache_rel}/{BLOB_FILE}: {exc}")
    if cmeta.get("stats") != meta.get("stats"):
        problems.append(f"{cache_rel}/{CACHE_META}: statistics differ from {META_FILE}")
    return problems


def verify_dataset(root: str | os.PathLike[str]) -> list[str]:
    """All integrity problems of a dataset (empty list = OK): checksums, sizes, HDF5 structure, cache."""
    root = Path(root)
    meta_path = root / META_FILE
    if not meta_path.is_file():
        return [f"{META_FILE}: missing (not a vlafoundry dataset, or its generation has not finished)"]
    try:
        meta = read_json(meta_path)
    except ValueError as exc:
        return [f"{META_FILE}: not valid JSON ({exc})"]
    if meta.get("schema_version") != SCHEMA_VERSION:
        return [f"{META_FILE}: schema_version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}"]
    problems = [p for rel, rec in sorted(meta["files"].items()) if (p := _check_file(root, rel, rec))]
    listed = set(meta["files"])
    minari_root = root / meta["minari"]["datasets_path"]
    for p in sorted(minari_root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_file() and rel not in listed:
            problems.append(f"{rel}: unexpected file (not in {META_FILE})")
    if not problems:
        problems += _check_minari_structure(root, meta)
    problems += _check_cache(root, meta)
    return problems


def inspect_dataset(root: str | os.PathLike[str]) -> str:
    """A human-readable summary of a dataset."""
    root = Path(root)
    meta = read_json(root / META_FILE)
    env, counts, gen = meta["env"], meta["counts"], meta["generation"]
    spec = env["spec"]
    lengths = np.load(root / meta["cache"]["path"] / "episode_length.npy", allow_pickle=False)
    size = sum(rec["bytes"] for rec in meta["files"].values())
    cache_size = sum(rec["bytes"] for rec in meta["cache"]["files"].values())
    lines = [
        f"dataset      {root}",
        f"env          {env['name']} ({len(env['tasks'])} task{'s' if len(env['tasks']) != 1 else ''}), image={env['image']}",
        f"minari       {meta['minari']['dataset_id']} under {root / meta['minari']['datasets_path']} ({meta['minari']['data_format']})",
        f"episodes     {counts['episodes']} (failed expert seeds skipped: {counts['failed']}; seeds {gen['seed']}..{gen['seed'] + counts['seeds_used'] - 1})",
        f"steps        {counts['steps']} (episode length min {lengths.min()} / mean {lengths.mean():.1f} / max {lengths.max()})",
        f"actions      {spec['action_type']}"
        + (f", {spec['num_actions']} actions" if spec["action_type"] == "discrete" else f", dim {spec['action_dim']}"),
        f"state        dim {spec['state_dim']}; image {spec['image_shape']}",
        f"instructions {len(meta['instructions'])} distinct, e.g. {meta['instructions'][:3]}",
        f"size         {size / 1e6:.2f} MB Minari + {cache_size / 1e6:.2f} MB cache",
    ]
    if len(env["tasks"]) > 1:
        lines.append("per task     " + ", ".join(f"{t.split('/', 1)[1]}={n}" for t, n in counts["per_task"].items()))
    if meta["failed_seeds"]:
        shown = ", ".join(f"{f['seed']} ({f['reason']})" for f in meta["failed_seeds"][:5])
        lines.append(f"failed seeds {shown}{' ...' if len(meta['failed_seeds']) > 5 else ''}")
    a = meta["stats"]["action"]
    lines.append(f"action mean  {np.round(a['mean'], 3).tolist()}  std {np.round(a['std'], 3).tolist()}")
    return "\n".join(lines)
