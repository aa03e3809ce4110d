"""Resumable work units of a generation run.

Shard ``k`` covers episode indices ``[k*shard_size, (k+1)*shard_size)`` (episode ``i`` uses seed ``S+i``).
A worker writes ``shard_<k>.npz.tmp`` and renames it to ``shard_<k>.npz`` only when complete, so after a
``kill -9`` every ``.npz`` is whole and every ``.tmp`` is discarded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.data.episodes import Episode


def shard_path(shard_dir: Path, k: int) -> Path:
    return shard_dir / f"shard_{k:06d}.npz"


def write_shard(path: Path, episodes: list[Episode], failures: list[tuple[int, str]], has_image: bool,
                action_shape: tuple[int, ...], seed_range: tuple[int, int]) -> None:
    """Concatenate ``episodes`` into one ``.npz``, atomically."""
    lengths = np.asarray([len(ep["action"]) for ep in episodes], dtype=np.int64)

    def cat(key: str, dtype: Any, tail: tuple[int, ...]) -> np.ndarray:
        if not episodes:
            return np.zeros((0, *tail), dtype=dtype)
        return np.concatenate([np.asarray(ep[key], dtype=dtype) for ep in episodes])

    state_dim = episodes[0]["state"].shape[1] if episodes else 0
    arrays: dict[str, np.ndarray] = {
        "seed_range": np.asarray(seed_range, dtype=np.int64),
        "ep_seed": np.asarray([ep["seed"] for ep in episodes], dtype=np.int64),
        "ep_len": lengths,
        "ep_task": np.asarray([ep["task"] for ep in episodes], dtype=str),
        "ep_instruction": np.asarray([ep["instruction"] for ep in episodes], dtype=str),
        "state": cat("state", np.float32, (state_dim,)),
        "action": cat("action", np.int64 if not action_shape else np.float32, action_shape),
        "reward": cat("reward", np.float32, ()),
        "terminated": cat("terminated", bool, ()),
        "truncated": cat("truncated", bool, ()),
        "failed_seed": np.asarray([s for s, _ in failures], dtype=np.int64),
        "failed_reason": np.asarray([r for _, r in failures], dtype=str),
    }
    if has_image and episodes:
        arrays["image"] = cat("image", np.uint8, tuple(episodes[0]["image"].shape[1:]))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_shard_summary(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(successful seeds, failed or skipped seeds, their reasons) of a complete shard, without loading its
    episodes; ``None`` if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["ep_seed"], z["failed_seed"], [str(r) for r in z["failed_reason"]]
    except Exception:
        return None


def read_shard(path: Path) -> tuple[list[Episode], list[tuple[int, str]]]:
    """Episodes (observation arrays include the final observation) and failures of a shard."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    lengths = data["ep_len"]
    obs_off = np.concatenate([[0], np.cumsum(lengths + 1)])
    act_off = np.concatenate([[0], np.cumsum(lengths)])
    episodes = []
    for e in range(len(lengths)):
        o0, o1, a0, a1 = obs_off[e], obs_off[e + 1], act_off[e], act_off[e + 1]
        episodes.append(
            {
                "seed": int(data["ep_seed"][e]),
                "task": str(data["ep_task"][e]),
                "instruction": str(data["ep_instruction"][e]),
                "image": data["image"][o0:o1] if "image" in data else None,
                "state": data["state"][o0:o1],
                "action": data["action"][a0:a1],
                "reward": data["reward"][a0:a1],
                "terminated": data["terminated"][a0:a1],
                "truncated": data["truncated"][a0:a1],
            }
        )
    failures = [(int(s), str(r)) for s, r in zip(data["failed_seed"], data["failed_reason"])]
    return episodes, failures
