"""What the camera changes on Meta-World MT10: state vs pixels, with and without alignment pretraining, per data size.

    python bench/metaworld_camera.py [--demos 10,50] [--obs state,pixels] [--pretrain none,vl] [--steps 1500]
        [--episodes 20] [--threads 1] [--workers 1] [--data-root data] [--runs runs/metaworld_camera]
        [--out bench/results/metaworld_camera] [--max-steps N] [--section.key VALUE ...]

Each cell is one observation mode x one pretraining choice x one number of demonstrations per task, trained and
evaluated with the CLI (the commands are printed as they run, so each cell can be repeated by hand):

- observations: ``state`` is the ``metaworld-mt10`` preset (the 39-D state: hand, objects and goal positions);
  ``pixels`` is ``metaworld-mt10-pixels`` (a 64x64 ``corner2`` frame + hand proprioception; object and goal positions
  only through the frame, with the preset's training-only position targets);
- pretraining: ``none`` trains from scratch; ``vl`` runs the preset's alignment pretraining (its ``pretrain``
  section: contrastive / ITM / MLM, + MRM for pixels) on the same demonstrations first (``train --init-from``);
- demonstrations: ``N`` per task = ``10 N`` DART episodes of the preset's generator (seed 0, noise 0.2, round-robin
  over the tasks: a task whose expert fails a seed gets one fewer), generated once per size and mode into
  ``DATA_ROOT/mt10-{state,rgb}-{10N}``. The state and pixel datasets of one size use the same seeds.

Every cell trains the same number of steps (``--steps``, one cosine cycle: ``train.restarts`` off) at the preset's
batch and learning rate, so the cells differ only in what the policy reads and how it starts; evaluation is closed
loop, ``--episodes`` per task with seeds from 10^9 (disjoint from the demonstrations), 95% Wilson intervals.
Finished stages are kept (a cell's ``eval.json`` ends it), so the script resumes after an interruption. Writes
``OUT/cells.json`` (one row per cell, per-task rates, held-out action L1, each phase's wall seconds from its
summary.json / eval.json, and wall and CPU seconds of the commands this invocation ran) and
``OUT/table.md``, and prints the table. Extra dotted overrides (``--pretrain.steps 100``) go to both the pretraining
and the training command of every cell.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {"state": "metaworld-mt10", "pixels": "metaworld-mt10-pixels"}
GENERATE = {  # the presets' data sections, as `vlafoundry data generate` flags
    "state": ["--action-noise", "0.2"],
    "pixels": ["--image", "rgb", "--camera", "corner2", "--image-size", "64", "--action-noise", "0.2"],
}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demos", default="10,50", help="demonstrations per task, comma-separated")
    p.add_argument("--obs", default="state,pixels", help="observation modes: state, pixels")
    p.add_argument("--pretrain", default="none,vl", help="none (from scratch), vl (alignment pretraining first)")
    p.add_argument("--steps", type=int, default=1500, help="behaviour-cloning steps of every cell")
    p.add_argument("--episodes", type=int, default=20, help="evaluation episodes per task")
    p.add_argument("--max-steps", type=int, default=0, help="evaluation step cap (0: the env's own, 500 for MT10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for pretraining and training")
    p.add_argument("--workers", type=int, default=1, help="evaluation worker processes")
    p.add_argument("--data-root", default="data")
    p.add_argument("--runs", default="runs/metaworld_camera")
    p.add_argument("--out", default="bench/results/metaworld_camera")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("--") and "." not in o]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (overrides are dotted: --section.key VALUE)")
    args.demos = [int(x) for x in args.demos.split(",")]
    args.obs = args.obs.split(",")
    args.pretrain = args.pretrain.split(",")
    for name, values, allowed in (("--obs", args.obs, PRESETS), ("--pretrain", args.pretrain, ("none", "vl"))):
        bad = [v for v in values if v not in allowed]
        if bad:
            p.error(f"{name}: expected a comma list of {', '.join(allowed)}; got {', '.join(bad)}")
    if any(n < 1 for n in args.demos):
        p.error(f"--demos: expected demonstrations per task >= 1; got {args.demos}")
    return args, overrides


def run_cli(cmd: list[str], log: Path) -> dict:
    """Run ``python -m vlafoundry CMD`` with its output appended to ``log``; wall and child CPU seconds."""
    full = [sys.executable, "-m", "vlafoundry", *cmd]
    print("$ vlafoundry " + " ".join(cmd), flush=True)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(full) + "\n")
        f.flush()
        rc = subprocess.call(full, stdout=f, stderr=subprocess.STDOUT)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise SystemExit(f"error: `vlafoundry {' '.join(cmd)}` failed with exit status {rc}; see {log}")
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)}


def dataset(obs: str, per_task: int, args: argparse.Namespace, log: Path) -> tuple[Path, dict | None]:
    """The cell's dataset (generated once per observation mode and size)."""
    path = Path(args.data_root) / f"mt10-{'rgb' if obs == 'pixels' else 'state'}-{10 * per_task}"
    if (path / "vlafoundry.json").exists():
        return path, None
    cost = run_cli(["data", "generate", "metaworld/mt10", "--episodes", str(10 * per_task), *GENERATE[obs],
                    "--workers", "1", "--no-progress", "--out", str(path)], log)
    return path, cost


def finished(path: Path, key: str, value: int) -> bool:
    try:
        return json.loads(path.read_text()).get(key) == value
    except (OSError, ValueError):
        return False


