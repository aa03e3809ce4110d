"""The settings of one evaluation, typed and validated: :class:`EvalOptions`.

Each value comes from, in order of precedence: the command line (or the caller) when given, else the checkpoint
config's ``eval`` section (``eval.episodes``, ``eval.workers``, ``eval.seed_start``, ``eval.max_steps``), else the
documented default below. Invalid values raise :class:`EvalOptionsError` naming where the value came from
(``--episodes`` or ``eval.episodes``), what was expected and what was got.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from vlafoundry.eval.rollout import DEFAULT_SEED_START

__all__ = ["ACTING_KEYS", "CONFIG_KEYS", "DEFAULT_BALANCE_SAMPLES", "DEFAULT_EPISODES", "DEFAULT_OFFLINE_SAMPLES",
           "EvalError", "EvalOptions", "EvalOptionsError", "apply_acting", "default_workers"]  # fmt: skip

DEFAULT_EPISODES = 100
DEFAULT_OFFLINE_SAMPLES = 5000
DEFAULT_BALANCE_SAMPLES = 1024
ACTION_SELECTIONS = ("greedy", "sample")
# Options that set the policy's acting-time model settings for this evaluation (the same name under ``model.``).
ACTING_KEYS = ("action_selection", "sample_temperature", "flow_steps", "diffusion_steps", "execute", "ensemble",
               "instruction_snap")
# Options that fall back on the checkpoint config's ``eval`` section (the same name there: ``eval.episodes``, ...).
CONFIG_KEYS = ("episodes", "workers", "seed_start", "max_steps")


def default_workers() -> int:
    """Env worker processes when neither the command line nor the config says: CPU count, at most 4."""
    return min(4, os.cpu_count() or 1)


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message starts with the option or input at fault."""


class EvalOptionsError(EvalError):
    """A bad option value: ``name`` (``--episodes``, ``eval.episodes`` or ``episodes``), expected, got."""

    def __init__(self, name: str, expected: str, got: Any) -> None:
        self.name, self.expected, self.got = name, expected, got
        super().__init__(f"{name}: expected {expected}, got {got!r}")


def _int(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo), f"an integer >= {lo}"


def _opt_int(lo: int) -> tuple[Callable[[Any], bool], str]:
    ok, what = _int(lo)
    return (lambda v: v is None or ok(v)), f"{what} or None"


def _opt_str() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or (isinstance(v, str) and v != "")), "a non-empty string or None"


def _bool(optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool) or (optional and v is None)), "true or false" + (" or None" if optional
                                                                                            else "")  # fmt: skip


def _conditions(v: Any) -> bool:
    if v is None:
        return True
    from vlafoundry.eval.robustness import parse_conditions

    try:
        parse_conditions(v)
    except ValueError:
        return False
    return True


def _temperature(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0)


# option -> (check, what was expected)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "env": _opt_str(),
    "episodes": _int(1),
    "workers": _int(0),
    "num_envs": _opt_int(1),
    "seed_start": _int(0),
    "max_steps": _int(0),
    "paraphrases": _opt_str(),
    "robustness": _bool(),
    "conditions": (_conditions, "a comma list of robustness conditions, each setting joined by '+': no_image, "
                   "no_state, no_instruction, default, or key=value (key: state_noise, image_noise, "
                   "instruction_noise, image_gaussian, image_occlusion, image_jitter, image_shift)"),
    "generalisation": _bool(),
    "offline": _bool(optional=True),
    "offline_samples": _int(1),
    "balance": _bool(),
    "balance_samples": _int(1),
    "gifs": _int(0),
    "out": _opt_str(),
    "device": (lambda v: isinstance(v, str) and v != "", "a torch device such as 'cpu' or 'cuda:0'"),
    "action_selection": (lambda v: v is None or v in ACTION_SELECTIONS, f"one of {list(ACTION_SELECTIONS)} or None"),
    "sample_temperature": (_temperature, "a number > 0"),
    "flow_steps": _opt_int(1),
    "diffusion_steps": _opt_int(1),
    "execute": _opt_int(0),
    "ensemble": _bool(optional=True),
    "instruction_snap": _bool(optional=True),
}


