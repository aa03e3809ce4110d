"""Missing-modality, noise and image-corruption robustness: the same closed-loop evaluation under corrupted
observations.

Every condition runs the same episodes (same seeds) as the full-input row, so differences between rows are paired
comparisons. Rows report success with its Wilson interval, mean length and return, and ``delta_success`` against the
full-input row; an optional ``offline_fn(corruption) -> dict`` adds offline metrics (action accuracy, retrieval) for
the same corruption to each row.

Conditions are :class:`~vlafoundry.eval.rollout.ObservationCorruption` objects, or named in a string
(:func:`parse_conditions`, ``vlafoundry eval --conditions``): ``"image_occlusion=0.25,image_jitter=0.3"`` is two
rows, ``"no_state+image_shift=4"`` one row with both, ``"default"`` the default rows (:func:`default_conditions`).
Image rows exist only for a policy that reads an image, and the pixel rows (Gaussian noise, occlusion, colour
jitter, shift) only for one that reads RGB pixels (:func:`image_input`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vlafoundry.eval.corruption import MODALITIES, ObservationCorruption
from vlafoundry.eval.paraphrase import ParaphraseMap
from vlafoundry.eval.rollout import (
    DEFAULT_SEED_START,
    EvalResult,
    VectorRollout,
    _as_names,
    evaluate_policy,
)

#: Settings a condition string can name with a value (``key=value``), with their types.
CONDITION_KEYS: dict[str, type] = {
    "state_noise": float, "image_noise": float, "instruction_noise": float, "image_gaussian": float,
    "image_occlusion": float, "image_jitter": float, "image_shift": int,
}  # fmt: skip
#: The pixel rows of the default table (RGB policies only): Gaussian noise σ (fraction of 255), occluded area
#: fraction, colour jitter strength, view shift in pixels.
PIXEL_DEFAULTS: dict[str, float] = {"image_gaussian": 0.1, "image_occlusion": 0.25, "image_jitter": 0.3,
                                    "image_shift": 4}  # fmt: skip
CONDITIONS_SYNTAX = ("a comma list of conditions, each one or more settings joined by '+': no_image, no_state, "
                     "no_instruction, default, or key=value with key in " + ", ".join(CONDITION_KEYS))  # fmt: skip


def default_conditions(
    has_image: bool = True,
    state_noise: float = 0.5,
    image_noise: float = 0.2,
    instruction_noise: float = 0.3,
    pixels: bool = False,
) -> list[ObservationCorruption]:
    """Full input, each modality removed, and each modality noised (image conditions only if ``has_image``); with
    ``pixels`` (the policy reads RGB) also the :data:`PIXEL_DEFAULTS` rows."""
    conds = [ObservationCorruption(name="full input"), ObservationCorruption(remove=("instruction",))]
    if has_image:
        conds.append(ObservationCorruption(remove=("image",)))
    conds.append(ObservationCorruption(remove=("state",)))
    conds.append(ObservationCorruption(instruction_noise=instruction_noise))
    if has_image:
        conds.append(ObservationCorruption(image_noise=image_noise))
    conds.append(ObservationCorruption(state_noise=state_noise))
    if has_image and pixels:
        conds.extend(ObservationCorruption(**{k: v}) for k, v in PIXEL_DEFAULTS.items())
    return conds


def parse_conditions(text: str, has_image: bool = True, pixels: bool = True,
                     what: str = "conditions") -> list[ObservationCorruption]:  # fmt: skip
    """Conditions named in ``text`` (see the module docstring), the full-input row first, duplicates dropped.

    Raises ``ValueError`` starting with ``what`` for a malformed string, an unknown setting, a bad value, or an image
    condition the policy cannot take (``has_image`` False: any image row; ``pixels`` False: the pixel rows).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}: expected {CONDITIONS_SYNTAX}, got {text!r}")
    conds = [ObservationCorruption(name="full input")]
    for item in (part.strip() for part in text.split(",")):
        if item == "default":
            conds.extend(default_conditions(has_image, pixels=pixels))
            continue
        kwargs: dict[str, Any] = {"remove": []}
        for setting in (s.strip() for s in item.split("+")):
            key, eq, value = setting.partition("=")
            key = key.strip()
            if not eq and key.startswith("no_") and key[3:] in MODALITIES:
                kwargs["remove"].append(key[3:])
            elif eq and key in CONDITION_KEYS and key not in kwargs:
                try:
                    kwargs[key] = CONDITION_KEYS[key](value.strip())
                except ValueError:
                    raise ValueError(f"{what}: expected a {CONDITION_KEYS[key].__name__} for {key}, "
                                     f"got {value.strip()!r}") from None  # fmt: skip
            else:
                raise ValueError(f"{what}: expected {CONDITIONS_SYNTAX}, got {setting!r} in {text!r}")
        kwargs["remove"] = tuple(kwargs["remove"])
        try:
            cond = ObservationCorruption(**kwargs)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        touches_image = "image" in cond.remove or cond.image_noise or cond.pixels_only
        if touches_image and not has_image:
            raise ValueError(f"{what}: expected conditions without the image for a policy that reads none, "
                             f"got {item!r}")  # fmt: skip
        if cond.pixels_only and not pixels:
            raise ValueError(f"{what}: expected image_gaussian / image_occlusion / image_jitter / image_shift only "
                             f"for a policy that reads RGB pixels (this one reads a symbolic grid), got {item!r}")
        conds.append(cond)
    out: list[ObservationCorruption] = []
    for cond in conds:
        if not any(c.label == cond.label or (c.is_identity and cond.is_identity) for c in out):
            out.append(cond)
    return out


