"""The peer transport: authenticated TCP connections that carry frames between nodes.

Theory of operation. ``serve()`` listens and runs, in its own nursery, one link
task per peer (``set_peers``), each owning at most one outbound connection to
that peer and reconnecting with jittered exponential backoff. Frames go one way
per connection, and RPC responses ride back on the connection of their request::

    outbound connection (we dialled)    we write RaftFrame, Request; we read Response
    inbound connection (they dialled)   we read RaftFrame, Request; we write Response

A frame arriving in the wrong direction is a protocol error. Answering on the
request's own connection means a node can answer a peer whose address it does
not know, and a request whose connection dies fails at once instead of waiting
for its timeout. The parts that only move bytes (limits, counters, the send queue,
a connection's reader and writer) are in ``node/peerconn.py``.

Rules:
- Every connection authenticates (``node/peerauth.py``) within
  ``handshake_timeout_s`` before a single frame is read. The authenticated peer id
  is bound to the connection and passed to ``on_frame``; the node layer drops a
  Raft message whose ``src`` differs from it. A newer inbound connection from
  the same peer replaces the older one (the peer restarted or reconnected), and
  an outbound link to that peer waiting out its backoff redials at once.
- ``send`` never blocks. The caller's frame is encoded at once and queued on the
  peer's send queue, bounded in frames and bytes; when full the frame is dropped
  and counted (Raft tolerates loss). Frames queued while the peer is unreachable
  wait there and go out once it is connected. A writer drains the queue into one
  ``send_all`` per wakeup, up to ``write_batch_bytes_max``.
- A dead peer is noticed by EOF/reset, by a write stalled beyond
  ``write_timeout_s``, or by a failed redial; there is no idle heartbeat of our own
  (Raft's heartbeats keep busy links honest).
- Anything a peer does wrong (failed authentication, handshake timeout, a bad
  length prefix, a malformed or misdirected frame, a stalled write) closes that
  connection only, is counted, and is logged at warning without secrets. The
  node keeps running.
- Bugs are not swallowed: an exception from ``on_frame``, ``on_peer_down`` or a
  request handler (other than ``RemoteError``) propagates and stops ``serve()``.
- Everything is bounded (``TransportLimits``): frame size, queue frames and bytes,
  write batch, inbound connections, outstanding requests, requests served at once
  per connection, connect/handshake/write time, reconnect backoff, and log lines
  per second (a flood of bad connections must not flood the log).

Exceptions raised by ``request``::

    TransportError
     ├── PeerUnavailable   unknown or removed peer, full send queue, or the connection
     │                     carrying the request was lost (it may have run)
     ├── TooManyRequests   requests_outstanding_max requests already wait here
     ├── RequestTimeout    no response within timeout_s (it may have run)
     └── RemoteError       the peer answered with an error (also raised by handlers)
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from consensus.types import NodeId
from node.peerauth import AuthenticationFailed, Authenticator
from node.peerconn import (
    IO_ERRORS,
    Connection,
    Ended,
    PeerCounters,
    SendQueue,
    TransportLimits,
)
from node.wire import Frame, RaftFrame, Request, Response, WireError, encode_frame
from web.port import is_node_id

__all__ = [
    "Handler",
    "PeerCounters",
    "PeerStatistics",
    "PeerTransport",
    "PeerUnavailable",
    "RemoteError",
    "RequestTimeout",
    "TooManyRequests",
    "TransportError",
    "TransportLimits",
    "TransportStatistics",
    "backoff_delay_s",
]

log = logging.getLogger("rota.transport")

ERROR_TEXT_BYTES_MAX = 1024  # of a RemoteError's message on the wire

Handler = Callable[[NodeId, bytes], Awaitable[bytes]]
Address = tuple[str, int]


class _LogBudget:
    """At most ``per_s`` log lines a second, in bursts of up to twice that.

    A hostile or broken peer must not flood the log: lines over the budget are
    dropped and counted, and the next line that passes says how many were."""

    def __init__(self, per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s, self.burst, self.clock = per_s, max(1.0, 2 * per_s), clock
        self.tokens, self.last_s = self.burst, clock()
        self.suppressed = 0  # since the last line that passed
        self.suppressed_total = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        if not log.isEnabledFor(level):
            return  # a line nobody reads costs no budget
        now_s = self.clock()
        self.tokens = min(self.burst, self.tokens + (now_s - self.last_s) * self.per_s)
        self.last_s = now_s
        if self.tokens < 1:
            self.suppressed += 1
            self.suppressed_total += 1
            return
        self.tokens -= 1
        if self.suppressed:
            msg, args = msg + " (%d similar lines suppressed)", (*args, self.suppressed)
            self.suppressed = 0
        log.log(level, msg, *args)


class TransportError(Exception):
    """Base of the errors ``request`` raises (see the module doc)."""


class PeerUnavailable(TransportError):
    pass


class TooManyRequests(TransportError):
    pass


class RequestTimeout(TransportError):
    pass


class RemoteError(TransportError):
    """The peer's handler failed; handlers raise it to answer with an error text."""


