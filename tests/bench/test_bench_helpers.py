"""The benchmark sections' pure helpers: percentiles, Prometheus text, wrk's summary
line, job bodies, memory and makespan arithmetic. No clusters, no timing."""

from __future__ import annotations

import json
import math

import pytest

from bench.agents import agent_flags
from bench.core import (
    histogram_buckets,
    histogram_fraction_at_most,
    histogram_quantile,
    metric_samples,
    percentile,
)
from bench.fires import job_body, parse_instant_ms, size_tag
from bench.load import LoadResult, parse_wrk_output, wrk_result
from bench.rss import per_job_bytes
from bench.steal import ideal_makespan_s, makespan_s

EXPOSITION = """\
# HELP rota_fire_lateness_seconds Committed Fire time minus the schedule slot it fired.
# TYPE rota_fire_lateness_seconds histogram
rota_fire_lateness_seconds_bucket{le="0.1"} 0.0
rota_fire_lateness_seconds_bucket{le="0.25"} 100.0
rota_fire_lateness_seconds_bucket{le="0.5"} 100.0
rota_fire_lateness_seconds_bucket{le="+Inf"} 100.0
rota_fire_lateness_seconds_count 100.0
rota_steals_total{direction="in"} 3.0
rota_steals_total{direction="out"} 1.0
rota_fires_total 100.0
"""


def test_percentile_is_a_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 50) == 7.0
    with pytest.raises(AssertionError):
        percentile([], 50)


def test_metric_samples_keep_labels() -> None:
    assert metric_samples(EXPOSITION, "rota_steals_total") == [
        ({"direction": "in"}, 3.0),
        ({"direction": "out"}, 1.0),
    ]
    assert metric_samples(EXPOSITION, "rota_fires_total") == [({}, 100.0)]
    assert metric_samples(EXPOSITION, "rota_fires") == []


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = histogram_buckets(EXPOSITION, "rota_fire_lateness_seconds")
    assert buckets[0] == (0.1, 0.0) and math.isinf(buckets[-1][0])
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.175)
    assert histogram_quantile(buckets, 0.99) == pytest.approx(0.2485)
    assert histogram_quantile([(1.0, 1.0), (math.inf, 10.0)], 0.99) == 1.0  # in +Inf
    assert histogram_quantile([(1.0, 0.0), (math.inf, 0.0)], 0.5) is None
    assert histogram_quantile([], 0.5) is None
    assert histogram_fraction_at_most(buckets, 0.25) == 1.0
    twice = histogram_buckets(EXPOSITION + EXPOSITION, "rota_fire_lateness_seconds")
    assert twice[1] == (0.25, 200.0)  # two nodes' expositions: counts add up
    assert histogram_fraction_at_most(buckets, 0.1) == 0.0
    assert histogram_fraction_at_most(buckets, 0.2) is None  # not a bucket bound
    assert histogram_fraction_at_most([], 0.25) is None


def test_wrk_summary_line_parses_into_a_result() -> None:
    stdout = (
        "Running 5s test @ http://127.0.0.1:27200\n  2 threads and 64 connections\n"
        'ROTA_WRK {"duration_us": 5000000, "socket_errors": 2, "p50_us": 1500, '
        '"p99_us": 9000, "statuses": {"201": 900, "503": 5}}\n'
    )
    parsed = parse_wrk_output(stdout)
    result = wrk_result(parsed, 5.0)
    assert (result.ok, result.not_ok, result.socket_errors) == (900, 5, 2)
    assert result.ok_per_s() == 180.0
    assert (result.latency_p50_ms, result.latency_p99_ms) == (1.5, 9.0)
    assert result.to_json()["statuses"] == {"201": 900, "503": 5}
    with pytest.raises(ValueError, match="no ROTA_WRK line"):
        parse_wrk_output("Running 5s test\n")


def test_only_2xx_answers_count_as_done() -> None:
    result = LoadResult("python", 2.0, {200: 4, 201: 6, 429: 3, 500: 1})
    assert (result.ok, result.not_ok, result.ok_per_s()) == (10, 4, 5.0)
    assert LoadResult("wrk", 0.0, {}).ok_per_s() == 0.0


def test_job_bodies_and_instants() -> None:
    body = json.loads(job_body("due-1", 3600, 1_800_000_123))
    assert body["schedule"] == {"every_s": 3600, "phase_s": 1_800_000_123 % 3600}
    assert body["name"] == "due-1" and body["executor"]["type"] == "shell"
    assert parse_instant_ms("2026-12-04T16:02:56.735Z") == 1_796_400_176_735
    assert parse_instant_ms("2026-12-04T16:02:56Z") == 1_796_400_176_000
    assert [size_tag(n) for n in (10_000, 100_000, 1500)] == ["10k", "100k", "1500"]


def test_rss_per_job_and_agent_flags() -> None:
    assert per_job_bytes(60_000, 60_002, 1024) == 2.0
    assert per_job_bytes(60_000, 59_999, 1024) == -1.0  # the heap may shrink: reported as is
    assert agent_flags({"worker_slots": 0, "metrics_public": True}) == [
        "--worker-slots",
        "0",
        "--metrics-public",
        "true",
    ]


def test_ideal_makespan_and_makespan() -> None:
    assert ideal_makespan_s([1.0] * 84, 7) == pytest.approx(13.0)
    assert ideal_makespan_s([4.0, 1.0, 1.0], 2) == pytest.approx(7.0)
    assert makespan_s(1_000, [2_500, 11_000, 3_000]) == 10.0
    with pytest.raises(AssertionError):
        ideal_makespan_s([], 3)