def run_cell(obs: str, pre: str, per_task: int, args: argparse.Namespace, overrides: list[str], log: Path) -> dict:
    run = Path(args.runs) / f"{obs}-{pre}-n{per_task}"
    run.mkdir(parents=True, exist_ok=True)
    costs: dict[str, dict] = {}
    data, gen_cost = dataset(obs, per_task, args, log)
    if gen_cost:
        costs["generate"] = gen_cost
    preset, threads = PRESETS[obs], ["--train.threads", str(args.threads)]
    common = ["--preset", preset, "--data", str(data), *threads, *overrides]
    init = []
    if pre == "vl":
        if not (run / "pretrain" / "summary.json").exists():
            costs["pretrain"] = run_cli(["pretrain", *common, "--out", str(run / "pretrain")], log)
        init = ["--init-from", str(run / "pretrain")]
    train = run / "train"
    if not finished(train / "summary.json", "step", args.steps):
        costs["train"] = run_cli(["train", *common, "--out", str(train), *init, "--train.steps", str(args.steps),
                                  "--train.restarts", "[]"], log)
    if "train" in costs or not _eval_matches(train / "eval.json", args):
        cmd = ["eval", str(train), "--episodes", str(args.episodes), "--workers", str(args.workers), "--no-offline",
               "--gifs", "0"]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        costs["eval"] = run_cli(cmd, log)
    return row(obs, pre, per_task, data, run, costs)


def _eval_matches(path: Path, args: argparse.Namespace) -> bool:
    """``path`` is an eval.json of this script's protocol (episodes per task, step cap)."""
    try:
        cfg = json.loads(path.read_text()).get("config", {})
    except (OSError, ValueError):
        return False
    return cfg.get("episodes_per_task") == args.episodes and (cfg.get("max_steps") or 0) == args.max_steps


def row(obs: str, pre: str, per_task: int, data: Path, run: Path, costs: dict) -> dict:
    ev = json.loads((run / "train" / "eval.json").read_text())
    summary = json.loads((run / "train" / "summary.json").read_text())
    meta = json.loads((data / "vlafoundry.json").read_text())
    rows = {r["task"]: r for r in ev["rows"]}
    total = rows.pop("all")
    return {"obs": obs, "pretrain": pre, "demos_per_task": per_task, "dataset": str(data),
            "episodes_in_dataset": meta["counts"]["episodes"], "steps_in_dataset": meta["counts"]["steps"],
            "success_rate": total["success_rate"], "ci_low": total["ci_low"], "ci_high": total["ci_high"],
            "episodes": total["episodes"], "successes": total["successes"],
            "per_task": {t.split("/")[-1]: r["success_rate"] for t, r in rows.items()},
            "val_action_l1": _val_l1(run / "train" / "metrics.jsonl"), "train_steps": summary["step"],
            "train_wall_s": round(summary["wall_s"], 1), "pretrain_wall_s": _wall(run / "pretrain" / "summary.json"),
            "eval_wall_s": round(ev["elapsed_s"], 1), "run": str(run), "costs": costs}


def _wall(summary: Path) -> float | None:
    """The wall seconds a phase's summary.json records (since its last resume), or None without one."""
    try:
        return round(json.loads(summary.read_text())["wall_s"], 1)
    except (OSError, ValueError, KeyError):
        return None


def _val_l1(metrics: Path) -> float | None:
    """The last held-out action L1 the trainer logged (a ``"split": "val"`` record of metrics.jsonl)."""
    from vlafoundry.eval.report_plots import read_metrics

    # read_metrics skips blank and truncated lines
    val = [r["action_l1"] for r in read_metrics(metrics) if r.get("split") == "val" and "action_l1" in r]
    return val[-1] if val else None


def table(cells: list[dict]) -> str:
    header = ("| observations | pretraining | demos/task (episodes) | success [95% CI] (eval episodes) | weakest tasks | "
              "val action L1 |")
    lines = [header, "|---|---|---:|---|---|---:|"]
    for c in cells:
        weak = sorted(c["per_task"].items(), key=lambda kv: kv[1])[:3]
        l1 = "" if c["val_action_l1"] is None else f"{c['val_action_l1']:.4f}"
        lines.append(f"| {c['obs']} | {c['pretrain']} | {c['demos_per_task']} ({c['episodes_in_dataset']}) | "
                     f"{100 * c['success_rate']:.1f}% [{100 * c['ci_low']:.1f}, {100 * c['ci_high']:.1f}] ({c['episodes']}) | "
                     + ", ".join(f"{t} {100 * r:.0f}" for t, r in weak) + f" | {l1} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    log = Path(args.runs) / "commands.log"
    path = out / "cells.json"
    cells: list[dict] = []
    for per_task in args.demos:
        for obs in args.obs:
            for pre in args.pretrain:
                cells = record(path, run_cell(obs, pre, per_task, args, overrides, log))
    print(table(cells))
    print(f"wrote {path} and {out / 'table.md'}")
    return 0


def record(path: Path, cell: dict) -> list[dict]:
    """Merge ``cell`` into ``path`` (cells.json) and rewrite table.md beside it, under a lock: several runs of this
    script (e.g. one per data size, one per core) may share an output folder."""
    with open(path.parent / ".cells.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = {(c["obs"], c["pretrain"], c["demos_per_task"]): c for c in
               (json.loads(path.read_text()) if path.exists() else [])}
        key = (cell["obs"], cell["pretrain"], cell["demos_per_task"])
        if key in old and not cell["costs"]:
            cell["costs"] = old[key]["costs"]  # nothing rerun: keep the costs measured when it ran
        old[key] = cell
        cells = sorted(old.values(), key=lambda c: (c["demos_per_task"], c["obs"], c["pretrain"]))
        path.write_text(json.dumps(cells, indent=1) + "\n")
        (path.parent / "table.md").write_text(table(cells) + "\n")
    return cells


if __name__ == "__main__":
    raise SystemExit(main())
