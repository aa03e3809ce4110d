"""Missing-modality and noise robustness: the same closed-loop evaluation under corrupted observations.

Every condition runs the same episodes (same seeds) as the full-input row, so differences between rows are paired
comparisons. Rows report success with its Wilson interval, mean length and return, and ``delta_success`` against the
full-input row; an optional ``offline_fn(corruption) -> dict`` adds offline metrics (action accuracy, retrieval) for
the same corruption to each row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vlafoundry.eval.paraphrase import ParaphraseMap
from vlafoundry.eval.rollout import (
    DEFAULT_SEED_START,
    EvalResult,
    ObservationCorruption,
    VectorRollout,
    _as_names,
    evaluate_policy,
)


def default_conditions(
    has_image: bool = True,
    state_noise: float = 0.5,
    image_noise: float = 0.2,
    instruction_noise: float = 0.3,
) -> list[ObservationCorruption]:
    """Full input, each modality removed, and each modality noised (image conditions only if ``has_image``)."""
    conds = [ObservationCorruption(name="full input"), ObservationCorruption(remove=("instruction",))]
    if has_image:
        conds.append(ObservationCorruption(remove=("image",)))
    conds.append(ObservationCorruption(remove=("state",)))
    conds.append(ObservationCorruption(instruction_noise=instruction_noise))
    if has_image:
        conds.append(ObservationCorruption(image_noise=image_noise))
    conds.append(ObservationCorruption(state_noise=state_noise))
    return conds


def env_has_image(env_name: str, env_kwargs: Mapping[str, Any] | None = None) -> bool:
    """Whether ``env_name``'s observations carry an image (``spec.image_shape`` is not None)."""
    from vlafoundry.envs import make_env

    env = make_env(env_name, **dict(env_kwargs or {}))
    try:
        return env.spec.image_shape is not None
    finally:
        env.close()


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
    pass an open ``rollout`` to reuse its workers. ``reference``: a finished evaluation of the same episodes
    without corruption (e.g. the main closed-loop run); an identity condition takes its episodes instead of running
    them again when its settings (envs, episodes, seed start, paraphrases, step cap) match. ``progress``: show
    episodes done per condition.
    """
    names = _as_names(env)
    if conditions is None:
        conditions = default_conditions(has_image=env_has_image(names[0], env_kwargs))
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
