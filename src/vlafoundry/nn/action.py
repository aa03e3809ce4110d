"""Actions in and out of the model: encoders, a bounded decoder head, a sequence transformer and a binning
tokenizer (RT-1 / OpenVLA style discretisation into ``num_bins`` uniform bins per dimension)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vlafoundry.nn._checks import check_mask, check_tensor
from vlafoundry.nn.blocks import TransformerEncoderBlock
from vlafoundry.nn.language import run_encoder_layers
from vlafoundry.nn.vision import get_1d_sincos_pos_embed

__all__ = ["ActionEncoder", "ActionDecoder", "ActionSequenceProcessor", "ActionTokenizer"]


def _per_dim(name: str, value: float | Sequence[float] | np.ndarray, action_dim: int | None) -> np.ndarray:
    """``value`` as a float64 vector of length ``action_dim`` (a scalar is broadcast)."""
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got {arr.tolist()}")
    if arr.ndim == 0:
        return np.full(action_dim if action_dim is not None else 1, float(arr))
    if arr.ndim != 1 or (action_dim is not None and arr.shape[0] != action_dim):
        raise ValueError(f"{name}: expected a float or a sequence of {action_dim} floats, got shape {arr.shape}")
    return arr


class ActionEncoder(nn.Module):
    """Embed actions as ``d_model`` tokens.

    Continuous ``(B, A)`` or ``(B, K, A)`` float actions go through a ``Linear``; discrete integer actions
    ``(B,)`` or ``(B, K)`` through an ``Embedding(num_discrete_actions)`` (only built when
    ``num_discrete_actions`` is given). ``forward(actions, is_discrete=None)`` picks the path from the dtype
    when ``is_discrete`` is None. Output ``(B, D)`` or ``(B, K, D)``.
    """

    def __init__(self, action_dim: int, d_model: int = 768, num_discrete_actions: int | None = None) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.d_model = d_model
        self.num_discrete_actions = num_discrete_actions
        self.action_proj = nn.Linear(action_dim, d_model)
        self.discrete_action_embed = (
            nn.Embedding(num_discrete_actions, d_model) if num_discrete_actions is not None else None
        )

    def forward(self, actions: torch.Tensor, is_discrete: bool | None = None) -> torch.Tensor:
        check_tensor("actions", actions, floating=None, device=self.action_proj.weight.device)
        if is_discrete is None:
            is_discrete = not actions.is_floating_point()
        if is_discrete:
            if self.discrete_action_embed is None:
                raise ValueError("actions: discrete actions given but the encoder has no num_discrete_actions")
            check_tensor("actions", actions, ndim=(1, 2), floating=False)
            if actions.dtype == torch.bool:
                raise ValueError("actions: expected integer action indices, got dtype torch.bool")
            if actions.numel() > 0:
                lo, hi = int(actions.min()), int(actions.max())
                if lo < 0 or hi >= self.num_discrete_actions:
                    raise ValueError(
                        f"actions: expected indices in [0, {self.num_discrete_actions - 1}], got [{lo}, {hi}]"
                    )
            return self.discrete_action_embed(actions.long())  # (B, [K,] D)
        check_tensor("actions", actions, ndim=(2, 3), last_dim=self.action_dim, floating=None)
        return self.action_proj(actions.to(self.action_proj.weight.dtype))  # (B, [K,] D)


class ActionDecoder(nn.Module):
    """MLP head from a fused feature to bounded continuous actions.

    ``out = offset + scale * tanh(MLP(x))`` per dimension, with ``scale = max_action`` and ``offset = 0``
    (``max_action`` a float or per-dimension sequence), or, when ``low`` and ``high`` are given,
    ``[low, high]`` per dimension. ``forward(x (B, D)) -> (B, A)``, or ``(B, K, A)`` when ``chunk_size > 1``
    (action chunking). ``forward(..., return_raw=True)`` also returns the pre-tanh values.
    """

    def __init__(
        self,
        d_model: int,
        action_dim: int,
        max_action: float | Sequence[float] = 1.0,
        hidden_dim: int | None = None,
        chunk_size: int = 1,
        act_layer: type[nn.Module] = nn.GELU,
        low: Sequence[float] | float | None = None,
        high: Sequence[float] | float | None = None,
    ) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
        self.d_model = d_model
        self.action_dim = action_dim
        self.chunk_size = chunk_size
        hidden_dim = max(d_model // 2, 1) if hidden_dim is None else hidden_dim
        self.action_head = nn.Sequential(
            nn.Linear(d_model, hidden_dim), act_layer(), nn.Linear(hidden_dim, action_dim * chunk_size)
        )
        if (low is None) != (high is None):
            raise ValueError("low/high: give both or neither")
        if low is not None:
            lo, hi = _per_dim("low", low, action_dim), _per_dim("high", high, action_dim)
            if np.any(hi <= lo):
                raise ValueError(
                    f"low/high: expected low < high per dimension, got low={lo.tolist()} high={hi.tolist()}"
                )
            scale, offset = (hi - lo) / 2.0, (hi + lo) / 2.0
        else:
            scale = _per_dim("max_action", max_action, action_dim)
            if np.any(scale <= 0):
                raise ValueError(f"max_action: expected positive values, got {scale.tolist()}")
            offset = np.zeros(action_dim)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))  # (A,)
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32))  # (A,)

    @property
    def low(self) -> torch.Tensor:
        return self.offset - self.scale

    @property
    def high(self) -> torch.Tensor:
        return self.offset + self.scale

    def forward(
        self, fused_features: torch.Tensor, return_raw: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_tensor("fused_features", fused_features, ndim=2, last_dim=self.d_model, device=self.scale.device)
        raw = self.action_head(fused_features)  # (B, K*A)
        if self.chunk_size > 1:
            raw = raw.reshape(raw.shape[0], self.chunk_size, self.action_dim)  # (B, K, A)
        actions = self.offset.to(raw.dtype) + self.scale.to(raw.dtype) * torch.tanh(raw)
        return (actions, raw) if return_raw else actions


class ActionSequenceProcessor(nn.Module):
    """Transformer over action sequences ``(B, L, A)``, ``L <= sequence_length``.

    Projects ``action_dim -> d_model`` (``input_proj``), adds temporal sin-cos positions, runs ``num_layers``
    pre-norm encoder layers honouring ``mask (B, L) bool`` (True = valid step) and a final LayerNorm:
    ``forward -> (B, L, D)`` (padded steps are zeros). ``decode(h (B, L, D)) -> (B, L, A)`` maps back to
    actions with the ``action_projector`` head.
    """

    def __init__(
        self,
        action_dim: int,
        sequence_length: int,
        d_model: int = 768,
        num_layers: int = 2,
        num_heads: int = 8,
        dropout: float = 0.1,
        d_ff: int | None = None,
    ) -> None:
        super().__init__()
        if d_model % 2 != 0:
            raise ValueError(f"d_model: expected an even number (sin-cos positions), got {d_model}")
        self.action_dim = action_dim
        self.sequence_length = sequence_length
        self.d_model = d_model
        self.input_proj = nn.Linear(action_dim, d_model)
        pe = torch.from_numpy(get_1d_sincos_pos_embed(d_model, sequence_length)).float()  # (L, D)
        self.register_buffer("pe", pe, persistent=False)
        self.dropout = nn.Dropout(dropout)
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.layers = nn.ModuleList(
            TransformerEncoderBlock(d_model, num_heads, d_ff, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.action_projector = nn.Linear(d_model, action_dim)

    def forward(self, action_sequences: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = check_tensor(
            "action_sequences", action_sequences, ndim=3, last_dim=self.action_dim, device=self.pe.device
        )
        b, length, _ = x.shape
        if length > self.sequence_length:
            raise ValueError(f"action_sequences: length {length} exceeds sequence_length={self.sequence_length}")
        if mask is not None:
            check_mask("mask", mask, (b, length))
        h = self.input_proj(x)  # (B, L, D)
        h = self.dropout(h + self.pe[:length].to(h.dtype))
        return run_encoder_layers(self.layers, self.norm, h, mask)  # (B, L, D)

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        check_tensor("hidden", hidden, ndim=(2, 3), last_dim=self.d_model)
        return self.action_projector(hidden)  # (B, [L,] A)


class ActionTokenizer:
    """Uniform binning of continuous actions into ``num_bins`` bins per dimension (RT-1, OpenVLA).

    Bin ``i`` of dimension ``d`` covers ``[low_d + i*w_d, low_d + (i+1)*w_d)`` exactly (the last bin also holds
    ``high_d``) with ``w_d = (high_d - low_d) / num_bins``; values outside ``[low, high]`` are clipped first.
    ``decode`` returns bin centres, so ``|decode(encode(a)) - clip(a)| <= w / 2``. ``low``/``high`` are floats
    or per-dimension sequences; :meth:`fit` takes them from data quantiles as OpenVLA does. Tensors in give
    tensors out, arrays give arrays.
    """

    def __init__(
        self,
        num_bins: int = 256,
        low: float | Sequence[float] = -1.0,
        high: float | Sequence[float] = 1.0,
        action_dim: int | None = None,
    ) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins: expected >= 1, got {num_bins}")
        lo_arr, hi_arr = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if action_dim is None:
            sizes = {a.shape[0] for a in (lo_arr, hi_arr) if a.ndim == 1}
            if len(sizes) > 1:
                raise ValueError(f"low/high: per-dimension sequences differ in length: {sorted(sizes)}")
            action_dim = sizes.pop() if sizes else None
        self.num_bins = int(num_bins)
        self.action_dim = action_dim
        self.low = _per_dim("low", low, action_dim)  # (A,) or (1,) when action_dim is None
        self.high = _per_dim("high", high, action_dim)
        if np.any(self.high <= self.low):
            raise ValueError(f"low/high: expected low < high, got low={self.low.tolist()} high={self.high.tolist()}")

    @classmethod
    def fit(cls, actions: np.ndarray | torch.Tensor, num_bins: int = 256, quantile: float = 0.01) -> ActionTokenizer:
        """Bounds from the ``quantile`` / ``1 - quantile`` per-dimension quantiles of ``actions (N, A)``."""
        arr = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"actions: expected a non-empty (N, A) array, got shape {arr.shape}")
        lo = np.quantile(arr, quantile, axis=0)
        hi = np.quantile(arr, 1.0 - quantile, axis=0)
        hi = np.where(hi > lo, hi, lo + 1e-6)
        return cls(num_bins, lo, hi, action_dim=arr.shape[1])

    @property
    def bin_width(self) -> np.ndarray:
        return (self.high - self.low) / self.num_bins  # (A,)

    def _check_dim(self, name: str, arr: np.ndarray | torch.Tensor) -> None:
        if arr.ndim == 0:
            raise ValueError(f"{name}: expected shape (..., A), got a scalar")
        if self.action_dim is not None and arr.shape[-1] != self.action_dim:
            raise ValueError(f"{name}: expected last dimension {self.action_dim}, got shape {tuple(arr.shape)}")

    def encode(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Float actions ``(..., A)`` -> int64 bin indices ``(..., A)`` in ``[0, num_bins)``."""
        if isinstance(actions, torch.Tensor):
            check_tensor("actions", actions, floating=True)
            self._check_dim("actions", actions)
            if not bool(torch.isfinite(actions).all()):
                raise ValueError("actions: expected finite values")
            low = torch.as_tensor(self.low, dtype=torch.float64, device=actions.device)
            high = torch.as_tensor(self.high, dtype=torch.float64, device=actions.device)
            x = torch.minimum(torch.maximum(actions.double(), low), high)
            width = (high - low) / self.num_bins
            bins = torch.floor((x - low) / width).clamp_(0, self.num_bins - 1)
            # exact edges low + i * w: undo the rounding of the division at bin boundaries
            bins = bins - (x < low + bins * width).double()
            bins = bins + ((x >= low + (bins + 1) * width) & (bins < self.num_bins - 1)).double()
            return bins.long()
        arr = np.asarray(actions)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"actions: expected a floating-point array, got dtype {arr.dtype}")
        self._check_dim("actions", arr)
        if not np.all(np.isfinite(arr)):
            raise ValueError("actions: expected finite values")
        x = np.clip(arr.astype(np.float64), self.low, self.high)
        width = self.bin_width
        bins = np.clip(np.floor((x - self.low) / width), 0, self.num_bins - 1)
        # exact edges low + i * w: undo the rounding of the division at bin boundaries
        bins = bins - (x < self.low + bins * width)
        bins = bins + ((x >= self.low + (bins + 1) * width) & (bins < self.num_bins - 1))
        return bins.astype(np.int64)

    def decode(self, bins: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Bin indices ``(..., A)`` -> bin-centre actions ``(..., A)`` (float32)."""
        is_tensor = isinstance(bins, torch.Tensor)
        arr = bins.detach().cpu().numpy() if is_tensor else np.asarray(bins)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"bins: expected integer bin indices, got dtype {arr.dtype}")
        self._check_dim("bins", arr)
        if arr.size > 0 and (arr.min() < 0 or arr.max() >= self.num_bins):
            raise ValueError(f"bins: expected values in [0, {self.num_bins - 1}], got [{arr.min()}, {arr.max()}]")
        values = (self.low + (arr + 0.5) * self.bin_width).astype(np.float32)
        return torch.from_numpy(values).to(bins.device) if is_tensor else values

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_bins": self.num_bins,
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "action_dim": self.action_dim,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActionTokenizer:
        low, high = d["low"], d["high"]
        if d.get("action_dim") is None:  # scalar bounds were stored as 1-element lists
            low, high = low[0], high[0]
        return cls(d["num_bins"], low, high, action_dim=d.get("action_dim"))

    def __repr__(self) -> str:
        return f"ActionTokenizer(num_bins={self.num_bins}, action_dim={self.action_dim})"
