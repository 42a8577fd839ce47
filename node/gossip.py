"""The gossip driver: runs the SWIM core (``consensus/swim.py``) over one UDP socket.

Rules:
- One ``GossipService`` owns one ``Swim`` and one socket. The core is only called
  from this service's tasks and methods, each call running to completion between
  checkpoints, so no two calls interleave. After every call the service drains
  ``ready()`` (sends) and ``events()`` (publishes) at once.
- A datagram is ``msgpack(encode_message(msg))`` followed by HMAC-SHA256 of that
  body under the cluster key (32 bytes). A datagram that is too long, whose HMAC
  fails, or that does not decode to a message is dropped and counted: nothing a
  peer sends can raise out of the receive loop. A send that fails is counted too.
- Ticks come from ``trio.sleep_until``; missed ticks are caught up, at most
  ``max_catchup_ticks`` at once (sending between them); a longer lag is dropped
  and counted rather than replayed as a burst of timeouts.
- Membership changes reach other tasks through ``wait_change()`` or through
  ``subscribe()``, a bounded channel: a subscriber that does not keep up loses
  events (counted) rather than stalling gossip.

Errors of a received datagram (counted, never raised out of the service):

    DatagramRejected
     ├── DatagramUnauthenticated   too short for its HMAC, or the HMAC is wrong
     └── DatagramMalformed         authentic, but not msgpack or not a message
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import msgpack
import trio

from consensus.swim import Member, MemberEvent, NodeMeta, Swim, SwimStatistics
from consensus.swim_types import Addr, Message, decode_message, encode_message

HMAC_BYTES = 32
CLUSTER_KEY_BYTES_MIN = 16
MAX_SUBSCRIBERS = 64


class DatagramRejected(Exception):
    """A received datagram that is not an authentic message (see the module tree)."""


class DatagramUnauthenticated(DatagramRejected):
    pass


class DatagramMalformed(DatagramRejected):
    pass


def encode_datagram(msg: Message, cluster_key: bytes) -> bytes:
    """The bytes on the wire for ``msg``: msgpack body, then its HMAC-SHA256."""
    body: bytes = msgpack.packb(encode_message(msg), use_bin_type=True)
    return body + hmac.digest(cluster_key, body, hashlib.sha256)


def decode_datagram(data: bytes, cluster_key: bytes) -> Message:
    """The message in ``data``, or ``DatagramRejected`` saying why not."""
    if len(data) <= HMAC_BYTES:
        raise DatagramUnauthenticated(f"{len(data)} bytes: no room for a body and its HMAC")
    body, mac = data[:-HMAC_BYTES], data[-HMAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.digest(cluster_key, body, hashlib.sha256)):
        raise DatagramUnauthenticated("HMAC mismatch")
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
        return decode_message(obj)
    except (ValueError, msgpack.UnpackException) as e:  # MalformedMessage is a ValueError
        raise DatagramMalformed(str(e)) from e


@dataclass(slots=True)
class GossipCounters:
    """Monotonic counts of the driver's traffic and drops (a snapshot is a copy)."""

    datagrams_received: int = 0
    datagrams_sent: int = 0
    dropped_oversize: int = 0  # longer than max_datagram_bytes
    dropped_unauthenticated: int = 0  # wrong key, forged, or too short
    dropped_malformed: int = 0  # authentic but not a message
    send_errors: int = 0
    receive_errors: int = 0  # ICMP errors some platforms report on a later read
    ticks: int = 0
    ticks_skipped: int = 0  # lag beyond max_catchup_ticks, not replayed
    events_dropped: int = 0  # a subscriber's buffer was full


@dataclass(frozen=True, slots=True)
class GossipStatistics:
    address: Addr
    subscribers: int
    counters: GossipCounters
    swim: SwimStatistics


