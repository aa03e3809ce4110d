"""Pixel corruptions for the robustness table: Gaussian noise, an occluding square, colour jitter, a shifted view.

Every function takes a uint8 frame of one camera ``(H, W, C)`` or of ``K`` cameras ``(K, H, W, C)`` and returns a
new uint8 array of the same shape; cameras are corrupted independently. The *view* corruptions (occlusion, jitter,
shift) use per-episode draws (:class:`FrameParams`: where the square sits, the jitter factors, the shift
direction), drawn once per episode and camera by :func:`draw_frame_params`, so an episode sees one fixed
occluder, one fixed colour change and one fixed camera offset, like a smudged lens, a different light or a
displaced camera; Gaussian noise is drawn afresh at every step (sensor noise). Used by
:class:`~vlafoundry.eval.rollout.ObservationCorruption` in closed loop and in the offline rows alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Value of every channel of the occluding square: mid grey, unlike the all-zero frame of "no image".
OCCLUSION_FILL = 128
#: Luminance weights of R, G, B (ITU-R BT.601), for contrast and saturation.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class FrameParams:
    """Per-episode draws of the view corruptions for ``K`` cameras (None: that corruption is off).

    Attributes:
        corner: (K, 2) top-left ``(row, col)`` of the occluding square in each camera; ``side`` its side in pixels.
        jitter: (K, 6) factors per camera: brightness, contrast, saturation, then the gains of channels 0, 1, 2.
        shift: (K, 2) ``(dy, dx)``: content moves down by dy and right by dx pixels (each ``+-k``).
    """

    corner: np.ndarray | None = None
    side: int = 0
    jitter: np.ndarray | None = None
    shift: np.ndarray | None = None


def as_cameras(frame: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` or ``(K, H, W, C)`` -> a ``(K, H, W, C)`` view (K = 1 for one camera)."""
    if frame.ndim == 3:
        return frame[None]
    if frame.ndim == 4:
        return frame
    raise ValueError(f"image: expected a frame (H, W, C) or cameras (K, H, W, C), got shape {frame.shape}")


def check_pixels(frame: np.ndarray, what: str) -> None:
    if frame.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 RGB pixels, got dtype {frame.dtype}")
    as_cameras(frame)


def occlusion_side(fraction: float, height: int, width: int) -> int:
    """Side of the square covering ``fraction`` of an ``height x width`` frame (at most the shorter side)."""
    if fraction <= 0:
        return 0
    return int(min(max(1, round(float(np.sqrt(fraction * height * width)))), height, width))


def draw_frame_params(shape: tuple[int, ...], rng: np.random.Generator, occlusion: float = 0.0,
                      jitter: float = 0.0, shift: int = 0) -> FrameParams:  # fmt: skip
    """The per-episode draws for frames of ``shape`` ((H, W, C) or (K, H, W, C)); a fixed draw order."""
    k, h, w = (1, *shape[:2]) if len(shape) == 3 else shape[:3]
    corner = jit = off = None
    side = occlusion_side(occlusion, h, w)
    if side:
        corner = np.stack([rng.integers(0, h - side + 1, size=k), rng.integers(0, w - side + 1, size=k)], axis=1)
    if jitter > 0:
        jit = rng.uniform(1.0 - jitter, 1.0 + jitter, size=(k, 6)).astype(np.float32)
    if shift > 0:
        if shift >= min(h, w):
            raise ValueError(f"image_shift: expected fewer pixels than the frame's side {min(h, w)}, got {shift}")
        off = rng.choice(np.array([-shift, shift]), size=(k, 2))
    return FrameParams(corner, side, jit, off)


def occlude(frame: np.ndarray, corner: np.ndarray, side: int, fill: int = OCCLUSION_FILL) -> np.ndarray:
    """A ``side`` x ``side`` square of value ``fill`` at ``corner[k]`` of camera k."""
    out = frame.copy()
    cams = as_cameras(out)
    for k, (y, x) in enumerate(np.asarray(corner).tolist()):
        cams[k, y : y + side, x : x + side] = fill
    return out


def color_jitter(frame: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation and per-channel gains (``factors`` (K, 6), see :class:`FrameParams`).

    On floats, per camera: ``x *= brightness``; ``x = m + contrast * (x - m)`` with m the frame's mean luminance;
    ``x = l + saturation * (x - l)`` with l each pixel's luminance; ``x[..., c] *= gain_c``; then rounded and
    clipped to [0, 255]. A uniform grey frame is changed by brightness and gains only.
    """
    cams = as_cameras(frame).astype(np.float32)  # (K, H, W, C)
    c = cams.shape[-1]
    luma = _LUMA if c == 3 else np.full(c, 1.0 / c, dtype=np.float32)
    f = np.asarray(factors, dtype=np.float32)[:, :, None, None, None]  # (K, 6, 1, 1, 1)
    x = cams * f[:, 0]
    lum = x @ luma  # (K, H, W)
    mean = lum.mean(axis=(1, 2), keepdims=True)[..., None]  # (K, 1, 1, 1)
    x = mean + f[:, 1] * (x - mean)
    lum = (x @ luma)[..., None]  # (K, H, W, 1)
    x = lum + f[:, 2] * (x - lum)
    gains = np.asarray(factors, dtype=np.float32)[:, 3 : 3 + c]  # (K, <=3)
    if c <= 3:
        x = x * gains[:, None, None, :]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(frame.shape)


def shift_view(frame: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Translate camera k's content by ``offsets[k] = (dy, dx)`` pixels, repeating the edge pixels (DrQ's shift:
    edge padding, then a crop)."""
    cams = as_cameras(frame)
    _, h, w, _ = cams.shape
    out = np.empty_like(cams)
    for k, (dy, dx) in enumerate(np.asarray(offsets).tolist()):
        rows = np.clip(np.arange(h) - dy, 0, h - 1)
        cols = np.clip(np.arange(w) - dx, 0, w - 1)
        out[k] = cams[k][rows[:, None], cols[None, :]]
    return out.reshape(frame.shape)


def gaussian_noise(frame: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, (255 sigma)^2) to every pixel and channel; rounded and clipped to [0, 255]."""
    noisy = frame.astype(np.float32) + rng.normal(0.0, 255.0 * sigma, size=frame.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def cell_noise(frame: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Replace each cell (pixel, or grid cell of a symbolic view) with probability ``p`` by the cell at a uniformly
    random position of the same camera's image (values stay valid codes for symbolic views)."""
    cams = as_cameras(frame)
    k, h, w = cams.shape[:3]
    out = cams.copy()
    for cam in range(k):
        flat = cams[cam].reshape(h * w, -1)
        hit = rng.random(h * w) < p
        src = rng.integers(0, h * w, size=int(hit.sum()))
        noisy = out[cam].reshape(h * w, -1)
        noisy[hit] = flat[src]
    return out.reshape(frame.shape)
