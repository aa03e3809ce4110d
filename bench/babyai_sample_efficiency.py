"""Success against number of bot demonstrations on a BabyAI level, next to the published BabyAI record.

    python bench/babyai_sample_efficiency.py GoToLocal --demos 1000,2000,5000 [--seeds 0,1] [--episodes 1000]
        [--out bench/results/sample_efficiency] [--compare OTHER.csv=LABEL ...] [--pretrain] [--section.key VALUE ...]

For each demonstration count N (and each training seed) it generates (or reuses, from the dataset cache) N bot
episodes with seeds 0..N-1, trains the level's preset (``babyai-<level>``; extra dotted overrides are passed on),
evaluates closed-loop on ``--episodes`` episodes with seeds from 10^9 (disjoint from the demonstrations, the BabyAI
protocol) and writes ``<out>/<level>.csv`` (one row per run) and ``<out>/<level>.png`` (success vs demonstrations,
log scale, 95% Wilson intervals, the spread over training seeds, and the published points on the same axes).
Sizes and seeds already in the CSV are not trained again; ``--compare`` draws other runs' CSVs on the same axes
(e.g. the same preset without an augmentation), so a rerun with only finished sizes just redraws the figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

# Published imitation-learning results from the BabyAI bot (BabyAI 1.0, ICLR 2019; BabyAI 1.1, 2020).
# (demonstrations, success) pairs; for 1.0 the 99%-success demonstration range is drawn as a bar at 0.99.
PUBLISHED = {
    "GoToRedBall": {"1.0 (99% success needs)": [(50_000, 0.99), (62_000, 0.99)], "1.1": [(5_000, 0.993)]},
    "GoToLocal": {"1.0 (99% success needs)": [(149_000, 0.99), (193_000, 0.99)], "1.0 (1M demos)": [(1_000_000, 1.0)]},
    "PickupLoc": {"1.0 (99% success needs)": [(204_000, 0.99), (241_000, 0.99)]},
    "PutNextLocal": {"1.0 (99% success needs)": [(245_000, 0.99), (323_000, 0.99)], "1.1": [(5_000, 0.223)],
                     "1.0 (1M demos)": [(1_000_000, 1.0)]},
    "GoTo": {"1.0 (99% success needs)": [(341_000, 0.99), (409_000, 0.99)], "1.1": [(10_000, 0.961)],
             "1.0 (1M demos)": [(1_000_000, 1.0)]},
    "BossLevel": {"1.0 (1M demos)": [(1_000_000, 0.77)], "1.1 (1M demos)": [(1_000_000, 0.904)]},
}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("level", help="BabyAI level, e.g. GoToLocal")
    p.add_argument("--demos", default="1000,2000,5000", help="comma-separated demonstration counts")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--episodes", type=int, default=1000, help="evaluation episodes per run (default 1000)")
    p.add_argument("--preset", default=None, help="preset (default babyai-<level lower-case>)")
    p.add_argument("--pretrain", action="store_true",
                   help="alignment-pretrain first (the preset's pretrain section: contrastive / ITM / MLM / MRM on the "
                   "same demonstrations), then behaviour-clone from it, as `vlafoundry pretrain` + `train --init-from`")
    p.add_argument("--workers", type=int, default=2, help="generation/evaluation worker processes")
    p.add_argument("--out", default="bench/results/sample_efficiency")
    p.add_argument("--compare", action="append", default=[], metavar="CSV=LABEL",
                   help="also draw the curve of another run of this script (its CSV), e.g. "
                   "bench/results/sample_efficiency_memory/GoToLocal.csv='memory, no augmentation' (repeatable)")
    return p.parse_known_args(argv)


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV this script wrote, with numbers as numbers."""
    with open(path) as f:
        return [dict(r, demos=int(r["demos"]), train_seed=int(r["train_seed"]), success_rate=float(r["success_rate"]),
                     ci_low=float(r["ci_low"]), ci_high=float(r["ci_high"])) for r in csv.DictReader(f)]


def parse_compare(specs: list[str]) -> list[tuple[str, list[dict]]]:
    """``CSV=LABEL`` (or ``CSV``: labelled by its file's folder) -> [(label, rows)]."""
    out = []
    for spec in specs:
        path, _, label = spec.partition("=")
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"--compare: no such CSV: {p}")
        out.append((label or p.parent.name, read_rows(p)))
    return out


