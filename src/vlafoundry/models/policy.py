"""Compatibility names: the VLA policy lives in :mod:`vlafoundry.models.vla` (modeling),
:mod:`~vlafoundry.models.objectives` (losses), :mod:`~vlafoundry.models.acting` (acting state) and
:mod:`~vlafoundry.models.processor` (input processing); its spec in :mod:`~vlafoundry.models.spec`."""

from __future__ import annotations

from torch import nn

from vlafoundry.models.processor import MODALITIES
from vlafoundry.models.spec import PolicySpec
from vlafoundry.models.vla import VLAPolicy


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODALITIES", "PolicySpec", "VLAPolicy", "count_parameters"]
