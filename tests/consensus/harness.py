"""Transcript tests of the Raft core, after etcd raft's ``datadriven`` tests.

A transcript (``tests/consensus/scenarios/*.txt``) is a script of commands run
against one in-memory ``Network`` (``network.py``), each followed by its expected
output::

    # comment lines say what the scenario shows and why the output is right
    command arg1 arg2 key=value
    ----
    expected output lines
    <a blank line ends the block>

The runner executes each command, renders its output deterministically (sorted,
stable formats, never a blank line) and compares it with the expected text. A
mismatch is reported as a unified diff naming the file and the line of the command.
After every command the runner also checks Raft's safety properties
(``Network.check_invariants``); a violation fails the test whatever the output says.

Rewriting: with ``ROTA_REWRITE=1`` in the environment the runner writes the actual
output into the files instead of failing::

    ROTA_REWRITE=1 .venv/bin/python -m pytest tests/consensus/test_transcripts.py
    git diff tests/consensus/scenarios   # read every change against the Raft paper

A regenerated transcript that enshrines wrong behaviour is a defect: review it. A
file whose first line is ``# xfail: <reason>`` documents a known core bug: it holds
the correct expected output, is expected to fail, and is never rewritten.

Commands (``A``, ``B`` are node ids; ``[...]`` is optional)::

    nodes A B C [learners=D,E] [pre_vote=false] [check_quorum=false] [election=10..20]
          [heartbeat=2] [max_msg_bytes=N] [max_inflight_msgs=N] [max_inflight_bytes=N]
          [max_snapshot_chunk_bytes=N] [max_snapshot_inflight_chunks=N]
          [max_pending_proposals=N] [max_pending_reads=N] [seed=N] [sync=always|ready]
    add-node D                   a new machine: empty log, the bootstrap configuration
    campaign A                   A starts an election now (pre-vote first if enabled)
    tick A [B ...] [N]           N ticks on the nodes named, nothing delivered
    tick-all [N] [settle=true]   N ticks on every node; with settle, deliver after each
    tick-heartbeat A             heartbeat_ticks ticks on A
    stabilize                    deliver until quiet, one line per message delivered
    settle                       the same, quietly
    deliver-one A->B [nth=K]     deliver the oldest (or K-th oldest, from 0) message A->B
    duplicate A->B               send every pending message A->B a second time
    hold A->B / release A->B     delay the pending messages A->B / let them arrive now
    pending                      the messages waiting in the network
    drop A->B / drop-one A->B    lose every / the oldest pending message from A to B
    propose A DATA               a client command on A
    conf-change A add-learner|promote|remove D
    read-index A CTX             ask A for a linearizable read point
    read-states A                the read points A released (and forget them)
    transfer-leader A B          A hands leadership to B
    isolate A / cut A B / heal   cut every link of A / the link A->B only / restore all
    restart A                    crash A and start it again: what it already output is
                                 sent, messages on their way to it and unsynced writes
                                 are lost; its state machine keeps its applied index
    snapshot-compact A INDEX     snapshot A's state machine at INDEX, compact the log
    status [A ...]               role term lead commit applied last voters learners
    hard-state [A ...]           the durable term, vote and commit (what a crash keeps)
    log [A ...]                  each node's log (after "snapshot=I/T" when compacted)
    applied [A ...]              each node's applied index and state machine contents
    progress A                   the leader's view of each peer: state match next ...

A command with no output is followed by ``----`` and the blank line at once.
Output formats: an entry is ``index/term`` then ``'data'`` or ``conf=op:node``;
a message is ``src->dst Type field=value ...`` (pre-votes show as ``PreVote``);
a message lost on a cut link ends with ``(dropped)``; a role or term change shows
as ``  b: follower@1 -> candidate@2`` right after the event that caused it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from consensus.progress import ProgressState
from consensus.raft import Config, RaftError
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    NodeId,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Role,
    TimeoutNow,
    decode_conf_change,
)
from tests.consensus.network import Network

SCENARIOS = Path(__file__).parent / "scenarios"
REWRITE = os.environ.get("ROTA_REWRITE") == "1"
XFAIL_PREFIX = "# xfail:"
CONF_OPS = {
    "add-learner": ConfChangeOp.ADD_LEARNER,
    "promote": ConfChangeOp.PROMOTE,
    "remove": ConfChangeOp.REMOVE,
}
CONF_OP_NAMES = {op: name for name, op in CONF_OPS.items()}
CONFIG_FIELDS = {f.name: f.type for f in dataclasses.fields(Config)}


# ================================================================== rendering
def fmt_data(data: bytes) -> str:
    return "'" + data.decode(errors="backslashreplace") + "'"


def fmt_entry(e: Entry) -> str:
    head = f"{e.index}/{e.term}"
    if e.type is EntryType.CONF_CHANGE:
        cc = decode_conf_change(e.data)
        return f"{head} conf={CONF_OP_NAMES[cc.op]}:{cc.node}"
    return f"{head} {fmt_data(e.data)}" if e.data else head


def fmt_entries(entries: tuple[Entry, ...] | list[Entry]) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def fmt_ids(ids: frozenset[NodeId]) -> str:
    return ",".join(sorted(ids)) or "-"


def fmt_message(m: Message) -> str:
    """One message on one line: ``src->dst Type term=T fields...``."""
    body: str
    match m:
        case AppendEntries():
            body = (
                f"AppendEntries term={m.term} prev={m.prev_index}/{m.prev_term} "
                f"entries={fmt_entries(m.entries)} commit={m.commit}"
            )
        case AppendEntriesResponse(reject=True):
            body = (
                f"AppendEntriesResponse term={m.term} reject index={m.index} "
                f"hint={m.hint_index}/{m.hint_term}"
            )
        case AppendEntriesResponse():
            body = f"AppendEntriesResponse term={m.term} index={m.index}"
        case Heartbeat():
            body = f"Heartbeat term={m.term} commit={m.commit}" + _read_seq(m.read_seq)
        case HeartbeatResponse():
            body = f"HeartbeatResponse term={m.term}" + _read_seq(m.read_seq)
        case RequestVote():
            kind = "PreVote" if m.pre_vote else "RequestVote"
            flag = " transfer" if m.transfer else ""
            body = f"{kind} term={m.term} last={m.last_index}/{m.last_term}{flag}"
        case RequestVoteResponse():
            kind = "PreVoteResponse" if m.pre_vote else "RequestVoteResponse"
            body = f"{kind} term={m.term} {'granted' if m.granted else 'rejected'}"
        case InstallSnapshot():
            done = " done" if m.done else ""
            body = (
                f"InstallSnapshot term={m.term} snap={m.meta.index}/{m.meta.term} "
                f"offset={m.offset} bytes={len(m.data)}{done}"
            )
        case InstallSnapshotResponse():
            done = " done" if m.done else ""
            body = (
                f"InstallSnapshotResponse term={m.term} snap={m.snapshot_index} "
                f"next={m.next_offset}{done}"
            )
        case TimeoutNow():
            body = f"TimeoutNow term={m.term}"
        case ReadIndexRequest():
            body = f"ReadIndexRequest term={m.term} ctx={fmt_data(m.ctx)}"
        case ReadIndexResponse():
            body = f"ReadIndexResponse term={m.term} ctx={fmt_data(m.ctx)} index={m.index}"
    return f"{m.src}->{m.dst} {body}"


def _read_seq(seq: int) -> str:
    return f" read_seq={seq}" if seq else ""


# ==================================================================== parsing
@dataclass(slots=True)
class Block:
    """One command and its expected output; ``out_lo:out_hi`` are its output lines."""

    line: int  # 1-based line of the command
    command: str
    expected: list[str]
    out_lo: int
    out_hi: int


def parse(text: str, name: str) -> list[Block]:
    lines = text.split("\n")
    blocks: list[Block] = []
    k = 0
    while k < len(lines):
        line = lines[k]
        if not line.strip() or line.startswith("#"):
            k += 1
            continue
        if k + 1 >= len(lines) or lines[k + 1] != "----":
            raise ValueError(f"{name}:{k + 1}: expected '----' after the command {line!r}")
        lo = hi = k + 2
        while hi < len(lines) and lines[hi].strip():
            hi += 1
        blocks.append(Block(k + 1, line.strip(), lines[lo:hi], lo, hi))
        k = hi
    return blocks


def split_args(command: str) -> tuple[str, list[str], dict[str, str]]:
    words = shlex.split(command)
    pos = [w for w in words[1:] if "=" not in w]
    kw = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    return words[0], pos, kw


def link(arg: str) -> tuple[NodeId, NodeId]:
    src, sep, dst = arg.partition("->")
    if not sep:
        raise ValueError(f"expected SRC->DST, got {arg!r}")
    return src, dst


# ================================================================= the runner
class Transcript:
    """Runs commands against one Network and renders their output."""

    def __init__(self, overrides: dict[str, object] | None = None) -> None:
        self._net: Network | None = None
        self.extra = overrides or {}
        self.seen: dict[NodeId, tuple[Role, int]] = {}

    @property
    def net(self) -> Network:
        assert self._net is not None, "the script must start with 'nodes'"
        return self._net

    def run(self, command: str) -> list[str]:
        name, pos, kw = split_args(command)
        handler: Callable[[list[str], dict[str, str]], list[str]] | None = getattr(
            self, "cmd_" + name.replace("-", "_"), None
        )
        if handler is None:
            raise ValueError(f"unknown command {name!r}")
        out = handler(pos, kw)
        if self._net is not None:
            out += self.transitions()
            violations = self.net.check_invariants()
            assert not violations, "safety violated: " + "; ".join(violations)
        return out

    # ------------------------------------------------------------ helpers
    def transitions(self) -> list[str]:
        """A line per node whose role or term changed since we last looked."""
        out = []
        for i, r in sorted(self.net.nodes.items()):
            now = (r.role, r.term)
            before = self.seen.get(i, now)
            if now != before:
                out.append(f"  {i}: {before[0].value}@{before[1]} -> {now[0].value}@{now[1]}")
            self.seen[i] = now
        return out

    def forget_transitions(self) -> None:
        self.transitions()

    def hook(self, out: list[str]) -> Callable[[Message, bool], None]:
        """A delivery hook that prints each message, then the changes it caused."""

        def on_deliver(m: Message, dropped: bool) -> None:
            # The hook runs before the step: first show what the previous message caused.
            out.extend(self.transitions())
            out.append(fmt_message(m) + (" (dropped)" if dropped else ""))

        return on_deliver

    @staticmethod
    def call(fn: Callable[[], object]) -> list[str]:
        """Run a client call; print ``ok``, its result, or the RaftError it raised."""
        try:
            result = fn()
        except RaftError as e:
            return [f"error: {type(e).__name__}: {e}"]
        return ["ok" if result is None else f"index={result}"]

    def status_line(self, i: NodeId) -> str:
        r = self.net.nodes[i]
        conf = r.conf()
        return (
            f"{i}: {r.role.value} term={r.term} lead={r.leader or '-'} "
            f"commit={r.commit_index} applied={r.applied_index} last={r.last_index()} "
            f"voters={fmt_ids(conf.voters)} learners={fmt_ids(conf.learners)}"
        )

    def ids(self, pos: list[str]) -> list[NodeId]:
        return pos or sorted(self.net.nodes)

    # ----------------------------------------------------------- commands
    def cmd_nodes(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        overrides: dict[str, object] = {}
        learners = [x for x in kw.pop("learners", "").split(",") if x]
        seed = int(kw.pop("seed", "1"))
        sync = kw.pop("sync", "always")
        if "election" in kw:
            lo, _, hi = kw.pop("election").partition("..")
            overrides["election_ticks_min"] = int(lo)
            overrides["election_ticks_max"] = int(hi or lo)
        if "heartbeat" in kw:
            overrides["heartbeat_ticks"] = int(kw.pop("heartbeat"))
        for key, value in kw.items():
            if key not in CONFIG_FIELDS:
                raise ValueError(f"unknown option {key}")
            overrides[key] = value == "true" if value in ("true", "false") else int(value)
        overrides.update(self.extra)
        self._net = Network(pos, seed=seed, learners=learners, sync_policy=sync, **overrides)
        self.forget_transitions()
        return []

    def cmd_add_node(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.add_blank(pos[0])
        self.forget_transitions()
        return [self.status_line(pos[0])]

    def cmd_campaign(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.nodes[pos[0]].campaign()
        return []

    def _tick(self, ids: list[NodeId], n: int, settle: bool) -> list[str]:
        """Tick; with ``settle``, deliver quietly after each tick. Prints role changes."""
        out: list[str] = []

        def on_deliver(m: Message, dropped: bool) -> None:
            out.extend(self.transitions())

        for _ in range(n):
            for i in ids:
                self.net.nodes[i].tick()
            self.net.observe()
            out += self.transitions()
            if settle:
                self.net.settle(hook=on_deliver)
                out += self.transitions()
        return out

    def cmd_tick(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        n = int(pos.pop()) if pos[-1].isdigit() else 1
        return self._tick(pos, n, kw.get("settle") == "true")

    def cmd_tick_all(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        n = int(pos[0]) if pos else 1
        return self._tick(sorted(self.net.nodes), n, kw.get("settle") == "true")

    def cmd_tick_heartbeat(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        return self._tick([pos[0]], self.net.configs[pos[0]].heartbeat_ticks, False)

    def cmd_stabilize(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        out: list[str] = []
        self.net.settle(hook=self.hook(out))
        return out

    def cmd_settle(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.settle()
        self.forget_transitions()
        return []

    def cmd_deliver_one(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        out: list[str] = []
        src, dst = link(pos[0])
        if not self.net.deliver_one(src, dst, int(kw.get("nth", "0")), self.hook(out)):
            out.append(f"no message {src}->{dst}")
        return out

    def cmd_hold(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        held = self.net.hold(*link(pos[0]))
        return [f"held {fmt_message(m)}" for m in held] or ["none"]

    def cmd_release(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        back = self.net.release(*link(pos[0]))
        return [f"released {fmt_message(m)}" for m in back] or ["none"]

    def cmd_duplicate(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        copies = self.net.duplicate(*link(pos[0]))
        return [f"copied {fmt_message(m)}" for m in copies] or ["none"]

    def cmd_pending(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.process_all()
        return [fmt_message(m) for m in self.net.inbox] or ["none"]

    def cmd_drop(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        dropped = self.net.drop(*link(pos[0]))
        return [f"dropped {fmt_message(m)}" for m in dropped] or ["none"]

    def cmd_drop_one(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        dropped = self.net.drop(*link(pos[0]), limit=1)
        return [f"dropped {fmt_message(m)}" for m in dropped] or ["none"]

    def cmd_propose(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        return self.call(lambda: self.net.nodes[pos[0]].propose(pos[1].encode()))

    def cmd_conf_change(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        cc = ConfChange(CONF_OPS[pos[1]], pos[2])
        return self.call(lambda: self.net.nodes[pos[0]].propose_conf_change(cc))

    def cmd_read_index(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        return self.call(lambda: self.net.nodes[pos[0]].read_index(pos[1].encode()))

    def cmd_read_states(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.process_all()
        out = []
        for i in self.ids(pos):
            states, self.net.read_states[i] = self.net.read_states[i], []
            got = ", ".join(f"index={s.index} ctx={fmt_data(s.ctx)}" for s in states)
            out.append(f"{i}: {got or 'none'}")
        return out

    def cmd_transfer_leader(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        return self.call(lambda: self.net.nodes[pos[0]].transfer_leadership(pos[1]))

    def cmd_isolate(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.isolate(pos[0])
        return []

    def cmd_cut(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.cut_link(pos[0], pos[1])
        return []

    def cmd_heal(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.heal()
        return []

    def cmd_restart(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.process_all()  # crash just after the driver handled the last Ready
        self.net.restart(pos[0])
        self.forget_transitions()
        return [self.status_line(pos[0])]

    def cmd_snapshot_compact(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.process_all()
        snap = self.net.take_snapshot(pos[0], int(pos[1]))
        m = snap.meta
        return [
            f"{pos[0]}: snapshot={m.index}/{m.term} voters={fmt_ids(m.conf.voters)} "
            f"learners={fmt_ids(m.conf.learners)} bytes={len(snap.data)}"
        ]

    def cmd_status(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.process_all()
        return [self.status_line(i) for i in self.ids(pos)]

    def cmd_hard_state(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        """The hard state that would survive a crash now (the synced one)."""
        self.net.process_all()
        out = []
        for i in self.ids(pos):
            hs, _ = self.net.storages[i].crashed().initial_state()
            out.append(f"{i}: term={hs.term} vote={hs.vote or '-'} commit={hs.commit}")
        return out

    def cmd_log(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.process_all()
        out = []
        for i in self.ids(pos):
            log = self.net.nodes[i].log
            first = log.first_index()
            head = f"snapshot={first - 1}/{log.term(first - 1)} " if first > 1 else ""
            out.append(f"{i}: {head}{fmt_entries(list(self.net.log_of(i).values()))}")
        return out

    def cmd_applied(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.process_all()
        out = []
        for i in self.ids(pos):
            items = ", ".join(f"{k} {fmt_data(d)}" for k, d in self.net.state[i])
            out.append(f"{i}: applied={self.net.applied_index[i]} [{items}]")
        return out

    def cmd_progress(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.net.process_all()
        r = self.net.nodes[pos[0]]
        if r.role is not Role.LEADER:
            return [f"{pos[0]} is not the leader"]
        out = []
        learners = r.conf().learners
        for p, pr in sorted(r.progress.items()):
            if p == r.id:
                continue
            line = f"{p}: {pr.state.value} match={pr.match} next={pr.next}"
            if pr.state is ProgressState.REPLICATE:
                line += f" inflight={len(pr.inflights.items)}"
            if pr.transfer is not None:
                t = pr.transfer
                line += f" snap={t.snapshot.meta.index} sent={t.sent} acked={t.acked}"
            if pr.is_paused():
                line += " paused"
            if p in learners:
                line += " learner"
            out.append(line)
        return out


# ================================================================ files
@dataclass(slots=True)
class Mismatch:
    where: str
    diff: str


def run_file(
    path: Path, rewrite: bool = False, overrides: dict[str, object] | None = None
) -> list[Mismatch]:
    """Run one transcript; return its mismatches, or rewrite the file with the actual output."""
    text = path.read_text()
    blocks = parse(text, path.name)
    runner = Transcript(overrides)
    mismatches: list[Mismatch] = []
    actual: list[list[str]] = []
    for b in blocks:
        try:
            out = runner.run(b.command)
        except Exception as e:
            raise AssertionError(f"{path.name}:{b.line}: {b.command!r} failed: {e!r}") from e
        assert all(line.strip() for line in out), f"{path.name}:{b.line}: blank output line"
        actual.append(out)
        if out != b.expected:
            where = f"{path.name}:{b.line}: {b.command}"
            diff = "\n".join(
                difflib.unified_diff(b.expected, out, "expected", "actual", lineterm="")
            )
            mismatches.append(Mismatch(where, diff))
    if rewrite and mismatches:
        lines = text.split("\n")
        for b, out in reversed(list(zip(blocks, actual, strict=True))):
            lines[b.out_lo : b.out_hi] = out
        path.write_text("\n".join(lines))
    return mismatches


def xfail_reason(path: Path) -> str | None:
    first = path.read_text().split("\n", 1)[0]
    return first[len(XFAIL_PREFIX) :].strip() if first.startswith(XFAIL_PREFIX) else None


def scenario_files() -> list[Path]:
    return sorted(SCENARIOS.glob("*.txt"))
