"""The SWIM core on a tiny deterministic in-memory network (no trio, no sockets).

Every datagram the network carries goes through the real wire shape (msgpack of
``encode_message``, then ``decode_message``), and its size is checked against the
bound the core promises.
"""

from __future__ import annotations

import ast
import contextlib
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.swim import EventKind, Member, MemberEvent, MemberState, NodeMeta, Swim, SwimConfig
from consensus.swim_types import (
    MAX_TAGS,
    Ack,
    Addr,
    Alive,
    Dead,
    Left,
    MalformedMessage,
    Message,
    Ping,
    PingReq,
    Suspect,
    Sync,
    Update,
    decode_message,
    encode_message,
    message_bytes,
)

CFG = SwimConfig(
    probe_ticks=4,
    ack_timeout_ticks=2,
    suspicion_ticks=8,
    sync_ticks=40,
    tombstone_ticks=100_000,
    max_sync_replies_per_period=8,
)
ROOT = Path(__file__).resolve().parents[2]


def addr_of(node: str) -> Addr:
    return ("10.0.0.1", 7000 + int(node[1:]))


class Net:
    """Members wired by a lossy, instantaneous network; a round trip fits in one tick."""

    def __init__(self, n: int, *, seed: int = 1, config: SwimConfig = CFG, loss: float = 0.0):
        self.seed = seed
        self.config = config
        self.loss = loss
        self.rng = random.Random(f"net:{seed}")
        self.nodes: dict[str, Swim] = {}
        self.by_addr: dict[Addr, str] = {}
        self.crashed: set[str] = set()
        self.cut: set[tuple[str, str]] = set()
        self.events: dict[str, list[MemberEvent]] = {}
        self.sent: list[tuple[str, Message]] = []
        for i in range(n):
            self.add(f"n{i}")

    def add(self, node: str) -> Swim:
        s = Swim(
            node,
            addr_of(node),
            NodeMeta(raft_id=node),
            random.Random(f"{self.seed}:{node}"),
            self.config,
        )
        self.nodes[node] = s
        self.by_addr[addr_of(node)] = node
        self.events.setdefault(node, [])
        self.crashed.discard(node)
        return s

    def join_all(self, seed: str = "n0") -> None:
        for node, s in self.nodes.items():
            if node != seed:
                s.join([addr_of(seed)])
        self.settle()

    def isolate(self, node: str) -> None:
        for other in self.nodes:
            self.cut |= {(node, other), (other, node)}

    def settle(self) -> None:
        for _ in range(1000):
            batch = [
                (src, dst, msg)
                for src, s in self.nodes.items()
                if src not in self.crashed
                for dst, msg in s.ready()
            ]
            for node, s in self.nodes.items():
                self.events[node].extend(s.events())
            if not batch:
                return
            for src, dst_addr, msg in batch:
                self.sent.append((src, msg))
                body = msgpack.packb(encode_message(msg))
                assert len(body) == message_bytes(msg) <= self.config.body_bytes_max
                dst = self.by_addr.get(dst_addr)
                if dst is None or dst in self.crashed or (src, dst) in self.cut:
                    continue
                if self.loss and self.rng.random() < self.loss:
                    continue
                self.nodes[dst].step(addr_of(src), decode_message(msgpack.unpackb(body)))
        raise AssertionError("network did not settle")

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for node, s in self.nodes.items():
                if node not in self.crashed:
                    s.tick()
            self.settle()

    def periods(self, n: int) -> None:
        self.tick(n * self.config.probe_ticks)

    def live(self) -> list[str]:
        return [n for n in self.nodes if n not in self.crashed]

    def view(self, observer: str, node: str) -> Member | None:
        return self.nodes[observer].member(node)

    def state(self, observer: str, node: str) -> MemberState | None:
        m = self.view(observer, node)
        return None if m is None else m.state

    def all_see(self, node: str, state: MemberState) -> bool:
        return all(self.state(o, node) is state for o in self.live() if o != node)

    def converged(self) -> bool:
        """Every live member sees every live member alive, at the same incarnation."""
        live = self.live()
        for node in live:
            truth = self.nodes[node].member(node)
            for o in live:
                m = self.view(o, node)
                if m is None or m.state is not MemberState.ALIVE or m != truth:
                    return False
        return True

    def kinds(self, observer: str, about: str) -> list[EventKind]:
        return [e.kind for e in self.events[observer] if e.member.id == about]


