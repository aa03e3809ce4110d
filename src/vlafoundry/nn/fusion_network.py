"""The multimodal fusion network: vision-language(-action) tokens fused by cross-attention and a transformer,
with a per-modality output head (:class:`MultimodalFusionNetwork`)."""

from __future__ import annotations

import torch
from torch import nn

from vlafoundry.nn._checks import first_parameter
from vlafoundry.nn.attention import CrossModalAttention
from vlafoundry.nn.blocks import FFNFactory
from vlafoundry.nn.fusion_common import Seq, _batch_size, _blocks, _check_seq, _concat, _trunc_normal

__all__ = ["MultimodalFusionNetwork"]


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
