"""What a benchmark section returns, and how results are merged, stored and printed;
plus the arithmetic the sections share: nearest-rank percentiles, sizes from the
environment, and reading Prometheus text (samples, histogram buckets and quantiles)."""

from __future__ import annotations

import json
import math
import os
import re
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


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``: the nearest rank, no interpolation,
    so a reported p99 is a value that was measured."""
    assert values and 0 <= q <= 100, (len(values), q)
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def env_int(name: str, default: int) -> int:
    """An integer size from the environment (``ROTA_BENCH_*``), for quick runs."""
    return int(os.environ.get(name, str(default)).replace("_", ""))


def env_ints(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """A comma-separated list of sizes from the environment, e.g. ``10000,100000``."""
    text = os.environ.get(name)
    if text is None:
        return default
    return tuple(int(p.replace("_", "")) for p in text.split(",") if p.strip())


# ---------------------------------------------------------------- Prometheus text

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = dict[str, str]


def metric_samples(text: str, name: str) -> list[tuple[Labels, float]]:
    """Every sample of metric ``name`` in a Prometheus text exposition, with its labels."""
    found: list[tuple[Labels, float]] = []
    for line in text.splitlines():
        m = _SAMPLE_RE.match(line)
        if m is None or m.group(1) != name:
            continue
        labels = dict(_LABEL_RE.findall(m.group(2) or ""))
        found.append((labels, float(m.group(3))))
    return found


def histogram_buckets(text: str, name: str) -> list[tuple[float, float]]:
    """The cumulative ``(upper bound, count)`` buckets of histogram ``name``, in order,
    summed over its other labels and over every exposition in ``text`` (several
    nodes' ``/metrics`` joined give the cluster's histogram)."""
    counts: dict[float, float] = {}
    for labels, value in metric_samples(text, name + "_bucket"):
        if "le" in labels:
            le = float(labels["le"])
            counts[le] = counts.get(le, 0.0) + value
    return sorted(counts.items())


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' ``histogram_quantile``: the ``q`` (0..1) quantile from cumulative
    buckets, interpolated linearly inside the bucket that holds it (the lowest bucket
    starts at 0; a quantile in the +Inf bucket is the highest finite bound). None
    without observations."""
    assert 0 <= q <= 1, q
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def histogram_fraction_at_most(buckets: list[tuple[float, float]], bound: float) -> float | None:
    """The exact fraction of observations <= ``bound`` when ``bound`` is one of the
    bucket bounds (a goal like "p99 <= 250 ms" is "this fraction >= 0.99"); None when
    it is not a bound or nothing was observed."""
    total = buckets[-1][1] if buckets else 0.0
    count = next((n for le, n in buckets if le == bound), None)
    return None if count is None or total <= 0 else count / total


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
