"""The scheduler state's records and the indexes derived from them (no rules).

``StateTables`` holds the job and run records of the replicated state machine and
every index over them. ``node.state.SchedulerState`` adds the rules (``apply``) on
top; this half knows how records are stored, indexed, persisted and read.

Rules:
- Records change only through ``_put_job``/``_put_run``/``_drop_job``/``_drop_run``,
  which keep every index in step and remember the key for ``drain_changes``.
- Every index is a function of the records alone (``_index_job``/``_index_run``, the
  single place that defines them), so a state loaded from its records equals the live
  one; ``check_invariants`` proves it by rebuilding.
- Indexes are ``SortedList``s and dicts of them, walked in sorted order: no set is
  iterated where order could leak into a result (hash order differs between
  processes).
- Persisted form: table ``jobs`` (job id → ``node.records`` job record) and table
  ``runs`` (run id → run record). Keys are the UTF-8 ids. Nothing else is persisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

from node.model import ACTIVE_STATES, TERMINAL_STATES, Job, Run
from node.records import (
    DecodeError,
    array,
    as_int,
    decode_job,
    decode_run,
    encode_job,
    encode_run,
    pack,
    unpack,
)
from node.sortedlist import SortedList

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

T = TypeVar("T", bound="SupportsRichComparison")

TABLE_JOBS: Final = "jobs"  # job id → job record (node.records)
TABLE_RUNS: Final = "runs"  # run id → run record
TABLES: Final = (TABLE_JOBS, TABLE_RUNS)
IMAGE_FORMAT: Final = 1

Change = tuple[str, bytes, bytes | None]  # (table, key, value or None to delete)
Record = tuple[str, bytes, bytes]
QueueKey = tuple[int, int, str]  # (-priority, queued_at, run id): the order runs start in


def queue_key(run: Run) -> QueueKey:
    return (-run.priority, run.queued_at, run.id)


class StateTables:
    """Job and run records with their indexes; reads for the API and the planner."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._runs: dict[str, Run] = {}
        # Indexes: functions of the records above (see _index_job / _index_run).
        self._names: dict[tuple[str, str], str] = {}
        self._job_order: SortedList[tuple[str, str, str]] = SortedList()  # (ns, name, id)
        self._due: SortedList[tuple[int, str]] = SortedList()  # (next_fire_at, job id)
        self._dependents: dict[str, SortedList[str]] = {}  # job id → jobs depending on it
        self._run_order: SortedList[str] = SortedList()
        self._job_runs: dict[str, SortedList[str]] = {}
        self._active: dict[str, SortedList[str]] = {}  # job id → its queued/running run ids
        self._unassigned: SortedList[QueueKey] = SortedList()
        self._queued_on: dict[str, SortedList[QueueKey]] = {}
        # Queued runs per node (None: unplaced) and priority: what the metrics and the
        # dashboard show every second, kept as counts so neither walks the queues.
        self._depths: dict[str | None, dict[int, int]] = {}
        self._running_on: dict[str, SortedList[str]] = {}
        self._finished: dict[str, SortedList[tuple[int, str]]] = {}  # (finished_at, id)
        self._skipped: dict[str, SortedList[tuple[int, str]]] = {}
        self._task_finished: SortedList[tuple[int, str]] = SortedList()
        self._fires: dict[tuple[str, int], str] = {}
        self._keys: dict[str, str] = {}
        self._key_order: SortedList[tuple[int, str]] = SortedList()  # (queued_at, run id)
        # Keys written since the last drain_changes().
        self._dirty_jobs: set[str] = set()
        self._dirty_runs: set[str] = set()
        # Owners of runs that ended since the rules last looked (for retention).
        self._ended_jobs: set[str] = set()
        self._ended_tasks = False

    # ------------------------------------------------------------ records and indexes

    def _put_job(self, job: Job) -> None:
        old = self._jobs.get(job.id)
        if old is not None and (old.spec is job.spec or _job_identity(old) == _job_identity(job)):
            # The usual update (a fire moves the cursor): only the due index changes.
            if old.next_fire_at != job.next_fire_at:
                if old.next_fire_at is not None:
                    self._due.remove((old.next_fire_at, old.id))
                if job.next_fire_at is not None:
                    self._due.add((job.next_fire_at, job.id))
        else:
            if old is not None:
                self._index_job(old, add=False)
            self._index_job(job)
        self._jobs[job.id] = job
        self._dirty_jobs.add(job.id)

    def _put_run(self, run: Run) -> None:
        old = self._runs.get(run.id)
        if old is not None and _run_identity(old) == _run_identity(run):
            # The usual update (a state change): only the state indexes change.
            self._index_run_state(old, add=False)
            self._index_run_state(run)
        else:
            if old is not None:
                self._index_run(old, add=False)
            self._index_run(run)
        self._runs[run.id] = run
        self._dirty_runs.add(run.id)
        if run.state in TERMINAL_STATES:
            if run.job_id is None:
                self._ended_tasks = True
            else:
                self._ended_jobs.add(run.job_id)

    def _drop_run(self, run_id: str) -> None:
        self._index_run(self._runs.pop(run_id), add=False)
        self._dirty_runs.add(run_id)

    def _drop_job(self, job_id: str) -> None:
        self._index_job(self._jobs.pop(job_id), add=False)
        self._dirty_jobs.add(job_id)

    def _index_job(self, job: Job, add: bool = True) -> None:
        """Add ``job`` to (or remove it from) every job index."""
        name = (job.spec.namespace, job.spec.name)
        if add:
            assert name not in self._names, name
            self._names[name] = job.id
        else:
            del self._names[name]
        _toggle(self._job_order, (*name, job.id), add)
        for dep in job.spec.depends_on:
            _toggle_in(self._dependents, dep, job.id, add)
        if job.next_fire_at is not None:
            _toggle(self._due, (job.next_fire_at, job.id), add)

    def _index_run(self, run: Run, add: bool = True) -> None:
        """Add ``run`` to (or remove it from) every run index it belongs in."""
        _toggle(self._run_order, run.id, add)
        if run.job_id is not None:
            _toggle_in(self._job_runs, run.job_id, run.id, add)
        if run.kind == "scheduled" and run.attempt == 1:
            assert run.job_id is not None
            slot = (run.job_id, run.scheduled_at)
            if add:
                assert slot not in self._fires, ("two fire records", slot)
                self._fires[slot] = run.id
            else:
                del self._fires[slot]
        if run.submit_key is not None:
            if add:
                assert run.submit_key not in self._keys, run.submit_key
                self._keys[run.submit_key] = run.id
            else:
                del self._keys[run.submit_key]
            _toggle(self._key_order, (run.queued_at, run.id), add)
        self._index_run_state(run, add)

    def _index_run_state(self, run: Run, add: bool = True) -> None:
        """The indexes that follow a run's state, node and times (``_run_identity``
        fixes the others)."""
        job_id, node, state = run.job_id, run.node, run.state
        if job_id is not None and state in ACTIVE_STATES:
            _toggle_in(self._active, job_id, run.id, add)
        if state == "queued":
            if node is None:
                _toggle(self._unassigned, queue_key(run), add)
            else:
                _toggle_in(self._queued_on, node, queue_key(run), add)
            _count_in(self._depths, node, run.priority, 1 if add else -1)
        elif state == "running":
            assert node is not None
            _toggle_in(self._running_on, node, run.id, add)
        elif run.finished_at is not None:
            ended = (run.finished_at, run.id)
            if job_id is None:
                _toggle(self._task_finished, ended, add)
            else:
                _toggle_in(
                    self._skipped if state == "skipped" else self._finished, job_id, ended, add
                )

    # ------------------------------------------------------------ persistence

    def drain_changes(self) -> list[Change]:
        """Records written or deleted since the last drain, in (table, key) order: what
        the store must write in the transaction that records the applied index."""
        changes: list[Change] = []
        for job_id in sorted(self._dirty_jobs):
            job = self._jobs.get(job_id)
            changes.append((TABLE_JOBS, job_id.encode(), None if job is None else encode_job(job)))
        for run_id in sorted(self._dirty_runs):
            run = self._runs.get(run_id)
            changes.append((TABLE_RUNS, run_id.encode(), None if run is None else encode_run(run)))
        self._dirty_jobs.clear()
        self._dirty_runs.clear()
        return changes

    def records(self) -> Iterator[Record]:
        """Every record, in (table, key) order: the whole persisted state."""
        for job_id in sorted(self._jobs):
            yield TABLE_JOBS, job_id.encode(), encode_job(self._jobs[job_id])
        for run_id in self._run_order:
            yield TABLE_RUNS, run_id.encode(), encode_run(self._runs[run_id])

    def _load_records(self, records: Iterable[Record]) -> None:
        """Fill an empty state from persisted records (any order). Raises
        ``DecodeError`` for a record that does not decode or does not match its key."""
        assert not self._jobs and not self._runs, "load into an empty state only"
        for table, key, value in records:
            if table == TABLE_JOBS:
                job = decode_job(value)
                if job.id.encode() != key or job.id in self._jobs:
                    raise DecodeError(f"job record {key!r:.40} holds job {job.id}")
                self._jobs[job.id] = job
                self._index_job(job)
            elif table == TABLE_RUNS:
                run = decode_run(value)
                if run.id.encode() != key or run.id in self._runs:
                    raise DecodeError(f"run record {key!r:.40} holds run {run.id}")
                self._runs[run.id] = run
                self._index_run(run)
            else:
                raise DecodeError(f"unknown table {table!r:.40}")
        orphans = sorted(
            r.id for r in self._runs.values() if r.job_id and r.job_id not in self._jobs
        )
        if orphans:
            raise DecodeError(f"runs of missing jobs: {', '.join(orphans[:5])}")

    def to_image(self) -> bytes:
        """The whole state as one msgpack value (for the in-memory store and tests;
        the LMDB store builds its snapshot image from the persisted tables)."""
        return pack([IMAGE_FORMAT, [[t, k, v] for t, k, v in self.records()]])

    def check_invariants(self) -> None:
        """Assert that every index is exactly what the records imply (tests and
        simulations call this; it costs a full rebuild)."""
        again = StateTables()
        again._load_records(self.records())
        for name in _INDEXES:
            assert getattr(self, name) == getattr(again, name), f"index {name} out of step"
        for job_id, run_ids in self._active.items():
            assert job_id in self._jobs and all(self._runs[r].active for r in run_ids)

    # ------------------------------------------------------------ reads

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def run(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    def job_named(self, namespace: str, name: str) -> Job | None:
        job_id = self._names.get((namespace, name))
        return None if job_id is None else self._jobs[job_id]

    @property
    def job_count(self) -> int:
        return len(self._jobs)

    @property
    def run_count(self) -> int:
        return len(self._runs)

    def jobs_from(self, namespace: str, name: str) -> Iterator[Job]:
        """Jobs in (namespace, name) order, from the first at or after the given pair."""
        for _, _, job_id in self._job_order.from_((namespace, name, "")):
            yield self._jobs[job_id]

    def next_due_ms(self) -> int | None:
        """The earliest time a job's next slot is due (None: no job is scheduled)."""
        return self._due[0][0] if self._due else None

    def due_jobs(self, until_ms: int) -> Iterator[Job]:
        """Jobs whose next slot is due at or before ``until_ms``, earliest first."""
        for due, job_id in self._due:
            if due > until_ms:
                return
            yield self._jobs[job_id]

    def run_ids_newest_first(self, before: str | None = None) -> Iterator[str]:
        """All run ids, newest first, starting below ``before``."""
        return reversed(self._run_order) if before is None else self._run_order.below(before)

    def job_run_ids(self, job_id: str) -> Sequence[str]:
        """Run ids of a job, oldest first."""
        return self._job_runs.get(job_id, ())

    def latest_run(self, job_id: str) -> Run | None:
        """The newest run of a job that is not a skipped record."""
        for run_id in reversed(self._job_runs.get(job_id, ())):
            run = self._runs[run_id]
            if run.state != "skipped":
                return run
        return None

    def active_runs(self, job_id: str) -> list[Run]:
        return [self._runs[r] for r in self._active.get(job_id, ())]

    def unassigned(self) -> Iterator[Run]:
        """Queued runs on no node, in start order (priority 9 first, then oldest)."""
        for _, _, run_id in self._unassigned:
            yield self._runs[run_id]

    def queued_on(self, node: str) -> Iterator[Run]:
        """Runs queued on ``node``, in the order it should start them."""
        for _, _, run_id in self._queued_on.get(node, ()):
            yield self._runs[run_id]

    def queue_depths(self) -> dict[str | None, dict[int, int]]:
        """Queued runs per node (None: not yet placed) and priority (a copy)."""
        return {node: dict(counts) for node, counts in self._depths.items()}

    def queued_count(self, node: str | None) -> int:
        return len(self._unassigned if node is None else self._queued_on.get(node, ()))

    def running_on(self, node: str) -> Iterator[Run]:
        for run_id in self._running_on.get(node, ()):
            yield self._runs[run_id]

    def running_count(self, node: str) -> int:
        return len(self._running_on.get(node, ()))

    def running_total(self) -> int:
        """How many runs are running, on all nodes."""
        return sum(len(ids) for ids in self._running_on.values())

    def running(self) -> Iterator[Run]:
        """Every running run, by node then id."""
        for node in sorted(self._running_on):
            yield from self.running_on(node)

    def busy_nodes(self) -> list[str]:
        """Nodes with queued or running runs."""
        return sorted(self._queued_on.keys() | self._running_on.keys())

    def fired_run(self, job_id: str, slot_ms: int) -> str | None:
        """The run that records slot ``slot_ms`` of a job (fired or skipped), while kept."""
        return self._fires.get((job_id, slot_ms))

    def run_for_key(self, idempotency_key: str) -> str | None:
        """The task run an Idempotency-Key maps to, while the key is retained."""
        return self._keys.get(idempotency_key)


_INDEXES: Final = (
    "_names",
    "_job_order",
    "_due",
    "_dependents",
    "_run_order",
    "_job_runs",
    "_active",
    "_unassigned",
    "_queued_on",
    "_depths",
    "_running_on",
    "_finished",
    "_skipped",
    "_task_finished",
    "_fires",
    "_keys",
    "_key_order",
)


def _job_identity(job: Job) -> tuple[object, ...]:
    """What the job indexes other than the due index are built from."""
    return (job.spec.namespace, job.spec.name, job.spec.depends_on)


def _run_identity(run: Run) -> tuple[object, ...]:
    """What the run indexes other than the state indexes are built from."""
    return (run.job_id, run.kind, run.attempt, run.scheduled_at, run.submit_key, run.queued_at)


def _toggle(items: SortedList[T], item: T, add: bool) -> None:
    """Insert ``item`` into (or remove it from) ``items``."""
    if add:
        items.add(item)
    else:
        items.remove(item)


def _toggle_in(index: dict[str, SortedList[T]], key: str, item: T, add: bool) -> None:
    """``_toggle`` in ``index[key]``; empty entries are removed, so a live state's
    indexes equal those of the same records loaded afresh."""
    items = index.get(key)
    if items is None:
        items = index[key] = SortedList()
    _toggle(items, item, add)
    if not items:
        del index[key]


def _count_in(counts: dict[str | None, dict[int, int]], key: str | None, sub: int, by: int) -> None:
    """Add ``by`` to ``counts[key][sub]``; zero counts and empty maps are removed, as
    in ``_toggle_in``."""
    inner = counts.get(key)
    if inner is None:
        inner = counts[key] = {}
    n = inner.get(sub, 0) + by
    assert n >= 0, (key, sub, n)
    if n:
        inner[sub] = n
    else:
        del inner[sub]
        if not inner:
            del counts[key]


def image_records(data: bytes) -> list[Record]:
    """The records in a ``to_image`` value; ``DecodeError`` if it is not one."""
    version, items = array(unpack(data), 2, "image")
    if as_int(version, "image format") != IMAGE_FORMAT or not isinstance(items, list):
        raise DecodeError(f"not a state image of format {IMAGE_FORMAT}")
    records: list[Record] = []
    for item in items:
        table, key, value = array(item, 3, "image record")
        if not isinstance(table, str) or not isinstance(key, bytes) or not isinstance(value, bytes):
            raise DecodeError("image record: expected [table, key bytes, value bytes]")
        records.append((table, key, value))
    return records
