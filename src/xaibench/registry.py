"""One registry vocabulary for methods and metrics, shared by the Python API, configs and the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from xaibench.config import suggest
from xaibench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> entry mapping whose lookups fail with suggestions.

    Names are lower-case; ``-`` and ``_`` are interchangeable on lookup, so ``gradcam-plus-plus``
    and ``gradcam_plus_plus`` name the same entry.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @staticmethod
    def _key(name: str) -> str:
        return name.strip().lower().replace("-", "_")

    def add(self, name: str, entry: T) -> T:
        key = self._key(name)
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[key] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        key = self._key(name)
        if key not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{suggest(key, self._entries)} Known: {', '.join(sorted(self._entries))}."
            )
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())
