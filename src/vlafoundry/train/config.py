"""Experiment configuration: data, model, objectives, optimisation; YAML presets shipped in the package."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vlafoundry.config import (
    ConfigError,
    apply_overrides,
    check_key,
    from_dict,
    load_yaml,
    override_keys,
    require,
    to_dict,
)
from vlafoundry.envs.spec import EVAL_SEED_BASE
from vlafoundry.data.env_cache import DEFAULT_ENV_CACHE
from vlafoundry.models.config import ModelConfig, PolicyConfig
from vlafoundry.models.objectives import LossConfig


@dataclass
class DataConfig:
    """Where demonstrations come from. ``path`` None: generated (and cached) under ``cache_dir``.

    ``action_noise`` > 0 generates recovery demonstrations (DART: noisy executed actions, the expert's labels;
    ``vlafoundry data generate --action-noise``). ``augment``: ``colour`` relabels object colours at random in every
    training batch, consistently in the grid and the instruction (BabyAI, symbolic images; see
    :class:`~vlafoundry.data.ColourPermutation`; with ``hold_out_pairs``, only permutations that relabel no
    instruction into a held-out pair); ``none``: the demonstrations as recorded. ``hold_out_pairs`` are kept out of
    the generated missions (``hold_out_scope: mission``) or out of the episodes altogether (``scene``: no level of
    the data holds one either; :mod:`vlafoundry.data.holdout`). ``instruction_variants`` (a shipped name such as
    ``metaworld`` or a paraphrase-format JSON file) replaces each training row's instruction, with probability
    ``instruction_variant_p``, by a variant of the same meaning (:mod:`vlafoundry.data.instruction_variants`).
    ``env_cache``: envs each generation process keeps built when ``vlafoundry train`` generates the data (least
    recently used closed first; 0: one per task, unbounded; :mod:`vlafoundry.data.env_cache`); the bytes do not
    depend on it. ``camera`` (a camera name
    or comma list), ``image_size`` (frame side in pixels) and ``proprio`` (``full`` | ``hand`` | ``auto``) shape
    camera observations of families that render them (Meta-World with ``image: rgb``; docs/data.md)."""

    env: str = "babyai/GoToLocal"
    path: str | None = None
    episodes: int = 1000
    seed: int = 0
    workers: int = 2
    image: str = "symbolic"
    val_fraction: float = 0.05
    cache_dir: str = "~/.cache/vlafoundry/datasets"
    action_noise: float = 0.0
    augment: str = "none"
    hold_out_pairs: list[str] = field(default_factory=list)
    hold_out_scope: str = "mission"
    instruction_variants: str | None = None
    instruction_variant_p: float = 0.5
    env_cache: int = DEFAULT_ENV_CACHE
    camera: str = "corner2"
    image_size: int = 64
    proprio: str = "auto"

    def __post_init__(self) -> None:
        from vlafoundry.envs import canonical_name

        try:  # an env list or suite file is stored as its canonical comma-separated names (no path to keep)
            self.env = canonical_name(self.env)
        except ValueError as exc:
            raise ConfigError(f"data.env: {exc}") from None
        require(self.episodes >= 1, "data.episodes", "an integer >= 1", self.episodes)
        require(self.seed >= 0, "data.seed", "an integer >= 0", self.seed)
        require(self.workers >= 1, "data.workers", "an integer >= 1", self.workers)
        require(self.image in ("symbolic", "rgb"), "data.image", "one of ['symbolic', 'rgb']", self.image)
        require(0.0 <= self.val_fraction < 1.0, "data.val_fraction", "a fraction in [0, 1)", self.val_fraction)
        require(self.action_noise >= 0 and math.isfinite(self.action_noise), "data.action_noise",
                "a finite number >= 0", self.action_noise)
        require(self.augment in ("none", "colour"), "data.augment", "one of ['none', 'colour']", self.augment)
        require(isinstance(self.camera, str) and all(c.strip() for c in self.camera.split(",")), "data.camera",
                "a camera name or a comma-separated list of names", self.camera)
        require(isinstance(self.image_size, int) and 8 <= self.image_size <= 1024, "data.image_size",
                "an integer in [8, 1024]", self.image_size)
        require(self.proprio in ("auto", "full", "hand"), "data.proprio", "one of ['auto', 'full', 'hand']",
                self.proprio)
        from vlafoundry.data.env_cache import check_env_cache
        from vlafoundry.data.holdout import check_hold_out_scope, parse_hold_out_pairs

        try:  # the generator's own checks, reported under data.*
            # "colour object" pairs no training mission names (held-out compositions), and what they are kept out of
            self.hold_out_pairs = list(parse_hold_out_pairs(self.hold_out_pairs))
            check_hold_out_scope(self.hold_out_scope)
            check_env_cache(self.env_cache)
        except ValueError as exc:
            raise ConfigError(f"data.{exc}") from None
        require(0.0 <= self.instruction_variant_p <= 1.0, "data.instruction_variant_p", "a probability in [0, 1]",
                self.instruction_variant_p)
        require(self.instruction_variants is None or (isinstance(self.instruction_variants, str)
                                                      and self.instruction_variants.strip() != ""),
                "data.instruction_variants", "null, a shipped name or a JSON file path", self.instruction_variants)
        # with data.augment colour, the permutations are drawn among those that name no held-out pair
        # (vlafoundry.envs.augment.ColourPermutation, hold_out_pairs)
        from vlafoundry.envs import get_family

        try:
            get_family(self.env).validate_data(self)
        except ValueError as exc:  # the family names the key; keep the config error type
            raise ConfigError(str(exc)) from None

    def dataset_dir(self) -> Path:
        if self.path:
            return Path(self.path).expanduser()
        from vlafoundry.envs import env_slug

        slug = env_slug(self.env)  # an env list: a short hashed slug
        noise = f"-dart{self.action_noise:g}" if self.action_noise > 0 else ""
        held = ("-ho-" + "+".join(p.replace(" ", "_") for p in self.hold_out_pairs)) if self.hold_out_pairs else ""
        held += "-scene" if held and self.hold_out_scope == "scene" else ""
        view = (f"-cam{self.camera.replace(',', '+')}" if self.camera != "corner2" else "") \
            + (f"-px{self.image_size}" if self.image_size != 64 else "") \
            + (f"-p{self.proprio}" if self.proprio != "auto" else "")
        return Path(self.cache_dir).expanduser() / \
            f"{slug}-{self.image}{view}-n{self.episodes}-s{self.seed}{noise}{held}"


@dataclass
class OptimConfig:
    """One training phase: AdamW (decoupled weight decay), linear warm-up then cosine decay."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", "an integer >= 1", self.steps)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        require(self.lr > 0, "lr", "a learning rate > 0", self.lr)
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a number in [0, 1]", self.min_lr_ratio)
        require(self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        require(self.warmup_steps >= 0, "warmup_steps", "an integer >= 0", self.warmup_steps)
        require(self.grad_clip >= 0, "grad_clip", "a number >= 0 (0 disables clipping)", self.grad_clip)
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)",
                self.betas)


