"""Env families: everything vlafoundry knows about one benchmark, behind one adapter.

An env name is ``<family>/<rest>`` (``babyai/GoToLocal``, ``metaworld/push``, ``metaworld/mt10``). The part before
the slash picks an :class:`EnvFamily` from the registry; the family owns the rest: spelling, suites, building envs
and experts, the env keyword arguments a training config implies (observation mode), instruction subgroups for the
bias tables, and training-time augmentations. Code outside a family's own module never tests the family's name:
it asks the family.

A new benchmark is one module that subclasses :class:`EnvFamily` and one ``register_family(...)`` line (see
``docs/architecture.md``): names, envs, the expert, the layout of its episodes in a Minari dataset and what
generation records about it all come from here, so no other module needs an edit (``tests/envs/test_family.py``
registers a toy family and generates, loads and evaluates it).

An env argument may also list several names of one family (``metaworld/handle-press,metaworld/coffee-push``) or
be a suite file (:mod:`vlafoundry.envs.names`); :func:`get_family` then returns the family they share.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vlafoundry.envs.names import is_env_list, split_env_list
from vlafoundry.envs.spec import EnvSpec


@runtime_checkable
class Env(Protocol):
    """The interface every env wrapper implements (BabyAIEnv, MetaWorldEnv, ...).

    ``reset``/``step`` observations are dicts with ``state`` (float32 (S,)), ``instruction`` (str), ``task`` (the env
    name) and, for envs with ``spec.image_shape``, ``image`` (uint8 (H, W, C)); ``step``'s info has ``success``.
    The expert and frame rendering are reached through the family (:meth:`EnvFamily.expert_action`,
    :meth:`EnvFamily.render_rgb`), whose defaults call the env's ``expert_action()`` / ``render_rgb()`` if it has
    them."""

    spec: EnvSpec

    def reset(self, seed: int | None = None) -> dict[str, Any]: ...

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


#: Defaults of the camera options (``data.camera``, ``data.image_size``, ``data.proprio``); a family that does not
#: list an option in :attr:`EnvFamily.observation_options` refuses other values.
OBSERVATION_DEFAULTS: dict[str, Any] = {"camera": "corner2", "image_size": 64, "proprio": "auto"}


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
    #: Camera options of :data:`OBSERVATION_DEFAULTS` this family reads (through :meth:`env_kwargs`).
    observation_options: tuple[str, ...] = ()
    #: How this family's names read, for messages (``"babyai/<Level>"``; default ``"<name>/<task>"``).
    name_pattern: str = ""
    #: The expert's short name, recorded as ``generation.expert`` in a dataset's metadata.
    expert_name: str = "expert"
    #: Where the expert comes from (Minari's ``algorithm_name``; default :attr:`expert_name`).
    expert_source: str = ""
    #: Distributions whose installed versions generation records (besides vlafoundry, minari and gymnasium).
    packages: tuple[str, ...] = ()

    def pattern(self) -> str:
        """:attr:`name_pattern`, or ``"<name>/<task>"``."""
        return self.name_pattern or f"{self.name}/<task>"

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

    def expert_action(self, env: Env) -> Any:
        """The expert's action for ``env``'s current state (default: ``env.expert_action()``): an ``int`` for
        discrete actions, a float32 ``(action_dim,)`` array for continuous ones."""
        act = getattr(env, "expert_action", None)
        if act is None:
            raise NotImplementedError(f"{self.name} envs have no expert: expected {type(env).__name__}.expert_action() "
                                      f"or an override of {type(self).__name__}.expert_action(env)")
        return act()

    def render_rgb(self, env: Env) -> np.ndarray | None:
        """A frame (H, W, 3) uint8 of ``env``'s current state for GIFs, or ``None`` when the family cannot render
        (default: ``env.render_rgb()`` if the env has it)."""
        render = getattr(env, "render_rgb", None)
        return None if render is None else render()

    #: Axis labels of :meth:`trajectory_point` (the report's trajectory plot).
    trajectory_axes: tuple[str, str] = ("x", "y")

    def trajectory_point(self, obs: Mapping[str, Any]) -> np.ndarray | None:
        """A 2-D position of the agent in ``obs`` (the report plots closed-loop paths of it), or ``None`` when
        the family has none (default)."""
        return None

    def env_kwargs(self, data_cfg: Any) -> dict[str, Any]:
        """The keyword arguments of :meth:`make_env` implied by a training ``DataConfig`` (observation mode...),
        so that evaluation builds the envs the policy was trained on."""
        return {}

    def validate_observation(self, cfg: Any) -> None:
        """Raise ``ValueError`` when ``cfg`` (a ``DataConfig`` or generation config) sets a camera option this family
        does not read to a value other than its default, or an option it reads to a value it cannot render."""
        for key, default in OBSERVATION_DEFAULTS.items():
            value = getattr(cfg, key, default)
            if key not in self.observation_options and value != default:
                raise ValueError(f"{key}: {self.name} envs have no {key} option (it keeps its default {default!r}), "
                                 f"got {value!r}")

    def validate_data(self, data_cfg: Any) -> None:
        """Raise ``ValueError`` (naming the key) when a ``DataConfig`` asks for something this family lacks."""
        if data_cfg.image not in self.image_modes:
            raise ValueError(f"data.image: expected one of {list(self.image_modes)} for {self.name} envs, "
                             f"got {data_cfg.image!r}")
        try:
            self.validate_observation(data_cfg)
        except ValueError as exc:
            raise ValueError(f"data.{exc}") from None
        if data_cfg.augment != "none" and data_cfg.augment not in self.augmentations:
            raise ValueError(f"data.augment: expected one of {['none', *self.augmentations]} for {self.name} envs "
                             f"with data.image={data_cfg.image!r}, got {data_cfg.augment!r}")

    # ------------------------------------------------------------------ Minari storage
    # Default layout: observations ``{"observation": state (S,) float32, "image": (H, W, C) uint8 if the env has
    # images, "mission": the instruction}``; actions ``Discrete(num_actions)`` or a ``Box`` of the spec's bounds.
    def minari_spaces(self, spec: Mapping[str, Any], mission_space: Any) -> tuple[Any, Any]:
        """(observation_space, action_space) of this family's episodes in Minari, for an env spec (``to_dict()``
        form); ``mission_space`` is the ``Text`` space the data layer stores instructions in."""
        from gymnasium import spaces

        obs: dict[str, Any] = {
            "observation": spaces.Box(-np.inf, np.inf, (int(spec["state_dim"]),), np.float32),
            "mission": mission_space,
        }
        if spec.get("image_shape"):
            obs["image"] = spaces.Box(0, 255, tuple(int(v) for v in spec["image_shape"]), np.uint8)
        if spec["action_type"] == "discrete":
            act: Any = spaces.Discrete(int(spec["num_actions"]))
        else:
            act = spaces.Box(np.asarray(spec["action_low"], np.float32), np.asarray(spec["action_high"], np.float32),
                             dtype=np.float32)
        return spaces.Dict(obs), act

    def to_minari_observations(self, episode: Mapping[str, Any]) -> dict[str, Any]:
        """An in-memory episode's ``n + 1`` observations in the layout of :meth:`minari_spaces`."""
        obs: dict[str, Any] = {"observation": episode["state"], "mission": [episode["instruction"]] * len(episode["state"])}
        if episode.get("image") is not None:
            obs["image"] = episode["image"]
        return obs

    def from_minari_observations(self, observations: Any, task: str) -> tuple[np.ndarray, np.ndarray | None, str]:
        """``(state (n+1, S) float32, image (n+1, H, W, C) uint8 or None, instruction)`` of one stored episode of
        ``task``: ours (:meth:`to_minari_observations`) or a user's (a plain ``Box`` of states is accepted; the
        instruction is then :meth:`default_instruction`)."""
        if not isinstance(observations, Mapping):
            return np.asarray(observations, dtype=np.float32), None, self.default_instruction(task)
        if "observation" not in observations:
            raise ValueError(f"{self.name} Minari dataset: expected observations with keys 'observation' "
                             f"(and 'image', 'mission'), got {sorted(observations)}")
        image = observations.get("image")
        mission = observations.get("mission")
        return (np.asarray(observations["observation"], dtype=np.float32),
                None if image is None else np.asarray(image, dtype=np.uint8),
                str(mission[0]) if mission is not None else self.default_instruction(task))

    def default_instruction(self, task: str) -> str:
        """The instruction of an episode of ``task`` (full name) whose dataset recorded none."""
        raise ValueError(f"{task}: the Minari dataset records no instruction ('mission') and {self.name} envs have "
                         "no default one")

    def minari_env_spec(self, rest: str) -> Any:
        """The gymnasium ``EnvSpec`` Minari records for a one-task dataset of ``rest``, or ``None`` (default)."""
        return None

    def env_name_from_minari(self, env_spec: Mapping[str, Any]) -> str | None:
        """This family's env name for a Minari dataset recorded with gymnasium env spec ``env_spec``, if it is one
        of ours (default: never)."""
        return None

    # ------------------------------------------------------------------ language and training
    def instruction_subgroups(self, instruction: str, task: str | None = None) -> dict[str, str]:
        """Subgroup labels of one episode for the bias tables (keys: :attr:`subgroup_keys`)."""
        return {"task": task or "none"}

    def task_groups(self, names: Sequence[str]) -> dict[str, Any] | None:
        """Benchmark groups an evaluation of ``names`` (full env names) reports success for, beside published rows:
        ``{"title", "groups": {group: [full names]}, "complete", "published": [{"name", "average", "groups"}],
        "source"}`` (:mod:`vlafoundry.eval.task_groups`); default None (no groups)."""
        return None

    def cell_labels(self, scheme: str, image_shape: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
        """The labeller of ``model.cell_labels == scheme`` for stored frames of ``image_shape``: uint8 frames
        ``(..., H, W, C)`` -> ``(..., R, C', A)`` integer labels per cell (-1 unknown), R x C' the patch grid
        (``loss.cells``). Default: this family has none (``ValueError``)."""
        raise ValueError(f"model.cell_labels={scheme!r}: {self.name} envs provide no per-cell labels (expected "
                         "'none' for their data)")

    def position_labels(self, scheme: str) -> tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray]]:
        """``model.position_labels == scheme`` (``loss.positions``): the ``make_env`` keywords of an observation that
        holds the full state (the demonstrations are replayed with them, :mod:`vlafoundry.data.replay`) and the map
        from those full states (N, S_full) to the position targets (N, P). Default: this family has none
        (``ValueError``)."""
        raise ValueError(f"model.position_labels={scheme!r}: {self.name} envs provide no position labels (expected "
                         "'none' for their data)")

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


