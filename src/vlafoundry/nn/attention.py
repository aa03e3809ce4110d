"""Attention layers: multi-head attention, the transformer feed-forward and bidirectional cross-modal attention.

Mask convention (all of vlafoundry): boolean, ``True`` = valid token / may attend, ``False`` = padding / blocked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlafoundry.nn._checks import check_mask, check_same_device, check_tensor, first_parameter

__all__ = ["MultiHeadAttention", "FeedForward", "CrossModalAttention"]


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention, batch first, built on ``F.scaled_dot_product_attention``.

    ``forward(query (B, Lq, D), key (B, Lk, D), value (B, Lk, D), mask=None, key_padding_mask=None) -> (B, Lq, D)``

    * ``mask``: True = may attend, shape ``(Lq, Lk)``, ``(B, Lq, Lk)`` or ``(B, H, Lq, Lk)``, where every
      dimension but ``Lk`` may also be 1 and is then broadcast: the chapter's and common shapes ``(B, 1, Lq, Lk)``
      (one mask for all heads), ``(B, 1, 1, Lk)`` (padding, one row for all queries), ``(B, 1, Lk)`` or ``(1, Lk)``.
      Boolean, or an integer 0/1 tensor with the chapter's meaning (its ``masked_fill(mask == 0, -inf)``: nonzero =
      may attend, 0 = blocked). Floating-point masks are refused: PyTorch's float masks are *additive* (0 = attend,
      ``-inf`` = blocked), the opposite reading of a 0/1 mask, so neither can be assumed.
    * ``key_padding_mask``: bool ``(B, Lk)``, True = valid key.

    Changes from the chapter's ``MultiHeadAttention`` and why:

    * The chapter materialises the ``(B, H, Lq, Lk)`` score and softmax tensors (matmul, softmax, matmul) and keeps
      them for backward; this layer calls PyTorch's fused SDPA kernel (flash / memory-efficient on CPU and GPU), which
      is faster and stores ``O(B * H * L)`` instead of ``O(B * H * L^2)`` activations. With no mask the unmasked fast
      path is used.
    * The chapter fills masked scores with ``-inf``, so a query with nothing to attend to (a fully padded sample)
      produces ``NaN`` that poisons the whole batch through the loss. Here such a query row returns exactly zeros in
      the forward pass (after the output projection too: it adds nothing to a residual stream) and has finite, zero
      gradients.
    * The chapter has no key padding mask and accepts masks of any shape silently (a wrong one broadcasts into a
      wrong result or fails deep inside ``masked_fill``); here masks are validated (bool or integer, the shapes
      above) together with rank, width, dtype and device of the inputs, raising ``ValueError`` naming expected and
      found shapes.
    * A state dict of the chapter's module (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) loads into this one:
      a load pre-hook packs the three projections into ``in_proj_weight`` / ``in_proj_bias``.
    * Self-attention (``query is key is value``) uses one packed ``(3D, D)`` in-projection matmul, like
      ``torch.nn.MultiheadAttention``; ``key is value`` uses one packed ``(2D, D)`` matmul. Parameters are named as in
      ``torch.nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), so its ``state_dict``
      loads directly into this module.
    * Attention dropout is applied only in training mode (the chapter's ``nn.Dropout`` does that too, but the fused
      kernel needs the probability passed explicitly).

    Set ``record_attention = True`` to have ``forward`` store the attention weights ``(B, H, Lq, Lk)``, detached
    and before dropout, in ``last_attention`` (computed by an extra explicit softmax; meant for attention maps).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.1, bias: bool = True) -> None:
        super().__init__()
        if d_model <= 0 or num_heads <= 0 or d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be a positive multiple of num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = float(dropout)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model)) if bias else None
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.record_attention: bool = False
        self.last_attention: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d = self.d_model
        for i in range(3):  # Xavier on each (D, D) block: fan computed per projection, not on the packed matrix
            nn.init.xavier_uniform_(self.in_proj_weight[i * d : (i + 1) * d])
        nn.init.xavier_uniform_(self.out_proj.weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, dropout={self.dropout}"

    def _load_from_state_dict(
        self, state_dict: dict[str, torch.Tensor], prefix: str, local_metadata: dict, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        """Also accept the chapter's layout: separate ``q_proj``/``k_proj``/``v_proj`` ``Linear`` layers are packed
        into ``in_proj_weight`` (rows q, k, v, as the chapter's projections compute them) and ``in_proj_bias``
        (when this module has biases; otherwise the chapter's biases stay unexpected keys). ``out_proj`` has the
        same name and layout in both. Our own and ``torch.nn.MultiheadAttention`` state dicts load unchanged."""
        names = [f"{prefix}{p}_proj.weight" for p in "qkv"]
        if all(n in state_dict for n in names) and f"{prefix}in_proj_weight" not in state_dict:
            state_dict[f"{prefix}in_proj_weight"] = torch.cat([state_dict.pop(n) for n in names], dim=0)  # (3D, D)
            biases = [f"{prefix}{p}_proj.bias" for p in "qkv"]
            if self.in_proj_bias is not None and all(n in state_dict for n in biases):
                state_dict[f"{prefix}in_proj_bias"] = torch.cat([state_dict.pop(n) for n in biases], dim=0)  # (3D,)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ helpers
    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """In-projections, packed where inputs are shared. Returns q, k, v as (B, H, L, hd)."""
        d, w, bias = self.d_model, self.in_proj_weight, self.in_proj_bias
        if query is key and key is value:
            b, n, _ = query.shape
            qkv = F.linear(query, w, bias)  # (B, L, 3D)
            qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
            q, k, v = qkv.unbind(0)  # views; backward is one stack (indexing would zero-fill 3 full-size buffers)
            return q, k, v
        b_q = b_kv = None
        if bias is not None:
            b_q, b_kv = bias[:d], bias[d:]
        q = self._split_heads(F.linear(query, w[:d], b_q))
        if key is value:
            b, n, _ = key.shape
            kv = F.linear(key, w[d:], b_kv)  # (B, Lk, 2D)
            kv = kv.view(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (2, B, H, Lk, hd)
            k, v = kv.unbind(0)
            return q, k, v
        b_k = b_v = None
        if bias is not None:
            b_k, b_v = bias[d : 2 * d], bias[2 * d :]
        k = self._split_heads(F.linear(key, w[d : 2 * d], b_k))
        v = self._split_heads(F.linear(value, w[2 * d :], b_v))
        return q, k, v

    def _check_inputs(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Validate the inputs; return ``mask`` as a bool tensor (or None)."""
        ref = self.out_proj.weight
        dev = ref.device
        check_tensor("query", query, ndim=3, last_dim=self.d_model, device=dev, like=ref)
        if key is not query:
            check_tensor("key", key, ndim=3, last_dim=self.d_model, device=dev)
        if value is not key:
            check_tensor("value", value, ndim=3, last_dim=self.d_model, device=dev)
        if not (query.dtype == key.dtype == value.dtype):
            raise ValueError(
                f"query, key, value: expected one dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
            )
        b, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        if key.shape[0] != b or value.shape[0] != b:
            raise ValueError(
                f"key/value: expected batch size {b} (from query), got {key.shape[0]} and {value.shape[0]}"
            )
        if value.shape[1] != lk:
            raise ValueError(f"value: expected length {lk} (key length), got shape {tuple(value.shape)}")
        if key_padding_mask is not None:
            check_mask("key_padding_mask", key_padding_mask, (b, lk))
        if mask is not None:
            mask = self._check_mask(mask, b, lq, lk)
        check_same_device(query=query, key=key, value=value, mask=mask, key_padding_mask=key_padding_mask)
        return mask

    def _check_mask(self, mask: object, b: int, lq: int, lk: int) -> torch.Tensor:
        """Validate ``mask`` (see the class docstring) and return it as a bool tensor (True = may attend)."""
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"mask: expected a boolean torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            if mask.is_floating_point() or mask.is_complex():
                raise ValueError(
                    f"mask: expected dtype torch.bool (True = may attend) or an integer 0/1 mask, got {mask.dtype} "
                    "(a float mask is ambiguous: additive in PyTorch, 0/1 in the chapter; pass mask != 0 or mask == 0)"
                )
            mask = mask != 0  # the chapter's convention: masked_fill(mask == 0, -inf)
        full = {2: (lq, lk), 3: (b, lq, lk), 4: (b, self.num_heads, lq, lk)}
        names = {2: "(Lq, Lk)", 3: "(B, Lq, Lk)", 4: "(B, H, Lq, Lk)"}
        if mask.dim() not in full:
            raise ValueError(
                f"mask: expected shape (Lq, Lk)={full[2]}, (B, Lq, Lk)={full[3]} or (B, H, Lq, Lk)={full[4]} "
                f"(any dimension but Lk may be 1), got {tuple(mask.shape)}"
            )
        want = full[mask.dim()]
        if mask.shape[-1] != lk or any(m not in (1, w) for m, w in zip(mask.shape[:-1], want[:-1])):
            raise ValueError(
                f"mask: expected shape {want} {names[mask.dim()]} (any dimension but Lk may be 1), "
                f"got {tuple(mask.shape)}"
            )
        return mask

    def _combine_masks(
        self, mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge both masks into one broadcastable (B|1, H|1, Lq|1, Lk) bool mask (``mask`` already validated, any
        of its dimensions but Lk possibly 1).

        Returns ``(attn_mask, row_ok)``: ``row_ok`` (same leading dims, last dim 1) is False for query rows that
        may attend to no key; those rows are opened to every key in ``attn_mask`` (so no kernel ever sees an empty
        softmax row and gradients stay finite) and zeroed afterwards by the caller.
        """
        combined: torch.Tensor | None = None
        if mask is not None:
            if mask.dim() == 2:
                combined = mask[None, None]  # (1, 1, Lq, Lk)
            elif mask.dim() == 3:
                combined = mask[:, None]  # (B, 1, Lq, Lk)
            else:
                combined = mask  # (B, H, Lq, Lk)
        if key_padding_mask is not None:
            kpm = key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
            combined = kpm if combined is None else combined & kpm
        assert combined is not None
        row_ok = combined.any(dim=-1, keepdim=True)  # (B|1, H|1, Lq|1, 1)
        return combined | ~row_ok, row_ok

    @torch.no_grad()
    def _attention_weights(
        self, q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None, row_ok: torch.Tensor | None
    ) -> torch.Tensor:
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, H, Lq, Lk)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        if row_ok is not None:
            weights = weights.masked_fill(~row_ok, 0.0)
        return weights.detach()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        mask = self._check_inputs(query, key, value, mask, key_padding_mask)
        b, lq, _ = query.shape
        q, k, v = self._project(query, key, value)  # (B, H, L*, hd)
        p = self.dropout if self.training else 0.0
        if mask is None and key_padding_mask is None:
            attn_mask = row_ok = None
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, Lq, hd)
        else:
            attn_mask, row_ok = self._combine_masks(mask, key_padding_mask)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
            if row_ok.shape[1] > 1:  # per-head mask: a head may be empty while others are not
                out = out.masked_fill(~row_ok, 0.0)
        if self.record_attention:
            self.last_attention = self._attention_weights(q, k, attn_mask, row_ok).expand(
                b, self.num_heads, lq, k.shape[2]
            )
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, self.d_model))  # (B, Lq, D)
        if row_ok is not None:
            query_ok = row_ok.any(dim=1)  # (B|1, Lq|1, 1): False where every head had nothing to attend to
            out = out.masked_fill(~query_ok, 0.0)
        return out


class FeedForward(nn.Module):
    """Position-wise transformer MLP: ``Linear(D, d_ff) -> act -> dropout -> Linear(d_ff, D)``.

    Same computation as the chapter's ``FeedForward``; the activation is injectable (``act_layer``, timm style)
    and inputs are validated.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.1, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.d_model = d_model
        self.linear1 = nn.Linear(d_model, d_ff)
        self.activation = act_layer()
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, last_dim=self.d_model, device=self.linear1.weight.device)
        return self.linear2(self.dropout(self.activation(self.linear1(x))))  # (..., D)


class CrossModalAttention(nn.Module):
    """Bidirectional cross-attention between vision and language token sequences.

    ``forward(vision_features (B, Lv, D), lang_features (B, Ll, D), vision_mask=None, lang_mask=None)
    -> (vision_attended (B, Lv, D), lang_attended (B, Ll, D))``: vision queries attend to language keys
    (masked by ``lang_mask``) and language queries attend to vision keys (masked by ``vision_mask``).

    Changes from the chapter's ``CrossModalAttention`` and why:

    * The chapter projects vision queries with ``vision_q`` but reads language keys through ``lang_k`` of the other
      direction and shares one ``out_proj`` for both outputs; here each direction is a complete
      :class:`MultiHeadAttention` (own q/k/v and output projections): ``vision_from_lang`` and ``lang_from_vision``.
    * The chapter passes one ``attention_mask`` to both directions, whose score tensors have shapes
      ``(Lv, Ll)`` and ``(Ll, Lv)``: wrong (or a crash) as soon as ``Lv != Ll``. Each direction here receives the
      padding mask of *its key* modality.
    * Fully padded samples give zeros instead of NaN, and attention runs on the fused SDPA kernel (see
      :class:`MultiHeadAttention`).
    """

    def __init__(self, d_model: int, num_heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_heads = num_heads
        self.vision_from_lang = MultiHeadAttention(d_model, num_heads, dropout)  # vision queries, language keys
        self.lang_from_vision = MultiHeadAttention(d_model, num_heads, dropout)  # language queries, vision keys

    def forward(
        self,
        vision_features: torch.Tensor,
        lang_features: torch.Tensor,
        vision_mask: torch.Tensor | None = None,
        lang_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ref = first_parameter(self)
        check_tensor("vision_features", vision_features, ndim=3, last_dim=self.d_model, like=ref)
        check_tensor("lang_features", lang_features, ndim=3, last_dim=self.d_model, like=ref)
        if vision_features.shape[0] != lang_features.shape[0]:
            raise ValueError(
                f"vision_features and lang_features: expected one batch size, got "
                f"{vision_features.shape[0]} and {lang_features.shape[0]}"
            )
        b, lv, ll = vision_features.shape[0], vision_features.shape[1], lang_features.shape[1]
        if vision_mask is not None:
            check_mask("vision_mask", vision_mask, (b, lv))
        if lang_mask is not None:
            check_mask("lang_mask", lang_mask, (b, ll))
        check_same_device(vision_features=vision_features, lang_features=lang_features, vision_mask=vision_mask,
                          lang_mask=lang_mask)
        vision_attended = self.vision_from_lang(
            vision_features, lang_features, lang_features, key_padding_mask=lang_mask
        )  # (B, Lv, D)
        lang_attended = self.lang_from_vision(
            lang_features, vision_features, vision_features, key_padding_mask=vision_mask
        )  # (B, Ll, D)
        return vision_attended, lang_attended
