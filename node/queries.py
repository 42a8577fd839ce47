"""Read queries for the API: pure functions on a ``SchedulerState``.

Rules:
- Pagination is by cursor with a page size of at most ``PAGE_SIZE_MAX``. A cursor is
  opaque to clients: for jobs ``namespace/name`` of the last job returned, for runs
  the id of the last run looked at. A malformed cursor or filter is a
  ``ValidationError`` naming the parameter.
- Runs are listed newest first. A filtered listing looks at no more than
  ``RUN_SCAN_MAX`` runs per page; when it stops early it returns what it found and a
  cursor to continue, so no request costs more than a bounded scan.
- Nothing here changes the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from node.checks import check_int, check_str
from node.model import (
    NAME_CHARS_MAX,
    NAME_RE,
    NAMESPACE_RE,
    RUN_STATES,
    Job,
    Run,
    ValidationError,
    is_job_id,
    is_run_id,
)
from node.schedule import PREVIEW_COUNT_MAX, preview
from node.statetables import StateTables
from web.port import is_node_id

PAGE_SIZE_DEFAULT: Final = 50
PAGE_SIZE_MAX: Final = 500
RUN_SCAN_MAX: Final = 10_000  # runs examined for one filtered page
JOB_SCAN_MAX: Final = 10_000  # jobs examined for one page filtered by name alone

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; ``next_cursor`` is None on the last page."""

    items: tuple[T, ...]
    next_cursor: str | None


def _limit(limit: object) -> int:
    return check_int(limit, "limit", 1, PAGE_SIZE_MAX)


def _job_cursor(cursor: str) -> tuple[str, str]:
    namespace, sep, name = cursor.partition("/")
    if not sep or not NAMESPACE_RE.fullmatch(namespace) or not NAME_RE.fullmatch(name):
        raise ValidationError("cursor", "not a cursor of this listing")
    return namespace, name


def list_jobs(
    state: StateTables,
    *,
    namespace: str | None = None,
    name_prefix: str = "",
    cursor: str | None = None,
    limit: int = PAGE_SIZE_DEFAULT,
) -> Page[Job]:
    """Jobs by (namespace, name), optionally in one namespace and by name prefix.

    Within a namespace the matching names are one contiguous range of the order;
    across namespaces a prefix filter scans at most ``JOB_SCAN_MAX`` jobs per page."""
    limit = _limit(limit)
    if namespace is not None:
        check_str(namespace, "namespace", NAME_CHARS_MAX, NAMESPACE_RE)
    check_str(name_prefix, "name_prefix", NAME_CHARS_MAX, empty_ok=True)
    start = (namespace, name_prefix) if namespace is not None else ("", "")
    if cursor is not None:
        ns, name = _job_cursor(cursor)
        start = max(start, (ns, name + "\x00"))  # just after the cursor's job
    items: list[Job] = []
    for scanned, job in enumerate(state.jobs_from(*start), 1):
        spec = job.spec
        if namespace is not None and spec.namespace != namespace:
            break
        if spec.name.startswith(name_prefix):
            items.append(job)
            if len(items) == limit:
                return Page(tuple(items), _cursor_of(job))
        elif namespace is not None:
            break  # past the prefix's range
        if scanned >= JOB_SCAN_MAX:
            return Page(tuple(items), _cursor_of(job))
    return Page(tuple(items), None)


def _cursor_of(job: Job) -> str:
    return f"{job.spec.namespace}/{job.spec.name}"


def list_runs(
    state: StateTables,
    *,
    run_state: str | None = None,
    job_id: str | None = None,
    node: str | None = None,
    cursor: str | None = None,
    limit: int = PAGE_SIZE_DEFAULT,
) -> Page[Run]:
    """Runs newest first, filtered by state, job and node (``GET /runs``)."""
    limit = _limit(limit)
    if run_state is not None and run_state not in RUN_STATES:
        raise ValidationError("state", f"must be one of {sorted(RUN_STATES)}")
    if job_id is not None and not is_job_id(job_id):
        raise ValidationError("job_id", f"not a job id: {job_id!r:.40}")
    if node is not None and not is_node_id(node):
        raise ValidationError("node", f"not a node id: {node!r:.40}")
    if cursor is not None and not is_run_id(cursor):
        raise ValidationError("cursor", "not a cursor of this listing")
    items: list[Run] = []
    last: str | None = None
    for scanned, run_id in enumerate(_run_ids(state, run_state, job_id, node, cursor)):
        if scanned >= RUN_SCAN_MAX:
            return Page(tuple(items), last)
        last = run_id
        run = state.run(run_id)
        assert run is not None
        if (run_state is None or run.state == run_state) and (node is None or run.node == node):
            items.append(run)
            if len(items) == limit:
                return Page(tuple(items), run_id)
    return Page(tuple(items), None)


def _run_ids(
    state: StateTables,
    run_state: str | None,
    job_id: str | None,
    node: str | None,
    before: str | None,
) -> Iterator[str]:
    """Candidate run ids, newest first, below ``before``, from the narrowest index."""
    ids: Iterable[str]
    if job_id is not None:
        ids = reversed(state.job_run_ids(job_id))
    elif node is not None and run_state in ("queued", "running"):
        runs = state.queued_on(node) if run_state == "queued" else state.running_on(node)
        ids = sorted((r.id for r in runs), reverse=True)
    else:
        return state.run_ids_newest_first(before)
    return (i for i in ids if before is None or i < before)


def job_runs(
    state: StateTables, job_id: str, *, cursor: str | None = None, limit: int = PAGE_SIZE_DEFAULT
) -> Page[Run] | None:
    """``GET /jobs/{id}/runs``: None when there is no such job."""
    if state.job(job_id) is None:
        return None
    return list_runs(state, job_id=job_id, cursor=cursor, limit=limit)


def next_fire_times(job: Job, count: int) -> list[int]:
    """``GET /jobs/{id}/next?count=N``: the job's next slots (none while paused)."""
    count = check_int(count, "count", 1, PREVIEW_COUNT_MAX)
    if job.spec.paused:
        return []
    return preview(job.spec.schedule, job.last_slot_ms, count)


def running_counts(state: StateTables) -> dict[str, int]:
    """Running runs per node."""
    counts = {node: state.running_count(node) for node in state.busy_nodes()}
    return {node: n for node, n in counts.items() if n}


__all__ = [
    "PAGE_SIZE_DEFAULT",
    "PAGE_SIZE_MAX",
    "RUN_SCAN_MAX",
    "Page",
    "job_runs",
    "list_jobs",
    "list_runs",
    "next_fire_times",
    "running_counts",
]
