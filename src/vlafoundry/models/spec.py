"""What a policy must know about its data: spaces, normalisation statistics, the task list."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class PolicySpec:
    """Action/observation spaces of the training data, its state statistics and task names (JSON-able).

    Validated on construction: a statistic of the wrong length names itself (``state_mean: expected 39 values
    (state_dim), got 4``)."""

    env: str
    action_type: str  # "discrete" | "continuous"
    action_dim: int
    num_actions: int | None = None
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    state_dim: int = 0
    image_shape: list[int] | None = None
    state_mean: list[float] | None = None
    state_std: list[float] | None = None
    tasks: list[str] = field(default_factory=list)
    #: The distinct instructions of the training data (what ``model.instruction_snap`` grounds new phrasings in).
    instructions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.action_type not in ("discrete", "continuous"):
            raise ValueError(f"action_type: expected 'discrete' or 'continuous', got {self.action_type!r}")
        if self.action_type == "discrete" and not self.num_actions:
            raise ValueError("num_actions: expected a positive integer for a discrete action space, got None")
        for name, n in (("state_mean", self.state_dim), ("state_std", self.state_dim),
                        ("action_low", self.action_dim), ("action_high", self.action_dim)):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                what = "state_dim" if name.startswith("state") else "action_dim"
                raise ValueError(f"{name}: expected {n} values ({what}), got {len(v)}")
        if self.state_std is not None and not all(np.isfinite(self.state_std)) or (
                self.state_mean is not None and not all(np.isfinite(self.state_mean))):
            raise ValueError("state_mean/state_std: expected finite statistics, got NaN or inf")

    @classmethod
    def from_dataset(cls, ds: Any) -> PolicySpec:
        """From a :class:`~vlafoundry.data.DemoDataset`: its EnvSpec, state statistics and task list."""
        spec = ds.spec
        stats = ds.stats.get("state") if ds.stats else None
        return cls(
            env=str(ds.env_name),
            action_type=spec.action_type,
            action_dim=int(spec.action_dim),
            num_actions=spec.num_actions,
            action_low=[float(v) for v in spec.action_low] if spec.action_low is not None else None,
            action_high=[float(v) for v in spec.action_high] if spec.action_high is not None else None,
            state_dim=int(spec.state_dim),
            image_shape=list(spec.image_shape) if spec.image_shape else None,
            state_mean=np.asarray(stats["mean"], dtype=np.float64).reshape(-1).tolist() if stats else None,
            state_std=np.asarray(stats["std"], dtype=np.float64).reshape(-1).tolist() if stats else None,
            tasks=list(ds.tasks),
            instructions=[str(t) for t in getattr(ds, "instructions", [])],
        )


__all__ = ["PolicySpec"]
