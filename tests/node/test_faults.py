"""The fault-injection hooks on real transports: a blocked link loses frames (and RPC
requests time out), a delayed link delivers later and in order, loss is partial and
counted, and the clock offset and planted bugs are off unless a state is installed."""

from __future__ import annotations

import random

import pytest
import trio

from node import faults
from node.faults import FaultState
from node.transport import RequestTimeout
from storage.errors import StorageFull
from tests.node.transporthelpers import Node, connect_all, eventually, heartbeat, running


async def test_a_blocked_link_loses_frames_and_requests_time_out() -> None:
    a, b = Node("n1"), Node("n2")
    state = FaultState("n1")
    a.transport.outbound_hook = state.outbound

    async def echo(peer: str, body: bytes) -> bytes:
        return body

    b.transport.on_request("echo", echo)
    async with running(a, b):
        connect_all(a, b)
        state.apply({"links": {"n2": {"block": True}}})
        assert a.transport.send("n2", heartbeat("n1", "n2", 1))  # lost on the wire
        with pytest.raises(RequestTimeout):
            await a.transport.request("n2", "echo", b"x", timeout_s=0.3)
        assert b.transport.send("n1", heartbeat("n2", "n1", 2))  # the other way is open
        await eventually(lambda: len(a.received) == 1)
        assert b.received == [] and state.counters.frames_blocked == 2
        state.apply({})
        assert await a.transport.request("n2", "echo", b"y", timeout_s=2) == b"y"


async def test_a_delayed_link_delivers_later_in_order() -> None:
    a, b = Node("n1"), Node("n2")
    state = FaultState("n1")
    a.transport.outbound_hook = state.outbound
    async with running(a, b) as nursery:
        await nursery.start(state.run)
        connect_all(a, b)
        state.apply({"links": {"n2": {"delay_ms": 300}}})
        sent_at = trio.current_time()
        for i in range(5):
            assert a.transport.send("n2", heartbeat("n1", "n2", i))
        await trio.sleep(0.1)
        assert b.received == []
        await eventually(lambda: len(b.received) == 5)
        assert trio.current_time() - sent_at >= 0.3
        assert b.frames_from("n1") == [heartbeat("n1", "n2", i) for i in range(5)]


async def test_loss_drops_some_frames_and_counts_them() -> None:
    a, b = Node("n1"), Node("n2")
    state = FaultState("n1", random.Random(3))
    a.transport.outbound_hook = state.outbound
    async with running(a, b):
        connect_all(a, b)
        state.apply({"links": {"n2": {"drop": 0.5}}})
        for i in range(200):
            a.transport.send("n2", heartbeat("n1", "n2", i))
        await eventually(lambda: len(b.received) + state.counters.frames_dropped == 200)
        assert 50 < state.counters.frames_dropped < 150


def test_without_an_installed_state_nothing_is_injected() -> None:
    assert faults._active is None
    assert faults.clock_offset_ms() == 0
    assert not faults.planted(faults.UNFENCED_START)
    state = FaultState("n1")
    state.apply({"disk_full": True})
    with pytest.raises(StorageFull, match="no room"):
        state.check_write()
