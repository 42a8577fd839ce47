"""A scheduler state machine over LMDB with each proposal committed at the next index:
a cluster of one with no Raft, for tests of the services built on the state machine."""

from __future__ import annotations

from pathlib import Path

from consensus.types import ConfState, Entry
from node.driver import Committed, Outcome
from node.scheduler import SchedulerStateMachine
from storage.log import LmdbLogStorage


class OneNode:
    def __init__(self, path: Path) -> None:
        self.store = LmdbLogStorage(path, initial_conf=ConfState(voters=frozenset({"n1"})))
        self.sm = SchedulerStateMachine(self.store)
        self.index = 0

    async def propose(self, data: bytes, timeout_s: float) -> Outcome:
        self.index += 1
        entry = Entry(self.index, 1, data=data)
        self.store.save(None, [entry])
        results, persist = self.sm.apply([entry])
        persist()
        return Committed(self.index, results[0])

    async def read_barrier(self, timeout_s: float) -> int:
        return self.index
