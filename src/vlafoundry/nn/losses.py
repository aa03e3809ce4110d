"""Alignment and pretraining objectives: symmetric InfoNCE, and the MLM / ITM / MRM pretraining heads.

* :class:`ContrastiveLoss`: CLIP-style symmetric InfoNCE on L2-normalised features, with an optional learnable
  (clamped) logit scale, multi-positive targets from ``pair_ids`` and a cross-rank gather that makes a DDP run
  equal to one process holding the global batch.
* :class:`MultimodalContrastiveLearning`: two projections into a shared space followed by the loss.
* :class:`MultimodalPretrainingTask`: masked language modelling (BERT 80/10/10 corruption), image-text matching
  with hard negatives mined from the contrastive similarity (ALBEF style), and masked region (patch) modelling.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlafoundry.nn._checks import check_mask, check_same_device, check_tensor

__all__ = ["ContrastiveLoss", "MultimodalContrastiveLearning", "MultimodalPretrainingTask", "mean_count_over_ranks"]

IGNORE_INDEX = -100


def _distributed_world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mean_count_over_ranks(count: torch.Tensor) -> torch.Tensor:
    """The number of loss terms to divide a rank's *summed* loss by so that DDP's gradient average equals one
    process's mean over the global batch: the mean of ``count`` over ranks (ranks may hold different numbers of
    masked tokens, patches, pairs or steps). Outside a world > 1 process group: ``count``. Clamped to >= 1; no
    gradient. Every rank must call it at the same point (it is a collective)."""
    n = count.detach().to(torch.float32 if not count.is_floating_point() else count.dtype).clone()
    _, world = _distributed_world()
    if world > 1:
        dist.all_reduce(n)
        n = n / world
    return n.clamp_min(1)


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """``'mean'`` (an empty set gives a zero that keeps the graph) or ``'none'`` (the per-term losses)."""
    if reduction == "none":
        return losses
    if reduction != "mean":
        raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    return losses.mean() if losses.numel() else losses.sum() * 0.0


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's row count (ranks may hold different numbers of rows, e.g. the steps of whole episodes)."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(t) for t in sizes]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x if x.shape[0] == rows else torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])], dim=0)


def _gather_with_grad(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (rank r holds ``sizes[r]`` rows); gradients flow back to the
    rank that produced each slice. Rows are padded to the largest rank for the collective and trimmed after."""
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API in recent torch; still correct
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(_pad_rows(x.contiguous(), max(sizes)))
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


