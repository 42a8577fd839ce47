"""The leader's (and an idle worker's) scheduling decisions: pure functions that read
the replicated state and return commands to propose.

Theory: nothing here changes state or decides anything final. The state machine
re-checks every command when it applies (a stale plan is ignored or rejected), so a
plan may be computed from a replica that lags, proposed twice, or raced by another
plan without harm. What the planner owns is judgement: which slots to fire or skip,
where to place runs, when to time out, what to steal.

Rules:
- Inputs are the state (read-only), ``now_ms`` (the leader's clock; the commands
  carry it) and the nodes' gossiped load. Queue depths come from the replicated state,
  which is exact; gossip's queue depth lags behind it and is not used.
- Everything is bounded: at most ``batch_max`` items (and jobs) per decision, at most
  ``SLOT_SCAN_MAX`` slots of one job examined per round, at most ``scan_max`` queued
  runs examined per placement round.
- Deterministic: same state and inputs, same commands (ties broken by id).

Misfire policy (``due_fires``): a due slot is *late* when ``now`` is more than the
job's ``misfire_window_s`` after its due time (slot plus jitter). Slots that are not
late fire. Of the late ones, ``skip`` fires none, ``run_once`` the latest, ``run_all``
the latest ``misfire_cap``; the others are skipped by one ``SkipSlots`` that comes
before the ``Fire`` (the state machine takes a job's slots strictly in order).

Placement (``placements``): a node has room for its free slots plus ``queue_max``
runs queued ahead of them, minus what is queued on it already; a queue ahead lets a
slot that frees start the next run without waiting for the leader.

Stealing (``steal_choice``): a node's *backlog* is what is queued on it beyond its
free slots (a node gossip does not hold alive has no free slots: its whole queue is
backlog). An idle node (free slots, nothing queued on it) picks the node with the
largest backlog beyond ``threshold`` and takes half of it (rounded up), at most
``batch_max`` and its own free slots, from the *end* of the victim's queue — the runs
the victim would start last, so the steal rarely races the victim's own Start.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from node.commands import Assign, Command, Fire, NodeGone, SkipSlots, Steal, TimeoutRun
from node.model import MISFIRE_CAP_MAX, Job, Run, deadline_ms, empty_map
from node.schedule import jitter_ms, slots_between
from node.statetables import StateTables

SLOT_SCAN_MAX: Final = 2 * MISFIRE_CAP_MAX + 48
assert SLOT_SCAN_MAX > MISFIRE_CAP_MAX, "a round must be able to skip past the largest cap"
PLACEMENT_SCAN_MAX: Final = 4096
TIMEOUT_GRACE_MS_DEFAULT: Final = 30_000


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """A live node as gossip describes it."""

    node: str
    free_slots: int
    tags: Mapping[str, str] = field(default_factory=empty_map)


def node_tags(gossiped: Sequence[str]) -> dict[str, str]:
    """Tags as gossip carries them (``"key=value"`` strings) as a map."""
    tags: dict[str, str] = {}
    for tag in gossiped:
        key, _, value = tag.partition("=")
        tags[key] = value
    return tags


def tags_match(wanted: Mapping[str, str], offered: Mapping[str, str]) -> bool:
    """A run may go to a node that has every tag the run asks for, with its value."""
    return all(offered.get(key) == value for key, value in wanted.items())


# ---------------------------------------------------------------- firing


def due_fires(
    state: StateTables, now_ms: int, batch_max: int, batches_max: int = 1
) -> list[Command]:
    """``SkipSlots`` for late slots the misfire policies drop, then up to
    ``batches_max`` ``Fire`` commands of at most ``batch_max`` (job, slot) items each,
    oldest slot first across jobs (a job with a backlog does not starve the others).
    Looks at most ``batch_max * batches_max`` jobs."""
    assert batch_max >= 1 and batches_max >= 1, (batch_max, batches_max)
    items_max = batch_max * batches_max
    skips: list[Command] = []
    slots: list[list[tuple[int, str]]] = []
    for job in state.due_jobs(now_ms):
        if len(slots) >= items_max:
            break
        skip, fire = _plan_job(job, now_ms)
        if skip is not None:
            skips.append(skip)
        slots.append([(slot, job.id) for slot in fire])
    if sum(map(len, slots)) <= 4 * items_max:  # the usual case: one slot per job
        merged: Iterable[tuple[int, str]] = sorted(itertools.chain.from_iterable(slots))
    else:  # a backlog: take the oldest lazily
        merged = heapq.merge(*slots)  # each job's slots stay in order
    items = [(job_id, slot) for slot, job_id in itertools.islice(merged, items_max)]
    fires = [Fire(tuple(items[i : i + batch_max]), now_ms) for i in range(0, len(items), batch_max)]
    return skips + fires


def _plan_job(job: Job, now_ms: int) -> tuple[SkipSlots | None, list[int]]:
    """One job's due slots: which to skip (one command) and which to fire, in order."""
    schedule, misfire = job.spec.schedule, job.spec.misfire
    seen = slots_between(schedule, job.last_slot_ms, now_ms, SLOT_SCAN_MAX)
    due: list[int] = []
    for slot in seen:
        if slot + jitter_ms(schedule, job.id, slot) > now_ms:
            break  # not due yet: neither are the later ones this round
        due.append(slot)
    window_ms = misfire.window_s * 1000
    late = 0
    while (
        late < len(due)
        and now_ms - (due[late] + jitter_ms(schedule, job.id, due[late])) > window_ms
    ):
        late += 1
    keep = {"skip": 0, "run_once": 1, "run_all": misfire.cap}[misfire.policy]
    tail_unseen = len(seen) == SLOT_SCAN_MAX and late == len(due) == len(seen)
    if tail_unseen:
        # More late slots may lie beyond the scan; the ones to run are among the last,
        # so skip only what cannot be (the next round sees further).
        count = late - keep
        return _skip(job, due[count - 1], count, now_ms), []
    count = max(0, late - keep)
    skip = _skip(job, due[count - 1], count, now_ms) if count else None
    return skip, due[count:]


