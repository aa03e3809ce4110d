"""Fixed Fourier features for low-dimensional continuous inputs (proprioception, object positions).

An MLP on raw coordinates is a smooth function of them: it cannot switch behaviour between two states a few
millimetres apart, which is what a scripted expert with distance thresholds asks of a cloned policy. Sines and
cosines at octave frequencies (the positional encoding of NeRF, Mildenhall et al., 2020) give the MLP features that
change quickly with the input, so a sharp decision boundary becomes linearly reachable.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlafoundry.nn._checks import check_tensor

__all__ = ["FourierFeatures"]


class FourierFeatures(nn.Module):
    """``x (..., S) -> [x, sin(2^k pi x), cos(2^k pi x) for k < num_frequencies]`` of width ``S * (1 + 2F)``.

    Args:
        in_features: S.
        num_frequencies: F octaves, frequencies ``2^0 pi .. 2^(F-1) pi`` (0 returns ``x`` unchanged).
        include_input: keep ``x`` itself in front of the features.

    Features are ordered ``[x (S), sin (S*F, frequency-major), cos (S*F)]``. No parameters; the frequencies are a
    non-persistent buffer, so they follow ``.to(device)`` and are not written into checkpoints.
    """

    def __init__(self, in_features: int, num_frequencies: int, include_input: bool = True) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features: expected >= 1, got {in_features}")
        if num_frequencies < 0:
            raise ValueError(f"num_frequencies: expected >= 0, got {num_frequencies}")
        if num_frequencies == 0 and not include_input:
            raise ValueError("num_frequencies=0 with include_input=False leaves no features")
        self.in_features = in_features
        self.num_frequencies = num_frequencies
        self.include_input = include_input

    @property
    def out_features(self) -> int:
        return self.in_features * (2 * self.num_frequencies + int(self.include_input))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_frequencies={self.num_frequencies}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, last_dim=self.in_features)
        parts = [x] if self.include_input else []
        if self.num_frequencies:
            octaves = torch.arange(self.num_frequencies, device=x.device, dtype=x.dtype)
            freqs = math.pi * torch.exp2(octaves)  # (F,) exact powers of two times pi, in x's dtype
            angles = (x.unsqueeze(-2) * freqs[:, None]).flatten(-2)  # (..., F*S) frequency-major
            parts += [torch.sin(angles), torch.cos(angles)]
        return torch.cat(parts, dim=-1)  # (..., S*(1+2F))
