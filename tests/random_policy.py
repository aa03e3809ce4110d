"""A seeded random policy over BabyAI's turn/forward actions (the evaluation tests' stand-in for a trained one)."""

from __future__ import annotations

import numpy as np


class RandomPolicy:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self, env_indices=None) -> None:
        pass

    def select_action(self, obs):
        return self.rng.integers(0, 3, size=len(obs["instruction"]))
