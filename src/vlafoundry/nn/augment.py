"""Image augmentation for behaviour cloning from pixels.

:func:`random_shift` is DrQ's random shift (Kostrikov et al. 2020; also Diffusion Policy's random crop): pad each
frame by ``pad`` pixels replicating its border, then cut a window of the original size at a random offset in
``[0, 2 * pad]``, so the content moves by up to ``pad`` pixels in each direction. It works on the uint8
channels-last frames the datasets store, on any leading shape: all frames of one sample (its history frames and
its cameras) move by the same offset, different samples by independent offsets. Integer shifts, no interpolation:
the output holds only pixel values of the input.
"""

from __future__ import annotations

import math

import torch

from vlafoundry.nn._checks import check_tensor

__all__ = ["random_shift", "RandomShift"]


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                 independent: int = 0) -> torch.Tensor:
    """Shift ``images`` ``(B, ..., H, W, C)`` by a random integer offset in ``[-pad, pad]`` per axis (border pixels
    replicated). The frames of one sample share an offset (a history of frames moves together, as in DrQ), except
    along the last ``independent`` leading axes, which draw their own (``independent=1`` for ``(B, T, K, H, W, C)``:
    each of K cameras is shifted by itself, its T frames together). ``pad == 0`` returns the input unchanged."""
    check_tensor("images", images, floating=None)
    if images.ndim < 4:
        raise ValueError(f"images: expected (B, ..., H, W, C) with at least 4 dims, got shape {tuple(images.shape)}")
    if pad < 0:
        raise ValueError(f"pad: expected an integer >= 0, got {pad}")
    lead = tuple(images.shape[1:-3])
    if not 0 <= independent <= len(lead):
        raise ValueError(f"independent: expected an integer in [0, {len(lead)}] (the leading axes of shape "
                         f"{tuple(images.shape)}), got {independent}")
    if pad == 0:
        return images
    b, h, w, c = images.shape[0], images.shape[-3], images.shape[-2], images.shape[-1]
    shared, own = lead[: len(lead) - independent], lead[len(lead) - independent:]
    s, k = math.prod(shared), math.prod(own)
    x = images.reshape(b * s * k, h, w, c)  # (B*S*K, H, W, C)
    offs = torch.randint(-pad, pad + 1, (b, 1, k, 2), generator=generator, device="cpu")  # (B, 1, K, 2)
    offs = offs.expand(b, s, k, 2).reshape(b * s * k, 2).to(images.device)  # (B*S*K, 2): shared over S
    # Replicate padding without materialising it: source indices clamped to the frame.
    rows = (offs[:, 0:1] + torch.arange(h, device=images.device)).clamp_(0, h - 1)  # (B*S*K, H)
    cols = (offs[:, 1:2] + torch.arange(w, device=images.device)).clamp_(0, w - 1)  # (B*S*K, W)
    idx = torch.arange(b * s * k, device=images.device)[:, None, None]  # (B*S*K, 1, 1)
    out = x[idx, rows[:, :, None], cols[:, None, :]]  # (B*S*K, H, W, C)
    return out.reshape(images.shape)


class RandomShift(torch.nn.Module):
    """:func:`random_shift` as a module, active only in training mode (identity in evaluation mode)."""

    def __init__(self, pad: int = 4) -> None:
        super().__init__()
        if pad < 0:
            raise ValueError(f"pad: expected an integer >= 0, got {pad}")
        self.pad = pad

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return random_shift(images, self.pad) if self.training else images

    def extra_repr(self) -> str:
        return f"pad={self.pad}"
