"""``python -m simulations.chaos --nodes 5 --duration 120 --seed S``: real agents, real faults.

Starts N ``rota agent`` processes on loopback (``node.devcluster.LocalCluster``) with
the fault-injection control on (``node/faults.py``), drives a workload through every
node's API while ``simulations.faultplan`` injects the seed's faults, heals, waits for
the runs to settle, and checks:

- the history of job creates, compare-and-set updates and reads is linearizable per
  job (``simulations.linearizability``);
- from the side effects the shell runs append (``simulations.sidefx``): at most one
  start per (job, slot, attempt), every acknowledged task started, no slot of an
  enabled job silently missed, no run left ``running`` after the heal;
- no node exited on its own (a disk-full node is expected to stop).

The workload: two every_s jobs (overlap ``allow`` and ``forbid``) whose runs append a
start line; ad-hoc tasks (``Idempotency-Key``, retried on unknown outcomes) that do
the same; and for each register job two clients doing reads and If-Match PATCHes
through random nodes. Clients record every call (``simulations.history``).

Faults follow the plan in order, each healed before the next (every node running and
continued, every node's injected faults cleared); a slow heal (a node restarting)
delays the faults after it, so the fault phase may run a little past ``--duration``.

Ends with ONE summary line (seed, nodes, duration, faults by kind, ops, violations),
after any violation lines; exits 1 on a violation. ``--plant start_unfenced`` switches
on a known bug (the worker ignores its Start's outcome) to show the checks catch it.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from node.devcluster import LocalCluster, free_http_base
from node.faults import PLANTED_BUGS
from node.httpclient import ApiClient, ApiError, ClientError
from simulations import faultplan, sidefx
from simulations.history import History
from simulations.linearizability import JobRegister, check

EVERY_S = 2
RUN_TIMEOUT_S = 5
TIMEOUT_GRACE_S = 30  # node.scheduler.TIMEOUT_GRACE_MS: a run past its timeout ends by then
REGISTERS = 3
CLIENTS_PER_REGISTER = 2
CLIENT_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 2.0
HEAL_TIMEOUT_S = 60.0
SETTLE_MARGIN_S = 20.0
POLL_INTERVAL_S = 1.5
PAGE_LIMIT = 500
VOTER_GRACE_S = 3
INJECTED_DISK_FULL = "injected by the fault-injection control"  # node.faults' StorageFull


@dataclass
class Report:
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    linearizability: str = "ok"


class Scenario:
    """One run: the cluster, the workload threads, the faults and the checks."""

    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.args = args
        self.seed: int = args.seed
        self.cluster = LocalCluster(
            data_dir,
            args.nodes,
            free_http_base(args.nodes + 1),
            extra_args=["--fault-injection", "true", "--voter-grace-s", str(VOTER_GRACE_S)],
        )
        self.names = sorted(self.cluster.nodes)
        self.side = data_dir / "side-effects.txt"
        self.history = History()
        self.report = Report()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.pid_nodes: dict[int, str] = {}
        self.acked: dict[str, str] = {}  # task tag -> run id
        self.refused: set[str] = set()  # task tags whose every submission certainly failed
        self.records: dict[str, sidefx.RunRecord] = {}
        self.jobs: dict[str, int] = {}  # scheduled job id -> first slot
        self.registers: dict[str, str] = {}  # register name -> job id
        self.expected_exits: set[str] = set()  # nodes we killed
        self.t0 = 0.0
        self.rng = random.Random(f"{self.seed}/runner")  # the main thread's choices
        self.starts = self.retried = 0  # start lines, and those of attempts after the first

    # ------------------------------------------------------------------ clients
    def api(self, node: str, timeout_s: float = CLIENT_TIMEOUT_S) -> ApiClient:
        return ApiClient(
            self.cluster.nodes[node].api, self.cluster.admin_token, timeout_s=timeout_s
        )

    def until_ok(self, what: str, call: Callable[[ApiClient], Any], timeout_s: float) -> Any:
        """``call`` through any node until it succeeds (setup and teardown, not recorded)."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            for node in self.names:
                try:
                    return call(self.api(node))
                except ClientError as e:
                    last = e
            time.sleep(0.3)
        raise TimeoutError(f"{what}: no node succeeded within {timeout_s:.0f} s: {last}")

    def set_faults(self, node: str, doc: dict[str, Any]) -> bool:
        """Replace ``node``'s injected faults (idempotent, so retried on any error); a
        planted bug stays planted throughout."""
        doc = doc | ({"planted": [self.args.plant]} if self.args.plant else {})
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.cluster.nodes[node].alive():
                return False
            try:
                self.api(node, CONTROL_TIMEOUT_S).post("/api/v1/faults", doc)
                return True
            except ClientError:
                time.sleep(0.2)
        raise TimeoutError(f"{node}: the fault-injection control did not answer")

    # ------------------------------------------------------------------- setup
    def start(self) -> None:
        self.cluster.start()
        self.note_pids()
        self.cluster.wait_leader(timeout_s=HEAL_TIMEOUT_S)
        if self.args.plant:
            for node in self.names:
                self.set_faults(node, {})
        self.side.touch()
        for i, concurrency in enumerate(("allow", "forbid")):
            body = {
                "name": f"every-{i}",
                "schedule": {"every_s": EVERY_S},
                "executor": {
                    "type": "shell",
                    "command": sidefx.start_command(str(self.side), "-", self.args.run_sleep_s),
                },
                "concurrency": concurrency,
                "timeout_s": RUN_TIMEOUT_S,
                "retry": {"max_attempts": 3, "backoff_initial_s": 1},
            }
            job = self.create_once(body)
            self.jobs[job["id"]] = sidefx.instant_ms(job["next_fire_at"])
        for k in range(REGISTERS):
            self.create_register(f"reg-{k}")

    def create_once(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a job by name; after an unknown outcome, find the one that was made."""

        def attempt(api: ApiClient) -> dict[str, Any]:
            try:
                job: dict[str, Any] = api.post("/api/v1/jobs", body)
                return job
            except ApiError as e:
                if e.status != 409:
                    raise
                page = api.get("/api/v1/jobs", {"name_prefix": body["name"]})
                return next(j for j in page["items"] if j["name"] == body["name"])

        job: dict[str, Any] = self.until_ok("create", attempt, HEAL_TIMEOUT_S)
        return job

    def create_register(self, name: str) -> None:
        marker = f"{name}-init"
        body = {
            "name": name,
            "schedule": {"every_s": 3600},
            "paused": True,
            "executor": {"type": "shell", "command": ["/bin/true"]},
            "metadata": {"m": marker},
        }
        deadline = time.monotonic() + HEAL_TIMEOUT_S
        while name not in self.registers and time.monotonic() < deadline:
            op, job = self.history.record(
                "setup",
                name,
                "create",
                marker,
                partial(self.api(self.rng.choice(self.names)).post, "/api/v1/jobs", body),
                lambda j: None,
            )
            if op.status == "ok" and isinstance(job, dict):
                self.registers[name] = job["id"]
            elif op.output == 409 or op.status == "unknown":
                page = self.until_ok(
                    "find",
                    lambda a: a.get("/api/v1/jobs", {"name_prefix": name}),
                    HEAL_TIMEOUT_S,
                )
                for item in page["items"]:
                    if item["name"] == name:
                        self.registers[name] = item["id"]
        assert name in self.registers, f"could not create {name}"

    def note_pids(self) -> None:
        for name, node in self.cluster.nodes.items():
            if node.proc is not None:
                self.pid_nodes[node.proc.pid] = name

    # ---------------------------------------------------------------- workload
    def register_client(self, name: str, index: int) -> None:
        client = f"{name}/c{index}"
        rng = random.Random(f"{self.seed}/{client}")
        job_id = self.registers[name]
        path = f"/api/v1/jobs/{job_id}"
        version, n = 1, 0
        while not self.stop.is_set():
            api = self.api(rng.choice(self.names))
            if rng.random() < 0.5:
                op, job = self.history.record(
                    client, name, "read", None, partial(api.get, path), _register_value
                )
                if op.status == "ok" and isinstance(job, dict):
                    version = job["version"]
            else:
                n += 1
                marker = f"{client}-{n}"
                expected = version
                op, _ = self.history.record(
                    client,
                    name,
                    "cas",
                    (expected, marker),
                    partial(
                        api.request,
                        "PATCH",
                        path,
                        body={"metadata": {"m": marker}},
                        headers={"If-Match": str(expected)},
                    ),
                    lambda j: None,
                )
                if op.status == "ok":
                    version = expected + 1
            self.stop.wait(rng.uniform(0.05, 0.25))

    def task_client(self, index: int) -> None:
        rng = random.Random(f"{self.seed}/tasks{index}")
        n = 0
        while not self.stop.is_set():
            n += 1
            tag = f"t{index}.{n}"
            body = {
                "executor": {
                    "type": "shell",
                    "command": sidefx.start_command(
                        str(self.side), tag, rng.uniform(0, self.args.run_sleep_s)
                    ),
                },
                "timeout_s": RUN_TIMEOUT_S,
                "retry": {"max_attempts": 3, "backoff_initial_s": 1},
            }
            headers = {"Idempotency-Key": f"chaos-{self.seed}-{tag}"}
            outcomes = []
            for _ in range(3):  # the same key: a retry after an unknown outcome is safe
                api = self.api(rng.choice(self.names))
                op, _ = self.history.record(
                    "tasks",
                    tag,
                    "task",
                    tag,
                    partial(api.request, "POST", "/api/v1/tasks", body=body, headers=headers),
                    lambda r: str(r["id"]),
                )
                outcomes.append(op.status)
                if op.status == "ok":
                    with self.lock:
                        self.acked[tag] = str(op.output)
                    break
                if op.status == "fail" and op.output != 0:
                    break  # refused by the API: it certainly did nothing
            if set(outcomes) == {"fail"}:  # every submission certainly did nothing
                with self.lock:
                    self.refused.add(tag)
            self.stop.wait(rng.uniform(0.2, 0.5))

    def poller(self) -> None:
        """Collect run records while the faults go on (finished and skipped runs are
        retained in bounded numbers): a stale read of any replica shows committed state."""
        rng = random.Random(f"{self.seed}/poller")
        while not self.stop.is_set():
            for job_id in list(self.jobs):
                with contextlib.suppress(ClientError):
                    self.collect_runs(self.api(rng.choice(self.names)), job_id, stale=True)
            self.stop.wait(POLL_INTERVAL_S)

    def collect_final(self, job_id: str, api: ApiClient) -> None:
        self.collect_runs(api, job_id, stale=False)

    def collect_runs(self, api: ApiClient, job_id: str, stale: bool) -> None:
        query = {"limit": str(PAGE_LIMIT)} | ({"consistency": "stale"} if stale else {})
        while True:
            page = api.get(f"/api/v1/jobs/{job_id}/runs", query)
            with self.lock:
                for doc in page["items"]:
                    self.records[doc["id"]] = sidefx.RunRecord.from_json(doc)
            if not page.get("next_cursor"):
                return
            query = query | {"cursor": page["next_cursor"]}

    # ------------------------------------------------------------------ faults
    def leader(self) -> str | None:
        for name in self.names:
            if self.cluster.nodes[name].alive():
                view = self.cluster.cluster_view(name)
                if view is not None and isinstance(view.get("leader"), str):
                    return str(view["leader"])
        return None

    def inject(self, fault: faultplan.Fault) -> None:
        c = self.cluster
        self.report.faults[fault.kind] += 1
        print(f"chaos: {time.monotonic() - self.t0:6.1f}s {fault.describe()}", flush=True)
        match fault.kind:
            case "kill":
                self.expected_exits.add(fault.victim)
                c.kill(fault.victim)
            case "pause":
                c.signal(fault.victim, signal.SIGSTOP)
            case "delay" | "loss":
                rule = {k: v for k, v in fault.params.items()}
                for n in self.names:
                    self.set_faults(n, {"links": {p: rule for p in self.names if p != n}})
            case "clock":
                self.set_faults(fault.victim, {"clock_offset_ms": fault.params["offset_ms"]})
            case "disk_full":
                self.set_faults(fault.victim, {"disk_full": True})
            case _:
                pairs = faultplan.blocked_pairs(fault, self.names, self.leader())
                for n in self.names:
                    links = {dst: {"block": True} for src, dst in pairs if src == n}
                    if links:
                        self.set_faults(n, {"links": links})

    def heal(self) -> None:
        """Every node continued, without injected faults, and running. A node that died
        of an injected full disk may do so a moment after its fault was cleared (the
        write failed before), so that is told from its log, not from timing."""
        c = self.cluster
        for name in self.names:
            c.signal(name, signal.SIGCONT)
            self.set_faults(name, {})  # False (and nothing to clear) if it is down
        for name in self.names:
            node = c.nodes[name]
            if node.alive():
                continue
            if name not in self.expected_exits and not self.died_of_full_disk(name):
                code = node.proc.returncode if node.proc is not None else None
                self.report.violations.append(f"{name} exited on its own (code {code})")
            c.start_node(name)
            self.set_faults(name, {})  # waits for it to answer (keeps a planted bug)
        self.expected_exits.clear()
        self.note_pids()

    def died_of_full_disk(self, name: str) -> bool:
        """Whether ``name``'s last run ended on the injected ``StorageFull``."""
        path = self.cluster.nodes[name].log_path
        text = path.read_text(errors="replace") if path is not None else ""
        return INJECTED_DISK_FULL in text[text.rfind(" is up") :]

    def run_faults(self) -> None:
        kinds = self.args.faults.split(",") if self.args.faults else faultplan.FAULT_KINDS
        plan = faultplan.plan(self.seed, self.names, self.args.duration, kinds)
        for fault in plan:
            self.stop.wait(max(0.0, self.t0 + fault.start_s - time.monotonic()))
            self.inject(fault)
            self.stop.wait(fault.length_s)
            self.heal()
        self.stop.wait(max(0.0, self.t0 + self.args.duration - time.monotonic()))

    # ------------------------------------------------------------------ finish
    def finish(self) -> list[sidefx.JobWatch]:
        """After the heal: final reads, pause the jobs, wait for runs to settle."""
        self.cluster.wait_leader(timeout_s=HEAL_TIMEOUT_S)
        for name, job_id in self.registers.items():
            while True:  # a final linearizable read of each register, recorded
                api = self.api(self.rng.choice(self.names))
                op, _ = self.history.record(
                    "final",
                    name,
                    "read",
                    None,
                    partial(api.get, f"/api/v1/jobs/{job_id}"),
                    _register_value,
                )
                if op.status == "ok":
                    break
        watches = []
        for job_id, first in self.jobs.items():
            job = self.until_ok("read", partial(_get, f"/api/v1/jobs/{job_id}"), HEAL_TIMEOUT_S)
            end = sidefx.instant_ms(job["next_fire_at"])
            watches.append(sidefx.JobWatch(job_id, EVERY_S * 1000, first, end))
            self.until_ok("pause", partial(_post, f"/api/v1/jobs/{job_id}/pause"), HEAL_TIMEOUT_S)
        deadline = time.monotonic() + RUN_TIMEOUT_S + TIMEOUT_GRACE_S + SETTLE_MARGIN_S
        while time.monotonic() < deadline:
            busy = sum(len(self.runs_in(state)) for state in ("running", "queued"))
            if busy == 0:
                break
            time.sleep(1.0)
        for job_id in self.jobs:
            self.until_ok("runs", partial(self.collect_final, job_id), HEAL_TIMEOUT_S)
        return watches

    def runs_in(self, state: str) -> list[sidefx.RunRecord]:
        page = self.until_ok(
            "runs",
            lambda a: a.get("/api/v1/runs", {"state": state, "limit": str(PAGE_LIMIT)}),
            HEAL_TIMEOUT_S,
        )
        return [sidefx.RunRecord.from_json(doc) for doc in page["items"]]

    def check(self, watches: list[sidefx.JobWatch], running: list[sidefx.RunRecord]) -> None:
        r = self.report
        starts, bad = sidefx.parse_starts(self.side.read_text())
        r.violations += [f"malformed side-effect line: {line!r}" for line in bad]
        r.violations += sidefx.duplicate_starts(starts, self.pid_nodes)
        r.violations += sidefx.unexecuted_tasks(self.acked, starts)
        r.violations += sidefx.refused_tasks_ran(self.refused, starts)
        records = list(self.records.values())
        for watch in watches:
            r.violations += sidefx.missed_slots(watch, starts, records)
        r.violations += sidefx.stuck_runs(running)
        result = check(JobRegister(), self.history.ops())
        r.linearizability = result.verdict
        for key in result.bad():
            line = f"linearizability: {key.key} is {key.verdict} ({key.ops} ops, {key.steps} steps)"
            (r.violations if key.verdict == "violation" else r.notes).append(line)
        self.starts = len(starts)
        self.retried = sum(1 for st in starts if st.attempt > 1)

    def run(self) -> Report:
        self.start()
        threads = [threading.Thread(target=self.poller, daemon=True)]
        for i in range(self.args.task_clients):
            threads.append(threading.Thread(target=self.task_client, args=(i,), daemon=True))
        for name in self.registers:
            for i in range(CLIENTS_PER_REGISTER):
                threads.append(
                    threading.Thread(target=self.register_client, args=(name, i), daemon=True)
                )
        self.t0 = time.monotonic()
        for t in threads:
            t.start()
        try:
            self.run_faults()
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=CLIENT_TIMEOUT_S * 3)
            self.heal()
        watches = self.finish()
        running = self.runs_in("running")
        self.cluster.stop()
        self.check(watches, running)
        return self.report