@dataclass(frozen=True)
class EvalOptions:
    """Settings of ``vlafoundry eval`` (one field per command-line option, ``--num-envs`` -> ``num_envs``).

    Attributes:
        env: environment or suite; None = the checkpoint's ``data.env``.
        episodes: episodes per task (config ``eval.episodes``; default 100).
        workers: env worker processes, 0 = in-process (config ``eval.workers``; default CPU count, at most 4).
        num_envs: parallel env slots = rows of every policy batch; None = ``min(64, total episodes)``.
        seed_start: first evaluation seed (config ``eval.seed_start``; default ``10**9``), moved past the training
            seeds if they overlap.
        max_steps: episode step cap given to the envs and the rollouts, 0 = each env's own limit (config
            ``eval.max_steps``; default 0).
        paraphrases: JSON paraphrase file; adds a language-generalisation evaluation.
        robustness: add the missing-modality / noise / image-corruption table.
        conditions: the robustness rows by name (``"image_occlusion=0.25,image_jitter=0.3"``;
            :func:`vlafoundry.eval.robustness.parse_conditions`), after the full-input row; implies ``robustness``.
            None = the default rows.
        generalisation: add the language generalisation suite (paraphrases, held-out colour-object pairs, a
            held-out template; :mod:`vlafoundry.eval.generalisation`).
        offline: offline metrics on the training data's held-out split; None = when the dataset is on disk.
        offline_samples: about this many held-out steps at most for the offline metrics (default 5,000; for a
            memory policy, whole episodes: as many as hold about this many steps on average).
        balance: measure modality balance (ablation and gradient shares) on the held-out split (default on).
        balance_samples: about this many held-out steps for modality balance (default 1,024; the first ones of
            the offline metrics', within the same pass).
        gifs: GIFs of this many successful and this many failed episodes.
        out: output folder; None = the run folder of the checkpoint.
        device: torch device of the policy.
        action_selection: ``greedy`` or ``sample``; None = the checkpoint's ``model.action_selection``.
        sample_temperature: softmax temperature of sampled actions (> 0); None = the checkpoint's.
        flow_steps: Euler integration steps of a ``flow`` head's sampler; None = the checkpoint's.
        diffusion_steps: DDIM denoising steps of a ``diffusion`` head's sampler; None = the checkpoint's.
        execute: actions acted on per predicted chunk before re-planning (0 = the whole chunk; with ``ensemble``, the
            steps between predictions); None = the checkpoint's.
        ensemble: temporal ensembling of overlapping chunks (ACT's); None = the checkpoint's.
        instruction_snap: replace instructions that are not training instructions by the nearest one in the
            pretrained encoder's sentence space (``model.instruction_snap``); None = the checkpoint's.
    """

    env: str | None = None
    episodes: int = DEFAULT_EPISODES
    workers: int = -1  # -1: replaced by default_workers() in __post_init__
    num_envs: int | None = None
    seed_start: int = DEFAULT_SEED_START
    max_steps: int = 0
    paraphrases: str | None = None
    robustness: bool = False
    conditions: str | None = None
    generalisation: bool = False
    offline: bool | None = None
    offline_samples: int = DEFAULT_OFFLINE_SAMPLES
    balance: bool = True
    balance_samples: int = DEFAULT_BALANCE_SAMPLES
    gifs: int = 2
    out: str | None = None
    device: str = "cpu"
    action_selection: str | None = None
    sample_temperature: float | None = None
    flow_steps: int | None = None
    diffusion_steps: int | None = None
    execute: int | None = None
    ensemble: bool | None = None
    instruction_snap: bool | None = None

    def __post_init__(self) -> None:
        if self.workers == -1:
            object.__setattr__(self, "workers", default_workers())
        for name, (ok, expected) in _CHECKS.items():
            value = getattr(self, name)
            if not ok(value):
                raise EvalOptionsError(name, expected, value)

    @classmethod
    def check(cls, values: Mapping[str, Any], label: Callable[[str], str] = lambda n: n) -> None:
        """Validate only the given ``values`` (None = not given); errors name the option via ``label(name)``.

        Lets a caller refuse a bad command-line value before loading a checkpoint.
        """
        names = {f.name for f in fields(cls)}
        for name, value in values.items():
            if name not in names:
                raise EvalOptionsError("option", f"one of {sorted(names)}", name)
            if value is not None and not _CHECKS[name][0](value):
                raise EvalOptionsError(label(name), _CHECKS[name][1], value)

    @classmethod
    def resolve(cls, given: Mapping[str, Any] | None = None, cfg: Any = None,
                label: Callable[[str], str] = lambda n: n) -> EvalOptions:  # fmt: skip
        """Options from the ``given`` values (None = not given), then ``cfg.eval``, then the defaults.

        ``cfg``: an ``ExperimentConfig`` (or None). ``label(name)`` names a given option in errors (the CLI passes
        ``--episodes``-style flags); a bad config value is named ``eval.<key>``.
        """
        given = {k: v for k, v in (given or {}).items() if v is not None}
        cls.check(given, label)
        values: dict[str, Any] = {}
        section = None
        if cfg is not None and hasattr(cfg, "eval"):
            section = cfg.eval  # an EvalConfig
        for name in CONFIG_KEYS:
            value = getattr(section, name, None)
            if name in given or value is None:
                continue
            if not _CHECKS[name][0](value):
                raise EvalOptionsError(f"eval.{name}", _CHECKS[name][1], value)
            values[name] = value
        values.update(given)
        return cls(**values)

    @property
    def env_max_steps(self) -> int | None:
        """The step cap for ``make_env`` / the rollouts (None = each env's own)."""
        return self.max_steps or None


