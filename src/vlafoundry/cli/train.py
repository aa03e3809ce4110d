"""``vlafoundry train`` and ``vlafoundry pretrain``: thin wrappers over :mod:`vlafoundry.train.trainer`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

OVERRIDE_HELP = ("Any config key can be set as a dotted override, e.g. --train.lr 3e-4 --model.fusion early; "
                 "list the keys with their types and defaults with --list-keys [SECTION].")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="babyai-gotolocal",
                   help="shipped preset name or a YAML file (see --list-presets); default: %(default)s")
    p.add_argument("--out", default=None, help="run directory (default: runs/<name>[-pretrain])")
    p.add_argument("--data", default=None, help="existing dataset directory (default: generate and cache)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if OUT has checkpoints")
    p.add_argument("--list-presets", action="store_true", help="print the shipped presets and exit")
    p.add_argument("--list-keys", nargs="?", const="", default=None, metavar="SECTION",
                   help="print every config key (or those of SECTION: data, model, loss, train, pretrain, eval) with "
                        "its type, default and value in --preset, and exit")
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
    from vlafoundry.config import ConfigError, override_keys
    from vlafoundry.train.config import apply_dataset_metadata, list_presets, load_config
    from vlafoundry.train.distributed import barrier, cleanup
    from vlafoundry.train.trainer import fit_phase

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    overrides = list(getattr(args, "overrides", []) or [])
    if args.list_keys is not None:
        return _list_keys(args.preset, overrides, args.list_keys)
    if args.data:
        overrides += ["--data.path", args.data]
    try:
        cfg = load_config(args.preset, overrides)
        if cfg.data.path:  # the dataset's vlafoundry.json, not the preset, says what it holds
            note = apply_dataset_metadata(cfg, cfg.data.dataset_dir(), explicit=override_keys(overrides))
            if note and os.environ.get("RANK", "0") == "0":  # once under torchrun
                print(note)
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


def _list_keys(preset: str, overrides: list[str], section: str) -> int:
    """``--list-keys [SECTION]``: one line per config key: dotted name, type, default, value under the preset."""
    from vlafoundry.config import ConfigError, config_keys, suggest
    from vlafoundry.train.config import load_config

    try:
        keys = config_keys(load_config(preset, overrides))  # model: the keys of the preset's model.type
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sections = sorted({k.split(".", 1)[0] for k, *_ in keys if "." in k})
    if section:
        section = section.strip(".")
        keys = [row for row in keys if row[0] == section or row[0].startswith(section + ".")]
        if not keys:
            print(f"error: --list-keys: unknown section {section!r}; sections: {sections}"
                  + suggest(section, sections), file=sys.stderr)
            return 2
    width = max(len(k) for k, *_ in keys)
    twidth = max(len(t) for _, t, *_ in keys)
    print(f"{'key':<{width}}  {'type':<{twidth}}  default -> value in preset {preset} (when different)")
    for key, type_name, default, value in keys:
        shown = f"{default!r}" + (f" -> {value!r}" if value != default else "")
        print(f"{key:<{width}}  {type_name:<{twidth}}  {shown}")
    return 0
