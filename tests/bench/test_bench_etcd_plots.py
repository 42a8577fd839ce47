"""Pure helpers of the etcd, scaling and plots sections: etcd's status JSON, the put
body, timestamp buckets, the longest gap, wrk's latency distribution. No clusters,
no timing."""

from __future__ import annotations

import base64
import json

import pytest

from bench.etcd import parse_status, put_body
from bench.load import parse_wrk_output, wrk_result
from bench.plots import bucket_counts, longest_zero_run

# What etcd 3.4's gateway answers to POST /v3/maintenance/status (uint64s as strings).
STATUS = {
    "header": {
        "cluster_id": "14841639068965178418",
        "member_id": "10276657743932975437",
        "revision": "5",
        "raft_term": "2",
    },
    "version": "3.4.23",
    "dbSize": "20480",
    "leader": "10276657743932975437",
    "raftIndex": "9",
    "raftTerm": "2",
    "raftAppliedIndex": "9",
    "dbSizeInUse": "20480",
}


def test_parse_status_of_the_leader() -> None:
    s = parse_status(STATUS)
    assert s.member_id == 10276657743932975437
    assert s.leader_id == s.member_id and s.is_leader
    assert (s.raft_index, s.raft_term) == (9, 2)


def test_parse_status_of_a_follower_and_of_no_leader() -> None:
    follower = parse_status({**STATUS, "leader": "42"})
    assert follower.leader_id == 42 and not follower.is_leader
    # No leader: 0, or the field left out (protobuf JSON may omit zero values).
    lost = parse_status({k: v for k, v in STATUS.items() if k != "leader"})
    assert lost.leader_id == 0 and not lost.is_leader


def test_parse_status_needs_a_header() -> None:
    with pytest.raises(AssertionError):
        parse_status({"leader": "1"})


def test_put_body_is_base64() -> None:
    body = json.loads(put_body(b"k/1", b'{"a": 1}'))
    assert base64.b64decode(body["key"]) == b"k/1"
    assert base64.b64decode(body["value"]) == b'{"a": 1}'


def test_bucket_counts() -> None:
    times = [10.0, 10.05, 10.1, 10.25, 10.99, 9.99, 11.0]
    assert bucket_counts(times, 10.0, 11.0, 0.1) == [2, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    # a partial last bucket still counts what falls in it
    assert bucket_counts([0.0, 0.24], 0.0, 0.25, 0.1) == [1, 0, 1]


def test_longest_zero_run() -> None:
    counts = [5, 0, 5, 5, 0, 0, 0, 3, 0, 0]
    assert longest_zero_run(counts, 0) == (4, 3)
    assert longest_zero_run(counts, 5) == (5, 2)
    assert longest_zero_run([1, 2, 3], 1) == (1, 0)
    assert longest_zero_run([1, 0, 0], 1) == (1, 2)


def test_wrk_latency_distribution() -> None:
    line = (
        'ROTA_WRK {"duration_us": 2000000, "socket_errors": 0, "p50_us": 9000, '
        '"p99_us": 20000, "statuses": {"200": 10}, "cdf_us": [[1, 4000], [99.9, 25000]]}'
    )
    r = wrk_result(parse_wrk_output(line), 2.0)
    assert r.latency_cdf_ms == [(1.0, 4.0), (99.9, 25.0)]
    # an older summary line without the distribution still parses
    old = line.replace(', "cdf_us": [[1, 4000], [99.9, 25000]]', "")
    assert wrk_result(parse_wrk_output(old), 2.0).latency_cdf_ms == []