class GossipService:
    """SWIM membership over UDP. Start with ``await nursery.start(service.run)``."""

    def __init__(
        self,
        swim: Swim,
        bind_host: str,
        bind_port: int,
        cluster_key: bytes,
        *,
        tick_ms: int = 50,
        max_catchup_ticks: int = 20,
    ) -> None:
        if len(cluster_key) < CLUSTER_KEY_BYTES_MIN:
            raise ValueError(f"cluster key: at least {CLUSTER_KEY_BYTES_MIN} bytes")
        if swim.self_addr[0] in ("0.0.0.0", "::"):
            raise ValueError("advertise a reachable address, not a wildcard")
        assert swim.config.trailer_bytes >= HMAC_BYTES, "the core must leave room for the HMAC"
        assert tick_ms > 0 and max_catchup_ticks > 0
        self.swim = swim
        self._bind = (bind_host, bind_port)
        self._key = bytes(cluster_key)
        self._tick_s = tick_ms / 1000
        self._max_catchup_ticks = max_catchup_ticks
        self._sock: trio.socket.SocketType | None = None
        self._started = False
        self._changed = trio.Event()
        self._subscribers: list[trio.MemorySendChannel[MemberEvent]] = []
        self._counts = GossipCounters()
        # Fault injection (node/faults.py, only with fault_injection on): a datagram
        # goes out only if ``outbound_hook(addr)`` allows it.
        self.outbound_hook: Callable[[Addr], bool] | None = None

    # ================================================================ observers
    @property
    def address(self) -> Addr:
        """The address this member advertises (the bound port once running)."""
        return self.swim.self_addr

    def members(self) -> list[Member]:
        return self.swim.members()

    def statistics(self) -> GossipStatistics:
        return GossipStatistics(
            self.address, len(self._subscribers), replace(self._counts), self.swim.statistics()
        )

    async def wait_change(self) -> None:
        """Wait for the next membership change. Read ``members()`` first and then wait,
        with no checkpoint between, and no change is missed."""
        await self._changed.wait()

    def subscribe(self, max_buffer: int = 64) -> trio.MemoryReceiveChannel[MemberEvent]:
        """Every event from now on, in order, until the buffer overflows (events are
        then dropped and counted) or the service stops (the channel ends)."""
        assert len(self._subscribers) < MAX_SUBSCRIBERS, "too many subscribers"
        send, receive = trio.open_memory_channel[MemberEvent](max_buffer)
        self._subscribers.append(send)
        return receive

    # ============================================================ client calls
    async def join(self, seed_addrs: Sequence[Addr]) -> None:
        """Contact the seeds now (the core retries while it knows nobody alive)."""
        self.swim.join(seed_addrs)
        await self._after_core_call()

    async def leave(self) -> None:
        """Announce a graceful departure; cancel ``run`` afterwards."""
        self.swim.leave()
        await self._after_core_call()

    async def update_meta(self, meta: NodeMeta) -> None:
        self.swim.update_meta(meta)
        await self._after_core_call()

    # ==================================================================== run
    async def run(self, *, task_status: trio.TaskStatus[Addr] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, then gossip until cancelled; ``started`` reports the advertised address."""
        assert not self._started, "a service runs once"
        self._started = True
        host = self._bind[0]
        family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
        try:
            with trio.socket.socket(family, trio.socket.SOCK_DGRAM) as sock:
                await sock.bind(self._bind)
                if self.swim.self_addr[1] == 0:
                    port = sock.getsockname()[1]
                    self.swim.update_addr((self.swim.self_addr[0], port))
                self._sock = sock
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._tick_loop)
                    nursery.start_soon(self._receive_loop, sock)
                    task_status.started(self.address)
        finally:
            self._sock = None
            for ch in self._subscribers:
                ch.close()
            self._subscribers.clear()

    async def _tick_loop(self) -> None:
        next_tick = trio.current_time() + self._tick_s
        while True:
            await trio.sleep_until(next_tick)
            now = trio.current_time()
            caught_up = 0
            while now >= next_tick and caught_up < self._max_catchup_ticks:
                self.swim.tick()
                self._counts.ticks += 1
                next_tick += self._tick_s
                caught_up += 1
                await self._after_core_call()  # lets Acks already received count
            if now >= next_tick:
                skipped = int((now - next_tick) // self._tick_s) + 1
                self._counts.ticks_skipped += skipped
                next_tick += skipped * self._tick_s

    async def _receive_loop(self, sock: trio.socket.SocketType) -> None:
        limit = self.swim.config.max_datagram_bytes
        while True:
            try:
                data, addr = await sock.recvfrom(limit + 1)
            except (ConnectionResetError, ConnectionRefusedError):
                self._counts.receive_errors += 1  # about an earlier send, not this read
                continue
            self._counts.datagrams_received += 1
            if len(data) > limit:
                self._counts.dropped_oversize += 1
                continue
            try:
                msg = decode_datagram(data, self._key)
            except DatagramUnauthenticated:
                self._counts.dropped_unauthenticated += 1
                continue
            except DatagramMalformed:
                self._counts.dropped_malformed += 1
                continue
            self.swim.step((addr[0], addr[1]), msg)
            await self._after_core_call()

    async def _after_core_call(self) -> None:
        """Publish the core's events, then send its datagrams."""
        self._publish(self.swim.events())
        outbox = self.swim.ready()
        if self._sock is None:
            assert not outbox, "the core produced datagrams before the service ran"
            return
        for addr, msg in outbox:
            if self.outbound_hook is not None and not self.outbound_hook(addr):
                continue
            data = encode_datagram(msg, self._key)
            assert len(data) <= self.swim.config.max_datagram_bytes, "the core's size bound"
            try:
                await self._sock.sendto(data, addr)
                self._counts.datagrams_sent += 1
            except OSError:
                self._counts.send_errors += 1  # unreachable, unresolvable: SWIM copes

    def _publish(self, events: list[MemberEvent]) -> None:
        if not events:
            return
        self._changed.set()
        self._changed = trio.Event()
        for ch in list(self._subscribers):
            for ev in events:
                try:
                    ch.send_nowait(ev)
                except trio.WouldBlock:
                    self._counts.events_dropped += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers.remove(ch)  # the subscriber went away
                    break
