"""The composition root: one ``rota agent`` process.

Everything runs in one trio nursery; every service is started with
``await nursery.start(...)`` and signals readiness. The order is: storage (opened
synchronously; a corrupt store stops the node here), peer transport, Raft driver,
gossip, the housekeeping loops (autopilot, gossip metadata, peer addresses,
metrics), then the HTTP server. SIGTERM/SIGINT start a graceful shutdown: a leader
hands leadership to the most caught-up voter first, the node leaves gossip, the
HTTP server drains within its deadline, then everything is cancelled.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import trio

from consensus.raft import ConfChangeRefused, NotLeader, ProposalDropped
from consensus.raft import Config as RaftConfig
from consensus.swim import MemberState, Swim, SwimConfig
from consensus.swim_types import NodeMeta
from consensus.types import ConfState, Message, NodeId, Role
from node import auth, faults, gcpolicy, heaptrim
from node.autopilot import PeerHealth, decide
from node.config import NodeConfig
from node.driver import RaftDriver
from node.events import EventFeed, node_load
from node.executors import default_executors
from node.gossip import GossipService
from node.jobs import JobsService
from node.metrics import Metrics
from node.output import RunOutputs
from node.peerauth import Authenticator, HmacAuthenticator, TlsAuthenticator
from node.scheduler import OutputBuffer, SchedulerService, SchedulerStateMachine
from node.service import NodeService
from node.transport import PeerTransport, TransportLimits
from node.wire import Frame, RaftFrame
from storage.log import LmdbLogStorage
from web.app import create_app, serve
from web.port import format_host_port, parse_host_port

log = logging.getLogger("rota.daemon")

# Committed entries applied per Ready: about 2,500 fired slots or one full task batch,
# so a burst of work is applied in pieces with heartbeats between them (node.driver).
APPLY_BYTES_MAX = 64 << 10

VERSION = "0.1.0"
HOUSEKEEPING_INTERVAL_S = 1.0
SHUTDOWN_TRANSFER_TIMEOUT_S = 3.0
CONF_CHANGE_TIMEOUT_S = 10.0


def initial_conf(cfg: NodeConfig) -> ConfState:
    """The first ``bootstrap_expect`` static peers (by id) are the founding voters."""
    peers = sorted(cfg.peers)
    return ConfState(voters=frozenset(peers[: cfg.bootstrap_expect]))


@dataclass
class Agent:
    cfg: NodeConfig
    store: LmdbLogStorage
    transport: PeerTransport
    driver: RaftDriver
    gossip: GossipService
    service: NodeService
    metrics: Metrics
    scheduler: SchedulerService
    jobs: JobsService
    output: OutputBuffer
    shutdown: trio.Event = field(default_factory=trio.Event)
    peer_addresses: dict[NodeId, tuple[str, int]] = field(default_factory=dict)
    down_since: dict[NodeId, float] = field(default_factory=dict)
    events: EventFeed | None = None  # the live feed of GET /api/v1/events

    # ------------------------------------------------------------ addresses
    def set_peer_address(self, node: NodeId, addr: tuple[str, int]) -> None:
        if node != self.cfg.node_id and self.peer_addresses.get(node) != addr:
            self.peer_addresses[node] = addr
            self.transport.set_peers(self.peer_addresses)

    def learn_addresses(self) -> None:
        for m in self.gossip.members():
            if m.id != self.cfg.node_id and m.meta.raft_address:
                try:
                    self.set_peer_address(m.id, parse_host_port(m.meta.raft_address))
                except ValueError:
                    log.warning("ignoring a bad raft address gossiped by %s", m.id)

    # ----------------------------------------------------------- housekeeping
    async def housekeeping(self, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        while True:
            self.learn_addresses()
            await self.publish_meta()
            self.update_metrics()
            if self.driver.raft.role is Role.LEADER:
                await self.autopilot()
            await trio.sleep(HOUSEKEEPING_INTERVAL_S)

    def live_nodes(self) -> list[tuple[NodeId, int, tuple[str, ...]]]:
        """Raft members gossip holds alive (this node included), with their worker
        slots and tags."""
        members = self.driver.raft.conf().members()
        me = self.cfg.node_id
        out = [(me, self.cfg.worker_slots, self.gossip_tags())] if me in members else []
        for m in self.gossip.members():
            if m.id != me and m.id in members and m.state is MemberState.ALIVE:
                out.append((m.id, m.meta.slots, m.meta.tags))
        return out

    def gone_nodes(self) -> list[NodeId]:
        """Nodes gossip has held suspect or dead beyond the voter grace period."""
        now = trio.current_time()
        return [n for n, since in self.down_since.items() if now - since >= self.cfg.voter_grace_s]

    def gossip_tags(self) -> tuple[str, ...]:
        """This node's tags as gossip carries them (``key=value``, at most 8)."""
        return tuple(f"{k}={v}" for k, v in sorted(self.cfg.tags.items()))[:8]

    def meta(self) -> NodeMeta:
        raft = self.driver.raft
        role = "learner" if self.cfg.node_id in raft.conf().learners else raft.role.value
        state = self.scheduler.sm.state
        running = state.running_count(self.cfg.node_id)
        return NodeMeta(
            raft_id=self.cfg.node_id,
            free_slots=max(0, self.scheduler.slots - running),
            queue_depth=min(state.queued_count(self.cfg.node_id), 1_000_000),
            api_address=format_host_port(self.advertise_host(), self.cfg.http_port),
            role=role[:32],
            tags=self.gossip_tags(),
            version=VERSION,
            raft_address=format_host_port(self.advertise_host(), self.cfg.raft_port),
            applied_index=raft.applied_index,
            slots=self.cfg.worker_slots,
        )

    def advertise_host(self) -> str:
        return self.cfg.advertise_host or self.cfg.bind_host

    async def publish_meta(self) -> None:
        meta = self.meta()
        if meta != self.gossip.swim.meta and not self.shutdown.is_set():
            await self.gossip.update_meta(meta)

    def health(self) -> dict[NodeId, PeerHealth]:
        now = trio.current_time()
        raft = self.driver.raft
        out: dict[NodeId, PeerHealth] = {}
        for m in self.gossip.members():
            if m.id == self.cfg.node_id:
                continue
            alive = m.state is MemberState.ALIVE
            if alive:
                self.down_since.pop(m.id, None)
            since = self.down_since.setdefault(m.id, now) if not alive else now
            pr = raft.progress.get(m.id)
            out[m.id] = PeerHealth(
                alive=alive,
                down_for_s=now - since,
                match_index=pr.match if pr is not None else 0,
                has_raft_address=bool(m.meta.raft_address) or m.id in self.peer_addresses,
            )
        return out

    async def autopilot(self) -> None:
        raft = self.driver.raft
        change = decide(
            raft.conf(),
            self.cfg.node_id,
            raft.commit_index,
            self.health(),
            self.cfg.bootstrap_expect,
            self.cfg.voter_grace_s,
        )
        if change is None:
            return
        log.info("autopilot: %s %s", change.op.name.lower(), change.node)
        try:
            await self.driver.propose_conf_change(change, CONF_CHANGE_TIMEOUT_S)
        except (ConfChangeRefused, NotLeader, ProposalDropped) as e:
            log.info("autopilot: %s not possible now: %s", change.op.name.lower(), e)

    def update_metrics(self) -> None:
        s = self.driver.stats()
        m = self.metrics
        m.raft_term.set(s.term)
        m.raft_commit_index.set(s.commit_index)
        m.raft_applied_index.set(s.applied_index)
        counts: dict[str, int] = {"alive": 0, "suspect": 0, "dead": 0}
        for member in self.gossip.members():
            state = "dead" if member.state is MemberState.LEFT else member.state.value
            counts[state] = counts.get(state, 0) + 1
        m.set_members(counts)
        state = self.scheduler.sm.state
        mine = state.queue_depths().get(self.cfg.node_id, {})
        for priority in range(10):
            m.set_queue_depth(priority, mine.get(priority, 0))
        m.runs_running.set(state.running_count(self.cfg.node_id))

    # --------------------------------------------------------------- shutdown
    async def watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                self.shutdown.set()
                return

    async def hand_over(self) -> None:
        """On the way out: a leader passes leadership on, then we leave gossip."""
        raft = self.driver.raft
        if raft.role is Role.LEADER and len(raft.conf().voters) > 1:
            with trio.move_on_after(SHUTDOWN_TRANSFER_TIMEOUT_S):
                try:
                    leader = await self.service.transfer_leadership(None)
                    log.info("shutdown: leadership handed to %s", leader)
                except Exception as e:  # best effort: the others will elect anyway
                    log.warning("shutdown: leadership transfer failed: %s", e)
        with trio.move_on_after(1.0):
            await self.gossip.leave()


