"""A toy env family for the plug-in tests: a 1-D corridor (its whole module; registering it is one line,
``register_family(ToyFamily())``, done by the tests that use it)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from vlafoundry.envs import EnvFamily, EnvSpec

LEFT, RIGHT = 0, 1


class CorridorEnv:
    """A corridor of ``length`` cells; the agent starts in the middle and must reach the end the instruction names.
    ``state``: one-hot position (length,); actions: 0 = left, 1 = right; success: reaching the named end."""

    def __init__(self, task: str, length: int, max_steps: int | None = None) -> None:
        self.length = length
        self.spec = EnvSpec(name=f"toy/{task}", action_type="discrete", num_actions=2, action_dim=1, action_low=None,
                            action_high=None, state_dim=length, image_shape=None,
                            max_episode_steps=int(max_steps or 2 * length))
        self.pos = length // 2
        self.goal = 0

    def _obs(self) -> dict[str, Any]:
        state = np.zeros(self.length, dtype=np.float32)
        state[self.pos] = 1.0
        return {"state": state, "instruction": "go left" if self.goal == 0 else "go right", "task": self.spec.name}

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        self.pos = self.length // 2
        self.goal = 0 if int(seed or 0) % 2 == 0 else self.length - 1
        return self._obs()

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        a = int(np.asarray(action).reshape(-1)[0])
        self.pos = min(max(self.pos + (1 if a == RIGHT else -1), 0), self.length - 1)
        success = self.pos == self.goal
        return self._obs(), float(success), success, False, {"success": success}

    def expert_action(self) -> int:
        return LEFT if self.goal < self.pos else RIGHT

    def close(self) -> None:
        pass


class ToyFamily(EnvFamily):
    """``toy/corridor`` (5 cells) and ``toy/long-corridor`` (9 cells)."""

    name = "toy"
    expert_name = "walk to the goal"
    LENGTHS: ClassVar[dict[str, int]] = {"corridor": 5, "long-corridor": 9}

    def validate(self, rest: str) -> None:
        if rest not in self.LENGTHS:
            raise ValueError(f"unknown toy task {rest!r}; expected one of {sorted(self.LENGTHS)}")

    def make_env(self, rest: str, **kwargs: Any) -> CorridorEnv:
        self.validate(rest)
        return CorridorEnv(rest, self.LENGTHS[rest], max_steps=kwargs.get("max_steps"))