def get_family(name: str | Sequence[str]) -> EnvFamily:
    """The family of an env / suite name (``"babyai/GoToLocal"``), a bare family name (``"babyai"``), or an env list
    (comma-separated names, a suite file, a sequence of names), whose names must share one family."""
    _load_builtin()
    if is_env_list(name):
        return _family_of_list(name)
    prefix = str(name).split("/", 1)[0].lower()
    fam = _FAMILIES.get(prefix)
    if fam is None:
        known = ", ".join(f"'{f}/<...>'" for f in sorted(_FAMILIES))
        raise ValueError(f"env name: expected one of {known}, got {name!r}")
    return fam


def _family_of_list(names: str | Sequence[str]) -> EnvFamily:
    entries = split_env_list(names)
    found: dict[str, str] = {}
    for entry in entries:
        if "/" not in entry:
            raise ValueError(f"env list: expected '<family>/<task>' entries, got {entry!r} in {names!r}")
        found.setdefault(get_family(entry).name, entry)
    if len(found) > 1:
        got = " and ".join(f"{fam} ({entry!r})" for fam, entry in found.items())
        raise ValueError(f"env list: expected names of one family, got {got}; a dataset and a policy have one "
                         "observation space and one action space, and each family has its own, so list one "
                         "family's tasks")
    return _FAMILIES[next(iter(found))]


