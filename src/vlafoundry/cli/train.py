"""``vlafoundry train`` and ``vlafoundry pretrain``: thin wrappers over :mod:`vlafoundry.train.trainer`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OVERRIDE_HELP = "any config key as a dotted override, e.g. --train.lr 3e-4 --model.fusion early"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="babyai-gotolocal",
                   help="shipped preset name or a YAML file (see --list-presets); default: %(default)s")
    p.add_argument("--out", default=None, help="run directory (default: runs/<name>[-pretrain])")
    p.add_argument("--data", default=None, help="existing dataset directory (default: generate and cache)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if OUT has checkpoints")
    p.add_argument("--list-presets", action="store_true", help="print the shipped presets and exit")
    p.set_defaults(accepts_overrides=True)


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="behaviour cloning (optionally from a pretrained checkpoint)",
                       description="Train a VLA policy by behaviour cloning. " + OVERRIDE_HELP)
    _add_common(t)
    t.add_argument("--init-from", default=None, help="checkpoint or run dir to start from (e.g. a pretrain run)")
    t.set_defaults(handler=lambda a: _run(a, "train"))
    p = sub.add_parser("pretrain", help="alignment pretraining: contrastive, ITM, MLM, MRM",
                       description="Alignment pretraining with the chapter's objectives. " + OVERRIDE_HELP)
    _add_common(p)
    p.set_defaults(handler=lambda a: _run(a, "pretrain"), init_from=None)


def _run(args: argparse.Namespace, phase: str) -> int:
    from vlafoundry.config import ConfigError
    from vlafoundry.train.config import list_presets, load_config
    from vlafoundry.train.distributed import barrier, cleanup
    from vlafoundry.train.trainer import fit_phase

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    overrides = list(getattr(args, "overrides", []) or [])
    if args.data:
        overrides += ["--data.path", args.data]
    try:
        cfg = load_config(args.preset, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/{cfg.name}{'-pretrain' if phase == 'pretrain' else ''}")
    if phase == "train" and cfg.train.restarts:
        print(f"{1 + len(cfg.train.restarts)} cosine cycles: {cfg.train.steps} steps, then "
              f"{', '.join(map(str, cfg.train.restarts))} (earlier cycles under {out / 'cycles'})")
    try:
        summary, trainer = fit_phase(cfg, out, phase=phase, init_from=args.init_from, resume=not args.no_resume)
        barrier(trainer.dist)  # every rank done before the group goes away
    finally:
        # Tear the process group down before interpreter exit: a gloo/NCCL group left alive can abort a rank at
        # shutdown ("terminate called without an active exception") and fail a finished torchrun job.
        cleanup()
    if trainer.dist.is_main:
        print(json.dumps({k: summary[k] for k in ("phase", "step", "wall_s", "samples_per_s", "stopped_early")}))
        print(f"checkpoint: {out / 'checkpoints'}")
    return 0
