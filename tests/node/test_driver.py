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

    async def start(self, nursery: trio.Nursery) -> str:
        """Run every driver in ``nursery``; returns the leader they elect."""
        for d in self.drivers.values():
            await nursery.start(d.run)
        return await self.wait_leader()

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
        leader = await c.start(nursery)
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
        leader = await c.start(nursery)
        c.down.add(leader)  # the old leader can no longer reach anyone
        outcome = await c.drivers[leader].propose(b"lost?", timeout_s=1.0)
        assert isinstance(outcome, Unknown)
        new_leader = await c.wait_leader()
        assert new_leader != leader
        outcome2 = await c.drivers[new_leader].propose(b"after", timeout_s=2.0)
        assert isinstance(outcome2, Committed)
        nursery.cancel_scope.cancel()


async def test_every_change_of_leader_reaches_the_soft_state_observer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(["a", "b", "c"])
    seen: dict[str, list[str | None]] = {i: [] for i in c.drivers}
    for i, d in c.drivers.items():
        d.soft_state_observer = lambda soft, i=i: seen[i].append(soft.leader)
    async with trio.open_nursery() as nursery:
        first = await c.start(nursery)
        await trio.sleep(0.5)
        assert all(leaders[-1] == first for leaders in seen.values())
        c.down.add(first)
        second = await c.wait_leader()
        await trio.sleep(0.5)
        for i in c.drivers:
            if i != first:
                assert seen[i][-1] == second and first in seen[i]
        nursery.cancel_scope.cancel()


async def test_snapshot_compacts_and_lagging_follower_catches_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(["a", "b", "c"])
    async with trio.open_nursery() as nursery:
        leader = await c.start(nursery)
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
        leader = await c.start(nursery)
        follower = next(i for i in c.drivers if i != leader)
        outcome = await services[follower].propose(b"via-follower", timeout_s=5.0)
        assert isinstance(outcome, Committed)
        assert outcome.result == b"ok:via-follower"
        # Several at once: in one step on the leader, one by one (forwarded) elsewhere.
        for node in (leader, follower):
            many = await services[node].propose_many([b"m1", b"m2"], timeout_s=5.0)
            assert [o.result for o in many if isinstance(o, Committed)] == [b"ok:m1", b"ok:m2"]
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
        leader = await c.start(nursery)
        term = c.drivers[leader].raft.term
        async with trio.open_nursery() as proposers:
            for n in range(10):
                proposers.start_soon(c.drivers[leader].propose, b"x%d" % n, 60.0)
        await trio.sleep(2.0)
        assert c.leader() == leader and c.drivers[leader].raft.term == term
        assert all(len(sm.items) == 10 for sm in c.sms.values())
        nursery.cancel_scope.cancel()


async def test_a_stall_is_dropped_not_compressed_into_ticks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A one-second apply stalls the loop. Catching up all twenty ticks at once would
    # close a check-quorum window before the answers that came meanwhile are read;
    # the core gets at most one heartbeat interval of ticks before the inbox is read.
    c = Cluster(["a"])
    driver = c.drivers["a"]
    ticks: list[float] = []
    core_tick = driver.raft.tick

    def counting_tick() -> None:
        ticks.append(trio.current_time())
        core_tick()

    driver.raft.tick = counting_tick  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await c.start(nursery)
        driver.sm = SlowStateMachine(autojump_clock, 1.0)
        before = len(ticks)
        assert isinstance(await driver.propose(b"slow", 5.0), Committed)
        stalled_at = trio.current_time()
        after_stall = [t for t in ticks[before:] if t == stalled_at]
        assert 1 <= len(after_stall) <= driver.raft.cfg.heartbeat_ticks
        nursery.cancel_scope.cancel()


async def test_commit_age_is_from_the_commit_not_from_the_apply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(["a", "b", "c"])
    ages: dict[int, float | None] = {}

    class Recording(SlowStateMachine):
        def apply(self, entries: Sequence[Entry]) -> tuple[list[bytes], Callable[[], None]]:
            out = super().apply(entries)  # 0.1 s of apply per entry, one entry per Ready
            for e in entries:
                if e.data:
                    ages[e.index] = driver.commit_age_s(e.index)
            return out

    async with trio.open_nursery() as nursery:
        leader = await c.start(nursery)
        driver = c.drivers[leader]
        driver.sm = Recording(autojump_clock, 0.1)
        driver.raft.log.max_apply_bytes = 1
        first = driver.raft.last_index() + 1
        assert driver.commit_age_s(first) is None  # not committed yet
        async with trio.open_nursery() as proposers:
            for n in range(5):
                proposers.start_soon(driver.propose, b"x%d" % n, 60.0)
        nursery.cancel_scope.cancel()
    # All five committed together; each waited behind the applies before it.
    assert sorted(ages) == list(range(first, first + 5))
    waits = [ages[i] for i in sorted(ages)]
    assert all(w is not None for w in waits)
    assert waits[-1] is not None and waits[0] is not None and waits[-1] - waits[0] >= 0.35
    assert driver.commit_age_s(0) is None  # before what the node remembers


async def test_propose_many_appends_in_one_step_and_commits_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(["a", "b", "c"])
    async with trio.open_nursery() as nursery:
        leader = await c.start(nursery)
        driver = c.drivers[leader]
        readies = driver.ready_count
        outcomes = await driver.propose_many([b"p%d" % n for n in range(5)], 5.0)
        assert all(isinstance(o, Committed) for o in outcomes)
        indexes = [o.index for o in outcomes if isinstance(o, Committed)]
        assert indexes == list(range(indexes[0], indexes[0] + 5))
        assert [o.result for o in outcomes if isinstance(o, Committed)] == [
            b"ok:p%d" % n for n in range(5)
        ]
        ages = {driver.commit_age_s(i) for i in indexes}
        assert len(ages) == 1 and None not in ages  # one commit step for all five
        assert driver.ready_count - readies <= 3  # persist+send, then apply (and a spare)
        follower = next(d for i, d in c.drivers.items() if i != leader)
        with pytest.raises(NotLeader):
            await follower.propose_many([b"x"], 1.0)
        nursery.cancel_scope.cancel()
