"""Did a policy's attribute matching (``model.grounding attributes``) learn to find the object its instruction names?

    python bench/grounding_probe.py RUN [--frames 150] [--seed 1000000000] [--json OUT.json]

RUN is a run or checkpoint of a BabyAI policy with ``model.grounding attributes``. From ``--seed`` on, each level's
first frame in which the mission's colour-object pair is in view is scored: the matching's product score
``prod_a sigmoid(s_a)`` of every object cell (ball, box, key, door), and whether the best-scored object is one of
the named pair, with the margin of the named pair's best score over the best other object's. The policy reads the
scores through a learned projection, so a matching may as well learn the opposite sign for any attribute (the
named object's colour scored *lowest*, ``sigmoid(-s_colour)``); the signs are those, one per attribute, that find
the most named objects on the trained pairs' frames, and the held-out frames are scored with the same signs. Frames are counted
separately for missions naming a held-out pair (``data.hold_out_pairs`` of the run) and for trained pairs, until
``--frames`` held-out frames (or ``--frames`` trained frames for a run without held-out pairs). Prints a table and
writes JSON with ``--json``. A matching that was not learnt shows as ~chance on *trained* pairs too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
from typing import Any

import numpy as np

OBJECTS = ("ball", "box", "key", "door")


def probe(run: str, frames: int, seed: int) -> dict[str, Any]:
    from vlafoundry.envs import get_family, make_env
    from vlafoundry.eval.generalisation import held_out_pairs_of
    from vlafoundry.train import load_run

    policy, cfg, _ = load_run(run)
    if getattr(policy, "grounding", None) is None:
        raise SystemExit(f"error: {run} has no attribute matching (model.grounding is {cfg.model.grounding!r})")
    env = make_env(cfg.data.env, **dict(get_family(cfg.data.env).env_kwargs(cfg.data)))
    return {"run": run, **probe_policy(policy, env, cfg.data.env, held_out_pairs_of(cfg), frames, seed)}


def probe_policy(policy: Any, env: Any, env_name: str, pairs: Any, frames: int, seed: int) -> dict[str, Any]:
    """The probe for a policy with ``grounding`` and a BabyAI env (``make_env``): see the module docstring."""
    import torch
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    from vlafoundry.data.holdout import held_out_in
    from vlafoundry.eval.talk import observation_batch

    policy.eval()
    obj_idx = torch.tensor([OBJECT_TO_IDX[o] for o in OBJECTS])
    stats: dict[str, dict[str, list[float]]] = {"held-out": {"hit": []}, "trained": {"hit": []}}
    want = "held-out" if pairs else "trained"
    while len(stats[want]["hit"]) < frames:
        with contextlib.redirect_stdout(io.StringIO()):  # Minigrid prints its rejected placements
            obs = env.reset(seed=seed)
        seed += 1
        mission = str(obs["instruction"])
        words = mission.split()
        named = [(c, o) for c, o in itertools.pairwise(words) if c in COLOR_TO_IDX and o in OBJECT_TO_IDX]
        if not named:
            continue
        grid = torch.as_tensor(np.asarray(obs["image"])).reshape(1, 7, 7, 3).long()  # (1, 7, 7, 3)
        is_obj = torch.isin(grid[0, ..., 0], obj_idx).reshape(-1)  # (49,)
        target = torch.zeros(49, dtype=torch.bool)
        for c, o in named:
            target |= ((grid[0, ..., 0] == OBJECT_TO_IDX[o]) & (grid[0, ..., 1] == COLOR_TO_IDX[c])).reshape(-1)
        if not target.any() or not (is_obj & ~target).any():
            continue  # the named object is not in view, or nothing else is
        with torch.no_grad():
            b = observation_batch(obs, mission, env_name)  # one step: (1, ...) per key
            b = {k: (torch.as_tensor(v).unsqueeze(1) if k in ("image", "state") else v) for k, v in b.items()}
            b["obs_mask"] = torch.ones(1, 1, dtype=torch.bool)  # (B, T) with T = 1 frame
            s = policy.encode(policy.prepare(b))["extras"]["grounding_scores"][0]  # (49, A): the policy's own
        kind = "held-out" if held_out_in(mission, pairs) is not None else "trained"
        for sign in itertools.product((1, -1), repeat=s.shape[-1]):
            both = torch.sigmoid(s * torch.tensor(sign, dtype=s.dtype)).prod(-1)  # (49,)
            best_target = float(both[target].max())
            best_other = float(both[is_obj & ~target].max())
            if all(x == 1 for x in sign):
                stats[kind]["hit"].append(float(best_target > best_other))
            stats[kind].setdefault(f"hit{sign}", []).append(float(best_target > best_other))
            stats[kind].setdefault(f"margin{sign}", []).append(best_target - best_other)
    signs = [k[3:] for k in stats["trained"] if k.startswith("hit(")]
    sign = max(signs, key=lambda k: np.mean(stats["trained"][f"hit{k}"]))  # e.g. "(1, -1)"
    out: dict[str, Any] = {"env": env_name, "held_out_pairs": list(pairs), "sign": sign, "rows": {}}
    for kind, st in stats.items():
        if st["hit"]:
            out["rows"][kind] = {"frames": len(st["hit"]), "named_object_best": float(np.mean(st[f"hit{sign}"])),
                                 "median_margin": float(np.median(st[f"margin{sign}"]))}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--seed", type=int, default=10**9)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = probe(args.run, args.frames, args.seed)
    print(f"signs per attribute (object, colour) {out['sign']}: those that find the most named objects on trained pairs")
    print(f"{'missions':10s} {'frames':>7s} {'named object scored best':>25s} {'median margin':>14s}")
    for kind, r in out["rows"].items():
        print(f"{kind:10s} {r['frames']:7d} {r['named_object_best']:25.3f} {r['median_margin']:14.3f}")
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
