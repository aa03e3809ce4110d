"""Policy types by name: ``model.type`` in a config picks the class (``vla``, ``onehot_mlp``, ...).

A new policy type is one module defining a :class:`~vlafoundry.models.base.Policy` subclass and its config
dataclass, decorated with ``@register_policy("name")`` -- and one import line in :func:`_load_builtin` if it ships
with the package (a user's own type only needs to be imported before use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlafoundry.config import ConfigError
from vlafoundry.models.base import Policy, build_from_folder
from vlafoundry.registry import Registry

POLICIES: Registry[type[Policy]] = Registry("model.type")


def register_policy(name: str):
    """Class decorator: register a :class:`Policy` subclass under ``name`` (its ``type``)."""

    def add(cls: type[Policy]) -> type[Policy]:
        cls.type = name
        return POLICIES.register(name)(cls)

    return add


def _load_builtin() -> None:
    import vlafoundry.models.baselines  # noqa: F401  (registers onehot_mlp)
    import vlafoundry.models.vla  # noqa: F401  (registers vla)


def policy_class(name: str, key: str = "model.type") -> type[Policy]:
    _load_builtin()
    try:
        return POLICIES.get(name, key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def policy_types() -> list[str]:
    _load_builtin()
    return POLICIES.names()


def make_policy(cfg: Any, dataset: Any, loss_cfg: Any = None) -> Policy:
    """A new policy of type ``cfg.type`` for ``dataset``."""
    return policy_class(getattr(cfg, "type", "vla")).from_dataset(cfg, dataset, loss_cfg)


def load_policy(path: str | Path, device: str | Any = "cpu") -> Policy:
    """A policy from a ``save_pretrained`` folder or a training checkpoint folder, in eval mode on ``device``.

    (For a run folder, or to get the experiment config too, use :func:`vlafoundry.train.load_run`.)"""
    policy = build_from_folder(path)
    return policy.to(device).eval()


__all__ = ["POLICIES", "load_policy", "make_policy", "policy_class", "policy_types", "register_policy"]