def _get(path: str, api: ApiClient) -> Any:
    return api.get(path)


def _post(path: str, api: ApiClient) -> Any:
    return api.post(path)


def _register_value(job: Any) -> tuple[int, str]:
    return int(job["version"]), str(job["metadata"].get("m", ""))


def summary(args: argparse.Namespace, scenario: Scenario) -> str:
    r = scenario.report
    counts = scenario.history.counts()
    faults = ",".join(f"{k}:{v}" for k, v in sorted(r.faults.items())) or "none"
    return (
        f"chaos: seed={args.seed} nodes={args.nodes} duration={args.duration:g}s "
        f"faults={faults} ops={sum(counts.values())} (ok={counts['ok']} fail={counts['fail']} "
        f"unknown={counts['unknown']}) starts={scenario.starts} "
        f"(retries {scenario.retried}) "
        f"tasks_acked={len(scenario.acked)} linearizability={r.linearizability} "
        f"violations={len(r.violations)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.chaos", description=__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--duration", type=float, default=60.0, help="fault phase, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default="", help="comma-separated kinds (default: all)")
    parser.add_argument(
        "--run-sleep-s", type=float, default=0.0, help="runs sleep (up to) this after starting"
    )
    parser.add_argument("--task-clients", type=int, default=1, help="threads submitting tasks")
    parser.add_argument("--plant", choices=sorted(PLANTED_BUGS), default=None)
    parser.add_argument("--data-dir", type=Path, default=None, help="kept after the run")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="rota-chaos-"))
    scenario = Scenario(args, data_dir)
    try:
        report = scenario.run()
    finally:
        scenario.cluster.stop()
    scenario.history.dump(data_dir / "history.jsonl")
    for line in report.notes:
        print(f"chaos: note: {line}", flush=True)
    for line in report.violations:
        print(f"chaos: VIOLATION: {line}", flush=True)
    if report.violations:
        replay = f"python -m simulations.chaos --nodes {args.nodes} --duration {args.duration:g}"
        replay += f" --seed {args.seed}" + (f" --faults {args.faults}" if args.faults else "")
        replay += f" --task-clients {args.task_clients}" if args.task_clients != 1 else ""
        replay += f" --run-sleep-s {args.run_sleep_s:g}" if args.run_sleep_s else ""
        replay += f" --plant {args.plant}" if args.plant else ""
        print(f"chaos: replay with: {replay}  (data kept in {data_dir})", flush=True)
    elif args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(summary(args, scenario), flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
