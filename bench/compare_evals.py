"""Two evaluations of the same episodes (two ``eval.json``, e.g. a run and its continuation), compared pair by pair.

    python bench/compare_evals.py runs/boss-cpu/train/eval.json runs/boss-cpu-c2/train/eval.json

Both must hold the same closed-loop episodes (env and seed, in order): ``vlafoundry eval`` with the same
``--episodes`` and seed start. Prints, per run, the success rate (95% Wilson interval), the rate on single and on
composed BabyAI instructions ("X and Y", "X, then Y", "X after you Y"), the mean length of successful episodes and
the shortest failure; then the discordant episodes (solved by one run only) and the exact McNemar p-value of
"no difference". ``--json FILE`` also writes the result.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

# BabyAI's composition connectives (AndInstr, BeforeInstr, AfterInstr); object descriptions never contain them.
COMPOSED = re.compile(r" and |, then | after you ")


def _episodes(path: Path) -> list[dict[str, Any]]:
    eps = json.loads(path.read_text()).get("episodes")
    if not eps:
        raise SystemExit(f"{path}: expected an eval.json with closed-loop 'episodes', found none")
    return eps


def _summary(eps: list[dict[str, Any]]) -> dict[str, Any]:
    from vlafoundry.eval.stats import wilson_interval

    ok = [e for e in eps if e["success"]]
    out: dict[str, Any] = {"episodes": len(eps), "successes": len(ok), "success_rate": len(ok) / len(eps),
                           "ci": wilson_interval(len(ok), len(eps))}
    for kind, composed in (("single", False), ("composed", True)):
        group = [e for e in eps if bool(COMPOSED.search(e["instruction"])) == composed]
        out[kind] = {"episodes": len(group), "successes": sum(e["success"] for e in group)}
    out["mean_length_success"] = sum(e["length"] for e in ok) / len(ok) if ok else None
    out["shortest_failure"] = min((e["length"] for e in eps if not e["success"]), default=None)
    return out


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    from vlafoundry.eval.stats import mcnemar_exact

    key = [(e["env"], e["seed"]) for e in a]
    if key != [(e["env"], e["seed"]) for e in b]:
        raise SystemExit(f"the two evaluations hold different episodes (env, seed): {len(a)} vs {len(b)} episodes, "
                         "expected the same list in the same order")
    only_a = sum(1 for x, y in zip(a, b) if x["success"] and not y["success"])
    only_b = sum(1 for x, y in zip(a, b) if y["success"] and not x["success"])
    return {"a": _summary(a), "b": _summary(b), "only_a": only_a, "only_b": only_b,
            "mcnemar_p": mcnemar_exact(only_a, only_b)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="first eval.json")
    ap.add_argument("b", type=Path, help="second eval.json")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)
    result = compare(_episodes(args.a), _episodes(args.b))
    for name, path in (("a", args.a), ("b", args.b)):
        s = result[name]
        lo, hi = s["ci"]
        parts = [f"{s['successes']}/{s['episodes']} = {100 * s['success_rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"]
        for kind in ("single", "composed"):
            g = s[kind]
            if g["episodes"]:
                parts.append(f"{kind} {g['successes']}/{g['episodes']} = {100 * g['successes'] / g['episodes']:.0f}%")
        if s["mean_length_success"] is not None:
            parts.append(f"mean success length {s['mean_length_success']:.0f}")
        if s["shortest_failure"] is not None:
            parts.append(f"shortest failure {s['shortest_failure']}")
        print(f"{name}: {path}\n   " + "; ".join(parts))
    print(f"solved by a only: {result['only_a']}, by b only: {result['only_b']}; "
          f"exact McNemar p = {result['mcnemar_p']:.3g}")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
