"""Closed-loop evaluation throughput: episodes/s for BabyAI GoToLocal (500 episodes, 64 steps max).

Policy: ``--checkpoint`` (loaded with ``vlafoundry.train.load_run``) or, without one, the default policy
(``PolicyConfig()`` defaults = the babyai-gotolocal preset's model) randomly initialised. Compares, in the same
process, the vectorised evaluator (worker processes + one batched ``select_action`` per step) against in-process
vectorisation (``workers=0``) and a naive loop (one env, one ``select_action`` per env step, batch size 1).
Prints a table and a final JSON line.

    python bench/eval.py [--checkpoint RUN_OR_CKPT] [--episodes 500] [--workers 2] [--num-envs 64]

``--stages`` (needs ``--checkpoint``) instead times a default ``vlafoundry eval`` of the checkpoint stage by stage
(load, rollouts, offline pass with modality balance, robustness with ``--robustness``, bias, pictures, report) via
:func:`vlafoundry.eval.pipeline.evaluate_checkpoint`, and prints a table, the total over the rollouts, and a JSON line:

    python bench/eval.py --stages --checkpoint RUN [--episodes 500] [--robustness] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from vlafoundry.envs import make_env
from vlafoundry.eval.rollout import DEFAULT_SEED_START, evaluate_policy
from vlafoundry.eval.subgroups import BABYAI_COLORS

ENV = "babyai/GoToLocal"


def default_policy() -> Any:
    from vlafoundry.models import PolicyConfig, VLAPolicy
    from vlafoundry.models.policy import PolicySpec
    from vlafoundry.nn.language import TextTokenizer

    corpus = [f"go to {art} {c}{obj}" for art in ("a", "the") for c in ("", *[f"{c} " for c in BABYAI_COLORS])
              for obj in ("box", "ball", "key", "door")]  # fmt: skip
    env = make_env(ENV)
    s = env.spec
    env.close()
    spec = PolicySpec(env=ENV, action_type=s.action_type, action_dim=s.action_dim, num_actions=s.num_actions,
                      state_dim=s.state_dim, image_shape=list(s.image_shape))  # fmt: skip
    torch.manual_seed(0)
    cfg = PolicyConfig()
    return VLAPolicy(cfg, spec, TextTokenizer.train(corpus, kind=cfg.tokenizer, vocab_size=cfg.tokenizer_vocab)).eval()


def naive_loop(policy: Any, episodes: int) -> float:
    """One env, one select_action call per step (batch of 1): the unvectorised baseline. Returns seconds."""
    env = make_env(ENV)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(episodes):
            obs = env.reset(seed=DEFAULT_SEED_START + i)
            policy.reset()
            for _ in range(env.spec.max_episode_steps):
                batch = {"image": obs["image"][None], "state": obs["state"][None], "instruction": [obs["instruction"]]}
                obs, _, term, trunc, _ = env.step(policy.select_action(batch)[0])
                if term or trunc:
                    break
    env.close()
    return time.perf_counter() - t0


def stages(args: argparse.Namespace) -> None:
    """Stage times of one default evaluation of ``args.checkpoint``."""
    import tempfile

    from vlafoundry.eval.pipeline import evaluate_checkpoint

    out = args.out or tempfile.mkdtemp(prefix="bench-eval-")
    given = {"episodes": args.episodes, "workers": args.workers, "out": out, "robustness": args.robustness or None}
    t0 = time.perf_counter()
    run = evaluate_checkpoint(args.checkpoint, given, log=lambda line: None)
    total = time.perf_counter() - t0
    rollouts = run.closed_loop.elapsed_s
    print(f"checkpoint: {args.checkpoint}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    print(f"{'stage':<14}{'seconds':>9}{'share':>8}")
    for name, sec in run.stage_s.items():
        print(f"{name:<14}{sec:>9.2f}{sec / total:>8.1%}")
    print(f"{'total':<14}{total:>9.2f}")
    print(f"rollouts alone (episode loop) {rollouts:.2f} s; total / rollouts = {total / rollouts:.2f}")
    offline = run.offline["metrics"]["samples"] if run.offline else 0
    print(json.dumps({"bench": "eval_stages", "checkpoint": args.checkpoint, "episodes": args.episodes,
                      "workers": run.options.workers, "robustness": bool(args.robustness),
                      "offline_samples": offline, "stage_s": run.stage_s, "total_s": total,
                      "rollouts_s": rollouts, "total_over_rollouts": total / rollouts,
                      "load_average": os.getloadavg()[0]}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint or run dir (default: random default policy)")
    ap.add_argument("--episodes", type=int, default=500)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--num-envs", type=int, default=64)
    ap.add_argument("--naive-episodes", type=int, default=10, help="episodes for the naive baseline (slow)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the policy, every mode (default 1)")
    ap.add_argument("--stages", action="store_true", help="time a default `vlafoundry eval` stage by stage")
    ap.add_argument("--robustness", action="store_true", help="with --stages: add the robustness stage")
    ap.add_argument("--out", default=None, help="with --stages: output folder (default: a temporary one)")
    args = ap.parse_args()
    if args.stages:
        if not args.checkpoint:
            ap.error("--stages: expected --checkpoint RUN_OR_CKPT, got none")
        stages(args)
        return
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        from vlafoundry.train import load_run

        policy, _, _ = load_run(args.checkpoint)
        source = args.checkpoint
    else:
        policy, source = default_policy(), "default PolicyConfig, random init"

    times: dict[str, list[float]] = {"vectorised": [], "in-process": [], "naive": []}
    results = {}
    for _ in range(args.repeats):  # interleaved repeats, medians reported
        for name, w in (("vectorised", args.workers), ("in-process", 0)):
            r = evaluate_policy(policy, ENV, episodes=args.episodes, num_envs=args.num_envs, workers=w,
                                torch_threads=args.threads)
            times[name].append(r.elapsed_s)
            results[name] = r.summary
        times["naive"].append(naive_loop(policy, args.naive_episodes))
    eps = {
        "vectorised": args.episodes / statistics.median(times["vectorised"]),
        "in-process": args.episodes / statistics.median(times["in-process"]),
        "naive": args.naive_episodes / statistics.median(times["naive"]),
    }
    steps = results["vectorised"]["mean_length"] * args.episodes
    print(f"policy: {source}; {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")
    print(f"{'mode':<12}{'episodes':>9}{'seconds':>9}{'episodes/s':>12}{'vs naive':>10}")
    for name in ("vectorised", "in-process", "naive"):
        n = args.naive_episodes if name == "naive" else args.episodes
        print(f"{name:<12}{n:>9}{statistics.median(times[name]):>9.2f}{eps[name]:>12.1f}"
              f"{eps[name] / eps['naive']:>9.1f}x")  # fmt: skip
    print(f"success {results['vectorised']['success_rate']:.3f}, mean length {results['vectorised']['mean_length']:.1f}, "
          f"{steps / statistics.median(times['vectorised']):.0f} env steps/s")  # fmt: skip
    print(json.dumps({
        "bench": "eval", "env": ENV, "episodes": args.episodes, "workers": args.workers, "num_envs": args.num_envs,
        "policy": source, "seconds_500": statistics.median(times["vectorised"]) * 500 / args.episodes,
        "episodes_per_s": eps, "speedup_vs_naive": eps["vectorised"] / eps["naive"],
        "speedup_vs_in_process": eps["vectorised"] / eps["in-process"],
        "success_rate": results["vectorised"]["success_rate"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
