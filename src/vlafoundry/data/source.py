"""Resolve what a user points DemoDataset at, and keep its training cache fresh.

Accepted roots: a vlafoundry dataset directory (``vlafoundry.json`` inside), a Minari dataset directory
(the one holding ``data/``), or a Minari dataset id found under ``MINARI_DATASETS_PATH``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlafoundry.data.cache import CACHE_META, build_cache, cache_is_fresh
from vlafoundry.data.episodes import infer_env_name, iterate_minari_episodes, open_minari
from vlafoundry.data.format import CACHE_DIR, META_FILE, SCHEMA_VERSION, read_json, sha256_file


@dataclass
class ResolvedSource:
    metadata: dict[str, Any]
    minari_dir: Path  # the Minari dataset directory (holding data/)
    source_file: Path  # the file whose bytes the cache is derived from
    cache_dir: Path
    external: bool


def _minari_source_file(minari_dir: Path) -> Path:
    hdf5 = minari_dir / "data" / "main_data.hdf5"
    return hdf5 if hdf5.exists() else minari_dir / "data" / "metadata.json"


def resolve_source(root: str | os.PathLike[str], env_name: str | None = None,
                   cache_dir: str | os.PathLike[str] | None = None) -> ResolvedSource:
    path = Path(root)
    if (path / META_FILE).exists():
        meta = read_json(path / META_FILE)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path / META_FILE}: schema_version {meta.get('schema_version')}, expected {SCHEMA_VERSION}")
        minari_dir = path / meta["minari"]["datasets_path"] / meta["minari"]["dataset_id"]
        return ResolvedSource(meta, minari_dir, path / meta["minari"]["main_file"],
                              Path(cache_dir) if cache_dir else path / CACHE_DIR, external=False)
    if (path / "data" / "metadata.json").exists():
        minari_dir = path
    else:
        from minari.storage.datasets_root_dir import get_dataset_path

        minari_dir = Path(get_dataset_path(str(root)))
        if not (minari_dir / "data" / "metadata.json").exists():
            raise FileNotFoundError(
                f"{root}: neither a vlafoundry dataset ({META_FILE}), a Minari dataset directory, nor a local Minari dataset id"
            )
    return _external_source(minari_dir, env_name, Path(cache_dir) if cache_dir else minari_dir / "vlafoundry_cache")


def _external_source(minari_dir: Path, env_name: str | None, cache_dir: Path) -> ResolvedSource:
    """Describe a user's Minari dataset of a supported env in vlafoundry.json's terms."""
    from vlafoundry.envs import canonical_name, expand_env_names, families, get_family, make_env

    mmeta = read_json(minari_dir / "data" / "metadata.json")
    name = env_name or infer_env_name(mmeta)
    if name is None:
        raise ValueError(
            f"{minari_dir}: cannot tell which environment recorded this Minari dataset (env_spec {mmeta.get('env_spec')!r}); "
            f"pass env_name= one of {[get_family(f).pattern() for f in families()]}"
        )
    name = canonical_name(name)
    family = get_family(name).name
    tasks = expand_env_names(name)
    env = make_env(tasks[0])
    spec = env.spec.to_dict()
    env.close()
    spec["name"] = name
    meta = {
        "schema_version": SCHEMA_VERSION,
        "format": "minari (external)",
        "env": {"name": name, "family": family, "tasks": tasks, "image": None, "spec": spec},
        "minari": {"dataset_id": mmeta.get("dataset_id"), "path": str(minari_dir), "data_format": mmeta.get("data_format")},
        "counts": {"episodes": mmeta.get("total_episodes"), "steps": mmeta.get("total_steps"), "failed": 0},
        "failed_seeds": [],
    }
    return ResolvedSource(meta, minari_dir, _minari_source_file(minari_dir), cache_dir, external=True)


def _check_source_integrity(src: ResolvedSource) -> None:
    """Before a cache rebuild: our dataset's Minari file must still have the size and sha256 in vlafoundry.json.

    Otherwise a truncated or bit-flipped file would be read (h5py does not checksum data) and silently become
    the training data; raise ``ValueError`` naming the file instead.
    """
    if src.external:
        return
    rel = src.metadata.get("minari", {}).get("main_file")
    rec = src.metadata.get("files", {}).get(rel) if rel else None
    if rec is None:
        return
    path = src.source_file
    if not path.is_file():
        raise ValueError(f"{path}: missing; the dataset is damaged (run `vlafoundry data verify DIR`)")
    size = path.stat().st_size
    if size != rec["bytes"]:
        kind = "truncated" if size < rec["bytes"] else "has extra bytes"
        problem = f"{size} bytes, expected {rec['bytes']} (file {kind})"
    elif sha256_file(path) != rec["sha256"]:
        problem = f"sha256 differs from the one recorded in {META_FILE} (file corrupted)"
    else:
        return
    raise ValueError(f"{path}: {problem}; the dataset is damaged (`vlafoundry data verify DIR` lists every "
                     "problem); regenerate it or restore the file")


def ensure_cache(src: ResolvedSource) -> dict[str, Any]:
    """Return cache.json, rebuilding the cache from the Minari data first if it is missing or stale."""
    if not cache_is_fresh(src.cache_dir, src.source_file):
        _check_source_integrity(src)
        env = src.metadata["env"]
        try:
            dataset = open_minari(src.minari_dir)
            episodes = list(iterate_minari_episodes(dataset, env["family"], default_task=env["tasks"][0]))
        except OSError as exc:  # h5py reports a damaged file as OSError without its name
            raise ValueError(f"{src.source_file}: cannot be read ({exc})") from exc
        build_cache(episodes, src.cache_dir, list(env["tasks"]), source=src.source_file)
    return read_json(src.cache_dir / CACHE_META)