def env_image_shape(env_name: str, env_kwargs: Mapping[str, Any] | None = None) -> tuple[int, ...] | None:
    """``spec.image_shape`` of ``env_name``'s observations (None: no image)."""
    from vlafoundry.envs import make_env

    env = make_env(env_name, **dict(env_kwargs or {}))
    try:
        return env.spec.image_shape
    finally:
        env.close()


def env_has_image(env_name: str, env_kwargs: Mapping[str, Any] | None = None) -> bool:
    """Whether ``env_name``'s observations carry an image (``spec.image_shape`` is not None)."""
    return env_image_shape(env_name, env_kwargs) is not None


def image_input(policy: Any, env_name: str, env_kwargs: Mapping[str, Any] | None = None) -> str | None:
    """What image the policy reads on ``env_name``: None (none), ``"symbolic"`` (a grid of codes) or ``"rgb"``.

    None when the env has no image or the policy says it reads none (``policy.has_image`` False); else the policy's
    vision encoder decides (``cfg.vision``: ``grid`` -> symbolic, any other -> rgb), and for a policy without one
    the env's image mode (``env_kwargs["image"]``, ``"symbolic"`` when not given).
    """
    if getattr(policy, "has_image", True) is False or not env_has_image(env_name, env_kwargs):
        return None
    vision = getattr(getattr(policy, "cfg", None), "vision", None)
    if isinstance(vision, str) and vision != "none":
        return "symbolic" if vision == "grid" else "rgb"
    return "symbolic" if (env_kwargs or {}).get("image", "symbolic") == "symbolic" else "rgb"


def robustness_conditions(
    policy: Any,
    env_name: str,
    env_kwargs: Mapping[str, Any] | None = None,
    spec: str | None = None,
    what: str = "conditions",
) -> list[ObservationCorruption]:
    """The conditions for ``policy`` on ``env_name``: those named in ``spec`` (:func:`parse_conditions`), else the
    defaults, with image rows only for a policy that reads an image and pixel rows only for RGB."""
    kind = image_input(policy, env_name, env_kwargs)
    if spec is None:
        return default_conditions(has_image=kind is not None, pixels=kind == "rgb")
    conds = parse_conditions(spec, has_image=kind is not None, pixels=kind == "rgb", what=what)
    shape = env_image_shape(env_name, env_kwargs) if kind == "rgb" else None
    side = min(shape[-3:-1]) if shape is not None and len(shape) >= 3 else None
    for c in conds:
        if side is not None and c.image_shift >= side:
            raise ValueError(f"{what}: expected image_shift below the frame's side {side}, got {c.image_shift}")
    return conds


