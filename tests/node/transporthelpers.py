"""Helpers for the peer transport tests: nodes on 127.0.0.1 and raw TCP clients.

Real sockets need real time, so every bound here is short and every wait has a deadline.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from consensus.types import Heartbeat
from node.peerauth import Authenticator, HmacAuthenticator
from node.transport import PeerTransport, TransportLimits
from node.wire import Frame, RaftFrame

KEY = b"k" * 32
HOST = "127.0.0.1"
FAST = TransportLimits(
    connect_timeout_s=1.0,
    handshake_timeout_s=1.0,
    write_timeout_s=2.0,
    backoff_initial_s=0.02,
    backoff_max_s=0.2,
)
DEADLINE_S = 5.0


class Node:
    """A transport that records what it receives; ``run`` serves it in its own scope."""

    def __init__(
        self,
        node_id: str,
        *,
        auth: Authenticator | None = None,
        limits: TransportLimits = FAST,
        port: int = 0,
    ) -> None:
        self.id = node_id
        self.received: list[tuple[str, Frame]] = []
        self.down: list[str] = []
        self.transport = PeerTransport(
            node_id,
            HOST,
            port,
            auth or HmacAuthenticator(KEY),
            limits,
            lambda peer, frame: self.received.append((peer, frame)),
            on_peer_down=self.down.append,
            rng=random.Random(node_id),
        )
        self.scope = trio.CancelScope()

    @property
    def addr(self) -> tuple[str, int]:
        return (HOST, self.transport.listen_port)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            await self.transport.serve(task_status=task_status)

    def frames_from(self, peer: str) -> list[Frame]:
        return [f for p, f in self.received if p == peer]


@asynccontextmanager
async def running(*nodes: Node) -> AsyncIterator[trio.Nursery]:
    """Serve ``nodes`` (each stoppable on its own through ``node.scope``) for the block."""
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        yield nursery
        nursery.cancel_scope.cancel()


def connect_all(*nodes: Node) -> None:
    for node in nodes:
        node.transport.set_peers({m.id: m.addr for m in nodes if m is not node})


async def eventually(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


def heartbeat(src: str, dst: str, commit: int = 0) -> RaftFrame:
    return RaftFrame(Heartbeat(1, src, dst, commit))


async def raw_client(
    port: int, *, as_node: str | None = None, expect: str = "n1"
) -> trio.SocketStream:
    """A TCP connection to ``port``; authenticated as ``as_node`` with the cluster key if given."""
    stream = await trio.open_tcp_stream(HOST, port)
    if as_node is not None:
        await HmacAuthenticator(KEY).connect(stream, as_node, expect)
    return stream


async def closed_by_peer(stream: trio.abc.Stream, timeout_s: float = DEADLINE_S) -> bool:
    """True once the other end closes ``stream`` (EOF or reset), False at the deadline."""
    with trio.move_on_after(timeout_s):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False
