"""A copy-on-write record store: a shared immutable world plus each episode's changes.

Resetting an episode is O(1) (a new empty overlay) and hashing the final state is O(changes):
records equal to the world's are left out of the digest, so the digest of two stores is equal
exactly when their full contents are. This is what lets reset + verification of a world with
thousands of records cost well under a millisecond instead of a reload and a full hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Generic, TypeVar

from pydantic import BaseModel

R = TypeVar("R", bound=BaseModel)

_DELETED = None


class Table(Generic[R]):
    """One table of a store: the world's records and this episode's changes to them."""

    def __init__(self, name: str, base: Mapping[str, R]) -> None:
        self.name = name
        self._base = base
        self._changes: dict[str, R | None] = {}

    def get(self, key: str) -> R | None:
        """The current record under ``key``, or None."""
        if key in self._changes:
            return self._changes[key]
        return self._base.get(key)

    def put(self, key: str, record: R) -> None:
        """Insert or replace a record (records are frozen; pass a new one)."""
        self._changes[key] = record

    def delete(self, key: str) -> None:
        """Remove a record."""
        self._changes[key] = _DELETED

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def changed(self) -> list[tuple[str, R | None]]:
        """The records that differ from the world, sorted by key."""
        diff = [(k, v) for k, v in self._changes.items() if v != self._base.get(k)]
        return sorted(diff, key=lambda kv: kv[0])


class Store:
    """Named tables over a shared world, with a canonical digest of the whole state."""

    def __init__(self, tables: Mapping[str, Mapping[str, BaseModel]]) -> None:
        self.tables: dict[str, Table[BaseModel]] = {n: Table(n, b) for n, b in tables.items()}

    def digest(self) -> str:
        """A SHA-256 over every record that differs from the world, in canonical order."""
        h = hashlib.sha256()
        for name in sorted(self.tables):
            for key, record in self.tables[name].changed():
                body = "<deleted>" if record is None else record.model_dump_json()
                h.update(f"{name}\x1f{key}\x1f{body}\x1e".encode())
        return h.hexdigest()
