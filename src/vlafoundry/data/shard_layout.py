"""The output folder of a dataset generation: the plan that makes an interrupted run resumable
(``shards/plan.json``), the check that a folder may be written (resume, refuse, or wipe with ``overwrite``), and
reading the finished shards back as the first N successes in seed order. Importable from
:mod:`vlafoundry.data.generate` as before.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from vlafoundry.data.episodes import Episode
from vlafoundry.data.format import CACHE_DIR, META_FILE, MINARI_DIR, SHARD_DIR, read_json, write_json_atomic
from vlafoundry.data.shards import read_shard, shard_path

if TYPE_CHECKING:
    from vlafoundry.data.generate import GenerationConfig

log = logging.getLogger("vlafoundry.data.generate")  # the generator's logger (messages kept where they were)
PLAN_FILE = "plan.json"


def _dataset_entries(root: Path) -> list[Path]:
    return [root / META_FILE, root / MINARI_DIR, root / CACHE_DIR, root / SHARD_DIR, root / f".{MINARI_DIR}.tmp"]


def _wipe(root: Path) -> None:
    for p in _dataset_entries(root):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _prepare_root(root: Path, cfg: GenerationConfig, shard_size: int, overwrite: bool) -> int:
    """Create/validate the output dir; returns the shard size to use (a resumed run keeps its own)."""
    shard_dir = root / SHARD_DIR
    plan_path = shard_dir / PLAN_FILE
    if (root / META_FILE).exists():
        if not overwrite:
            raise FileExistsError(f"{root} already holds a dataset ({META_FILE}); pass overwrite=True / --overwrite to replace it")
        _wipe(root)
    elif plan_path.exists():
        plan = read_json(plan_path)
        if plan.get("config") == asdict(cfg):
            log.info("resuming the interrupted generation in %s", root)
            return int(plan["shard_size"])
        if not overwrite:
            raise FileExistsError(
                f"{root} holds an interrupted generation with different settings ({plan.get('config')}); "
                "rerun with the same settings to resume, or pass --overwrite"
            )
        _wipe(root)
    elif root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} exists and is not empty; pass --overwrite to write a dataset there")
        _wipe(root)
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_path, {"config": asdict(cfg), "shard_size": shard_size})
    return shard_size



def _collect(cfg: GenerationConfig, shard_dir: Path, num_shards: int) -> tuple[list[Episode], list[tuple[int, str]]]:
    """The first N successes in seed order and the failures among the seeds before the last one used."""
    episodes: list[Episode] = []
    failures: list[tuple[int, str]] = []
    for k in range(num_shards):
        eps, fails = read_shard(shard_path(shard_dir, k))
        items = sorted([(ep["seed"], ep) for ep in eps] + [(s, r) for s, r in fails], key=lambda t: t[0])
        for seed, item in items:
            if len(episodes) == cfg.episodes:
                return episodes, failures
            if isinstance(item, dict):
                episodes.append(item)
            else:
                failures.append((seed, item))
    if len(episodes) < cfg.episodes:
        raise RuntimeError(f"shards hold {len(episodes)} episodes, expected {cfg.episodes}")
    return episodes, failures
