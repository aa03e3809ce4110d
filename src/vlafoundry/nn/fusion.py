"""Vision-language(-action) fusion modules.

Fusion contract (EarlyFusion, LateFusion, VisionLanguageFusion, FiLMFusion)::

    forward(visual_features (B, Lv, D) | None, language_features (B, Ll, D) | None,
            visual_mask (B, Lv) bool | None = None, language_mask (B, Ll) bool | None = None,
            extra_tokens (B, Le, D) | None = None, extra_mask (B, Le) bool | None = None) -> (B, D)

:class:`EarlyFusion` and :class:`LateFusion` also take pooled features ``(B, D)`` for any modality, as the chapter's
versions do (mask ``(B,)``, True = present): a pooled vector is a sequence of one token, ``x[:, None]``.

A ``None`` modality is absent for the whole batch; a mask row that is all False (or a zero-length sequence) is
absent for that sample. Either way a learned placeholder token of that modality stands in, so the output is finite
and the module works with any subset of its inputs. ``extra_tokens`` carries further modalities (proprioceptive
state, past actions) already projected to the fusion width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlafoundry.nn._checks import check_mask, check_same_device, check_tensor, first_parameter
from vlafoundry.nn.attention import CrossModalAttention
from vlafoundry.nn.blocks import FFNFactory, MultimodalEncoder, TransformerEncoderBlock

__all__ = [
    "masked_mean_pool",
    "VisionLanguageFusion",
    "EarlyFusion",
    "LateFusion",
    "FiLMFusion",
    "MultimodalFusionNetwork",
]

Seq = tuple[torch.Tensor, torch.Tensor | None]  # tokens (B, L, D), mask (B, L) bool or None (= all valid)


# ---------------------------------------------------------------------------------------------- helpers
def masked_mean_pool(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the token axis of ``x`` (B, L, D) counting only ``mask`` (B, L) True tokens -> (B, D).

    Rows with no valid token give zeros (not NaN). Padding values never reach the result, even if non-finite.
    """
    if mask is None:
        return x.mean(dim=1)
    m = mask.unsqueeze(-1)  # (B, L, 1)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)  # (B, D)
    count = m.sum(dim=1).clamp_min(1).to(x.dtype)  # (B, 1)
    return total / count


def _trunc_normal(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=0.02))


def _check_seq(
    name: str, x: torch.Tensor | None, mask: torch.Tensor | None, width: int, mask_name: str,
    like: torch.Tensor | None = None, pooled_ok: bool = False,
) -> None:
    """Validate one modality's tokens (B, L, width) and mask (B, L); ``like``: a parameter of the module.
    ``pooled_ok``: also accept pooled features (B, width) with a mask (B,)."""
    if x is None:
        if mask is not None:
            raise ValueError(f"{mask_name}: given without {name} (pass None for both, or the tensor too)")
        return
    check_tensor(name, x, ndim=(2, 3) if pooled_ok else 3, last_dim=width, like=like)
    if mask is not None:
        check_mask(mask_name, mask, x.shape[:-1])  # (B, L), or (B,) for pooled features
        check_same_device(**{name: x, mask_name: mask})


