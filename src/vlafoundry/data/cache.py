"""The training cache: contiguous arrays per key, derived from the Minari data and rebuilt when it changes.

Minari returns one ``EpisodeData`` per episode (reading 1,000 short BabyAI episodes back takes ~1.5 s); a
training loop needs random access to steps, so the steps of all episodes are concatenated once into
``cache/<key>.npy`` (memory-mappable) and indexed from there; image frames are stored compressed, one blob
per step (:mod:`vlafoundry.data.frames`). Caches written before that hold ``cache/image.npy`` (raw uint8
(N, H, W, C)) and are still read as they are.

    cache/state.npy           float32 (N, S)        observation at which each action was taken
    cache/image.zlib          one zlib blob per step  [datasets with images only; see vlafoundry.data.frames]
    cache/image_offsets.npy   int64 (N + 1,)        where each step's blob starts and ends
    cache/action.npy          int64 (N,) | float32 (N, A)
    cache/episode_start.npy   int64 (E,)            first step of each episode
    cache/episode_length.npy  int64 (E,)
    cache/episode_task.npy    int64 (E,)            index into ``tasks``
    cache/episode_instruction.npy int64 (E,)        index into ``instructions``
    cache/episode_seed.npy    int64 (E,)
    cache/cache.json          source sha256, per-file sha256, tasks, instructions, stats, image (codec, shape)
    cache/source_stat.json    the source's (size, mtime) when last checked: skips re-hashing it
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.data.episodes import Episode
from vlafoundry.data.format import (
    SCHEMA_VERSION,
    array_stats,
    file_record,
    read_json,
    sha256_file,
    stats_to_json,
    write_json_atomic,
)
from vlafoundry.data.frames import (
    OFFSETS_FILE,
    RAW_FILE,
    CompressedFrames,
    DecodedFrames,
    open_frames,
    write_frames,
)

CACHE_META = "cache.json"
SOURCE_STAT = "source_stat.json"
EPISODE_KEYS = ("episode_start", "episode_length", "episode_task", "episode_instruction", "episode_seed")


def source_fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def build_cache(
    episodes: Iterable[Episode],
    cache_dir: str | os.PathLike[str],
    tasks: list[str],
    source: Path,
    source_sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Concatenate ``episodes`` into ``cache_dir`` (written to a temp dir, then renamed into place)."""
    cache_dir = Path(cache_dir)
    task_index = {t: i for i, t in enumerate(tasks)}
    states, images, actions, lengths, ep_tasks, ep_instr, seeds = [], [], [], [], [], [], []
    for ep in episodes:
        n = len(ep["action"])
        states.append(np.asarray(ep["state"][:n], dtype=np.float32))
        if ep.get("image") is not None:
            images.append(np.asarray(ep["image"][:n], dtype=np.uint8))
        actions.append(np.asarray(ep["action"]))
        lengths.append(n)
        if ep["task"] not in task_index:
            raise ValueError(f"episode task {ep['task']!r} is not one of the dataset's tasks {tasks}")
        ep_tasks.append(task_index[ep["task"]])
        ep_instr.append(ep["instruction"])
        seeds.append(int(ep["seed"]))
    if not lengths:
        raise ValueError("cannot build a training cache from zero episodes")
    if images and len(images) != len(lengths):
        raise ValueError("some episodes have images and others do not")
    instructions = sorted(set(ep_instr))
    instr_index = {s: i for i, s in enumerate(instructions)}
    length = np.asarray(lengths, dtype=np.int64)
    arrays: dict[str, np.ndarray] = {
        "state": np.concatenate(states),
        "action": np.concatenate(actions),
        "episode_start": np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64),
        "episode_length": length,
        "episode_task": np.asarray(ep_tasks, dtype=np.int64),
        "episode_instruction": np.asarray([instr_index[s] for s in ep_instr], dtype=np.int64),
        "episode_seed": np.asarray(seeds, dtype=np.int64),
    }
    stats = {"state": array_stats(arrays["state"]), "action": array_stats(arrays["action"])}

    tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        files = {}
        for key in sorted(arrays):
            path = tmp / f"{key}.npy"
            np.save(path, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            files[path.name] = file_record(path)
        image_record = None
        if images:
            image_record = write_frames(images, tmp)
            for name in sorted(p.name for p in tmp.iterdir() if p.name.startswith("image")):
                files[name] = file_record(tmp / name)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "source": {
                "path": os.path.relpath(source, cache_dir.parent),
                "sha256": source_sha256 or sha256_file(source),
            },
            "files": files,
            "tasks": list(tasks),
            "instructions": instructions,
            "num_episodes": int(len(length)),
            "num_steps": int(length.sum()),
            "stats": stats_to_json(stats),
            **({"image": image_record} if image_record else {}),
            **(extra or {}),
        }
        write_json_atomic(tmp / CACHE_META, meta)
        # local, not checksummed: lets a fresh cache be recognised without re-hashing the source
        write_json_atomic(tmp / SOURCE_STAT, source_fingerprint(source))
        if cache_dir.exists():
            old = cache_dir.with_name(f".{cache_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(cache_dir, old)
            os.replace(tmp, cache_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, cache_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def cache_is_fresh(cache_dir: Path, source: Path) -> bool:
    """True when the cache exists, is complete and was built from the current ``source`` bytes.

    A matching (size, mtime) fingerprint is trusted; otherwise the source is hashed and compared.
    """
    meta_path = cache_dir / CACHE_META
    if not meta_path.exists() or not source.exists():
        return False
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError):
        return False
    if meta.get("schema_version") != SCHEMA_VERSION:
        return False
    for name, rec in meta.get("files", {}).items():
        p = cache_dir / name
        if not p.exists() or p.stat().st_size != rec["bytes"]:
            return False
    fp = source_fingerprint(source)
    try:
        if read_json(cache_dir / SOURCE_STAT) == fp:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(source) != meta.get("source", {}).get("sha256"):
        return False
    write_json_atomic(cache_dir / SOURCE_STAT, fp)
    return True


def load_cache_arrays(cache_dir: Path, mmap: bool = True) -> dict[str, np.ndarray]:
    """Open every ``.npy`` of the cache (memory-mapped by default) except the image frames (see
    :func:`open_cache_images`)."""
    meta = read_json(cache_dir / CACHE_META)
    return {
        name[: -len(".npy")]: np.load(cache_dir / name, mmap_mode="r" if mmap else None, allow_pickle=False)
        for name in meta["files"]
        if name.endswith(".npy") and name not in (RAW_FILE, OFFSETS_FILE)
    }


def cache_has_images(meta: dict[str, Any]) -> bool:
    """Whether cache.json ``meta`` describes frames (compressed, or a raw ``image.npy`` of an older cache)."""
    return "image" in meta or RAW_FILE in meta.get("files", {})


def cache_image_shape(cache_dir: Path, meta: dict[str, Any]) -> tuple[int, ...] | None:
    """The shape of one step's frame, or None for a dataset without images."""
    if "image" in meta:
        return tuple(int(v) for v in meta["image"]["shape"])
    if RAW_FILE in meta.get("files", {}):
        return tuple(int(v) for v in np.load(cache_dir / RAW_FILE, mmap_mode="r", allow_pickle=False).shape[1:])
    return None


def open_cache_images(cache_dir: Path, meta: dict[str, Any], rows: np.ndarray | None = None,
                      budget: int | None = None) -> np.ndarray | CompressedFrames | DecodedFrames | None:
    """The cache's frames, indexable by global step ids: a raw memory map (older caches), the steps ``rows``
    decoded into RAM when they fit ``budget`` bytes, or frames inflated at every read
    (:func:`vlafoundry.data.frames.open_frames`); None without images."""
    if "image" in meta:
        return open_frames(cache_dir, meta["image"], rows, budget)
    if RAW_FILE in meta.get("files", {}):
        return np.load(cache_dir / RAW_FILE, mmap_mode="r", allow_pickle=False)
    return None
