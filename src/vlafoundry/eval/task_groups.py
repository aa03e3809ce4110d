"""Success per benchmark task group (Meta-World MT50's difficulty groups), beside the published rows.

An env family names the groups an evaluation can report (:meth:`vlafoundry.envs.EnvFamily.task_groups`: for
Meta-World, LeRobot's easy / medium / hard / very hard, :mod:`vlafoundry.envs.metaworld_protocol`).
:func:`group_success` turns the per-task rows of an evaluation into one row per group:

* ``success_rate``: the mean of the group's task success rates (equal episodes per task: the pooled rate);
* ``ci_low`` / ``ci_high``: the 95% Wilson interval over the group's pooled episodes;
* ``weakest``: the group's task with the lowest rate.

With every group present (``complete``) it adds the ``average`` row, the **mean of the group rates** (how the
published MT50 averages are formed: SmolVLA-0.45B's 57.3 = mean of 82.5 / 41.8 / 45.0 / 60.0), with a stratified
interval (normal approximation on the Agresti-Coull adjusted task rates, (s + 2) / (n + 4), so a task at 0 or n
successes still carries variance; clipped to [0, 1]), and the ``all tasks`` row (mean over tasks, Wilson over all
episodes: LeRobot's ``overall.pc_success``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from vlafoundry.eval.stats import wilson_interval

__all__ = ["group_lines", "group_success", "stratified_interval", "task_groups_for", "write_group_section"]


def task_groups_for(names: Sequence[str]) -> dict[str, Any] | None:
    """The family's task groups for an evaluation of ``names`` (None when it has none or ``names`` is empty)."""
    from vlafoundry.envs import get_family

    prefixes = {str(n).split("/", 1)[0] for n in names}
    if len(prefixes) != 1:
        return None
    try:
        family = get_family(str(names[0]))
    except ValueError:  # not a registered family's name (records built by hand): no groups
        return None
    return family.task_groups(list(names))


def stratified_interval(strata: Sequence[Sequence[tuple[int, int]]], z: float = 1.96) -> tuple[float, float]:
    """Interval for the mean over strata of the mean over each stratum's tasks of ``successes / episodes``.

    ``strata``: per stratum, ``(successes, episodes)`` per task. Variance of the estimate:
    ``(1/G^2) sum_g (1/T_g^2) sum_t p~(1 - p~) / (n + 4)`` with ``p~ = (s + 2) / (n + 4)``.
    """
    if not strata or any(not s for s in strata):
        raise ValueError("strata: expected at least one stratum, each with at least one task")
    est = sum(sum(s / n for s, n in st) / len(st) for st in strata) / len(strata)
    var = 0.0
    for st in strata:
        for s, n in st:
            if not 0 <= s <= n or n <= 0:
                raise ValueError(f"strata: expected 0 <= successes <= episodes and episodes > 0, got {(s, n)}")
            p = (s + 2.0) / (n + 4.0)
            var += p * (1.0 - p) / (n + 4.0) / len(st) ** 2
    half = z * math.sqrt(var) / len(strata)
    return max(0.0, est - half), min(1.0, est + half)


