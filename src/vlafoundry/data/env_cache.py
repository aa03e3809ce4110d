"""Environments of dataset generation, one cache per process (the parent and each pool worker): an env is built
once per task and ``make_env`` keywords and reused for the episodes of that task.

The cache is bounded: it keeps the ``env_cache_size()`` most recently used envs (default
:data:`DEFAULT_ENV_CACHE`) and closes the least recently used one when a new env would exceed that; 0 keeps one env
per task, unbounded. A Meta-World env with a renderer holds about 100 MB, so an unbounded cache costs a worker
generating MT50 camera frames about 5 GB. An env is rebuilt when evicted and needed again; since every episode
resets its env with the episode's seed, the episodes (and the dataset's bytes) do not depend on the cache size.
Importable from :mod:`vlafoundry.data.generate` as before.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from vlafoundry.envs import Env, make_env

if TYPE_CHECKING:
    from vlafoundry.data.generate import GenerationConfig

DEFAULT_ENV_CACHE = 16  # envs kept per process: every task of a suite up to MT10 stays built
_ENVS: OrderedDict[tuple[Any, ...], Env] = OrderedDict()  # least recently used first
_SIZE = [DEFAULT_ENV_CACHE]


def check_env_cache(size: int) -> int:
    """``size`` as an int; ``ValueError`` naming expected vs got unless it is an integer >= 0."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"env_cache: expected an integer >= 0 (0: one env per task, unbounded), got {size!r}")
    return int(size)


def env_cache_size() -> int:
    """Envs this process keeps (0: unbounded)."""
    return _SIZE[0]


def set_env_cache_size(size: int) -> None:
    """Keep at most ``size`` envs in this process (0: unbounded), closing the least recently used ones now over
    it. Also the pool initializer, so spawned workers get the parent's size."""
    _SIZE[0] = check_env_cache(size)
    _evict()


def _evict() -> None:
    while _SIZE[0] and len(_ENVS) > _SIZE[0]:
        _, env = _ENVS.popitem(last=False)
        env.close()


def _get_env(task: str, cfg: GenerationConfig) -> Env:
    kwargs = cfg.env_kwargs()
    key = (task, *sorted(kwargs.items()))
    if key in _ENVS:
        _ENVS.move_to_end(key)
    else:
        _ENVS[key] = make_env(task, **kwargs)
        _evict()  # never the env just built: the size is >= 1 when bounded
    return _ENVS[key]
