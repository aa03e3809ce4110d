"""A small named registry (timm style): ``FUSIONS.register("film")(builder)``, ``FUSIONS.get("film")``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (policy types, fusion modules, action heads, ...).

    ``key`` is the config key that selects an entry, used in error messages: ``model.fusion: expected one of
    ['cross_attention', 'early', 'film', 'late'], got 'foo'``."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.key}: expected a non-empty name to register, got {name!r}")

        def add(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str, key: str | None = None) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"{key or self.key}: expected one of {self.names()}, got {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


__all__ = ["Registry"]
