"""Jobs, tasks and runs as the web layer sees them: ``web.port.SchedulerPort`` on the
replicated scheduler state.

Rules:
- Input is validated completely (``node.modeljson``) before anything is proposed; a
  ``ValidationError`` becomes ``Invalid(field)`` and nothing changes.
- Writes go through ``NodeService.propose`` (forwarded to the leader from any node);
  an outcome that may or may not have committed is ``Unavailable``, never a failure.
- Reads are linearizable by default (a ReadIndex barrier, then the local state);
  ``stale=True`` serves the local copy at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import trio

from consensus.raft import NotLeader
from node.checks import ValidationError
from node.commands import (
    CancelRun,
    Command,
    CommandTooLarge,
    CreateJob,
    DeleteJob,
    Ok,
    Rejected,
    SetPaused,
    SubmitTasks,
    TriggerJob,
    UpdateJob,
    decode_result,
    encode_command,
)
from node.driver import Committed, NotCommitted, Outcome
from node.memo import Memo
from node.model import TaskSpec
from node.modeljson import (
    idempotency_key_from_header,
    job_spec_from_json,
    job_spec_from_patch,
    job_to_json,
    run_to_json,
    schedule_from_json,
    task_spec_from_json,
)
from node.output import RunOutputs
from node.queries import job_runs, list_jobs, list_runs, next_fire_times
from node.schedule import format_ms, preview
from node.scheduler import SchedulerStateMachine, now_ms
from node.state import start_cursor
from web.port import Conflict, Invalid, NotFound, OutputChunk, PortError, Unavailable

READ_TIMEOUT_S = 5.0
PROPOSE_TIMEOUT_S = 10.0
NEXT_COUNT_MAX = 100
NEXT_COUNT_DEFAULT = 5
TASKS_PER_BATCH_MAX = 1000


class JobsService:
    def __init__(
        self,
        sm: SchedulerStateMachine,
        propose: Callable[[bytes, float], Awaitable[Outcome]],
        read_barrier: Callable[[float], Awaitable[int]],
        handlers: Collection[str] = (),
        outputs: RunOutputs | None = None,
    ) -> None:
        self.sm = sm
        self._propose = propose
        self._read_barrier = read_barrier
        self.handlers = frozenset(handlers)
        self._outputs = outputs
        # Task bodies already validated, by their JSON value (``node.memo``): a batch
        # usually repeats a few task shapes; ``handlers`` is fixed, so it is the same
        # answer every time.
        self._task_specs: Memo[TaskSpec] = Memo()

    # ---------------------------------------------------------------- helpers
    async def _read(self, stale: bool) -> None:
        if stale:
            return
        try:
            await self._read_barrier(READ_TIMEOUT_S)
        except (NotLeader, trio.TooSlowError) as e:
            raise Unavailable(
                "no leader confirmed a linearizable read; retry or use consistency=stale"
            ) from e

    async def _write(self, cmd: Command) -> Ok:
        outcome = await self._propose(encode_command(cmd), PROPOSE_TIMEOUT_S)
        if isinstance(outcome, NotCommitted):
            raise Unavailable(f"not applied: {outcome.reason}")
        if not isinstance(outcome, Committed):
            raise Unavailable(f"the outcome is unknown ({outcome.reason}); it may have applied")
        result = decode_result(outcome.result)
        if isinstance(result, Rejected):
            raise _rejection(result)
        return result

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.sm.state.job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job_to_json(job)

    def _run(self, run_id: str) -> dict[str, Any]:
        run = self.sm.state.run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}")
        return run_to_json(run)

    # ------------------------------------------------------------------- jobs
    async def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        now = now_ms()
        spec = _validated(lambda: job_spec_from_json(body, handlers=self.handlers, now_ms=now))
        ok = await self._write(CreateJob(spec, now))
        return self._job(ok.ids[0])

    async def list_jobs(self, query: Mapping[str, str], stale: bool) -> dict[str, Any]:
        await self._read(stale)
        page = _validated(
            lambda: list_jobs(
                self.sm.state,
                namespace=query.get("namespace"),
                name_prefix=query.get("name_prefix", ""),
                cursor=query.get("cursor"),
                limit=_int(query, "limit", 50),
            )
        )
        return {"items": [job_to_json(j) for j in page.items], "next_cursor": page.next_cursor}

    async def get_job(self, job_id: str, stale: bool) -> dict[str, Any]:
        await self._read(stale)
        return self._job(job_id)

    async def update_job(
        self, job_id: str, body: dict[str, Any], if_match: str | None, patch: bool
    ) -> dict[str, Any]:
        """PUT (replace) or PATCH (merge) a job; compare-and-set on ``version``: the
        ``If-Match`` value when given, else the version this node last applied."""
        await self._read(stale=False)
        job = self.sm.state.job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        expected = job.version
        if if_match is not None:
            text = if_match.strip().strip('"')
            if not text.isdigit():
                raise Invalid("must be the job's version number", "If-Match")
            expected = int(text)
        now = now_ms()
        if patch:
            spec = _validated(
                lambda: job_spec_from_patch(job, body, handlers=self.handlers, now_ms=now)
            )
        else:
            spec = _validated(lambda: job_spec_from_json(body, handlers=self.handlers, now_ms=now))
        await self._write(UpdateJob(job_id, spec, expected, now))
        return self._job(job_id)

    async def delete_job(self, job_id: str) -> None:
        # A malformed id in the path is refused by the command's own check: a 422 naming it.
        await self._write(_validated(lambda: DeleteJob(job_id, None, now_ms())))

    async def job_action(self, job_id: str, action: str) -> dict[str, Any]:
        now = now_ms()
        cmd: Command
        if action == "trigger":
            cmd = _validated(lambda: TriggerJob(job_id, now))
        else:
            assert action in ("pause", "resume"), action
            cmd = _validated(lambda: SetPaused(job_id, action == "pause", now))
        ok = await self._write(cmd)
        if action == "trigger":
            return self._run(ok.ids[0]) if ok.ids else {}
        return self._job(job_id)

    async def next_fires(self, job_id: str, count: int, stale: bool) -> dict[str, Any]:
        await self._read(stale)
        job = self.sm.state.job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if not 1 <= count <= NEXT_COUNT_MAX:
            raise Invalid(f"must be in [1, {NEXT_COUNT_MAX}]", "count")
        return {"job_id": job_id, "next": [format_ms(t) for t in next_fire_times(job, count)]}

    def preview_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /schedules:preview``: the first slots of a job created now with
        ``body["schedule"]``, by the code that creates and fires jobs."""
        unknown = sorted(set(body) - {"schedule", "count"})
        if unknown:
            raise Invalid("unknown field (allowed: count, schedule)", unknown[0])
        if "schedule" not in body:
            raise Invalid("is required", "schedule")
        count = body.get("count", NEXT_COUNT_DEFAULT)
        if type(count) is not int or not 1 <= count <= NEXT_COUNT_MAX:  # bool is no count
            raise Invalid(f"must be an integer in [1, {NEXT_COUNT_MAX}]", "count")
        now = now_ms()
        schedule = _validated(lambda: schedule_from_json(body["schedule"], now))
        slots = preview(schedule, start_cursor(schedule, now), count)
        return {"next": [format_ms(t) for t in slots]}

    # ------------------------------------------------------------ tasks, runs
    def _task_spec(self, body: object) -> TaskSpec:
        return self._task_specs.get(body, lambda b: task_spec_from_json(b, handlers=self.handlers))

    async def submit_task(
        self, body: dict[str, Any], idempotency_key: str | None
    ) -> dict[str, Any]:
        spec = _validated(lambda: self._task_spec(body))
        key = _validated(lambda: idempotency_key_from_header(idempotency_key))
        ok = await self._write(SubmitTasks((spec,), (key,), now_ms()))
        return self._run(ok.ids[0])

    async def submit_tasks(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /tasks:batch``: ``{"tasks": [task, ...]}``, committed as one entry."""
        tasks = body.get("tasks")
        if set(body) - {"tasks"}:
            raise Invalid("unknown field (allowed: tasks)", sorted(set(body) - {"tasks"})[0])
        if not isinstance(tasks, list) or not 1 <= len(tasks) <= TASKS_PER_BATCH_MAX:
            raise Invalid(f"must be a list of 1 to {TASKS_PER_BATCH_MAX} tasks", "tasks")
        specs = []
        for i, item in enumerate(tasks):
            try:
                specs.append(self._task_spec(item))
            except ValidationError as e:
                raise Invalid(
                    e.message, f"tasks[{i}].{e.field}" if e.field else f"tasks[{i}]"
                ) from e
        try:
            ok = await self._write(SubmitTasks(tuple(specs), (None,) * len(specs), now_ms()))
        except CommandTooLarge as e:
            raise Invalid(f"{e}; send fewer tasks per batch", "tasks") from e
        return {"items": [self._run(run_id) for run_id in ok.ids]}

    async def list_runs(
        self, query: Mapping[str, str], job_id: str | None, stale: bool
    ) -> dict[str, Any]:
        await self._read(stale)
        state = self.sm.state
        if job_id is not None:
            if state.job(job_id) is None:
                raise NotFound(f"no job {job_id!r}")
            page = _validated(
                lambda: job_runs(
                    state, job_id, cursor=query.get("cursor"), limit=_int(query, "limit", 50)
                )
            )
            assert page is not None
        else:
            page = _validated(
                lambda: list_runs(
                    state,
                    run_state=query.get("state"),
                    job_id=query.get("job_id"),
                    node=query.get("node"),
                    cursor=query.get("cursor"),
                    limit=_int(query, "limit", 50),
                )
            )
        return {"items": [run_to_json(r) for r in page.items], "next_cursor": page.next_cursor}

    async def get_run(self, run_id: str, stale: bool) -> dict[str, Any]:
        await self._read(stale)
        return self._run(run_id)

    async def cancel_run(self, run_id: str) -> dict[str, Any]:
        await self._write(_validated(lambda: CancelRun(run_id, now_ms())))
        return self._run(run_id)

    async def read_output(self, run_id: str, offset: int, max_bytes: int) -> OutputChunk:
        if self._outputs is None:
            raise Unavailable("this node does not serve run output")
        return await self._outputs.read(run_id, offset, max_bytes)


def _validated(build: Callable[[], Any]) -> Any:
    try:
        return build()
    except ValidationError as e:
        raise Invalid(e.message, e.field or "body") from e


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise Invalid(f"must be a positive integer, got {text!r:.40}", name)
    return int(text)


def _rejection(r: Rejected) -> PortError:
    if r.code == "not_found":
        return NotFound(r.detail)
    if r.code == "invalid":
        return Invalid(r.detail, r.field or "body")
    return Conflict(r.detail)  # version_conflict, conflict, stale_token
