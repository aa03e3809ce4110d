"""Why a BabyAI GoTo policy misses held-out colour-object pairs: replay its held-out-pair episodes and record what
the agent faces.

    python bench/held_out_failures.py RUN [--episodes 200] [--seed 1000000000] [--json OUT.json]

RUN is a run or checkpoint trained with ``data.hold_out_pairs``. From ``--seed`` on, every seed whose mission names a
held-out pair is played (greedy actions, the env's own step cap) until ``--episodes`` such episodes. For each
failure it records which objects the agent faced (the cell in front of it held a box, ball or key): one of the
target's type in another colour ("same type"), of the target's colour and another type ("same colour"), any other
("other"), an object of the target's own pair (possible only where success needs more than facing it), or none; and whether the room held a distractor of the target's type. Prints a table per held-out pair
and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from typing import Any

import numpy as np

OBJECTS = ("ball", "box", "key")


def analyse(run: str, episodes: int, seed: int) -> dict[str, Any]:
    from vlafoundry.data.holdout import held_out_in
    from vlafoundry.envs import get_family, make_env
    from vlafoundry.eval.generalisation import held_out_pairs_of
    from vlafoundry.eval.talk import observation_batch
    from vlafoundry.train import load_run

    policy, cfg, _ = load_run(run)
    pairs = held_out_pairs_of(cfg)
    if not pairs:
        raise SystemExit(f"error: {run} was not trained with data.hold_out_pairs")
    env_name = cfg.data.env
    env = make_env(env_name, **dict(get_family(env_name).env_kwargs(cfg.data)))
    per: dict[str, Counter[str]] = defaultdict(Counter)
    done = 0
    while done < episodes:
        obs = env.reset(seed=seed)
        seed += 1
        mission = str(obs["instruction"])
        pair = held_out_in(mission, pairs)
        if pair is None:
            continue
        done += 1
        level = env.unwrapped
        colour, kind = pair.split()
        room = [(o.color, o.type) for o in level.grid.grid if o is not None and o.type in OBJECTS]
        distractor = any(t == kind and c != colour for c, t in room)
        policy.reset()
        faced: list[tuple[str, str]] = []
        success = False
        for _ in range(level.max_steps):
            action = np.asarray(policy.select_action(observation_batch(obs, mission, env_name)))[0]
            obs, _, terminated, truncated, info = env.step(action)
            cell = level.grid.get(*level.front_pos)
            if cell is not None and cell.type in OBJECTS:
                faced.append((cell.color, cell.type))
            success = bool(info.get("success", False))
            if success or terminated or truncated:
                break
        c = per[pair]
        c["episodes"] += 1
        c["with same-type distractor"] += distractor
        if success:
            c["success"] += 1
            c["success with same-type distractor"] += distractor
            continue
        kinds = {"same type" if (t == kind and col != colour) else "same colour" if (col == colour and t != kind)
                 else "the target's pair" if (col, t) == (colour, kind) else "other" for col, t in faced}
        for k in kinds or {"nothing"}:
            c[f"failures facing {k}"] += 1
    env.close()
    return {"run": run, "pairs": pairs, "episodes": episodes, "per_pair": {p: dict(c) for p, c in per.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=10**9)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = analyse(args.run, args.episodes, args.seed)
    cols = ["episodes", "success", "with same-type distractor", "success with same-type distractor",
            "failures facing same type", "failures facing same colour", "failures facing other",
            "failures facing the target's pair", "failures facing nothing"]
    print("| held-out pair | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    total: Counter[str] = Counter()
    for pair, c in sorted(res["per_pair"].items()):
        total.update(c)
        print(f"| {pair} | " + " | ".join(str(c.get(k, 0)) for k in cols) + " |")
    print("| all | " + " | ".join(str(total.get(k, 0)) for k in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
