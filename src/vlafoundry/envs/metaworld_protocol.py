"""LeRobot's Meta-World MT50 protocol: the four difficulty groups, the evaluation settings and the published rows.

Read (not copied) from LeRobot v0.6.1: ``src/lerobot/envs/metaworld.py`` (the env: ``corner2`` moved to
(0.75, 0.075, 0.7), frames flipped on both axes, ``agent_pos`` = the first 4 entries of the state, an episode ends on
the first success step or after ``_max_episode_steps`` = 500, which ``lerobot_eval`` reads as the rollout's cap),
``src/lerobot/envs/metaworld_config.json`` (``DIFFICULTY_TO_TASKS``), ``src/lerobot/envs/configs.py`` (480x480
frames, 80 fps), ``src/lerobot/scripts/lerobot_eval.py`` (success = any success step before the episode ends; each
task's episodes use seeds ``eval.seed`` (default 1000) + i) and ``docs/source/metaworld.mdx``. The published rows are
the SmolVLA paper's (arXiv 2506.01844, 10 trials per task), whose "average" is the mean of the four group rates
(82.5 / 41.8 / 45.0 / 60.0 -> 57.3), not the mean over the 50 tasks (66.8 for the same row).

Nothing here imports MuJoCo: the eval layer and the tests read these tables without building an env.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: LeRobot's MT50 difficulty groups (task names without ``-v3``), in the order the published tables use.
MT50_DIFFICULTY: dict[str, tuple[str, ...]] = {
    "easy": (
        "button-press", "button-press-topdown", "button-press-topdown-wall", "button-press-wall", "coffee-button",
        "dial-turn", "door-close", "door-lock", "door-open", "door-unlock", "drawer-close", "drawer-open",
        "faucet-close", "faucet-open", "handle-press", "handle-press-side", "handle-pull", "handle-pull-side",
        "lever-pull", "plate-slide", "plate-slide-back", "plate-slide-back-side", "plate-slide-side", "reach",
        "reach-wall", "window-close", "window-open", "peg-unplug-side",
    ),
    "medium": (
        "basketball", "bin-picking", "box-close", "coffee-pull", "coffee-push", "hammer", "peg-insert-side",
        "push-wall", "soccer", "sweep", "sweep-into",
    ),
    "hard": ("assembly", "hand-insert", "pick-out-of-hole", "pick-place", "push", "push-back"),
    "very hard": ("shelf-place", "disassemble", "stick-pull", "stick-push", "pick-place-wall"),
}  # fmt: skip

#: Suite names of the groups (``metaworld/mt50-easy`` ... ``metaworld/mt50-very-hard``).
GROUP_SUITES: dict[str, str] = {g: "mt50-" + g.replace(" ", "-") for g in MT50_DIFFICULTY}

#: The evaluation settings of the protocol, as LeRobot runs them (module docstring for the sources).
PROTOCOL: dict[str, Any] = {
    "tasks": 50,
    "episodes_per_task": 10,
    "max_steps": 500,
    "camera": "corner2",
    "camera_pos": (0.75, 0.075, 0.7),
    "flip": "both axes (a 180-degree turn)",
    "render_size": 480,
    "proprio": "hand",  # agent_pos: hand xyz + gripper opening
    "action_dim": 4,
    "fps": 80,
    "success": "any step with info['success'] before the episode ends (it ends at the first)",
    "seed_start": 1000,
    "average": "mean of the four group rates",
}

#: Published MT50 rows on this protocol (SmolVLA paper, 10 trials per task), rates in [0, 1]; a group missing
#: from ``groups`` was not recorded here.
PUBLISHED_MT50: tuple[dict[str, Any], ...] = (
    {"name": "SmolVLA (0.45B)", "average": 0.573,
     "groups": {"easy": 0.825, "medium": 0.418, "hard": 0.450, "very hard": 0.600}},
    {"name": "SmolVLA (2.25B)", "average": 0.682, "groups": {}},
    {"name": "pi0 (3.5B)", "average": 0.479,
     "groups": {"easy": 0.718, "medium": 0.482, "hard": 0.417, "very hard": 0.300}},
    {"name": "TinyVLA", "average": 0.316, "groups": {}},
    {"name": "Diffusion Policy", "average": 0.105, "groups": {}},
)  # fmt: skip

PROTOCOL_SOURCE = ("groups from LeRobot v0.6.1 envs/metaworld_config.json (DIFFICULTY_TO_TASKS), published rows from "
                   "the SmolVLA paper (arXiv 2506.01844, 10 trials per task)")  # fmt: skip


def difficulty_of(task: str) -> str:
    """The difficulty group of an MT50 task (``"push"``, ``"push-v3"`` or ``"metaworld/push"``)."""
    name = task.split("/", 1)[-1].lower().removesuffix("-v3")
    for group, tasks in MT50_DIFFICULTY.items():
        if name in tasks:
            return group
    raise ValueError(f"task: expected an MT50 task, got {task!r}")


def mt50_task_groups(names: Sequence[str], family: str = "metaworld") -> dict[str, Any] | None:
    """The difficulty groups an evaluation of ``names`` (full env names) can report: every group whose tasks were
    all evaluated, as ``{"title", "groups": {group: [full names]}, "complete", "published", "source"}``;
    ``complete`` (all four groups present) says whether the average and the published rows apply. None when no group
    was evaluated whole."""
    present = set(names)
    groups = {g: [f"{family}/{t}" for t in tasks] for g, tasks in MT50_DIFFICULTY.items()
              if all(f"{family}/{t}" in present for t in tasks)}  # fmt: skip
    if not groups:
        return None
    complete = len(groups) == len(MT50_DIFFICULTY)
    return {"title": "Meta-World MT50 difficulty groups (LeRobot's protocol)", "groups": groups,
            "complete": complete, "published": [dict(r) for r in PUBLISHED_MT50] if complete else [],
            "source": PROTOCOL_SOURCE}  # fmt: skip


def group_suites() -> Mapping[str, tuple[str, ...]]:
    """``{"mt50-easy": (...), ..., "mt50-very-hard": (...)}``: each group as a suite name."""
    return {GROUP_SUITES[g]: tasks for g, tasks in MT50_DIFFICULTY.items()}
