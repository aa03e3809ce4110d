"""Shared pieces of the fusion modules: masked mean pooling, input checks, pooled-as-token inputs, learned
placeholders for absent modalities, token concatenation with masks, and stacks of transformer blocks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlafoundry.nn._checks import check_mask, check_same_device, check_tensor, first_parameter
from vlafoundry.nn.blocks import FFNFactory, TransformerEncoderBlock

__all__ = ["masked_mean_pool"]

Seq = tuple[torch.Tensor, torch.Tensor | None]  # tokens (B, L, D), mask (B, L) bool or None (= all valid)


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
