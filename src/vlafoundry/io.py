"""Files every layer writes and reads: JSON written atomically, safetensors without pickle.

The lowest layer of the package (it imports nothing from ``vlafoundry``): datasets, policies
(``save_pretrained``) and training checkpoints all write through it, so one crash-safe implementation serves all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


class FileFormatError(ValueError):
    """A file is missing or not what it should be; the message names the file and the problem."""


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, default: Callable[[Any], Any] | None = None) -> None:
    """Write JSON (sorted keys, deterministic) to a temp file, fsync it and rename it into place.

    A crash leaves either the old file or the new one, never a half-written one. ``default`` is ``json.dump``'s hook
    for objects JSON cannot encode (e.g. ``str`` for paths).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written temp file left beside the old one
        raise


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path) as f:
        return json.load(f)


def load_json_file(path: str | os.PathLike[str], error: type[Exception] = FileFormatError) -> Any:
    """Read a JSON file, raising ``error`` that names the file when it is missing or not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: invalid JSON ({exc})") from None


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a safetensors file and fsync it (contiguous CPU copies; no pickle)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def load_tensors(path: str | os.PathLike[str], error: type[Exception] = FileFormatError) -> dict[str, Any]:
    """Read a safetensors file, raising ``error`` that names the file when it is missing or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise error(f"{path}: not a valid safetensors file ({exc})") from None


__all__ = ["FileFormatError", "load_json_file", "load_tensors", "read_json", "save_tensors", "write_json_atomic"]
