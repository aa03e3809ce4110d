"""Offline evaluation on a held-out split of demonstrations: action accuracy / error, observation-instruction
retrieval, ITM accuracy, modality balance, per-subgroup accuracy (bias) and offline robustness rows.

Everything here runs a :class:`~vlafoundry.models.VLAPolicy` on batches of a
:class:`~vlafoundry.data.DemoDataset` (normally ``split="val"`` with the checkpoint's ``val_fraction`` and
``split_seed``) in eval mode. Samples are visited in a fixed permutation drawn from ``seed`` (so batches mix
episodes and the ITM head sees hard negatives from several instructions); torch's global RNG is forked and seeded,
and hard negatives use a seeded ``torch.Generator``, so every function is deterministic for a fixed ``seed``.

Measures (one *action entry* = one valid step of an action chunk; ``action_mask`` False entries are skipped):

* ``action_acc`` (discrete heads): fraction of entries whose greedy action equals the expert's;
  ``action_l1`` (continuous / binned heads): mean over entries of the mean absolute error over action dimensions.
* retrieval recall@k both ways between the policy's observation and instruction embeddings
  (:meth:`VLAPolicy.embed`): every step with the same ``instruction_id`` counts as a positive
  (:meth:`MultimodalEvaluator.evaluate_alignment` with ``pair_ids``).
  Queries that share an instruction share a positive set, so with many steps per instruction chance level is
  high (with the instruction removed, every instruction query is the same vector and ``instr_to_obs_r@1`` becomes
  the share of samples whose instruction is that of the single top-ranked observation).
* ITM accuracy: the policy's image-text-matching head on each sample's matched pair and on hard negatives mined
  within the batch from the embedding similarities (as in training). Only meaningful for checkpoints trained with an
  ITM objective (alignment pretraining or ``loss.itm > 0``); an untrained head scores about chance.
* :func:`modality_balance` (ablation and gradient shares per modality), :func:`offline_bias` (accuracy per subgroup
  with Wilson intervals and the worst-to-best gap) and :func:`offline_robustness_fn` (offline columns for
  :func:`~vlafoundry.eval.robustness.run_robustness`).

Layout: the pass over the split (sample order, batches, corruption, :class:`OfflineOutputs`) is
:mod:`vlafoundry.eval.offline_pass`, the per-batch modality-balance measures :mod:`vlafoundry.eval.offline_balance`;
this module computes the metrics from them and drives the combined pass (every name is importable from here as
before).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from vlafoundry.eval.evaluator import MultimodalEvaluator
from vlafoundry.eval.offline_balance import (  # noqa: F401 (re-exported)
    _ENC_KEYS,
    _balance_batch,
    _balance_summary,
    _BalanceSums,
    _task_score,
)
from vlafoundry.eval.offline_pass import (  # noqa: F401 (re-exported)
    OfflineOutputs,
    _bar,
    _batches,
    _Collector,
    _entry_scores,
    _EvalMode,
    _itm_counts,
    _sample_order,
    collect_offline_outputs,
    corrupt_batch,
    policy_modalities,
)
from vlafoundry.eval.rollout import ObservationCorruption
from vlafoundry.eval.stats import wilson_interval
from vlafoundry.eval.subgroups import mission_subgroups

__all__ = [
    "ROBUSTNESS_KEYS",
    "OfflineOutputs",
    "collect_offline_outputs",
    "corrupt_batch",
    "metrics_from_outputs",
    "modality_balance",
    "offline_bias",
    "offline_evaluation",
    "offline_metrics",
    "offline_robustness_fn",
    "policy_modalities",
    "subgroup_keys",
]

TOP_K: tuple[int, ...] = (1, 5, 10)
# Policy encoder outputs (VLAPolicy.encode keys) of each modality: (tokens, mask).
# Short names of the metrics added to robustness rows by offline_robustness_fn.
ROBUSTNESS_KEYS: tuple[str, ...] = ("action_acc", "action_l1", "obs_to_instr_r@1", "instr_to_obs_r@1", "itm_acc")


# ---------------------------------------------------------------------------------------------------- metrics


def metrics_from_outputs(out: OfflineOutputs, top_k: Sequence[int] = TOP_K) -> dict[str, float]:
    """The offline metric dict (see :func:`offline_metrics`) from collected outputs."""
    res: dict[str, float] = {"samples": float(len(out.instructions)), "action_entries": float(len(out.entry_error))}
    if out.discrete:
        res["action_acc"] = float(out.entry_correct.mean()) if len(out.entry_correct) else float("nan")
    else:
        res["action_l1"] = float(out.entry_error.mean()) if len(out.entry_error) else float("nan")
    if out.obs_emb is not None:
        al = MultimodalEvaluator().evaluate_alignment(out.obs_emb, out.instr_emb, top_k=tuple(top_k),
                                                      pair_ids=out.pair_ids)  # fmt: skip
        for k, v in al.items():
            res[k.replace("image_to_text", "obs_to_instr").replace("text_to_image", "instr_to_obs")] = v
        res["distinct_instructions"] = float(len(torch.unique(out.pair_ids)))
        c = out.itm
        if c["matched"]:
            res["itm_acc"] = (c["matched_correct"] + c["negative_correct"]) / (c["matched"] + c["negative"])
            res["itm_acc_matched"] = c["matched_correct"] / c["matched"]
            if c["negative"]:
                res["itm_acc_negative"] = c["negative_correct"] / c["negative"]
                res["itm_balanced_acc"] = 0.5 * (res["itm_acc_matched"] + res["itm_acc_negative"])
    return res


def offline_metrics(
    policy: Any,
    dataset: Any,
    batch_size: int = 256,
    max_samples: int | None = None,
    corruption: ObservationCorruption | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Offline metrics of ``policy`` on ``dataset`` (the held-out split), optionally under a ``corruption``.

    Returns floats: ``samples``, ``action_entries``; ``action_acc`` (discrete head) or ``action_l1`` (continuous /
    binned); when the policy has language and an observation modality also ``obs_to_instr_r@{1,5,10}``,
    ``instr_to_obs_r@{1,5,10}``, ``obs_to_instr_median_rank``, ``instr_to_obs_median_rank``,
    ``distinct_instructions``, ``itm_acc`` (over matched pairs and hard negatives, as the training metric),
    ``itm_acc_matched``, ``itm_acc_negative`` and ``itm_balanced_acc``. ITM numbers are meaningful only for a
    checkpoint trained with an ITM objective. Deterministic for a fixed ``seed``.
    """
    return metrics_from_outputs(collect_offline_outputs(policy, dataset, batch_size, max_samples, corruption, seed))


