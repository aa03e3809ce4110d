"""Compress a Minari HDF5 file in place, so that ``minari.load_dataset`` still reads it unchanged.

Minari 0.5's writer has no lossless compression option (only lossy JPEG for image spaces), so the file it
writes is rewritten once: every large numeric dataset (image frames above all) becomes one chunk per episode
compressed with HDF5's built-in deflate filter (+ byte shuffle for multi-byte types, + Fletcher-32 checksums),
which every HDF5 build and h5py decode transparently; small datasets become contiguous (a chunked dataset costs
a chunk index per episode, which was most of a short BabyAI episode's bytes). Groups, attributes, names, dtypes
and values are kept, so ``iterate_episodes()`` returns the same arrays. Objects are written in the HDF5 1.10
format (readable by HDF5 >= 1.10, any h5py 3) without timestamps, so the bytes are a function of the content.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

GZIP_LEVEL = 6
#: datasets of at least this many bytes are compressed (one chunk each); smaller ones are stored contiguous
MIN_COMPRESS_BYTES = 4096
LIBVER = ("v110", "v110")


def _group(parent: Any, name: str) -> Any:
    """A new group without timestamps (HDF5 stores creation times in 1.10-format object headers by default)."""
    import h5py

    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    h5py.h5g.create(parent.id, name.encode(), gcpl=gcpl)
    return parent[name]


def _copy(src: Any, dst: Any, level: int, min_bytes: int) -> None:
    import h5py

    dst.attrs.update(src.attrs)
    for key, obj in src.items():
        if isinstance(obj, h5py.Group):
            _copy(obj, _group(dst, key), level, min_bytes)
            continue
        data = obj[()]
        kw: dict[str, Any] = {"dtype": obj.dtype, "track_times": False}
        numeric = obj.dtype.kind in "biuf" and obj.ndim >= 1 and obj.shape[0] > 0
        if numeric and obj.nbytes >= min_bytes:
            kw.update(chunks=obj.shape, compression="gzip", compression_opts=level, fletcher32=True,
                      shuffle=obj.dtype.itemsize > 1)
        out = dst.create_dataset(key, data=data, **kw)
        out.attrs.update(obj.attrs)


def compress_hdf5(path: str | os.PathLike[str], level: int = GZIP_LEVEL, min_bytes: int = MIN_COMPRESS_BYTES) -> None:
    """Rewrite the HDF5 file ``path`` with its large datasets deflate-compressed (see the module doc)."""
    import h5py

    path = Path(path)
    tmp = path.with_name(path.name + ".compressing")
    try:
        with h5py.File(path, "r") as src, h5py.File(tmp, "w", libver=LIBVER, track_order=True) as dst:
            dst.attrs.update(src.attrs)
            for key in src:  # Minari's episode order (track_order), kept
                _copy(src[key], _group(dst, key), level, min_bytes)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def update_minari_size(data_dir: str | os.PathLike[str]) -> None:
    """Set ``dataset_size`` (MB, as Minari computes it) in ``data_dir``/metadata.json after the data changed."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "metadata.json"
    meta = json.loads(meta_path.read_text())
    size = sum(p.stat().st_size for p in data_dir.glob("**/*") if p.is_file() and p != meta_path)
    size += meta_path.stat().st_size
    meta["dataset_size"] = float(np.round(size / 1e6, 1))
    meta_path.write_text(json.dumps(meta))


def image_storage(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Bytes stored vs bytes held by the uint8 datasets of rank >= 3 (frames) of an HDF5 file, and their filters."""
    import h5py

    stats = {"frames": 0, "raw_bytes": 0, "stored_bytes": 0, "filters": set()}

    def visit(_name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype == np.uint8 and obj.ndim >= 3:
            stats["frames"] += int(obj.shape[0])
            stats["raw_bytes"] += int(obj.nbytes)
            stats["stored_bytes"] += int(obj.id.get_storage_size())
            stats["filters"].add(obj.compression or "none")

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    stats["filters"] = sorted(stats["filters"])
    return stats
