"""The wire format: msgpack maps whose NumPy arrays travel as typed buffers, never pickle.

An array is the map ``{"__ndarray__": True, "dtype": "<f4", "shape": [N, ...], "data": <bytes>}`` (little-endian
dtype string from an allow-list: bool, (u)int8-64, float16/32/64). Decoding checks every field and the byte count
(``prod(shape) * itemsize``) and refuses anything else, naming expected vs got: :class:`CodecError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: dtypes an array on the wire may have (little-endian strings as ``np.dtype.str`` writes them).
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_NDARRAY = "__ndarray__"


class CodecError(ValueError):
    """A message that is not valid msgpack, or an array field that breaks the typed-buffer rules."""


def _require_msgpack() -> Any:
    try:
        import msgpack
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("vlafoundry serving needs msgpack: pip install 'vla-foundry[serve]'",
                                  name=exc.name) from None
    return msgpack


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.str not in ALLOWED_DTYPES:
            arr = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.kind in "biuf" else arr
        if arr.dtype.str not in ALLOWED_DTYPES:
            raise CodecError(f"array dtype: expected one of {sorted(ALLOWED_DTYPES)}, got {obj.dtype.str}")
        return {_NDARRAY: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise CodecError(f"cannot encode {type(obj).__name__}: expected dict, list, str, bytes, number, bool, None "
                     f"or np.ndarray")


def encode(message: dict[str, Any]) -> bytes:
    """A message (dict of plain values and NumPy arrays) -> msgpack bytes."""
    return _require_msgpack().packb(message, default=_encode_default, use_bin_type=True)


def _decode_array(d: dict[str, Any], max_elements: int) -> np.ndarray:
    dtype, shape, data = d.get("dtype"), d.get("shape"), d.get("data")
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise CodecError(f"array dtype: expected one of {sorted(ALLOWED_DTYPES)}, got {dtype!r:.40}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in shape):
        raise CodecError(f"array shape: expected a list of at most 8 non-negative ints, got {shape!r:.60}")
    if not isinstance(data, bytes):
        raise CodecError(f"array data: expected bytes, got {type(data).__name__}")
    n = 1
    for s in shape:
        n *= s
        if n > max_elements:
            raise CodecError(f"array shape {shape}: expected at most {max_elements} elements")
    dt = np.dtype(dtype)
    if len(data) != n * dt.itemsize:
        raise CodecError(f"array data: expected {n * dt.itemsize} bytes for shape {shape} dtype {dtype}, "
                         f"got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def decode(payload: bytes | str, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           max_elements: int = 16 * 1024 * 1024) -> dict[str, Any]:
    """msgpack bytes -> a message dict (arrays rebuilt, read-only views of the payload). Raises :class:`CodecError`
    for text frames, oversized or malformed payloads, a non-map top level, or a bad array."""
    msgpack = _require_msgpack()
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"message: expected a binary frame (msgpack), got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise CodecError(f"message: expected at most {max_bytes} bytes, got {len(payload)}")

    def hook(d: dict[str, Any]) -> Any:
        return _decode_array(d, max_elements) if d.get(_NDARRAY) is True else d

    try:
        msg = msgpack.unpackb(bytes(payload), object_hook=hook, raw=False, strict_map_key=True)
    except CodecError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack raises several types (ExtraData, FormatError, ...)
        raise CodecError(f"message: expected msgpack, got undecodable bytes ({type(exc).__name__}: {exc})"[:300]
                         ) from None
    if not isinstance(msg, dict):
        raise CodecError(f"message: expected a map at the top level, got {type(msg).__name__}")
    return msg


__all__ = ["ALLOWED_DTYPES", "DEFAULT_MAX_MESSAGE_BYTES", "CodecError", "decode", "encode"]
