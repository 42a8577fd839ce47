"""Hostile clients against a live transport: each is disconnected, the node keeps serving.

A legitimate pair (n1 -> n2) exchanges frames throughout; the attacks target n2. The
random fuzz is seeded (``SEED``): a failure replays exactly.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

import msgpack
import pytest
import trio

from consensus.types import AppendEntries, Entry, Heartbeat
from node.wire import (
    MAX_FRAME_BYTES_DEFAULT,
    FrameDecoder,
    RaftFrame,
    Request,
    WireError,
    encode_frame,
)
from tests.node.transporthelpers import (
    FAST,
    Node,
    closed_by_peer,
    connect_all,
    eventually,
    heartbeat,
    raw_client,
    running,
)

SEED = 20_240_601
FUZZ_CONNECTIONS = 200
FUZZ_PARALLEL = 16
LIMITS = replace(FAST, handshake_timeout_s=0.3, max_frame_bytes=1 << 20)


def prefixed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def packed(*fields: object) -> bytes:
    return prefixed(msgpack.packb(list(fields), use_bin_type=True))


async def still_serving(a: Node, b: Node) -> None:
    """The legitimate link works in both directions on its original connection."""
    before = len(b.received)
    a.transport.send("n2", heartbeat("n1", "n2", 99))
    await eventually(lambda: len(b.received) == before + 1)
    assert b.received[-1] == ("n1", heartbeat("n1", "n2", 99))
    assert a.transport.statistics().peers["n2"].counters.connects == 1
    assert b.transport.statistics().inbound_connections == 1


VALID = encode_frame(heartbeat("n9", "n2"))
UNAUTHENTICATED = {
    "garbage": b"\x13\x37" * 300,
    "4 GiB length prefix": b"\xff\xff\xff\xff" + b"x" * 64,
    "a frame instead of a hello": VALID,
    "truncated hello": b"\x00\x00\x00\x40" + b"\x94\x02",
    "hello of the wrong shape": packed(2, "n9"),
}


@pytest.mark.parametrize("payload", UNAUTHENTICATED.values(), ids=UNAUTHENTICATED.keys())
async def test_an_unauthenticated_client_is_disconnected(payload: bytes) -> None:
    a, b = Node("n1", limits=LIMITS), Node("n2", limits=LIMITS)
    async with running(a, b):
        connect_all(a, b)
        await still_serving(a, b)
        stream = await raw_client(b.addr[1])
        await stream.send_all(payload)
        with trio.fail_after(2):  # well before the handshake timeout would matter twice
            assert await closed_by_peer(stream)
        await stream.aclose()
        await still_serving(a, b)
        assert all(p == "n1" for p, _ in b.received)


async def test_a_silent_client_is_dropped_at_the_handshake_timeout() -> None:
    a, b = Node("n1", limits=LIMITS), Node("n2", limits=LIMITS)
    async with running(a, b):
        connect_all(a, b)
        stream = await raw_client(b.addr[1])
        t0 = trio.current_time()
        assert await closed_by_peer(stream, timeout_s=3)
        assert 0.25 <= trio.current_time() - t0 < 2
        assert b.transport.statistics().handshake_timeouts == 1
        await stream.aclose()
        await still_serving(a, b)


AUTHENTICATED = {
    "garbage": b"\x13\x37" * 300,
    "4 GiB length prefix": b"\xff\xff\xff\xff",
    "length just over max_frame_bytes": ((1 << 20) + 1).to_bytes(4, "big"),
    "zero length prefix": b"\x00\x00\x00\x00",
    "body not msgpack": prefixed(b"\xc1\xc1\xc1"),
    "wrong arity": packed(3, 1, "n9", "n2", 0),
    "unknown kind": packed(77, 1, 2, 3),
    "negative index": packed(3, -1, "n9", "n2", 0, 0),
    "bool as an integer": packed(3, True, "n9", "n2", 0, 0),
    "map instead of an array": prefixed(msgpack.packb({"kind": 3})),
    "valid frame then garbage": VALID + b"\xc1" * 8,
}


@pytest.mark.parametrize("payload", AUTHENTICATED.values(), ids=AUTHENTICATED.keys())
async def test_an_authenticated_peer_sending_a_bad_frame_is_disconnected(payload: bytes) -> None:
    a, b = Node("n1", limits=LIMITS), Node("n2", limits=LIMITS)
    async with running(a, b):
        connect_all(a, b)
        await still_serving(a, b)
        stream = await raw_client(b.addr[1], as_node="n9", expect="n2")
        await stream.send_all(payload)
        assert await closed_by_peer(stream, timeout_s=2)
        await stream.aclose()
        assert b.transport.statistics().protocol_errors == 1
        await still_serving(a, b)


async def test_a_truncated_frame_then_eof_only_closes_that_connection() -> None:
    a, b = Node("n1", limits=LIMITS), Node("n2", limits=LIMITS)
    async with running(a, b):
        connect_all(a, b)
        stream = await raw_client(b.addr[1], as_node="n9", expect="n2")
        await stream.send_all(VALID[:-3])
        await stream.send_eof()
        assert await closed_by_peer(stream, timeout_s=2)
        await stream.aclose()
        assert b.frames_from("n9") == []
        await still_serving(a, b)


async def test_inbound_connections_are_bounded() -> None:
    a = Node("n1", limits=LIMITS)
    b = Node("n2", limits=replace(LIMITS, inbound_connections_max=2, handshake_timeout_s=2))
    async with running(a, b):
        connect_all(a, b)
        await still_serving(a, b)  # a's connection is one of the two
        waiting = await raw_client(b.addr[1])  # handshaking: the second
        await eventually(lambda: b.transport.statistics().handshakes == 1)
        refused = await raw_client(b.addr[1])
        assert await closed_by_peer(refused, timeout_s=1)  # at once, not after 2 s
        assert b.transport.statistics().inbound_refused == 1
        for s in (waiting, refused):
            await s.aclose()
        await still_serving(a, b)


# ------------------------------------------------------------------------ fuzz


def random_frame(rng: random.Random) -> bytes:
    match rng.randrange(3):
        case 0:
            return encode_frame(
                RaftFrame(Heartbeat(rng.randrange(9), "n9", "n2", rng.randrange(99)))
            )
        case 1:
            entries = tuple(Entry(i, 1, data=rng.randbytes(rng.randrange(40))) for i in range(4))
            return encode_frame(RaftFrame(AppendEntries(2, "n9", "n2", 0, 0, entries, 0)))
        case _:
            return encode_frame(Request(rng.randrange(1 << 32), "nope", rng.randbytes(8)))


def hostile_payload(rng: random.Random) -> bytes:
    """Random bytes, a truncated or mutated valid frame, or a random length prefix."""
    frame = bytearray(random_frame(rng))
    match rng.randrange(5):
        case 0:
            return rng.randbytes(rng.randrange(1, 200))
        case 1:
            return bytes(frame[: rng.randrange(1, len(frame))])
        case 2:
            for _ in range(rng.randrange(1, 6)):
                frame[rng.randrange(len(frame))] = rng.randrange(256)
            return bytes(frame)
        case 3:
            return rng.randrange(1 << 32).to_bytes(4, "big") + rng.randbytes(rng.randrange(64))
        case _:
            return bytes(frame) + rng.randbytes(rng.randrange(1, 64))


def breaks_the_protocol(payload: bytes) -> bool:
    """Whether the transport must call ``payload`` a protocol error (not just a short read)."""
    decoder = FrameDecoder(LIMITS.max_frame_bytes)
    decoder.feed(payload)
    try:
        while decoder.next_frame() is not None:
            pass  # every frame kind random_frame makes is valid on an inbound connection
    except WireError:
        return True
    return False


async def test_a_storm_of_hostile_connections_leaves_the_node_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(SEED)
    attacks = [(hostile_payload(rng), rng.random() < 0.7) for _ in range(FUZZ_CONNECTIONS)]
    a, b = Node("n1", limits=LIMITS), Node("n2", limits=LIMITS)
    limiter = trio.CapacityLimiter(FUZZ_PARALLEL)
    closed = 0

    async def attack(index: int, payload: bytes, authenticate: bool) -> None:
        nonlocal closed
        async with limiter:
            # Distinct ids: a second connection from one id would replace the first.
            as_node = f"fuzz{index}" if authenticate else None
            stream = await raw_client(b.addr[1], as_node=as_node, expect="n2")
            try:
                await stream.send_all(payload)
                await stream.send_eof()
            except trio.BrokenResourceError:
                pass  # already refused
            ended = await closed_by_peer(stream, timeout_s=2)  # not `closed += await`: racy
            closed += ended
            await stream.aclose()

    async with running(a, b):
        connect_all(a, b)
        await still_serving(a, b)
        storm_started_s = time.monotonic()
        async with trio.open_nursery() as nursery:
            for index, (payload, authenticate) in enumerate(attacks):
                nursery.start_soon(attack, index, payload, authenticate)
            for i in range(100):  # the legitimate peer keeps talking meanwhile
                assert a.transport.send("n2", heartbeat("n1", "n2", i))
                await trio.sleep(0.002)
        assert closed == FUZZ_CONNECTIONS  # every hostile connection ended
        stats = b.transport.statistics()
        assert stats.auth_failures == sum(not auth for _, auth in attacks)
        assert stats.protocol_errors == sum(auth and breaks_the_protocol(p) for p, auth in attacks)
        assert stats.handshakes == 0 and stats.inbound_connections == 1
        assert b.frames_from("n1")[-100:] == [heartbeat("n1", "n2", i) for i in range(100)]
        await still_serving(a, b)
        # Hundreds of failures, but the log holds a burst and then the budgeted rate.
        storm_s = time.monotonic() - storm_started_s
        lines = [r for r in caplog.records if r.getMessage().startswith("n2: ")]
        budget = LIMITS.log_lines_per_s_max
        assert len(lines) <= 2 * budget + budget * storm_s + 1
        assert stats.log_lines_suppressed > 0


def test_the_fuzz_payloads_are_varied_and_include_huge_prefixes() -> None:
    rng = random.Random(SEED)
    payloads = [hostile_payload(rng) for _ in range(FUZZ_CONNECTIONS)]
    assert len(set(payloads)) > FUZZ_CONNECTIONS * 0.9
    assert any(int.from_bytes(p[:4], "big") > MAX_FRAME_BYTES_DEFAULT for p in payloads)