def joined(n: int, **kw: object) -> Net:
    net = Net(n, **kw)  # type: ignore[arg-type]
    net.join_all()
    net.periods(10)
    assert net.converged()
    net.events = {node: [] for node in net.nodes}  # tests look at what happens next
    return net


# ------------------------------------------------------------------ behaviour


def test_five_members_converge_through_one_seed() -> None:
    net = Net(5)
    net.join_all()
    for _ in range(10):
        if net.converged():
            break
        net.periods(1)
    assert net.converged()
    for node in net.nodes:
        assert [m.id for m in net.nodes[node].members()] == ["n0", "n1", "n2", "n3", "n4"]
        others = {e.member.id for e in net.events[node] if e.kind is EventKind.JOINED}
        assert others == set(net.nodes) - {node}
        assert net.nodes[node].member("n3") == Member(
            "n3", addr_of("n3"), MemberState.ALIVE, 0, NodeMeta(raft_id="n3")
        )


def test_silenced_member_becomes_suspect_then_dead_everywhere_in_bounded_time() -> None:
    net = joined(5)
    net.crashed.add("n4")
    n = len(net.nodes)
    # Detection: every member probes each other within two rounds of n - 1 periods;
    # then the Lifeguard timer at most suspicion_max_mult x its minimum (log10(5) < 1).
    bound_ticks = (2 * (n - 1) + 1) * CFG.probe_ticks + CFG.suspicion_max_mult * CFG.suspicion_ticks
    for _ in range(bound_ticks):
        if net.all_see("n4", MemberState.DEAD):
            break
        net.tick()
    assert net.all_see("n4", MemberState.DEAD), f"not dead everywhere after {bound_ticks} ticks"
    for o in net.live():
        assert net.kinds(o, "n4") == [EventKind.SUSPECT, EventKind.DEAD]
        assert [m.state for m in net.nodes[o].members() if m.id != "n4"] == [MemberState.ALIVE] * 4


def test_suspected_member_refutes_and_is_alive_again() -> None:
    net = joined(5)
    net.isolate("n2")
    for _ in range(20 * CFG.probe_ticks):
        if any(EventKind.SUSPECT in net.kinds(o, "n2") for o in net.nodes):
            break
        net.tick()
    net.cut.clear()
    net.periods(6)
    assert net.converged()
    assert net.nodes["n2"].incarnation >= 1
    assert net.nodes["n2"].statistics().counters.refutations >= 1
    for o in net.live():
        if o != "n2":
            assert EventKind.DEAD not in net.kinds(o, "n2")
            assert net.view(o, "n2") == net.nodes["n2"].member("n2")
    assert any(net.kinds(o, "n2") == [EventKind.SUSPECT, EventKind.ALIVE] for o in net.nodes)


def test_indirect_probes_keep_a_member_alive_when_only_the_direct_link_is_broken() -> None:
    net = joined(5)
    net.cut |= {("n0", "n1"), ("n1", "n0")}
    net.periods(40)
    assert net.converged()
    for o in net.nodes:
        assert net.kinds(o, "n0") == [] and net.kinds(o, "n1") == []
    assert net.nodes["n0"].statistics().counters.ping_reqs_sent > 0
    assert net.nodes["n1"].statistics().counters.ping_reqs_sent > 0


def test_indirect_probe_without_helpers_suspects() -> None:
    net = joined(2)
    net.cut |= {("n0", "n1"), ("n1", "n0")}
    net.periods(2)
    assert net.state("n0", "n1") is MemberState.SUSPECT