def _skip(job: Job, through_ms: int, count: int, now_ms: int) -> SkipSlots:
    return SkipSlots(job.id, through_ms, count, job.spec.misfire.policy, now_ms)


# ---------------------------------------------------------------- placement


def placements(
    state: StateTables,
    nodes: Sequence[NodeLoad],
    now_ms: int,
    batch_max: int,
    scan_max: int = PLACEMENT_SCAN_MAX,
    queue_max: int = 0,
) -> list[Assign]:
    """Place unassigned queued runs on live nodes: priority 9 first, then oldest;
    only runs past ``not_before`` whose job's dependencies are not running; only on
    nodes with every tag the run asks for and room (a free slot, or one of
    ``queue_max`` places queued ahead, not already taken). Each run goes to the matching node with the most room left
    (ties: node id), which spreads load. At most ``batch_max`` runs in all."""
    room = {n.node: n.free_slots + queue_max - state.queued_count(n.node) for n in nodes}
    candidates = sorted(nodes, key=lambda n: n.node)
    chosen: dict[str, list[str]] = {}
    placed = 0
    for scanned, run in enumerate(state.unassigned()):
        if placed >= batch_max or scanned >= scan_max or max(room.values(), default=0) <= 0:
            break
        if (run.not_before is not None and run.not_before > now_ms) or _held(state, run):
            continue
        fits = [n.node for n in candidates if room[n.node] > 0 and tags_match(run.tags, n.tags)]
        if not fits:
            continue  # nowhere to go now; a lower-priority run may still fit elsewhere
        best = max(fits, key=room.__getitem__)  # the first (smallest id) among equals
        room[best] -= 1
        chosen.setdefault(best, []).append(run.id)
        placed += 1
    return [Assign(tuple(ids), node, now_ms) for node, ids in sorted(chosen.items())]


def _held(state: StateTables, run: Run) -> bool:
    """A job's run waits while any job it depends on has a run queued or running."""
    job = None if run.job_id is None else state.job(run.job_id)
    return job is not None and any(state.active_runs(dep) for dep in job.spec.depends_on)


# ---------------------------------------------------------------- backstops


def timeouts(
    state: StateTables,
    now_ms: int,
    grace_ms: int,
    batch_max: int,
    seen_ms: Mapping[str, int] | None = None,
) -> list[TimeoutRun]:
    """Running runs past their deadline plus ``grace_ms`` (the worker should have
    reported ``timed_out`` itself; this covers a worker that cannot). A run's start
    was stamped by its worker's clock; ``seen_ms`` holds this node's own clock when
    it applied the run's ``Start``, and the later of the two counts, so a worker's
    clock that is behind cannot make the leader time a run out early."""
    seen = seen_ms or {}
    out: list[TimeoutRun] = []
    for run in state.running():
        deadline = deadline_ms(run)
        assert deadline is not None and run.started_at is not None
        deadline += max(0, seen.get(run.id, run.started_at) - run.started_at)
        if deadline + grace_ms <= now_ms:
            out.append(TimeoutRun(run.id, run.token, now_ms))
            if len(out) >= batch_max:
                break
    return out


def lost_nodes(state: StateTables, gone: Collection[str], now_ms: int) -> list[NodeGone]:
    """``NodeGone`` for each node that gossip and Raft agree is gone and still holds
    queued or running runs."""
    return [NodeGone(node, now_ms) for node in state.busy_nodes() if node in gone]


# ---------------------------------------------------------------- stealing


def steal_choice(
    my_node: str,
    nodes: Sequence[NodeLoad],
    state: StateTables,
    threshold: int,
    batch_max: int,
    now_ms: int,
) -> Steal | None:
    """What an idle ``my_node`` should steal, if anything (see the module header).
    ``nodes`` are the live nodes with their free slots; ``my_node`` must be one."""
    me = next((n for n in nodes if n.node == my_node), None)
    if me is None or me.free_slots <= 0 or state.queued_count(my_node) > 0:
        return None
    free = {n.node: n.free_slots for n in nodes}
    backlogs = [
        (state.queued_count(n) - free.get(n, 0), n) for n in state.busy_nodes() if n != my_node
    ]
    deepest = max(backlogs, key=lambda b: b[0], default=None)  # smallest id among equals
    if deepest is None or deepest[0] <= threshold:
        return None
    backlog, victim = deepest
    want = min(batch_max, me.free_slots, (backlog + 1) // 2)
    if want <= 0:
        return None
    queue = list(state.queued_on(victim))
    taken = [r.id for r in reversed(queue) if tags_match(r.tags, me.tags)][:want]
    return Steal(tuple(taken), victim, my_node, now_ms) if taken else None


__all__ = [
    "PLACEMENT_SCAN_MAX",
    "SLOT_SCAN_MAX",
    "TIMEOUT_GRACE_MS_DEFAULT",
    "NodeLoad",
    "due_fires",
    "lost_nodes",
    "node_tags",
    "placements",
    "steal_choice",
    "tags_match",
    "timeouts",
]