def apply_acting(policy: Any, opts: EvalOptions, label: Callable[[str], str] = lambda n: n) -> None:
    """Set the acting-time options of ``opts`` that were given on ``policy.cfg`` (checked against the policy: a
    sampler's step count only for its head, ``execute`` within the chunk, ensembling only without a memory); a
    policy without a config is left as it is. ``eval.json`` records the settings used under ``acting``."""
    pcfg = getattr(policy, "cfg", None)
    if pcfg is None:
        return
    head = getattr(policy, "head_kind", None)
    for name, kind in (("flow_steps", "flow"), ("diffusion_steps", "diffusion")):
        if getattr(opts, name) is not None and head != kind:
            raise EvalError(f"{label(name)}: only for a policy with model.head {kind!r}; this checkpoint's head is "
                            f"{head!r}")
    chunk = int(getattr(pcfg, "chunk", 1))
    if opts.execute is not None and opts.execute > chunk:
        raise EvalOptionsError(label("execute"), f"an integer in [0, model.chunk={chunk}]", opts.execute)
    if opts.ensemble and getattr(pcfg, "memory", "none") != "none":
        raise EvalError(f"{label('ensemble')}: temporal ensembling needs a policy without a memory; this "
                        f"checkpoint's model.memory is {pcfg.memory!r}")
    if opts.instruction_snap:
        if getattr(pcfg, "language", None) != "pretrained":
            raise EvalError(f"{label('instruction_snap')}: only for a policy with model.language 'pretrained'; this "
                            f"checkpoint's is {getattr(pcfg, 'language', None)!r}")
        if not getattr(getattr(policy, "spec", None), "instructions", None):
            raise EvalError(f"{label('instruction_snap')}: this checkpoint records no training instructions "
                            "(spec.instructions; trained before they were recorded): retrain it to use snapping")
    for name in ACTING_KEYS:
        value = getattr(opts, name)
        if value is not None and hasattr(pcfg, name):
            setattr(pcfg, name, float(value) if name == "sample_temperature" else value)
