"""Scheduler checks from the side effects jobs write themselves, and from run records.

Each shell run of a chaos scenario appends one line when it starts (``start_command``)::

    start <ROTA_IDEMPOTENCY_KEY> <ROTA_RUN_ID> <ROTA_FENCING_TOKEN> <agent pid> <tag>

The idempotency key is ``job_id:scheduled_at_ms:attempt`` (``task`` for ad-hoc runs,
whose tag names the submitted task). Appends of one short line with ``O_APPEND``
are atomic, so lines from several nodes never interleave.

The checks, each returning human-readable violations (empty: passed):

- ``duplicate_starts``: at most one execution start per (job, slot, attempt) — per
  (task tag, attempt) for ad-hoc runs. Execution is at-least-once: a retry is a new
  attempt and is fine; the *same* attempt starting twice means fencing failed.
- ``unexecuted_tasks``: every task the API acknowledged (``ok``) started at least once.
- ``refused_tasks_ran``: a task whose submission certainly failed never starts.
- ``missed_slots``: every slot of an enabled every_s job, from its first slot up to
  the slot its final ``next_fire_at`` names, either ran or shows up as a run record
  (queued, failed, skipped, ...): a misfire skip record covers the ``N`` slots it says
  it skipped ("N slot(s) through this one skipped"), an overlap skip its own slot.
- ``stuck_runs``: no run is still ``running`` once the cluster has healed and every
  run had time to finish or time out.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

SKIP_COUNT_RE = re.compile(r"(\d+) slot\(s\) through this one skipped")


def instant_ms(text: str) -> int:
    """An RFC 3339 instant as the API writes it (``node.schedule.format_ms``), in ms."""
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def start_command(path: str, tag: str = "-", sleep_s: float = 0.0) -> list[str]:
    """The shell command that appends the start line (``$PPID`` is the agent), then
    sleeps ``sleep_s`` (so faults find runs in flight)."""
    line = "start $ROTA_IDEMPOTENCY_KEY $ROTA_RUN_ID $ROTA_FENCING_TOKEN $PPID " + tag
    script = f'echo "{line}" >> {shlex.quote(path)}'
    return ["/bin/sh", "-c", script + (f"; sleep {sleep_s:.2f}" if sleep_s > 0 else "")]


@dataclass(frozen=True, slots=True)
class Start:
    """One execution start, parsed from a side-effect line."""

    job_id: str
    slot_ms: int
    attempt: int
    run_id: str
    token: int
    pid: int
    tag: str

    @property
    def identity(self) -> tuple[str, int, int]:
        """What must be unique: (job, slot, attempt), or (task tag, 0, attempt)."""
        if self.job_id == "task":
            return (self.tag, 0, self.attempt)
        return (self.job_id, self.slot_ms, self.attempt)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The fields of a run record (``GET /runs``) the checks need."""

    id: str
    job_id: str | None
    slot_ms: int
    attempt: int
    state: str
    node: str | None
    error: str | None

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> RunRecord:
        slot = doc["scheduled_at"]
        assert isinstance(slot, str)
        job_id, node, error = doc.get("job_id"), doc.get("node"), doc.get("error")
        attempt = doc["attempt"]
        assert isinstance(attempt, int)
        return cls(
            str(doc["id"]),
            job_id if isinstance(job_id, str) else None,
            instant_ms(slot),
            attempt,
            str(doc["state"]),
            node if isinstance(node, str) else None,
            error if isinstance(error, str) else None,
        )


@dataclass(frozen=True, slots=True)
class JobWatch:
    """What the runner knows of one every_s job: slots in [first, end) must be accounted."""

    job_id: str
    period_ms: int
    first_slot_ms: int
    end_slot_ms: int


def parse_starts(text: str) -> tuple[list[Start], list[str]]:
    """The start lines of ``text``, and the lines that are not well formed."""
    starts: list[Start] = []
    bad: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        try:
            assert len(parts) == 6 and parts[0] == "start"
            job_id, slot, attempt = parts[1].rsplit(":", 2)
            starts.append(
                Start(
                    job_id,
                    int(slot),
                    int(attempt),
                    parts[2],
                    int(parts[3]),
                    int(parts[4]),
                    parts[5],
                )
            )
        except (AssertionError, ValueError):
            bad.append(line)
    return starts, bad


def duplicate_starts(starts: Iterable[Start], pid_nodes: Mapping[int, str]) -> list[str]:
    by_identity: dict[tuple[str, int, int], list[Start]] = defaultdict(list)
    for s in starts:
        by_identity[s.identity].append(s)
    out = []
    for identity, group in sorted(by_identity.items()):
        if len(group) > 1:
            where = ", ".join(
                f"run {s.run_id} token {s.token} on {pid_nodes.get(s.pid, f'pid {s.pid}')}"
                for s in group
            )
            out.append(f"{identity} started {len(group)} times: {where}")
    return out


def unexecuted_tasks(acked: Mapping[str, str], starts: Iterable[Start]) -> list[str]:
    """``acked``: task tag -> run id the API acknowledged."""
    ran = {s.tag for s in starts if s.job_id == "task"}
    return [
        f"task {tag} (run {run_id}) was acknowledged but never started"
        for tag, run_id in sorted(acked.items())
        if tag not in ran
    ]


def refused_tasks_ran(refused: Iterable[str], starts: Iterable[Start]) -> list[str]:
    """``refused``: tags of tasks whose every submission failed for certain (a 4xx or a
    refused connection), so the API promised that nothing changed."""
    ran = {s.tag for s in starts if s.job_id == "task"}
    return [f"task {tag} was refused but started anyway" for tag in sorted(set(refused) & ran)]


def missed_slots(
    watch: JobWatch, starts: Iterable[Start], records: Iterable[RunRecord]
) -> list[str]:
    accounted: set[int] = {s.slot_ms for s in starts if s.job_id == watch.job_id}
    for r in records:
        if r.job_id != watch.job_id:
            continue
        accounted.add(r.slot_ms)
        m = SKIP_COUNT_RE.search(r.error or "") if r.state == "skipped" else None
        if m is not None:
            accounted.update(r.slot_ms - k * watch.period_ms for k in range(int(m.group(1))))
    missing = [
        slot
        for slot in range(watch.first_slot_ms, watch.end_slot_ms, watch.period_ms)
        if slot not in accounted
    ]
    if not missing:
        return []
    shown = ", ".join(str(s) for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
    return [f"job {watch.job_id}: {len(missing)} slot(s) silently missed: {shown}"]


def stuck_runs(records: Iterable[RunRecord]) -> list[str]:
    return [
        f"run {r.id} ({r.job_id or 'task'}, attempt {r.attempt}) still running on {r.node} "
        "after the cluster healed"
        for r in records
        if r.state == "running"
    ]


def start_counts(starts: Iterable[Start]) -> Counter[str]:
    return Counter("task" if s.job_id == "task" else "job" for s in starts)
