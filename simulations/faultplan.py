"""The seeded fault schedule of a chaos scenario: which fault, when, for how long, on whom.

Pure: the same (seed, node names, duration, kinds) always gives the same plan, so a
failing seed names its faults exactly. Who is the leader is only known when a fault
starts, so ``isolate_leader`` picks its victim then; everything else is drawn here.

Faults run one after another with a gap between them (so each one's effect is
attributable); within the cycle every allowed kind comes once, in a seeded order,
before any repeats — a short run still covers many kinds.

How each kind is realised (``simulations.chaos``)::

    kill            SIGKILL one node, restart it after the fault's length
    pause           SIGSTOP one node, SIGCONT after the length
    partition       a random minority and majority that cannot talk (both ways)
    asymmetric      one node cannot send to the others (or cannot hear them)
    isolate_leader  the current leader cut off from everyone, both ways
    bridge          two halves that cannot talk, and one node that talks to both
    delay           every link delays frames by delay_ms plus up to jitter_ms
    loss            every link loses frames and datagrams with probability drop
    clock           one node's wall clock is offset by offset_ms
    disk_full       one node's storage writes fail as on a full disk (it stops)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = (
    "kill",
    "pause",
    "partition",
    "asymmetric",
    "isolate_leader",
    "bridge",
    "delay",
    "loss",
    "clock",
    "disk_full",
)
WARMUP_S = 3.0
LENGTH_S = (2.0, 7.0)
GAP_S = (1.0, 3.0)


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    start_s: float  # since the workload began
    length_s: float
    victim: str = ""  # kill, pause, asymmetric, clock, disk_full; bridge's bridge node
    groups: tuple[tuple[str, ...], ...] = ()  # partition and bridge: sides that cannot talk
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        who = self.victim or "/".join(",".join(g) for g in self.groups) or "all"
        extra = "".join(f" {k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind}@{self.start_s:.1f}s+{self.length_s:.1f}s {who}{extra}"


def plan(seed: int, nodes: Sequence[str], duration_s: float, kinds: Sequence[str]) -> list[Fault]:
    """Faults starting after the warm-up and ending before ``duration_s``."""
    assert set(kinds) <= set(FAULT_KINDS) and kinds, kinds
    rng = random.Random(f"faultplan/{seed}")
    names = sorted(nodes)
    faults: list[Fault] = []
    cycle: list[str] = []
    t = WARMUP_S
    while True:
        length = round(rng.uniform(*LENGTH_S), 1)
        if t + length > duration_s:
            return faults
        if not cycle:
            cycle = rng.sample(list(kinds), len(kinds))
        faults.append(_draw(rng, cycle.pop(), names, round(t, 1), length))
        t += length + rng.uniform(*GAP_S)


def _draw(rng: random.Random, kind: str, names: list[str], t: float, length: float) -> Fault:
    victim = rng.choice(names)
    match kind:
        case "partition":
            minority = tuple(sorted(rng.sample(names, rng.randint(1, (len(names) - 1) // 2))))
            rest = tuple(n for n in names if n not in minority)
            return Fault(kind, t, length, groups=(minority, rest))
        case "bridge":
            others = [n for n in names if n != victim]
            rng.shuffle(others)
            half = len(others) // 2
            groups = (tuple(sorted(others[:half])), tuple(sorted(others[half:])))
            return Fault(kind, t, length, victim, groups)
        case "asymmetric":
            direction = rng.choice(["cannot_send", "cannot_hear"])
            return Fault(kind, t, length, victim, params={"direction": direction})
        case "delay":
            params = {"delay_ms": rng.randint(20, 200), "jitter_ms": rng.randint(0, 100)}
            return Fault(kind, t, length, params=params)
        case "loss":
            return Fault(kind, t, length, params={"drop": round(rng.uniform(0.05, 0.3), 2)})
        case "clock":
            offset = rng.choice([-1, 1]) * rng.randint(2_000, 30_000)
            return Fault(kind, t, length, victim, params={"offset_ms": offset})
        case "isolate_leader":
            return Fault(kind, t, length)
        case _:
            assert kind in ("kill", "pause", "disk_full"), kind
            return Fault(kind, t, length, victim)


def blocked_pairs(fault: Fault, names: Sequence[str], leader: str | None) -> set[tuple[str, str]]:
    """(sender, receiver) pairs a network partition blocks."""
    pairs: set[tuple[str, str]] = set()
    match fault.kind:
        case "partition" | "bridge":
            a, b = fault.groups
            pairs = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        case "asymmetric":
            others = [n for n in names if n != fault.victim]
            if fault.params["direction"] == "cannot_send":
                pairs = {(fault.victim, n) for n in others}
            else:
                pairs = {(n, fault.victim) for n in others}
        case "isolate_leader" if leader is not None:
            others = [n for n in names if n != leader]
            pairs = {(leader, n) for n in others} | {(n, leader) for n in others}
    return pairs
