"""Meta-World MT10: the language-conditioned policy, the same policy with unseen phrasings, and a one-hot MLP.

    python bench/metaworld_mt10.py --data data/mt10-1000 --policy runs/mt10-1000/train [--baseline-steps 14000]
        [--episodes 50] [--workers 2] [--out bench/results/mt10]

1. Loads the trained language policy from ``--policy`` (a run directory or checkpoint, with the library's
   checkpoint loader) and the training split of ``--data`` that it was trained on (``data.val_fraction`` and
   ``data.seed`` of its config).
2. Trains :class:`vlafoundry.models.TaskOneHotMLP` -- a plain MLP on [normalised 39-D state, task one-hot] with
   a tanh-bounded continuous head and the L1 loss -- on the same demonstrations with the library's ``Trainer``
   (``model.type onehot_mlp``; AdamW, 100 warm-up steps, cosine to 5%) for ``--baseline-steps`` steps (default
   14,000: what the 100 s budget of the published run bought on one thread) and reports its wall time.
3. Scores, closed loop and with the same evaluator, seeds (from 10^9, disjoint from the demonstrations) and
   ``--episodes`` episodes per task: the language policy with its training phrasings; the same policy with every
   instruction rewritten to a phrasing it never trained on (the packaged
   ``vlafoundry/eval/paraphrases/metaworld-mt10-unseen.json``, or ``--paraphrases FILE``); the one-hot MLP, which
   reads the task from the environment (``obs["task"]``), never from the instruction.
4. Prints a per-task table (demonstrations per task in the training split; success with 95% Wilson intervals) and
   the means, and writes ``<out>/mt10.csv`` (one row per task plus ``mean``), ``<out>/mt10.json`` (everything,
   including the baseline's training record) and the baseline's weights under ``<out>/runs/onehot-mlp/``.
   The last line printed is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

UNSEEN_FILE = ("eval", "paraphrases", "metaworld-mt10-unseen.json")  # inside the vlafoundry package


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the MT10 dataset directory the policy was trained on")
    p.add_argument("--policy", required=True, help="run directory (latest checkpoint) or checkpoint directory")
    p.add_argument("--baseline-steps", type=int, default=14_000, help="training steps of the baseline (default "
                   "14000, what 100 s bought on one thread)")
    p.add_argument("--baseline-hidden", type=int, default=256, help="hidden width of the MLP (default 256)")
    p.add_argument("--baseline-layers", type=int, default=3, help="hidden layers of the MLP (default 3)")
    p.add_argument("--baseline-batch", type=int, default=256, help="batch size (default 256, as the preset)")
    p.add_argument("--baseline-lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="baseline initialisation and batch-order seed")
    p.add_argument("--episodes", type=int, default=50, help="evaluation episodes per task (default 50)")
    p.add_argument("--seed-start", type=int, default=10**9, help="first evaluation seed (default 10^9)")
    p.add_argument("--workers", type=int, default=2, help="env worker processes for the rollouts (default 2)")
    p.add_argument("--paraphrases", default=None, help="unseen-phrasing file (default: the packaged MT10 file)")
    p.add_argument("--out", default="bench/results/mt10")
    args = p.parse_args(argv)
    for name in ("baseline_steps", "episodes", "baseline_batch"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')}: expected > 0, got {getattr(args, name)}")
    if args.workers < 0:
        p.error(f"--workers: expected >= 0, got {args.workers}")
    return args


def pct(row: dict[str, Any]) -> str:
    """``96.0% [93.9, 97.4]``: success and its 95% Wilson interval, in percent."""
    return f"{100 * row['success_rate']:.1f}% [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"


def demos_per_task(ds: Any) -> dict[str, int]:
    """Episodes per task in ``ds`` (a DemoDataset split), from the task id of each episode's first step."""
    import numpy as np

    first = [int(ds.episode_steps(int(e))[0]) for e in ds.episodes]
    task_ids = ds.__getitems__(first)["task_id"].numpy() if first else np.zeros(0, dtype=np.int64)
    counts = np.bincount(task_ids, minlength=len(ds.tasks))
    return {t: int(c) for t, c in zip(ds.tasks, counts, strict=True)}


