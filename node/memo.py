"""``Memo``: a bounded map from an input's text to the value built from it.

Why: a batch of tasks, the records of a log, the fires of one slot repeat the same
specs (one executor, one retry policy) thousands of times, and rebuilding each
through its validating constructor costs more than the rest of the path. The key is
the ``repr`` of the raw input (a decoded msgpack or JSON value): equal text means an
equal input, so the value built once, validated once, serves every repeat, and is
one shared immutable object (less memory too). ``repr`` keeps apart what equality
would merge (``1``, ``1.0`` and ``True``; ``0.0`` and ``-0.0``), so a replica
re-encodes exactly what it decoded.

Rules: values must be immutable; a build that raises caches nothing; at most
``items_max`` entries, and a full memo starts over (it adapts to what is repeated
now, and never grows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

T = TypeVar("T")

MEMO_ITEMS_MAX: Final = 1024  # distinct inputs remembered; a batch has up to 1,000


class Memo(Generic[T]):
    __slots__ = ("_items", "hits", "items_max", "misses")

    def __init__(self, items_max: int = MEMO_ITEMS_MAX) -> None:
        assert items_max >= 1, items_max
        self.items_max = items_max
        self._items: dict[str, T] = {}
        self.hits = 0
        self.misses = 0

    def get(self, raw: object, build: Callable[[object], T]) -> T:
        """``build(raw)``, or the value an input with the same ``repr`` built before."""
        key = repr(raw)
        found = self._items.get(key)
        if found is not None:
            self.hits += 1
            return found
        value = build(raw)
        self.misses += 1
        if len(self._items) >= self.items_max:
            self._items.clear()
        self._items[key] = value
        return value

    def __len__(self) -> int:
        return len(self._items)


__all__ = ["MEMO_ITEMS_MAX", "Memo"]
