"""Image frames of the training cache, stored compressed: zlib blobs of ``GROUP`` consecutive steps each.

    cache/image.zlib         the blobs, back to back (zlib, level ``ZLIB_LEVEL``)
    cache/image_offsets.npy  int64 (B + 1,): blob ``b`` (steps ``[b*G, (b+1)*G)``) is ``image.zlib[o[b]:o[b + 1]]``
    cache.json "image"       {"codec": "zlib", "level": 6, "group": G, "frames": N,
                              "shape": [H, W, C] (or [K, H, W, C]), "dtype": "uint8"}

Frames of consecutive steps barely differ, so a blob of 8 steps is far smaller than 8 blobs of one (BabyAI
56x56x3 RGB: 182 bytes per frame instead of 292 and 9,408 raw; Meta-World 64x64 camera frames: 837 instead of
3,747 and 12,288), while reading one step inflates only its blob (~50,000 frames/s by one core;
``bench/data.py``). Lossless: what is read back is bit-identical to what was written. The frame shape after the
step axis is free (one camera (H, W, C), several (K, H, W, C), a symbolic grid).

Reading policy (:func:`open_frames`): when the decoded frames of the steps asked for fit ``ram_budget`` bytes
they are inflated once into one array (:class:`DecodedFrames`; forked DataLoader workers share its pages), else
every read inflates the blobs of its steps (:class:`CompressedFrames`), which any dataset size allows.
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
GROUP = 8  # steps per blob
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


def write_frames(chunks: Iterable[np.ndarray], directory: Path, level: int = ZLIB_LEVEL,
                 group: int = GROUP) -> dict[str, Any]:
    """Compress the steps of ``chunks`` (arrays (n_i, *frame_shape) uint8, e.g. one per episode) into
    ``directory``/image.zlib + image_offsets.npy, ``group`` consecutive steps per blob; returns the cache.json
    ``image`` record."""
    if int(group) < 1:
        raise ValueError(f"group: expected >= 1 steps per blob, got {group}")
    offsets = [0]
    shape: tuple[int, ...] | None = None
    pending: list[bytes] = []
    count = 0
    with open(directory / BLOB_FILE, "wb") as f:

        def flush() -> None:
            blob = zlib.compress(b"".join(pending), level)
            f.write(blob)
            offsets.append(offsets[-1] + len(blob))
            pending.clear()

        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
            if shape is None:
                shape = tuple(int(v) for v in chunk.shape[1:])
            elif tuple(chunk.shape[1:]) != shape:
                raise ValueError(f"image: every frame must have one shape, expected {shape}, got {tuple(chunk.shape[1:])}")
            for frame in chunk:
                pending.append(frame.tobytes())
                count += 1
                if len(pending) == group:
                    flush()
        if pending:
            flush()
    if shape is None:
        raise ValueError("image: no frames to write")
    np.save(directory / OFFSETS_FILE, np.asarray(offsets, dtype=np.int64), allow_pickle=False)
    return {"codec": CODEC, "level": int(level), "group": int(group), "frames": count, "shape": list(shape),
            "dtype": "uint8"}


class CompressedFrames:
    """The cache's frames, inflated on every read: ``frames[idx]`` (idx int64 (B,)) -> uint8 (B, *shape)."""

    def __init__(self, directory: Path, record: dict[str, Any], mmap: bool = True) -> None:
        if record.get("codec") != CODEC or record.get("dtype") != "uint8":
            raise ValueError(f"{directory}: image codec {record.get('codec')!r} / dtype {record.get('dtype')!r}, "
                             f"expected {CODEC!r} / 'uint8' (a newer vlafoundry wrote this cache?)")
        self.path = directory / BLOB_FILE
        self.frame_shape = tuple(int(v) for v in record["shape"])
        self.group = int(record.get("group", 1))
        self._frame_bytes = int(np.prod(self.frame_shape))
        self.offsets = np.load(directory / OFFSETS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        self._count = int(record.get("frames", len(self.offsets) - 1))
        blobs = -(-self._count // self.group)
        blob_size = self.path.stat().st_size
        if len(self.offsets) != blobs + 1:
            raise CorruptFramesError(f"{directory / OFFSETS_FILE}: {len(self.offsets)} offsets, expected {blobs + 1} "
                                     f"({self._count} frames, {self.group} a blob)")
        if int(self.offsets[-1]) != blob_size:
            raise CorruptFramesError(f"{self.path}: {blob_size} bytes, the offsets say {int(self.offsets[-1])}")
        # an empty file cannot be memory-mapped
        self.blob = np.memmap(self.path, dtype=np.uint8, mode="r") if blob_size else np.zeros(0, np.uint8)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._count, *self.frame_shape)

    def __len__(self) -> int:
        return self._count

    def _inflate(self, b: int) -> np.ndarray:
        """Blob ``b`` as uint8 (steps in it, frame bytes)."""
        steps = min(self.group, self._count - b * self.group)
        try:
            raw = zlib.decompress(self.blob[int(self.offsets[b]):int(self.offsets[b + 1])])
        except zlib.error as exc:
            raise CorruptFramesError(f"{self.path}: the blob of steps {b * self.group}..{b * self.group + steps - 1} "
                                     f"does not inflate ({exc}); the cache is damaged (delete it to rebuild it "
                                     "from the Minari data)") from None
        if len(raw) != steps * self._frame_bytes:
            raise CorruptFramesError(f"{self.path}: the blob of steps {b * self.group}.. inflates to {len(raw)} bytes, "
                                     f"expected {steps * self._frame_bytes} ({steps} frames of {self.frame_shape})")
        return np.frombuffer(raw, dtype=np.uint8).reshape(steps, self._frame_bytes)

    def decode_into(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Inflate steps ``rows`` (int64 (B,)) into ``out`` (uint8 (B, *shape)); each blob once."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = out.reshape(len(rows), -1)
        blob = rows // self.group
        order = np.argsort(blob, kind="stable")
        ids, first = np.unique(blob[order], return_index=True)
        bounds = np.append(first, len(rows)).tolist()
        for k, b in enumerate(ids.tolist()):
            sel = order[bounds[k]:bounds[k + 1]]
            flat[sel] = self._inflate(b)[rows[sel] - b * self.group]
        return out

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._count):
            raise IndexError(f"frame index out of range for {self._count} frames")
        return self.decode_into(idx, np.empty((len(idx), *self.frame_shape), dtype=np.uint8))

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
