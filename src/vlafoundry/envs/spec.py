"""The environment description shared by every benchmark wrapper."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Seeds at or above this value are reserved for evaluation. ``vlafoundry data generate`` uses seeds
#: ``S .. S+N-1`` (``S`` defaults to 0), so evaluating from ``EVAL_SEED_BASE`` on never replays a training
#: layout (BabyAI level or Meta-World object/goal positions are a function of the seed).
EVAL_SEED_BASE = 1_000_000_000


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about an environment.

    Attributes:
        name: canonical name, e.g. ``"babyai/GoToLocal"`` or ``"metaworld/push"``.
        action_type: ``"discrete"`` or ``"continuous"``.
        num_actions: number of discrete actions (``None`` for continuous).
        action_dim: width of one action (1 for discrete).
        action_low / action_high: per-dimension bounds for continuous actions (``None`` for discrete).
        state_dim: width of the proprioceptive ``state`` vector.
        image_shape: ``(H, W, C)`` of ``obs["image"]`` or ``None`` when the env has no image.
        max_episode_steps: step cap after which an episode is truncated.
    """

    name: str
    action_type: str
    num_actions: int | None
    action_dim: int
    action_low: list[float] | None
    action_high: list[float] | None
    state_dim: int
    image_shape: tuple[int, ...] | None
    max_episode_steps: int

    def __post_init__(self) -> None:
        if self.action_type not in ("discrete", "continuous"):
            raise ValueError(f"action_type: expected 'discrete' or 'continuous', got {self.action_type!r}")
        if self.action_type == "discrete" and (self.num_actions is None or self.action_dim != 1):
            raise ValueError("a discrete EnvSpec needs num_actions and action_dim == 1")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_shape"] = list(self.image_shape) if self.image_shape is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnvSpec:
        d = dict(d)
        if d.get("image_shape") is not None:
            d["image_shape"] = tuple(int(v) for v in d["image_shape"])
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})