def test_metadata_updates_propagate() -> None:
    net = joined(5)
    meta = NodeMeta(
        "n3", "10.0.0.3:8080", "worker", free_slots=7, queue_depth=2, tags=("gpu",), version="0.1.0"
    )
    net.nodes["n3"].update_meta(meta)
    net.periods(4)
    assert net.converged()
    for o in net.live():
        if o != "n3":
            m = net.view(o, "n3")
            assert m is not None and m.meta == meta and m.incarnation == 1
            assert net.kinds(o, "n3") == [EventKind.META_UPDATED]


def test_leave_is_seen_as_left_and_never_as_dead() -> None:
    net = joined(5)
    net.nodes["n4"].leave()
    net.settle()
    net.periods(2)
    assert net.all_see("n4", MemberState.LEFT)
    net.crashed.add("n4")  # the process then exits
    net.periods(20)
    for o in net.live():
        assert net.kinds(o, "n4") == [EventKind.LEFT]
        assert net.state(o, "n4") is MemberState.LEFT
    assert net.nodes["n4"].member("n4").state is MemberState.LEFT  # type: ignore[union-attr]


def test_a_restarted_member_rejoins_past_its_tombstone() -> None:
    net = joined(4)
    net.crashed.add("n3")
    net.periods(30)
    assert net.all_see("n3", MemberState.DEAD)
    dead_inc = max(net.view(o, "n3").incarnation for o in net.live() if o != "n3")  # type: ignore[union-attr]
    fresh = net.add("n3")  # same id and address, incarnation 0
    fresh.join([addr_of("n0")])
    net.settle()
    net.periods(6)
    assert net.converged()
    assert fresh.incarnation > dead_inc
    for o in ("n0", "n1", "n2"):
        assert net.kinds(o, "n3")[-1] is EventKind.JOINED


def test_tombstones_are_forgotten_after_their_time() -> None:
    cfg = replace(CFG, tombstone_ticks=40)
    net = joined(4, config=cfg)
    net.crashed.add("n3")
    net.periods(30)
    assert all(net.view(o, "n3") is None for o in net.live())
    assert all(len(net.nodes[o].members()) == 3 for o in net.live())


def test_dissemination_is_bounded() -> None:
    cfg = replace(CFG, max_piggyback=3, max_broadcasts=6)
    net = Net(12, config=cfg)
    net.join_all()
    for round_ in range(6):
        for i, node in enumerate(sorted(net.nodes)):
            net.nodes[node].update_meta(NodeMeta(node, free_slots=round_ * 100 + i))
        for _ in range(cfg.probe_ticks):
            net.tick()
            assert all(
                s.statistics().broadcasts_queued <= cfg.max_broadcasts for s in net.nodes.values()
            )
    for _ in range(40):
        if net.converged():
            break
        net.periods(1)
    assert net.converged()
    limit = cfg.retransmit_mult * 2  # ceil(log10(12 + 1)) == 2
    sends: Counter[tuple[str, Update]] = Counter()
    for src, msg in net.sent:
        if not isinstance(msg, Sync):
            assert len(msg.updates) <= cfg.max_piggyback
            sends.update((src, u) for u in msg.updates)
    assert max(sends.values()) <= limit
    assert sum(s.statistics().counters.broadcasts_dropped for s in net.nodes.values()) > 0
    net.periods(20)  # quiet: every queue drains once each update has been sent enough
    assert all(s.statistics().broadcasts_queued == 0 for s in net.nodes.values())


