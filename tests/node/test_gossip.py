"""The gossip driver on real UDP sockets over 127.0.0.1 (real time: sockets need it)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import random
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.swim import EventKind, MemberEvent, MemberState, NodeMeta, Swim, SwimConfig
from consensus.swim_types import Addr, Ping
from node.gossip import (
    HMAC_BYTES,
    DatagramMalformed,
    DatagramUnauthenticated,
    GossipService,
    decode_datagram,
    encode_datagram,
)

KEY = b"k" * 32
TICK_MS = 10
CFG = SwimConfig(
    probe_ticks=5, ack_timeout_ticks=2, suspicion_ticks=10, sync_ticks=50, tombstone_ticks=100_000
)
DEADLINE_S = 5.0


def make(node: str, seed: int = 0) -> GossipService:
    swim = Swim(
        node, ("127.0.0.1", 0), NodeMeta(raft_id=node), random.Random(f"{seed}:{node}"), CFG
    )
    return GossipService(swim, "127.0.0.1", 0, KEY, tick_ms=TICK_MS)


async def run_until_cancelled(
    scope: trio.CancelScope, svc: GossipService, *, task_status: trio.TaskStatus[Addr]
) -> None:
    with scope:
        await svc.run(task_status=task_status)


@contextlib.asynccontextmanager
async def cluster(n: int) -> AsyncIterator[tuple[list[GossipService], list[trio.CancelScope]]]:
    """``n`` services, each in its own cancel scope, all joined through the first."""
    services = [make(f"n{i}") for i in range(n)]
    scopes = [trio.CancelScope() for _ in services]
    async with trio.open_nursery() as nursery:
        for svc, scope in zip(services, scopes, strict=True):
            await nursery.start(partial(run_until_cancelled, scope, svc))
        for svc in services[1:]:
            await svc.join([services[0].address])
        yield services, scopes
        nursery.cancel_scope.cancel()


async def wait_for(svc: GossipService, ok: Callable[[], bool]) -> None:
    with trio.fail_after(DEADLINE_S):
        while not ok():
            await svc.wait_change()


def sees(svc: GossipService, node: str) -> MemberState | None:
    found = [m.state for m in svc.members() if m.id == node]
    return found[0] if found else None


def all_alive(services: list[GossipService]) -> Callable[[], bool]:
    names = {s.swim.id for s in services}

    def ok() -> bool:
        return all(
            {m.id for m in s.members() if m.state is MemberState.ALIVE} == names for s in services
        )

    return ok


async def wait_all_alive(services: list[GossipService]) -> None:
    with trio.fail_after(DEADLINE_S):
        while not all_alive(services)():
            await trio.sleep(TICK_MS / 1000)


async def wait_counter(svc: GossipService, name: str) -> int:
    with trio.fail_after(DEADLINE_S):
        while (value := int(getattr(svc.statistics().counters, name))) == 0:
            await trio.sleep(TICK_MS / 1000)
    return value


async def test_three_services_converge() -> None:
    async with cluster(3) as (services, _):
        await wait_all_alive(services)
        for svc in services:
            stats = svc.statistics()
            assert stats.address[1] != 0 and stats.counters.datagrams_sent > 0
            assert stats.counters.dropped_unauthenticated == stats.counters.dropped_malformed == 0
            assert [m.addr for m in svc.members()] == [s.address for s in services]


async def send_raw(data: bytes, to: Addr) -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.sendto(data, to)


def sign(body: bytes, key: bytes = KEY) -> bytes:
    return body + hmac.digest(key, body, hashlib.sha256)


async def test_wrong_key_and_garbage_are_dropped_and_counted() -> None:
    async with cluster(3) as (services, _):
        await wait_all_alive(services)
        target = services[1]
        await send_raw(encode_datagram(Ping(1, "n0", "n1"), b"x" * 32), target.address)
        assert await wait_counter(target, "dropped_unauthenticated") == 1
        for garbage in (b"\x00garbage\xff" * 5, b"", sign(b"\xc1", b"y" * 32)):
            await send_raw(garbage, target.address)
        await send_raw(sign(b"\xc1 is never msgpack"), target.address)
        await send_raw(sign(msgpack.packb([0, "not", "a ping"])), target.address)
        assert await wait_counter(target, "dropped_malformed") >= 1
        await send_raw(b"x" * (CFG.max_datagram_bytes + 1), target.address)
        assert await wait_counter(target, "dropped_oversize") == 1
        counters = target.statistics().counters
        assert counters.dropped_unauthenticated == 4
        assert counters.dropped_malformed == 2
        assert all_alive(services)()  # nothing disturbed the membership
        await trio.sleep(5 * CFG.probe_ticks * TICK_MS / 1000)
        assert all_alive(services)()


async def test_a_cancelled_service_is_suspected_then_dead() -> None:
    async with cluster(3) as (services, scopes):
        await wait_all_alive(services)
        events = services[0].subscribe()
        scopes[2].cancel()
        seen: list[MemberEvent] = []
        with trio.fail_after(DEADLINE_S):
            async for ev in events:
                if ev.member.id == "n2":
                    seen.append(ev)
                if ev.kind is EventKind.DEAD:
                    break
        assert [e.kind for e in seen] == [EventKind.SUSPECT, EventKind.DEAD]
        await wait_for(services[1], lambda: sees(services[1], "n2") is MemberState.DEAD)
        assert sees(services[0], "n1") is sees(services[1], "n0") is MemberState.ALIVE


async def test_leave_and_metadata_reach_the_others() -> None:
    async with cluster(3) as (services, scopes):
        await wait_all_alive(services)
        meta = NodeMeta(raft_id="n1", api_address="127.0.0.1:8080", free_slots=4, tags=("gpu",))
        await services[1].update_meta(meta)
        await wait_for(services[0], lambda: any(m.meta == meta for m in services[0].members()))
        await services[2].leave()
        scopes[2].cancel()
        await wait_for(services[0], lambda: sees(services[0], "n2") is MemberState.LEFT)
        await wait_for(services[1], lambda: sees(services[1], "n2") is MemberState.LEFT)
        await trio.sleep(10 * CFG.probe_ticks * TICK_MS / 1000)
        assert sees(services[0], "n2") is sees(services[1], "n2") is MemberState.LEFT


async def test_missed_ticks_are_caught_up_within_a_bound() -> None:
    svc = make("n0")
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await trio.sleep(0.05)
        before = svc.statistics().counters
        time.sleep(0.5)  # block the whole trio thread: 50 ticks of 10 ms go by unseen
        await trio.sleep(0.02)
        after = svc.statistics().counters
        nursery.cancel_scope.cancel()
    caught_up = after.ticks - before.ticks
    assert 20 <= caught_up <= 20 + 10  # at most max_catchup_ticks at once, then on time
    assert 25 <= after.ticks_skipped - before.ticks_skipped <= 40
    assert svc.statistics().swim.ticks == after.ticks


def test_datagram_codec_rejects_what_it_must() -> None:
    msg = Ping(5, "n0", "n1")
    data = encode_datagram(msg, KEY)
    assert data[:-HMAC_BYTES] == msgpack.packb([0, 5, "n0", "n1", []])
    assert decode_datagram(data, KEY) == msg
    with pytest.raises(DatagramUnauthenticated):
        decode_datagram(data, b"y" * 32)
    with pytest.raises(DatagramUnauthenticated):
        decode_datagram(data[:-1] + bytes([data[-1] ^ 1]), KEY)
    with pytest.raises(DatagramUnauthenticated):
        decode_datagram(data[:HMAC_BYTES], KEY)
    with pytest.raises(DatagramMalformed):
        decode_datagram(sign(msgpack.packb({"kind": "ping"})), KEY)
    with pytest.raises(DatagramMalformed):
        decode_datagram(sign(msgpack.packb([0, 5, "n0", "n1", []]) + b"\x00"), KEY)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_any_authentic_body_decodes_or_is_rejected_as_malformed(body: bytes) -> None:
    with contextlib.suppress(DatagramMalformed):  # anything else escapes and fails
        decode_datagram(sign(body), KEY)


def test_service_refuses_a_short_key_and_a_wildcard_address() -> None:
    swim = Swim("n0", ("127.0.0.1", 0), NodeMeta(), random.Random(0), CFG)
    with pytest.raises(ValueError, match="cluster key"):
        GossipService(swim, "127.0.0.1", 0, b"short")
    swim = Swim("n0", ("0.0.0.0", 0), NodeMeta(), random.Random(0), CFG)
    with pytest.raises(ValueError, match="wildcard"):
        GossipService(swim, "0.0.0.0", 0, KEY)
