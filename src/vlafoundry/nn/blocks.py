"""Transformer blocks: a single-stream encoder block and the two-stream (vision, language) multimodal block/encoder."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from vlafoundry.nn._checks import check_mask, check_same_device, check_tensor, first_parameter
from vlafoundry.nn.attention import CrossModalAttention, FeedForward, MultiHeadAttention

__all__ = ["TransformerEncoderBlock", "MultimodalTransformerBlock", "MultimodalEncoder", "FFNFactory"]

FFNFactory = Callable[[int, int, float], nn.Module]
"""``(d_model, d_ff, dropout) -> module`` mapping (B, L, D) -> (B, L, D); e.g. a mixture of experts."""


def _accepts_mask(module: nn.Module) -> bool:
    try:
        return "mask" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


class _FFN(nn.Module):
    """Wraps the feed-forward (default :class:`FeedForward` or an ``ffn_layer`` module); forwards ``mask=`` if taken."""

    def __init__(
        self, d_model: int, d_ff: int, dropout: float, act_layer: type[nn.Module], ffn_layer: FFNFactory | None
    ) -> None:
        super().__init__()
        if ffn_layer is None:
            self.fn: nn.Module = FeedForward(d_model, d_ff, dropout, act_layer)
        else:
            self.fn = ffn_layer(d_model, d_ff, dropout)
        self.takes_mask = _accepts_mask(self.fn)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.takes_mask:
            return self.fn(x, mask=mask)
        return self.fn(x)


class TransformerEncoderBlock(nn.Module):
    """Self-attention + feed-forward block with residuals; pre-norm by default, post-norm with ``norm_first=False``.

    ``forward(x (B, L, D), mask (B, L) bool | None) -> (B, L, D)``; ``mask`` is the key padding mask (True = valid)
    and is also given to ``ffn_layer`` modules whose ``forward`` takes ``mask=`` (e.g. a mixture of experts that must
    not route padding tokens).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        norm_first: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        ffn_layer: FFNFactory | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.norm_first = norm_first
        self.attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ffn = _FFN(d_model, d_ff, dropout, act_layer, ffn_layer)
        self.norm1 = norm_layer(d_model)
        self.norm2 = norm_layer(d_model)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("x", x, ndim=3, last_dim=self.d_model, like=first_parameter(self))
        if mask is not None:
            check_mask("mask", mask, x.shape[:2])
            check_same_device(x=x, mask=mask)
        if self.norm_first:
            h = self.norm1(x)
            x = x + self.drop1(self.attn(h, h, h, key_padding_mask=mask))
            x = x + self.drop2(self.ffn(self.norm2(x), mask))
        else:
            x = self.norm1(x + self.drop1(self.attn(x, x, x, key_padding_mask=mask)))
            x = self.norm2(x + self.drop2(self.ffn(x, mask)))
        return x  # (B, L, D)