def test_full_state_is_split_into_bounded_datagrams() -> None:
    s = Swim("n0", addr_of("n0"), NodeMeta(raft_id="n0"), random.Random(1), CFG)
    many = [
        Alive(
            f"member-{i:04d}",
            i,
            (f"host-{i}.example", 7946),
            NodeMeta(f"r{i}", "api", "worker", tags=("a", "b")),
        )
        for i in range(400)
    ]
    for k in range(0, len(many), 100):
        s.step(addr_of("n9"), Sync("n9", False, tuple(many[k : k + 100])))
    assert len(s.members()) == 401
    s.ready()
    s.join([addr_of("n1")])
    chunks = [m for _, m in s.ready()]
    assert len(chunks) > 10
    assert all(isinstance(m, Sync) and message_bytes(m) <= CFG.body_bytes_max for m in chunks)
    assert [m.reply for m in chunks if isinstance(m, Sync)] == [True] + [False] * (len(chunks) - 1)
    carried = {u.node for m in chunks for u in m.updates}
    assert carried == {m.id for m in s.members()}


def test_member_bound_refuses_or_evicts_tombstones() -> None:
    cfg = replace(CFG, max_members=3)
    s = Swim("n0", addr_of("n0"), NodeMeta(), random.Random(1), cfg)
    for node in ("n1", "n2", "n3"):
        s.step(addr_of("n9"), Sync("n9", False, (Alive(node, 0, addr_of(node), NodeMeta()),)))
    assert [m.id for m in s.members()] == ["n0", "n1", "n2"]
    assert s.statistics().counters.members_refused == 1
    s.step(
        addr_of("n9"),
        Sync("n9", False, (Dead("n1", 0, "n9"), Alive("n3", 0, addr_of("n3"), NodeMeta()))),
    )
    assert [m.id for m in s.members()] == ["n0", "n2", "n3"]


# ----------------------------------------------------------------- precedence

B = addr_of("n1")


def record_after(*updates: Update) -> Member:
    s = Swim("n0", addr_of("n0"), NodeMeta(), random.Random(1), CFG)
    for u in updates:
        s.step(addr_of("n9"), Sync("n9", False, (u,)))
    m = s.member("n1")
    assert m is not None
    return m


def alive(inc: int, role: str = "") -> Alive:
    return Alive("n1", inc, B, NodeMeta(role=role))


A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT

PRECEDENCE = [
    # (record before, update, expected state, expected incarnation)
    (alive(5), alive(4), A, 5),
    (alive(5), alive(5, "x"), A, 5),
    (alive(5), alive(6), A, 6),
    (alive(5), Suspect("n1", 4, "n2"), A, 5),
    (alive(5), Suspect("n1", 5, "n2"), S, 5),
    (alive(5), Suspect("n1", 6, "n2"), S, 6),
    (alive(5), Dead("n1", 4, "n2"), A, 5),
    (alive(5), Dead("n1", 5, "n2"), D, 5),
    (alive(5), Left("n1", 5), L, 5),
    (Suspect("n1", 5, "n2"), alive(5), S, 5),
    (Suspect("n1", 5, "n2"), alive(6), A, 6),
    (Suspect("n1", 5, "n2"), Suspect("n1", 4, "n3"), S, 5),
    (Suspect("n1", 5, "n2"), Dead("n1", 5, "n2"), D, 5),
    (Dead("n1", 5, "n2"), alive(5), D, 5),
    (Dead("n1", 5, "n2"), alive(6), A, 6),
    (Dead("n1", 5, "n2"), Suspect("n1", 5, "n3"), D, 5),
    (Dead("n1", 5, "n2"), Suspect("n1", 6, "n3"), S, 6),
    (Dead("n1", 5, "n2"), Dead("n1", 6, "n3"), D, 6),
    (Dead("n1", 5, "n2"), Left("n1", 5), L, 5),
    (Left("n1", 5), Dead("n1", 5, "n2"), L, 5),
    (Left("n1", 5), alive(5), L, 5),
    (Left("n1", 5), alive(6), A, 6),
]


@pytest.mark.parametrize(("before", "update", "state", "inc"), PRECEDENCE)
def test_precedence(before: Update, update: Update, state: MemberState, inc: int) -> None:
    prior = () if isinstance(before, Alive) else (alive(before.incarnation),)
    m = record_after(*prior, before, update)
    assert (m.state, m.incarnation) == (state, inc)


