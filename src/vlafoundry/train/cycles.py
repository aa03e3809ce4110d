"""Behaviour-cloning cosine cycles (``train.restarts``): one :class:`~vlafoundry.train.trainer.Trainer` per cycle,
each from the previous cycle's weights, resumable cycle by cycle (``cycles.json``), and the entry points
:func:`fit_phase` / :func:`run_phase`. Importable from :mod:`vlafoundry.train.trainer` as before.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from vlafoundry.config import dump_yaml
from vlafoundry.io import read_json, write_json_atomic
from vlafoundry.train.config import ExperimentConfig, apply_dataset_metadata
from vlafoundry.train.distributed import DistInfo, barrier
from vlafoundry.train.trainer import Trainer


def cycle_configs(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """The behaviour-cloning cosine cycles of ``cfg``: the first as configured, then one per ``train.restarts``
    entry (that many steps, ``train.restart_warmup_steps`` of warm-up); each copy has no restarts of its own."""
    cycles = []
    for k, steps in enumerate((cfg.train.steps, *cfg.train.restarts)):
        c = copy.deepcopy(cfg)
        c.train.restarts = ()
        if k > 0:
            c.train.steps, c.train.warmup_steps = steps, cfg.train.restart_warmup_steps
        cycles.append(c)
    return cycles


def cycle_dirs(run_dir: str | Path, n: int) -> list[Path]:
    """Where the ``n`` cycles of a run live: the earlier ones under ``run_dir/cycles``, the last in ``run_dir``."""
    run_dir = Path(run_dir)
    return [run_dir / "cycles" / f"cycle_{k}" for k in range(1, n)] + [run_dir]


def phase_finished(summary: dict[str, Any], steps: int) -> bool:
    """Whether a run's summary (``summary.json``, or a ``cycles.json`` record) says it trained ``steps`` steps or
    stopped early."""
    return int(summary.get("step", 0)) >= steps or bool(summary.get("stopped_early"))


def fit_phase(cfg: ExperimentConfig, run_dir: str | Path, phase: str = "train",
              init_from: str | Path | None = None, resume: bool = True, dist_info: DistInfo | None = None,
              dataset_root: str | Path | None = None) -> tuple[dict[str, Any], Trainer]:
    """Train one phase, with ``train.restarts`` as further cosine cycles for ``phase="train"``.

    Cycle k+1 is ``Trainer(cycle config, its dir, init_from=cycle k's dir)``: the computation of the chained
    ``vlafoundry train --init-from`` commands, in one command, resumable cycle by cycle (finished cycles are
    skipped, an interrupted one resumes from its checkpoint). Returns the summary (for several cycles: total
    steps and loop time, with each cycle's summary under ``"cycles"``) and the last cycle's trainer.
    """
    if phase != "train" or not cfg.train.restarts:
        tr = Trainer(cfg, run_dir, phase=phase, init_from=init_from, resume=resume, dist_info=dist_info,
                     dataset_root=dataset_root)
        return tr.fit(), tr
    run_dir = Path(run_dir)
    if dataset_root is not None or cfg.data.path:
        apply_dataset_metadata(cfg, dataset_root or cfg.data.dataset_dir())  # config.yaml below says what was used
    configs = cycle_configs(cfg)
    dirs = cycle_dirs(run_dir, len(configs))
    record_path = run_dir / "cycles.json"
    done: list[dict[str, Any]] = []
    if resume and record_path.exists():
        done = read_json(record_path)
    records: list[dict[str, Any]] = []
    prev, dist, tr = init_from, dist_info, None
    for k, (c, d) in enumerate(zip(configs, dirs, strict=True)):
        earlier = done[k] if k < len(done) and done[k].get("dir") == str(d) else None
        finished = earlier is not None and phase_finished(earlier, c.train.steps)
        if finished and k < len(configs) - 1:
            records.append(earlier)  # skip: its checkpoint is the next cycle's start
        else:
            tr = Trainer(c, d, phase="train", init_from=prev, resume=resume, dist_info=dist,
                         dataset_root=dataset_root)
            dist = tr.dist
            s = tr.fit()
            records.append(earlier if finished else dict(s, cycle=k + 1, dir=str(d)))
            if tr.dist.is_main:
                write_json_atomic(record_path, records)
            barrier(tr.dist)
        prev = d
    assert tr is not None
    last = records[-1]
    wall = sum(float(r["wall_s"]) for r in records)
    samples = sum(float(r["samples_per_s"]) * float(r["wall_s"]) for r in records)
    summary = dict(last, step=sum(int(r["step"]) for r in records), steps=sum(c.train.steps for c in configs),
                   wall_s=wall, samples_per_s=samples / max(wall, 1e-9), cycles=records)
    summary.pop("cycle", None)
    summary.pop("dir", None)
    if tr.dist.is_main:
        write_json_atomic(run_dir / "summary.json", summary)
        dump_yaml(cfg, run_dir / "config.yaml")  # the whole recipe (each cycle's checkpoint holds its own)
    return summary, tr


def run_phase(cfg: ExperimentConfig, run_dir: str | Path, phase: str = "train", init_from: str | Path | None = None,
              resume: bool = True) -> dict[str, Any]:
    return fit_phase(cfg, run_dir, phase=phase, init_from=init_from, resume=resume)[0]
