"""Policies composed from ``vlafoundry.nn`` layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlafoundry.models.baselines import OneHotMLPConfig, TaskOneHotMLP, fit_baseline
from vlafoundry.models.config import ModalityDropoutConfig, PolicyConfig
from vlafoundry.models.policy import PolicySpec, VLAPolicy


def load_policy(path: str | Path, device: str = "cpu") -> tuple[VLAPolicy, Any]:
    """Load a trained policy from a checkpoint or run directory -> (policy in eval mode, ExperimentConfig)."""
    from vlafoundry.train.trainer import policy_from_checkpoint

    policy, cfg, _ = policy_from_checkpoint(path, device)
    policy.eval()
    return policy, cfg


__all__ = ["VLAPolicy", "PolicySpec", "PolicyConfig", "ModalityDropoutConfig", "load_policy", "TaskOneHotMLP",
           "OneHotMLPConfig", "fit_baseline"]
