"""On-disk layout of a vlafoundry demonstration dataset (see docs/data.md).

    DIR/
      vlafoundry.json                  # our metadata: schema, env spec, instructions, stats, checksums
      minari/                          # a MINARI_DATASETS_PATH root
        vlafoundry/namespace_metadata.json
        vlafoundry/<family>-<name>-v0/data/{main_data.hdf5, metadata.json}   # frames deflated (h5compress)
      cache/                           # training cache: one .npy per key, frames as zlib blobs (frames.py),
                                       # cache.json (rebuilt if stale)
      .shards/                         # only while generating (resumable work units); removed when done
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.envs import EnvFamily, env_slug, get_family
from vlafoundry.io import read_json, write_json_atomic  # noqa: F401  (re-exported)

SCHEMA_VERSION = 1
FORMAT_NAME = "vlafoundry-demonstrations"
META_FILE = "vlafoundry.json"
MINARI_DIR = "minari"
CACHE_DIR = "cache"
SHARD_DIR = ".shards"
MINARI_NAMESPACE = "vlafoundry"
#: characters allowed in the gymnasium ``Text`` space holding instructions (missions)
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.;:'!?-()"
INSTRUCTION_MAX_LENGTH = 512


def dataset_id_for(env_name: str) -> str:
    """Minari dataset id for an env/suite name or env list: ``babyai/GoToLocal`` -> ``vlafoundry/babyai-gotolocal-v0``
    (lists: a short hashed slug, see :func:`vlafoundry.envs.env_slug`)."""
    slug = env_slug(env_name).replace("_", "-")
    return f"{MINARI_NAMESPACE}/{slug}-v0"


def minari_dataset_dir(root: str | os.PathLike[str], dataset_id: str) -> Path:
    return Path(root) / MINARI_DIR / dataset_id


@contextlib.contextmanager
def minari_datasets_path(path: str | os.PathLike[str]) -> Iterator[None]:
    """Temporarily point ``MINARI_DATASETS_PATH`` at ``path`` (Minari reads it on every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(path).resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def array_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension mean/std/min/max over all rows (float64 accumulation, stored as float32)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    x64 = x.astype(np.float64)
    if len(x64) == 0:
        zeros = np.zeros(x.shape[1], dtype=np.float32)
        return {"mean": zeros, "std": zeros.copy(), "min": zeros.copy(), "max": zeros.copy()}
    return {
        "mean": x64.mean(axis=0).astype(np.float32),
        "std": x64.std(axis=0).astype(np.float32),
        "min": x64.min(axis=0).astype(np.float32),
        "max": x64.max(axis=0).astype(np.float32),
    }


def stats_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list[float]]]:
    return {k: {s: [float(v) for v in np.asarray(a).reshape(-1)] for s, a in d.items()} for k, d in stats.items()}


def stats_from_json(stats: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, np.ndarray]]:
    return {k: {s: np.asarray(v, dtype=np.float32) for s, v in d.items()} for k, d in stats.items()}


# --------------------------------------------------------------------------- Minari spaces / observations
def mission_space() -> Any:
    """The gymnasium ``Text`` space instructions (missions) are stored in."""
    from gymnasium import spaces

    return spaces.Text(max_length=INSTRUCTION_MAX_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET)


def minari_spaces(family: str | EnvFamily, spec: dict[str, Any]) -> tuple[Any, Any]:
    """(observation_space, action_space) under which episodes of ``family`` (an :class:`EnvFamily` or its name) are
    stored in Minari; the family picks the layout (:meth:`EnvFamily.minari_spaces`)."""
    fam = get_family(family) if isinstance(family, str) else family
    return fam.minari_spaces(spec, mission_space())
