"""Which BabyAI levels the bot (``BabyAIBot``, the demonstrations' expert) can play: for every level
(``vlafoundry.envs.babyai_levels()``), ``--seeds`` episodes from seed 0 with the same per-episode rollout as
``vlafoundry data generate`` (:func:`vlafoundry.data.rollout.run_expert_episode`: step cap, CPU-time cap), and how
each failed. Prints a table and a JSON line (``--json FILE`` also writes it).

    python bench/babyai_bot_sweep.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path


def sweep(levels: list[str], seeds: int, timeout_s: float) -> list[dict]:
    from vlafoundry.data.rollout import run_expert_episode
    from vlafoundry.envs import make_env

    rows = []
    for level in levels:
        t0 = time.perf_counter()
        env = make_env(f"babyai/{level}")
        reasons: Counter[str] = Counter()
        steps = 0
        for seed in range(seeds):
            ep, reason = run_expert_episode(env, seed, timeout_s)
            reasons[reason] += 1
            steps += len(ep["action"]) if ep is not None else 0
        env.close()
        solved = reasons.pop("ok", 0)
        rows.append({"level": level, "solved": solved, "seeds": seeds, "mean_steps_solved": steps / max(solved, 1),
                     "failures": dict(reasons), "wall_s": time.perf_counter() - t0})
    return rows


def main(argv: list[str] | None = None) -> int:
    from vlafoundry.envs import babyai_levels

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="episodes per level (seeds 0..N-1)")
    ap.add_argument("--levels", default="", help="comma-separated levels (default: all)")
    ap.add_argument("--episode-timeout", type=float, default=10.0, help="CPU seconds per episode")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON result here")
    args = ap.parse_args(argv)
    if args.seeds <= 0:
        ap.error(f"--seeds: expected > 0, got {args.seeds}")
    levels = [lv for lv in args.levels.split(",") if lv] or babyai_levels()
    rows = sweep(levels, args.seeds, args.episode_timeout)
    print(f"{'level':32s} {'solved':>8s} {'steps':>7s}  failures")
    for r in rows:
        fails = "; ".join(f"{n} x {why}" for why, n in r["failures"].items())
        print(f"{r['level']:32s} {r['solved']:>4d}/{r['seeds']:<3d} {r['mean_steps_solved']:7.1f}  {fails}")
    result = {"seeds": args.seeds, "levels": rows,
              "not_all_solved": [r["level"] for r in rows if r["solved"] < r["seeds"]]}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
