"""Fault injection inside a node, for the real-process chaos scenarios (``simulations/chaos.py``).

None of this exists in a node started normally: ``install`` runs only when the node's
configuration has ``fault_injection = true`` (flag ``--fault-injection true``), and the
control routes are registered only then (``web.app.create_app(extra_routes=...)``),
behind an admin token like every other admin route.

What it can do, all set by one declarative document (``POST /api/v1/faults``; the
whole state is replaced, so a runner can resend it after a timeout without harm)::

    {"links": {"n2": {"block": true}, "n3": {"drop": 0.2, "delay_ms": 100, "jitter_ms": 50}},
     "clock_offset_ms": 30000, "disk_full": false, "planted": ["start_unfenced"]}

- ``links``: per destination peer, rules for what this node *sends* (Raft frames, RPC
  requests and responses on the peer transport; SWIM datagrams, which get ``block``
  and ``drop`` but no delay). A symmetric partition is a block on both sides, an
  asymmetric one on one side only. Inbound traffic is never filtered here: the other
  node's own rules do that.
- ``clock_offset_ms``: added to the scheduler's wall clock (``node.scheduler.now_ms``),
  which stamps every command this node proposes — the time the state machine sees.
  Raft's ticks use trio's monotonic clock and are not shifted.
- ``disk_full``: every storage write transaction fails with ``StorageFull``, what
  LMDB reports when the disk has no room (the node then stops, as it would).
- ``planted``: known bugs (``PLANTED_BUGS``) that tests switch on to show that the
  chaos checkers catch them. Only meaningful with the flag on, by construction.

Rules: every rule is validated before anything changes (a bad document changes
nothing); delays are bounded (``DELAY_MS_MAX``, ``DELAYED_FRAMES_MAX``: past that a
frame is dropped, as a full send queue would); randomness comes from one seeded
``random.Random``.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from consensus.types import NodeId
from web.port import is_node_id

if TYPE_CHECKING:
    from node.daemon import Agent
    from web.app import Route

UNFENCED_START = "start_unfenced"  # the worker executes a run whatever its Start's outcome
PLANTED_BUGS = frozenset({UNFENCED_START})
DELAY_MS_MAX = 10_000
CLOCK_OFFSET_MS_MAX = 24 * 3600 * 1000
DELAYED_FRAMES_MAX = 100_000

Addr = tuple[str, int]


@dataclass(frozen=True, slots=True)
class LinkRule:
    """What happens to traffic this node sends to one peer."""

    block: bool = False  # drop everything (a partition)
    drop: float = 0.0  # probability that one frame or datagram is lost
    delay_ms: int = 0  # added before a frame is queued (peer transport only)
    jitter_ms: int = 0  # uniform extra delay in [0, jitter_ms]

    @classmethod
    def from_json(cls, peer: str, doc: object) -> LinkRule:
        if not isinstance(doc, dict) or set(doc) - {"block", "drop", "delay_ms", "jitter_ms"}:
            raise ValueError(f"links.{peer}: an object with block, drop, delay_ms, jitter_ms")
        rule = cls(
            bool(doc.get("block", False)),
            float(doc.get("drop", 0.0)),
            int(doc.get("delay_ms", 0)),
            int(doc.get("jitter_ms", 0)),
        )
        if not 0.0 <= rule.drop <= 1.0:
            raise ValueError(f"links.{peer}.drop: a probability in [0, 1]")
        if not 0 <= rule.delay_ms + rule.jitter_ms <= DELAY_MS_MAX or rule.jitter_ms < 0:
            raise ValueError(f"links.{peer}: delay_ms + jitter_ms in [0, {DELAY_MS_MAX}]")
        return rule


@dataclass(slots=True)
class FaultCounters:
    frames_blocked: int = 0
    frames_dropped: int = 0
    frames_delayed: int = 0
    datagrams_dropped: int = 0
    writes_failed: int = 0


@dataclass(eq=False)
class FaultState:
    """The faults one node currently injects (see the module doc)."""

    node_id: NodeId
    rng: random.Random = field(default_factory=random.Random)
    links: dict[NodeId, LinkRule] = field(default_factory=dict)
    clock_offset_ms: int = 0
    disk_full: bool = False
    planted: frozenset[str] = frozenset()
    counters: FaultCounters = field(default_factory=FaultCounters)
    gossip_peer: Callable[[Addr], NodeId | None] = lambda addr: None
    _delayed: list[tuple[float, int, Callable[[], bool]]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _wake: trio.Event = field(default_factory=trio.Event)

    # ------------------------------------------------------------------ control
    def apply(self, doc: Mapping[str, Any]) -> None:
        """Replace the whole fault state by ``doc``; ``ValueError`` changes nothing."""
        allowed = {"links", "clock_offset_ms", "disk_full", "planted"}
        if unknown := set(doc) - allowed:
            raise ValueError(f"unknown field {sorted(unknown)[0]!r} (allowed: {sorted(allowed)})")
        links_doc = doc.get("links", {})
        if not isinstance(links_doc, dict):
            raise ValueError("links: an object of peer id -> rule")
        links: dict[NodeId, LinkRule] = {}
        for peer, rule_doc in links_doc.items():
            if not is_node_id(peer):
                raise ValueError(f"links: {peer!r} is not a node id")
            links[peer] = LinkRule.from_json(peer, rule_doc)
        offset = doc.get("clock_offset_ms", 0)
        if type(offset) is not int or abs(offset) > CLOCK_OFFSET_MS_MAX:
            raise ValueError(f"clock_offset_ms: an integer within ±{CLOCK_OFFSET_MS_MAX}")
        planted = doc.get("planted", [])
        if not isinstance(planted, list) or not set(planted) <= PLANTED_BUGS:
            raise ValueError(f"planted: a list of {sorted(PLANTED_BUGS)}")
        disk_full = doc.get("disk_full", False)
        if not isinstance(disk_full, bool):
            raise ValueError("disk_full: a boolean")
        self.links, self.clock_offset_ms = links, offset
        self.disk_full, self.planted = disk_full, frozenset(planted)

    def describe(self) -> dict[str, Any]:
        return {
            "links": {peer: asdict(rule) for peer, rule in sorted(self.links.items())},
            "clock_offset_ms": self.clock_offset_ms,
            "disk_full": self.disk_full,
            "planted": sorted(self.planted),
            "counters": asdict(self.counters),
        }

    # ------------------------------------------------------------------- hooks
    def outbound(self, peer: NodeId, put: Callable[[], bool]) -> bool:
        """The peer transport's hook: ``put`` queues one frame for ``peer``. Returns
        what the transport's own put would (False: dropped, counted by the caller)."""
        rule = self.links.get(peer)
        if rule is None:
            return put()
        if rule.block:
            self.counters.frames_blocked += 1
            return True  # lost on the wire: the sender cannot tell
        if rule.drop and self.rng.random() < rule.drop:
            self.counters.frames_dropped += 1
            return True
        if rule.delay_ms or rule.jitter_ms:
            if len(self._delayed) >= DELAYED_FRAMES_MAX:
                return False
            delay_s = (rule.delay_ms + self.rng.uniform(0, rule.jitter_ms)) / 1000
            heapq.heappush(self._delayed, (trio.current_time() + delay_s, next(self._seq), put))
            self.counters.frames_delayed += 1
            self._wake.set()
            return True
        return put()

    def gossip_allows(self, addr: Addr) -> bool:
        """The gossip service's hook: whether one datagram to ``addr`` goes out."""
        peer = self.gossip_peer(addr)
        rule = self.links.get(peer) if peer is not None else None
        if rule is None:
            return True
        if rule.block or (rule.drop and self.rng.random() < rule.drop):
            self.counters.datagrams_dropped += 1
            return False
        return True

    def check_write(self) -> None:
        """Raise ``StorageFull`` while the disk is "full"."""
        if self.disk_full:
            from storage.errors import StorageFull

            self.counters.writes_failed += 1
            raise StorageFull("no room on the disk (injected by the fault-injection control)")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver delayed frames when they are due (until cancelled)."""
        task_status.started()
        while True:
            now = trio.current_time()
            while self._delayed and self._delayed[0][0] <= now:
                _, _, put = heapq.heappop(self._delayed)
                put()  # a full queue drops it, as it would have without the delay
            self._wake = trio.Event()
            with trio.move_on_at(self._delayed[0][0] if self._delayed else now + 1.0):
                await self._wake.wait()

    # ------------------------------------------------------------ control routes
    def routes(self) -> tuple[Route, ...]:
        """``GET``/``POST /api/v1/faults`` (admin), for ``create_app(extra_routes=...)``."""
        from quart import request

        from web import problems
        from web.app import Route
        from web.problems import ApiProblem
        from web.security import Role

        async def get_faults() -> dict[str, Any]:
            return self.describe()

        async def set_faults() -> dict[str, Any]:
            raw = await request.get_data(as_text=False)
            try:
                doc = json.loads(raw or b"{}")
                if not isinstance(doc, dict):
                    raise ValueError("the body must be a JSON object")
                self.apply(doc)
            except ValueError as e:
                raise ApiProblem(problems.BAD_REQUEST, str(e)) from None
            return self.describe()

        return (
            Route("/api/v1/faults", ("GET",), Role.ADMIN, get_faults),
            Route("/api/v1/faults", ("POST",), Role.ADMIN, set_faults),
        )


# The node's fault state, for the few module-level clocks and switches that consult it
# (``node.scheduler.now_ms``); None unless ``install`` ran, so they cost one lookup.
_active: FaultState | None = None


def clock_offset_ms() -> int:
    """Milliseconds to add to this node's wall clock (0 without fault injection)."""
    return 0 if _active is None else _active.clock_offset_ms


def planted(bug: str) -> bool:
    """Whether the planted bug ``bug`` is switched on (never without fault injection)."""
    assert bug in PLANTED_BUGS, bug
    return _active is not None and bug in _active.planted


def install(agent: Agent) -> FaultState:
    """Wire a fresh fault state into ``agent``'s transport, gossip, storage and clock.
    Called only when ``fault_injection`` is on."""
    global _active
    state = FaultState(agent.cfg.node_id)
    agent.transport.outbound_hook = state.outbound
    agent.gossip.outbound_hook = state.gossip_allows

    def gossip_peer(addr: Addr) -> NodeId | None:
        return next((m.id for m in agent.gossip.members() if tuple(m.addr) == addr), None)

    state.gossip_peer = gossip_peer
    env = agent.store._env  # every write transaction of the node goes through here
    write = env.write

    def checked_write(*args: Any, **kwargs: Any) -> Any:
        state.check_write()
        return write(*args, **kwargs)

    setattr(env, "write", checked_write)  # noqa: B010 (an instance attribute, on purpose)
    _active = state
    return state
