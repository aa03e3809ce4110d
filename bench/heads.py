"""Action heads: acting latency vs sampling steps, and regression vs flow vs diffusion on a multimodal task.

    python bench/heads.py latency [--steps 1,2,5,10,20] [--chunk 8] [--reps 50]
    python bench/heads.py detour --out runs/heads [--heads continuous,continuous-mse,binned,binned-sample,flow,diffusion]
                                 [--seeds 0,1,2] [--episodes 100] [--train-steps 1500] [--plot docs/img/heads_detour.png]
                                 [--steps 1,2,5,10,20]

``latency``: milliseconds per predicted chunk (one observation, batch 1, one thread) of a policy built for
``point/detour`` with each head, for each number of integration (flow) / DDIM (diffusion) steps; the regression head
(``continuous``) and the 256-bin head (``binned``) have none. ``detour``: trains each head on the same 1,000 ``point/detour`` demonstrations (half detour
left of the obstacle, half right: ``envs/point.py``) with ``bench/heads_detour.yaml`` (one ``vlafoundry train``
process per run, one thread), then rolls each policy out in closed loop on evaluation seeds, counting successes,
collisions, and which side each trajectory passed the obstacle on (``binned-sample``: the ``binned`` runs acting
with ``model.action_selection sample``, each dimension's bin drawn independently; ``--steps``: the generative heads
evaluated at several sampling step counts); with ``--plot``, a PNG of sampled trajectories.
Prints a table and one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "bench" / "heads_detour.yaml"


def _policy(head: str, chunk: int) -> Any:
    from vlafoundry.config import from_dict
    from vlafoundry.envs import make_env
    from vlafoundry.models import PolicySpec
    from vlafoundry.models.config import PolicyConfig
    from vlafoundry.models.vla import VLAPolicy

    env = make_env("point/detour")
    s = env.spec
    spec = PolicySpec(env=s.name, action_type=s.action_type, action_dim=s.action_dim, action_low=s.action_low,
                      action_high=s.action_high, state_dim=s.state_dim, state_mean=[0.0] * 4, state_std=[1.0] * 4)
    cfg = from_dict(PolicyConfig, {"vision": "none", "language": "none", "fusion": "early", "head": head,
                                   "d_model": 64, "num_layers": 1, "d_ff": 128, "chunk": chunk,
                                   "gen_hidden": 128, "gen_layers": 2})
    return VLAPolicy(cfg, spec).eval(), env


def latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    rows = []
    for head in ("continuous", "binned", "flow", "diffusion"):
        policy, env = _policy(head, args.chunk)
        obs = env.reset(seed=0)
        batch = {"state": torch.as_tensor(obs["state"])[None, None], "instruction": [obs["instruction"]]}
        for n in (args.steps if head in STEP_KEYS else [0]):
            if n:
                setattr(policy.cfg, "flow_steps" if head == "flow" else "diffusion_steps", n)
            for _ in range(5):
                policy.predict_chunk(batch)
            t0 = time.perf_counter()
            for _ in range(args.reps):
                policy.predict_chunk(batch)
            ms = (time.perf_counter() - t0) / args.reps * 1e3
            rows.append({"bench": "heads_latency", "head": head, "steps": n, "chunk": args.chunk, "ms_per_chunk": ms,
                         "threads": 1})
    print(f"{'head':<11} {'steps':>5} {'ms/chunk':>9}")
    for r in rows:
        print(f"{r['head']:<11} {r['steps']:>5} {r['ms_per_chunk']:>9.2f}")
    for r in rows:
        print(json.dumps(r))
    return rows


# ---------------------------------------------------------------------------------------------------- detour
def rollout(policy: Any, episodes: int, batch: int = 0) -> dict[str, Any]:
    """Closed loop on evaluation seeds, ``batch`` envs at a time (0: all at once; each batch starts with ``reset()``,
    which re-seeds the acting generator, so batches of one size would repeat each other's noise): success and
    collision rates, the side of the obstacle passed (the sign of x where the path crosses y = 0; ``obstacle`` when it
    hit it) and the trajectories (list of (T, 2) arrays)."""
    batch = batch or episodes
    from vlafoundry.envs import make_env
    from vlafoundry.envs.spec import EVAL_SEED_BASE

    trajs: list[np.ndarray] = []
    success = collision = 0
    for start in range(0, episodes, batch):
        n = min(batch, episodes - start)
        envs = [make_env("point/detour") for _ in range(n)]
        obs = [e.reset(seed=EVAL_SEED_BASE + start + i) for i, e in enumerate(envs)]
        policy.reset()
        policy.acting.generator.manual_seed(start)
        done = [False] * n
        paths = [[o["state"][:2].copy()] for o in obs]
        for _ in range(envs[0].spec.max_episode_steps):
            act = policy.select_action({"state": np.stack([o["state"] for o in obs]),
                                        "instruction": [o["instruction"] for o in obs]})
            for i, e in enumerate(envs):
                if done[i]:
                    continue
                obs[i], _, term, trunc, info = e.step(act[i])
                paths[i].append(obs[i]["state"][:2].copy())
                if term or trunc:
                    done[i] = True
                    success += int(info["success"])
                    collision += int(info["collision"])
            if all(done):
                break
        trajs += [np.stack(p) for p in paths]
    from vlafoundry.envs.point import OBSTACLE_RADIUS

    sides = []
    for p in trajs:
        if np.linalg.norm(p, axis=1).min() < OBSTACLE_RADIUS:
            sides.append("obstacle")
            continue
        cross = p[np.argmin(np.abs(p[:, 1]))]  # the point nearest to y = 0
        sides.append("left" if cross[0] < 0 else "right")
    return {"success": success / episodes, "collision": collision / episodes,
            "left": sides.count("left") / episodes, "right": sides.count("right") / episodes,
            "trajectories": trajs}


#: Bench labels -> ``vlafoundry train`` overrides (``continuous-mse``: regression with the averaging loss; ``binned``:
#: 256 bins per action dimension, argmax per dimension).
VARIANTS = {"continuous": ["--model.head", "continuous"],
            "continuous-mse": ["--model.head", "continuous", "--loss.continuous", "mse"],
            "binned": ["--model.head", "binned"],
            "flow": ["--model.head", "flow"], "diffusion": ["--model.head", "diffusion"]}
#: Labels that act differently with another label's trained run: label -> (trained label, acting-time settings).
ACTING = {"binned-sample": ("binned", {"action_selection": "sample"})}
#: The acting-time setting that counts sampling steps, per generative head.
STEP_KEYS = {"flow": "flow_steps", "diffusion": "diffusion_steps"}


def _train(run: Path, data: Path, head: str, seed: int, steps: int, extra: list[str]) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "vlafoundry", "train", "--preset", str(PRESET), "--data", str(data), "--out",
           str(run), *VARIANTS[head], "--train.seed", str(seed), "--train.steps", str(steps),
           "--train.checkpoint_every", str(steps), "--train.progress", "false", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def detour(args: argparse.Namespace) -> list[dict[str, Any]]:
    from vlafoundry.train import load_run

    torch.set_num_threads(1)
    out = Path(args.out)
    data = out / "data"
    if not (data / "vlafoundry.json").exists():
        subprocess.run([sys.executable, "-m", "vlafoundry", "data", "generate", "point/detour", "--episodes",
                        str(args.demos), "--out", str(data), "--workers", "1"], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), stdout=subprocess.DEVNULL)
    rows, examples = [], {}
    for head in args.heads:
        trained, extra_act = ACTING.get(head, (head, {}))
        if trained not in VARIANTS:
            raise SystemExit(f"--heads: expected labels from {sorted([*VARIANTS, *ACTING])}, got {head!r}")
        sweep = args.steps if (args.steps and trained in STEP_KEYS) else [0]
        for seed in args.seeds:
            run = out / f"{trained}-s{seed}"
            train_s = 0.0 if (run / "checkpoints" / "latest").exists() else _train(
                run, data, trained, seed, args.train_steps, args.extra)
            for n in sweep:
                act = {**args.act, **extra_act, **({STEP_KEYS[trained]: str(n)} if n else {})}
                policy, _, _ = load_run(run, device="cpu")
                policy.eval()
                trained_steps = getattr(policy.cfg, STEP_KEYS[trained]) if trained in STEP_KEYS else 0
                for key, value in act.items():  # acting-time settings on the loaded policy's config
                    kind = type(getattr(policy.cfg, key))
                    setattr(policy.cfg, key, value.lower() in ("1", "true") if kind is bool else kind(value))
                r = rollout(policy, args.episodes)
                if n in (0, trained_steps):  # the plot and the saved paths: the run's own step count
                    examples.setdefault(head, r["trajectories"][:40])
                if not n:
                    np.savez_compressed(run / f"trajectories{'-' + head if head != trained else ''}.npz",
                                        *r["trajectories"])
                row = {"bench": "heads_detour", "head": head, "seed": seed, "act": act, "steps": n or None,
                       "train_steps": args.train_steps, "train_s": round(train_s, 1), "episodes": args.episodes,
                       **{k: v for k, v in r.items() if k != "trajectories"}}
                rows.append(row)
                print(json.dumps(row), flush=True)
                train_s = 0.0
    print(f"\n{'head':<15} {'steps':>5} {'seed':>4} {'success':>8} {'collision':>9} {'left':>6} {'right':>6}")
    for r in rows:
        print(f"{r['head']:<15} {r['steps'] or '-':>5} {r['seed']:>4} {r['success']:>8.3f} {r['collision']:>9.3f} "
              f"{r['left']:>6.2f} {r['right']:>6.2f}")
    for line in fewest_steps(rows):
        print(line)
    if args.plot:
        plot(examples, Path(args.plot))
    return rows


def fewest_steps(rows: list[dict[str, Any]], within: float = 0.01) -> list[str]:
    """Per generative head swept over sampling steps: mean success over seeds per step count, and the smallest step
    count whose mean is within ``within`` (1 point) of the best mean."""
    lines = []
    for head in dict.fromkeys(r["head"] for r in rows if r["steps"]):
        by_steps: dict[int, list[float]] = {}
        for r in rows:
            if r["head"] == head and r["steps"]:
                by_steps.setdefault(r["steps"], []).append(r["success"])
        means = {n: float(np.mean(v)) for n, v in sorted(by_steps.items())}
        best = max(means.values())
        smallest = min(n for n, m in means.items() if m >= best - within)
        table = ", ".join(f"{n}: {m:.3f}" for n, m in means.items())
        lines.append(f"{head}: mean success by steps {{{table}}}; best {best:.3f}; "
                     f"fewest steps within {within * 100:.0f} point of it: {smallest}")
        print(json.dumps({"bench": "heads_fewest_steps", "head": head, "means": means, "best": best,
                          "fewest_steps_within_1pt": smallest}))
    return lines


def expert_trajectories(n: int) -> list[np.ndarray]:
    """The expert's paths (T, 2) on the first ``n`` training seeds (those the dataset was generated from)."""
    from vlafoundry.envs import make_env

    env, out = make_env("point/detour"), []
    for seed in range(n):
        path = [env.reset(seed=seed)["state"][:2]]
        for _ in range(env.spec.max_episode_steps):
            obs, _, term, trunc, _ = env.step(env.expert_action())
            path.append(obs["state"][:2])
            if term or trunc:
                break
        out.append(np.stack(path))
    return out


def plot(examples: dict[str, list[np.ndarray]], path: Path) -> None:
    """Trajectories per head (and the demonstrations') around the obstacle, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlafoundry.envs.point import OBSTACLE_RADIUS

    panels = {"expert (training seeds)": expert_trajectories(40), **examples}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (name, trajs) in zip(np.atleast_1d(axes), panels.items()):
        ax.add_patch(plt.Circle((0, 0), OBSTACLE_RADIUS, color="0.6"))
        for p in trajs:
            ax.plot(p[:, 0], p[:, 1], lw=0.8, alpha=0.7)
        ax.plot([0], [0.8], "g*", ms=10)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def _settings(text: str) -> dict[str, str]:
    """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}`` (bools: 0/1 or false/true)."""
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 5, 10, 20])
    lat.add_argument("--chunk", type=int, default=8)
    lat.add_argument("--reps", type=int, default=50)
    det = sub.add_parser("detour")
    det.add_argument("--out", default="runs/heads")
    det.add_argument("--heads", type=lambda s: s.split(","),
                     default=["continuous", "continuous-mse", "binned", "binned-sample", "flow", "diffusion"])
    det.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    det.add_argument("--episodes", type=int, default=100)
    det.add_argument("--demos", type=int, default=1000)
    det.add_argument("--train-steps", type=int, default=1500)
    det.add_argument("--plot", default=None)
    det.add_argument("--act", type=_settings, default={},
                     help="acting-time model settings for the evaluation, e.g. 'ensemble=1,execute=1' or 'flow_steps=5'")
    det.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[],
                     help="sweep the flow / diffusion heads' sampling steps at acting time (e.g. 1,2,5,10,20) and "
                          "report the fewest steps within 1 point of the best mean success")
    det.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `vlafoundry train` overrides")
    args = ap.parse_args()
    (latency if args.cmd == "latency" else detour)(args)


if __name__ == "__main__":
    main()
