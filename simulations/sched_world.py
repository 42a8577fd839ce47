"""The whole scheduler in one thread: Raft nodes, state machine replicas, the leader's
planner and simulated workers, under the Raft simulation's faults.

Theory: ``SchedWorld`` is ``simulations.world.World`` (the seeded event loop, the
faulty network, crashes and restarts from durable state, pauses, clock drift, the
liveness phase) with its hooks filled in as the real node (``node.scheduler``) does:

- The state machine: each node applies committed entries to its own
  ``node.state.SchedulerState`` (commands decoded with ``node.commands``); the
  replica is durable with its applied index (a restart reloads it from its records),
  and a snapshot carries its ``to_image()``.
- Clocks: a node's wall clock runs at its drifting tick rate from its own offset, and
  jumps (forwards or back) when the fault mix has clock jumps. Commands carry it.
- The leader, every ``PLAN_TICKS`` of its ticks, runs the pure planner on its own
  replica (``due_fires``, ``lost_nodes``, ``placements``, ``timeouts``) and proposes
  the result; it plans again once that is applied (or ``RETRY_MS`` later).
- Workers, every ``WORKER_TICKS``: a run queued on the node gets ``Start(run, node,
  token, now)``, forwarded to the leader through the faulty network; only when its
  own replica applies that Start (Ok) does the simulated execution begin, with a
  drawn duration and outcome (``simulations.sched_workload.execution``), then
  ``Complete`` (retried while the run is still running with its token). A run
  revoked under a worker (cancelled, replaced, timed out, moved) is killed. An idle
  node proposes ``steal_choice``'s ``Steal``.
- Gossip is an oracle: members of the viewer's Raft configuration are live until
  silent (crashed or paused) for ``GONE_MS``; non-members and silent nodes are gone.
- Extra faults (``SchedFaults``): leader changes placed at slot boundaries (the
  leader is crashed or transfers leadership right when its next slot is due) and
  crashes of workers in the middle of runs.
- Clients (``sched_workload.client_command``) speak to the leader at random.
- Phases: ``fault_phase_ms`` of faults, then the base world heals; the final checks
  run once ``end_ms`` is reached and a leader has settled (``SETTLED_MS``).

The checks are ``simulations.sched_checks.SchedChecker``'s; the Raft checker of the
base world runs too. Planted bugs: ``sched_state.SCHED_BUGS``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from consensus.raft import NotLeader, ProposalDropped
from consensus.types import Entry, EntryType, NodeId, Role
from node.commands import Complete, Ok, Start, decode_command, encode_command
from node.model import Job, Run
from node.planner import NodeLoad, due_fires, lost_nodes, placements, steal_choice, timeouts
from node.schedule import EPOCH_MS_MAX
from node.state import TABLE_JOBS, TABLE_RUNS, Change, SchedulerState
from simulations.sched_checks import SchedChecker
from simulations.sched_state import SCHED_BUGS, STATE_BUGS
from simulations.sched_workload import Execution, client_command, execution
from simulations.world import SIM_BUGS, TICK_MS, SimNode, World, derive

EPOCH_MS = 1_700_000_000_000  # the simulated wall clocks start here
PLAN_TICKS = 10  # the leader plans every 100 ms of its ticks
WORKER_TICKS = 5  # a worker looks at its queue every 50 ms
RETRY_MS = 1_000  # a plan, Start or Complete not applied by then is proposed again
GONE_MS = 800  # gossip takes a node that has not ticked this long for gone
TIMEOUT_GRACE_MS = 1_000  # the leader's backstop: deadline plus this
FIRE_BATCH_MAX = 64
ASSIGN_BATCH_MAX = 64
TIMEOUT_BATCH_MAX = 16
QUEUE_MAX = 2  # runs placed on a node beyond its free slots (so backlogs, and steals)
STEAL_THRESHOLD = 0
STEAL_BATCH_MAX = 4
STEAL_COOLDOWN_MS = 300
COMPLETE_TRIES_MAX = 3
CLIENT_RATE = 0.12  # of the base workload's steps (every 10-60 ms)
COMPARE_MS = 2_000  # replicas at one index are compared this often
SETTLE_BOUND_MS = 15_000  # inv 5: a run is terminal this long after it was created
OWED_MARGIN_MS = 3_000  # inv 2: slots due this long before the end must be accounted
END_WAIT_MS = 3_000  # the final checks wait this long at most for a settled leader:
SETTLED_MS = 1_000  # one that led this long and applied all it committed (a leader
# whose Raft clock jumps steps down, also when healed; its slots wait for the next)


@dataclass(frozen=True)
class SchedFaults:
    """The scheduler's own faults, drawn per seed beside the Raft world's ``FaultMix``."""

    slot_faults: bool
    worker_crashes: bool

    @classmethod
    def draw(cls, rng: random.Random) -> SchedFaults:
        return cls(slot_faults=rng.random() < 0.5, worker_crashes=rng.random() < 0.5)

    def describe(self) -> str:
        return " ".join(k for k, v in self.__dict__.items() if v)


@dataclass
class Replica:
    """One node's scheduler side: its state machine replica, clock and worker."""

    state: SchedulerState
    rng: random.Random
    slots: int
    clock_offset_ms: float
    ticks: int = 0
    gen: int = 0  # bumped by each crash: events of the dead process are void
    alive_at: int = 0  # when it last ticked (up and not paused)
    leading_since: int | None = None
    starting: dict[str, tuple[int, int]] = field(default_factory=dict)  # run: token, at
    executing: dict[str, int] = field(default_factory=dict)  # run: token
    completing: dict[str, tuple[int, bytes, int, int]] = field(default_factory=dict)
    plan_index: int = 0
    plan_at: int = -RETRY_MS
    steal_at: int = 0


