"""The Raft core: a deterministic state machine with no I/O.

Rules:
- Time is ``tick()``; input is ``step(message)`` and the client calls (``propose``,
  ``propose_conf_change``, ``read_index``, ``transfer_leadership``); output is
  ``ready()``. The core never reads a clock, a socket or an unseeded RNG.
- The driver persists, then sends, then applies, then calls ``advance`` (see ``Ready``).
- Each role has one step function; roles change only through ``_become_*``, which
  assert that the move is legal.
- PreVote and CheckQuorum are on by default. A leader appends an empty entry at the
  start of its term and commits only by counting entries of its own term.
- Membership changes one server at a time; a configuration takes effect when its
  entry is appended (Raft thesis §4.1), and a leader proposes one only after it
  has committed an entry of its own term and while no other change is pending.

Theory of operation: followers and candidates count election ticks and campaign
(first a pre-vote round) when their randomized timeout expires. A leader keeps a
``Progress`` per peer (see ``progress.py``) and sends AppendEntries, heartbeats
and snapshot chunks from it; commit advances when a quorum of voters has matched
an entry of the current term. ReadIndex rounds ride on heartbeats: a read is
released once a quorum has answered a heartbeat sent after the read arrived.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from consensus.log import RaftLog
from consensus.progress import Inflights, Progress, ProgressState
from consensus.snapshots import SnapshotReceiver, next_chunk
from consensus.storage import Compacted, LogStorage
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeOp,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    NodeId,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
    SoftState,
    TimeoutNow,
    decode_conf_entry,
    encode_conf_change,
)

KNOWN_BUGS = frozenset({"commit_prev_term", "skip_log_matching", "grant_any_vote"})


@dataclass(frozen=True, slots=True)
class Config:
    id: NodeId
    election_ticks_min: int = 10
    election_ticks_max: int = 20
    heartbeat_ticks: int = 2
    max_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 64
    max_inflight_bytes: int = 16 << 20
    max_snapshot_chunk_bytes: int = 64 << 10
    max_snapshot_inflight_chunks: int = 4
    max_pending_proposals: int = 10_000
    max_pending_reads: int = 4096
    max_apply_bytes: int = 4 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    applied: int = 0
    bugs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        assert self.id, "a node needs an id"
        assert 0 < self.heartbeat_ticks < self.election_ticks_min <= self.election_ticks_max
        assert self.max_inflight_msgs > 0 and self.max_inflight_bytes > 0
        assert self.max_snapshot_chunk_bytes > 0 and self.max_snapshot_inflight_chunks > 0
        assert self.bugs <= KNOWN_BUGS, f"unknown planted bugs {self.bugs - KNOWN_BUGS}"


class RaftError(Exception):
    """Base of the errors the client calls raise.

    RaftError
     ├── NotLeader         this node cannot serve the call; ``leader`` is a hint
     ├── ProposalDropped   the leader cannot take it now (transfer, too many pending)
     └── ConfChangeRefused the membership change is not allowed now or at all
    """


class NotLeader(RaftError):
    def __init__(self, leader: NodeId | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(RaftError):
    pass


class ConfChangeRefused(RaftError):
    pass


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match: int
    next: int
    state: str
    recent_active: bool
    learner: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: NodeId
    role: Role
    term: int
    leader: NodeId | None
    commit: int
    applied: int
    last_index: int
    conf: ConfState
    peers: dict[NodeId, PeerStatus] = field(default_factory=dict)


@dataclass(slots=True)
class _PendingRead:
    seq: int
    index: int
    ctx: bytes
    requester: NodeId  # this node's id for a local read


class Raft:
    def __init__(self, config: Config, storage: LogStorage, rng: random.Random) -> None:
        self.cfg = config
        self.id = config.id
        self.rng = rng
        self.log = RaftLog(storage, config.applied, config.max_apply_bytes)
        hard, snap_conf = storage.initial_state()
        self.term = hard.term
        self.vote: NodeId | None = hard.vote
        self.leader: NodeId | None = None
        self.role = Role.FOLLOWER
        # Configuration history: (index, conf) pairs, oldest first; the last one rules.
        snap_index = storage.snapshot().meta.index
        self._confs: list[tuple[int, ConfState]] = [(snap_index, snap_conf)]
        self._scan_confs(max(snap_index + 1, storage.first_index()), storage.last_index())
        self.progress: dict[NodeId, Progress] = {}
        self.votes: dict[NodeId, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self._random_timeout()
        self.lead_transferee: NodeId | None = None
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.reads: list[_PendingRead] = []
        self.reads_waiting_commit: list[_PendingRead] = []
        self.read_seq = 0
        self.read_acks: dict[NodeId, int] = {}
        self.receiver = SnapshotReceiver()
        self._prev_soft = self.soft_state()
        self._prev_hard = HardState(self.term, self.vote, self.log.committed)

    # ================================================================ observers
    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    def last_index(self) -> int:
        return self.log.last_index()

    def conf(self) -> ConfState:
        return self._confs[-1][1]

    def conf_at(self, index: int) -> ConfState:
        """The configuration in force at ``index`` (at or after the snapshot index)."""
        assert index >= self._confs[0][0], f"conf_at({index}) before the snapshot"
        found = self._confs[0][1]
        for at, conf in self._confs:
            if at > index:
                break
            found = conf
        return found

    def soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader, self.term)

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def is_voter(self) -> bool:
        return self.id in self.conf().voters

    def may_campaign(self) -> bool:
        """A voter in the latest configuration, or in the committed one while a change
        that removes us is still uncommitted (thesis §4.2.2): a removed leader that
        stepped down before its removal committed may hold the only complete log."""
        return self.is_voter() or self.id in self.conf_at(self.log.committed).voters

    def status(self) -> Status:
        learners = self.conf().learners
        peers = {
            p: PeerStatus(pr.match, pr.next, pr.state.value, pr.recent_active, p in learners)
            for p, pr in self.progress.items()
        }
        return Status(
            self.id,
            self.role,
            self.term,
            self.leader,
            self.log.committed,
            self.log.applied,
            self.log.last_index(),
            self.conf(),
            peers,
        )

    # ============================================================== transitions
    def _random_timeout(self) -> int:
        return self.rng.randint(self.cfg.election_ticks_min, self.cfg.election_ticks_max)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        self.leader = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self._random_timeout()
        self.lead_transferee = None
        self.votes = {}
        self.progress = {}
        self.reads = []
        self.reads_waiting_commit = []
        self.read_acks = {}

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        assert term >= self.term, "terms never go backwards"
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        assert self.role is not Role.LEADER, "a leader does not pre-campaign"
        # Term and vote stay: a pre-vote changes nothing durable.
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self.votes = {}
        self.election_elapsed = 0
        self.randomized_timeout = self._random_timeout()

    def _become_candidate(self) -> None:
        assert self.role is not Role.LEADER, "a leader does not campaign"
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE, "only a candidate becomes leader"
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self._sync_progress()
        for pr in self.progress.values():
            pr.recent_active = True
        self._append([Entry(0, self.term)])  # the no-op that commits earlier terms

    def _sync_progress(self) -> None:
        """Make the leader's progress map follow the current configuration."""
        members = self.conf().members()
        last = self.log.last_index()
        for p in list(self.progress):
            if p not in members:
                del self.progress[p]
                self.read_acks.pop(p, None)
        for p in members:
            if p not in self.progress:
                infl = Inflights(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes)
                self.progress[p] = Progress(match=0, next=last + 1, inflights=infl)
        if self.id in self.progress:
            me = self.progress[self.id]
            me.match, me.next, me.recent_active = last, last + 1, True

    # =================================================================== ticks
    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            if self.may_campaign():
                self.campaign()

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks_min:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
            for p, pr in self.progress.items():
                pr.recent_active = p == self.id
            self.lead_transferee = None  # a transfer that took this long has failed
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    def _quorum_active(self) -> bool:
        voters = self.conf().voters
        active = sum(1 for p in voters if p in self.progress and self.progress[p].recent_active)
        return active >= len(voters) // 2 + 1

    # =============================================================== elections
    def campaign(self, transfer: bool = False) -> None:
        """Start an election now (a pre-vote round first unless this is a transfer)."""
        if self.role is Role.LEADER or not self.may_campaign():
            return
        self._campaign(pre=self.cfg.pre_vote and not transfer, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.votes[self.id] = True
        if self._tally() == "won":
            self._on_election_won()
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for p in sorted(self.conf().voters - {self.id}):
            self._send(RequestVote(term, self.id, p, last_index, last_term, pre, transfer))

    def _tally(self) -> str:
        voters = self.conf().voters
        granted = sum(1 for p, v in self.votes.items() if v and p in voters)
        rejected = sum(1 for p, v in self.votes.items() if not v and p in voters)
        quorum = len(voters) // 2 + 1
        if granted >= quorum:
            return "won"
        if rejected >= quorum:
            return "lost"
        return "pending"

    def _on_election_won(self) -> None:
        if self.role is Role.PRE_CANDIDATE:
            self._campaign(pre=False, transfer=False)  # the pre-vote passed: the real one
        else:
            self._become_leader()

    def _in_lease(self) -> bool:
        """Whether we heard from a live leader recently enough to refuse disruptions."""
        return (
            self.cfg.check_quorum
            and self.leader is not None
            and self.election_elapsed < self.cfg.election_ticks_min
        )

    def _handle_vote_request(self, m: RequestVote) -> None:
        can_vote = (
            self.vote == m.src
            or (self.vote is None and self.leader is None)
            or (m.pre_vote and m.term > self.term)
        )
        up_to_date = self.log.is_up_to_date(m.last_index, m.last_term)
        if "grant_any_vote" in self.cfg.bugs:
            up_to_date = True
        if can_vote and up_to_date:
            self._send(RequestVoteResponse(m.term, self.id, m.src, True, m.pre_vote))
            if not m.pre_vote:
                self.vote = m.src
                self.election_elapsed = 0
        else:
            self._send(RequestVoteResponse(self.term, self.id, m.src, False, m.pre_vote))

    # ==================================================================== step
    def step(self, m: Message) -> None:
        """Feed one inbound message. Stale or misaddressed messages are dropped."""
        if m.dst != self.id or m.src == self.id:
            return
        if m.term > self.term and not self._step_higher_term(m):
            return
        if m.term < self.term:
            self._step_lower_term(m)
            return
        match m:
            case RequestVote():
                self._handle_vote_request(m)
                return
        match self.role:
            case Role.LEADER:
                self._step_leader(m)
            case Role.CANDIDATE | Role.PRE_CANDIDATE:
                self._step_candidate(m)
            case Role.FOLLOWER:
                self._step_follower(m)

    def _step_higher_term(self, m: Message) -> bool:
        """Handle a message from a newer term; False when it must be dropped."""
        match m:
            case RequestVote():
                if not m.transfer and self._in_lease():
                    return False  # a live leader exists: ignore the disruption
                if m.pre_vote:
                    return True  # answered at our own term; nothing changes
            case RequestVoteResponse(pre_vote=True, granted=True):
                return True  # granted at the term we would campaign at
            case AppendEntries() | Heartbeat() | InstallSnapshot():
                self._become_follower(m.term, m.src)
                return True
        self._become_follower(m.term, None)
        return True

    def _step_lower_term(self, m: Message) -> None:
        match m:
            case AppendEntries() | Heartbeat() if self.cfg.check_quorum or self.cfg.pre_vote:
                # Tell a deposed leader about the newer term so it steps down.
                self._send(AppendEntriesResponse(self.term, self.id, m.src, 0, reject=True))
            case RequestVote(pre_vote=True):
                self._send(RequestVoteResponse(self.term, self.id, m.src, False, True))

    def _step_leader(self, m: Message) -> None:
        match m:
            case AppendEntriesResponse():
                self._handle_append_response(m)
            case HeartbeatResponse():
                self._handle_heartbeat_response(m)
            case InstallSnapshotResponse():
                self._handle_snapshot_response(m)
            case ReadIndexRequest():
                self._read_index(m.ctx, m.src)
            case _:
                pass  # another leader of this term cannot exist; votes are late

    def _step_candidate(self, m: Message) -> None:
        match m:
            case AppendEntries() | Heartbeat() | InstallSnapshot():
                self._become_follower(m.term, m.src)
                self._step_follower(m)
            case RequestVoteResponse() if m.pre_vote == (self.role is Role.PRE_CANDIDATE):
                self.votes.setdefault(m.src, m.granted)
                outcome = self._tally()
                if outcome == "won":
                    self._on_election_won()
                elif outcome == "lost":
                    self._become_follower(self.term, None)
            case _:
                pass

    def _step_follower(self, m: Message) -> None:
        match m:
            case AppendEntries():
                self._heard_from_leader(m.src)
                self._handle_append(m)
            case Heartbeat():
                self._heard_from_leader(m.src)
                self.log.commit_to(min(m.commit, self.log.last_index()))
                self._send(HeartbeatResponse(self.term, self.id, m.src, m.read_seq))
            case InstallSnapshot():
                self._heard_from_leader(m.src)
                self._handle_snapshot_chunk(m)
            case TimeoutNow():
                self.campaign(transfer=True)
            case ReadIndexResponse():
                if m.index > 0:
                    self.read_states.append(ReadState(m.index, m.ctx))
            case _:
                pass

    def _heard_from_leader(self, leader: NodeId) -> None:
        self.election_elapsed = 0
        self.leader = leader

    # ======================================================= follower: appends
    def _handle_append(self, m: AppendEntries) -> None:
        log = self.log
        if m.prev_index < log.committed:
            self._send(AppendEntriesResponse(self.term, self.id, m.src, log.committed))
            return
        if "skip_log_matching" in self.cfg.bugs and m.prev_index <= log.last_index():
            matches = True
        else:
            matches = log.match_term(m.prev_index, m.prev_term)
        if not matches:
            hint = min(m.prev_index, log.last_index())
            hint_index, hint_term = log.find_conflict_by_term(hint, m.prev_term)
            self._send(
                AppendEntriesResponse(
                    self.term, self.id, m.src, m.prev_index, True, hint_index, hint_term
                )
            )
            return
        last_new = m.prev_index + len(m.entries)
        conflict = log.find_conflict(m.entries)
        if conflict:
            assert conflict > log.committed, f"conflict at committed index {conflict}"
            self._append_to_log(list(m.entries[conflict - m.prev_index - 1 :]))
        log.commit_to(min(m.commit, last_new))
        self._send(AppendEntriesResponse(self.term, self.id, m.src, last_new))

    def _append_to_log(self, entries: list[Entry]) -> None:
        """Every entry enters the log here, so the configuration history follows it."""
        if not entries:
            return
        first = entries[0].index
        self.log.append(entries)
        while len(self._confs) > 1 and self._confs[-1][0] >= first:
            self._confs.pop()
        self._record_confs(entries)

    def _record_confs(self, entries: list[Entry]) -> None:
        for e in entries:
            if e.type is EntryType.CONF_CHANGE:
                cc, result = decode_conf_entry(e.data)
                self._confs.append(
                    (e.index, result if result is not None else self.conf().apply(cc))
                )

    def _scan_confs(self, lo: int, hi: int) -> None:
        batch = 1024
        while lo <= hi:
            chunk = self.log.slice(lo, min(hi + 1, lo + batch))
            self._record_confs(chunk)
            lo += len(chunk)

    # ===================================================== follower: snapshots
    def _handle_snapshot_chunk(self, m: InstallSnapshot) -> None:
        meta = m.meta
        if meta.index <= self.log.committed:
            # Already have everything it holds: tell the leader where we are.
            self.receiver.clear()
            self._send(
                InstallSnapshotResponse(self.term, self.id, m.src, meta.index, m.offset, True)
            )
            self._send(AppendEntriesResponse(self.term, self.id, m.src, self.log.committed))
            return
        complete = self.receiver.receive(m)
        if complete is None:
            self._send(
                InstallSnapshotResponse(
                    self.term, self.id, m.src, meta.index, self.receiver.next_offset(meta)
                )
            )
            return
        self._install_snapshot(complete)
        self._send(
            InstallSnapshotResponse(self.term, self.id, m.src, meta.index, len(complete.data), True)
        )
        # Our log is known to match only up to the snapshot: claim no more than that.
        self._send(AppendEntriesResponse(self.term, self.id, m.src, meta.index))

    def _install_snapshot(self, snap: Snapshot) -> None:
        meta = snap.meta
        if self.log.match_term(meta.index, meta.term):
            # Our log already holds the snapshot's last entry: just commit up to it.
            self.log.commit_to(meta.index)
            return
        self.log.restore(snap)
        self._confs = [(meta.index, meta.conf)]

    # ==================================================== leader: replication
    def _send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        pr = self.progress[to]
        if pr.state is ProgressState.SNAPSHOT:
            self._send_snapshot_chunks(to, pr)
            return False
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        try:
            entries = self.log.slice(pr.next, self.log.last_index() + 1, self.cfg.max_msg_bytes)
        except Compacted:
            entries = None
        if prev_term is None or entries is None:
            pr.become_snapshot(self.log.storage.snapshot())
            self._send_snapshot_chunks(to, pr)
            return False
        if not entries and not send_if_empty:
            return False
        commit = self.log.committed
        self._send(
            AppendEntries(self.term, self.id, to, prev_index, prev_term, tuple(entries), commit)
        )
        pr.sent_entries(len(entries), sum(e.size() for e in entries))
        return bool(entries)

    def _send_snapshot_chunks(self, to: NodeId, pr: Progress) -> None:
        t = pr.transfer
        assert t is not None
        window = self.cfg.max_snapshot_chunk_bytes * self.cfg.max_snapshot_inflight_chunks
        while not t.done_sent and t.sent - t.acked < window:
            data, done = next_chunk(t.snapshot.data, t.sent, self.cfg.max_snapshot_chunk_bytes)
            self._send(InstallSnapshot(self.term, self.id, to, t.snapshot.meta, t.sent, data, done))
            t.sent += len(data)
            t.done_sent = done

    def _bcast_append(self) -> None:
        for p in sorted(self.progress):
            if p != self.id:
                self._send_append(p)

    def _bcast_heartbeat(self) -> None:
        for p in sorted(self.progress):
            if p == self.id:
                continue
            pr = self.progress[p]
            commit = min(pr.match, self.log.committed)
            self._send(Heartbeat(self.term, self.id, p, commit, self.read_seq))

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        if m.reject:
            if m.index == 0 and m.hint_index == 0:
                return  # a stale-term notice at our own term cannot happen; ignore
            probe = m.hint_index
            if m.hint_term > 0:
                probe, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decr_to(m.index, probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.src)
            return
        if not pr.maybe_update(m.index) and not (
            pr.match == m.index and pr.state is ProgressState.PROBE
        ):
            return  # a stale or duplicate acknowledgement
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= self._snapshot_index(pr):
            pr.become_probe()
        pr.inflights.free_le(m.index)
        if self._maybe_commit():
            if self.role is not Role.LEADER:
                return  # our own removal committed and we stepped down
            self._bcast_append()
        while self._send_append(m.src, send_if_empty=False):
            pass
        if m.src == self.lead_transferee and pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, m.src))

    @staticmethod
    def _snapshot_index(pr: Progress) -> int:
        return pr.transfer.snapshot.meta.index if pr.transfer is not None else 0

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.state is ProgressState.SNAPSHOT and pr.transfer is not None:
            t = pr.transfer
            t.stalled_heartbeats += 1
            if t.stalled_heartbeats >= 2:  # no progress for two heartbeats: a chunk was lost
                t.rewind(t.acked)
                self._send_snapshot_chunks(m.src, pr)
        elif pr.match < self.log.last_index() or pr.state is ProgressState.PROBE:
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first()  # messages may be lost: let one more through
            self._send_append(m.src)
        if m.src in self.conf().voters and m.read_seq > self.read_acks.get(m.src, 0):
            self.read_acks[m.src] = m.read_seq
            self._release_reads()

    def _handle_snapshot_response(self, m: InstallSnapshotResponse) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        t = pr.transfer
        if pr.state is not ProgressState.SNAPSHOT or t is None:
            return
        if m.snapshot_index != t.snapshot.meta.index:
            return
        if m.done:
            pr.maybe_update(m.snapshot_index)
            pr.become_probe()
            self._send_append(m.src)
            return
        if m.next_offset > t.acked:
            t.acked, t.stalled_heartbeats, t.rewound_to = m.next_offset, 0, -1
        elif m.next_offset < t.acked:
            t.acked = m.next_offset  # the follower lost what it had (it restarted)
            t.rewind(m.next_offset)
        elif m.next_offset < t.sent and m.next_offset != t.rewound_to:
            t.rewind(m.next_offset)  # the follower missed a chunk: resend from there once
        self._send_snapshot_chunks(m.src, pr)

    def _maybe_commit(self) -> bool:
        voters = self.conf().voters
        if not voters:
            return False
        matches = sorted(
            (self.progress[p].match for p in voters if p in self.progress), reverse=True
        )
        quorum = len(voters) // 2 + 1
        if len(matches) < quorum:
            return False
        candidate = matches[quorum - 1]
        if candidate <= self.log.committed:
            return False
        if self.log.term(candidate) != self.term and "commit_prev_term" not in self.cfg.bugs:
            return False  # Figure 8: never commit an earlier term's entry by counting
        self.log.commit_to(candidate)
        self._after_commit()
        return True

    def _after_commit(self) -> None:
        if self.reads_waiting_commit and self._committed_in_term():
            waiting, self.reads_waiting_commit = self.reads_waiting_commit, []
            for r in waiting:
                self._start_read(r.ctx, r.requester)
        if self.id not in self.conf().voters and self._confs[-1][0] <= self.log.committed:
            # Our own removal (or demotion) has committed: hand over by stepping down.
            self._bcast_append()
            self._become_follower(self.term, None)

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    # ================================================================= clients
    def propose(self, data: bytes) -> int:
        """Append a client command on the leader; returns its index."""
        return self._propose(EntryType.NORMAL, [data])[0]

    def propose_many(self, datas: Sequence[bytes]) -> list[int]:
        """Append several client commands as one (all or none); returns their indexes.
        One append means one message per follower carries them, so they are persisted
        and acknowledged together."""
        return self._propose(EntryType.NORMAL, datas)

    def _propose(self, kind: EntryType, datas: Sequence[bytes]) -> list[int]:
        assert datas, "nothing to propose"
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership is moving to {self.lead_transferee}")
        pending = self.log.last_index() - self.log.committed
        if pending + len(datas) > self.cfg.max_pending_proposals:
            raise ProposalDropped("too many uncommitted proposals")
        first = self.log.last_index() + 1
        self._append([Entry(first + i, self.term, kind, d) for i, d in enumerate(datas)])
        return list(range(first, first + len(datas)))

    def _append(self, entries: list[Entry]) -> None:
        last = self.log.last_index()
        entries = [replace(e, index=last + i + 1, term=self.term) for i, e in enumerate(entries)]
        conf_before = self.conf()
        self._append_to_log(entries)
        if self.conf() != conf_before:
            self._sync_progress()
        me = self.progress.get(self.id)
        if me is not None:
            me.maybe_update(self.log.last_index())
        self._maybe_commit()
        self._bcast_append()

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Propose one single-server membership change."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if not self._committed_in_term():
            raise ConfChangeRefused("the leader has not committed an entry of its term yet")
        if self._confs[-1][0] > self.log.committed:
            raise ConfChangeRefused("another membership change is still pending")
        conf = self.conf()
        match cc.op:
            case ConfChangeOp.ADD_LEARNER if cc.node in conf.members():
                raise ConfChangeRefused(f"{cc.node} is already a member")
            case ConfChangeOp.PROMOTE if cc.node not in conf.learners:
                raise ConfChangeRefused(f"{cc.node} is not a learner")
            case ConfChangeOp.PROMOTE if self.progress[cc.node].match < self.log.committed:
                raise ConfChangeRefused(f"{cc.node} has not caught up yet")
            case ConfChangeOp.REMOVE if cc.node not in conf.members():
                raise ConfChangeRefused(f"{cc.node} is not a member")
            case ConfChangeOp.REMOVE if conf.voters == {cc.node}:
                raise ConfChangeRefused("cannot remove the last voter")
        return self._propose(EntryType.CONF_CHANGE, [encode_conf_change(cc, conf.apply(cc))])[0]

    def transfer_leadership(self, target: NodeId) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if target == self.id:
            return
        if target not in self.conf().voters:
            raise ProposalDropped(f"{target} is not a voter")
        self.lead_transferee = target
        self.election_elapsed = 0
        if self.progress[target].match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, target))
        else:
            self._send_append(target)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; the answer comes as a ``ReadState``."""
        if self.role is Role.LEADER:
            self._read_index(ctx, self.id)
        elif self.leader is not None:
            self._send(ReadIndexRequest(self.term, self.id, self.leader, ctx))
        else:
            raise NotLeader(None)

    def _read_index(self, ctx: bytes, requester: NodeId) -> None:
        if len(self.reads) + len(self.reads_waiting_commit) >= self.cfg.max_pending_reads:
            if requester == self.id:
                raise ProposalDropped("too many pending reads")
            self._send(ReadIndexResponse(self.term, self.id, requester, ctx, 0))
            return
        if not self._committed_in_term():
            self.reads_waiting_commit.append(_PendingRead(0, 0, ctx, requester))
            return
        self._start_read(ctx, requester)

    def _start_read(self, ctx: bytes, requester: NodeId) -> None:
        self.read_seq += 1
        self.reads.append(_PendingRead(self.read_seq, self.log.committed, ctx, requester))
        self._release_reads()
        if self.reads:
            self._bcast_heartbeat()

    def _release_reads(self) -> None:
        voters = self.conf().voters
        acks = sorted(
            (self.read_seq if p == self.id else self.read_acks.get(p, 0) for p in voters),
            reverse=True,
        )
        confirmed = acks[len(voters) // 2] if voters else 0
        while self.reads and self.reads[0].seq <= confirmed:
            r = self.reads.pop(0)
            if r.requester == self.id:
                self.read_states.append(ReadState(r.index, r.ctx))
            else:
                self._send(ReadIndexResponse(self.term, self.id, r.requester, r.ctx, r.index))

    def report_unreachable(self, peer: NodeId) -> None:
        """The transport lost the connection: stop pipelining to that peer."""
        pr = self.progress.get(peer)
        if self.role is Role.LEADER and pr is not None and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    # =========================================================== ready/advance
    def _send(self, m: Message) -> None:
        self.msgs.append(m)

    def has_ready(self) -> bool:
        return bool(
            self.msgs
            or self.read_states
            or self.log.unstable
            or self.log.pending_snapshot is not None
            or self.log.has_next_committed()
            or self.soft_state() != self._prev_soft
            or self.hard_state() != self._prev_hard
        )

    def ready(self) -> Ready:
        soft, hard = self.soft_state(), self.hard_state()
        entries = self.log.unstable_entries()
        snap = self.log.pending_snapshot
        changed_hard = hard if hard != self._prev_hard else None
        must_sync = (
            bool(entries)
            or snap is not None
            or (hard.term != self._prev_hard.term or hard.vote != self._prev_hard.vote)
        )
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=changed_hard,
            entries=entries,
            snapshot=snap,
            committed_entries=self.log.next_committed_entries(),
            messages=tuple(self.msgs),
            read_states=tuple(self.read_states),
            must_sync=must_sync,
        )
        self.msgs = []
        self.read_states = []
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.meta.index)
            self.log.applied = max(self.log.applied, rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
