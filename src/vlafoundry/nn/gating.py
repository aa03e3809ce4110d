"""Conditional computation gate: a learned scalar gate in (0, 1), computed from condition features, scales features."""

from __future__ import annotations

import torch
from torch import nn

from vlafoundry.nn._checks import check_tensor

__all__ = ["ConditionalComputationGate"]


class ConditionalComputationGate(nn.Module):
    """Scale features by a learned scalar gate computed from condition features.

    ``g = sigmoid(MLP(condition))`` in (0, 1) with MLP ``Linear(d_model, hidden) -> ReLU -> Linear(hidden, 1)``
    (hidden defaults to ``max(1, d_model // 4)``); output ``x * g``. A condition of shape (B, Dc) gates every
    token of an x of shape (B, L, D); a condition (B, L, Dc) gates per token.

    ``hard=True`` (inference): gates below ``threshold`` (default 0.5) are set to exactly 0, so the gated branch
    can be skipped by the caller (see :meth:`gate_values`); gates at or above it keep their soft value. The hard
    path has no useful gradient through the threshold, so train with ``hard=False``.
    """

    def __init__(self, d_model: int, hidden: int | None = None, threshold: float | None = None) -> None:
        super().__init__()
        hidden = hidden if hidden is not None else max(1, d_model // 4)
        self.d_model = d_model
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.gate = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def gate_values(self, condition_features: torch.Tensor, hard: bool = False) -> torch.Tensor:
        """(..., d_model) -> (..., 1) gate in [0, 1] (hard: zero below threshold)."""
        check_tensor("condition_features", condition_features, ndim=(2, 3), last_dim=self.d_model)
        g = self.gate(condition_features)
        if hard:
            g = torch.where(g >= self.threshold, g, torch.zeros_like(g))
        return g

    def forward(self, x: torch.Tensor, condition_features: torch.Tensor, hard: bool = False) -> torch.Tensor:
        check_tensor("x", x, ndim=(2, 3))
        g = self.gate_values(condition_features, hard=hard)  # (B, 1) or (B, L, 1)
        if condition_features.shape[0] != x.shape[0]:
            raise ValueError(
                f"condition_features: expected batch size {x.shape[0]} (as x), got {condition_features.shape[0]}"
            )
        if g.dim() < x.dim():
            g = g.view(g.shape[0], *([1] * (x.dim() - 2)), 1)  # (B, 1, 1) broadcast over tokens
        elif g.dim() > x.dim():
            raise ValueError(
                f"condition_features: per-token condition {tuple(condition_features.shape)} needs x of rank 3, "
                f"got {tuple(x.shape)}"
            )
        return x * g
