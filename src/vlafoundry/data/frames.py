"""Image frames of the training cache, stored compressed: one zlib blob per step, decoded when read.

    cache/image.zlib         the blobs of all steps, back to back (zlib, level ``ZLIB_LEVEL``)
    cache/image_offsets.npy  int64 (N + 1,): blob ``i`` is ``image.zlib[offsets[i]:offsets[i + 1]]``
    cache.json "image"       {"codec": "zlib", "level": 6, "shape": [H, W, C] (or [K, H, W, C]), "dtype": "uint8"}

One blob per step keeps random access to one step at the cost of one small inflate (BabyAI 56x56x3 RGB: 292
bytes per frame instead of 9,408, ~100,000 frames/s decoded by one core; ``bench/data.py``). Lossless: what is
read back is bit-identical to what was written. The frame shape after the step axis is free (one camera
(H, W, C), several (K, H, W, C), a symbolic grid).

Reading policy (:func:`open_frames`): when the decoded frames of the steps asked for fit ``ram_budget`` bytes
they are inflated once into one array (:class:`DecodedFrames`; forked DataLoader workers share its pages), else
every read inflates its steps (:class:`CompressedFrames`), which any dataset size allows.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

CODEC = "zlib"
ZLIB_LEVEL = 6
BLOB_FILE = "image.zlib"
OFFSETS_FILE = "image_offsets.npy"
RAW_FILE = "image.npy"  # caches written before compression (still read, memory-mapped)
#: default bytes of decoded frames a dataset may hold in RAM; ``VLAFOUNDRY_IMAGE_RAM_MB`` overrides it
DEFAULT_RAM_BUDGET = 4 << 30


class CorruptFramesError(ValueError):
    """A compressed frame does not inflate to the recorded shape (the cache file is damaged)."""


def ram_budget(value: int | None = None) -> int:
    """Bytes of decoded frames allowed in RAM: ``value`` if given, else ``VLAFOUNDRY_IMAGE_RAM_MB``, else 4 GiB."""
    if value is not None:
        if int(value) < 0:
            raise ValueError(f"image_ram_budget: expected >= 0 bytes, got {value}")
        return int(value)
    env = os.environ.get("VLAFOUNDRY_IMAGE_RAM_MB")
    if env:
        try:
            return int(float(env) * (1 << 20))
        except ValueError:
            raise ValueError(f"VLAFOUNDRY_IMAGE_RAM_MB: expected a number of MiB, got {env!r}") from None
    return DEFAULT_RAM_BUDGET


def write_frames(chunks: Iterable[np.ndarray], directory: Path, level: int = ZLIB_LEVEL) -> dict[str, Any]:
    """Compress the steps of ``chunks`` (arrays (n_i, *frame_shape) uint8, e.g. one per episode) into
    ``directory``/image.zlib + image_offsets.npy; returns the cache.json ``image`` record."""
    offsets = [0]
    shape: tuple[int, ...] | None = None
    with open(directory / BLOB_FILE, "wb") as f:
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
            if shape is None:
                shape = tuple(int(v) for v in chunk.shape[1:])
            elif tuple(chunk.shape[1:]) != shape:
                raise ValueError(f"image: every frame must have one shape, expected {shape}, got {tuple(chunk.shape[1:])}")
            for frame in chunk:
                blob = zlib.compress(frame.tobytes(), level)
                f.write(blob)
                offsets.append(offsets[-1] + len(blob))
    if shape is None:
        raise ValueError("image: no frames to write")
    np.save(directory / OFFSETS_FILE, np.asarray(offsets, dtype=np.int64), allow_pickle=False)
    return {"codec": CODEC, "level": int(level), "shape": list(shape), "dtype": "uint8"}


class CompressedFrames:
    """The cache's frames, inflated on every read: ``frames[idx]`` (idx int64 (B,)) -> uint8 (B, *shape)."""

    def __init__(self, directory: Path, record: dict[str, Any], mmap: bool = True) -> None:
        if record.get("codec") != CODEC or record.get("dtype") != "uint8":
            raise ValueError(f"{directory}: image codec {record.get('codec')!r} / dtype {record.get('dtype')!r}, "
                             f"expected {CODEC!r} / 'uint8' (a newer vlafoundry wrote this cache?)")
        self.path = directory / BLOB_FILE
        self.frame_shape = tuple(int(v) for v in record["shape"])
        self._frame_bytes = int(np.prod(self.frame_shape))
        self.offsets = np.load(directory / OFFSETS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        blob_size = self.path.stat().st_size
        if len(self.offsets) < 1 or int(self.offsets[-1]) != blob_size:
            raise CorruptFramesError(f"{self.path}: {blob_size} bytes, the offsets say {int(self.offsets[-1])}")
        # an empty file cannot be memory-mapped
        self.blob = np.memmap(self.path, dtype=np.uint8, mode="r") if blob_size else np.zeros(0, np.uint8)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.offsets) - 1, *self.frame_shape)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def decode_into(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Inflate steps ``rows`` (int64 (B,)) into ``out`` (uint8 (B, *shape))."""
        flat = out.reshape(len(rows), -1)
        starts, ends = self.offsets[rows], self.offsets[np.asarray(rows) + 1]
        for j, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            try:
                raw = zlib.decompress(self.blob[a:b])
            except zlib.error as exc:
                raise CorruptFramesError(f"{self.path}: frame {int(rows[j])} does not inflate ({exc}); the cache "
                                         "is damaged (delete it to rebuild it from the Minari data)") from None
            if len(raw) != self._frame_bytes:
                raise CorruptFramesError(f"{self.path}: frame {int(rows[j])} inflates to {len(raw)} bytes, "
                                         f"expected {self._frame_bytes} (shape {self.frame_shape})")
            flat[j] = np.frombuffer(raw, dtype=np.uint8)
        return out

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        uniq, inverse = np.unique(idx, return_inverse=True)  # history frames clamped to the start repeat
        out = self.decode_into(uniq, np.empty((len(uniq), *self.frame_shape), dtype=np.uint8))
        return out[inverse.reshape(-1)] if len(uniq) != len(idx) else out


class DecodedFrames:
    """Steps ``rows`` of a :class:`CompressedFrames`, inflated once into RAM; indexed by the same global step
    ids (``frames[idx]``: uint8 (B, *shape); a step outside ``rows`` raises ``IndexError``)."""

    def __init__(self, source: CompressedFrames, rows: np.ndarray) -> None:
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        self.frame_shape = source.frame_shape
        self.data = source.decode_into(rows, np.empty((len(rows), *source.frame_shape), dtype=np.uint8))
        self._row = np.full(len(source), -1, dtype=np.int64)  # global step -> row of data
        self._row[rows] = np.arange(len(rows), dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._row), *self.frame_shape)

    def __len__(self) -> int:
        return len(self._row)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        r = self._row[np.asarray(idx, dtype=np.int64)]
        if r.size and r.min() < 0:
            raise IndexError("a step whose frame was not decoded (outside this dataset's episodes)")
        return self.data[r]


def open_frames(directory: Path, record: dict[str, Any], rows: np.ndarray | None = None,
                budget: int | None = None) -> CompressedFrames | DecodedFrames:
    """The frames of a compressed cache: decoded into RAM when the ``rows`` asked for (default: all) fit
    ``budget`` bytes (:func:`ram_budget`), else inflated at every read."""
    frames = CompressedFrames(directory, record)
    rows = np.arange(len(frames), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) * frames._frame_bytes <= ram_budget(budget):
        return DecodedFrames(frames, rows)
    return frames
