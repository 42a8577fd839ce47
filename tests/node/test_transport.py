"""The peer transport on real sockets over 127.0.0.1: frames, queues, reconnects, RPC, auth."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from consensus.types import Heartbeat, ReadIndexRequest
from node.peerauth import HmacAuthenticator, TlsAuthenticator
from node.peerconn import Connection, PeerCounters, SendQueue
from node.tls import PemPair, create_ca, issue_node_certificate
from node.transport import (
    PeerUnavailable,
    RemoteError,
    RequestTimeout,
    TooManyRequests,
    TransportLimits,
    _LogBudget,
    backoff_delay_s,
)
from node.wire import RaftFrame, Response, encode_frame
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

# ---------------------------------------------------------------------- frames


async def test_two_transports_exchange_raft_frames_both_ways() -> None:
    a, b = Node("n1"), Node("n2")
    async with running(a, b):
        connect_all(a, b)
        for i in range(200):
            assert a.transport.send("n2", heartbeat("n1", "n2", i))
            assert b.transport.send("n1", heartbeat("n2", "n1", i))
        await eventually(lambda: len(b.received) == 200 and len(a.received) == 200)
        assert b.frames_from("n1") == [heartbeat("n1", "n2", i) for i in range(200)]
        assert a.frames_from("n2") == [heartbeat("n2", "n1", i) for i in range(200)]
        stats = a.transport.statistics()
        assert stats.outbound_connections == 1 and stats.inbound_connections == 1
        assert stats.peers["n2"].counters.frames_sent == 200
        assert stats.peers["n2"].counters.frames_received == 200
        assert stats.peers["n2"].connected and stats.peers["n2"].inbound
        assert stats.auth_failures == stats.protocol_errors == 0


async def test_on_frame_names_the_authenticated_peer_not_the_claimed_source() -> None:
    a, b = Node("n1"), Node("n2")
    async with running(a, b):
        connect_all(a, b)
        a.transport.send("n2", RaftFrame(Heartbeat(1, "n9", "n2", 0)))  # lies about src
        await eventually(lambda: bool(b.received))
        assert b.received == [("n1", RaftFrame(Heartbeat(1, "n9", "n2", 0)))]


async def test_the_send_queue_is_bounded_and_drops_when_full() -> None:
    limits = replace(FAST, send_queue_frames_max=3, send_queue_bytes_max=4096)
    a, b = Node("n1", limits=limits), Node("n2")
    async with running(b):
        pass  # b bound a port and stopped: nobody listens there now
    a.transport.set_peers({"n2": b.addr})
    assert [a.transport.send("n2", heartbeat("n1", "n2", i)) for i in range(4)] == [
        True, True, True, False,
    ]  # fmt: skip
    assert not a.transport.send("n7", heartbeat("n1", "n7"))  # unknown peer
    stats = a.transport.statistics()
    assert stats.peers["n2"].queued_frames == 3
    assert stats.peers["n2"].counters.frames_dropped == 1
    assert stats.frames_dropped_unknown_peer == 1

    b = Node("n2", port=b.addr[1])  # the peer comes up: the queue drains to it
    async with running(a, b):
        await eventually(lambda: len(b.received) == 3)
        assert b.frames_from("n1") == [heartbeat("n1", "n2", i) for i in range(3)]


async def test_the_send_queue_is_bounded_in_bytes_too() -> None:
    a = Node("n1", limits=replace(FAST, send_queue_bytes_max=1000, max_frame_bytes=4096))
    a.transport.set_peers({"n2": ("127.0.0.1", 9)})
    assert a.transport.send("n2", heartbeat("n1", "n2"))
    big = RaftFrame(ReadIndexRequest(1, "n1", "n2", b"x" * 1000))
    assert not a.transport.send("n2", big)  # fits a frame, not the queue's byte bound
    assert a.transport.statistics().peers["n2"].counters.frames_dropped == 1


async def test_a_frame_over_max_frame_bytes_is_dropped_at_the_sender() -> None:
    a = Node("n1", limits=replace(FAST, max_frame_bytes=256))
    a.transport.set_peers({"n2": ("127.0.0.1", 9)})
    assert not a.transport.send("n2", RaftFrame(ReadIndexRequest(1, "n1", "n2", b"x" * 300)))
    assert a.transport.statistics().peers["n2"].counters.frames_dropped == 1


# ------------------------------------------------------------------ reconnects


async def test_reconnects_after_the_peer_restarts() -> None:
    a, b = Node("n1"), Node("n2")
    async with running(a) as nursery:
        await nursery.start(b.run)
        connect_all(a, b)
        a.transport.send("n2", heartbeat("n1", "n2", 1))
        await eventually(lambda: len(b.received) == 1)

        b.scope.cancel()  # b crashes
        await eventually(lambda: a.down == ["n2"])
        assert not a.transport.statistics().peers["n2"].connected

        b2 = Node("n2", port=b.addr[1])  # ... and restarts on the same port
        await nursery.start(b2.run)
        await eventually(lambda: a.transport.statistics().peers["n2"].connected)
        a.transport.send("n2", heartbeat("n1", "n2", 2))
        await eventually(lambda: b2.received == [("n1", heartbeat("n1", "n2", 2))])
        assert a.transport.statistics().peers["n2"].counters.connects == 2


async def test_a_restarted_peer_that_dials_us_is_redialled_without_waiting_out_the_backoff() -> (
    None
):
    slow = replace(FAST, backoff_initial_s=30.0, backoff_max_s=30.0)
    a, b = Node("n1", limits=slow), Node("n2")
    async with running(a) as nursery:
        await nursery.start(b.run)
        a.transport.set_peers({"n2": b.addr})
        await eventually(lambda: a.transport.statistics().peers["n2"].connected)
        b.scope.cancel()  # b crashes: a's link now backs off for 15-30 s
        await eventually(lambda: a.down == ["n2"])

        b2 = Node("n2", port=b.addr[1])  # b restarts and dials a
        await nursery.start(b2.run)
        b2.transport.set_peers({"n1": a.addr})
        b2.transport.send("n1", heartbeat("n2", "n1"))
        await eventually(lambda: len(a.frames_from("n2")) == 1)
        await eventually(lambda: a.transport.statistics().peers["n2"].connected)
        a.transport.send("n2", heartbeat("n1", "n2", 2))
        await eventually(lambda: b2.received == [("n1", heartbeat("n1", "n2", 2))])


async def test_a_peer_that_moves_is_redialled_at_its_new_address() -> None:
    a, b, b2 = Node("n1"), Node("n2"), Node("n2")
    async with running(a, b, b2):
        a.transport.set_peers({"n2": b.addr})
        a.transport.send("n2", heartbeat("n1", "n2", 1))
        await eventually(lambda: len(b.received) == 1)
        a.transport.set_peers({"n2": b2.addr})
        a.transport.send("n2", heartbeat("n1", "n2", 2))
        await eventually(lambda: len(b2.received) == 1)
        assert b2.received == [("n1", heartbeat("n1", "n2", 2))]
        a.transport.set_peers({})  # removed: nothing is sent, the link stops
        assert not a.transport.send("n2", heartbeat("n1", "n2", 3))
        assert "n2" not in a.transport.statistics().peers


async def test_peers_removed_and_readded_before_their_task_runs_are_harmless() -> None:
    a, b = Node("n1"), Node("n2")
    async with running(a, b):
        for _ in range(3):  # no checkpoint in between: the link tasks have not started
            a.transport.set_peers({"n2": b.addr})
            a.transport.set_peers({})
        a.transport.set_peers({"n2": b.addr})
        a.transport.send("n2", heartbeat("n1", "n2"))
        await eventually(lambda: len(b.received) == 1)
        with pytest.raises(ValueError, match="bad port"):
            a.transport.set_peers({"n3": ("127.0.0.1", 0)})
        with pytest.raises(ValueError, match="bad id"):
            a.transport.set_peers({"N 3": ("127.0.0.1", 1)})
        assert list(a.transport.statistics().peers) == ["n2"]  # unchanged


def test_backoff_grows_with_jitter_and_stays_bounded() -> None:
    rng = random.Random(7)
    delays = [backoff_delay_s(n, rng, 0.05, 2.0) for n in range(40)]
    assert 0.025 <= delays[0] <= 0.05
    assert 0.05 <= delays[1] <= 0.1
    assert all(1.0 <= d <= 2.0 for d in delays[6:])
    assert len(set(delays)) == len(delays)  # jittered


def test_the_log_budget_drops_lines_over_its_rate_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now_s = [0.0]
    budget = _LogBudget(per_s=1, clock=lambda: now_s[0])  # bursts of 2
    for i in range(5):
        budget(logging.WARNING, "line %d", i)
    now_s[0] = 1.0  # one more line's worth of budget
    budget(logging.WARNING, "line %d", 5)
    budget(logging.WARNING, "line %d", 6)
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "line 5 (3 similar lines suppressed)",
    ]
    assert budget.suppressed_total == 4


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="send_queue_frames_max"):
        TransportLimits(send_queue_frames_max=0)
    with pytest.raises(ValueError, match="write_timeout_s"):
        TransportLimits(write_timeout_s=0)
    with pytest.raises(ValueError, match="backoff"):
        TransportLimits(backoff_initial_s=3.0, backoff_max_s=2.0)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        TransportLimits(max_frame_bytes=1 << 33)


# ------------------------------------------------------------------------- RPC


async def test_requests_get_responses_on_the_same_connection() -> None:
    a, b = Node("n1"), Node("n2")
    seen: list[str] = []

    async def echo(peer: str, body: bytes) -> bytes:
        seen.append(peer)
        return body[::-1]

    async def fail(peer: str, body: bytes) -> bytes:
        raise RemoteError("no leader")

    async def slow(peer: str, body: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    b.transport.on_request("echo", echo)
    b.transport.on_request("fail", fail)
    b.transport.on_request("slow", slow)
    async with running(a, b):
        a.transport.set_peers({"n2": b.addr})  # b does not know a's address: no matter
        assert await a.transport.request("n2", "echo", b"abc", timeout_s=2) == b"cba"
        assert seen == ["n1"]
        with pytest.raises(RemoteError, match="no leader"):
            await a.transport.request("n2", "fail", b"", timeout_s=2)
        with pytest.raises(RemoteError, match="unknown method nope"):
            await a.transport.request("n2", "nope", b"", timeout_s=2)
        with pytest.raises(RequestTimeout):
            await a.transport.request("n2", "slow", b"", timeout_s=0.2)
        with pytest.raises(PeerUnavailable, match="unknown peer"):
            await a.transport.request("n3", "echo", b"", timeout_s=2)
        assert a.transport.statistics().requests_outstanding == 0


async def test_a_request_fails_fast_when_its_connection_is_lost() -> None:
    a, b = Node("n1"), Node("n2")
    started = trio.Event()

    async def hang(peer: str, body: bytes) -> bytes:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    b.transport.on_request("hang", hang)
    async with running(a) as nursery:
        await nursery.start(b.run)
        a.transport.set_peers({"n2": b.addr})

        async def stop_b_once_serving() -> None:
            await started.wait()
            b.scope.cancel()

        nursery.start_soon(stop_b_once_serving)
        t0 = trio.current_time()
        with pytest.raises(PeerUnavailable, match="connection to n2 lost"):
            await a.transport.request("n2", "hang", b"", timeout_s=30)
        assert trio.current_time() - t0 < 5


async def test_outstanding_requests_are_bounded() -> None:
    a, b = Node("n1", limits=replace(FAST, requests_outstanding_max=2)), Node("n2")

    async def hang(peer: str, body: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    b.transport.on_request("hang", hang)
    async with running(a, b) as nursery:
        a.transport.set_peers({"n2": b.addr})
        for _ in range(2):
            nursery.start_soon(a.transport.request, "n2", "hang", b"", 30.0)
        await eventually(lambda: a.transport.statistics().requests_outstanding == 2)
        with pytest.raises(TooManyRequests):
            await a.transport.request("n2", "hang", b"", timeout_s=1)
        nursery.cancel_scope.cancel()


async def test_requests_served_at_once_are_bounded_per_connection() -> None:
    a, b = Node("n1"), Node("n2", limits=replace(FAST, requests_serving_max=1))

    async def hang(peer: str, body: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    b.transport.on_request("hang", hang)
    async with running(a, b) as nursery:
        a.transport.set_peers({"n2": b.addr})
        nursery.start_soon(a.transport.request, "n2", "hang", b"", 30.0)
        await eventually(lambda: a.transport.statistics().requests_outstanding == 1)
        with pytest.raises(RemoteError, match="overloaded"):
            await a.transport.request("n2", "hang", b"", timeout_s=2)
        nursery.cancel_scope.cancel()


# -------------------------------------------------------------- authentication


async def test_a_wrong_cluster_key_is_refused_on_both_sides() -> None:
    a, b = Node("n1"), Node("n2", auth=HmacAuthenticator(b"another key of 32 bytes........."))
    async with running(a, b):
        connect_all(a, b)
        a.transport.send("n2", heartbeat("n1", "n2"))
        b.transport.send("n1", heartbeat("n2", "n1"))
        for node in (a, b):  # each refuses the other as a server and as a client
            await eventually(lambda n=node: n.transport.statistics().auth_failures >= 2)  # type: ignore[misc]
        assert a.received == b.received == []
        for node in (a, b):
            stats = node.transport.statistics()
            assert stats.inbound_connections == stats.outbound_connections == 0


async def test_a_newer_connection_from_a_peer_replaces_the_older_one() -> None:
    b = Node("n2")
    async with running(b):
        first = await raw_client(b.addr[1], as_node="n1", expect="n2")
        await eventually(lambda: b.transport.statistics().inbound_connections == 1)
        second = await raw_client(b.addr[1], as_node="n1", expect="n2")
        assert await closed_by_peer(first)
        assert b.transport.statistics().inbound_connections == 1
        await first.aclose()
        await second.aclose()


async def test_rpc_frames_in_the_wrong_direction_close_the_connection() -> None:
    b = Node("n2")
    async with running(b):
        stream = await raw_client(b.addr[1], as_node="n1", expect="n2")
        await stream.send_all(encode_frame(Response(1, True, b"")))  # responses come back, not in
        assert await closed_by_peer(stream)
        assert b.transport.statistics().protocol_errors == 1
        await stream.aclose()


def tls_node(directory: Path, ca: PemPair, node_id: str, *, trust: Path) -> Node:
    """A node with a certificate issued by ``ca`` that trusts the CA certificate at ``trust``."""
    cert, key = directory / f"{node_id}.pem", directory / f"{node_id}.key"
    issue_node_certificate(ca, node_id).write(cert, key)
    return Node(node_id, auth=TlsAuthenticator(trust, cert, key))


async def test_mutual_tls_carries_frames_and_refuses_another_cas_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster_ca, rogue_ca = create_ca(), create_ca(name="rogue CA")
    trust = tmp_path / "ca.pem"
    trust.write_bytes(cluster_ca.cert_pem)
    a, b = (
        tls_node(tmp_path, cluster_ca, "n1", trust=trust),
        tls_node(tmp_path, cluster_ca, "n2", trust=trust),
    )
    # The impostor trusts the cluster CA but its own certificate comes from another CA.
    rogue = tls_node(tmp_path, rogue_ca, "n3", trust=trust)
    async with running(a, b, rogue):
        connect_all(a, b)
        a.transport.set_peers({"n2": b.addr, "n3": rogue.addr})
        rogue.transport.set_peers({"n1": a.addr})
        a.transport.send("n2", heartbeat("n1", "n2"))
        b.transport.send("n1", heartbeat("n2", "n1"))
        a.transport.send("n3", heartbeat("n1", "n3"))
        rogue.transport.send("n1", heartbeat("n3", "n1"))
        await eventually(lambda: len(a.received) == 1 and len(b.received) == 1)
        # a refuses the impostor as a client (its certificate) and as a server (the same).
        await eventually(lambda: a.transport.statistics().auth_failures >= 2)
        assert a.received == [("n2", heartbeat("n2", "n1"))] and rogue.received == []
        assert not a.transport.statistics().peers["n3"].connected
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("n1: ")]
    assert any("n3 at" in m and "CERTIFICATE_VERIFY_FAILED" in m for m in refusals)  # dialling
    assert any("n3 at" not in m and "CERTIFICATE_VERIFY_FAILED" in m for m in refusals)  # accepting


# -------------------------------------------------------------- queue and writer


class RecordingStream(trio.abc.Stream):
    """Records each ``send_all``; never receives anything."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_the_writer_drains_the_queue_in_batches_bounded_in_bytes() -> None:
    limits = replace(FAST, write_batch_bytes_max=1000)
    queue = SendQueue(frames_max=100, bytes_max=100_000)
    frames = [encode_frame(heartbeat("n1", "n2", i)) for i in range(100)]
    for data in frames:
        assert queue.put(data)
    assert not queue.put(frames[0])  # 100 frames is the bound
    stream = RecordingStream()
    conn = Connection("n2", True, stream, queue, PeerCounters(), "test", limits)
    with trio.move_on_after(0.5):
        await conn.run(lambda c, f: None, lambda c, ids: None)
    assert b"".join(stream.writes) == b"".join(frames)
    assert all(len(w) <= 1000 for w in stream.writes)
    per_batch = 1000 // len(frames[0])  # the frames are all the same size
    assert len(stream.writes) == -(-100 // per_batch)  # as few writes as the bound allows
    assert conn.counters.frames_sent == 100 and queue.bytes == 0
