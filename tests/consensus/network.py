"""A tiny in-memory network of Raft cores for unit tests: deliver, drop, isolate, restart."""

from __future__ import annotations

import random
from dataclasses import replace

from consensus.raft import Config, Raft
from consensus.storage import MemoryStorage
from consensus.types import ConfState, Entry, EntryType, Message, NodeId, Role


class Network:
    def __init__(self, ids: list[str], seed: int = 1, **overrides: object) -> None:
        self.conf = ConfState(voters=frozenset(ids))
        self.configs: dict[NodeId, Config] = {}
        self.storages: dict[NodeId, MemoryStorage] = {}
        self.nodes: dict[NodeId, Raft] = {}
        self.applied: dict[NodeId, list[Entry]] = {}
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self.drop_types: set[type] = set()
        self.inbox: list[Message] = []
        self.seed = seed
        for i in ids:
            self.add(i, Config(id=i, **overrides), MemoryStorage(self.conf))  # type: ignore[arg-type]

    def add(self, i: NodeId, cfg: Config, storage: MemoryStorage) -> Raft:
        self.configs[i] = cfg
        self.storages[i] = storage
        self.nodes[i] = Raft(cfg, storage, random.Random(f"{self.seed}:{i}"))
        self.applied.setdefault(i, [])
        return self.nodes[i]

    def restart(self, i: NodeId) -> Raft:
        """Crash ``i`` (losing unsynced writes) and start it again from durable state."""
        applied = len(self.applied[i])
        cfg = replace(self.configs[i], applied=applied)
        return self.add(i, cfg, self.storages[i].crashed())

    def isolate(self, i: NodeId) -> None:
        for j in self.nodes:
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def heal(self) -> None:
        self.cut.clear()

    def process(self, i: NodeId) -> None:
        r = self.nodes[i]
        while r.has_ready():
            rd = r.ready()
            self.storages[i].save(rd.hard_state, rd.entries, rd.snapshot)
            for m in rd.messages:
                if (m.src, m.dst) not in self.cut and type(m) not in self.drop_types:
                    self.inbox.append(m)
            if rd.snapshot is not None:
                snap_entries = self.applied[i][: rd.snapshot.meta.index]
                self.applied[i] = snap_entries + [
                    Entry(k, 0) for k in range(len(snap_entries) + 1, rd.snapshot.meta.index + 1)
                ]
            self.applied[i].extend(rd.committed_entries)
            r.advance(rd)

    def settle(self, max_rounds: int = 10_000) -> None:
        """Process and deliver until nothing is left to do."""
        for _ in range(max_rounds):
            for i in sorted(self.nodes):
                self.process(i)
            if not self.inbox:
                return
            batch, self.inbox = self.inbox, []
            for m in batch:
                if m.dst in self.nodes:
                    self.nodes[m.dst].step(m)
        raise AssertionError("network did not settle")

    def tick(self, n: int = 1, only: list[NodeId] | None = None) -> None:
        for _ in range(n):
            for i in sorted(self.nodes):
                if only is None or i in only:
                    self.nodes[i].tick()
            self.settle()

    def elect(self, i: NodeId) -> None:
        self.nodes[i].campaign()
        self.settle()
        assert self.nodes[i].role is Role.LEADER, f"{i} is {self.nodes[i].role}"

    def leaders(self) -> list[NodeId]:
        return sorted(i for i, r in self.nodes.items() if r.role is Role.LEADER)

    def data_applied(self, i: NodeId) -> list[bytes]:
        return [e.data for e in self.applied[i] if e.type is EntryType.NORMAL and e.data]