def _gather_no_grad(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    padded = _pad_rows(x.contiguous(), max(sizes))
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over rows of ``-sum_j targets_ij * log_softmax(logits)_ij`` (targets rows sum to 1)."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum()


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE (CLIP) loss between paired vision and language features.

    ``loss = (CE(s * V Lᵀ, T) + CE(s * L Vᵀ, Tᵀ)) / 2`` with ``V``, ``L`` L2-normalised rows and ``s`` the logit
    scale (``1 / temperature``). Targets ``T``: the identity when ``pair_ids`` is None; otherwise each row's target
    is uniform over every column with the same pair id (demonstrations repeat one instruction over many steps of a
    batch, and diagonal labels would push those true matches apart).

    Args:
        temperature: softmax temperature; the logit scale is ``1 / temperature``.
        learnable_scale: learn ``log s`` as a parameter initialised to ``log(1 / temperature)`` (CLIP).
        max_logit_scale: clamp on the learnable scale, ``s <= max_logit_scale`` (CLIP uses 100).
        gather_distributed: when torch.distributed is initialised with world size > 1, gather features (with
            gradient) and pair ids from all ranks and compute the local rows against all columns, so the DDP
            gradient equals a single process with the global batch. Ranks may hold different batch sizes
            (rows are padded for the collective and trimmed; each rank divides its summed loss by the mean rows
            per rank, so DDP's gradient average is the global-batch mean).
    """

    def __init__(
        self,
        temperature: float = 0.07,
        learnable_scale: bool = False,
        max_logit_scale: float = 100.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        if max_logit_scale <= 0:
            raise ValueError(f"max_logit_scale: expected > 0, got {max_logit_scale}")
        self.temperature = float(temperature)
        self.learnable_scale = bool(learnable_scale)
        self.max_logit_scale = float(max_logit_scale)
        self.gather_distributed = bool(gather_distributed)
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if self.learnable_scale:
            self.log_logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_logit_scale", init, persistent=False)

    @property
    def logit_scale(self) -> torch.Tensor:
        """Effective scale ``exp(log_logit_scale)`` clamped to ``max_logit_scale`` (no gradient past the clamp)."""
        return self.log_logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, learnable_scale={self.learnable_scale}, "
            f"max_logit_scale={self.max_logit_scale}, gather_distributed={self.gather_distributed}"
        )

    def _check(self, vision_features: torch.Tensor, lang_features: torch.Tensor, pair_ids: torch.Tensor | None) -> None:
        check_tensor("vision_features", vision_features, ndim=2)
        check_tensor("lang_features", lang_features, ndim=2, last_dim=vision_features.shape[-1])
        if lang_features.shape[0] != vision_features.shape[0]:
            raise ValueError(
                f"lang_features: expected batch size {vision_features.shape[0]} (as vision_features), "
                f"got {lang_features.shape[0]}"
            )
        if pair_ids is not None:
            check_tensor("pair_ids", pair_ids, ndim=1, floating=False)
            if pair_ids.shape[0] != vision_features.shape[0]:
                raise ValueError(f"pair_ids: expected shape ({vision_features.shape[0]},), got {tuple(pair_ids.shape)}")
        check_same_device(vision_features=vision_features, lang_features=lang_features, pair_ids=pair_ids)

    def similarity(self, vision_features: torch.Tensor, lang_features: torch.Tensor) -> torch.Tensor:
        """Scaled cosine-similarity logits ``s * norm(V) norm(L)ᵀ``: (Bv, D), (Bl, D) -> (Bv, Bl)."""
        check_tensor("vision_features", vision_features, ndim=2)
        check_tensor("lang_features", lang_features, ndim=2, last_dim=vision_features.shape[-1])
        v = F.normalize(vision_features, dim=-1)
        l = F.normalize(lang_features, dim=-1)
        return self.logit_scale.to(v.dtype) * (v @ l.transpose(0, 1))

    def forward(
        self,
        vision_features: torch.Tensor,
        lang_features: torch.Tensor,
        pair_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, D), (B, D), pair_ids (B,) int64 | None -> scalar loss."""
        self._check(vision_features, lang_features, pair_ids)
        v = F.normalize(vision_features, dim=-1)  # (B, D)
        l = F.normalize(lang_features, dim=-1)  # (B, D)
        batch = v.shape[0]
        rank, world = _distributed_world()
        offset = 0  # first row of this rank's samples in the gathered batch
        denom = float(batch)  # rows this rank's summed loss is divided by
        if self.gather_distributed and world > 1:
            sizes = _gather_sizes(batch, v.device)
            offset = sum(sizes[:rank])
            denom = sum(sizes) / world  # DDP's gradient average then equals the global-batch mean, sizes unequal too
            v_all, l_all = _gather_with_grad(v, sizes), _gather_with_grad(l, sizes)  # (sum B_r, D)
            ids_all = _gather_no_grad(pair_ids, sizes) if pair_ids is not None else None
        else:
            v_all, l_all, ids_all = v, l, pair_ids
        scale = self.logit_scale.to(v.dtype)
        logits_v2l = scale * (v @ l_all.transpose(0, 1))  # (B, W*B): local images vs all texts
        logits_l2v = scale * (l @ v_all.transpose(0, 1))  # (B, W*B): local texts vs all images
        if pair_ids is None:
            labels = torch.arange(batch, device=v.device) + offset
            ce = F.cross_entropy(logits_v2l, labels, reduction="sum") + F.cross_entropy(logits_l2v, labels, reduction="sum")
            return 0.5 * ce / denom
        positives = (pair_ids[:, None] == ids_all[None, :]).to(v.dtype)  # (B, W*B), diagonal always True
        targets = positives / positives.sum(dim=-1, keepdim=True)
        ce = _soft_cross_entropy(logits_v2l, targets) + _soft_cross_entropy(logits_l2v, targets)
        return 0.5 * ce / denom


class MultimodalContrastiveLearning(nn.Module):
    """Project vision and language features into a shared ``d_model`` space and align them with InfoNCE.

    forward(vision_features (B, Dv), lang_features (B, Dl), pair_ids (B,) | None) -> (loss, v_proj (B, d_model),
    l_proj (B, d_model)).
    """

    def __init__(
        self,
        vision_dim: int,
        lang_dim: int,
        d_model: int = 768,
        temperature: float = 0.07,
        learnable_scale: bool = True,
        max_logit_scale: float = 100.0,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.vision_dim, self.lang_dim, self.d_model = vision_dim, lang_dim, d_model
        self.vision_projection = nn.Linear(vision_dim, d_model)
        self.lang_projection = nn.Linear(lang_dim, d_model)
        self.contrastive_loss = ContrastiveLoss(
            temperature=temperature,
            learnable_scale=learnable_scale,
            max_logit_scale=max_logit_scale,
            gather_distributed=gather_distributed,
        )

    def forward(
        self,
        vision_features: torch.Tensor,
        lang_features: torch.Tensor,
        pair_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_tensor("vision_features", vision_features, ndim=2, last_dim=self.vision_dim)
        check_tensor("lang_features", lang_features, ndim=2, last_dim=self.lang_dim)
        vision_proj = self.vision_projection(vision_features)  # (B, d_model)
        lang_proj = self.lang_projection(lang_features)  # (B, d_model)
        loss = self.contrastive_loss(vision_proj, lang_proj, pair_ids)
        return loss, vision_proj, lang_proj


class MultimodalPretrainingTask(nn.Module):
    """Pretraining heads and objectives: MLM, ITM (with hard negatives) and MRM.

    Heads: ``mlm_head`` d_model -> vocab_size, ``itm_head`` 2*d_model -> 2, ``mrm_head`` d_model -> patch_dim
    (regresses the original patch features; defaults to d_model).

    The ITM head reads the interaction of the pooled vision and language features, ``[v * l, |v - l|]``
    (:meth:`itm_features`), not their concatenation ``[v, l]`` (the chapter's; ALBEF's linear head reads one fused
    encoder's output, where the two have already interacted): a linear head on ``[v, l]`` computes
    ``f(v) + g(l)``, and with ITM's pairs, where every image and every text is in one matched and one mismatched
    pair, that sum cannot tell them apart; it learns the class prior ("no match") and nothing else. The products
    make a match score ``sum_k w_k v_k l_k`` linear.

    Args:
        d_model: width of the encoder features the heads read.
        vocab_size: MLM output width (any vocabulary; 30522 is BERT's).
        patch_dim: MRM regression target width; None -> d_model.
        mask_prob: fraction of eligible tokens / patches selected for masking.
    """

    def __init__(
        self, d_model: int = 768, vocab_size: int = 30522, patch_dim: int | None = None, mask_prob: float = 0.15
    ) -> None:
        super().__init__()
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob: expected in (0, 1], got {mask_prob}")
        self.d_model = d_model
        self.vocab_size = vocab_size
        self.patch_dim = patch_dim if patch_dim is not None else d_model
        self.mask_prob = float(mask_prob)
        self.mlm_head = nn.Linear(d_model, vocab_size)
        self.itm_head = nn.Linear(2 * d_model, 2)
        self.mrm_head = nn.Linear(d_model, self.patch_dim)

    # ------------------------------------------------------------------ MLM
    def mask_tokens(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        mask_token_id: int,
        vocab_size: int,
        special_ids: Iterable[int] = (),
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT corruption: (B, L) int ids -> (masked_ids (B, L), labels (B, L)).

        Each valid (``attention_mask`` True), non-special token is selected with probability ``mask_prob``; a row
        with at least one eligible token but no selection gets one eligible token selected at random. Selected
        tokens become ``mask_token_id`` (80%), a random non-special token from ``[0, vocab_size)`` (10%) or stay
        unchanged (10%). ``labels`` holds the original id at selected positions and -100 everywhere else.
        """
        check_tensor("ids", ids, ndim=2, floating=False)
        if attention_mask is None:
            attention_mask = torch.ones_like(ids, dtype=torch.bool)
        check_mask("attention_mask", attention_mask, ids.shape)
        check_same_device(ids=ids, attention_mask=attention_mask)
        if not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id: expected in [0, {vocab_size}), got {mask_token_id}")
        special = torch.tensor(sorted(set(int(s) for s in special_ids) | {int(mask_token_id)}), device=ids.device)
        eligible = attention_mask & ~torch.isin(ids, special)  # (B, L)
        rand = torch.rand(ids.shape, generator=generator, device=ids.device)
        selected = eligible & (rand < self.mask_prob)
        # Guarantee one selection per row that has any eligible token.
        needs_one = eligible.any(dim=1) & ~selected.any(dim=1)  # (B,)
        score = torch.rand(ids.shape, generator=generator, device=ids.device).masked_fill(~eligible, -1.0)
        forced = F.one_hot(score.argmax(dim=1), ids.shape[1]).bool() & needs_one[:, None]
        selected = selected | forced
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
        action = torch.rand(ids.shape, generator=generator, device=ids.device)
        to_mask = selected & (action < 0.8)
        to_random = selected & (action >= 0.8) & (action < 0.9)
        allowed = torch.ones(vocab_size, dtype=torch.bool, device=ids.device)
        allowed[special[special < vocab_size]] = False
        pool = allowed.nonzero().squeeze(1)  # (V',) non-special ids
        if pool.numel() == 0:
            raise ValueError("special_ids: every id in the vocabulary is special; no random replacement possible")
        random_ids = pool[torch.randint(pool.numel(), ids.shape, generator=generator, device=ids.device)]
        masked = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
        masked = torch.where(to_random, random_ids.to(ids.dtype), masked)
        return masked, labels

    def mlm_loss(self, lang_features: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of ``mlm_head`` over masked positions only (labels != -100): (B, L, D), (B, L) -> scalar.

        The head runs on the selected rows only. With no masked position the loss is a zero that keeps the graph.
        ``reduction='none'``: the (M,) per-token losses of the M masked positions (to normalise them yourself, e.g.
        by :func:`mean_count_over_ranks` under DDP).
        """
        check_tensor("lang_features", lang_features, ndim=3, last_dim=self.d_model)
        check_tensor("labels", labels, ndim=2, floating=False)
        if labels.shape != lang_features.shape[:2]:
            raise ValueError(f"labels: expected shape {tuple(lang_features.shape[:2])}, got {tuple(labels.shape)}")
        sel = labels != IGNORE_INDEX  # (B, L)
        feats = lang_features[sel]  # (M, D)
        logits = self.mlm_head(feats)  # (M, V)
        return _reduce(F.cross_entropy(logits, labels[sel], reduction="none"), reduction)  # (M,) or scalar

    # ------------------------------------------------------------------ ITM
    @staticmethod
    def mine_hard_negatives(
        similarity: torch.Tensor, pair_ids: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """For each row i of a (B, B) similarity (logit) matrix, sample a column j with probability
        ``softmax(similarity[i])`` restricted to non-positives (j != i, and pair_ids[j] != pair_ids[i]).

        Returns (B,) int64; -1 for a row with no non-positive column.
        """
        check_tensor("similarity", similarity, ndim=2)
        n_rows, n_cols = similarity.shape
        if n_rows != n_cols:
            raise ValueError(f"similarity: expected a square (B, B) matrix, got {tuple(similarity.shape)}")
        eye = torch.eye(n_rows, dtype=torch.bool, device=similarity.device)
        if pair_ids is not None:
            check_tensor("pair_ids", pair_ids, ndim=1, floating=False)
            if pair_ids.shape[0] != n_rows:
                raise ValueError(f"pair_ids: expected shape ({n_rows},), got {tuple(pair_ids.shape)}")
            positive = eye | (pair_ids[:, None] == pair_ids[None, :])
        else:
            positive = eye
        logits = similarity.detach().float().masked_fill(positive, float("-inf"))
        has_neg = (~positive).any(dim=1)  # (B,)
        probs = torch.softmax(logits.masked_fill(~has_neg[:, None], 0.0), dim=-1)  # uniform for rows w/o negatives
        index = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return torch.where(has_neg, index, torch.full_like(index, -1))

    @staticmethod
    def itm_features(v_pooled: torch.Tensor, l_pooled: torch.Tensor) -> torch.Tensor:
        """(N, D), (N, D) -> (N, 2D): ``[v * l, |v - l|]``, what the ITM head reads (see the class docstring)."""
        return torch.cat([v_pooled * l_pooled, (v_pooled - l_pooled).abs()], dim=-1)

    def itm_logits(self, v_pooled: torch.Tensor, l_pooled: torch.Tensor) -> torch.Tensor:
        """(N, D), (N, D) -> (N, 2) match logits (class 1 = matched)."""
        return self.itm_head(self.itm_features(v_pooled, l_pooled))

    def itm_loss(
        self,
        v_pooled: torch.Tensor,
        l_pooled: torch.Tensor,
        similarity: torch.Tensor,
        pair_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-text matching on B positives plus hard negatives in both directions -> (loss, balanced accuracy).

        Pairs: (v_i, l_i) labelled 1; (v_i, l_{n(i)}) with n mined from ``similarity`` rows (image -> text) and
        (v_{m(j)}, l_j) with m mined from ``similarity`` columns (text -> image), labelled 0. ``similarity`` is
        (B_vision, B_lang), e.g. :meth:`ContrastiveLoss.similarity`. Rows without any negative are skipped.
        The classes weigh the same: there are up to twice as many negatives as positives, and an unweighted loss
        rewards answering "no match" (67% accuracy for nothing). Each pair's loss is multiplied by
        ``P / (2 * pairs of its class)``, so the mean over the P pairs is the mean of the two classes' mean losses;
        the accuracy is likewise the mean of the two classes' accuracies (0.5 for a constant answer).
        ``reduction='none'``: the (P,) weighted per-pair losses (B positives, then the negatives).

        Under DDP the negatives are mined within each rank's batch (as ALBEF does), unlike the contrastive loss,
        which gathers every rank's features: with the trainer's batches of whole episodes a rank still holds
        hundreds of candidate negatives, and the loss stays an average over the global batch's pairs.
        """
        check_tensor("v_pooled", v_pooled, ndim=2, last_dim=self.d_model)
        check_tensor("l_pooled", l_pooled, ndim=2, last_dim=self.d_model)
        batch = v_pooled.shape[0]
        if l_pooled.shape[0] != batch:
            raise ValueError(f"l_pooled: expected batch size {batch}, got {l_pooled.shape[0]}")
        check_tensor("similarity", similarity, ndim=2)
        if tuple(similarity.shape) != (batch, batch):
            raise ValueError(f"similarity: expected shape ({batch}, {batch}), got {tuple(similarity.shape)}")
        neg_text = self.mine_hard_negatives(similarity, pair_ids, generator)  # (B,)
        neg_image = self.mine_hard_negatives(similarity.transpose(0, 1), pair_ids, generator)  # (B,)
        rows = torch.arange(batch, device=v_pooled.device)
        ok_t, ok_i = neg_text >= 0, neg_image >= 0
        v_idx = torch.cat([rows, rows[ok_t], neg_image[ok_i]])
        l_idx = torch.cat([rows, neg_text[ok_t], rows[ok_i]])
        target = torch.cat(
            [torch.ones(batch, dtype=torch.long, device=rows.device),
             torch.zeros(int(ok_t.sum()) + int(ok_i.sum()), dtype=torch.long, device=rows.device)]
        )
        logits = self.itm_logits(v_pooled[v_idx], l_pooled[l_idx])  # (P, 2)
        n_pos, n_neg = batch, target.numel() - batch
        weight = torch.full_like(target, 1.0, dtype=logits.dtype)  # (P,)
        if n_neg > 0:
            weight[:n_pos] = target.numel() / (2.0 * n_pos)
            weight[n_pos:] = target.numel() / (2.0 * n_neg)
        loss = _reduce(F.cross_entropy(logits, target, reduction="none") * weight, reduction)  # (P,) or scalar
        correct = (logits.argmax(dim=-1) == target).float()  # (P,)
        accuracy = correct[:n_pos].mean() if n_neg == 0 else 0.5 * (correct[:n_pos].mean() + correct[n_pos:].mean())
        return loss, accuracy.detach()

    # ------------------------------------------------------------------ MRM
    @staticmethod
    def mask_patches(
        batch_size: int,
        num_patches: int,
        mask_prob: float = 0.15,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Random patch selection for MRM: (B, N) bool, **True = masked (to reconstruct)**, at least one per row."""
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob: expected in (0, 1], got {mask_prob}")
        rand = torch.rand(batch_size, num_patches, generator=generator, device=device)
        mask = rand < mask_prob
        forced = F.one_hot(rand.argmin(dim=1), num_patches).bool()  # the lowest draw is always masked
        return mask | forced

    def mrm_loss(
        self,
        predicted_patch_features: torch.Tensor,
        target_patch_features: torch.Tensor,
        patch_mask: torch.Tensor,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """MSE between ``mrm_head(predicted)`` and the targets over masked patches only.

        (B, N, D), (B, N, patch_dim), patch_mask (B, N) bool with True = masked patch -> scalar.
        ``reduction='none'``: the (M,) per-patch squared errors (mean over patch_dim) of the M masked patches; their
        mean is the scalar loss.
        """
        check_tensor("predicted_patch_features", predicted_patch_features, ndim=3, last_dim=self.d_model)
        check_tensor("target_patch_features", target_patch_features, ndim=3, last_dim=self.patch_dim)
        b, n = predicted_patch_features.shape[:2]
        if target_patch_features.shape[:2] != (b, n):
            raise ValueError(
                f"target_patch_features: expected leading shape ({b}, {n}), got {tuple(target_patch_features.shape)}"
            )
        check_mask("patch_mask", patch_mask, (b, n))
        pred = self.mrm_head(predicted_patch_features[patch_mask])  # (M, patch_dim)
        err = (pred - target_patch_features[patch_mask].to(pred.dtype)).pow(2).mean(dim=-1)  # (M,)
        return _reduce(err, reduction)

    # ------------------------------------------------------------------ heads
    def forward(
        self, vision_features: torch.Tensor | None, lang_features: torch.Tensor | None, task_type: str = "mlm"
    ) -> torch.Tensor:
        """Raw head outputs, as in the chapter.

        * ``'mlm'``: lang_features (B, L, D) -> (B, L, vocab_size)
        * ``'itm'``: vision (B, Nv, D) or pooled (B, D), lang (B, L, D) or pooled (B, D) -> (B, 2) (mean pooling)
        * ``'mrm'``: vision_features (B, N, D) -> (B, N, patch_dim)
        """
        if task_type == "mlm":
            check_tensor("lang_features", lang_features, ndim=(2, 3), last_dim=self.d_model)
            return self.mlm_head(lang_features)
        if task_type == "itm":
            check_tensor("vision_features", vision_features, ndim=(2, 3), last_dim=self.d_model)
            check_tensor("lang_features", lang_features, ndim=(2, 3), last_dim=self.d_model)
            v = vision_features.mean(dim=1) if vision_features.dim() == 3 else vision_features  # (B, D)
            l = lang_features.mean(dim=1) if lang_features.dim() == 3 else lang_features  # (B, D)
            return self.itm_logits(v, l)
        if task_type == "mrm":
            check_tensor("vision_features", vision_features, ndim=(2, 3), last_dim=self.d_model)
            return self.mrm_head(vision_features)
        raise ValueError(f"task_type: expected 'mlm', 'itm' or 'mrm', got {task_type!r}")

