"""The Raft driver on MockClock with in-memory storage and transport."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from consensus.raft import Config, NotLeader
from consensus.storage import MemoryStorage
from consensus.types import ConfState, Entry, EntryType, Message, Role, Snapshot, SnapshotMeta
from node.driver import Committed, RaftDriver, Unknown


class ListStateMachine:
    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.applied = 0

    def applied_index(self) -> int:
        return self.applied

    def apply(self, entries: Sequence[Entry]) -> tuple[list[bytes], Callable[[], None]]:
        out = []
        for e in entries:
            if e.type is EntryType.NORMAL and e.data:
                self.items.append(e.data)
                out.append(b"ok:" + e.data)
            else:
                out.append(b"")
            self.applied = e.index
        return out, lambda: None

    def create_snapshot(self, index: int, term: int, conf: ConfState) -> Snapshot:
        assert index == self.applied
        return Snapshot(SnapshotMeta(index, term, conf), b"\n".join(self.items))

    def restored(self, meta: SnapshotMeta) -> None:
        self.applied = meta.index


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Run storage work in the trio thread so MockClock stays deterministic."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


class Cluster:
    def __init__(self, ids: list[str]) -> None:
        conf = ConfState(voters=frozenset(ids))
        self.down: set[str] = set()
        self.drivers: dict[str, RaftDriver] = {}
        self.sms: dict[str, ListStateMachine] = {}
        for n, i in enumerate(ids):
            sm = ListStateMachine()
            self.sms[i] = sm
            self.drivers[i] = RaftDriver(
                Config(id=i),
                MemoryStorage(conf),
                sm,
                self.send,
                rng_seed=n,
                tick_s=0.05,
                offload=inline,
            )

    def send(self, m: Message) -> bool:
        if m.src in self.down or m.dst in self.down:
            return False
        self.drivers[m.dst].deliver(m)
        return True

    def leader(self) -> str | None:
        leaders = [i for i, d in self.drivers.items() if d.raft.role is Role.LEADER]
        live = [i for i in leaders if i not in self.down]
        return live[0] if len(live) == 1 else None

    async def wait_leader(self) -> str:
        while (leader := self.leader()) is None:
            await trio.sleep(0.05)
        return leader


async def test_three_drivers_elect_commit_and_apply_everywhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(["a", "b", "c"])
    async with trio.open_nursery() as nursery:
        for d in c.drivers.values():
            await nursery.start(d.run)
        leader = await c.wait_leader()
        outcome = await c.drivers[leader].propose(b"hello", timeout_s=2.0)
        assert isinstance(outcome, Committed)
        assert outcome.result == b"ok:hello"
        await trio.sleep(0.5)
        assert all(sm.items == [b"hello"] for sm in c.sms.values())
        follower = next(i for i in c.drivers if i != leader)
        with pytest.raises(NotLeader) as info:
            await c.drivers[follower].propose(b"x", timeout_s=1.0)
        assert info.value.leader == leader
        index = await c.drivers[follower].read_barrier(timeout_s=2.0)
        assert index >= outcome.index
        nursery.cancel_scope.cancel()


async def test_leader_loss_gives_unknown_not_failure_and_new_leader_commits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(["a", "b", "c"])
    async with trio.open_nursery() as nursery:
        for d in c.drivers.values():
            await nursery.start(d.run)
        leader = await c.wait_leader()
        c.down.add(leader)  # the old leader can no longer reach anyone
        outcome = await c.drivers[leader].propose(b"lost?", timeout_s=1.0)
        assert isinstance(outcome, Unknown)
        new_leader = await c.wait_leader()
        assert new_leader != leader
        outcome2 = await c.drivers[new_leader].propose(b"after", timeout_s=2.0)
        assert isinstance(outcome2, Committed)
        nursery.cancel_scope.cancel()


async def test_snapshot_compacts_and_lagging_follower_catches_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(["a", "b", "c"])
    async with trio.open_nursery() as nursery:
        for d in c.drivers.values():
            await nursery.start(d.run)
        leader = await c.wait_leader()
        lagger = next(i for i in c.drivers if i != leader)
        c.down.add(lagger)
        for k in range(20):
            assert isinstance(await c.drivers[leader].propose(b"%d" % k, 2.0), Committed)
        index = await c.drivers[leader].take_snapshot()
        assert c.drivers[leader].storage.first_index() == index + 1
        c.down.clear()
        while c.drivers[lagger].raft.applied_index < index:
            await trio.sleep(0.1)
        assert c.sms[lagger].applied >= index
        nursery.cancel_scope.cancel()


class MemoryRpc:
    """In-memory request/response between NodeServices, with a switch to cut a node."""

    def __init__(self, node: str, hub: dict[str, MemoryRpc], down: set[str]) -> None:
        self.node, self.hub, self.down = node, hub, down
        self.handlers: dict[str, Callable[[str, bytes], Any]] = {}
        hub[node] = self

    def on_request(self, method: str, handler: Callable[[str, bytes], Any]) -> None:
        self.handlers[method] = handler

    async def request(self, peer: str, method: str, body: bytes, timeout_s: float) -> bytes:
        if peer in self.down or self.node in self.down:
            await trio.sleep(timeout_s)
            raise TimeoutError("no answer")
        result: bytes = await self.hub[peer].handlers[method](self.node, body)
        return result


class NoGossip:
    def members(self) -> list[Any]:
        return []


async def test_followers_forward_proposals_to_the_leader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from node.service import NodeService

    c = Cluster(["a", "b", "c"])
    hub: dict[str, MemoryRpc] = {}
    services = {
        i: NodeService(d, NoGossip(), MemoryRpc(i, hub, c.down), f"{i}:1", lambda n, a: None)
        for i, d in c.drivers.items()
    }
    async with trio.open_nursery() as nursery:
        for d in c.drivers.values():
            await nursery.start(d.run)
        leader = await c.wait_leader()
        follower = next(i for i in c.drivers if i != leader)
        outcome = await services[follower].propose(b"via-follower", timeout_s=5.0)
        assert isinstance(outcome, Committed)
        assert outcome.result == b"ok:via-follower"
        # A leader that cannot be reached gives Unknown, never a false failure.
        c.down.add(leader)
        outcome = await services[follower].propose(b"maybe", timeout_s=1.0)
        assert isinstance(outcome, Unknown)
        nursery.cancel_scope.cancel()


class SlowStateMachine(ListStateMachine):
    """Every apply takes ``apply_s`` of (mock) time: a state machine busy with a
    large batch, as 10,000 simultaneous fires make it."""

    def __init__(self, clock: trio.testing.MockClock, apply_s: float) -> None:
        super().__init__()
        self.clock, self.apply_s = clock, apply_s

    def apply(self, entries: Sequence[Entry]) -> tuple[list[bytes], Callable[[], None]]:
        self.clock.jump(self.apply_s)
        return super().apply(entries)


async def test_a_long_apply_backlog_does_not_starve_heartbeats(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(["a", "b", "c"])
    for i, d in c.drivers.items():
        # One entry per Ready, each apply 0.1 s: the three nodes share one (mock) CPU,
        # so a 10-entry backlog keeps them applying for 3 s (election: 0.5-1 s).
        d.sm = c.sms[i] = SlowStateMachine(autojump_clock, 0.1)
        d.raft.log.max_apply_bytes = 1
    async with trio.open_nursery() as nursery:
        for d in c.drivers.values():
            await nursery.start(d.run)
        leader = await c.wait_leader()
        term = c.drivers[leader].raft.term
        async with trio.open_nursery() as proposers:
            for n in range(10):
                proposers.start_soon(c.drivers[leader].propose, b"x%d" % n, 60.0)
        await trio.sleep(2.0)
        assert c.leader() == leader and c.drivers[leader].raft.term == term
        assert all(len(sm.items) == 10 for sm in c.sms.values())
        nursery.cancel_scope.cancel()