def infer_env_name(minari_metadata: Mapping[str, Any]) -> str | None:
    """The env name of a Minari dataset, from the gymnasium env spec in its metadata, if a family recognises it."""
    raw = minari_metadata.get("env_spec")
    if not raw:
        return None
    spec = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(spec, Mapping):
        return None
    _load_builtin()
    for fam in _FAMILIES.values():
        name = fam.env_name_from_minari(spec)
        if name is not None:
            return name
    return None


def split_name(name: str) -> tuple[EnvFamily, str]:
    """``"metaworld/push-v3"`` -> (the Meta-World family, ``"push"``): family and canonical rest."""
    if is_env_list(name):
        raise ValueError(f"env name: expected one '<family>/<task>' name, got the env list {name!r}")
    if "/" not in str(name):
        get_family(name)  # a bare family name: say which families exist
        raise ValueError(f"env name: expected '<family>/<task>', got {name!r}")
    fam = get_family(name)
    return fam, fam.canonical(str(name).split("/", 1)[1])


#: Modules of the shipped families; each ends with its ``register_family(...)`` line.
BUILTIN_FAMILY_MODULES: tuple[str, ...] = ("vlafoundry.envs.babyai", "vlafoundry.envs.metaworld",
                                          "vlafoundry.envs.point")
_builtin_loaded = False


def _load_builtin() -> None:
    """Import the shipped families once (each registers itself on import)."""
    global _builtin_loaded
    if not _builtin_loaded:
        import importlib

        for module in BUILTIN_FAMILY_MODULES:
            importlib.import_module(module)
        _builtin_loaded = True


__all__ = ["OBSERVATION_DEFAULTS", "Env", "EnvFamily", "families", "get_family", "infer_env_name", "register_family", "split_name",
           "unregister_family"]
