"""Resolve what a user points DemoDataset at, and keep its training cache fresh.

Accepted roots: a vlafoundry dataset directory (``vlafoundry.json`` inside), a Minari dataset directory
(the one holding ``data/``), a LeRobot v3.0 dataset directory (``meta/info.json``, :mod:`vlafoundry.data.lerobot`),
or a Minari dataset id found under ``MINARI_DATASETS_PATH``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.data.cache import CACHE_META, build_cache, cache_is_fresh
from vlafoundry.data.episodes import Episode, infer_env_name, iterate_minari_episodes, open_minari
from vlafoundry.data.format import CACHE_DIR, META_FILE, SCHEMA_VERSION, read_json, sha256_file


@dataclass
class ResolvedSource:
    metadata: dict[str, Any]
    minari_dir: Path  # the Minari dataset directory (holding data/)
    source_file: Path  # the file whose bytes the cache is derived from
    cache_dir: Path
    external: bool
    kind: str = "minari"  # or "lerobot": minari_dir is then the LeRobot root


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
    from vlafoundry.data.lerobot import is_lerobot_dataset

    if is_lerobot_dataset(path):
        return _lerobot_source(path, env_name, Path(cache_dir) if cache_dir else None)
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


def _lerobot_source(root: Path, env_name: str | None, cache_dir: Path | None) -> ResolvedSource:
    """Describe a LeRobot v3.0 dataset in vlafoundry.json's terms (see :func:`lerobot_metadata`)."""
    from vlafoundry.data.lerobot import INFO_FILE, load_info, mapping_tag

    info = load_info(root)
    meta = lerobot_metadata(info, env_name)
    default = cache_dir is None
    cache = cache_dir or root / f"vlafoundry_cache-{mapping_tag(info.mapping)}"
    if default and not os.access(root, os.W_OK):
        raise ValueError(f"{root}: read-only, so its training cache cannot be kept beside it; pass cache_dir=")
    return ResolvedSource(meta, root, root / INFO_FILE, cache, external=True, kind="lerobot")


def lerobot_metadata(info: Any, env_name: str | None = None) -> dict[str, Any]:
    """vlafoundry.json's fields for a LeRobot dataset (a :class:`vlafoundry.data.lerobot.LeRobotInfo`).

    The env: the one our export recorded in ``meta/vlafoundry.json``, else ``env_name`` (its spec must match the
    data), else none (``env.name`` None: training works from a spec read off the features; closed-loop evaluation
    needs ``--data.env``)."""
    feats, m = info.info["features"], info.mapping
    state_dim = int(np.prod(feats[m.state]["shape"]))
    action_shape = feats[m.action]["shape"]
    image_ft = info.feature("image")
    image_shape = tuple(int(v) for v in image_ft["shape"]) if image_ft else None
    recorded = info.extra.get("env") or {}
    counts = {"episodes": info.info.get("total_episodes"), "steps": info.info.get("total_frames"), "failed": 0}
    lerobot = {"path": str(info.root), "fps": info.fps, "codebase_version": info.info.get("codebase_version"),
               "features": dataclasses.asdict(m)}
    if recorded.get("name") and env_name is None:
        env = dict(recorded)
    elif env_name is not None:
        from vlafoundry.envs import canonical_name, expand_env_names, get_family, make_env

        name = canonical_name(env_name)
        tasks = expand_env_names(name)
        e = make_env(tasks[0])
        spec = e.spec.to_dict()
        e.close()
        spec["name"] = name
        discrete = spec["action_type"] == "discrete"
        got = (state_dim, "discrete" if m.discrete else "continuous", 1 if m.discrete else int(np.prod(action_shape)))
        want = (int(spec["state_dim"]), spec["action_type"], int(spec["action_dim"]) if not discrete else 1)
        if got != want:
            raise ValueError(f"{info.root}: env {name} has (state dim, action type, action dim) {want}, the dataset's "
                             f"features give {got} (features {m.state!r}, {m.action!r})")
        env = {"name": name, "family": get_family(name).name, "tasks": tasks, "image": None, "spec": spec}
    else:
        env = {"name": None, "family": None, "tasks": ["lerobot"], "image": None,
               "spec": _spec_from_features(info, state_dim, action_shape, image_shape)}
    if image_shape is not None:
        env["spec"] = dict(env["spec"], image_shape=list(image_shape))
    return {"schema_version": SCHEMA_VERSION, "format": "lerobot v3.0", "env": env, "lerobot": lerobot,
            "counts": counts, "failed_seeds": []}


