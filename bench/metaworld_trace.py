"""Trace a trained Meta-World policy next to the scripted expert, step by step (a diagnostic, not a benchmark).

    python bench/metaworld_trace.py RUN_DIR [--task peg-insert-side] [--episodes 6] [--every 40]

For each episode (seeds from 10^9, as the evaluator uses) it prints, every ``--every`` steps and at the end: the
hand-to-object distance in the table plane (xy), the hand height above the object (dz), the gripper opening, the
object height, the object's distance to the goal in the y-z plane, the policy's action and the expert's action
in the same state. It is how the peg-insert-side failure in docs/results.md was found.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vlafoundry.envs import make_env
from vlafoundry.train import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="trained run or checkpoint directory")
    ap.add_argument("--task", default="peg-insert-side")
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--every", type=int, default=40)
    args = ap.parse_args()
    policy, _, _ = load_run(args.run)
    env = make_env(f"metaworld/{args.task}")
    for seed in range(10**9, 10**9 + args.episodes):
        obs = env.reset(seed=seed)
        policy.reset()
        lines = []
        for t in range(env.spec.max_episode_steps):
            batch = {"state": obs["state"][None], "instruction": [obs["instruction"]], "task": [obs["task"]]}
            with torch.no_grad():
                action = policy.select_action(batch)[0]
            expert = env.expert_action()
            obs, _, terminated, truncated, info = env.step(action)
            s = obs["state"]
            hand, obj, goal = s[:3], s[4:7], s[-3:]
            lines.append(f"  t={t:3d} xy={np.linalg.norm(hand[:2] - obj[:2]):.3f} dz={hand[2] - obj[2]:.3f} "
                         f"grip={s[3]:.2f} obj_z={obj[2]:.3f} obj-goal(yz)={np.linalg.norm(obj[1:] - goal[1:]):.3f} "
                         f"policy={np.round(action, 2)} expert={np.round(expert, 2)}")
            if terminated or truncated:
                break
        print(f"seed {seed}: success {info['success']}, {t + 1} steps")
        print("\n".join(lines[:: args.every] + ([lines[-1]] if (len(lines) - 1) % args.every else [])))
    env.close()


if __name__ == "__main__":
    main()
