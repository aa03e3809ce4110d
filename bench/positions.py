"""How well a pixel policy's position head finds the objects and the goal, per task, on held-out episodes.

For a run trained with ``loss.positions`` (``model.position_labels``), reads the run's validation episodes, predicts
the positions from each frame (the head on the vision CLS token) and compares them with the replayed truth
(``vlafoundry.data.replay``): the Euclidean error in centimetres of each labelled point (Meta-World: object 1, goal;
object 2 where a task has one), per task, beside a baseline measured in the same pass: always answering the task's
mean position over the training split (what a head that ignores the frame can do at best). The ratio column is the
head's error over that baseline's.

    python bench/positions.py RUN_DIR [--data DATASET] [--batch-size 512] [--out bench/results/mt10_positions.json]

``RUN_DIR`` is a training run (its latest checkpoint) or a checkpoint folder. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from vlafoundry.train.config import ExperimentConfig
from vlafoundry.train.inputs import load_datasets, policy_from_checkpoint
from vlafoundry.train.labels import position_stats, raw_positions

POINTS = {"metaworld": (("object", slice(0, 3)), ("object 2", slice(3, 6)), ("goal", slice(6, 9)))}


def predict(policy, ds, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised predictions (N, P) for every step of ``ds`` and their global step ids (N,)."""
    preds, steps = [], []
    with torch.inference_mode():
        for lo in range(0, len(ds), batch_size):
            idx = list(range(lo, min(lo + batch_size, len(ds))))
            b = policy.prepare(ds.__getitems__(idx))
            enc = policy.encode(b)
            preds.append(policy.position_head(enc["extras"]["vision_cls"])[:, -1].float().numpy())  # (B, P)
            steps.append(ds.step_ids[idx])
    return np.concatenate(preds), np.concatenate(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, default=None, help="the dataset (default: the run's data.path)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy, cfg, _ = policy_from_checkpoint(args.run / "checkpoints" if (args.run / "checkpoints").exists()
                                            else args.run)
    assert isinstance(cfg, ExperimentConfig)
    scheme = policy.cfg.position_labels
    if policy.position_head is None:
        raise SystemExit(f"{args.run}: model.position_labels is 'none': no position head to measure")
    root = args.data or Path(cfg.data.path)
    train, val = load_datasets(cfg, root)
    if val is None:
        raise SystemExit(f"{args.run}: no validation split (data.val_fraction 0)")
    raw = raw_positions(cfg.data.env, scheme, root, progress=False)  # (N, P) metres
    mean, std = position_stats(raw, train)  # the head's standardisation (the training split's)
    pred, steps = predict(policy, val, args.batch_size)
    pred = pred * std + mean  # (N_val, P) metres
    truth = raw[steps]
    task_of_step = val.step_tasks  # (N_val,) in the order predict() visits val's steps
    train_task = train.step_tasks  # (N_train,)
    rows = []
    for t, name in enumerate(train.tasks):
        own = task_of_step == t
        if not own.any():
            continue
        base = raw[train.step_ids[train_task == t]].mean(0)  # the task's mean position over the training split
        for point, sl in POINTS[scheme]:
            if np.abs(truth[own, sl]).max() == 0:  # the task has no such point (zeros)
                continue
            head = np.linalg.norm(pred[own, sl] - truth[own, sl], axis=1) * 100  # (n,) cm
            mean_err = np.linalg.norm(base[sl] - truth[own, sl], axis=1) * 100
            rows.append({"task": name, "point": point, "steps": int(own.sum()), "head_cm": float(np.median(head)),
                         "head_p90_cm": float(np.percentile(head, 90)), "task_mean_cm": float(np.median(mean_err)),
                         "ratio": float(np.median(head) / max(np.median(mean_err), 1e-9))})
    print("| task | point | val steps | head median (cm) | head p90 (cm) | task-mean baseline (cm) | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['point']} | {r['steps']} | {r['head_cm']:.1f} | {r['head_p90_cm']:.1f} | "
              f"{r['task_mean_cm']:.1f} | {r['ratio']:.2f} |")
    result = {"run": str(args.run), "scheme": scheme, "val_steps": len(steps), "rows": rows}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
