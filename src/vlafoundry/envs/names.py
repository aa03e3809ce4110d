"""Env lists: several env names in one string, or in a suite file.

An env argument (``data generate ENV``, ``data.env``, ``eval --env``) is one of

* one name: ``babyai/GoToLocal``, ``metaworld/push``, a family's suite ``metaworld/mt10``;
* a comma-separated list of names: ``metaworld/handle-press,metaworld/coffee-push`` (suites allowed);
* a suite file: the path of a ``.yaml`` / ``.yml`` / ``.txt`` file listing names (format: docs/data.md).

This module only splits such arguments into entries; :mod:`vlafoundry.envs.registry` canonicalises, validates and
expands them through the families. It knows no family.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: File name endings that make an env argument a suite file.
SUITE_FILE_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".txt")
LIST_SEPARATOR = ","
#: Keys a YAML suite file's mapping may hold (``tasks`` is required).
_SUITE_KEYS = frozenset({"tasks", "description"})
_SLUG_LIMIT = 64


def is_suite_file(name: str) -> bool:
    """True when ``name`` names a suite file (by its ending; the file need not exist yet)."""
    return str(name).strip().lower().endswith(SUITE_FILE_SUFFIXES)


def is_env_list(name: str | Sequence[str]) -> bool:
    """True for a sequence of names, a comma-separated list or a suite file (anything but one name)."""
    if not isinstance(name, str):
        return True
    return LIST_SEPARATOR in name or is_suite_file(name)


def read_suite_file(path: str | Path) -> list[str]:
    """The env names a suite file lists, in order (not yet validated).

    ``.txt``: one name per line; blank lines and ``#`` comments are ignored. ``.yaml`` / ``.yml``: a list of names,
    or a mapping with ``tasks`` (that list) and an optional ``description``.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValueError(f"suite file {str(path)!r}: expected a readable file listing env names, got "
                         f"{exc.strerror or exc}") from None
    if p.suffix.lower() == ".txt":
        entries: list[Any] = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        entries = [e for e in entries if e]
    else:
        entries = _yaml_entries(p, text)
    names = [str(e).strip() for e in entries]
    bad = [e for e in entries if not isinstance(e, str) or not str(e).strip() or is_suite_file(str(e))]
    if bad:
        raise ValueError(f"suite file {str(path)!r}: expected env names such as 'metaworld/push' (not other suite "
                         f"files), got {bad}")
    if not names:
        raise ValueError(f"suite file {str(path)!r}: expected at least one env name, got none")
    return names


def _yaml_entries(path: Path, text: str) -> list[Any]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"suite file {str(path)!r}: invalid YAML ({exc})") from None
    if isinstance(data, dict):
        unknown = sorted(set(map(str, data)) - _SUITE_KEYS)
        if unknown or "tasks" not in data:
            raise ValueError(f"suite file {str(path)!r}: expected a list of env names or a mapping with keys "
                             f"{sorted(_SUITE_KEYS)} ('tasks' required), got keys {sorted(map(str, data))}")
        data = data["tasks"]
    if not isinstance(data, list):
        raise ValueError(f"suite file {str(path)!r}: expected a list of env names, got {type(data).__name__}")
    return data


def split_env_list(name: str | Sequence[str]) -> list[str]:
    """The entries of an env argument: ``"a/x, a/y"`` -> ``["a/x", "a/y"]``; a suite file -> the names it lists;
    one name -> ``[name]``; a sequence -> the entries of each item, in order. Entries are stripped, not validated."""
    if not isinstance(name, str):
        items = list(name)
        if not items:
            raise ValueError("env names: expected at least one name, got an empty list")
        return [e for item in items for e in split_env_list(str(item))]
    text = name.strip()
    if is_suite_file(text):
        return [e for entry in read_suite_file(text) for e in split_env_list(entry)]
    entries = [e.strip() for e in text.split(LIST_SEPARATOR)]
    if not all(entries):
        raise ValueError(f"env list: expected names separated by single commas, such as "
                         f"'metaworld/handle-press,metaworld/coffee-push', got {name!r} (an empty entry)")
    return entries


def list_slug(family: str, entries: Sequence[str]) -> str:
    """A short, file-name-safe, deterministic slug of a canonical env list: the family, the first entry, how many
    more, and a hash of the whole list (``metaworld-handle-press-and-1-more-1a2b3c4d``)."""
    digest = hashlib.sha256(LIST_SEPARATOR.join(entries).encode("utf-8")).hexdigest()[:8]
    first = re.sub(r"[^a-z0-9]+", "-", entries[0].split("/", 1)[-1].lower()).strip("-") or "env"
    tail = f"-and-{len(entries) - 1}-more-{digest}"
    head = f"{family}-{first}"[: max(8, _SLUG_LIMIT - len(tail))].rstrip("-")
    return head + tail


__all__ = ["SUITE_FILE_SUFFIXES", "is_env_list", "is_suite_file", "list_slug", "read_suite_file", "split_env_list"]