@dataclass
class TrainConfig(OptimConfig):
    """The behaviour-cloning phase plus everything about running it."""

    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    threads: int = 0
    eval_every: int = 250
    val_batches: int = 8
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    early_stopping_patience: int = 0
    check_finite: bool = False
    progress: bool = True
    # Further cosine cycles after the first (``steps``/``warmup_steps``): one per entry, of that many steps with
    # ``restart_warmup_steps`` of warm-up, each a fresh AdamW started from the previous cycle's weights -- exactly
    # ``vlafoundry train --init-from PREVIOUS --train.steps N --train.warmup_steps W`` run once per entry.
    restarts: tuple[int, ...] = ()
    restart_warmup_steps: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "train.device",
                "'auto', 'cpu', 'cuda[:N]' or 'mps'", self.device)
        require(self.precision in ("auto", "fp32", "bf16"), "train.precision", "one of ['auto', 'fp32', 'bf16']",
                self.precision)
        for k in ("eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "val_batches"):
            require(getattr(self, k) >= 1, f"train.{k}", "an integer >= 1", getattr(self, k))
        require(self.early_stopping_patience >= 0, "train.early_stopping_patience", "an integer >= 0",
                self.early_stopping_patience)
        require(self.threads >= 0, "train.threads", "an integer >= 0 (0 = torch default)", self.threads)
        require(all(n >= 1 for n in self.restarts), "train.restarts", "a list of step counts >= 1 (one per extra "
                "cosine cycle)", self.restarts)
        require(self.restart_warmup_steps >= 0, "train.restart_warmup_steps", "an integer >= 0",
                self.restart_warmup_steps)


@dataclass
class PretrainConfig(OptimConfig):
    """The alignment-pretraining phase: its own schedule and objective weights (bc is always 0 here)."""

    steps: int = 300
    lr: float = 1e-3
    warmup_steps: int = 30
    loss: LossConfig = field(default_factory=lambda: LossConfig(bc=0.0, contrastive=1.0, itm=0.5, mlm=0.5, mrm=0.5))

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.loss.bc == 0.0, "pretrain.loss.bc", "0 (pretraining does not clone actions)", self.loss.bc)


