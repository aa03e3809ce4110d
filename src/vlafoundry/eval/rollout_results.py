"""Episode bookkeeping of closed-loop evaluation: per-task summary rows, the :class:`EvalResult` they make up, and
the choice of episodes to replay as GIFs. Everything here reads episode records (dicts with ``index, env, task,
seed, success, length, return, paraphrased, actions``), never envs or policies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlafoundry.eval.stats import wilson_interval
from vlafoundry.eval.subgroups import subgroup_success
from vlafoundry.eval.task_groups import group_success, task_groups_for


@dataclass
class EvalResult:
    """Outcome of a closed-loop evaluation.

    Attributes:
        rows: one summary row per task (and an ``"all"`` row when there are several tasks), see
            :func:`summarize_episodes`.
        episodes: per-episode records sorted by index: ``index, env, task, seed, instruction`` (original),
            ``policy_instruction`` (what the policy saw), ``paraphrased, success, length, return, actions``.
        subgroups: per-subgroup success table (:func:`vlafoundry.eval.subgroups.subgroup_success`).
        config: the evaluation settings (env names, episodes, seeds, corruption, ...).
        elapsed_s: wall time of the rollouts.
        task_groups: success per benchmark task group beside the published rows
            (:func:`vlafoundry.eval.task_groups.group_success`; Meta-World MT50's difficulty groups), or None.
    """

    rows: list[dict[str, Any]]
    episodes: list[dict[str, Any]]
    subgroups: dict[str, Any]
    config: dict[str, Any]
    elapsed_s: float
    task_groups: dict[str, Any] | None = None

    @property
    def summary(self) -> dict[str, Any]:
        """The overall row (``"all"`` for suites, the single task's row otherwise)."""
        return self.rows[-1]

    @property
    def episodes_per_s(self) -> float:
        return len(self.episodes) / max(self.elapsed_s, 1e-9)

    def to_dict(self, include_actions: bool = False) -> dict[str, Any]:
        eps = self.episodes if include_actions else [{k: v for k, v in e.items() if k != "actions"} for e in self.episodes]
        return {
            "rows": self.rows,
            "subgroups": self.subgroups,
            "config": self.config,
            "elapsed_s": self.elapsed_s,
            "episodes_per_s": self.episodes_per_s,
            "episodes": eps,
            **({"task_groups": self.task_groups} if self.task_groups is not None else {}),
        }


def summarize_episodes(episodes: Sequence[Mapping[str, Any]], task: str, z: float = 1.96) -> dict[str, Any]:
    """Success rate with a Wilson interval, mean length and mean return of ``episodes``."""
    n = len(episodes)
    succ = sum(bool(e["success"]) for e in episodes)
    low, high = wilson_interval(succ, n, z=z)
    return {
        "task": task,
        "episodes": n,
        "successes": succ,
        "success_rate": succ / n if n else 0.0,
        "ci_low": float(low),
        "ci_high": float(high),
        "mean_length": float(np.mean([e["length"] for e in episodes])) if n else 0.0,
        "mean_return": float(np.mean([e["return"] for e in episodes])) if n else 0.0,
        "paraphrased_fraction": float(np.mean([bool(e["paraphrased"]) for e in episodes])) if n else 0.0,
    }



def build_result(
    records: Sequence[dict[str, Any]], names: Sequence[str], config: dict[str, Any], elapsed: float
) -> EvalResult:
    """Per-task rows (plus ``"all"`` for several tasks) and subgroup tables from episode records."""
    rows = [summarize_episodes([r for r in records if r["env"] == n], n) for n in names]
    if len(names) > 1:
        rows.append(summarize_episodes(records, "all"))
    spec = task_groups_for(names)
    groups = group_success(rows, spec) if spec is not None else None
    return EvalResult(rows, list(records), subgroup_success(records), config, elapsed, groups)



def select_gif_episodes(records: Sequence[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
    """The first ``n`` successful and first ``n`` failed episodes (by index)."""
    wins = [r for r in records if r["success"]][:n]
    fails = [r for r in records if not r["success"]][:n]
    return [*wins, *fails]
