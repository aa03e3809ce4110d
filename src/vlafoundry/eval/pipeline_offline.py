"""The offline stage of the evaluation pipeline (:mod:`vlafoundry.eval.pipeline`): its plan (items per batch, in
all, for the modality balance), the one pass over the held-out split with every offline measure (a policy with the
evaluation hooks, :data:`EVAL_HOOKS`) or the metrics of the policy's own ``forward`` (a policy with only the
contract), and whether the ITM accuracy is shown (:func:`itm_verdict`). Importable from
:mod:`vlafoundry.eval.pipeline` as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlafoundry.eval.options import EvalOptions
from vlafoundry.eval.pipeline_inputs import Log, _cfg_get

OFFLINE_BATCH_STEPS = 1024  # held-out steps per offline batch (whole episodes for a memory policy: about this many)
_ITM_KEYS = ("itm_acc", "itm_acc_matched", "itm_acc_negative", "itm_balanced_acc")


def itm_verdict(metrics: Mapping[str, float], cfg: Any) -> tuple[bool, str | None]:
    """Whether to show the ITM accuracy, and the caveat that goes with it (report and terminal alike).

    * no ITM metrics: ``(False, None)``;
    * the head gives the same answer for every pair (an untrained head answers "no match", scoring the share of
      negatives): ``(False, note)`` -- the figure is omitted, it stays in ``eval.json``;
    * trained in this phase (``loss.itm > 0``): ``(True, None)``;
    * otherwise (only alignment pretraining may have trained it): ``(True, caveat)``.
    """
    if "itm_acc" not in metrics:
        return False, None
    loss_itm = float(_cfg_get(cfg, "loss", "itm", default=0.0))
    pre_itm = float(_cfg_get(cfg, "pretrain", "loss", "itm", default=0.0))
    where = (f"this config: loss.itm = {loss_itm:g}, pretrain.loss.itm = {pre_itm:g}, the latter only if alignment "
             "pretraining ran")  # fmt: skip
    matched, negative = metrics.get("itm_acc_matched"), metrics.get("itm_acc_negative")
    if matched is not None and negative is not None and {matched, negative} == {0.0, 1.0}:
        answer = "no match" if negative == 1.0 else "match"
        return False, (f"ITM accuracy omitted ({metrics['itm_acc']:.3f} in eval.json): the ITM head answers "
                       f"\u201c{answer}\u201d for every pair, so it was not trained ({where})")  # fmt: skip
    if loss_itm > 0:
        return True, None
    return True, ("ITM accuracy scores matched pairs and hard negatives with the policy's ITM head; it is meaningful "
                  f"only if the checkpoint was trained with an ITM objective ({where}); an untrained head scores "
                  "about chance")  # fmt: skip


@dataclass(frozen=True)
class _OfflinePlan:
    """Dataset items (steps, or whole episodes for a memory policy) per batch / in all / for the balance, sized from
    the options' step counts with the split's mean items length."""

    steps_per_item: float
    batch_items: int
    max_items: int
    balance_items: int

    @classmethod
    def of(cls, ds: Any, opts: EvalOptions) -> _OfflinePlan:
        per = max(1.0, getattr(ds, "num_steps", len(ds)) / max(1, len(ds)))
        max_items = min(len(ds), math.ceil(opts.offline_samples / per))
        balance = min(max_items, math.ceil(opts.balance_samples / per)) if opts.balance else 0
        return cls(per, max(1, round(OFFLINE_BATCH_STEPS / per)), max_items, balance)

    def describe(self) -> str:
        unit = "steps" if self.steps_per_item == 1.0 else f"episodes of {self.steps_per_item:.1f} steps on average"
        return f"{self.max_items} held-out {unit}, modality balance on the first {self.balance_items}"


def _offline_pass(policy: Any, cfg: Any, ds: Any, plan: _OfflinePlan, env: str, notes: list[str], log: Log
                  ) -> dict[str, Any]:  # fmt: skip
    """Offline metrics and modality balance from one pass; the outputs are kept (``_outputs``) for the bias."""
    from vlafoundry.eval.offline import metrics_from_outputs, offline_evaluation

    outputs, balance = offline_evaluation(policy, ds, batch_size=plan.batch_items, max_samples=plan.max_items,
                                          balance_samples=plan.balance_items, loss_cfg=getattr(cfg, "loss", None),
                                          progress="offline pass")  # fmt: skip
    assert outputs is not None
    metrics = metrics_from_outputs(outputs)
    show_itm, itm_note = itm_verdict(metrics, cfg)
    act = "action_acc" if "action_acc" in metrics else "action_l1"
    line = f"offline (held-out split, {int(metrics['samples'])} samples): {act} {metrics[act]:.3f}"
    if "obs_to_instr_r@1" in metrics:
        line += f"  obs→instr r@1 {metrics['obs_to_instr_r@1']:.3f}  instr→obs r@1 {metrics['instr_to_obs_r@1']:.3f}"
    if show_itm:
        line += f"  ITM acc {metrics['itm_acc']:.3f}"
    log(line)
    if itm_note:
        log(f"  note: {itm_note}")
        notes.append(itm_note)
    if "obs_to_instr_r@1" not in metrics:
        notes.append("no retrieval / ITM metrics: the policy has no language encoder or no observation modality")
    if balance is None:
        notes.append("no modality balance: turned off (--no-balance)")
    else:
        log("  modality balance (ablation / gradient share): "
            + ", ".join(f"{m} {balance['ablation_share'][m]:.2f}/{balance['gradient_share'][m]:.2f}"
                        for m in balance["modalities"]))  # fmt: skip
        if balance["samples"] < len(outputs.indices):
            notes.append(f"modality balance uses the first {balance['samples']} of the {len(outputs.indices)} "
                         "held-out items of the offline metrics (--balance-samples)")
    data_env = _cfg_get(cfg, "data", "env")
    if data_env and str(data_env) != str(env):
        notes.append(f"offline metrics use the held-out split of the training data ({data_env}), not {env}")
    return {"dataset": str(ds.root), "split": "val", "metrics": metrics, "balance": balance, "bias": None,
            "show_itm": show_itm, "_outputs": outputs}  # fmt: skip


#: What the per-modality offline measures (retrieval, ITM, modality balance, subgroups) read of a policy, beyond
#: the policy contract (VLAPolicy has them; a policy with only the contract gets the metrics of its own forward).
EVAL_HOOKS: tuple[str, ...] = ("prepare", "encode", "features", "action_outputs", "pooled_observation",
                               "pooled_instruction")


def has_eval_hooks(policy: Any) -> bool:
    return all(callable(getattr(policy, name, None)) for name in EVAL_HOOKS)


def _contract_offline_pass(policy: Any, ds: Any, plan: _OfflinePlan, notes: list[str], log: Log) -> dict[str, Any]:
    """Held-out metrics of a policy that has only the contract: its ``forward`` metrics (loss, action accuracy or
    error), averaged over the same held-out items the full pass would read, weighted by batch size."""
    import numpy as np
    import torch

    from vlafoundry.train.trainer import scalars

    order = np.random.default_rng(0).permutation(len(ds))[: plan.max_items]
    sums: dict[str, float] = {}
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(order), plan.batch_items):
                idx = order[i : i + plan.batch_items].tolist()
                _, metrics = policy(ds.__getitems__(idx))
                for k, v in scalars(metrics).items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
    finally:
        policy.train(was_training)
    metrics = {k: v / max(1, len(order)) for k, v in sums.items()}
    metrics["samples"] = float(len(order))
    log("offline (held-out split, " + f"{len(order)} items): "
        + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "samples"))
    notes.append(f"offline metrics from the policy's own forward: model.type {getattr(policy, 'type', '?')!r} has no "
                 f"{'/'.join(EVAL_HOOKS[1:4])} hooks, so no retrieval, ITM, modality balance or subgroup accuracy")
    return {"dataset": str(ds.root), "split": "val", "metrics": metrics, "balance": None, "bias": None,
            "show_itm": False}