def _spec_from_features(info: Any, state_dim: int, action_shape: list[int], image_shape: tuple[int, ...] | None
                        ) -> dict[str, Any]:
    """An EnvSpec dict read off a foreign dataset: action bounds / count from stats.json, the longest episode."""
    from vlafoundry.data.lerobot import EPISODES_DIR, read_stats, read_table

    m = info.mapping
    stats = read_stats(info.root).get(m.action, {})
    lengths = read_table(info.root, EPISODES_DIR, columns=["length"]).column("length").to_pylist() or [1]
    if m.discrete:
        top = stats.get("max")
        if top is None:
            raise ValueError(f"{info.root}: discrete action {m.action!r} without a max in meta/stats.json; cannot "
                             "tell the number of actions (pass --data.env)")
        return {"name": "lerobot", "action_type": "discrete", "num_actions": int(np.max(top)) + 1, "action_dim": 1,
                "action_low": None, "action_high": None, "state_dim": state_dim,
                "image_shape": list(image_shape) if image_shape else None, "max_episode_steps": max(lengths)}
    dim = int(np.prod(action_shape))
    low = [float(v) for v in np.asarray(stats.get("min", -np.ones(dim))).reshape(-1)]
    high = [float(v) for v in np.asarray(stats.get("max", np.ones(dim))).reshape(-1)]
    return {"name": "lerobot", "action_type": "continuous", "num_actions": None, "action_dim": dim,
            "action_low": low, "action_high": high, "state_dim": state_dim,
            "image_shape": list(image_shape) if image_shape else None, "max_episode_steps": max(lengths)}


def iterate_source_episodes(src: ResolvedSource) -> Iterator[Episode]:
    """The episodes of any resolved source, as :mod:`vlafoundry.data.episodes` dicts."""
    env = src.metadata["env"]
    if src.kind == "lerobot":
        from vlafoundry.data.lerobot import iterate_lerobot_episodes, load_info

        info = load_info(src.minari_dir)
        tasks = list(env["tasks"])
        ep_task = info.extra.get("episode_task") if (info.extra.get("env") or {}).get("name") == env["name"] else None
        yield from iterate_lerobot_episodes(info, [tasks[i] for i in ep_task] if ep_task else None, tasks[0])
        return
    dataset = open_minari(src.minari_dir)
    yield from iterate_minari_episodes(dataset, env["family"], default_task=env["tasks"][0])


def dataset_metadata(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """vlafoundry.json of a dataset directory, or its equivalent for a LeRobot one; None if neither."""
    path = Path(root)
    if (path / META_FILE).is_file():
        return read_json(path / META_FILE)
    from vlafoundry.data.lerobot import is_lerobot_dataset, load_info

    if is_lerobot_dataset(path):
        return lerobot_metadata(load_info(path))
    return None


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
        return rebuild_cache(src)
    return read_json(src.cache_dir / CACHE_META)


def rebuild_cache(src: ResolvedSource) -> dict[str, Any]:
    """Build the training cache from the source data (checked against its recorded checksum first); returns
    cache.json. Also what a damaged cache is replaced with (a frame that does not inflate)."""
    _check_source_integrity(src)
    env = src.metadata["env"]
    try:
        episodes = list(iterate_source_episodes(src))
    except OSError as exc:  # h5py reports a damaged file as OSError without its name
        raise ValueError(f"{src.source_file}: cannot be read ({exc})") from exc
    build_cache(episodes, src.cache_dir, list(env["tasks"]), source=src.source_file)
    return read_json(src.cache_dir / CACHE_META)