def build_agent(cfg: NodeConfig) -> Agent:
    """Open storage and build every service (no I/O besides opening the store)."""
    cluster_key = auth.load_cluster_key(cfg.cluster_key_path)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    store = LmdbLogStorage(cfg.data_dir / "store", initial_conf=initial_conf(cfg))
    peer_auth: Authenticator
    if cfg.tls_ca_file and cfg.tls_cert_file and cfg.tls_key_file:
        peer_auth = TlsAuthenticator(cfg.tls_ca_file, cfg.tls_cert_file, cfg.tls_key_file)
    else:
        peer_auth = HmacAuthenticator(cluster_key)
    holder: list[RaftDriver] = []

    def on_frame(peer: NodeId, frame: Frame) -> None:
        if isinstance(frame, RaftFrame) and frame.msg.src == peer and holder:
            holder[0].deliver(frame.msg)

    limits = TransportLimits(
        max_frame_bytes=cfg.max_frame_bytes, send_queue_frames_max=cfg.send_queue_frames_max
    )
    transport = PeerTransport(
        cfg.node_id,
        cfg.bind_host,
        cfg.raft_port,
        peer_auth,
        limits,
        on_frame,
        on_peer_down=lambda peer: holder[0].report_unreachable(peer) if holder else None,
    )

    def send(m: Message) -> bool:
        return transport.send(m.dst, RaftFrame(m))

    seed = int.from_bytes(os.urandom(8), "big")
    raft_cfg = RaftConfig(
        id=cfg.node_id,
        election_ticks_min=cfg.election_ticks_min,
        election_ticks_max=cfg.election_ticks_max,
        heartbeat_ticks=cfg.heartbeat_ticks,
        max_msg_bytes=min(1 << 20, cfg.max_frame_bytes // 2),
        max_snapshot_chunk_bytes=min(256 << 10, cfg.max_frame_bytes // 4),
        max_apply_bytes=APPLY_BYTES_MAX,
        applied=store.applied_index(),
    )
    metrics = Metrics(VERSION)
    sm = SchedulerStateMachine(store)
    driver = RaftDriver(raft_cfg, store, sm, send, seed, cfg.tick_ms / 1000.0)
    driver.fsync_observer = metrics.storage_fsync_duration.observe
    driver.soft_state_observer = lambda soft: metrics.observe_leader(soft.leader, cfg.node_id)
    holder.append(driver)
    host = cfg.advertise_host or cfg.bind_host
    swim = Swim(
        cfg.node_id,
        (host, cfg.gossip_port),
        NodeMeta(raft_id=cfg.node_id),
        random.Random(seed ^ 0x5157),
        SwimConfig(),
    )
    gossip = GossipService(swim, cfg.bind_host, cfg.gossip_port, cluster_key, tick_ms=cfg.tick_ms)
    agent_box: list[Agent] = []
    service = NodeService(
        driver,
        gossip,
        transport,
        format_host_port(host, cfg.http_port),
        lambda node, addr: agent_box[0].set_peer_address(node, addr),
    )

    def store_output(run_id: str, chunk: bytes, now: int) -> None:
        store.outputs.append(run_id, chunk, now_ms=now)

    output = OutputBuffer(store_output)
    scheduler = SchedulerService(
        cfg.node_id,
        sm,
        role=lambda: driver.raft.role,
        propose=service.propose,
        live_nodes=lambda: agent_box[0].live_nodes(),
        gone_nodes=lambda: agent_box[0].gone_nodes(),
        executors=default_executors(),
        output=output.write,
        events=metrics,
        slots=cfg.worker_slots,
        queue_max=cfg.worker_queue_max,
        steal_threshold=cfg.steal_threshold,
        steal_batch_max=cfg.steal_batch_max,
        steal_interval_s=cfg.steal_interval_ms / 1000,
        propose_many=service.propose_many,
        term=lambda: driver.raft.term,
        commit_age_s=driver.commit_age_s,
    )
    outputs = RunOutputs(cfg.node_id, sm, store.outputs.read, transport)
    jobs = JobsService(sm, service.propose, driver.read_barrier, outputs=outputs)
    agent = Agent(cfg, store, transport, driver, gossip, service, metrics, scheduler, jobs, output)
    agent_box.append(agent)
    agent.events = events = EventFeed(
        cfg.node_id,
        service.cluster_view,
        lambda: node_load(cfg.node_id, cfg.worker_slots, sm.state),
        lambda: sm.state,
        store.applied_index(),
        ring_max=cfg.events_ring_max,
    )
    sm.listeners.append(events.on_apply)
    sm.observers.append(lambda _entry, cmd, result: events.on_command(cmd, result))
    for peer, hp in cfg.peers.items():
        agent.set_peer_address(peer, (hp.host, hp.port))
    return agent


def write_pid_file(data_dir: Path) -> Path:
    path = data_dir / "agent.pid"
    path.write_text(f"{os.getpid()}\n")
    return path


async def run_agent(
    cfg: NodeConfig, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run one node until SIGTERM/SIGINT (or cancellation)."""
    agent = build_agent(cfg)
    gcpolicy.install()  # after the state is loaded: it is frozen with the code
    pid_file = write_pid_file(cfg.data_dir)
    try:
        verifier = auth.TokenVerifier.from_directory(cfg.jwt_public_keys_path)
        injected = faults.install(agent) if cfg.fault_injection else None  # tests only
        app = create_app(
            agent.service,
            verifier,
            agent.metrics,
            cfg.api_limits(),
            scheduler=agent.jobs,
            events=agent.events,
            extra_routes=injected.routes() if injected is not None else (),
        )
        http_shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.watch_signals)
            if injected is not None:
                await nursery.start(injected.run)
            await nursery.start(agent.transport.serve)
            await nursery.start(agent.driver.run)
            await nursery.start(agent.gossip.run)
            seeds = [(hp.host, hp.port) for hp in cfg.join]
            if seeds:
                await agent.gossip.join(seeds)
            await nursery.start(agent.housekeeping)
            if (trim := heaptrim.find_malloc_trim()) is not None:
                await nursery.start(heaptrim.trim_forever, trim)
            await nursery.start(agent.output.flush_loop)
            await nursery.start(agent.scheduler.leader_loop)
            await nursery.start(agent.scheduler.worker_loop)
            if agent.events is not None:
                await nursery.start(agent.events.run)
            await nursery.start(
                lambda task_status: serve(
                    app,
                    cfg.bind_host,
                    cfg.http_port,
                    http_shutdown,
                    certfile=str(cfg.http_tls_cert_file) if cfg.http_tls_cert_file else None,
                    keyfile=str(cfg.http_tls_key_file) if cfg.http_tls_key_file else None,
                    task_status=task_status,
                )
            )
            log.info("node %s is up", cfg.node_id)
            task_status.started(agent)
            await agent.shutdown.wait()
            log.info("node %s is shutting down", cfg.node_id)
            await agent.hand_over()
            http_shutdown.set()
            with trio.move_on_after(5.0):
                await trio.sleep(0.2)  # let the server begin its drain
            nursery.cancel_scope.cancel()
    finally:
        agent.store.close()
        pid_file.unlink(missing_ok=True)