def run_robustness(
    policy: Any,
    env: str | Sequence[str],
    *,
    conditions: Sequence[ObservationCorruption] | None = None,
    episodes: int = 100,
    num_envs: int | None = None,
    workers: int = 0,
    seed_start: int = DEFAULT_SEED_START,
    training_seeds: Sequence[tuple[int, int]] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    paraphrases: ParaphraseMap | None = None,
    offline_fn: Callable[[ObservationCorruption], Mapping[str, float]] | None = None,
    max_steps: int | None = None,
    rollout: VectorRollout | None = None,
    reference: EvalResult | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One table row per condition (first row = the reference, normally full input).

    Returns rows ``{"condition", "episodes", "successes", "success_rate", "ci_low", "ci_high", "mean_length",
    "mean_return", "delta_success", **offline metrics}``. Workers are started once and reused for all conditions;
    pass an open ``rollout`` to reuse its workers. ``conditions`` default: :func:`robustness_conditions` (image rows
    only if the policy reads an image, pixel rows only if RGB). ``reference``: a finished evaluation of the same
    episodes without corruption (e.g. the main closed-loop run); an identity condition takes its episodes instead of
    running them again when its settings (envs, episodes, seed start, paraphrases, step cap) match. ``progress``:
    show episodes done per condition.
    """
    names = _as_names(env)
    if conditions is None:
        kwargs = rollout.env_kwargs if rollout is not None else env_kwargs
        conditions = robustness_conditions(policy, names[0], kwargs)
    if not conditions:
        raise ValueError("conditions: expected at least one condition, got an empty list")
    total = episodes * len(names)
    rows: list[dict[str, Any]] = []
    own = rollout is None
    pool = rollout if rollout is not None else VectorRollout(num_envs or min(64, total), workers, env_kwargs)
    try:
        for cond in conditions:
            if cond.is_identity and _same_episodes(reference, names, episodes, seed_start, training_seeds,
                                                   paraphrases, max_steps, pool.env_kwargs):  # fmt: skip
                res = reference
            else:
                res = evaluate_policy(
                    policy,
                    names,
                    episodes=episodes,
                    seed_start=seed_start,
                    training_seeds=training_seeds,
                    corruption=cond,
                    paraphrases=paraphrases,
                    rollout=pool,
                    max_steps=max_steps,
                    progress=f"robustness: {cond.label}" if progress else None,
                )
            s = res.summary
            row: dict[str, Any] = {"condition": cond.label, **{k: v for k, v in s.items() if k != "task"}}
            row.pop("paraphrased_fraction", None)
            if offline_fn is not None:
                row.update({k: float(v) for k, v in offline_fn(cond).items()})
            rows.append(row)
    finally:
        if own:
            pool.close()
    ref = rows[0]["success_rate"]
    for row in rows:
        row["delta_success"] = row["success_rate"] - ref
    return rows


def _same_episodes(reference: EvalResult | None, names: Sequence[str], episodes: int, seed_start: int,
                   training_seeds: Sequence[tuple[int, int]] | None, paraphrases: ParaphraseMap | None,
                   max_steps: int | None, env_kwargs: Mapping[str, Any]) -> bool:  # fmt: skip
    """Whether ``reference`` ran exactly the uncorrupted episodes these settings would run."""
    if reference is None:
        return False
    import warnings

    from vlafoundry.eval.rollout import resolve_seed_start

    cfg = reference.config
    with warnings.catch_warnings():  # the shift, if any, was reported when the reference ran
        warnings.simplefilter("ignore")
        start, _ = resolve_seed_start(seed_start, episodes, training_seeds)
    return (list(cfg.get("env", [])) == list(names) and cfg.get("episodes_per_task") == episodes
            and cfg.get("seed_start") == start and cfg.get("corruption") == ObservationCorruption().label
            and cfg.get("paraphrases") == (paraphrases.source if paraphrases is not None else None)
            and cfg.get("max_steps") == max_steps and cfg.get("env_kwargs") == dict(env_kwargs))  # fmt: skip
