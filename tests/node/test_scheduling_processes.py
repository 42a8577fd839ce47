"""Scheduling on real agents: a job fires once per slot across a killed leader (checked
from the side effect the job itself writes), and a run on a killed node is retried
elsewhere; a stopped node's queue is stolen by idle nodes; output is served by every node."""

from __future__ import annotations

import collections
import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from node.devcluster import LocalCluster
from tests.node.test_cluster_processes import free_base, wait_for

pytestmark = pytest.mark.slow


def api(c: LocalCluster, node: str, method: str, path: str, body: object = None) -> object:
    req = urllib.request.Request(
        c.nodes[node].api + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {c.admin_token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=15) as resp:
        return json.loads(resp.read() or b"null")


def test_each_slot_runs_at_most_once_across_a_leader_kill(tmp_path: Path) -> None:
    side = tmp_path / "side-effects.txt"
    # Runs queued on the killed node are handed back after the grace period; with the
    # default "forbid" overlap the job waits for that, so keep the grace short here.
    c = LocalCluster(tmp_path / "cluster", 3, free_base(), extra_args=["--voter-grace-s", "2"])
    c.start()
    try:
        leader = c.wait_leader()
        follower = next(n for n in c.nodes if n != leader)
        command = f'echo "$ROTA_IDEMPOTENCY_KEY $ROTA_FENCING_TOKEN" >> {side}'
        job = api(
            c,
            follower,
            "POST",
            "/api/v1/jobs",
            {
                "name": "every-second",
                "schedule": {"cron": "* * * * * *", "tz": "Europe/Berlin"},  # seconds first
                "executor": {"type": "shell", "command": ["/bin/sh", "-c", command]},
            },
        )
        assert isinstance(job, dict) and job["name"] == "every-second"
        wait_for(lambda: side.exists() and len(side.read_text().splitlines()) >= 3, 20, "runs")
        c.kill(leader)
        survivors = [n for n in c.nodes if n != leader]
        c.wait_leader(survivors, timeout_s=15)
        before = len(side.read_text().splitlines())
        # A run the old leader was executing holds the job ("forbid") until gossip has
        # held that node down for the voter grace and the new leader hands the run back:
        # SWIM's suspicion timeout comes first, so this can take most of 20 s.
        wait_for(
            lambda: len(side.read_text().splitlines()) >= before + 3, 45, "runs after failover"
        )
        c.start_node(leader)
        time.sleep(3)
    finally:
        c.stop()
    keys = [line.split()[0] for line in side.read_text().splitlines()]
    counts = collections.Counter(keys)
    assert [k for k, n in counts.items() if n > 1] == [], "a slot ran twice"
    slots = sorted(int(k.split(":")[1]) for k in keys)
    assert len(slots) >= 6


def test_a_run_on_a_killed_node_is_retried_on_another(tmp_path: Path) -> None:
    marks = tmp_path / "attempts.txt"
    c = LocalCluster(tmp_path / "cluster", 3, free_base(), extra_args=["--voter-grace-s", "2"])
    c.start()
    try:
        leader = c.wait_leader()
        command = f'echo "$ROTA_ATTEMPT $(hostname)" >> {marks}; sleep 60'
        run = api(
            c,
            leader,
            "POST",
            "/api/v1/tasks",
            {
                "executor": {"type": "shell", "command": ["/bin/sh", "-c", command]},
                "retry": {"max_attempts": 2, "backoff_initial_s": 0},
                "timeout_s": 120,
            },
        )
        assert isinstance(run, dict)

        def runner() -> str | None:
            r = api(c, leader, "GET", f"/api/v1/runs/{run['id']}")
            assert isinstance(r, dict)
            return r["node"] if r["state"] == "running" else None

        wait_for(lambda: runner() is not None, 20, "the task to start")
        victim = runner()
        assert victim is not None
        c.kill(victim)  # the leader or not: the survivors elect one if need be
        survivor = next(n for n in c.nodes if n != victim)

        def retried() -> bool:
            page = api(c, survivor, "GET", "/api/v1/runs?state=running&consistency=stale")
            assert isinstance(page, dict)
            return any(r["attempt"] == 2 and r["node"] != victim for r in page["items"])

        wait_for(retried, 40, "a second attempt on another node")
    finally:
        c.stop()
    attempts = [line.split()[0] for line in marks.read_text().splitlines()]
    assert attempts[:2] == ["1", "2"]


def _runs(c: LocalCluster, node: str, run_ids: list[str]) -> list[dict[str, object]]:
    out = []
    for run_id in run_ids:
        r = api(c, node, "GET", f"/api/v1/runs/{run_id}")
        assert isinstance(r, dict)
        out.append(r)
    return out


def test_a_stopped_nodes_queue_is_stolen_and_output_is_served_by_every_node(
    tmp_path: Path,
) -> None:
    # One slot per node and room to queue ahead, so each node holds a queue; a voter
    # grace longer than the test, so what moves the stopped node's queue is stealing.
    args = ["--worker-slots", "1", "--worker-queue-max", "10", "--voter-grace-s", "600"]
    c = LocalCluster(tmp_path / "cluster", 3, free_base(), extra_args=args)
    c.start()
    try:
        leader = c.wait_leader()
        victim = next(n for n in c.nodes if n != leader)
        task = {
            "executor": {
                "type": "shell",
                "command": ["/bin/sh", "-c", 'echo "output of $ROTA_RUN_ID"; sleep 0.5'],
            }
        }
        batch = api(c, leader, "POST", "/api/v1/tasks:batch", {"tasks": [task] * 18})
        assert isinstance(batch, dict)
        run_ids = [r["id"] for r in batch["items"]]

        def placed_on_victim() -> list[dict[str, object]]:
            runs = _runs(c, leader, run_ids)
            return [r for r in runs if r["node"] == victim and r["state"] == "queued"]

        wait_for(lambda: len(placed_on_victim()) >= 3, 20, "a queue on the victim")
        c.signal(victim, signal.SIGSTOP)
        stranded = {str(r["id"]) for r in placed_on_victim()}
        try:

            def stranded_done() -> bool:
                runs = _runs(c, leader, sorted(stranded))
                return all(r["state"] == "succeeded" and r["node"] != victim for r in runs)

            wait_for(stranded_done, 60, "the stopped node's queue to run elsewhere")
        finally:
            c.signal(victim, signal.SIGCONT)
        wait_for(
            lambda: all(r["state"] == "succeeded" for r in _runs(c, leader, run_ids)),
            60,
            "every task",
        )
        steals = 0.0
        for name in c.nodes:
            body = urllib.request.urlopen(
                urllib.request.Request(
                    c.nodes[name].api + "/metrics",
                    headers={"Authorization": f"Bearer {c.admin_token}"},
                ),
                timeout=5,
            ).read()
            for line in body.decode().splitlines():
                if line.startswith('rota_steals_total{direction="in"}'):
                    steals += float(line.split()[-1])
        assert steals >= len(stranded)
        # Output lives on the node that ran it; every node serves it.
        done = _runs(c, leader, run_ids)[0]
        other = next(n for n in c.nodes if n != done["node"])
        url = c.nodes[other].api + f"/api/v1/runs/{done['id']}/output?follow=false"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {c.admin_token}"})

        def output() -> bytes:
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.headers["Rota-Output-Node"] == done["node"]
                return bytes(resp.read())

        wait_for(lambda: output() == f"output of {done['id']}\n".encode(), 10, "the output")
    finally:
        c.stop()
