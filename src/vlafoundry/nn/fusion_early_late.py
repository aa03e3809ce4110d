"""Early and late fusion: :class:`EarlyFusion` (all modalities' tokens in one transformer, read out through a CLS
token) and :class:`LateFusion` (each modality encoded and pooled on its own, then combined by an MLP). Both follow
the fusion contract of :mod:`vlafoundry.nn.fusion`."""

from __future__ import annotations

import torch
from torch import nn

from vlafoundry.nn.blocks import FFNFactory
from vlafoundry.nn.fusion_common import (
    Seq,
    _blocks,
    _concat,
    _token_inputs,
    _trunc_normal,
    _with_placeholder,
    masked_mean_pool,
)

__all__ = ["EarlyFusion", "LateFusion"]


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
