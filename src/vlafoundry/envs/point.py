"""A 2-D point-mass family whose expert demonstrations are multimodal: ``point/detour``.

The agent starts at ``(0, -0.8)`` below a round obstacle (centre ``(0, 0)``, radius 0.3) and must reach the goal
at ``(0, 0.8)`` above it without touching it. The expert detours through a waypoint on one side of the obstacle,
``(-0.55, 0)`` or ``(+0.55, 0)``: which side is a function of the episode's seed only (:func:`detour_side`: even
seeds left, odd seeds right), invisible in the observation. So half of the demonstrations go left and half go right
from the same start states: a regression policy averages the two (straight up, into the obstacle), a generative
head (``model.head flow`` / ``diffusion``) picks a side. The rule is recorded in a dataset's metadata
(``generation.expert``).

State (4,): position ``(x, y)`` and goal ``(gx, gy)``; actions (2,) in ``[-1, 1]``: a velocity, ``0.08`` per unit
per step. An episode ends with success within 0.1 of the goal, or with failure on touching the obstacle
(``info["collision"]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlafoundry.envs.family import EnvFamily, register_family
from vlafoundry.envs.spec import EnvSpec

OBSTACLE_RADIUS = 0.3
WAYPOINT_X = 0.55
SPEED = 0.08
GOAL_TOLERANCE = 0.1
INSTRUCTION = "reach the goal around the obstacle"


def detour_side(seed: int) -> int:
    """The side the expert detours on for episode ``seed``: -1 (left) for even seeds, +1 (right) for odd ones."""
    return -1 if int(seed) % 2 == 0 else 1


class PointDetourEnv:
    """The ``point/detour`` env (see the module docstring)."""

    def __init__(self, max_steps: int | None = None) -> None:
        self.spec = EnvSpec(name="point/detour", action_type="continuous", num_actions=None, action_dim=2,
                            action_low=[-1.0, -1.0], action_high=[1.0, 1.0], state_dim=4, image_shape=None,
                            max_episode_steps=int(max_steps or 60))
        self.pos = np.zeros(2, dtype=np.float64)
        self.goal = np.array([0.0, 0.8])
        self.side = -1
        self.t = 0

    def _obs(self) -> dict[str, Any]:
        state = np.concatenate([self.pos, self.goal]).astype(np.float32)
        return {"state": state, "instruction": INSTRUCTION, "task": self.spec.name}

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        # start and goal are the same in every episode: what tells the two detours apart is only the seed, so the
        # demonstrations are two modes from one state (a jittered start would let a regressor memorise the side)
        self.pos = np.array([0.0, -0.8])
        self.goal = np.array([0.0, 0.8])
        self.side, self.t = detour_side(int(seed or 0)), 0
        return self._obs()

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[:2], -1.0, 1.0)
        self.pos = np.clip(self.pos + SPEED * a, -1.0, 1.0)
        self.t += 1
        collision = bool(np.linalg.norm(self.pos) < OBSTACLE_RADIUS)
        success = bool(not collision and np.linalg.norm(self.pos - self.goal) < GOAL_TOLERANCE)
        truncated = self.t >= self.spec.max_episode_steps and not (success or collision)
        info = {"success": success, "collision": collision}
        return self._obs(), float(success), success or collision, truncated, info

    def expert_action(self) -> np.ndarray:
        """Towards the waypoint on this episode's side while below it, then towards the goal (full speed, slowing
        within one step of the target)."""
        target = np.array([self.side * WAYPOINT_X, 0.0]) if self.pos[1] < -0.01 else self.goal
        d = (target - self.pos) / SPEED
        n = float(np.linalg.norm(d))
        return (d / max(n, 1.0)).astype(np.float32)

    def close(self) -> None:
        pass


class PointFamily(EnvFamily):
    """``point/detour``: a 2-D point mass, an obstacle, and an expert that detours left or right by seed."""

    name = "point"
    expert_name = "waypoint detour: left of the obstacle for even seeds, right for odd seeds"
    name_pattern = "point/detour"

    def validate(self, rest: str) -> None:
        if rest != "detour":
            raise ValueError(f"unknown point task {rest!r}; expected one of ['detour']")

    def make_env(self, rest: str, **kwargs: Any) -> PointDetourEnv:
        self.validate(rest)
        return PointDetourEnv(max_steps=kwargs.get("max_steps"))

    def default_instruction(self, task: str) -> str:
        return INSTRUCTION

    def trajectory_point(self, obs: Any) -> np.ndarray:
        return np.asarray(obs["state"][:2], dtype=np.float32)  # the point's (x, y)


register_family(PointFamily())

__all__ = ["PointDetourEnv", "PointFamily", "detour_side"]