def group_success(rows: Sequence[Mapping[str, Any]], spec: Mapping[str, Any], z: float = 1.96) -> dict[str, Any]:
    """Group rows from the per-task ``rows`` (``task``, ``episodes``, ``successes``) and the family's ``spec``
    (:func:`task_groups_for`). Returns ``{"title", "groups": [row, ...], "average", "all_tasks", "complete",
    "published", "source"}``; ``average`` / ``all_tasks`` are None unless ``complete``."""
    by_task = {r["task"]: r for r in rows}
    out_rows = []
    strata: list[list[tuple[int, int]]] = []
    for group, tasks in spec["groups"].items():
        missing = [t for t in tasks if t not in by_task]
        if missing:
            raise ValueError(f"rows: expected a row for every task of group {group!r}, missing {missing}")
        counts = [(int(by_task[t]["successes"]), int(by_task[t]["episodes"])) for t in tasks]
        if any(n <= 0 for _, n in counts):
            raise ValueError(f"rows: expected episodes > 0 for every task of group {group!r}")
        rates = [s / n for s, n in counts]
        succ, n = sum(s for s, _ in counts), sum(n for _, n in counts)
        low, high = wilson_interval(succ, n, z=z)
        weak = min(range(len(tasks)), key=lambda i: (rates[i], tasks[i]))
        out_rows.append({"group": group, "tasks": len(tasks), "episodes": n, "successes": succ,
                         "success_rate": sum(rates) / len(rates), "ci_low": float(low), "ci_high": float(high),
                         "weakest": tasks[weak], "weakest_rate": rates[weak]})  # fmt: skip
        strata.append(counts)
    complete = bool(spec.get("complete"))
    average = all_tasks = None
    if complete:
        low, high = stratified_interval(strata, z=z)
        average = {"group": "average", "success_rate": sum(r["success_rate"] for r in out_rows) / len(out_rows),
                   "ci_low": low, "ci_high": high, "rule": "mean of the group rates"}  # fmt: skip
        flat = [c for st in strata for c in st]
        succ, n = sum(s for s, _ in flat), sum(n for _, n in flat)
        low, high = wilson_interval(succ, n, z=z)
        all_tasks = {"group": "all tasks", "tasks": len(flat), "episodes": n, "successes": succ,
                     "success_rate": sum(s / k for s, k in flat) / len(flat), "ci_low": float(low),
                     "ci_high": float(high), "rule": "mean of the task rates"}  # fmt: skip
    return {"title": spec.get("title", "Task groups"), "groups": out_rows, "average": average,
            "all_tasks": all_tasks, "complete": complete, "published": list(spec.get("published") or []),
            "source": spec.get("source")}  # fmt: skip


def group_lines(table: Mapping[str, Any]) -> str:
    """The group rows as terminal lines (``vlafoundry eval``), published averages after the average."""
    lines = [f"{table['title']}:"]
    for g in table["groups"]:
        lines.append(f"  {g['group']:<10} success {g['success_rate']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}]"
                     f"  ({g['tasks']} tasks, {g['episodes']} episodes; weakest {g['weakest']} "
                     f"{g['weakest_rate']:.3f})")  # fmt: skip
    avg = table.get("average")
    if avg is not None:
        pub = ", ".join(f"{p['name']} {float(p['average']):.3f}" for p in table.get("published") or [])
        lines.append(f"  {'average':<10} success {avg['success_rate']:.3f} [{avg['ci_low']:.3f}, {avg['ci_high']:.3f}]"
                     + (f"  (published: {pub})" if pub else ""))  # fmt: skip
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "" if v is None else f"{100.0 * float(v):.1f}"


def write_group_section(doc: Any, table: Mapping[str, Any]) -> None:
    """The report's group table (``doc``: the report's document builder, with ``heading``, ``para``, ``table``):
    one row per group (ours with its interval, then each published row), the average and all-task rows."""
    pub = list(table.get("published") or [])
    doc.heading(table["title"])
    text = ("Success in % per group: the mean of its tasks' rates, 95% Wilson interval over its episodes.")
    if table.get("average") is not None:
        text += (" Average: the mean of the group rates, as the published averages are formed (stratified 95% "
                 "interval); all tasks: the mean over tasks.")
    if pub:
        text += f" Sources: {table.get('source')}; a published cell is empty where it was not recorded here."
    doc.para(text)
    header = ["group", "tasks", "episodes", "ours", "95% CI", "weakest task", *[p["name"] for p in pub]]
    rows = [[g["group"], g["tasks"], g["episodes"], _pct(g["success_rate"]),
             f"[{_pct(g['ci_low'])}, {_pct(g['ci_high'])}]", f"{g['weakest']} ({_pct(g['weakest_rate'])})",
             *[_pct(p["groups"].get(g["group"])) for p in pub]] for g in table["groups"]]  # fmt: skip
    avg, every = table.get("average"), table.get("all_tasks")
    if avg is not None:
        rows.append(["average", "", "", _pct(avg["success_rate"]), f"[{_pct(avg['ci_low'])}, {_pct(avg['ci_high'])}]",
                     "", *[_pct(p.get("average")) for p in pub]])  # fmt: skip
    if every is not None:
        rows.append(["all tasks", every["tasks"], every["episodes"], _pct(every["success_rate"]),
                     f"[{_pct(every['ci_low'])}, {_pct(every['ci_high'])}]", "", *["" for _ in pub]])  # fmt: skip
    doc.table(header, rows)