def offline_robustness_fn(
    policy: Any,
    dataset: Any,
    batch_size: int = 256,
    max_samples: int | None = None,
    seed: int = 0,
    keys: Sequence[str] = ROBUSTNESS_KEYS,
) -> Callable[[ObservationCorruption], dict[str, float]]:
    """``offline_fn`` for :func:`~vlafoundry.eval.robustness.run_robustness`: the offline metrics of one condition,
    restricted to ``keys`` (those that exist for this policy) and prefixed ``offline `` for the table."""

    def fn(corruption: ObservationCorruption) -> dict[str, float]:
        m = offline_metrics(policy, dataset, batch_size, max_samples, corruption, seed)
        return {f"offline {k}": m[k] for k in keys if k in m}

    return fn


# ---------------------------------------------------------------------------------------------------- balance


def modality_balance(
    policy: Any,
    dataset: Any,
    batch_size: int = 256,
    max_samples: int | None = 4096,
    loss_cfg: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """How much the policy's actions depend on each modality, with the evaluator's two measures.

    Per batch, the encoders run once; the fusion (and memory) and action head then run on the modality token
    features (the encoder outputs fed to the fusion), removing a modality by marking all its tokens absent (what
    ``<name>_present=False`` does inside the policy). The measures are those of
    :meth:`MultimodalEvaluator.assess_modality_balance`, summed exactly over batches:

    * **ablation**: the held-out action metric with every modality vs with one removed. ``ablation_drop[m]`` is the
      drop in ``action_acc`` (discrete) or the rise in ``action_l1`` (continuous) caused by removing m (positive =
      the policy needs m); ``ablation_share[m] = |drop_m| / sum_j |drop_j|``. The same on the behaviour-cloning
      loss: ``loss_ablated``, ``loss_ablation_share``.
    * **gradient**: ``gradient_norm[m]`` = L2 norm of d(BC loss averaged over the split)/d(token features of m),
      over all its tokens and samples; ``gradient_share`` normalises these to sum to 1, and
      ``gradient_x_input_share`` uses ``||x * grad||`` (invariant to rescaling a modality's features).

    Shares are over the modalities the policy encodes (``modalities``); ``dominant_modality`` is the argmax of
    ``ablation_share`` (of ``loss_ablation_share`` when no removal changes the action metric). Cost per batch:
    the encoders once, one forward and backward of fusion + heads with every modality, one forward without each
    modality. :func:`offline_evaluation` gets the same numbers within its pass of the offline metrics.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples: expected >= 1 or None, got {max_samples}")
    _, balance = offline_evaluation(policy, dataset, batch_size=batch_size, max_samples=max_samples,
                                    balance_samples=max_samples, loss_cfg=loss_cfg, seed=seed,
                                    outputs=False)  # fmt: skip
    assert balance is not None
    return balance


def offline_evaluation(
    policy: Any,
    dataset: Any,
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
    balance_samples: int | None = 4096,
    loss_cfg: Any = None,
    seed: int = 0,
    outputs: bool = True,
    progress: str | None = None,
) -> tuple[OfflineOutputs | None, dict[str, Any] | None]:
    """The offline outputs (:func:`collect_offline_outputs`) and modality balance (:func:`modality_balance`) from
    ONE pass over the held-out split: the balance reuses the encoders and the full-input forward of the outputs.

    The balance covers the first ``balance_samples`` items of the visiting order (0: no balance; None: all), which
    are the first items the outputs see too; the outputs cover the first ``max_samples`` (``outputs=False``: only
    the balance's items, no outputs). Returns ``(outputs or None, balance or None)``.
    """
    from vlafoundry.models import LossConfig

    if balance_samples is not None and balance_samples < 0:
        raise ValueError(f"balance_samples: expected >= 0 or None, got {balance_samples}")
    lc = loss_cfg or LossConfig()
    order = _sample_order(len(dataset), max_samples, seed)
    n_bal = len(order) if balance_samples is None else min(balance_samples, len(order))
    visit = order if outputs else order[:n_bal]
    mods = policy_modalities(policy)
    acc = _BalanceSums(mods) if n_bal else None
    col = _Collector(policy, seed) if outputs else None
    with _EvalMode(policy, seed), _bar(len(visit), progress) as bar:
        # the balance's items first, in batches of their own (so a batch never mixes the two)
        for part, in_balance in ((visit[:n_bal], acc is not None), (visit[n_bal:], False)):
            for k, raw in _batches(dataset, part, batch_size):
                b = policy.prepare(raw)
                with torch.no_grad():
                    enc = policy.encode(b)
                if in_balance:
                    out = _balance_batch(policy, b, enc, mods, lc, acc)
                else:
                    with torch.no_grad():
                        out = policy.action_outputs(policy.features(enc))
                if col is not None:
                    col.add(b, enc, out)
                bar.update(k)
    balance = None
    if acc is not None:
        if acc.entries == 0:
            raise ValueError("dataset: no valid action entries in the selected samples")
        balance = _balance_summary(acc, policy.head_kind == "discrete", n_bal)
        if "image" in mods:  # what the image is, for the report's labels: a symbolic grid or RGB pixels
            vision = getattr(getattr(policy, "cfg", None), "vision", None)
            balance["image_input"] = "symbolic" if vision == "grid" else "rgb"
    return (col.result(order) if col is not None else None), balance


# ---------------------------------------------------------------------------------------------------- bias


def subgroup_keys(env_name: str) -> tuple[str, ...]:
    """Subgroup labellings for an environment, from its family (BabyAI missions parse into template / object /
    colour and task; Meta-World groups by task)."""
    from vlafoundry.envs import get_family

    return tuple(get_family(env_name).subgroup_keys)


def offline_bias(
    policy: Any,
    dataset: Any,
    batch_size: int = 256,
    max_samples: int | None = None,
    keys: Sequence[str] | None = None,
    tolerance: float = 0.1,
    seed: int = 0,
    outputs: OfflineOutputs | None = None,
) -> dict[str, Any]:
    """Held-out action accuracy per subgroup with 95% Wilson intervals and the worst-to-best gap.

    Groups come from :func:`~vlafoundry.eval.subgroups.mission_subgroups` of each sample's instruction and its
    task name (``keys`` default: :func:`subgroup_keys` of the dataset's env). Discrete heads: an action entry is
    correct when it equals the expert's; continuous heads: when its mean absolute error is at most ``tolerance``
    (per-group ``mean_l1`` is reported too). Uses :meth:`MultimodalEvaluator.detect_multimodal_bias`.

    Returns ``{"measure", "entries", "by": {key: {"groups": [{"group", "n", "correct", "accuracy", "ci_low",
    "ci_high"[, "mean_l1"]}], "worst", "best", "gap"}}}`` with groups sorted by name. ``outputs`` reuses a pass of
    :func:`collect_offline_outputs`.
    """
    out = outputs if outputs is not None else collect_offline_outputs(policy, dataset, batch_size, max_samples,
                                                                        seed=seed)  # fmt: skip
    keys = tuple(keys) if keys is not None else subgroup_keys(getattr(dataset, "env_name", ""))
    tasks = list(getattr(dataset, "tasks", []))
    labels = [
        mission_subgroups(text, tasks[t] if 0 <= t < len(tasks) else str(t))
        for text, t in zip(out.instructions, out.task_ids.tolist(), strict=True)
    ]
    correct = out.entry_correct if out.discrete else out.entry_error <= tolerance
    if len(correct) == 0:
        raise ValueError("dataset: no valid action entries in the selected samples")
    ev = MultimodalEvaluator()
    by: dict[str, Any] = {}
    for key in keys:
        groups = [labels[s][key] for s in out.entry_sample.tolist()]
        res = ev.detect_multimodal_bias(correct.tolist(), [True] * len(correct), groups)
        rows = []
        for name in sorted(res["per_group"]):
            g = res["per_group"][name]
            row = {"group": name, "n": g["n"], "correct": int(round(g["accuracy"] * g["n"])),
                   "accuracy": g["accuracy"], "ci_low": float(g["ci"][0]), "ci_high": float(g["ci"][1])}  # fmt: skip
            if not out.discrete:
                sel = np.asarray([grp == name for grp in groups])
                row["mean_l1"] = float(out.entry_error[sel].mean())
            rows.append(row)
        by[key] = {"groups": rows, "worst": res["worst"], "best": res["best"], "gap": float(res["gap"])}
    measure = "action accuracy" if out.discrete else f"fraction of actions with mean |error| <= {tolerance:g}"
    low, high = wilson_interval(int(correct.sum()), len(correct))
    return {"measure": measure, "entries": int(len(correct)), "overall": float(correct.mean()),
            "overall_ci": [low, high], "by": by}  # fmt: skip
