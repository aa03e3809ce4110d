"""Evaluation of multimodal representations: retrieval recall, feature regression quality, modality balance and
per-group accuracy gaps (with Wilson confidence intervals)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from vlafoundry.eval.stats import wilson_interval
from vlafoundry.nn._checks import check_same_device, check_tensor

__all__ = ["MultimodalEvaluator"]

AbsentSpec = None | Mapping[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


def _best_positive_rank(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's best positive: the number of negatives scoring >= it (ties count against)."""
    best = sim.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (R, 1)
    return ((sim >= best) & ~positive).sum(dim=1)  # (R,)


def _as_list(x: Any) -> list[Any]:
    if isinstance(x, torch.Tensor):
        return x.tolist() if x.dim() > 0 else [x.item()]
    if hasattr(x, "tolist"):  # numpy
        return list(x.tolist())
    return list(x)


class MultimodalEvaluator:
    """Evaluation helpers for multimodal models. Stateless apart from ``self.metrics``, which stores the last
    result of each method under its name."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------ retrieval
    @torch.no_grad()
    def evaluate_alignment(
        self,
        vision_features: torch.Tensor,
        lang_features: torch.Tensor,
        top_k: int | Sequence[int] = (1, 5, 10),
        pair_ids: torch.Tensor | None = None,
        chunk_size: int = 4096,
    ) -> dict[str, float]:
        """Cross-modal retrieval recall@k in both directions on cosine similarity.

        Row i of ``vision_features`` and of ``lang_features`` form a pair. A query counts as retrieved at k when
        any of its positives (same ``pair_ids``; only its own index when None) is among the k most similar
        candidates. Ties are resolved pessimistically (a negative with equal similarity ranks ahead), so collapsed
        embeddings score chance or worse, never 1. k larger than N is clamped to N (recall 1).

        Returns ``image_to_text_r@k`` and ``text_to_image_r@k`` per k, plus ``image_to_text_median_rank`` /
        ``text_to_image_median_rank`` (1-based rank of the best positive).
        """
        check_tensor("vision_features", vision_features, ndim=2)
        check_tensor("lang_features", lang_features, ndim=2, last_dim=vision_features.shape[-1])
        n = vision_features.shape[0]
        if lang_features.shape[0] != n:
            raise ValueError(f"lang_features: expected {n} rows (as vision_features), got {lang_features.shape[0]}")
        if n == 0:
            raise ValueError("vision_features: expected at least one row, got 0")
        if pair_ids is not None:
            check_tensor("pair_ids", pair_ids, ndim=1, floating=False)
            if pair_ids.shape[0] != n:
                raise ValueError(f"pair_ids: expected shape ({n},), got {tuple(pair_ids.shape)}")
        check_same_device(vision_features=vision_features, lang_features=lang_features, pair_ids=pair_ids)
        ks = [top_k] if isinstance(top_k, int) else list(top_k)
        if any(k < 1 for k in ks):
            raise ValueError(f"top_k: expected values >= 1, got {ks}")
        v = F.normalize(vision_features.float(), dim=-1)
        l = F.normalize(lang_features.float(), dim=-1)
        ids = pair_ids if pair_ids is not None else torch.arange(n, device=v.device)
        ranks = {"image_to_text": [], "text_to_image": []}
        for start in range(0, n, chunk_size):  # blocks of rows bound the memory of the similarity matrix
            rows = slice(start, min(n, start + chunk_size))
            positive = ids[rows, None] == ids[None, :]  # (R, N)
            ranks["image_to_text"].append(_best_positive_rank(v[rows] @ l.T, positive))
            ranks["text_to_image"].append(_best_positive_rank(l[rows] @ v.T, positive))
        out: dict[str, float] = {}
        for direction, parts in ranks.items():
            r = torch.cat(parts)  # (N,)
            for k in ks:
                out[f"{direction}_r@{k}"] = float((r < min(k, n)).float().mean())
            out[f"{direction}_median_rank"] = float(r.float().median()) + 1.0
        self.metrics["alignment"] = out
        return out

    # ------------------------------------------------------------------ regression quality
    @torch.no_grad()
    def evaluate_generation_quality(self, generated: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """Compare generated features (or continuous actions) with references of the same shape (..., D).

        Returns ``mse``, ``rmse``, ``mae``, ``cosine_similarity`` (mean over vectors along the last dim),
        ``r2`` (1 - SSE / total sum of squares around the per-feature reference mean; 1 is perfect, 0 is as good
        as predicting the mean) and ``relative_l2`` (||g - r|| / ||r||).
        """
        check_tensor("generated", generated, ndim=None)
        check_tensor("reference", reference, ndim=None)
        if generated.shape != reference.shape:
            raise ValueError(
                f"generated: expected shape {tuple(reference.shape)} (as reference), got {tuple(generated.shape)}"
            )
        if generated.dim() == 0 or generated.numel() == 0:
            raise ValueError(f"generated: expected a non-empty tensor of rank >= 1, got shape {tuple(generated.shape)}")
        g = generated.detach().double().reshape(-1, generated.shape[-1])  # (M, D)
        r = reference.detach().double().reshape(-1, reference.shape[-1])  # (M, D)
        err = g - r
        sse = err.pow(2).sum()
        sst = (r - r.mean(dim=0, keepdim=True)).pow(2).sum()
        out = {
            "mse": float(err.pow(2).mean()),
            "rmse": float(err.pow(2).mean().sqrt()),
            "mae": float(err.abs().mean()),
            "cosine_similarity": float(F.cosine_similarity(g, r, dim=-1).mean()),
            "r2": float(1.0 - sse / sst) if sst > 0 else float("nan"),
            "relative_l2": float(err.norm() / r.norm()) if r.norm() > 0 else float("nan"),
        }
        self.metrics["generation_quality"] = out
        return out

    # ------------------------------------------------------------------ modality balance
    def assess_modality_balance(
        self,
        model_fn: Callable[..., Any],
        inputs: dict[str, Any],
        metric_fn: Callable[[Any], torch.Tensor],
        modalities: Iterable[str] | None = None,
        absent: Mapping[str, AbsentSpec] | None = None,
    ) -> dict[str, Any]:
        """How much the model's output depends on each input modality, measured two ways.

        ``model_fn(**inputs)`` runs the model; ``metric_fn(outputs)`` reduces its outputs to a scalar tensor
        (a task metric such as accuracy or negative loss, or a loss; only magnitudes of changes are used, so
        either sign convention works). Put the model in eval mode first so dropout does not add noise.
        ``modalities`` defaults to the keys of ``inputs`` holding floating-point tensors.
        ``absent[m]`` says how to remove modality m: None (default) sets ``inputs[m] = None``; a mapping gives
        input overrides (e.g. ``{"image": None, "image_mask": all_false}``); a callable maps the inputs dict
        to the ablated inputs dict.

        Returned numbers (``{m: float}`` dicts unless stated):

        * ``metric_full`` (float): metric with every modality present.
        * ``metric_ablated[m]``: metric with modality m removed, others present.
        * ``ablation_delta[m] = metric_full - metric_ablated[m]`` (signed; positive = removing m lowers it).
        * ``ablation_share[m] = |delta_m| / sum_j |delta_j|``: fraction of the total ablation effect due to m;
          shares sum to 1 (all 0 when no removal changes the metric).
        * ``gradient_norm[m]``: L2 norm over the whole batch of d metric / d inputs[m], computed with every
          modality present; ``None`` for a non-floating input (token ids), which has no gradient.
        * ``gradient_share[m] = gradient_norm[m] / sum_j gradient_norm[j]`` over modalities with a gradient: local
          sensitivity share. It depends on each input's scale; ``gradient_x_input_share`` uses
          ``||x_m * d metric / d x_m||`` (first-order contribution), which is invariant to rescaling an input.
        * ``dominant_modality``: argmax of ``ablation_share``.
        """
        if not isinstance(inputs, dict) or not inputs:
            raise ValueError("inputs: expected a non-empty dict of model inputs")
        mods = (
            [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
            if modalities is None
            else list(modalities)
        )
        missing = [m for m in mods if m not in inputs]
        if missing or not mods:
            raise ValueError(f"modalities: expected keys of inputs {sorted(inputs)}, got {mods}")
        absent = dict(absent or {})

        with torch.no_grad():
            full = float(metric_fn(model_fn(**inputs)))
            ablated = {m: float(metric_fn(model_fn(**self._ablate(inputs, m, absent.get(m))))) for m in mods}
        delta = {m: full - ablated[m] for m in mods}

        grad_inputs = dict(inputs)
        leaves: dict[str, torch.Tensor] = {}
        for m in mods:
            value = inputs[m]
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                leaves[m] = value.detach().clone().requires_grad_(True)
                grad_inputs[m] = leaves[m]
        grad_norm: dict[str, float | None] = {m: None for m in mods}
        gxi_norm: dict[str, float | None] = {m: None for m in mods}
        if leaves:
            with torch.enable_grad():
                metric = metric_fn(model_fn(**grad_inputs))
                if not metric.requires_grad:
                    grads: tuple[torch.Tensor | None, ...] = (None,) * len(leaves)
                else:
                    grads = torch.autograd.grad(metric, list(leaves.values()), allow_unused=True)
            for (m, x), g in zip(leaves.items(), grads):
                grad_norm[m] = 0.0 if g is None else float(g.norm())
                gxi_norm[m] = 0.0 if g is None else float((g * x.detach()).norm())

        out = {
            "metric_full": full,
            "metric_ablated": ablated,
            "ablation_delta": delta,
            "ablation_share": self._shares({m: abs(d) for m, d in delta.items()}),
            "gradient_norm": grad_norm,
            "gradient_share": self._shares(grad_norm),
            "gradient_x_input_share": self._shares(gxi_norm),
        }
        out["dominant_modality"] = max(out["ablation_share"], key=out["ablation_share"].get)
        self.metrics["modality_balance"] = out
        return out

    @staticmethod
    def _ablate(inputs: dict[str, Any], modality: str, spec: AbsentSpec) -> dict[str, Any]:
        if spec is None:
            return {**inputs, modality: None}
        if callable(spec):
            return spec(dict(inputs))
        return {**inputs, **dict(spec)}

    @staticmethod
    def _shares(values: Mapping[str, float | None]) -> dict[str, float | None]:
        total = sum(v for v in values.values() if v is not None)
        return {m: (None if v is None else (v / total if total > 0 else 0.0)) for m, v in values.items()}

    # ------------------------------------------------------------------ group gaps
    def detect_multimodal_bias(
        self, predictions: Any, ground_truth: Any, group_labels: Sequence[Hashable] | torch.Tensor
    ) -> dict[str, Any]:
        """Accuracy per group (e.g. which modalities were present, task, instruction template) and the gap.

        ``predictions`` / ``ground_truth``: sequences or tensors of N items; tensor items with trailing
        dimensions count as correct only when every element matches. Returns
        ``{"per_group": {g: {"accuracy", "n", "ci"}}, "overall": {...}, "worst", "best", "gap"}`` with ``ci`` the
        95% Wilson interval, ``worst`` / ``best`` the groups of lowest / highest accuracy and ``gap`` their
        difference in accuracy.
        """
        if isinstance(predictions, torch.Tensor) or isinstance(ground_truth, torch.Tensor):
            p, g = torch.as_tensor(predictions), torch.as_tensor(ground_truth)
            if p.shape != g.shape:
                raise ValueError(
                    f"predictions: expected shape {tuple(g.shape)} (as ground_truth), got {tuple(p.shape)}"
                )
            correct = (p == g).reshape(p.shape[0], -1).all(dim=1).tolist() if p.dim() > 0 else [bool(p == g)]
        else:
            p, g = _as_list(predictions), _as_list(ground_truth)
            if len(p) != len(g):
                raise ValueError(f"predictions: expected {len(g)} items (as ground_truth), got {len(p)}")
            correct = [a == b for a, b in zip(p, g)]
        groups = _as_list(group_labels)
        if len(groups) != len(correct):
            raise ValueError(f"group_labels: expected {len(correct)} labels, got {len(groups)}")
        if not correct:
            raise ValueError("predictions: expected at least one item, got 0")
        counts: dict[Hashable, list[int]] = {}
        for grp, ok in zip(groups, correct):
            c = counts.setdefault(grp, [0, 0])
            c[0] += int(bool(ok))
            c[1] += 1
        per_group = {
            grp: {"accuracy": s / n, "n": n, "ci": wilson_interval(s, n)} for grp, (s, n) in counts.items()
        }
        total_s, total_n = sum(int(bool(c)) for c in correct), len(correct)
        worst = min(per_group, key=lambda k: per_group[k]["accuracy"])
        best = max(per_group, key=lambda k: per_group[k]["accuracy"])
        out = {
            "per_group": per_group,
            "overall": {"accuracy": total_s / total_n, "n": total_n, "ci": wilson_interval(total_s, total_n)},
            "worst": worst,
            "best": best,
            "gap": per_group[best]["accuracy"] - per_group[worst]["accuracy"],
        }
        self.metrics["bias"] = out
        return out
