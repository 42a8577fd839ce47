"""The jobs/tasks/runs service on a real scheduler state machine over LMDB, with each
proposal committed at the next index (no cluster): validation, batches, reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.jobs import JobsService
from node.scheduler import SchedulerStateMachine
from tests.node.onenode import OneNode
from web.port import Conflict, Invalid, NotFound

SHELL = {"type": "shell", "command": ["/bin/true"]}


class JobsNode(OneNode):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.jobs = JobsService(self.sm, self.propose, self.read_barrier)


@pytest.fixture
def node(tmp_path: Path) -> JobsNode:
    n = JobsNode(tmp_path / "store")
    yield n  # type: ignore[misc]
    n.store.close()


async def test_jobs_are_created_read_listed_and_survive_a_reload(node: JobsNode) -> None:
    job = await node.jobs.create_job({"name": "a", "schedule": {"every_s": 60}, "executor": SHELL})
    assert (await node.jobs.get_job(job["id"], stale=False))["name"] == "a"
    page = await node.jobs.list_jobs({}, stale=True)
    assert [j["id"] for j in page["items"]] == [job["id"]]
    reloaded = SchedulerStateMachine(node.store)  # from the LMDB tables alone
    assert reloaded.state.job(job["id"]) is not None


async def test_bad_input_names_the_field_and_changes_nothing(node: JobsNode) -> None:
    with pytest.raises(Invalid) as info:
        await node.jobs.create_job(
            {"name": "b", "schedule": {"cron": "61 * * * *"}, "executor": SHELL}
        )
    assert info.value.field == "schedule.cron"
    with pytest.raises(Invalid) as batch:
        await node.jobs.submit_tasks(
            {"tasks": [{"executor": SHELL}, {"executor": {"type": "ftp"}}]}
        )
    assert batch.value.field.startswith("tasks[1].executor")
    assert node.index == 0  # nothing was proposed
    with pytest.raises(NotFound):
        await node.jobs.get_run("r000000000001000000", stale=True)


async def test_a_batch_commits_all_tasks_in_one_entry(node: JobsNode) -> None:
    result = await node.jobs.submit_tasks({"tasks": [{"executor": SHELL}] * 3})
    assert [r["state"] for r in result["items"]] == ["queued"] * 3
    assert node.index == 1
    runs = await node.jobs.list_runs({"state": "queued"}, None, stale=False)
    assert len(runs["items"]) == 3


async def test_updates_are_compare_and_set_on_the_version(node: JobsNode) -> None:
    job = await node.jobs.create_job({"name": "c", "schedule": {"every_s": 60}, "executor": SHELL})
    patched = await node.jobs.update_job(job["id"], {"priority": 9}, None, patch=True)
    assert patched["priority"] == 9 and patched["version"] == job["version"] + 1
    with pytest.raises(Conflict):
        await node.jobs.update_job(job["id"], {"priority": 1}, str(job["version"]), patch=True)
    replaced = await node.jobs.update_job(
        job["id"],
        {"name": "c", "schedule": {"every_s": 30}, "executor": SHELL},
        str(patched["version"]),
        patch=False,
    )
    assert replaced["schedule"]["every_s"] == 30
    assert replaced["priority"] == 5  # PUT replaces: back to the default


async def test_a_preview_is_what_the_job_would_fire_and_proposes_nothing(node: JobsNode) -> None:
    schedule = {"cron": "0 9 * * 1-5", "tz": "Europe/Paris"}
    preview = node.jobs.preview_schedule({"schedule": schedule, "count": 7})
    assert node.index == 0  # nothing was proposed
    job = await node.jobs.create_job({"name": "p", "schedule": schedule, "executor": SHELL})
    assert preview["next"] == (await node.jobs.next_fires(job["id"], 7, stale=True))["next"]
    assert len(node.jobs.preview_schedule({"schedule": {"every_s": 60}})["next"]) == 5
    bad = [
        ({"schedule": {"cron": "61 * * * *"}}, "schedule.cron"),
        ({"schedule": {"cron": "* * * * *", "tz": "Mars/Olympus"}}, "schedule.tz"),
        ({"schedule": {"every_s": 0}}, "schedule.every_s"),
        ({"schedule": "daily"}, "schedule"),
        ({}, "schedule"),
        ({"schedule": {"every_s": 60}, "count": 101}, "count"),
        ({"schedule": {"every_s": 60}, "count": True}, "count"),
        ({"schedule": {"every_s": 60}, "colour": "red"}, "colour"),
    ]
    for body, field in bad:
        with pytest.raises(Invalid) as info:
            node.jobs.preview_schedule(body)
        assert info.value.field == field, body
