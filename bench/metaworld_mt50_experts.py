"""Meta-World MT50 under LeRobot's protocol: does each task's scripted expert solve it, how long are its episodes,
and what does a step cost on this CPU?

    OMP_NUM_THREADS=1 python bench/metaworld_mt50_experts.py --episodes 3            # symbolic, all 50 tasks
    OMP_NUM_THREADS=1 python bench/metaworld_mt50_experts.py --episodes 3 --action-noise 0.2
    OMP_NUM_THREADS=1 python bench/metaworld_mt50_experts.py --episodes 2 --image rgb --image-size 64 \\
        --tasks metaworld/reach,metaworld/assembly,metaworld/stick-pull --out bench/results/mt50_render64.json

Every episode is :func:`vlafoundry.data.rollout.run_expert_episode` (what ``vlafoundry data generate`` runs, DART
noise included) on seeds ``--seed-start + i``, capped at the protocol's 500 steps (an expert that has not succeeded by
then has failed, as a policy would in ``lerobot-eval``). The expert reads the 39-D state in every observation mode,
so ``--image symbolic`` gives the same actions and outcomes as ``rgb`` without the rendering cost. CPU ms/step is
the process CPU time (the renderer's threads included) per env step, episode resets included. One process, one
thread: the machine is shared. Writes ``--out`` (JSON) and the same name with ``.md`` (a table per difficulty group).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def run(tasks: list[str], episodes: int, seed_start: int, max_steps: int, action_noise: float, image: str,
        image_size: int) -> list[dict[str, Any]]:  # fmt: skip
    from vlafoundry.data.rollout import run_expert_episode
    from vlafoundry.envs import make_env

    rows = []
    for name in tasks:
        kwargs: dict[str, Any] = {"max_steps": max_steps, "image": image}
        if image == "rgb":
            kwargs.update(camera="corner2", image_size=image_size, proprio="hand")
        env = make_env(name, **kwargs)
        wins, lengths, reasons = 0, [], []
        cpu0, wall0, steps = time.process_time(), time.perf_counter(), 0
        try:
            for i in range(episodes):
                ep, reason = run_expert_episode(env, seed_start + i, timeout_s=None, action_noise=action_noise)
                if ep is not None:
                    wins += 1
                    lengths.append(len(ep["action"]))
                    steps += len(ep["action"])
                else:
                    n = int(reason.split(" in ")[1].split()[0]) if reason.startswith("not solved in") else max_steps
                    steps += n
                    reasons.append(reason)
        finally:
            env.close()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rows.append({"task": name, "episodes": episodes, "successes": wins, "success_rate": wins / episodes,
                     "mean_success_length": sum(lengths) / len(lengths) if lengths else None,
                     "steps": steps, "cpu_ms_per_step": 1000.0 * cpu / max(1, steps),
                     "wall_ms_per_step": 1000.0 * wall / max(1, steps), "failures": reasons[:3]})  # fmt: skip
        print(f"{name:<36} {wins}/{episodes}  mean length {rows[-1]['mean_success_length'] or 0:.0f}  "
              f"{rows[-1]['cpu_ms_per_step']:.2f} CPU ms/step", flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    from vlafoundry.envs.metaworld_protocol import difficulty_of

    title = (f"Scripted experts, {args.episodes} episodes per task from seed {args.seed_start}, at most "
             f"{args.max_steps} steps, action noise {args.action_noise}, image {args.image}")  # fmt: skip
    lines = [title, ""]
    total_w = total_n = 0
    for group in ("easy", "medium", "hard", "very hard"):
        sel = [r for r in rows if difficulty_of(r["task"]) == group]
        if not sel:
            continue
        w, n = sum(r["successes"] for r in sel), sum(r["episodes"] for r in sel)
        total_w, total_n = total_w + w, total_n + n
        lines += [f"### {group}: {w}/{n} ({100 * w / n:.1f}%)", "",
                  "| task | solved | mean steps (solved) | CPU ms/step |", "|---|---:|---:|---:|"]  # fmt: skip
        for r in sel:
            length = f"{r['mean_success_length']:.0f}" if r["mean_success_length"] is not None else "-"
            lines.append(f"| {r['task']} | {r['successes']}/{r['episodes']} | {length} | {r['cpu_ms_per_step']:.2f} |")
        lines.append("")
    if total_n:
        lines.append(f"All: {total_w}/{total_n} ({100 * total_w / total_n:.1f}%)")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="metaworld/mt50", help="env name, suite or comma list (default: all 50)")
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--seed-start", type=int, default=10**9, help="first seed (default: our evaluation seeds)")
    ap.add_argument("--max-steps", type=int, default=500, help="episode cap (LeRobot's protocol: 500)")
    ap.add_argument("--action-noise", type=float, default=0.0)
    ap.add_argument("--image", default="symbolic", choices=("symbolic", "rgb"))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--out", default="bench/results/mt50_experts.json")
    args = ap.parse_args()

    from vlafoundry.envs import expand_env_names

    tasks = expand_env_names(args.tasks)
    t0 = time.perf_counter()
    rows = run(tasks, args.episodes, args.seed_start, args.max_steps, args.action_noise, args.image, args.image_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "wall_s": time.perf_counter() - t0, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, args))
    print(f"wrote {out} and {out.with_suffix('.md')} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
