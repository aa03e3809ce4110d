"""Subgroup labels for bias analysis: which kind of instruction / task an episode belongs to.

BabyAI missions are generated from a small grammar (``minigrid.envs.babyai.core.verifier``): object
descriptions read ``(a|the) [colour] (box|ball|key|door|object) [location]``. :func:`mission_subgroups`
parses a mission into

* ``template`` -- the mission with every colour word replaced by ``{color}`` and every object word by
  ``{object}`` (``"go to the red ball"`` -> ``"go to the {color} {object}"``; ``"go to a key"`` ->
  ``"go to a {object}"``), so missions that differ only in their slot values share a template;
* ``object`` -- the type of the first (target) object described, or ``"none"``;
* ``colour`` -- the colour of the first described object, or ``"none"`` when the mission names none;
* ``task`` -- the environment task (Meta-World task name, or the BabyAI level).

:func:`subgroup_success` turns per-episode records into per-subgroup success rates with Wilson intervals
and the worst-to-best gap, the bias measure the evaluation report shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vlafoundry.envs.babyai_missions import (  # noqa: F401  (re-exported: the grammar lives with BabyAI)
    BABYAI_COLORS,
    BABYAI_LOCATIONS,
    BABYAI_OBJECTS,
    mission_subgroups,
    mission_template,
    normalize_instruction,
)
from vlafoundry.eval.stats import wilson_interval

SUBGROUP_KEYS: tuple[str, ...] = ("template", "object", "colour", "task")


def subgroup_success(
    records: Iterable[Mapping[str, Any]],
    keys: Sequence[str] = SUBGROUP_KEYS,
    *,
    z: float = 1.96,
) -> dict[str, dict[str, Any]]:
    """Success per subgroup, for each labelling in ``keys``.

    Args:
        records: per-episode mappings with ``"success"`` (bool) and ``"instruction"`` (the original mission),
            optionally ``"task"``.
        keys: which labellings to tabulate (subset of :data:`SUBGROUP_KEYS`).

    Returns:
        ``{key: {"groups": [{"group", "episodes", "successes", "success_rate", "ci_low", "ci_high"}, ...],
        "worst", "best", "gap"}}`` with groups sorted by name; ``gap`` = best minus worst success rate (0.0 with a
        single group). Unknown keys raise ``ValueError``.
    """
    for key in keys:
        if key not in SUBGROUP_KEYS:
            raise ValueError(f"keys: expected a subset of {SUBGROUP_KEYS}, got {key!r}")
    counts: dict[str, dict[str, list[int]]] = {k: {} for k in keys}
    for rec in records:
        labels = mission_subgroups(str(rec["instruction"]), rec.get("task"))
        for key in keys:
            c = counts[key].setdefault(labels[key], [0, 0])
            c[0] += int(bool(rec["success"]))
            c[1] += 1
    table: dict[str, dict[str, Any]] = {}
    for key in keys:
        groups = []
        for name in sorted(counts[key]):
            succ, n = counts[key][name]
            low, high = wilson_interval(succ, n, z=z)
            groups.append(
                {
                    "group": name,
                    "episodes": n,
                    "successes": succ,
                    "success_rate": succ / n,
                    "ci_low": float(low),
                    "ci_high": float(high),
                }
            )
        if groups:
            worst = min(groups, key=lambda g: (g["success_rate"], g["group"]))
            best = max(groups, key=lambda g: (g["success_rate"], g["group"]))
            gap = best["success_rate"] - worst["success_rate"]
        else:
            worst = best = None
            gap = 0.0
        table[key] = {
            "groups": groups,
            "worst": worst["group"] if worst else None,
            "best": best["group"] if best else None,
            "gap": float(gap),
        }
    return table
