"""Environments of dataset generation, one cache per process (the parent and each pool worker): an env is built
once per task and ``make_env`` keywords and reused for every episode of that task. Importable from
:mod:`vlafoundry.data.generate` as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlafoundry.envs import Env, make_env

if TYPE_CHECKING:
    from vlafoundry.data.generate import GenerationConfig

_ENVS: dict[tuple[Any, ...], Env] = {}


def _get_env(task: str, cfg: GenerationConfig) -> Env:
    kwargs = cfg.env_kwargs()
    key = (task, *sorted(kwargs.items()))
    if key not in _ENVS:
        _ENVS[key] = make_env(task, **kwargs)
    return _ENVS[key]