def training_seed_ranges(ds: Any, cfg: Any) -> list[tuple[int, int]]:
    """Seeds the demonstrations were generated from (every seed tried, also those whose expert failed)."""
    gen = ds.metadata.get("generation", {})
    start = int(gen.get("seed", cfg.data.seed))
    used = int(ds.metadata.get("counts", {}).get("seeds_used", cfg.data.episodes))
    return [(start, start + used)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch
    from vlafoundry.data import DemoDataset
    from vlafoundry.envs import expand_env_names
    from vlafoundry.eval.paraphrase import load_paraphrases
    from vlafoundry.eval.rollout import VectorRollout, evaluate_policy
    from vlafoundry.config import from_dict, to_dict
    from vlafoundry.train import load_run
    from vlafoundry.train.config import ExperimentConfig
    from vlafoundry.train.trainer import Trainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.paraphrases:
        paraphrases = load_paraphrases(args.paraphrases)
    else:
        from importlib import resources

        with resources.as_file(resources.files("vlafoundry").joinpath(*UNSEEN_FILE)) as path:
            paraphrases = load_paraphrases(path)

    # ---- the language policy and the demonstrations it was trained on
    policy, cfg, _ = load_run(args.policy)
    ds = DemoDataset(args.data, split="train", val_fraction=cfg.data.val_fraction, split_seed=cfg.data.seed)
    notes: list[str] = []
    if cfg.data.path and Path(cfg.data.path).resolve() != Path(args.data).resolve():
        notes.append(f"the policy's config names data.path={cfg.data.path}, this bench read --data {args.data}")
    if list(policy.spec.tasks) != list(ds.tasks):
        notes.append(f"the policy was trained on tasks {policy.spec.tasks}, the dataset has {ds.tasks}")
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)
    names = expand_env_names(ds.env_name)
    demos = demos_per_task(ds)
    seeds = training_seed_ranges(ds, cfg)
    print(f"dataset {args.data}: {ds.env_name}, training split {ds.num_episodes} episodes / {len(ds)} steps "
          f"(val_fraction {cfg.data.val_fraction}, split seed {cfg.data.seed}); policy {args.policy}", flush=True)

    # ---- the one-hot MLP baseline, same demonstrations (same split), trained by the library's Trainer
    torch.manual_seed(args.seed)
    mlp_dir = out / "runs" / "onehot-mlp"
    mlp_cfg = from_dict(ExperimentConfig, {
        "name": "onehot-mlp",
        "data": {"path": str(args.data), "val_fraction": cfg.data.val_fraction, "seed": cfg.data.seed},
        "model": {"type": "onehot_mlp", "hidden": args.baseline_hidden, "layers": args.baseline_layers},
        "loss": {"moe_aux": 0.0},
        "train": {"steps": args.baseline_steps, "batch_size": args.baseline_batch, "lr": args.baseline_lr,
                  "weight_decay": 0.0, "warmup_steps": 100, "min_lr_ratio": 0.05, "seed": args.seed,
                  "progress": False, "eval_every": args.baseline_steps, "log_every": 500,
                  "checkpoint_every": args.baseline_steps, "threads": torch.get_num_threads()},
    })
    print(f"training the one-hot MLP for {args.baseline_steps} steps on {torch.get_num_threads()} thread(s) ...",
          flush=True)
    trainer = Trainer(mlp_cfg, mlp_dir, phase="train", resume=False)
    summary = trainer.fit()
    mlp = trainer.policy.eval()
    fit = {"steps": summary["step"], "seconds": round(summary["wall_s"], 2), "batch_size": args.baseline_batch,
           "samples": summary["step"] * args.baseline_batch, "final": summary["last"],
           "parameters": summary["parameters"], "threads": torch.get_num_threads(), "config": to_dict(mlp_cfg.model)}
    print(f"  {fit['steps']} steps ({fit['samples']:,} samples) in {fit['seconds']:.1f} s; final L1 loss "
          f"{fit['final'].get('loss', float('nan')):.4f}; checkpoint under {mlp_dir}", flush=True)

    # ---- closed loop: same evaluator, seeds and episode counts for all three
    common = {"episodes": args.episodes, "seed_start": args.seed_start, "training_seeds": seeds}
    results = {}
    with VectorRollout(min(64, args.episodes * len(names)), args.workers) as pool:
        for key, pol, extra in (("language", policy, {}), ("unseen", policy, {"paraphrases": paraphrases}),
                                ("onehot", mlp, {})):
            t0 = time.perf_counter()
            results[key] = evaluate_policy(pol, names, rollout=pool, **common, **extra)
            print(f"  evaluated {key:<8} {results[key].summary['success_rate']:.3f} mean success "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    rewritten = results["unseen"].summary["paraphrased_fraction"]
    if rewritten < 1.0:
        notes.append(f"only {100 * rewritten:.1f}% of the instructions were rewritten by the paraphrase file")
        print(f"warning: {notes[-1]}", file=sys.stderr)

    # ---- table, CSV, JSON
    def by_task(key: str) -> dict[str, dict[str, Any]]:
        return {r["task"]: r for r in results[key].rows}

    lang, unseen, onehot = by_task("language"), by_task("unseen"), by_task("onehot")
    mean_key = "all" if len(names) > 1 else names[0]
    header = ["task", "demos", "language policy", "unseen phrasings", "one-hot MLP"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = []
    for name in [*names, mean_key] if len(names) > 1 else names:
        is_mean = name == "all"
        label = "**mean**" if is_mean else name.split("/", 1)[1]
        n_demos = sum(demos.get(t, 0) for t in names) if is_mean else demos.get(name, 0)
        lines.append(f"| {label} | {n_demos:,} | {pct(lang[name])} | {pct(unseen[name])} | {pct(onehot[name])} |")
        row = {"task": "mean" if is_mean else name, "demos": n_demos, "episodes": lang[name]["episodes"]}
        for key, rows in (("language", lang), ("unseen", unseen), ("onehot", onehot)):
            for f in ("success_rate", "ci_low", "ci_high"):
                row[f"{key}_{f}"] = round(rows[name][f], 4)
        csv_rows.append(row)
    seed_start = results["language"].config["seed_start"]
    print(f"\nMeta-World MT10, {args.episodes} episodes per task, seeds from {seed_start}; "
          f"one-hot MLP: {fit['steps']} steps in {fit['seconds']:.0f} s")
    print("\n".join(lines))
    with open(out / "mt10.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows(csv_rows)
    summary = {
        "bench": "metaworld_mt10",
        "episodes_per_task": args.episodes,
        "demos": sum(demos.get(t, 0) for t in names),
        "language": round(lang[mean_key]["success_rate"], 4),
        "unseen_phrasings": round(unseen[mean_key]["success_rate"], 4),
        "onehot_mlp": round(onehot[mean_key]["success_rate"], 4),
        "onehot_steps": fit["steps"],
        "onehot_seconds": fit["seconds"],
        "worst_task": {k: min(names, key=lambda t, r=r: r[t]["success_rate"])
                       for k, r in (("language", lang), ("unseen", unseen), ("onehot", onehot))},
    }
    payload = {
        "summary": summary,
        "args": vars(args),
        "dataset": {"path": args.data, "env": ds.env_name, "train_episodes": ds.num_episodes, "train_steps": len(ds),
                    "demos_per_task": demos, "val_fraction": cfg.data.val_fraction, "split_seed": cfg.data.seed,
                    "training_seeds": seeds},
        "policy": {"path": args.policy, "model": {k: v for k, v in vars(cfg.model).items() if k != "modality_dropout"},
                   "train_steps": cfg.train.steps},
        "baseline_training": fit,
        "evaluations": {k: {"rows": r.rows, "config": r.config, "elapsed_s": r.elapsed_s}
                        for k, r in results.items()},
        "table": lines,
        "notes": notes,
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "mt10.json").write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    print(f"wrote {out / 'mt10.csv'} and {out / 'mt10.json'}")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
