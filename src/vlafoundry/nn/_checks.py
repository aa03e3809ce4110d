"""Input validation shared by every layer.

Shape, rank, width, dtype and device checks are always on: they read tensor metadata only and cost
nothing measurable. Checking for NaN/inf needs a reduction over the data, so layers only do it when
``vlafoundry.nn.set_check_finite(True)`` is on (the trainer's ``train.check_finite`` option turns it on);
policies check their raw inputs always.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

_CHECK_FINITE = False


def set_check_finite(enabled: bool) -> None:
    """Turn the non-finite check in every layer's forward on or off (off by default)."""
    global _CHECK_FINITE
    _CHECK_FINITE = bool(enabled)


def check_finite_enabled() -> bool:
    return _CHECK_FINITE


@contextlib.contextmanager
def check_finite(enabled: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_check_finite`."""
    global _CHECK_FINITE
    old = _CHECK_FINITE
    _CHECK_FINITE = bool(enabled)
    try:
        yield
    finally:
        _CHECK_FINITE = old


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Sequence[int] | None = None,
    last_dim: int | None = None,
    floating: bool | None = True,
    device: torch.device | None = None,
    finite: bool | None = None,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """Validate ``x`` and return it; raise ``ValueError`` naming ``name``, expected against found.

    ``floating=True`` requires a floating dtype, ``False`` an integer/bool dtype, ``None`` anything.
    ``finite=None`` follows the global switch (:func:`set_check_finite`).
    ``like`` (a parameter of the layer): ``x`` must be on its device and, if both are floating point and no
    autocast region is active, have its dtype (a float64 input to a float32 layer is an error, not a silent cast).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected a tensor of rank {want}, got rank {x.dim()} with shape {tuple(x.shape)}")
    if last_dim is not None and (x.dim() == 0 or x.shape[-1] != last_dim):
        raise ValueError(f"{name}: expected last dimension {last_dim}, got shape {tuple(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if floating is False and x.is_floating_point():
        raise ValueError(f"{name}: expected an integer tensor, got dtype {x.dtype}")
    if device is not None and x.device.type != torch.device(device).type:
        raise ValueError(f"{name}: expected a tensor on device {device}, got one on {x.device}")
    if like is not None:
        if x.device != like.device:
            raise ValueError(f"{name}: expected a tensor on {like.device} (the layer's device), got one on {x.device}")
        if x.is_floating_point() and like.is_floating_point() and x.dtype != like.dtype and not _autocast_on(x):
            raise ValueError(
                f"{name}: expected dtype {like.dtype} (the layer's parameters; cast the input or use torch.autocast), "
                f"got {x.dtype}"
            )
    if finite is None:
        finite = _CHECK_FINITE
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name}: expected finite values, found {n_nan} NaN and {n_inf} infinite of {x.numel()}")
    return x


def _autocast_on(x: torch.Tensor) -> bool:
    try:
        return bool(torch.is_autocast_enabled(x.device.type))
    except RuntimeError:  # a device type autocast does not know
        return False


def first_parameter(module: torch.nn.Module) -> torch.Tensor | None:
    """The module's first parameter (its device/dtype are what inputs must match), or None."""
    return next(module.parameters(), None)


def check_mask(name: str, mask: object, shape: Sequence[int]) -> torch.Tensor:
    """Validate a boolean mask of exactly ``shape`` (True = keep / may attend)."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name}: expected a boolean torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name}: expected dtype torch.bool (True = may attend / valid), got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(mask.shape)}")
    return mask


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors (None ignored) must live on one device."""
    devs = {k: v.device for k, v in tensors.items() if v is not None}
    if len({d for d in devs.values()}) > 1:
        desc = ", ".join(f"{k} on {d}" for k, d in devs.items())
        raise ValueError(f"expected all inputs on one device, got {desc}")