def backoff_delay_s(attempt: int, rng: random.Random, initial_s: float, max_s: float) -> float:
    """Delay before reconnect ``attempt`` (0-based): exponential, capped, "equal jitter".

    Half the nominal delay is fixed and half random, so peers that lost a node at
    the same moment spread their reconnects but never hammer it with zero waits."""
    nominal = min(max_s, initial_s * 2 ** min(attempt, 32))
    return rng.uniform(nominal / 2, nominal)


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    address: Address | None  # None for a peer seen only inbound
    connected: bool  # our outbound connection is up
    inbound: bool  # the peer's connection to us is up
    queued_frames: int
    queued_bytes: int
    counters: PeerCounters


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    node_id: NodeId
    port: int
    peers: Mapping[NodeId, PeerStatistics]
    outbound_connections: int
    inbound_connections: int  # authenticated
    handshakes: int  # inbound connections still authenticating
    auth_failures: int
    handshake_timeouts: int
    protocol_errors: int  # malformed or misdirected frames, stalled writes
    inbound_refused: int  # over inbound_connections_max
    frames_dropped_unknown_peer: int
    requests_outstanding: int
    log_lines_suppressed: int  # over log_lines_per_s_max


@dataclass(eq=False, slots=True)
class _Link:
    """A configured peer: its address, send queue, and the task that dials it."""

    peer: NodeId
    address: Address
    queue: SendQueue
    counters: PeerCounters
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    attempt_scope: trio.CancelScope | None = None  # cancelled when the address changes
    connected: bool = False
    backing_off: bool = False  # sleeping between dial attempts


@dataclass(eq=False, slots=True)
class _Pending:
    peer: NodeId
    done: trio.Event = field(default_factory=trio.Event)
    conn: Connection | None = None
    response: Response | None = None
    error: str | None = None


