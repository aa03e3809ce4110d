"""``vlafoundry quickstart``: demonstrations -> alignment pretraining -> behaviour cloning -> evaluation -> report.

With no arguments it runs the ``babyai-gotolocal-minilm`` preset end to end on BabyAI GoToLocal (the frozen
pretrained MiniLM reads the instructions, so phrasings never seen in training work too; ``--preset babyai-gotolocal``
is the word-tokenizer version); any config key can be
overridden (``--train.steps 500``). Each stage shows progress and is cached/resumable: rerunning the command
reuses the generated dataset and finished phases.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _plain(doc: str | None) -> str:
    """The module docstring as help text: reST inline literals (````x````) shown as plain text."""
    import re

    return re.sub(r"``([^`]+)``", r"\1", doc or "")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="generate demos, pretrain, train, evaluate and report (BabyAI GoToLocal)",
                       description=_plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="babyai-gotolocal-minilm", help="preset or YAML file (default: %(default)s)")
    p.add_argument("--out", default="runs/quickstart", help="run folder (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=None, help="evaluation episodes (default: the preset's eval.episodes)")
    p.add_argument("--no-pretrain", action="store_true", help="skip alignment pretraining")
    p.add_argument("--workers", type=int, default=None, help="evaluation worker processes")
    p.set_defaults(handler=run, accepts_overrides=True)


def _stage(n: int, total: int, text: str) -> None:
    print(f"\n[{n}/{total}] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from vlafoundry.config import ConfigError
    from vlafoundry.eval.options import EvalError
    from vlafoundry.eval.pipeline import evaluate_checkpoint
    from vlafoundry.train.config import load_config
    from vlafoundry.train.distributed import init_distributed
    from vlafoundry.train.trainer import Trainer, ensure_dataset, fit_phase

    try:
        cfg = load_config(args.preset, list(getattr(args, "overrides", []) or []))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    total = 4 if args.no_pretrain else 5
    t0 = time.perf_counter()
    dist = init_distributed(cfg.train.device)

    _stage(1, total, f"demonstrations: {cfg.data.episodes} expert episodes of {cfg.data.env}")
    root = ensure_dataset(cfg, dist, progress=True)
    print(f"dataset: {root}")
    stage = 2
    init_from = None
    if not args.no_pretrain:
        lc = cfg.pretrain.loss
        active = [n.upper() if n not in ("contrastive", "grounding") else n
                  for n in ("contrastive", "itm", "mlm", "mrm", "grounding") if getattr(lc, n) > 0]
        _stage(stage, total, f"alignment pretraining ({cfg.pretrain.steps} steps: {', '.join(active)})")
        Trainer(cfg, out / "pretrain", phase="pretrain", dataset_root=root, dist_info=dist).fit()
        init_from = out / "pretrain"
        stage += 1
    cycles = f", then restarts of {', '.join(map(str, cfg.train.restarts))}" if cfg.train.restarts else ""
    _stage(stage, total, f"behaviour cloning ({cfg.train.steps} steps{cycles})")
    summary, tr = fit_phase(cfg, out / "train", phase="train", init_from=init_from, dataset_root=root,
                            dist_info=dist)
    print(f"trained {summary['step']} steps in {summary['wall_s']:.0f} s ({summary['samples_per_s']:,.0f} samples/s)")
    stage += 1
    _stage(stage, total, "closed-loop evaluation on seeds disjoint from the demonstrations")
    given = {"robustness": True, "gifs": 2, "out": str(out), "episodes": args.episodes, "workers": args.workers}
    try:  # every other option as `vlafoundry eval` resolves it (the config's eval section, then the defaults)
        evaluate_checkpoint(out / "train", given, label=lambda name: f"--{name.replace('_', '-')}")
    except EvalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _stage(total, total, "report")
    print(f"report: {(out / 'report.html').resolve()}\n        {(out / 'report.md').resolve()}")
    print(f"quickstart finished in {time.perf_counter() - t0:.0f} s")
    return 0
