"""Env families: everything vlafoundry knows about one benchmark, behind one adapter.

An env name is ``<family>/<rest>`` (``babyai/GoToLocal``, ``metaworld/push``, ``metaworld/mt10``). The part before
the slash picks an :class:`EnvFamily` from the registry; the family owns the rest: spelling, suites, building envs
and experts, the env keyword arguments a training config implies (observation mode), instruction subgroups for the
bias tables, and training-time augmentations. Code outside a family's own module never tests the family's name:
it asks the family.

A new benchmark is one module that subclasses :class:`EnvFamily` and one ``register_family(...)`` line (see
``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from vlafoundry.envs.spec import EnvSpec


@runtime_checkable
class Env(Protocol):
    """The interface every env wrapper implements (BabyAIEnv, MetaWorldEnv, ...)."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> dict[str, Any]: ...

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


class EnvFamily:
    """One benchmark family. Subclasses set :attr:`name` and override what differs from these defaults."""

    #: The prefix of this family's env names (``"babyai"`` in ``"babyai/GoToLocal"``).
    name: str = ""
    #: Subgroup labellings the bias tables use for this family (see :meth:`instruction_subgroups`).
    subgroup_keys: tuple[str, ...] = ("task",)
    #: Data augmentations (``data.augment`` values other than ``none``) this family supports.
    augmentations: tuple[str, ...] = ()
    #: Observation image modes (``data.image`` values) this family supports.
    image_modes: tuple[str, ...] = ("symbolic",)

    # ------------------------------------------------------------------ names
    def canonical(self, rest: str) -> str:
        """Normalised spelling of the part after ``<family>/`` (default: unchanged)."""
        return rest

    def suites(self) -> Mapping[str, tuple[str, ...]]:
        """Named suites of this family: ``{"mt10": ("reach", ...)}`` (task parts, without the family prefix)."""
        return {}

    def validate(self, rest: str) -> None:
        """Raise ``ValueError`` naming the problem when ``rest`` is not a task of this family."""

    def expand(self, rest: str) -> list[str]:
        """A suite -> its full task names; a task -> ``[full name]`` (canonical, validated)."""
        rest = self.canonical(rest)
        suites = self.suites()
        if rest in suites:
            return [f"{self.name}/{t}" for t in suites[rest]]
        self.validate(rest)
        return [f"{self.name}/{rest}"]

    # ------------------------------------------------------------------ envs
    def make_env(self, rest: str, **kwargs: Any) -> Env:
        """One env of this family (``rest`` canonical, not a suite)."""
        raise NotImplementedError

    def env_kwargs(self, data_cfg: Any) -> dict[str, Any]:
        """The keyword arguments of :meth:`make_env` implied by a training ``DataConfig`` (observation mode...),
        so that evaluation builds the envs the policy was trained on."""
        return {}

    def validate_data(self, data_cfg: Any) -> None:
        """Raise ``ValueError`` (naming the key) when a ``DataConfig`` asks for something this family lacks."""
        if data_cfg.image not in self.image_modes:
            raise ValueError(f"data.image: expected one of {list(self.image_modes)} for {self.name} envs, "
                             f"got {data_cfg.image!r}")
        if data_cfg.augment != "none" and data_cfg.augment not in self.augmentations:
            raise ValueError(f"data.augment: expected one of {['none', *self.augmentations]} for {self.name} envs "
                             f"with data.image={data_cfg.image!r}, got {data_cfg.augment!r}")

    # ------------------------------------------------------------------ language and training
    def instruction_subgroups(self, instruction: str, task: str | None = None) -> dict[str, str]:
        """Subgroup labels of one episode for the bias tables (keys: :attr:`subgroup_keys`)."""
        return {"task": task or "none"}

    def augmentation(self, kind: str, data_cfg: Any) -> Callable[..., Any] | None:
        """The training-batch augmentation for ``data.augment == kind`` (``None`` for ``"none"``)."""
        if kind == "none":
            return None
        raise ValueError(f"data.augment: {self.name} envs support {['none', *self.augmentations]}, got {kind!r}")


_FAMILIES: dict[str, EnvFamily] = {}


def register_family(family: EnvFamily) -> EnvFamily:
    """Add ``family`` to the registry under ``family.name`` (re-registering a name replaces it)."""
    if not family.name or "/" in family.name or family.name != family.name.lower():
        raise ValueError(f"family name: expected a lower-case word without '/', got {family.name!r}")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    _FAMILIES.pop(name, None)


def families() -> list[str]:
    """Registered family names."""
    _load_builtin()
    return sorted(_FAMILIES)


def get_family(name: str) -> EnvFamily:
    """The family of an env / suite name (``"babyai/GoToLocal"``) or a bare family name (``"babyai"``)."""
    _load_builtin()
    prefix = str(name).split("/", 1)[0].lower()
    fam = _FAMILIES.get(prefix)
    if fam is None:
        known = ", ".join(f"'{f}/<...>'" for f in sorted(_FAMILIES))
        raise ValueError(f"env name: expected one of {known}, got {name!r}")
    return fam


def split_name(name: str) -> tuple[EnvFamily, str]:
    """``"metaworld/push-v3"`` -> (the Meta-World family, ``"push"``): family and canonical rest."""
    if "/" not in str(name):
        get_family(name)  # a bare family name: say which families exist
        raise ValueError(f"env name: expected '<family>/<task>', got {name!r}")
    fam = get_family(name)
    return fam, fam.canonical(str(name).split("/", 1)[1])


def _load_builtin() -> None:
    """Import the shipped families (each registers itself on import)."""
    if "babyai" not in _FAMILIES:
        import vlafoundry.envs.babyai  # noqa: F401
    if "metaworld" not in _FAMILIES:
        import vlafoundry.envs.metaworld  # noqa: F401


__all__ = ["Env", "EnvFamily", "families", "get_family", "register_family", "split_name", "unregister_family"]