class SchedWorld(World):
    sim_bugs = SIM_BUGS | SCHED_BUGS
    fault_phase_ms = 8_000
    liveness_ms = 22_000

    def __init__(self, seed: int, bugs: frozenset[str] = frozenset(), trace: bool = False) -> None:
        super().__init__(seed, bugs, trace)
        self.sched_mix = SchedFaults.draw(derive(seed, "sched-faults"))
        self.sched_rng = derive(seed, "sched")
        states = [STATE_BUGS[b] for b in sorted(self.bugs) if b in STATE_BUGS]
        self.state_cls: type[SchedulerState] = states[0] if states else SchedulerState
        self.sched_checker = SchedChecker()
        self.replicas = {n: self._replica(n) for n in sorted(self.nodes)}
        self.client_seq = 0
        self.compared_at = 0
        self.end_ms = self.fault_phase_ms + self.liveness_ms - END_WAIT_MS

    def _replica(self, n: NodeId) -> Replica:
        rng = derive(self.seed, f"worker/{n}")
        offset = rng.uniform(-300, 300) if self.mix.drift else 0.0
        return Replica(self.state_cls(), rng, rng.randint(2, 4), offset)

    def describe_faults(self) -> str:
        return f"{super().describe_faults()} {self.sched_mix.describe()}".strip()

    def clock(self, node: SimNode) -> int:
        """The node's wall clock (what it puts in ``now_ms``)."""
        rep = self.replicas[node.id]
        return int(EPOCH_MS + rep.clock_offset_ms + self.now * TICK_MS / node.tick_ms)

    # ------------------------------------------------------------ hooks of World
    def _apply_entry(self, node: SimNode, e: Entry) -> None:
        if e.type is not EntryType.NORMAL or not e.data:
            return
        rep = self.replicas[node.id]
        cmd = decode_command(e.data)
        result = rep.state.apply(cmd, e.index)
        changes = rep.state.drain_changes()
        checker = self.sched_checker
        first = checker.wants(e.index)
        if first:
            self.trace(f"{node.id} applies {e.index} {cmd!r:.160} -> {result!r:.120}")
        jobs, runs = changed_records(rep.state, changes) if first else ([], [])
        checker.applied(node.id, e.index, cmd, result, jobs, runs, self.now)
        if isinstance(cmd, Start) and isinstance(result, Ok) and cmd.node == node.id:
            pending = rep.starting.pop(cmd.run_id, None)
            if pending is not None and pending[0] == cmd.token:
                self._begin(node, cmd.run_id, cmd.token)

    def _snapshot_data(self, node: SimNode) -> bytes:
        return self.replicas[node.id].state.to_image()

    def _restore_data(self, node: SimNode, data: bytes) -> None:
        rep = self.replicas[node.id]
        rep.state = self.state_cls.from_image(data) if data else self.state_cls()

    def _crash(self, node: SimNode, restart_ms: int | None = None) -> None:
        super()._crash(node, restart_ms)
        rep = self.replicas[node.id]
        rep.gen += 1
        rep.starting, rep.executing, rep.completing = {}, {}, {}
        rep.plan_index, rep.plan_at = 0, -RETRY_MS

    def _restart(self, node: SimNode) -> None:
        was_down = not node.up
        super()._restart(node)
        if was_down and node.up:
            rep = self.replicas[node.id]
            rep.state = self.state_cls.load(list(rep.state.records()))  # from its tables

    def _on_tick(self, node: SimNode) -> None:
        rep = self.replicas[node.id]
        rep.ticks += 1
        rep.alive_at = self.now
        leading = node.raft.role is Role.LEADER
        if leading != (rep.leading_since is not None):
            rep.leading_since = self.now if leading else None
        if self.mix.clock_jumps and not self.healed and rep.rng.random() < 0.001:
            rep.clock_offset_ms += rep.rng.choice([1, 1, -1]) * rep.rng.uniform(100, 5000)
            self.trace(f"{node.id} clock jumps to {self.clock(node)}")
        if rep.ticks % WORKER_TICKS == 0:
            self._worker_step(node)
        if node.up and rep.ticks % PLAN_TICKS == 0 and node.raft.role is Role.LEADER:
            self._plan(node)
        if self.now - self.compared_at >= COMPARE_MS:
            self.compared_at = self.now
            self._compare_replicas()

    def _propose_client(self, leader: SimNode, rng: random.Random) -> None:
        if rng.random() > CLIENT_RATE:
            return
        self.client_seq += 1
        state = self.replicas[leader.id].state
        name = f"job-{self.client_seq}"
        cmd = client_command(rng, state, self.clock(leader), name, self.healed)
        if cmd is not None:
            leader.raft.propose(encode_command(cmd))

    def _schedule_workload(self) -> None:
        super()._schedule_workload()
        self.at(500, self._sched_fault_step)

    def _live_progress(self) -> bool:
        leader = self.leader()
        if self.now < self.end_ms or leader is None:
            return False
        since = self.replicas[leader.id].leading_since
        if since is None or self.now - since < SETTLED_MS:
            return False
        if leader.applied_index < leader.raft.commit_index:
            return False
        self._final_checks(leader)
        return True

    def _liveness_failure(self) -> str:
        return (
            f"liveness: no leader that led {SETTLED_MS} ms and applied all it committed "
            f"between {self.end_ms} ms and the end"
        )

    # ------------------------------------------------------------ the leader
    def _plan(self, node: SimNode) -> None:
        rep = self.replicas[node.id]
        if rep.plan_index > node.applied_index and self.now - rep.plan_at < RETRY_MS:
            return  # the last plan is not applied yet
        state, now = rep.state, self.clock(node)
        members = node.raft.conf().members()
        loads = self._loads(node)
        gone = {n for n in state.busy_nodes() if n not in members or not self._alive(n)}
        cmds = [
            *due_fires(state, now, FIRE_BATCH_MAX),
            *lost_nodes(state, gone, now),
            *placements(state, loads, now, ASSIGN_BATCH_MAX, queue_max=QUEUE_MAX),
            *timeouts(state, now, TIMEOUT_GRACE_MS, TIMEOUT_BATCH_MAX),
        ]
        if not cmds:
            return
        for cmd in cmds:
            try:
                rep.plan_index = node.raft.propose(encode_command(cmd))
            except (NotLeader, ProposalDropped):
                break
        rep.plan_at = self.now
        self._process(node)

    def _loads(self, viewer: SimNode) -> list[NodeLoad]:
        """The live members' free slots, from their slots and the viewer's replica."""
        state = self.replicas[viewer.id].state
        return [
            NodeLoad(n, max(0, self.replicas[n].slots - state.running_count(n)))
            for n in sorted(viewer.raft.conf().members())
            if n in self.nodes and self._alive(n)
        ]

    def _alive(self, n: NodeId) -> bool:
        """Gossip's view: a node is taken for gone once silent for ``GONE_MS``."""
        return self.now - self.replicas[n].alive_at < GONE_MS

    # ------------------------------------------------------------ workers
    def _worker_step(self, node: SimNode) -> None:
        rep, me = self.replicas[node.id], node.id
        state = rep.state
        for run_id in sorted(rep.executing):
            run = state.run(run_id)
            if run is None or run.node != me or run.state not in ("queued", "running"):
                del rep.executing[run_id]  # revoked: the process is killed
                self.trace(f"{me} kills {run_id}")
        for run_id, (token, data, at, tries) in sorted(rep.completing.items()):
            run = state.run(run_id)
            if run is None or run.state != "running" or run.token != token:
                del rep.completing[run_id]
            elif self.now - at >= RETRY_MS and tries < COMPLETE_TRIES_MAX:
                rep.completing[run_id] = (token, data, self.now, tries + 1)
                self._forward(node, data)
        for run_id, (token, at) in sorted(rep.starting.items()):
            run = state.run(run_id)
            if run is None or (run.state, run.node, run.token) != ("queued", me, token):
                del rep.starting[run_id]
            elif self.now - at >= RETRY_MS:
                del rep.starting[run_id]  # proposed again below
        busy = len(rep.executing) + len(rep.starting)
        for run in list(state.queued_on(me)):
            if busy >= rep.slots or not node.up:
                return
            if run.id in rep.starting or run.id in rep.executing:
                continue
            busy += 1
            rep.starting[run.id] = (run.token, self.now)
            self._forward(node, encode_command(Start(run.id, me, run.token, self.clock(node))))
            if "dispatch_before_commit" in self.bugs and node.up:
                del rep.starting[run.id]  # planted: runs without waiting for the Start
                self._begin(node, run.id, run.token)
        if node.up and self.now >= rep.steal_at and busy < rep.slots:
            free = rep.slots - busy  # this node knows its own slots better than the log
            loads = [NodeLoad(n.node, free) if n.node == me else n for n in self._loads(node)]
            steal = steal_choice(
                me, loads, state, STEAL_THRESHOLD, STEAL_BATCH_MAX, self.clock(node)
            )
            if steal is not None:
                rep.steal_at = self.now + STEAL_COOLDOWN_MS
                self._forward(node, encode_command(steal))

    def _begin(self, node: SimNode, run_id: str, token: int) -> None:
        rep = self.replicas[node.id]
        rep.executing[run_id] = token
        self.sched_checker.execution_began(node.id, run_id, token)
        run = rep.state.run(run_id)
        ex = execution(rep.rng, 1 if run is None else run.timeout_s)
        self.trace(f"{node.id} executes {run_id} token {token}: {ex}")
        if ex.outcome is not None:
            gen = rep.gen
            self.at(self.now + ex.duration_ms, lambda: self._executed(node, gen, run_id, token, ex))

    def _executed(self, node: SimNode, gen: int, run_id: str, token: int, ex: Execution) -> None:
        rep = self.replicas[node.id]
        if rep.gen != gen or rep.executing.get(run_id) != token:
            return  # the process died or the run was killed
        if self.now < node.paused_until:
            self.at(node.paused_until, lambda: self._executed(node, gen, run_id, token, ex))
            return
        del rep.executing[run_id]
        assert ex.outcome is not None
        ok = ex.outcome == "succeeded"
        exit_code = {"succeeded": 0, "failed": 1}.get(ex.outcome)
        error = None if ok else f"simulated {ex.outcome}"
        done = Complete(run_id, token, ex.outcome, exit_code, error, "", self.clock(node))
        data = encode_command(done)
        rep.completing[run_id] = (token, data, self.now, 1)
        self._forward(node, data)

    def _forward(self, node: SimNode, data: bytes) -> None:
        """A worker's proposal: to its own Raft when it leads, else to the leader it
        knows, through the network (the worker retries what is lost)."""
        if node.raft.role is Role.LEADER:
            self._propose_at(node, data)
            return
        leader = node.raft.leader
        if leader is not None and leader in self.nodes:
            self._transmit(node.id, leader, lambda: self._arrives(leader, data))

    def _arrives(self, dst: NodeId, data: bytes) -> None:
        node = self.nodes[dst]
        if node.up and self.now >= node.paused_until:
            self._propose_at(node, data)

    def _propose_at(self, node: SimNode, data: bytes) -> None:
        try:
            node.raft.propose(data)
        except (NotLeader, ProposalDropped):
            return
        self._process(node)

    # ------------------------------------------------------------ faults
    def _sched_fault_step(self) -> None:
        if self.healed:
            return
        rng = self.sched_rng
        leader = self.leader()
        if self.sched_mix.slot_faults and leader is not None and rng.random() < 0.5:
            due = next(self.replicas[leader.id].state.due_jobs(EPOCH_MS_MAX), None)
            if due is not None and due.next_fire_at is not None:
                ahead_ms = max(0, due.next_fire_at - self.clock(leader)) * leader.tick_ms / TICK_MS
                term = leader.raft.term
                at = self.now + ahead_ms + rng.uniform(-5, 20)
                self.at(at, lambda: self._slot_fault(leader, term))
        if self.sched_mix.worker_crashes and rng.random() < 0.3:
            busy = [n for n in sorted(self.nodes) if self.replicas[n].executing]
            node = self.nodes[rng.choice(busy)] if busy else None
            if node is not None and node.up:
                self.trace(f"{node.id} crashes mid-run")
                self._crash(node)
        self.at(self.now + rng.randint(300, 1500), self._sched_fault_step)

    def _slot_fault(self, leader: SimNode, term: int) -> None:
        """Right at a due slot: the leader crashes or hands leadership over."""
        if self.healed or not leader.up or leader.raft.role is not Role.LEADER:
            return
        if leader.raft.term != term:
            return
        others = sorted(leader.raft.conf().voters - {leader.id})
        if others and self.sched_rng.random() < 0.5:
            target = self.sched_rng.choice(others)
            self.trace(f"{leader.id} transfers to {target} at a slot")
            try:
                leader.raft.transfer_leadership(target)
            except (NotLeader, ProposalDropped):
                return
            self._process(leader)
        else:
            self.trace(f"{leader.id} crashes at a slot")
            self._crash(leader)

    # ------------------------------------------------------------ checks
    def _compare_replicas(self) -> None:
        by_index: dict[int, list[NodeId]] = {}
        for n in sorted(self.nodes):
            if self.nodes[n].up:
                by_index.setdefault(self.nodes[n].applied_index, []).append(n)
        images = {
            n: (index, self.replicas[n].state.to_image())
            for index, group in by_index.items()
            if len(group) > 1
            for n in group
        }
        self.sched_checker.replicas(images)

    def _final_checks(self, leader: SimNode) -> None:
        self._compare_replicas()
        for n in sorted(self.nodes):
            if self.nodes[n].up:
                self.replicas[n].state.check_invariants()
        owed_until = self.clock(leader) - OWED_MARGIN_MS
        self.sched_checker.final(self.now, SETTLE_BOUND_MS, owed_until)
        self.trace(f"final checks passed ({self.sched_checker.checks} reports)")


def changed_records(
    state: SchedulerState, changes: list[Change]
) -> tuple[list[tuple[str, Job | None]], list[tuple[str, Run | None]]]:
    """The records one apply wrote (None: deleted), as the replica now holds them."""
    jobs: list[tuple[str, Job | None]] = []
    runs: list[tuple[str, Run | None]] = []
    for table, key, _ in changes:
        if table == TABLE_JOBS:
            jobs.append((key.decode(), state.job(key.decode())))
        elif table == TABLE_RUNS:
            runs.append((key.decode(), state.run(key.decode())))
    return jobs, runs


def run_sched_seed(seed: int, bugs: frozenset[str] = frozenset(), trace: bool = False) -> str:
    return SchedWorld(seed, bugs, trace).run()
