"""Fusions where one modality conditions the other: :class:`VisionLanguageFusion` (cross-attention in both
directions, pooled) and :class:`FiLMFusion` (pooled language modulates the visual tokens). Both follow the fusion
contract of :mod:`vlafoundry.nn.fusion`."""

from __future__ import annotations

import torch
from torch import nn

from vlafoundry.nn._checks import first_parameter
from vlafoundry.nn.blocks import FFNFactory, MultimodalEncoder
from vlafoundry.nn.fusion_common import (
    Seq,
    _batch_size,
    _check_seq,
    _concat,
    _trunc_normal,
    _with_placeholder,
    masked_mean_pool,
)

__all__ = ["VisionLanguageFusion", "FiLMFusion"]


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
