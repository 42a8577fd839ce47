"""``SortedList``: a sorted sequence with cheap insertion and removal anywhere.

Why: the state machine's indexes (all runs, the queues, retention orders) hold up
to hundreds of thousands of items and change on every applied entry; a plain sorted
list pays a memmove of the whole tail for each insertion or removal near the front.
This keeps the items in sublists of at most ``SUBLIST_ITEMS_MAX`` (the idea of the
``sortedcontainers`` package, cut down to what the indexes need), so both cost
O(log n + SUBLIST_ITEMS_MAX).

Rules: items are unique and totally ordered (the indexes hold tuples ending in an
id); ``remove`` of an absent item is a broken invariant (``assert``). Iteration is
in ascending order; equality is by items, also against a plain list.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, Generic, TypeVar, overload

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

T = TypeVar("T", bound="SupportsRichComparison")

SUBLIST_ITEMS_MAX: Final = 512


class SortedList(Sequence[T], Generic[T]):
    """Ascending, unique items in sublists; ``_maxes[i]`` is ``_lists[i][-1]``."""

    __slots__ = ("_len", "_lists", "_maxes")

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._lists: list[list[T]] = []
        self._maxes: list[T] = []
        self._len = 0
        for item in sorted(items):
            self.add(item)

    def add(self, item: T) -> None:
        if not self._maxes:
            self._lists.append([item])
            self._maxes.append(item)
        else:
            i = bisect_left(self._maxes, item)
            if i == len(self._maxes):  # beyond the end: the common case for new ids
                i -= 1
                self._lists[i].append(item)
                self._maxes[i] = item
            else:
                assert self._maxes[i] != item, ("already present", item)
                insort(self._lists[i], item)
            if len(self._lists[i]) > SUBLIST_ITEMS_MAX:
                half = self._lists[i][SUBLIST_ITEMS_MAX // 2 :]
                del self._lists[i][SUBLIST_ITEMS_MAX // 2 :]
                self._lists.insert(i + 1, half)
                self._maxes.insert(i, self._lists[i][-1])
        self._len += 1

    def remove(self, item: T) -> None:
        i = bisect_left(self._maxes, item)
        assert i < len(self._maxes), ("absent", item)
        sub = self._lists[i]
        j = bisect_left(sub, item)
        assert j < len(sub) and sub[j] == item, ("absent", item)
        del sub[j]
        if sub:
            self._maxes[i] = sub[-1]
        else:
            del self._lists[i]
            del self._maxes[i]
        self._len -= 1

    def from_(self, lo: T) -> Iterator[T]:
        """Items ``>= lo``, ascending."""
        i = bisect_left(self._maxes, lo)
        if i < len(self._lists):
            sub = self._lists[i]
            yield from sub[bisect_left(sub, lo) :]
            for sub in self._lists[i + 1 :]:
                yield from sub

    def below(self, hi: T) -> Iterator[T]:
        """Items ``< hi``, descending."""
        i = bisect_left(self._maxes, hi)
        if i < len(self._lists):
            sub = self._lists[i]
            yield from reversed(sub[: bisect_left(sub, hi)])
        for sub in reversed(self._lists[: min(i, len(self._lists))]):
            yield from reversed(sub)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[T]:
        for sub in self._lists:
            yield from sub

    def __reversed__(self) -> Iterator[T]:
        for sub in reversed(self._lists):
            yield from reversed(sub)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(index)
        for sub in self._lists:
            if index < len(sub):
                return sub[index]
            index -= len(sub)
        raise AssertionError("length out of step")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SortedList | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"SortedList({list(self)!r})"


__all__ = ["SUBLIST_ITEMS_MAX", "SortedList"]
