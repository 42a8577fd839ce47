"""Every Prometheus metric a node exports (SPEC.md "Metrics"), in one dedicated registry.

Rules:
- Names carry the ``rota_`` prefix and base units (seconds, bytes); counters end in
  ``_total``. Help texts say what is counted and, for histograms, what one sample is.
- Labels are bounded: each labelled metric has a closed set of values, enforced by
  the method that updates it (an unknown value is a bug and fails an assert), and
  all children are created up front so every series exists from the first scrape.
  HTTP routes are route templates from the app's table; a runaway caller is still
  capped at ``HTTP_ROUTES_MAX`` distinct routes (the excess is labelled ``other``).
- One registry per ``Metrics`` object (never the global default), so tests and
  several nodes in one process do not collide.
- Unlabelled gauges and histograms are public attributes the daemon sets directly;
  labelled metrics are updated through methods that check their label values.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from web.port import MEMBER_STATES, HttpMetrics

PROPOSAL_OUTCOMES = ("committed", "not_committed", "unknown", "not_leader", "dropped")
MISFIRE_POLICIES = ("skip", "run_once", "run_all")
RUN_OUTCOMES = ("succeeded", "failed", "timed_out", "cancelled", "skipped")
STEAL_DIRECTIONS = ("in", "out")  # in: runs this node took from others; out: taken from it
PRIORITIES = tuple(range(10))
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER")
HTTP_ROUTES_MAX = 64
OTHER = "other"

BATCH_ENTRIES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
FSYNC_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENESS_SECONDS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)  # fine around the 250 ms fire-lateness goal
HTTP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# The client library's ``*_created`` series (one per counter/histogram child) double
# the series count and are ignored by Prometheus 2.x. The switch is process-wide;
# this module owns metrics for the whole process.
disable_created_metrics()  # type: ignore[no-untyped-call]


def _version() -> str:
    try:
        return importlib.metadata.version("rota")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The node's metrics. Implements ``web.port.HttpMetrics`` for the web layer."""

    def __init__(self, version: str | None = None) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

        # Raft
        self.raft_term = Gauge("rota_raft_term", "Current Raft term of this node.", registry=r)
        self.raft_is_leader = Gauge(
            "rota_raft_is_leader", "1 if this node is the Raft leader, else 0.", registry=r
        )
        self.raft_has_leader = Gauge(
            "rota_raft_has_leader", "1 if this node knows a Raft leader, else 0.", registry=r
        )
        self.raft_leader_changes = Counter(
            "rota_raft_leader_changes_total",
            "Times this node saw the Raft leader change to a new node.",
            registry=r,
        )
        self.raft_commit_index = Gauge(
            "rota_raft_commit_index", "Highest Raft log index known to be committed.", registry=r
        )
        self.raft_applied_index = Gauge(
            "rota_raft_applied_index",
            "Highest Raft log index applied to this node's state machine.",
            registry=r,
        )
        self._proposals = Counter(
            "rota_raft_proposals_total",
            "Proposals made through this node, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.raft_append_batch_entries = Histogram(
            "rota_raft_append_batch_entries",
            "Entries per AppendEntries message sent by the leader.",
            buckets=BATCH_ENTRIES_BUCKETS,
            registry=r,
        )
        self.storage_fsync_duration = Histogram(
            "rota_storage_fsync_duration_seconds",
            "Duration of one synced LMDB write transaction (one per Raft Ready).",
            buckets=FSYNC_SECONDS_BUCKETS,
            registry=r,
        )

        # Scheduler
        self.fires = Counter(
            "rota_fires_total", "Schedule slots fired (committed Fire entries).", registry=r
        )
        self.fire_lateness = Histogram(
            "rota_fire_lateness_seconds",
            "Committed Fire time minus the schedule slot it fired.",
            buckets=LATENESS_SECONDS_BUCKETS,
            registry=r,
        )
        self.fire_applied_lateness = Histogram(
            "rota_fire_applied_lateness_seconds",
            "When the leader applied a Fire (its run exists and can be placed) minus the slot.",
            buckets=LATENESS_SECONDS_BUCKETS,
            registry=r,
        )
        self._misfires = Counter(
            "rota_misfires_total",
            "Missed schedule slots handled by a misfire policy, by policy.",
            ["policy"],
            registry=r,
        )
        self._runs = Counter(
            "rota_runs_total", "Runs finished on this node, by outcome.", ["outcome"], registry=r
        )
        self.run_start_delay = Histogram(
            "rota_run_start_delay_seconds",
            "Time from a run being queued to it starting on this node.",
            buckets=LATENESS_SECONDS_BUCKETS,
            registry=r,
        )
        self._queue_depth = Gauge(
            "rota_queue_depth", "Runs queued on this node, by priority.", ["priority"], registry=r
        )
        self.runs_running = Gauge(
            "rota_runs_running", "Runs executing on this node now.", registry=r
        )
        self._steals = Counter(
            "rota_steals_total",
            "Runs moved by work stealing: in = taken by this node, out = taken from it.",
            ["direction"],
            registry=r,
        )

        # Gossip
        self._members = Gauge(
            "rota_members", "Cluster members known by gossip, by state.", ["state"], registry=r
        )

        # HTTP
        self._http_requests = Counter(
            "rota_http_requests_total",
            "HTTP requests served, by route template, method and status code.",
            ["route", "method", "code"],
            registry=r,
        )
        self._http_duration = Histogram(
            "rota_http_request_duration_seconds",
            "Time to serve one HTTP request, by route template.",
            ["route"],
            buckets=HTTP_SECONDS_BUCKETS,
            registry=r,
        )
        self._http_routes: set[str] = set()

        build_info = Gauge(
            "rota_build_info", "Always 1; labelled with the Rota version.", ["version"], registry=r
        )
        build_info.labels(version=version or _version()).set(1)

        self._leader: str | None = None
        _precreate(self._proposals, PROPOSAL_OUTCOMES)
        _precreate(self._misfires, MISFIRE_POLICIES)
        _precreate(self._runs, RUN_OUTCOMES)
        _precreate(self._steals, STEAL_DIRECTIONS)
        _precreate(self._queue_depth, (str(p) for p in PRIORITIES))
        _precreate(self._members, sorted(MEMBER_STATES))

    # -- Raft

    def observe_leader(self, leader: str | None, self_id: str) -> None:
        """Record who leads now; a change to a different, known leader is counted."""
        if leader is not None and leader != self._leader:
            self.raft_leader_changes.inc()
        self._leader = leader
        self.raft_has_leader.set(leader is not None)
        self.raft_is_leader.set(leader is not None and leader == self_id)

    def proposal(self, outcome: str) -> None:
        assert outcome in PROPOSAL_OUTCOMES, outcome
        self._proposals.labels(outcome=outcome).inc()

    # -- scheduler (``node.scheduler.SchedulerEvents``)

    def fired(self, lateness_s: float, applied_s: float) -> None:
        """One slot fired by this node as leader: committed ``lateness_s`` after the
        slot, applied here ``applied_s`` after it."""
        self.fires.inc()
        self.fire_lateness.observe(max(0.0, lateness_s))
        self.fire_applied_lateness.observe(max(0.0, applied_s))

    def run_started(self, delay_s: float) -> None:
        """A run started on this node ``delay_s`` after it became ready."""
        self.run_start_delay.observe(max(0.0, delay_s))

    def misfire(self, policy: str, slots: int = 1) -> None:
        assert policy in MISFIRE_POLICIES and slots >= 0, (policy, slots)
        self._misfires.labels(policy=policy).inc(slots)

    def run_finished(self, outcome: str) -> None:
        assert outcome in RUN_OUTCOMES, outcome
        self._runs.labels(outcome=outcome).inc()

    def set_queue_depth(self, priority: int, depth: int) -> None:
        assert priority in PRIORITIES and depth >= 0, (priority, depth)
        self._queue_depth.labels(priority=str(priority)).set(depth)

    def steal(self, direction: str, runs: int) -> None:
        assert direction in STEAL_DIRECTIONS and runs >= 0, (direction, runs)
        self._steals.labels(direction=direction).inc(runs)

    # -- gossip

    def set_members(self, counts: dict[str, int]) -> None:
        """Set member counts per state; states not given are set to 0."""
        assert set(counts) <= MEMBER_STATES, counts
        for state in MEMBER_STATES:
            self._members.labels(state=state).set(counts.get(state, 0))

    # -- HTTP (web.port.HttpMetrics)

    def observe_http(self, route: str, method: str, code: int, duration_s: float) -> None:
        if route not in self._http_routes:
            if len(self._http_routes) >= HTTP_ROUTES_MAX:
                route = OTHER
            else:
                self._http_routes.add(route)
        method = method if method in HTTP_METHODS else "OTHER"
        code_label = str(code) if 100 <= code <= 599 else OTHER
        self._http_requests.labels(route=route, method=method, code=code_label).inc()
        self._http_duration.labels(route=route).observe(max(0.0, duration_s))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of this registry and its content type.

        Declared as text format 0.0.4, which every Prometheus 2.x scraper accepts; our
        names are all legacy-valid, so the body is the same in either version."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4


if TYPE_CHECKING:

    def _is_an_http_metrics_sink(metrics: Metrics) -> HttpMetrics:
        return metrics  # mypy proves Metrics satisfies the web layer's port


def _precreate(metric: Counter | Gauge, values: Iterable[str]) -> None:
    for value in values:
        metric.labels(value)
