"""Tuning work stealing: makespan of skewed loads under the real planner and state
machine, for a grid of settings. ``python -m simulations.stealing``.

What runs: the pure scheduling code of a node — ``node.state.SchedulerState`` (one
replica: the log is not simulated, every command applies ``commit_ms`` after it is
proposed), the leader's ``placements`` every ``plan_ms`` with a queue ahead of
``queue_max`` runs per node, and each node's worker: it starts what is queued on it
up to its slots (``Start``, then the run's duration, then ``Complete``) and, when
idle, asks ``steal_choice`` every ``steal_interval_ms``. Time is an integer of
simulated milliseconds on a heap of events; the load comes from a seeded RNG, so a
seed reproduces a run exactly.

Loads ("skewed"): tasks of very different durations submitted at once, on nodes that
may differ in speed (a slow node takes ``slow_factor`` times as long). The ideal
makespan is the larger of total work over total speed-weighted slots and the longest
single task, plus one commit: no schedule can beat it.

The settings Rota ships (``node.config``: ``steal_threshold``, ``steal_batch_max``,
``steal_interval_ms``, ``worker_queue_max``) are the ones this grid favours; the
table it prints is the evidence.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from node.commands import Command, Complete, Ok, Start, SubmitTasks
from node.model import TaskSpec
from node.modeljson import executor_from_json
from node.planner import NodeLoad, placements, steal_choice
from node.state import SchedulerState

SHELL = executor_from_json({"type": "shell", "command": ["/bin/true"]}, ())
T0_MS = 1_800_000_000_000  # a fixed epoch instant: commands carry absolute times
EVENTS_MAX = 5_000_000  # a bound on one simulation (an assertion, not a result)


@dataclass(frozen=True, slots=True)
class Settings:
    steal_threshold: int = 0
    steal_batch_max: int = 32  # 0: no stealing
    steal_interval_ms: int = 200
    queue_max: int = 8


@dataclass(frozen=True, slots=True)
class Load:
    """``tasks`` durations (ms at speed 1) on ``nodes`` nodes of ``slots`` each; the
    first ``slow_nodes`` nodes run ``slow_factor`` times slower."""

    name: str
    nodes: int
    slots: int
    durations_ms: tuple[int, ...]
    slow_nodes: int = 0
    slow_factor: float = 1.0


@dataclass
class Sim:
    load: Load
    settings: Settings
    plan_ms: int = 100
    commit_ms: int = 5
    state: SchedulerState = field(default_factory=SchedulerState)
    now: int = T0_MS
    index: int = 0
    events: list[tuple[int, int, Callable[[], None]]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    durations: dict[str, int] = field(default_factory=dict)
    busy: dict[str, set[str]] = field(default_factory=dict)  # node -> runs it executes
    stealing: set[str] = field(default_factory=set)
    last_steal: dict[str, int] = field(default_factory=dict)
    done: int = 0
    finished_at: int = T0_MS
    steals: int = 0

    def __post_init__(self) -> None:
        self.nodes = [f"n{k}" for k in range(1, self.load.nodes + 1)]
        self.busy = {n: set() for n in self.nodes}

    # -- the log: every command applies commit_ms after it is proposed
    def at(self, when: int, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (when, next(self.seq), action))

    def propose(self, cmd: Command, then: Callable[[Ok], None] = lambda ok: None) -> None:
        def commit() -> None:
            self.index += 1
            result = self.state.apply(cmd, self.index)
            if isinstance(result, Ok):
                then(result)

        self.at(self.now + self.commit_ms, commit)

    # -- the leader
    def plan(self) -> None:
        loads = [NodeLoad(n, self.load.slots - len(self.busy[n])) for n in self.nodes]
        for cmd in placements(self.state, loads, self.now, 256, queue_max=self.settings.queue_max):
            self.propose(cmd, lambda ok: self.wake_all())
        if self.done < len(self.durations):
            self.at(self.now + self.plan_ms, self.plan)

    # -- the workers
    def wake_all(self) -> None:
        for node in self.nodes:
            self.work(node)

    def speed(self, node: str) -> float:
        slow = int(node[1:]) <= self.load.slow_nodes
        return self.load.slow_factor if slow else 1.0

    def work(self, node: str) -> None:
        for run in list(self.state.queued_on(node)):
            if len(self.busy[node]) >= self.load.slots:
                break
            if run.id not in self.busy[node]:
                self.busy[node].add(run.id)
                self.start(node, run.id, run.token)
        if self.idle(node):  # as the node's worker: at once, then every interval
            self.stealing.add(node)
            when = max(self.now, self.last_steal.get(node, 0) + self.settings.steal_interval_ms)
            self.at(when, lambda: self.steal(node))

    def start(self, node: str, run_id: str, token: int) -> None:
        """``Start``, then execute once it has applied (never before: fencing)."""
        self.propose(Start(run_id, node, token, self.now), lambda ok: self.execute(node, run_id))
        self.at(self.now + self.commit_ms + 1, lambda: self.unless_started(node, run_id))

    def unless_started(self, node: str, run_id: str) -> None:
        run = self.state.run(run_id)
        if run is None or run.state != "running" or run.node != node:
            self.busy[node].discard(run_id)  # the Start lost a race with a steal

    def execute(self, node: str, run_id: str) -> None:
        run = self.state.run(run_id)
        assert run is not None and run.state == "running"
        took = int(self.durations[run_id] * self.speed(node))

        def complete() -> None:
            current = self.state.run(run_id)
            assert current is not None
            self.propose(
                Complete(run_id, current.token, "succeeded", 0, None, "", self.now),
                lambda ok: self.finished(node, run_id),
            )

        self.at(self.now + took, complete)

    def finished(self, node: str, run_id: str) -> None:
        self.busy[node].discard(run_id)
        self.done += 1
        self.finished_at = self.now
        self.work(node)

    def idle(self, node: str) -> bool:
        return (
            self.settings.steal_batch_max > 0
            and node not in self.stealing
            and len(self.busy[node]) < self.load.slots
            and self.state.queued_count(node) == 0
        )

    def steal(self, node: str) -> None:
        self.stealing.discard(node)
        self.last_steal[node] = self.now
        loads = [NodeLoad(n, self.load.slots - len(self.busy[n])) for n in self.nodes]
        s = self.settings
        cmd = steal_choice(node, loads, self.state, s.steal_threshold, s.steal_batch_max, self.now)
        if cmd is None:
            if self.done < len(self.durations):
                self.work(node)  # look again after another interval
            return

        def stolen(ok: Ok) -> None:
            self.steals += len(ok.ids)
            self.work(node)

        self.propose(cmd, stolen)

    # -- a whole run
    def run(self) -> int:
        specs = tuple(TaskSpec(SHELL) for _ in self.load.durations_ms)

        def submitted(ok: Ok) -> None:
            self.durations.update(zip(ok.ids, self.load.durations_ms, strict=True))
            self.plan()

        self.propose(SubmitTasks(specs, (None,) * len(specs), self.now), submitted)
        for _ in range(EVENTS_MAX):
            if not self.events or (self.durations and self.done == len(self.durations)):
                break
            self.now, _, action = heapq.heappop(self.events)
            action()
        assert self.done == len(self.durations), ("unfinished", self.done, len(self.durations))
        return self.finished_at - T0_MS


def ideal_ms(load: Load, commit_ms: int) -> int:
    """No schedule beats the work spread over every slot at its speed, nor the
    longest task on the fastest node; plus the commit of the submission."""
    capacity = sum(
        load.slots / (load.slow_factor if k <= load.slow_nodes else 1.0)
        for k in range(1, load.nodes + 1)
    )
    return int(max(sum(load.durations_ms) / capacity, max(load.durations_ms))) + commit_ms


def skewed_loads(seed: int) -> list[Load]:
    """The loads the grid is judged on (seeded): long-tailed durations; a slow node."""
    rng = random.Random(seed)
    tail = tuple(int(rng.paretovariate(1.2) * 200) for _ in range(240))
    mixed = tuple(rng.choice((100, 100, 100, 4_000)) for _ in range(120))
    uniform = tuple(rng.randint(200, 600) for _ in range(180))
    return [
        Load("long-tail", 3, 4, tail),
        Load("few-long", 3, 4, mixed),
        Load("slow-node", 3, 4, uniform, slow_nodes=1, slow_factor=4.0),
        Load("five-nodes", 5, 2, tail[:150]),
    ]


def grid() -> list[Settings]:
    return [
        Settings(threshold, batch, interval, queue)
        for threshold in (0, 2)
        for batch in (0, 4, 32)
        for interval in (50, 100, 200, 1000)
        for queue in (0, 4, 8, 32)
        if batch or (threshold == 0 and interval == 200)
    ]


def evaluate(settings: Settings, seeds: range) -> tuple[float, float]:
    """(mean, worst) of makespan / ideal over the skewed loads of ``seeds``."""
    ratios = []
    for seed in seeds:
        for load in skewed_loads(seed):
            sim = Sim(load, settings)
            ratios.append(sim.run() / ideal_ms(load, sim.commit_ms))
    return sum(ratios) / len(ratios), max(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.stealing", description=__doc__)
    parser.add_argument("--seeds", default="0:5", help="START:END of load seeds")
    args = parser.parse_args(argv)
    start, _, end = args.seeds.partition(":")
    seeds = range(int(start), int(end))
    rows = sorted(((evaluate(s, seeds), s) for s in grid()), key=lambda row: row[0])
    print("mean/ideal  worst/ideal  threshold  batch  interval_ms  queue_max")
    for (mean, worst), s in rows:
        print(
            f"{mean:10.3f}  {worst:11.3f}  {s.steal_threshold:9}  {s.steal_batch_max:5}"
            f"  {s.steal_interval_ms:11}  {s.queue_max:9}"
        )
    default = Settings()
    mean, worst = evaluate(default, seeds)
    print(f"defaults: mean {mean:.3f}, worst {worst:.3f} of ideal over {len(seeds)} seeds")
    for load in skewed_loads(seeds.start):
        sim = Sim(load, default)
        print(f"  {load.name}: {sim.run() / ideal_ms(load, sim.commit_ms):.3f} of ideal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
