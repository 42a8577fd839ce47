"""What a benchmark section returns, and how results are merged, stored and printed."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    value: float
    unit: str
    goal_min: float | None = None  # the value should be at least this
    goal_max: float | None = None  # the value should be at most this

    def ok(self) -> bool | None:
        if self.goal_min is None and self.goal_max is None:
            return None
        low = self.goal_min is None or self.value >= self.goal_min
        high = self.goal_max is None or self.value <= self.goal_max
        return low and high


@dataclass(frozen=True, slots=True)
class SectionResult:
    metrics: list[Metric]
    context: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metrics": {
                m.name: {
                    "value": m.value,
                    "unit": m.unit,
                    "goal_min": m.goal_min,
                    "goal_max": m.goal_max,
                    "ok": m.ok(),
                }
                for m in self.metrics
            },
            "context": self.context,
        }


Section = Callable[[Path], SectionResult]


def rate_per_s(work: Callable[[], int], duration_s: float) -> float:
    """Call ``work`` (which returns units done) until ``duration_s`` passes; units/s."""
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration_s:
        done += work()
    return done / elapsed


def median(values: list[float]) -> float:
    return statistics.median(values)


def merge_results(path: Path, results: dict[str, SectionResult]) -> dict[str, object]:
    """Write ``results`` into the JSON file at ``path``, keeping other sections' keys."""
    merged: dict[str, object] = {}
    if path.exists():
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            merged = loaded
    merged.update({name: r.to_json() for name, r in results.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return merged


def format_table(results: dict[str, SectionResult]) -> str:
    rows = [("section", "metric", "value", "unit", "goal", "ok")]
    for name, result in results.items():
        for m in result.metrics:
            goals = [f">= {m.goal_min:,.6g}"] if m.goal_min is not None else []
            goals += [f"<= {m.goal_max:,.6g}"] if m.goal_max is not None else []
            goal = " ".join(goals)
            ok = {None: "", True: "yes", False: "NO"}[m.ok()]
            rows.append((name, m.name, f"{m.value:,.2f}", m.unit, goal, ok))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or "unknown"."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and resolved.startswith(parts[1]) and len(parts[1]) > len(best):
            best, kind = parts[1], parts[2]
    return kind