def run_one(level: str, preset: str, demos: int, seed: int, episodes: int, workers: int, out: Path,
            overrides: list[str], pretrain: bool = False) -> dict:
    import torch

    from vlafoundry.eval.rollout import evaluate_policy
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import fit_phase

    cfg = load_config(preset, ["--data.env", f"babyai/{level}", "--data.episodes", str(demos),
                               "--data.workers", str(workers), "--train.seed", str(seed), *overrides])
    run_dir = out / "runs" / f"{level}-n{demos}-s{seed}"
    t0 = time.perf_counter()
    init_from = None
    if pretrain:
        init_from = run_dir / "pretrain"
        fit_phase(cfg, init_from, phase="pretrain")
    pretrain_s = time.perf_counter() - t0
    summary, trainer = fit_phase(cfg, run_dir / "train" if pretrain else run_dir, init_from=init_from)
    train_s = time.perf_counter() - t0 - pretrain_s
    policy = trainer.policy.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # worker processes step the environments on the other core
    from vlafoundry.envs import get_family

    result = evaluate_policy(policy, cfg.data.env, episodes=episodes, workers=workers,
                             env_kwargs=dict(get_family(cfg.data.env).env_kwargs(cfg.data)),  # e.g. image="rgb"
                             seed_start=10**9, training_seeds=[(cfg.data.seed, cfg.data.seed + demos)])
    torch.set_num_threads(threads)
    row = result.summary
    return {"level": level, "demos": demos, "train_seed": seed, "episodes": row["episodes"],
            "successes": row["successes"], "success_rate": row["success_rate"], "ci_low": row["ci_low"],
            "ci_high": row["ci_high"], "mean_length": row["mean_length"], "train_steps": summary["step"],
            "train_samples": summary["train_samples"], "pretrain": pretrain, "pretrain_wall_s": round(pretrain_s, 1),
            "train_wall_s": round(train_s, 1),
            "eval_wall_s": round(result.elapsed_s, 1), "preset": preset, "overrides": " ".join(overrides)}


def plot(level: str, rows: list[dict], path: Path, compare: list[tuple[str, list[dict]]] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    demos = sorted({r["demos"] for r in rows})
    for i, s in enumerate(sorted({r["train_seed"] for r in rows})):
        rs = sorted((r for r in rows if r["train_seed"] == s), key=lambda r: r["demos"])
        x = np.array([r["demos"] for r in rs]) * (1 + 0.03 * i)
        y = np.array([r["success_rate"] for r in rs])
        err = np.array([[r["success_rate"] - r["ci_low"] for r in rs], [r["ci_high"] - r["success_rate"] for r in rs]])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"vlafoundry (train seed {s})")
    if len({r["train_seed"] for r in rows}) > 1:
        mean = [np.mean([r["success_rate"] for r in rows if r["demos"] == d]) for d in demos]
        ax.plot(demos, mean, "k--", lw=1, label="vlafoundry mean over seeds")
    for j, (label, other) in enumerate(compare):  # other runs: mean over seeds, envelope of their intervals
        ds = sorted({r["demos"] for r in other})
        y = np.array([np.mean([r["success_rate"] for r in other if r["demos"] == d]) for d in ds])
        lo = np.array([min(r["ci_low"] for r in other if r["demos"] == d) for d in ds])
        hi = np.array([max(r["ci_high"] for r in other if r["demos"] == d) for d in ds])
        ax.errorbar(np.array(ds) * (0.97 - 0.03 * j), y, yerr=[y - lo, hi - y], marker="^", ls=":", capsize=3,
                    color=str(0.35 + 0.2 * j), label=f"vlafoundry: {label}")
    for label, pts in PUBLISHED.get(level, {}).items():
        xs, ys = zip(*pts)
        style = "-" if len(pts) > 1 else ""
        ax.plot(xs, ys, style, marker="s", ms=6, lw=3, alpha=0.6, label=f"BabyAI {label}")
    ax.set_xscale("log")
    ax.set_xlabel("bot demonstrations (log scale)")
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"BabyAI {level}: success vs demonstrations")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    level = args.level
    preset = args.preset or f"babyai-{level.lower()}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{level}.csv"
    try:
        compare = parse_compare(args.compare)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # keep finished runs: the script can be rerun to add sizes or seeds
    rows: list[dict] = read_rows(csv_path) if csv_path.exists() else []
    done = {(r["demos"], r["train_seed"]) for r in rows}
    for demos in [int(x) for x in args.demos.split(",")]:
        for seed in [int(x) for x in args.seeds.split(",")]:
            if (demos, seed) in done:
                continue
            row = run_one(level, preset, demos, seed, args.episodes, args.workers, out, overrides, args.pretrain)
            print(json.dumps(row), flush=True)
            rows.append(row)
            rows.sort(key=lambda r: (r["demos"], r["train_seed"]))
            with open(csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[-1].keys()))
                w.writeheader()
                w.writerows(rows)
            plot(level, rows, out / f"{level}.png", compare)
    if rows:
        plot(level, rows, out / f"{level}.png", compare)  # also when every size was finished earlier
    print(f"wrote {csv_path} and {out / (level + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