def test_news_about_self_is_refuted_by_incarnating_past_it() -> None:
    s = Swim("n0", addr_of("n0"), NodeMeta(), random.Random(1), CFG)

    def hear(u: Update) -> int:
        s.step(B, Sync("n1", False, (u,)))
        return s.incarnation

    assert hear(Suspect("n0", 0, "n1")) == 1
    assert hear(Dead("n0", 3, "n1")) == 4
    assert hear(Left("n0", 4)) == 5
    assert hear(Alive("n0", 5, addr_of("n0"), NodeMeta(role="impostor"))) == 6
    assert hear(Alive("n0", 6, addr_of("n0"), NodeMeta())) == 6  # that is us: nothing to say
    assert hear(Suspect("n0", 2, "n1")) == 6  # stale
    assert s.statistics().counters.refutations == 4
    s.step(B, Sync("n1", True))
    (_, reply), *_ = s.ready()
    assert Alive("n0", 6, addr_of("n0"), NodeMeta()) in reply.updates
    s.leave()
    assert hear(Dead("n0", 6, "n1")) == 6  # a leaving member lets it be


def test_a_suspect_hears_of_it_first_when_pinged() -> None:
    s = Swim("n0", addr_of("n0"), NodeMeta(), random.Random(1), CFG)
    s.step(B, Sync("n1", False, (alive(0), Suspect("n1", 0, "n2"))))
    s.ready()
    s.step(B, Ping(7, "n1", "n0"))
    ((to, ack),) = s.ready()
    assert to == B and isinstance(ack, Ack) and ack.seq == 7
    assert ack.updates[0] == Suspect("n1", 0, "n2")


def test_suspicion_timeout_scales_with_cluster_size_and_confirmations() -> None:
    from consensus.swim import _Suspicion

    assert _Suspicion("a", 0, 10, 30, k=0).timeout_ticks() == 10
    s = _Suspicion("a", 0, 10, 30, k=3)
    seen = [s.timeout_ticks()]
    for by in ("a", "b", "b", "c", "d", "e"):
        s.confirm(by)
        seen.append(s.timeout_ticks())
    assert seen == [30, 30, 20, 20, 14, 10, 10]
    big = Net(12, config=replace(CFG, suspicion_confirmations=0))
    big.join_all()
    big.periods(10)
    big.crashed.add("n11")
    assert big.converged()
    for _ in range(40 * CFG.probe_ticks):
        if any(EventKind.SUSPECT in big.kinds(o, "n11") for o in big.live()):
            break
        big.tick()
    # log10(12) > 1: the minimum timeout is ceil(8 * 1.079) == 9 ticks, not 8.
    big.tick(8)
    assert not any(EventKind.DEAD in big.kinds(o, "n11") for o in big.live())
    big.tick(1)
    assert any(EventKind.DEAD in big.kinds(o, "n11") for o in big.live())


