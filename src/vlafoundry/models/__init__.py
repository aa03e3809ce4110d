"""Policies composed from ``vlafoundry.nn`` layers, behind one contract (:class:`Policy`).

``make_policy(cfg.model, dataset)`` builds the type ``cfg.model.type`` names; ``load_policy(folder)`` rebuilds a
saved one (``save_pretrained`` folder or training checkpoint); ``register_policy("name")`` adds a type.
"""

from __future__ import annotations

from vlafoundry.models.base import Policy, PolicyLoadError
from vlafoundry.models.baselines import OneHotMLPConfig, TaskOneHotMLP
from vlafoundry.models.config import ModalityDropoutConfig, ModelConfig, PolicyConfig
from vlafoundry.models.objectives import LossConfig
from vlafoundry.models.processor import PolicyProcessor
from vlafoundry.models.registry import load_policy, make_policy, policy_class, policy_types, register_policy
from vlafoundry.models.spec import PolicySpec
from vlafoundry.models.vla import VLAPolicy

__all__ = ["LossConfig", "ModalityDropoutConfig", "ModelConfig", "OneHotMLPConfig", "Policy", "PolicyConfig",
           "PolicyLoadError", "PolicyProcessor", "PolicySpec", "TaskOneHotMLP", "VLAPolicy", "load_policy",
           "make_policy", "policy_class", "policy_types", "register_policy"]