@dataclass
class EvalConfig:
    """Closed-loop evaluation settings used after training (quickstart) and as ``vlafoundry eval`` defaults (a
    command-line option wins over them). ``seed_start``: the first evaluation seed (episode i of a task uses
    ``seed_start + i``; shifted past the training seeds if they overlap). ``workers``: env worker processes (0 =
    in-process). ``max_steps``: the episode step cap, passed to the envs themselves (0 = each env's own limit).
    """

    episodes: int = 500
    seed_start: int = EVAL_SEED_BASE
    workers: int = 2
    max_steps: int = 0

    def __post_init__(self) -> None:
        require(self.episodes >= 1, "eval.episodes", "an integer >= 1", self.episodes)
        require(self.seed_start >= 0, "eval.seed_start", "an integer >= 0", self.seed_start)
        require(self.workers >= 0, "eval.workers", "an integer >= 0", self.workers)
        require(self.max_steps >= 0, "eval.max_steps", "an integer >= 0 (0 = the env's own limit)", self.max_steps)


@dataclass
class ExperimentConfig:
    """Everything a run needs; saved (resolved) next to every checkpoint."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=PolicyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def list_presets() -> list[str]:
    files = resources.files("vlafoundry") / "presets"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def preset_dict(name: str) -> dict[str, Any]:
    """The raw dict of a shipped preset (``babyai-gotolocal``) or of a YAML file path."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return load_yaml(name)
    available = list_presets()
    if name not in available:
        raise ConfigError(f"unknown preset {name!r}; available presets: {available}")
    with resources.as_file(resources.files("vlafoundry") / "presets" / f"{name}.yaml") as p:
        return load_yaml(p)