class MultimodalTransformerBlock(nn.Module):
    """One layer of a two-stream (vision, language) transformer.

    Per modality: self-attention, then cross-attention to the other modality (both directions computed from the same
    post-self-attention states), then a feed-forward, each with a residual. Pre-norm by default (``norm_first=False``
    gives post-norm).

    ``forward(visual_input (B, Lv, D), lang_input (B, Ll, D), visual_mask (B, Lv) | None, lang_mask (B, Ll) | None)
    -> (visual (B, Lv, D), lang (B, Ll, D))``

    Changes from the chapter's ``MultimodalTransformerBlock`` and why:

    * The chapter shares one self-attention, one cross-attention and one feed-forward between vision and language,
      and reuses ``norm1``/``norm2``/``norm3`` across sublayers and modalities; modalities have different statistics,
      so every modality here has its own attention, cross-attention, feed-forward and three norms.
    * The chapter passes one ``mask`` to attentions whose score matrices have different shapes (``Lv x Lv``,
      ``Ll x Ll``, ``Lv x Ll``, ``Ll x Lv``): each attention here gets the padding mask of *its key* modality.
    * The unused ``action_input`` argument is dropped (actions join through ``MultimodalFusionNetwork`` or a fusion
      module's ``extra_tokens``); pre-norm is the default because it trains stably without warm-up tricks.
    * ``ffn_layer`` lets a mixture of experts replace the feed-forward (it receives the token mask if it accepts one).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        norm_first: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        ffn_layer: FFNFactory | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.norm_first = norm_first
        self.vision_self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.lang_self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.cross_attn = CrossModalAttention(d_model, num_heads, dropout)
        self.vision_ffn = _FFN(d_model, d_ff, dropout, act_layer, ffn_layer)
        self.lang_ffn = _FFN(d_model, d_ff, dropout, act_layer, ffn_layer)
        self.vision_norm1, self.vision_norm2, self.vision_norm3 = (norm_layer(d_model) for _ in range(3))
        self.lang_norm1, self.lang_norm2, self.lang_norm3 = (norm_layer(d_model) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def _check(
        self, v: torch.Tensor, l: torch.Tensor, vm: torch.Tensor | None, lm: torch.Tensor | None
    ) -> None:
        ref = first_parameter(self)
        check_tensor("visual_input", v, ndim=3, last_dim=self.d_model, like=ref)
        check_tensor("lang_input", l, ndim=3, last_dim=self.d_model, like=ref)
        if v.shape[0] != l.shape[0]:
            raise ValueError(
                f"visual_input and lang_input: expected one batch size, got {v.shape[0]} and {l.shape[0]}"
            )
        if vm is not None:
            check_mask("visual_mask", vm, v.shape[:2])
        if lm is not None:
            check_mask("lang_mask", lm, l.shape[:2])
        check_same_device(visual_input=v, lang_input=l, visual_mask=vm, lang_mask=lm)

    def forward(
        self,
        visual_input: torch.Tensor,
        lang_input: torch.Tensor,
        visual_mask: torch.Tensor | None = None,
        lang_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(visual_input, lang_input, visual_mask, lang_mask)
        v, l, drop = visual_input, lang_input, self.dropout
        if self.norm_first:
            h = self.vision_norm1(v)
            v = v + drop(self.vision_self_attn(h, h, h, key_padding_mask=visual_mask))  # (B, Lv, D)
            h = self.lang_norm1(l)
            l = l + drop(self.lang_self_attn(h, h, h, key_padding_mask=lang_mask))  # (B, Ll, D)
            v_att, l_att = self.cross_attn(self.vision_norm2(v), self.lang_norm2(l), visual_mask, lang_mask)
            v, l = v + drop(v_att), l + drop(l_att)
            v = v + drop(self.vision_ffn(self.vision_norm3(v), visual_mask))
            l = l + drop(self.lang_ffn(self.lang_norm3(l), lang_mask))
        else:
            v = self.vision_norm1(v + drop(self.vision_self_attn(v, v, v, key_padding_mask=visual_mask)))
            l = self.lang_norm1(l + drop(self.lang_self_attn(l, l, l, key_padding_mask=lang_mask)))
            v_att, l_att = self.cross_attn(v, l, visual_mask, lang_mask)
            v, l = self.vision_norm2(v + drop(v_att)), self.lang_norm2(l + drop(l_att))
            v = self.vision_norm3(v + drop(self.vision_ffn(v, visual_mask)))
            l = self.lang_norm3(l + drop(self.lang_ffn(l, lang_mask)))
        return v, l


class MultimodalEncoder(nn.Module):
    """A stack of :class:`MultimodalTransformerBlock` with per-modality final norms (pre-norm case).

    ``forward(visual_input (B, Lv, D), lang_input (B, Ll, D), visual_mask=None, lang_mask=None)
    -> (visual (B, Lv, D), lang (B, Ll, D))``

    Changes from the chapter's ``MultimodalEncoder`` and why: one final ``LayerNorm`` shared by both modalities
    became one per modality (and none for post-norm, whose blocks already end in a norm); masks are per modality
    instead of one mask for sequences of different lengths; ``norm_first``/``norm_layer``/``act_layer``/``ffn_layer``
    pass through to the blocks.
    """

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        norm_first: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        ffn_layer: FFNFactory | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers: expected >= 1, got {num_layers}")
        self.d_model = d_model
        self.layers = nn.ModuleList(
            [
                MultimodalTransformerBlock(
                    d_model, num_heads, d_ff, dropout, norm_first, norm_layer, act_layer, ffn_layer
                )
                for _ in range(num_layers)
            ]
        )
        self.vision_norm = norm_layer(d_model) if norm_first else nn.Identity()
        self.lang_norm = norm_layer(d_model) if norm_first else nn.Identity()

    def forward(
        self,
        visual_input: torch.Tensor,
        lang_input: torch.Tensor,
        visual_mask: torch.Tensor | None = None,
        lang_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v, l = visual_input, lang_input
        for layer in self.layers:
            v, l = layer(v, l, visual_mask, lang_mask)
        return self.vision_norm(v), self.lang_norm(l)
