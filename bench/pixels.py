"""Training throughput from pixels against the symbolic preset, measured in the same process.

Both policies are built from their presets (``babyai-gotolocal`` reads the symbolic 7x7x3 grid; ``babyai-gotolocal-rgb``
the 56x56x3 egocentric RGB frame through the ViT patch encoder) on GoToLocal episodes generated with the same seeds,
then trained with the trainer's step (batch assembly from the dataset, forward, backward, clipping, AdamW) on
batches of ``--batch-size`` single steps. Variants of the pixel policy (``--variants``: the convolutional stem,
random-shift augmentation, the per-cell label loss with each batch's labels read from its frames, the cell tokens)
are timed in the same rounds. Rounds interleave the variants (order rotated each round);
medians over all timed steps; CPU-time clock with one thread (a shared machine's preemption does not count).
The ratio column is each variant's time per sample over the symbolic preset's: issue 16 asks for <= 3.

    python bench/pixels.py [--episodes 200] [--batch-size 256] [--steps 8] [--rounds 4] [--out bench/results/pixels.json]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import BatchStream, build_default, make_train_step, pick_clock  # noqa: E402  (bench/train.py)

from vlafoundry.data import generate_dataset  # noqa: E402
from vlafoundry.envs import get_family  # noqa: E402
from vlafoundry.train.config import load_config  # noqa: E402
from vlafoundry.train.trainer import build_optimizer  # noqa: E402

CELLS = ("--model.cell_labels", "minigrid", "--loss.cells", "1.0")
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "symbolic (grid)": ("babyai-gotolocal", ()),
    "rgb patch": ("babyai-gotolocal-rgb", ()),
    "rgb conv stem": ("babyai-gotolocal-rgb", ("--model.vision_stem", "conv")),
    "rgb patch + shift 4": ("babyai-gotolocal-rgb", ("--model.image_shift", "4")),
    "rgb patch + cells": ("babyai-gotolocal-rgb", CELLS),
    "rgb cell tokens": ("babyai-gotolocal-rgb", (*CELLS, "--model.cell_tokens", "replace")),
}


def build(name: str, roots: dict[str, Path], batch_size: int, clock: Any) -> dict[str, Any]:
    preset, overrides = VARIANTS[name]
    cfg = load_config(preset, list(overrides))
    policy, ds = build_default(cfg, roots[cfg.data.image])
    opt = build_optimizer(policy, cfg.train)
    labeller = None
    if cfg.loss.cells > 0:  # the trainer labels each batch's frames (Trainer._labelled): timed with the step
        labeller = get_family(cfg.data.env).cell_labels(cfg.model.cell_labels, policy.spec.image_shape)

    def loss_fn(batch: dict[str, Any]) -> torch.Tensor:
        if labeller is not None:
            batch = {**batch, "cell_labels": torch.from_numpy(labeller(np.asarray(batch["image"])))}
        return policy(batch, cfg.loss)[0]

    return {"policy": policy, "stream": BatchStream(ds, batch_size),
            "step": make_train_step(policy, loss_fn, opt, cfg.train.grad_clip, clock), "times": []}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; expected some of {list(VARIANTS)}")
    if names[0] != "symbolic (grid)":
        names = ["symbolic (grid)", *[n for n in names if n != "symbolic (grid)"]]
    torch.set_num_threads(1)
    clock_kind, clock = pick_clock("auto", 1)
    with tempfile.TemporaryDirectory(prefix="vlafoundry-bench-pixels-") as tmp:
        roots = {}
        for image in ("symbolic", "rgb"):
            roots[image] = Path(tmp) / image
            generate_dataset("babyai/GoToLocal", args.episodes, roots[image], workers=1, seed=0, image=image,
                             progress=False)
        runs = {n: build(n, roots, args.batch_size, clock) for n in names}
        for r in runs.values():
            for _ in range(args.warmup):
                r["step"](r["stream"].next())
        for i in range(args.rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for n in order:
                r = runs[n]
                for _ in range(args.steps):
                    t0 = clock()
                    batch = r["stream"].next()
                    r["step"](batch)
                    r["times"].append(clock() - t0)
    base = statistics.median(runs[names[0]]["times"])
    rows = []
    for n in names:
        t = statistics.median(runs[n]["times"])
        rows.append({"variant": n, "step_ms": 1e3 * t, "samples_per_s": args.batch_size / t, "ratio": t / base,
                     "parameters": sum(p.numel() for p in runs[n]["policy"].parameters())})
    print(f"{'variant':<22} {'step ms':>9} {'samples/s':>10} {'time / symbolic':>16}")
    for r in rows:
        print(f"{r['variant']:<22} {r['step_ms']:>9.1f} {r['samples_per_s']:>10.0f} {r['ratio']:>16.2f}")
    result = {"bench": "pixels", "clock": clock_kind, "threads": 1, "batch_size": args.batch_size,
              "episodes": args.episodes, "steps_per_variant": args.steps * args.rounds, "rows": rows,
              "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
