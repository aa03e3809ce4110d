"""Environment names: ``babyai/<Level>``, ``metaworld/<task>`` and the ``metaworld/mt10`` suite."""

from __future__ import annotations

from typing import Any, Union

from vlafoundry.envs.babyai import BabyAIEnv
from vlafoundry.envs.metaworld import MT10_TASKS, METAWORLD_TASKS, MetaWorldEnv

Env = Union[BabyAIEnv, MetaWorldEnv]

SUITES: dict[str, tuple[str, ...]] = {
    "metaworld/mt10": tuple(f"metaworld/{t}" for t in MT10_TASKS),
    "metaworld/mt50": tuple(f"metaworld/{t}" for t in METAWORLD_TASKS),
}


def env_family(name: str) -> str:
    """``"babyai"`` or ``"metaworld"`` for an env or suite name."""
    family = name.split("/", 1)[0].lower()
    if family not in ("babyai", "metaworld") or "/" not in name:
        raise ValueError(f"env name: expected 'babyai/<Level>' or 'metaworld/<task>', got {name!r}")
    return family


def canonical_name(name: str) -> str:
    """Normalise spelling: ``metaworld/push-v3`` -> ``metaworld/push``, ``MetaWorld/MT10`` -> ``metaworld/mt10``."""
    family = env_family(name)
    rest = name.split("/", 1)[1]
    if family == "metaworld":
        rest = rest.lower()
        if rest.endswith("-v3"):
            rest = rest[: -len("-v3")]
    return f"{family}/{rest}"


def expand_env_names(name: str) -> list[str]:
    """A suite name -> its task names; a single env name -> ``[name]`` (canonicalised)."""
    name = canonical_name(name)
    if name in SUITES:
        return list(SUITES[name])
    family, rest = name.split("/", 1)
    if family == "metaworld" and rest not in METAWORLD_TASKS:
        raise ValueError(f"unknown Meta-World task {rest!r}; expected one of {', '.join(METAWORLD_TASKS)} or a suite {list(SUITES)}")
    return [name]


def make_env(name: str, image: str = "symbolic", max_steps: int | None = None, **kwargs: Any) -> Env:
    """Build one environment by name (``image`` applies to BabyAI only; Meta-World has no image)."""
    name = canonical_name(name)
    if name in SUITES:
        raise ValueError(f"{name!r} is a suite; call expand_env_names() and make one env per task")
    family, rest = name.split("/", 1)
    if family == "babyai":
        return BabyAIEnv(rest, image=image, max_steps=max_steps, **kwargs)
    return MetaWorldEnv(rest, max_steps=max_steps, **kwargs)