# ------------------------------------------------------------------- property


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(3, 6),
    loss=st.floats(0.0, 0.8),
    lossy_periods=st.integers(1, 40),
    links=st.sets(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=8),
    split=st.booleans(),
)
def test_message_loss_never_leaves_live_members_disagreeing(
    seed: int, n: int, loss: float, lossy_periods: int, links: set[tuple[int, int]], split: bool
) -> None:
    """Loss, one-way cuts and (optionally) a two-sided partition, from the join on;
    once the network is whole again every live member agrees on every other."""
    net = Net(n, seed=seed, loss=loss)
    net.cut = {(f"n{a % n}", f"n{b % n}") for a, b in links}
    if split:
        net.cut |= {(a, b) for a in net.nodes for b in net.nodes if (a < "n2") != (b < "n2")}
    net.join_all()
    net.periods(lossy_periods)
    net.loss = 0.0
    net.cut.clear()
    for _ in range(30 * CFG.sync_ticks // CFG.probe_ticks):
        if net.converged():
            break
        net.periods(1)
    assert net.converged(), {o: net.nodes[o].members() for o in net.nodes}


# ---------------------------------------------------------------------- wire

ids = st.text(alphabet="abcdefghijklmnop0123456789-", min_size=1, max_size=64)
incs = st.integers(0, 2**63 - 1)
addrs = st.tuples(
    st.text(alphabet="abc.0123456789", min_size=1, max_size=60), st.integers(1, 65535)
)
labels = st.text(max_size=8)
metas = st.builds(
    NodeMeta,
    ids,
    labels,
    labels,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.lists(st.text(min_size=1, max_size=8), max_size=MAX_TAGS).map(tuple),
    labels,
)
updates = st.one_of(
    st.builds(Alive, ids, incs, addrs, metas),
    st.builds(Suspect, ids, incs, ids),
    st.builds(Dead, ids, incs, ids),
    st.builds(Left, ids, incs),
)
ups = st.lists(updates, max_size=20).map(tuple)
seqs = st.integers(0, 2**32 - 1)
messages = st.one_of(
    st.builds(Ping, seqs, ids, ids, ups),
    st.builds(Ack, seqs, ids, ups),
    st.builds(PingReq, seqs, ids, ids, addrs, ups),
    st.builds(Sync, ids, st.booleans(), ups),
)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_wire_round_trip_and_exact_size(msg: Message) -> None:
    body = msgpack.packb(encode_message(msg))
    assert len(body) == message_bytes(msg)
    assert decode_message(msgpack.unpackb(body)) == msg


junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=7),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(junk)
def test_decoding_junk_raises_only_malformed_message(obj: object) -> None:
    with contextlib.suppress(MalformedMessage):  # anything else escapes and fails
        decode_message(obj)


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        [9, 1, "a", "b", []],
        [True, 1, "a", "b", []],
        [0, 1, "a", "b"],
        [0, -1, "a", "b", []],
        [0, 2**32, "a", "b", []],
        [0, 1, "", "b", []],
        [0, 1, "a" * 65, "b", []],
        [3, "a", 1, []],
        [2, 1, "a", "b", "h", 0, []],
        [1, 1, "a", [[0, "n", 0, "h", 1, ["", "", "", 0, 0, ["t"] * (MAX_TAGS + 1), ""]]]],
        [1, 1, "a", [[0, "n", 0, "h", 1, ["", "", "", -1, 0, [], ""]]]],
        [1, 1, "a", [[1, "n", 0]]],
        [1, 1, "a", [[3, "n", 1.5]]],
        [1, 1, "a", [[3, "\udc80", 1]]],
        [1, 1, "a", [[3, "n", 1]] * 256],
    ],
)
def test_malformed_messages_are_rejected(obj: object) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(obj)


def test_core_draws_randomness_only_from_the_rng_it_is_given() -> None:
    for name in ("swim.py", "swim_types.py"):
        tree = ast.parse((ROOT / "consensus" / name).read_text())
        for node in ast.walk(tree):
            match node:
                case ast.ImportFrom(module="random"):
                    raise AssertionError(f"{name}: from random import ...")
                case ast.Attribute(value=ast.Name(id="random"), attr=attr):
                    assert attr == "Random", f"{name}: random.{attr}"


def test_a_nine_field_meta_from_an_older_node_reads_with_zero_slots() -> None:
    meta = NodeMeta("n1", "h:1", "leader", 3, 2, ("a=b",), "v", "h:2", 7, slots=5)
    msg = Ping(1, "n1", "n2", (Alive("n1", 1, ("h", 1), meta),))
    wire = encode_message(msg)
    assert wire[4][0][5][9] == 5  # slots is the tenth meta field
    wire[4][0][5] = wire[4][0][5][:9]
    decoded = decode_message(msgpack.unpackb(msgpack.packb(wire)))
    assert isinstance(decoded, Ping)
    assert decoded.updates[0] == Alive("n1", 1, ("h", 1), replace(meta, slots=0))
