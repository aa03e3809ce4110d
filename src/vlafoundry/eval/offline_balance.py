"""Modality balance of :func:`vlafoundry.eval.offline.modality_balance`, per batch: with the encoders run once, the
fusion and action head run with every modality and with each one removed, and the gradient of the BC loss with
respect to each modality's token features is taken; :class:`_BalanceSums` adds these up over the split and
:func:`_balance_summary` turns the sums into the shares :func:`vlafoundry.eval.offline.offline_evaluation` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlafoundry.eval.evaluator import MultimodalEvaluator
from vlafoundry.eval.offline_pass import _entry_scores

# Policy encoder outputs (VLAPolicy.encode keys) of each modality: (tokens, mask).
_ENC_KEYS: dict[str, tuple[str, str]] = {
    "image": ("vision", "vision_mask"),
    "instruction": ("lang", "lang_mask"),
    "state": ("state", "state_mask"),
}


@dataclass
class _BalanceSums:
    """Split-level sums of the per-batch balance measures (all additive, or additive in squares)."""

    mods: list[str]
    entries: int = 0
    score_full: float = 0.0  # correct count (discrete) or summed L1
    loss_full: float = 0.0  # entry-weighted BC loss
    score_abl: dict[str, float] = field(default_factory=dict)
    loss_abl: dict[str, float] = field(default_factory=dict)
    grad2: dict[str, float] = field(default_factory=dict)  # sum of (entries_b * ||grad of batch-mean loss||)^2
    gxi2: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for d in (self.score_abl, self.loss_abl, self.grad2, self.gxi2):
            d.update(dict.fromkeys(self.mods, 0.0))


def _task_score(policy: Any, outputs: torch.Tensor, b: dict[str, Any]) -> float:
    """Additive over batches: the number of correct entries (discrete) or the summed L1 error."""
    _, correct, err = _entry_scores(policy, outputs, b)
    return float(correct.sum()) if policy.head_kind == "discrete" else float(err.sum())


def _balance_batch(policy: Any, b: dict[str, Any], enc: dict[str, Any], mods: list[str], lc: Any,
                   acc: _BalanceSums) -> torch.Tensor:  # fmt: skip
    """Both measures on one prepared batch ``b`` with encoder outputs ``enc``, added to ``acc``.

    Returns the full-input action outputs (N, K, ...) (detached), which the offline outputs reuse.
    """
    w = int(b["action_mask"].sum())
    leaves = {m: enc[_ENC_KEYS[m][0]].detach().requires_grad_(True) for m in mods}  # token features (N, T_m, D)
    with torch.enable_grad():
        fused = policy.features({**enc, **{_ENC_KEYS[m][0]: x for m, x in leaves.items()}})  # (N, D)
        loss = policy.bc_loss(fused, b, lc)[0]  # batch-mean BC loss
        grads: tuple[torch.Tensor | None, ...] = (None,) * len(mods)
        if w and loss.requires_grad:
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    fused = fused.detach()
    with torch.no_grad():
        outputs = policy.action_outputs(fused)  # (N, K, ...)
    if w == 0:
        return outputs
    acc.entries += w
    acc.score_full += _task_score(policy, outputs, b)
    acc.loss_full += w * float(loss.detach())
    with torch.no_grad():
        for (m, x), g in zip(leaves.items(), grads, strict=True):
            mask = _ENC_KEYS[m][1]
            ablated = policy.features({**enc, mask: torch.zeros_like(enc[mask])})  # (N, D); = <m>_present False
            acc.score_abl[m] += _task_score(policy, policy.action_outputs(ablated), b)
            acc.loss_abl[m] += w * float(policy.bc_loss(ablated, b, lc)[0])
            # gradient of the split-mean loss = (w / entries) * gradient of the batch-mean loss; / entries at the end
            acc.grad2[m] += (w * (0.0 if g is None else float(g.norm()))) ** 2
            acc.gxi2[m] += (w * (0.0 if g is None else float((g * x.detach()).norm()))) ** 2
    return outputs


def _balance_summary(acc: _BalanceSums, discrete: bool, samples: int) -> dict[str, Any]:
    shares = MultimodalEvaluator._shares
    mods, n = acc.mods, acc.entries
    full = acc.score_full / n
    ablated = {m: acc.score_abl[m] / n for m in mods}
    drop = {m: (full - ablated[m]) if discrete else (ablated[m] - full) for m in mods}
    l_full = acc.loss_full / n
    l_abl = {m: acc.loss_abl[m] / n for m in mods}
    grad = {m: float(np.sqrt(acc.grad2[m])) / n for m in mods}
    gxi = {m: float(np.sqrt(acc.gxi2[m])) / n for m in mods}
    out: dict[str, Any] = {
        "metric": "action_acc" if discrete else "action_l1",
        "samples": samples,
        "action_entries": n,
        "modalities": mods,
        "metric_full": full,
        "metric_ablated": ablated,
        "ablation_drop": drop,
        "ablation_share": shares({m: abs(v) for m, v in drop.items()}),
        "loss_full": l_full,
        "loss_ablated": l_abl,
        "loss_ablation_share": shares({m: abs(l_abl[m] - l_full) for m in mods}),
        "gradient_norm": grad,
        "gradient_share": shares(grad),
        "gradient_x_input_share": shares(gxi),
    }
    key = "ablation_share" if any(out["ablation_share"].values()) else "loss_ablation_share"
    out["dominant_modality"] = max(out[key], key=out[key].get) if mods else None
    return out