def _pooled_as_tokens(
    x: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Pooled features (B, D) -> a length-1 token sequence (B, 1, D), their mask (B,) -> (B, 1); token
    sequences (and None) pass unchanged. Inputs were validated by :func:`_check_seq`."""
    if x is None or x.dim() == 3:
        return x, mask
    return x.unsqueeze(1), None if mask is None else mask.unsqueeze(1)


def _batch_size(named: dict[str, torch.Tensor | None]) -> int:
    sizes = {k: v.shape[0] for k, v in named.items() if v is not None}
    if not sizes:
        raise ValueError(f"expected at least one of {', '.join(named)} to be a tensor, got all None")
    if len({int(n) for n in sizes.values()}) > 1:  # by value: under ONNX tracing sizes are 0-d tensors
        raise ValueError(f"expected one batch size for all inputs, got {sizes}")
    return next(iter(sizes.values()))  # as given: a traced size keeps the batch axis dynamic


def _token_inputs(module: nn.Module, d: int, *streams: torch.Tensor | None) -> tuple[tuple[Any, ...], int]:
    """Checked (vision, mask, language, mask, extra, mask) streams, pooled (B, D) ones read as one token each,
    and their common batch size."""
    names = (("visual_features", "visual_mask"), ("language_features", "language_mask"), ("extra_tokens", "extra_mask"))
    out: list[Any] = []
    for (name, mask_name), x, mask in zip(names, streams[0::2], streams[1::2], strict=True):
        _check_seq(name, x, mask, d, mask_name, first_parameter(module), pooled_ok=True)
        out += list(_pooled_as_tokens(x, mask))  # (B, L, D), (B, L)
    b = _batch_size({name: x for (name, _), x in zip(names, out[0::2], strict=True)})
    return tuple(out), b


def _with_placeholder(
    x: torch.Tensor | None, mask: torch.Tensor | None, token: torch.Tensor, batch: int
) -> Seq:
    """Return ``x`` with ``token`` (D,) appended, valid exactly for the samples where the modality is absent."""
    if x is not None and x.shape[1] > 0 and mask is None:
        return x, None  # present for every sample: no placeholder needed
    ref = x if x is not None else token
    ph = token.to(ref.dtype).expand(batch, 1, token.shape[-1])  # (B, 1, D)
    if x is None or x.shape[1] == 0:
        return ph, torch.ones(batch, 1, dtype=torch.bool, device=token.device)
    absent = ~mask.any(dim=1, keepdim=True)  # (B, 1)
    return torch.cat([x, ph], dim=1), torch.cat([mask, absent], dim=1)


def _concat(seqs: list[Seq]) -> Seq:
    """Concatenate token sequences along L; the mask is None only if every part is fully valid."""
    x = torch.cat([s[0] for s in seqs], dim=1)
    if all(s[1] is None for s in seqs):
        return x, None
    masks = [
        s[1] if s[1] is not None else torch.ones(s[0].shape[:2], dtype=torch.bool, device=s[0].device) for s in seqs
    ]
    return x, torch.cat(masks, dim=1)


def _blocks(
    d_model: int,
    num_layers: int,
    num_heads: int,
    d_ff: int,
    dropout: float,
    norm_first: bool,
    norm_layer: type[nn.Module],
    act_layer: type[nn.Module],
    ffn_layer: FFNFactory | None,
) -> nn.ModuleList:
    return nn.ModuleList(
        [
            TransformerEncoderBlock(d_model, num_heads, d_ff, dropout, norm_first, norm_layer, act_layer, ffn_layer)
            for _ in range(num_layers)
        ]
    )


# ---------------------------------------------------------------------------------------------- fusion modules
class VisionLanguageFusion(nn.Module):
    """Cross-attention fusion: a two-stream :class:`~vlafoundry.nn.blocks.MultimodalEncoder`, pooled.

    Vision features ``(B, Lv, vision_dim)`` and language features ``(B, Ll, lang_dim)`` are projected to
    ``fusion_dim``; ``extra_tokens`` ``(B, Le, fusion_dim)`` join the vision stream (with a learned type embedding
    telling them apart from image tokens). After ``num_layers`` multimodal blocks (self-attention, cross-attention in
    both directions, feed-forward), each stream is masked-mean pooled and ``[vision, language]`` is projected to
    ``fusion_dim``: output ``(B, fusion_dim)``.

    Changes from the chapter's ``VisionLanguageFusion`` and why:

    * The chapter uses one cross-attention module for both directions (vision->language and language->vision share
      weights) and then concatenates the two token sequences along the feature axis, which fails whenever
      ``Lv != Ll``; here each direction has its own weights and each stream is pooled (ignoring padding) before
      concatenation, so lengths may differ.
    * No residual path: the chapter's fused vision tokens are built only from language values, losing the image
      content; the multimodal blocks keep residual streams per modality.
    * Padding masks, absent modalities (learned placeholders), extra modality tokens and an injectable ``ffn_layer``
      (e.g. a mixture of experts) are supported; the chapter has none of them.
    """

    def __init__(
        self,
        vision_dim: int,
        lang_dim: int,
        fusion_dim: int,
        num_layers: int = 1,
        num_heads: int = 8,
        d_ff: int | None = None,
        dropout: float = 0.1,
        norm_first: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        ffn_layer: FFNFactory | None = None,
    ) -> None:
        super().__init__()
        self.vision_dim, self.lang_dim, self.fusion_dim = vision_dim, lang_dim, fusion_dim
        self.vision_proj = nn.Linear(vision_dim, fusion_dim)
        self.lang_proj = nn.Linear(lang_dim, fusion_dim)
        self.vision_placeholder = _trunc_normal(fusion_dim)
        self.lang_placeholder = _trunc_normal(fusion_dim)
        self.stream_type_embed = _trunc_normal(2, fusion_dim)  # 0: image tokens, 1: extra tokens (vision stream)
        self.encoder = MultimodalEncoder(
            fusion_dim, num_layers, num_heads, d_ff or 4 * fusion_dim, dropout, norm_first, norm_layer, act_layer,
            ffn_layer,
        )
        self.fusion_proj = nn.Linear(fusion_dim * 2, fusion_dim)

    def forward(
        self,
        visual_features: torch.Tensor | None,
        language_features: torch.Tensor | None,
        visual_mask: torch.Tensor | None = None,
        language_mask: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
        extra_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_seq("visual_features", visual_features, visual_mask, self.vision_dim, "visual_mask", first_parameter(self))
        _check_seq("language_features", language_features, language_mask, self.lang_dim, "language_mask", first_parameter(self))
        _check_seq("extra_tokens", extra_tokens, extra_mask, self.fusion_dim, "extra_mask", first_parameter(self))
        b = _batch_size(
            {"visual_features": visual_features, "language_features": language_features, "extra_tokens": extra_tokens}
        )
        v = None if visual_features is None else self.vision_proj(visual_features) + self.stream_type_embed[0]
        parts = [_with_placeholder(v, visual_mask, self.vision_placeholder + self.stream_type_embed[0], b)]
        if extra_tokens is not None:
            parts.append((extra_tokens + self.stream_type_embed[1], extra_mask))
        v, v_mask = _concat(parts)  # (B, Lv', F)
        l = None if language_features is None else self.lang_proj(language_features)
        l, l_mask = _with_placeholder(l, language_mask, self.lang_placeholder, b)  # (B, Ll', F)
        v, l = self.encoder(v, l, v_mask, l_mask)
        pooled = torch.cat([masked_mean_pool(v, v_mask), masked_mean_pool(l, l_mask)], dim=-1)  # (B, 2F)
        return self.fusion_proj(pooled)  # (B, F)


class EarlyFusion(nn.Module):
    """Early fusion: all tokens of all modalities in one transformer, read out through a learned CLS token.

    Vision and language tokens are projected (per-modality ``Linear``), every token gets a learned modality-type
    embedding (vision, language, extra), and ``[CLS, vision, language, extra]`` goes through ``num_layers``
    :class:`~vlafoundry.nn.blocks.TransformerEncoderBlock` with the concatenated padding mask. Output: the final CLS
    token ``(B, D)``.

    Changes from the chapter's ``EarlyFusion`` and why: the chapter concatenates vision and language along the
    *feature* axis, which needs ``Lv == Ll`` and pairs unrelated tokens position by position; here tokens are
    concatenated along the sequence axis with modality-type embeddings so any lengths work and every token can
    attend to every other. The chapter's per-token ReLU MLP is replaced by self-attention blocks (its MLP never mixes
    tokens), padding is masked, absent modalities get learned placeholders, and ``ffn_layer`` is injectable.
    Pooled ``(B, D)`` inputs, the chapter's use, are accepted and read as one token each (mask ``(B,)``).
    """

    def __init__(
        self,
        feature_dim: int,
        num_layers: int = 2,
        num_heads: int = 8,
        d_ff: int | None = None,
        dropout: float = 0.1,
        norm_first: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        ffn_layer: FFNFactory | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        self.feature_dim = feature_dim
        self.visual_proj = nn.Linear(feature_dim, feature_dim)
        self.language_proj = nn.Linear(feature_dim, feature_dim)
        self.type_embed = _trunc_normal(3, feature_dim)  # 0: vision, 1: language, 2: extra
        self.cls_token = _trunc_normal(1, 1, feature_dim)
        self.visual_placeholder = _trunc_normal(feature_dim)
        self.language_placeholder = _trunc_normal(feature_dim)
        self.layers = _blocks(
            feature_dim, num_layers, num_heads, d_ff or 4 * feature_dim, dropout, norm_first, norm_layer, act_layer,
            ffn_layer,
        )
        self.norm = norm_layer(feature_dim) if norm_first else nn.Identity()

    def forward(
        self,
        visual_features: torch.Tensor | None,
        language_features: torch.Tensor | None,
        visual_mask: torch.Tensor | None = None,
        language_mask: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
        extra_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        (visual_features, visual_mask, language_features, language_mask, extra_tokens, extra_mask), b = _token_inputs(
            self, self.feature_dim, visual_features, visual_mask, language_features, language_mask, extra_tokens,
            extra_mask)
        v = None if visual_features is None else self.visual_proj(visual_features)
        l = None if language_features is None else self.language_proj(language_features)
        v, v_mask = _with_placeholder(v, visual_mask, self.visual_placeholder, b)
        l, l_mask = _with_placeholder(l, language_mask, self.language_placeholder, b)
        cls = self.cls_token.to(v.dtype).expand(b, 1, self.feature_dim)
        parts: list[Seq] = [(cls, None), (v + self.type_embed[0], v_mask), (l + self.type_embed[1], l_mask)]
        if extra_tokens is not None:
            parts.append((extra_tokens + self.type_embed[2], extra_mask))
        x, mask = _concat(parts)  # (B, 1 + Lv' + Ll' + Le, D)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x[:, 0])  # (B, D)


class _ModalityEncoder(nn.Module):
    """Per-modality token encoder of :class:`LateFusion`: ``Linear`` then ``num_layers`` transformer blocks."""

    def __init__(self, d_model: int, num_layers: int, block_args: dict) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.layers = _blocks(d_model, num_layers, **block_args)
        norm_first, norm_layer = block_args["norm_first"], block_args["norm_layer"]
        self.norm = norm_layer(d_model) if (norm_first and num_layers > 0) else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class LateFusion(nn.Module):
    """Late fusion: encode each modality on its own, pool each, then combine the pooled vectors with an MLP.

    Vision, language and extra tokens each pass through their own encoder (a ``Linear`` followed by ``num_layers``
    transformer blocks; ``num_layers=0`` is the chapter's token-wise ``Linear``), are masked-mean pooled, and
    ``[vision, language, extra]`` ``(B, 3D)`` goes through ``Linear -> act -> dropout -> Linear`` to ``(B, D)``. An
    absent modality (including no ``extra_tokens``) is represented by its encoded learned placeholder.

    Changes from the chapter's ``LateFusion`` and why: the chapter concatenates the encoded token sequences along
    the feature axis, which fails when ``Lv != Ll`` (and is not late fusion: it mixes per position); here each
    modality is pooled first, ignoring padding. A hidden layer makes the combiner an MLP rather than one ``Linear``;
    absent modalities, extra tokens and ``ffn_layer`` are supported. Pooled ``(B, D)`` inputs, what the chapter's
    version was written for, are accepted and read as one token each (mask ``(B,)``): the encoder then sees a single
    token and the pooling returns it, as the chapter's per-vector ``Linear`` would.
    """

    def __init__(
        self,
        feature_dim: int,
        num_layers: int = 1,
        num_heads: int = 8,
        d_ff: int | None = None,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        norm_first: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        ffn_layer: FFNFactory | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers: expected >= 0, got {num_layers}")
        self.feature_dim = feature_dim
        block_args = dict(
            num_heads=num_heads, d_ff=d_ff or 4 * feature_dim, dropout=dropout, norm_first=norm_first,
            norm_layer=norm_layer, act_layer=act_layer, ffn_layer=ffn_layer,
        )
        self.visual_encoder = _ModalityEncoder(feature_dim, num_layers, block_args)
        self.language_encoder = _ModalityEncoder(feature_dim, num_layers, block_args)
        self.extra_encoder = _ModalityEncoder(feature_dim, num_layers, block_args)
        self.placeholders = _trunc_normal(3, feature_dim)  # 0: vision, 1: language, 2: extra
        hidden = hidden_dim or feature_dim
        self.fusion_layer = nn.Sequential(
            nn.Linear(3 * feature_dim, hidden), act_layer(), nn.Dropout(dropout), nn.Linear(hidden, feature_dim)
        )

    def forward(
        self,
        visual_features: torch.Tensor | None,
        language_features: torch.Tensor | None,
        visual_mask: torch.Tensor | None = None,
        language_mask: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
        extra_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        (visual_features, visual_mask, language_features, language_mask, extra_tokens, extra_mask), b = _token_inputs(
            self, self.feature_dim, visual_features, visual_mask, language_features, language_mask, extra_tokens,
            extra_mask)
        pooled = []
        streams = [
            (visual_features, visual_mask, self.visual_encoder),
            (language_features, language_mask, self.language_encoder),
            (extra_tokens, extra_mask, self.extra_encoder),
        ]
        for i, (x, mask, encoder) in enumerate(streams):
            # the placeholder enters before the encoder, so a missing modality has a learned (encoded) summary
            x, mask = _with_placeholder(x, mask, self.placeholders[i], b)
            pooled.append(masked_mean_pool(encoder(x, mask), mask))  # (B, D)
        return self.fusion_layer(torch.cat(pooled, dim=-1))  # (B, D)


class FiLMFusion(nn.Module):
    """FiLM fusion: pooled language conditions the visual token stream through feature-wise affine modulation.

    The language tokens are masked-mean pooled and normalised; a ``Linear`` produces, for each of ``num_layers``
    residual MLP layers, ``gamma`` and ``beta`` ``(B, hidden)``. Each layer computes
    ``x + fc2(dropout(act((1 + gamma) * fc1(norm(x)) + beta)))`` on every visual (and extra) token; the stream is then
    masked-mean pooled and normalised: ``(B, D)``. Absent vision or language use learned placeholders.

    Not in the chapter (it names FiLM-style conditioning only in passing); written for the fusion comparison.
    ``(1 + gamma)`` keeps the modulation near identity at initialisation; extra tokens carry a type embedding so
    the token-wise layers can tell them from image tokens.
    """

    def __init__(
        self,
        feature_dim: int,
        num_layers: int = 2,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        self.feature_dim = feature_dim
        self.num_layers = num_layers
        self.hidden_dim = hidden = hidden_dim or 2 * feature_dim
        self.visual_placeholder = _trunc_normal(feature_dim)
        self.language_placeholder = _trunc_normal(feature_dim)
        self.type_embed = _trunc_normal(2, feature_dim)  # 0: vision, 1: extra
        self.cond_norm = norm_layer(feature_dim)
        self.film_generator = nn.Linear(feature_dim, num_layers * 2 * hidden)
        self.norms = nn.ModuleList([norm_layer(feature_dim) for _ in range(num_layers)])
        self.fc1 = nn.ModuleList([nn.Linear(feature_dim, hidden) for _ in range(num_layers)])
        self.fc2 = nn.ModuleList([nn.Linear(hidden, feature_dim) for _ in range(num_layers)])
        self.act = act_layer()
        self.dropout = nn.Dropout(dropout)
        self.out_norm = norm_layer(feature_dim)

    def forward(
        self,
        visual_features: torch.Tensor | None,
        language_features: torch.Tensor | None,
        visual_mask: torch.Tensor | None = None,
        language_mask: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
        extra_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        d = self.feature_dim
        _check_seq("visual_features", visual_features, visual_mask, d, "visual_mask", first_parameter(self))
        _check_seq("language_features", language_features, language_mask, d, "language_mask", first_parameter(self))
        _check_seq("extra_tokens", extra_tokens, extra_mask, d, "extra_mask", first_parameter(self))
        b = _batch_size(
            {"visual_features": visual_features, "language_features": language_features, "extra_tokens": extra_tokens}
        )
        l, l_mask = _with_placeholder(language_features, language_mask, self.language_placeholder, b)
        cond = self.cond_norm(masked_mean_pool(l, l_mask))  # (B, D)
        film = self.film_generator(cond).view(b, self.num_layers, 2, 1, self.hidden_dim)  # (B, N, 2, 1, hidden)
        v, v_mask = _with_placeholder(visual_features, visual_mask, self.visual_placeholder, b)
        parts: list[Seq] = [(v + self.type_embed[0], v_mask)]
        if extra_tokens is not None:
            parts.append((extra_tokens + self.type_embed[1], extra_mask))
        x, mask = _concat(parts)  # (B, L, D)
        for i in range(self.num_layers):
            gamma, beta = film[:, i, 0], film[:, i, 1]  # (B, 1, hidden)
            h = self.fc1[i](self.norms[i](x)) * (1.0 + gamma) + beta
            x = x + self.fc2[i](self.dropout(self.act(h)))
        return self.out_norm(masked_mean_pool(x, mask))  # (B, D)


class MultimodalFusionNetwork(nn.Module):
    """Vision-language(-action) token fusion with per-modality output heads.

    ``forward(vision_input (B, Lv, vision_dim), lang_input (B, Ll, lang_dim), action_input (B, La, action_dim) | None,
    vision_mask=None, lang_mask=None, action_mask=None)`` returns ``(vision_output (B, Lv, vision_dim),
    lang_output (B, Ll, lang_dim))`` or, with actions, also ``action_output (B, La, action_dim)``.

    Inputs are projected to ``d_model``; vision and language exchange information through
    :class:`~vlafoundry.nn.attention.CrossModalAttention` (with residuals); all tokens, plus the encoded actions, are
    concatenated with a learned modality-type embedding and pass through ``num_layers``
    :class:`~vlafoundry.nn.blocks.TransformerEncoderBlock` under the concatenated padding mask; each modality's slice
    is decoded by its head.

    Changes from the chapter's ``MultimodalFusionNetwork`` and why:

    * No masks anywhere in the chapter: padded tokens were attended to by every other token; here each modality's
      mask reaches the cross-attention (key side) and the fusion transformer (concatenated).
    * The chapter's cross-attention output *replaces* the tokens (vision tokens become mixtures of language values
      only); a residual keeps each modality's own content.
    * ``nn.TransformerEncoder`` with hard-coded 8 heads, 4 layers, sequence-first transposes and post-norm became
      ``num_heads``/``num_layers`` arguments, batch-first pre-norm blocks (``norm_first`` to change), and an injectable
      ``ffn_layer``; a modality-type embedding tells the fusion transformer which token came from where.
    """

    def __init__(
        self,
        vision_dim: int,
        lang_dim: int,
        action_dim: int,
        d_model: int = 768,
        num_heads: int = 8,
        num_layers: int = 2,
        d_ff: int | None = None,
        dropout: float = 0.1,
        norm_first: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        ffn_layer: FFNFactory | None = None,
    ) -> None:
        super().__init__()
        self.vision_dim, self.lang_dim, self.action_dim, self.d_model = vision_dim, lang_dim, action_dim, d_model
        self.norm_first = norm_first
        self.vision_encoder = nn.Linear(vision_dim, d_model)
        self.lang_encoder = nn.Linear(lang_dim, d_model)
        self.action_encoder = nn.Linear(action_dim, d_model)
        self.cross_modal_attention = CrossModalAttention(d_model, num_heads, dropout)
        self.vision_cross_norm = norm_layer(d_model)
        self.lang_cross_norm = norm_layer(d_model)
        self.cross_dropout = nn.Dropout(dropout)
        self.type_embed = _trunc_normal(3, d_model)  # 0: vision, 1: language, 2: action
        self.fusion_transformer = _blocks(
            d_model, num_layers, num_heads, d_ff or 4 * d_model, dropout, norm_first, norm_layer, act_layer, ffn_layer
        )
        self.fusion_norm = norm_layer(d_model) if norm_first else nn.Identity()
        self.vision_head = nn.Linear(d_model, vision_dim)
        self.lang_head = nn.Linear(d_model, lang_dim)
        self.action_head = nn.Linear(d_model, action_dim)

    def _cross(
        self, v: torch.Tensor, l: torch.Tensor, v_mask: torch.Tensor | None, l_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.norm_first:
            v_att, l_att = self.cross_modal_attention(
                self.vision_cross_norm(v), self.lang_cross_norm(l), v_mask, l_mask
            )
            return v + self.cross_dropout(v_att), l + self.cross_dropout(l_att)
        v_att, l_att = self.cross_modal_attention(v, l, v_mask, l_mask)
        v = self.vision_cross_norm(v + self.cross_dropout(v_att))
        return v, self.lang_cross_norm(l + self.cross_dropout(l_att))

    def forward(
        self,
        vision_input: torch.Tensor,
        lang_input: torch.Tensor,
        action_input: torch.Tensor | None = None,
        vision_mask: torch.Tensor | None = None,
        lang_mask: torch.Tensor | None = None,
        action_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        _check_seq("vision_input", vision_input, vision_mask, self.vision_dim, "vision_mask", first_parameter(self))
        _check_seq("lang_input", lang_input, lang_mask, self.lang_dim, "lang_mask", first_parameter(self))
        _check_seq("action_input", action_input, action_mask, self.action_dim, "action_mask", first_parameter(self))
        _batch_size({"vision_input": vision_input, "lang_input": lang_input, "action_input": action_input})
        lv, ll = vision_input.shape[1], lang_input.shape[1]
        v, l = self._cross(self.vision_encoder(vision_input), self.lang_encoder(lang_input), vision_mask, lang_mask)
        parts: list[Seq] = [(v + self.type_embed[0], vision_mask), (l + self.type_embed[1], lang_mask)]
        if action_input is not None:
            parts.append((self.action_encoder(action_input) + self.type_embed[2], action_mask))
        x, mask = _concat(parts)  # (B, Lv + Ll [+ La], d_model)
        for layer in self.fusion_transformer:
            x = layer(x, mask)
        x = self.fusion_norm(x)
        vision_output = self.vision_head(x[:, :lv])  # (B, Lv, vision_dim)
        lang_output = self.lang_head(x[:, lv : lv + ll])  # (B, Ll, lang_dim)
        if action_input is None:
            return vision_output, lang_output
        return vision_output, lang_output, self.action_head(x[:, lv + ll :])  # (B, La, action_dim)
