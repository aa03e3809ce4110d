"""MP4 video encoding and decoding with PyAV (the ``lerobot`` extra), for LeRobot datasets' camera features."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

#: default encoder: H.264 at constant quality 0 in 4:4:4 (near-lossless; a few levels of colour rounding)
DEFAULT_CODEC = "libx264"
DEFAULT_PIX_FMT = "yuv444p"
DEFAULT_OPTIONS = {"crf": "0", "g": "2"}
#: pixel format and options per encoder (LeRobot's default is libsvtav1 at crf 30, 4:2:0); others: 4:2:0, GOP 2
CODEC_PRESETS: dict[str, tuple[str, dict[str, str]]] = {
    "libx264": (DEFAULT_PIX_FMT, DEFAULT_OPTIONS),
    "libsvtav1": ("yuv420p", {"crf": "30", "g": "2"}),
}


def _av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError("video in LeRobot datasets needs PyAV: pip install 'vla-foundry[lerobot]' (or `pip install av`)"
                          ) from exc
    return av


def encode_video(frames: np.ndarray, path: str | os.PathLike[str], fps: int, codec: str = DEFAULT_CODEC,
                 pix_fmt: str | None = None, options: dict[str, str] | None = None) -> dict[str, Any]:
    """Write ``frames`` (N, H, W, 3) uint8 RGB to ``path`` at ``fps``; returns LeRobot's ``video.*`` info fields.

    ``pix_fmt`` / ``options`` default to the codec's preset (:data:`CODEC_PRESETS`)."""
    av = _av()
    preset_fmt, preset_opts = CODEC_PRESETS.get(codec, ("yuv420p", {"g": "2"}))
    pix_fmt = pix_fmt or preset_fmt
    options = preset_opts if options is None else options
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"encode_video: expected (N, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    n, h, w, _ = frames.shape
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=int(fps), options=dict(options))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"video.height": h, "video.width": w, "video.codec": stream.codec_context.codec.canonical_name, "video.pix_fmt": pix_fmt,
            "video.fps": int(fps), "video.channels": 3, "has_audio": False, "is_depth_map": False}


def decode_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """All frames of ``path``: ``(frames (N, H, W, 3) uint8 RGB, timestamps (N,) float64 seconds)``."""
    av = _av()
    frames, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * frame.time_base) if frame.pts is not None else float(len(times)))
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def frames_at(frames: np.ndarray, times: np.ndarray, wanted: np.ndarray, fps: int,
              path: str | os.PathLike[str] = "video") -> np.ndarray:
    """The decoded frames nearest to the ``wanted`` timestamps; each must be within half a frame period."""
    order = np.argsort(times)
    t = times[order]
    pos = np.clip(np.searchsorted(t, wanted), 1, len(t) - 1) if len(t) > 1 else np.zeros(len(wanted), dtype=np.int64)
    if len(t) > 1:
        left = t[pos - 1]
        pos = np.where(np.abs(wanted - left) <= np.abs(t[pos] - wanted), pos - 1, pos)
    gap = np.abs(t[pos] - wanted)
    if len(gap) and gap.max() > 0.5 / fps + 1e-6:
        bad = int(np.argmax(gap))
        raise ValueError(f"{path}: no frame near timestamp {wanted[bad]:.4f}s (nearest {t[pos[bad]]:.4f}s, "
                         f"expected within half a frame at {fps} fps; the video holds {len(t)} frames)")
    return frames[order[pos]]


def probe_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, tuple[int, int]]:
    """Every frame's timestamp (seconds, sorted) and the frame size ``(height, width)``, without converting pixels
    (for ``vlafoundry data verify``)."""
    av = _av()
    times, size = [], (0, 0)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        size = (int(stream.codec_context.height), int(stream.codec_context.width))
        for frame in container.decode(stream):
            times.append(float(frame.pts * frame.time_base) if frame.pts is not None else float(len(times)))
            size = (int(frame.height), int(frame.width))
    return np.sort(np.asarray(times, dtype=np.float64)), size
