"""Environment names -> envs, through the env-family registry (:mod:`vlafoundry.envs.family`).

Names are ``<family>/<task>`` (``babyai/GoToLocal``, ``metaworld/push``) or ``<family>/<suite>``
(``metaworld/mt10``); each family owns its spelling, suites and env construction.
"""

from __future__ import annotations

from typing import Any

from vlafoundry.envs.family import Env, get_family, split_name


def env_family(name: str) -> str:
    """The family name (``"babyai"``, ``"metaworld"``, ...) of an env or suite name."""
    if "/" not in str(name):
        raise ValueError(f"env name: expected '<family>/<task>' such as 'babyai/GoToLocal' or 'metaworld/push', "
                         f"got {name!r}")
    return get_family(name).name


def canonical_name(name: str) -> str:
    """Normalise spelling: ``metaworld/push-v3`` -> ``metaworld/push``, ``MetaWorld/MT10`` -> ``metaworld/mt10``."""
    fam, rest = split_name(name)
    return f"{fam.name}/{rest}"


def expand_env_names(name: str) -> list[str]:
    """A suite name -> its task names; a single env name -> ``[name]`` (canonicalised and validated)."""
    fam, rest = split_name(name)
    return fam.expand(rest)


def make_env(name: str, **kwargs: Any) -> Env:
    """Build one environment by name; ``kwargs`` go to the family (e.g. ``image="rgb"`` for BabyAI)."""
    fam, rest = split_name(name)
    if rest in fam.suites():
        raise ValueError(f"{fam.name}/{rest!r} is a suite; call expand_env_names() and make one env per task")
    return fam.make_env(rest, **kwargs)