class PeerTransport:
    """Frames and RPCs to peers. Start with ``port = await nursery.start(t.serve)``."""

    def __init__(
        self,
        node_id: NodeId,
        listen_host: str,
        listen_port: int,
        auth: Authenticator,
        limits: TransportLimits,
        on_frame: Callable[[NodeId, Frame], None],
        *,
        on_peer_down: Callable[[NodeId], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        auth.check_local_id(node_id)
        self.node_id = node_id
        self.listen_host = listen_host
        self.listen_port = listen_port  # the bound port once serving (port 0 picks one)
        self._auth = auth
        self._limits = limits
        self._on_frame = on_frame
        self._on_peer_down = on_peer_down
        self._rng = rng or random.Random()
        self._nursery: trio.Nursery | None = None
        self._links: dict[NodeId, _Link] = {}
        self._inbound: dict[NodeId, Connection] = {}
        self._counters: dict[NodeId, PeerCounters] = {}
        self._handlers: dict[str, Handler] = {}
        self._pending: dict[int, _Pending] = {}
        self._req_ids = itertools.count(1)
        self._handshakes = 0
        self._auth_failures = 0
        self._handshake_timeouts = 0
        self._protocol_errors = 0
        self._inbound_refused = 0
        self._dropped_unknown = 0
        self._log = _LogBudget(limits.log_lines_per_s_max)
        # Fault injection (node/faults.py, only with fault_injection on): every frame
        # queued for a peer goes through ``outbound_hook(peer, put)`` instead of ``put()``.
        self.outbound_hook: Callable[[NodeId, Callable[[], bool]], bool] | None = None

    # ------------------------------------------------------------------ public API

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial every peer, and run until cancelled; ``started`` gets the bound port."""
        assert self._nursery is None, "serve() is already running"
        listeners = await trio.open_tcp_listeners(self.listen_port, host=self.listen_host)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(trio.serve_listeners, self._accept, listeners))
                self.listen_port = listeners[0].socket.getsockname()[1]
                self._nursery = nursery
                for link in self._links.values():
                    self._start_link(link)
                log.info("%s: peer transport listening on port %d", self.node_id, self.listen_port)
                task_status.started(self.listen_port)
        finally:
            self._nursery = None
            for listener in listeners:  # serve_listeners closes them, unless cancelled first
                await trio.aclose_forcefully(listener)
            for link in self._links.values():
                link.connected = False
            for pending in self._pending.values():
                self._fail(pending, "the transport stopped")

    def set_peers(self, peers: Mapping[NodeId, Address]) -> None:
        """Replace the peer set: dial new peers, forget removed ones, redial moved ones.

        The local node is skipped if listed. A bad entry raises ``ValueError`` and
        changes nothing."""
        for peer, (host, port) in peers.items():
            if not is_node_id(peer) or not isinstance(host, str) or not host:
                raise ValueError(f"peer {peer!r}: bad id or host {host!r}")
            if type(port) is not int or not 0 < port < 65536:
                raise ValueError(f"peer {peer!r}: bad port {port!r}")
        for peer in list(self._links):
            if peer not in peers:
                self._remove_link(peer)
        for peer, (host, port) in peers.items():
            if peer == self.node_id:
                continue
            link = self._links.get(peer)
            if link is None:
                queue = SendQueue(
                    self._limits.send_queue_frames_max, self._limits.send_queue_bytes_max
                )
                counters = self._counters.setdefault(peer, PeerCounters())
                link = self._links[peer] = _Link(peer, (host, port), queue, counters)
                if self._nursery is not None:
                    self._start_link(link)
            elif link.address != (host, port):
                link.address = (host, port)
                if link.attempt_scope is not None:
                    link.attempt_scope.cancel()

    def send(self, peer: NodeId, frame: Frame) -> bool:
        """Queue ``frame`` for ``peer`` without blocking; False if it was dropped."""
        assert not isinstance(frame, Request | Response), "RPC frames go through request()"
        link = self._links.get(peer)
        if link is None:
            self._dropped_unknown += 1
            return False
        try:
            data = encode_frame(frame, self._limits.max_frame_bytes)
        except WireError as e:
            link.counters.frames_dropped += 1
            self._log(logging.ERROR, "%s: cannot send a frame to %s: %s", self.node_id, peer, e)
            return False
        if not self._put(peer, link.queue, data):
            link.counters.frames_dropped += 1
            return False
        return True

    def on_request(self, method: str, handler: Handler) -> None:
        """Serve ``method``: ``await handler(peer, body)`` returns the response body.

        A handler answers with an error by raising ``RemoteError(text)``; any other
        exception is a bug and stops the transport."""
        assert method not in self._handlers, f"{method} already has a handler"
        self._handlers[method] = handler

    async def request(self, peer: NodeId, method: str, body: bytes, timeout_s: float) -> bytes:
        """Call ``method`` on ``peer`` and return its response body (errors: module doc).

        An oversized body or a bad method name raises ``WireError`` before sending."""
        link = self._links.get(peer)
        if link is None:
            raise PeerUnavailable(f"unknown peer {peer!r}")
        if len(self._pending) >= self._limits.requests_outstanding_max:
            raise TooManyRequests(f"{len(self._pending)} requests outstanding")
        req_id = next(self._req_ids)
        data = encode_frame(Request(req_id, method, body), self._limits.max_frame_bytes)
        pending = self._pending[req_id] = _Pending(peer)
        try:
            if not self._put(peer, link.queue, data, req_id):
                link.counters.frames_dropped += 1
                raise PeerUnavailable(f"send queue to {peer} is full")
            with trio.move_on_after(timeout_s):
                await pending.done.wait()
            if pending.error is not None:
                raise PeerUnavailable(pending.error)
            if pending.response is None:
                raise RequestTimeout(f"{method} to {peer}: no response in {timeout_s} s")
            if not pending.response.ok:
                raise RemoteError(pending.response.body.decode("utf-8", "replace"))
            return pending.response.body
        finally:
            del self._pending[req_id]
            if pending.conn is not None:
                pending.conn.sent_requests.discard(req_id)

    def statistics(self) -> TransportStatistics:
        """A snapshot: later traffic does not change it."""
        peers = {}
        for peer, counters in self._counters.items():
            link = self._links.get(peer)
            peers[peer] = PeerStatistics(
                address=link.address if link else None,
                connected=link.connected if link else False,
                inbound=peer in self._inbound,
                queued_frames=len(link.queue.items) if link else 0,
                queued_bytes=link.queue.bytes if link else 0,
                counters=replace(counters),
            )
        return TransportStatistics(
            node_id=self.node_id,
            port=self.listen_port,
            peers=peers,
            outbound_connections=sum(link.connected for link in self._links.values()),
            inbound_connections=len(self._inbound),
            handshakes=self._handshakes,
            auth_failures=self._auth_failures,
            handshake_timeouts=self._handshake_timeouts,
            protocol_errors=self._protocol_errors,
            inbound_refused=self._inbound_refused,
            frames_dropped_unknown_peer=self._dropped_unknown,
            requests_outstanding=len(self._pending),
            log_lines_suppressed=self._log.suppressed_total,
        )

    # ------------------------------------------------------------- outbound links

    def _start_link(self, link: _Link) -> None:
        assert self._nursery is not None
        link.scope = trio.CancelScope()  # a scope is entered once: a fresh one per task
        self._nursery.start_soon(self._run_link, link)

    def _remove_link(self, peer: NodeId) -> None:
        link = self._links.pop(peer)
        link.scope.cancel()
        link.counters.frames_dropped += len(link.queue.items)
        for pending in self._pending.values():
            if pending.peer == peer:
                self._fail(pending, f"peer {peer} was removed")
        if peer not in self._inbound:
            del self._counters[peer]

    async def _run_link(self, link: _Link) -> None:
        """Keep one outbound connection to ``link.peer`` up, until the peer is removed."""
        attempt = 0
        with link.scope:
            while True:
                link.attempt_scope = trio.CancelScope()
                with link.attempt_scope:
                    lasted_s = await self._dial(link)
                    if lasted_s is not None and lasted_s >= self._limits.backoff_max_s:
                        attempt = 0  # it was healthy for a while: start backoff over
                    delay_s = backoff_delay_s(
                        attempt,
                        self._rng,
                        self._limits.backoff_initial_s,
                        self._limits.backoff_max_s,
                    )
                    attempt += 1
                    link.backing_off = True
                    try:
                        await trio.sleep(delay_s)
                    finally:
                        link.backing_off = False
                # An address change, or the peer dialling us while we back off (it
                # has just restarted), cancels the attempt scope: redial at once.

    async def _dial(self, link: _Link) -> float | None:
        """One connection to the peer; how long it was up (None if it never came up)."""
        counters = link.counters
        where = f"{link.peer} at {link.address[0]}:{link.address[1]}"
        try:
            with trio.fail_after(self._limits.connect_timeout_s):
                raw = await trio.open_tcp_stream(*link.address)
        except (OSError, trio.TooSlowError) as e:
            counters.connect_failures += 1
            log.debug("%s: cannot connect to %s: %r", self.node_id, where, e)
            return None
        stream: trio.abc.Stream = raw
        try:
            result = await self._handshake(raw, link.peer, where)
            if result is None:
                counters.connect_failures += 1
                return None
            stream = result[0]
            conn = Connection(link.peer, True, stream, link.queue, counters, where, self._limits)
            link.connected = True
            counters.connects += 1
            self._log(logging.INFO, "%s: connected to %s", self.node_id, where)
            up_since = trio.current_time()
            try:
                ended = await self._run(conn)
            finally:
                link.connected = False
                counters.disconnects += 1
                for req_id in conn.sent_requests:
                    if (pending := self._pending.get(req_id)) is not None:
                        self._fail(pending, f"connection to {link.peer} lost")
            self._log(
                logging.INFO, "%s: connection to %s ended: %s", self.node_id, where, ended.reason
            )
            if self._on_peer_down is not None:
                self._on_peer_down(link.peer)
            return trio.current_time() - up_since
        finally:
            await trio.aclose_forcefully(stream)
            await trio.aclose_forcefully(raw)

    # ------------------------------------------------------------ inbound handling

    async def _accept(self, raw: trio.SocketStream) -> None:
        """One inbound connection (``serve_listeners`` closes ``raw`` afterwards)."""
        where = _remote(raw)
        if self._handshakes + len(self._inbound) >= self._limits.inbound_connections_max:
            self._inbound_refused += 1
            self._log(
                logging.WARNING,
                "%s: refusing %s: too many inbound connections",
                self.node_id,
                where,
            )
            return
        self._handshakes += 1
        try:
            result = await self._handshake(raw, None, where)
        finally:
            self._handshakes -= 1
        if result is None:
            return
        stream, peer = result
        limits = self._limits
        responses = SendQueue(2 * limits.requests_serving_max, limits.send_queue_bytes_max)
        counters = self._counters.setdefault(peer, PeerCounters())
        conn = Connection(peer, False, stream, responses, counters, f"{peer} from {where}", limits)
        if (old := self._inbound.get(peer)) is not None:
            old.scope.cancel()  # the peer reconnected: its old connection is stale
        link = self._links.get(peer)
        if link is not None and link.backing_off and link.attempt_scope is not None:
            # The peer is up again (it restarted): do not leave it deaf to us until
            # the backoff ends, which can be longer than its election timeout.
            link.attempt_scope.cancel()
        self._inbound[peer] = conn
        try:
            with conn.scope:
                ended = await self._run(conn)
                self._log(
                    logging.INFO, "%s: inbound %s ended: %s", self.node_id, conn.where, ended.reason
                )
        finally:
            if self._inbound.get(peer) is conn:
                del self._inbound[peer]
                if peer not in self._links:
                    self._counters.pop(peer, None)
            await trio.aclose_forcefully(stream)

    async def _handshake(
        self, raw: trio.SocketStream, peer: NodeId | None, where: str
    ) -> tuple[trio.abc.Stream, NodeId] | None:
        """Authenticate ``raw`` (dialling ``peer``, or accepting if None); None on failure."""
        try:
            with trio.fail_after(self._limits.handshake_timeout_s):
                if peer is None:
                    return await self._auth.accept(raw, self.node_id)
                return await self._auth.connect(raw, self.node_id, peer), peer
        except AuthenticationFailed as e:
            self._auth_failures += 1
            self._log(logging.WARNING, "%s: %s: authentication failed: %s", self.node_id, where, e)
        except trio.TooSlowError:
            self._handshake_timeouts += 1
            self._log(logging.WARNING, "%s: %s: handshake timed out", self.node_id, where)
        except IO_ERRORS as e:
            self._log(
                logging.INFO, "%s: %s: connection lost during handshake: %r", self.node_id, where, e
            )
        return None

    # ------------------------------------------------------------------ connections

    async def _run(self, conn: Connection) -> Ended:
        """Run ``conn`` to its end; count and log a protocol error."""
        ended = await conn.run(self._dispatch, self._note_sent)
        if ended.protocol_error:
            self._protocol_errors += 1
            self._log(
                logging.WARNING,
                "%s: %s: %s; connection closed",
                self.node_id,
                conn.where,
                ended.reason,
            )
        return ended

    def _dispatch(self, conn: Connection, frame: Frame) -> str | None:
        """Act on one inbound frame; a protocol problem's description, or None."""
        match frame:
            case RaftFrame() if not conn.outbound:
                self._on_frame(conn.peer, frame)
            case Request() if not conn.outbound:
                self._start_request(conn, frame)
            case Response() if conn.outbound:
                pending = self._pending.get(frame.req_id)
                # Only the peer that was asked may answer; late answers are ignored.
                if pending is not None and pending.peer == conn.peer and not pending.done.is_set():
                    pending.response = frame
                    pending.done.set()
            case _:
                direction = "outbound" if conn.outbound else "inbound"
                return f"{type(frame).__name__} frame on an {direction} connection"
        return None

    def _note_sent(self, conn: Connection, req_ids: list[int]) -> None:
        """Requests about to be written on ``conn`` fail at once if it is lost."""
        for req_id in req_ids:
            if (pending := self._pending.get(req_id)) is not None:
                pending.conn = conn
                conn.sent_requests.add(req_id)

    # --------------------------------------------------------------- serving RPCs

    def _start_request(self, conn: Connection, req: Request) -> None:
        handler = self._handlers.get(req.method)
        if handler is None:
            self._respond(
                conn, Response(req.req_id, False, f"unknown method {req.method}".encode())
            )
        elif conn.serving >= self._limits.requests_serving_max:
            self._respond(conn, Response(req.req_id, False, b"overloaded: too many requests"))
        else:
            assert conn.nursery is not None
            conn.serving += 1
            conn.nursery.start_soon(self._serve_request, conn, handler, req)

    async def _serve_request(self, conn: Connection, handler: Handler, req: Request) -> None:
        try:
            body = await handler(conn.peer, req.body)
            assert isinstance(body, bytes), f"handler of {req.method} returned {type(body)}"
            response = Response(req.req_id, True, body)
        except RemoteError as e:
            response = Response(req.req_id, False, str(e).encode()[:ERROR_TEXT_BYTES_MAX])
        finally:
            conn.serving -= 1
        self._respond(conn, response)

    def _respond(self, conn: Connection, response: Response) -> None:
        try:
            data = encode_frame(response, self._limits.max_frame_bytes)
        except WireError:
            error = Response(response.req_id, False, b"response larger than max_frame_bytes")
            data = encode_frame(error, self._limits.max_frame_bytes)
        if not self._put(conn.peer, conn.queue, data):
            conn.counters.frames_dropped += 1

    def _put(self, peer: NodeId, queue: SendQueue, data: bytes, req_id: int = 0) -> bool:
        """Queue one frame for ``peer`` (through the fault-injection hook if installed)."""
        if self.outbound_hook is None:
            return queue.put(data, req_id)
        return self.outbound_hook(peer, lambda: queue.put(data, req_id))

    def _fail(self, pending: _Pending, reason: str) -> None:
        if not pending.done.is_set():
            pending.error = reason
            pending.done.set()


def _remote(stream: trio.SocketStream) -> str:
    """``host:port`` of the other end, for logs."""
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return "unknown address"
    return f"{host}:{port}"