def load_config(preset: str | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> ExperimentConfig:
    """Preset (or ``base`` dict) + dotted overrides -> validated :class:`ExperimentConfig`."""
    data: dict[str, Any] = dict(base or {})
    if preset:
        data = preset_dict(preset)
    if overrides:
        data = apply_overrides(data, overrides)
        for key in override_keys(overrides):
            check_key(ExperimentConfig, key, data)
    return from_dict(ExperimentConfig, data)


# ------------------------------------------------------------------------------------ the dataset's own metadata
#: ``data.*`` keys a dataset's ``vlafoundry.json`` answers for: what was generated (env, episodes, seed, image mode,
#: DART noise, cameras, frame size, proprioception). With ``data.path`` set they come from the dataset, whatever the
#: preset says.
DATASET_KEYS = ("env", "episodes", "seed", "image", "action_noise", "camera", "image_size", "proprio",
                "hold_out_scope")


def dataset_facts(meta: dict[str, Any]) -> dict[str, Any]:
    """The :data:`DATASET_KEYS` values recorded in a dataset's ``vlafoundry.json`` (those it records)."""
    env, gen, counts = meta.get("env") or {}, meta.get("generation") or {}, meta.get("counts") or {}
    facts: dict[str, Any] = {}
    if env.get("name"):
        facts["env"] = str(env["name"])
    if counts.get("episodes") is not None:
        facts["episodes"] = int(counts["episodes"])
    if gen.get("seed") is not None:
        facts["seed"] = int(gen["seed"])
    if env.get("image"):  # None for state-only datasets (Meta-World): the config's value stands
        facts["image"] = str(env["image"])
    if gen.get("action_noise") is not None:
        facts["action_noise"] = float(gen["action_noise"])
    # datasets since camera observations (camera, image_size, proprio) and held-out scopes (hold_out_scope)
    for key, kind in (("camera", str), ("image_size", int), ("proprio", str), ("hold_out_scope", str)):
        if gen.get(key) is not None:
            facts[key] = kind(gen[key])
    return facts


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "env":
        try:
            from vlafoundry.envs.registry import canonical_name

            return canonical_name(str(a)) == canonical_name(str(b))
        except ValueError:
            return a == b
    return a == b


def apply_dataset_metadata(cfg: ExperimentConfig, root: str | Path, explicit: tuple[str, ...] | list[str] = ()
                           ) -> str | None:
    """Make ``cfg.data`` say what the dataset at ``root`` holds (its ``vlafoundry.json``), in place.

    ``explicit``: the dotted keys the user set on the command line (``data.env``); one of them contradicting the
    dataset is a :class:`ConfigError` naming both values. Returns a one-line note listing the values that changed
    (``None`` when the config already agreed)."""
    from vlafoundry.data.format import META_FILE
    from vlafoundry.data.source import dataset_metadata

    root = Path(root)
    try:
        meta = dataset_metadata(root)  # vlafoundry.json, or what a LeRobot dataset's meta/ says in its terms
    except (OSError, ValueError):
        meta = None
    if meta is None:
        return None  # not a dataset (yet): ensure_dataset / DemoDataset say so with the path
    if "data.env" in explicit and not (meta.get("env") or {}).get("name") and meta.get("format") == "lerobot v3.0":
        _check_env_against_foreign_data(cfg.data.env, root)
    facts = dataset_facts(meta)
    changed: dict[str, Any] = {}
    notes = []
    for key, value in facts.items():
        current = getattr(cfg.data, key)
        if _same(key, current, value):
            continue
        if f"data.{key}" in explicit:
            raise ConfigError(f"data.{key}: the dataset {root} holds {value!r} (its {META_FILE}), got {current!r} "
                              f"from --data.{key}; drop --data.{key} (the dataset's value is used) or pass a dataset "
                              f"generated with data.{key}={current!r}")
        changed[key] = value
        notes.append(f"data.{key} {current!r} -> {value!r}")
    if not changed:
        return None
    cfg.data = dataclasses.replace(cfg.data, **changed)
    return f"note: the dataset {root} sets {', '.join(notes)} (from its {META_FILE}; the preset said otherwise)"


def _check_env_against_foreign_data(env: str, root: Path) -> None:
    """``--data.env`` on a LeRobot dataset that records no env: its spaces must be the data's (state dim, action
    type and width), else a :class:`ConfigError` naming both, before anything is trained."""
    from vlafoundry.data.lerobot import load_info
    from vlafoundry.data.source import lerobot_metadata

    try:
        lerobot_metadata(load_info(root), env)
    except ValueError as exc:
        raise ConfigError(f"data.env: {exc}; pass the vlafoundry env whose spaces the data has") from None


# ------------------------------------------------------------------------------------ resuming a run
#: ``data.*`` keys that define the training data a checkpoint was trained on (and its split)
DATA_IDENTITY_KEYS = (*DATASET_KEYS, "val_fraction")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(prefix + key, old value, new value)`` for every flattened key where two config dataclasses differ, sorted."""
    a, b = flatten(to_dict(old)), flatten(to_dict(new))
    return [(prefix + k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def resume_changes(saved: ExperimentConfig, requested: ExperimentConfig, phase: str = "train"
                   ) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """Compare the config a checkpoint was written with and the one a resume asks for.

    Returns ``(refused, applied)``, each a list of ``(key, old, new)``. Refused: the architecture (``model.*``),
    the data the checkpoint was trained on (:data:`DATA_IDENTITY_KEYS`) and the phase's contrastive temperature
    (a parameter of the model, restored from the checkpoint). Everything else (``train.lr``, ``train.steps``, ...)
    takes effect from the resumed step."""
    loss = "pretrain.loss." if phase == "pretrain" else "loss."
    frozen = {f"data.{k}" for k in DATA_IDENTITY_KEYS} | {loss + "temperature", loss + "learnable_temperature"}
    refused, applied = [], []
    for change in config_changes(saved, requested):
        key = change[0]
        (refused if key.startswith("model.") or key in frozen else applied).append(change)
    return refused, applied


#: ``model.*`` keys that change how a policy trains or acts, not its parameters: a run that starts ``--init-from`` a
#: checkpoint takes them from its own config; every other model key comes from the checkpoint.
MODEL_RUNTIME_KEYS = ("image_shift", "grounding_dropout", "instruction_snap", "action_selection", "sample_temperature",
                      "execute", "ensemble", "ensemble_decay", "flow_steps", "diffusion_steps")


def init_from_changes(checkpoint: Any, requested: Any) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """``--init-from``: compare the checkpoint's model config with the run's. Returns ``(kept, applied)``, each a
    list of ``(key, checkpoint value, requested value)``: ``applied``, the :data:`MODEL_RUNTIME_KEYS` the run sets
    otherwise (they take effect); ``kept``, architecture keys the run asks to change, which keep the checkpoint's
    value (its weights were trained with it)."""
    kept, applied = [], []
    for change in config_changes(checkpoint, requested, prefix="model."):
        (applied if change[0][len("model."):] in MODEL_RUNTIME_KEYS else kept).append(change)
    return kept, applied


def format_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)


def config_from_json_dict(data: dict[str, Any]) -> ExperimentConfig:
    return from_dict(ExperimentConfig, data)


__all__ = [
    "DATASET_KEYS",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LossConfig",
    "OptimConfig",
    "PretrainConfig",
    "TrainConfig",
    "apply_dataset_metadata",
    "config_changes",
    "config_from_json_dict",
    "dataset_facts",
    "format_changes",
    "init_from_changes",
    "list_presets",
    "load_config",
    "preset_dict",
    "resume_changes",
    "to_dict",
]
