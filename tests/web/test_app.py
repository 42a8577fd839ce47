"""Each endpoint over FakeNodePort: results, validation, and problem+json on every error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from node.httpclient import ApiClient, TransportError
from tests.web.apphelpers import Harness, assert_problem, live_server, self_signed_cert
from web.port import Conflict, Invalid, NotFound, NotLeaderError, PortError, Unavailable
from web.security import ApiLimits, Role
from web.testing import FakeNodePort

MEMBER_FIELDS = {
    "id",
    "role",
    "api_address",
    "state",
    "match_index",
    "applied_index",
    "queue_depth",
    "free_slots",
}


async def test_healthz_needs_no_token() -> None:
    status, _, body = await Harness().call("GET", "/healthz", role=None)
    assert (status, body) == (200, {"status": "ok"})


async def test_readyz_follows_the_port() -> None:
    h = Harness()
    status, _, body = await h.call("GET", "/readyz", role=None)
    assert (status, body) == (200, {"status": "ready"})
    h.port.ready = False
    assert_problem(*await h.call("GET", "/readyz", role=None), 503, "not-ready")


async def test_cluster_has_the_spec_shape() -> None:
    status, headers, body = await Harness().call("GET", "/api/v1/cluster", role=Role.VIEWER)
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    assert set(body) == {"leader", "term", "commit_index", "members"}
    assert (body["leader"], body["term"], body["commit_index"]) == ("n1", 3, 42)
    assert [m["id"] for m in body["members"]] == ["n1", "n2", "n3"]
    assert all(set(m) == MEMBER_FIELDS for m in body["members"])
    assert body["members"][0]["role"] == "leader"
    assert body["members"][1]["api_address"] == "127.0.0.1:8081"


async def test_nodes_pages_through_every_member_with_a_cursor() -> None:
    h = Harness(port=FakeNodePort(members=5))
    seen: list[str] = []
    path = "/api/v1/nodes?limit=2"
    for _ in range(5):
        status, _, body = await h.call("GET", path, role=Role.VIEWER)
        assert status == 200 and len(body["nodes"]) <= 2
        seen += [n["id"] for n in body["nodes"]]
        if body["next_cursor"] is None:
            break
        path = f"/api/v1/nodes?limit=2&cursor={body['next_cursor']}"
    assert seen == ["n1", "n2", "n3", "n4", "n5"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=abc", "limit"),
        ("cursor=%%%", "cursor"),
        ("cursor=Tk9QRQ", "cursor"),  # base64 of "NOPE": not a node id
        ("colour=blue", "colour"),
    ],
)
async def test_nodes_rejects_bad_query_naming_the_parameter(query: str, field: str) -> None:
    status, headers, body = await Harness().call("GET", f"/api/v1/nodes?{query}", role=Role.VIEWER)
    assert_problem(status, headers, body, 422, "invalid-field")
    assert body["field"] == field


async def test_page_size_max_comes_from_the_limits() -> None:
    h = Harness(limits=ApiLimits(page_size_max=2))
    assert (await h.call("GET", "/api/v1/nodes?limit=2"))[0] == 200
    status, _, body = await h.call("GET", "/api/v1/nodes?limit=3")
    assert (status, body["field"]) == (422, "limit")
    status, _, body = await h.call("GET", "/api/v1/nodes")  # default is capped too
    assert status == 200 and len(body["nodes"]) == 2 and body["next_cursor"]


async def test_transfer_leader_to_a_target_and_to_the_best_voter() -> None:
    h = Harness()
    status, _, body = await h.call("POST", "/api/v1/cluster/transfer-leader", json={"target": "n3"})
    assert (status, body) == (200, {"leader": "n3"})
    status, _, body = await h.call("POST", "/api/v1/cluster/transfer-leader")
    assert (status, body) == (200, {"leader": "n1"})
    assert [c[1] for c in h.port.calls] == [("n3",), (None,)]


@pytest.mark.parametrize(
    ("body", "status", "slug", "field"),
    [
        ({"target": "n9"}, 404, "not-found", None),
        ({"target": "N@1"}, 422, "invalid-field", "target"),
        ({"target": 7}, 422, "invalid-field", "target"),
        ({"target": "n2", "force": True}, 422, "invalid-field", "force"),
    ],
)
async def test_transfer_leader_errors(
    body: dict[str, object], status: int, slug: str, field: str | None
) -> None:
    h = Harness()
    got = await h.call("POST", "/api/v1/cluster/transfer-leader", json=body)
    assert_problem(*got, status, slug)
    assert got[2].get("field") == field
    assert h.port.leader == "n1"  # nothing changed


async def test_transfer_to_a_learner_is_a_field_error_from_the_port() -> None:
    h = Harness()
    await h.call("POST", "/api/v1/cluster/members", json={"id": "n4"})
    got = await h.call("POST", "/api/v1/cluster/transfer-leader", json={"target": "n4"})
    assert_problem(*got, 422, "invalid-field")
    assert got[2]["field"] == "target"


async def test_add_member_returns_the_new_view() -> None:
    h = Harness()
    status, _, body = await h.call(
        "POST", "/api/v1/cluster/members", json={"id": "n4", "address": "10.0.0.4:7000"}
    )
    assert status == 200
    assert {m["id"]: m["role"] for m in body["members"]}["n4"] == "learner"
    assert h.port.calls == [("add_member", ("n4", "10.0.0.4:7000"))]


async def test_add_member_normalises_an_ipv6_address() -> None:
    h = Harness()
    await h.call("POST", "/api/v1/cluster/members", json={"id": "n4", "address": "[::1]:7000"})
    assert h.port.calls == [("add_member", ("n4", "[::1]:7000"))]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "id"),
        ({"id": ""}, "id"),
        ({"id": "n4", "address": "nohost"}, "address"),
        ({"id": "n4", "address": "h:99999"}, "address"),
        ({"id": "n4", "address": 7000}, "address"),
        ({"id": "n4", "voter": True}, "voter"),
    ],
)
async def test_add_member_validation_names_the_field_and_changes_nothing(
    body: dict[str, object], field: str
) -> None:
    h = Harness()
    got = await h.call("POST", "/api/v1/cluster/members", json=body)
    assert_problem(*got, 422, "invalid-field")
    assert got[2]["field"] == field
    assert h.port.calls == []


async def test_add_existing_member_conflicts() -> None:
    got = await Harness().call("POST", "/api/v1/cluster/members", json={"id": "n2"})
    assert_problem(*got, 409, "conflict")


async def test_remove_member() -> None:
    h = Harness()
    status, _, body = await h.call("DELETE", "/api/v1/cluster/members/n3")
    assert status == 200 and [m["id"] for m in body["members"]] == ["n1", "n2"]
    assert_problem(*await h.call("DELETE", "/api/v1/cluster/members/n3"), 404, "not-found")
    got = await h.call("DELETE", "/api/v1/cluster/members/Bad!")
    assert_problem(*got, 422, "invalid-field")
    assert got[2]["field"] == "node_id"


async def test_snapshot_returns_its_index() -> None:
    status, _, body = await Harness().call("POST", "/api/v1/cluster/snapshot")
    assert (status, body) == (200, {"index": 42})


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (NotLeaderError("forwarding failed", leader="n2"), 503, "not-leader"),
        (Unavailable("no quorum"), 503, "unavailable"),
        (Conflict("busy"), 409, "conflict"),
        (NotFound("gone"), 404, "not-found"),
        (Invalid("bad", field="target"), 422, "invalid-field"),
    ],
)
async def test_each_port_error_is_translated(error: PortError, status: int, slug: str) -> None:
    h = Harness()
    h.port.fail_next = error
    got = await h.call("POST", "/api/v1/cluster/snapshot")
    assert_problem(*got, status, slug)
    assert got[2]["detail"] == error.detail
    if isinstance(error, NotLeaderError | Unavailable):
        assert got[1]["Retry-After"] == "1"
    if isinstance(error, NotLeaderError):
        assert got[2]["leader"] == "n2"


async def test_a_bug_is_a_500_problem_that_hides_the_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.port.fail_next = RuntimeError("secret internals")  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="rota.http"):
        got = await h.call("POST", "/api/v1/cluster/snapshot")
    assert_problem(*got, 500, "internal")
    assert "secret" not in got[2]["detail"]
    assert "unhandled error" in caplog.text


@pytest.mark.parametrize(
    ("data", "content_type", "status", "slug"),
    [
        ('{"id": "n4",', "application/json", 400, "malformed-json"),
        ("[1, 2]", "application/json", 400, "bad-request"),
        ('"n4"', "application/json", 400, "bad-request"),
        ("[" * 100_000, "application/json", 400, "malformed-json"),
        ('{"id": "n4"}', "text/plain", 415, "unsupported-media-type"),
    ],
)
async def test_bad_bodies_are_rejected_before_the_port(
    data: str, content_type: str, status: int, slug: str
) -> None:
    h = Harness(limits=ApiLimits(max_body_bytes=1_000_000))
    got = await h.call(
        "POST", "/api/v1/cluster/members", data=data, headers={"Content-Type": content_type}
    )
    assert_problem(*got, status, slug)
    assert h.port.calls == []


async def test_oversized_body_is_413_and_changes_nothing() -> None:
    h = Harness(limits=ApiLimits(max_body_bytes=1024))
    big = {"id": "n4", "address": "a" * 2000}
    assert_problem(
        *await h.call("POST", "/api/v1/cluster/members", json=big), 413, "payload-too-large"
    )
    assert h.port.calls == []
    ok = {"id": "n4", "address": "a" * 900 + ".example:7000"}
    got = await h.call("POST", "/api/v1/cluster/members", json=ok)
    assert got[0] == 422 and got[2]["field"] == "address"  # under the limit: validated


async def test_unknown_route_and_method_are_problems() -> None:
    h = Harness()
    assert_problem(*await h.call("GET", "/api/v1/nope"), 404, "not-found")
    got = await h.call("PUT", "/api/v1/cluster")
    assert_problem(*got, 405, "method-not-allowed")
    assert "GET" in got[1]["Allow"]


async def test_serve_reports_its_url_and_shuts_down_on_the_event() -> None:
    h = Harness()
    with trio.fail_after(10):
        async with live_server(h.app) as url:
            assert url.startswith("http://127.0.0.1:")
            status = await trio.to_thread.run_sync(_get_status, url + "/healthz")
            assert status == 200


async def test_serve_speaks_https_when_given_a_certificate(tmp_path: Path) -> None:
    h = Harness()
    cert, key = self_signed_cert(tmp_path)
    with trio.fail_after(10):
        async with live_server(h.app, certfile=cert, keyfile=key) as url:
            assert url.startswith("https://127.0.0.1:")
            client = ApiClient(url, h.token(Role.VIEWER), ca_file=cert)
            view = await trio.to_thread.run_sync(client.get, "/api/v1/cluster")
            assert view["leader"] == "n1"
            untrusting = ApiClient(url, h.token(Role.VIEWER))
            with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                await trio.to_thread.run_sync(untrusting.get, "/api/v1/cluster")


def _get_status(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


async def test_schedule_preview_answers_viewers_and_names_the_failing_field() -> None:
    h = Harness()
    body = {"schedule": {"cron": "*/5 * * * *"}, "count": 5}
    status, _, answer = await h.call(
        "POST", "/api/v1/schedules:preview", role=Role.VIEWER, json=body
    )
    assert status == 200 and len(answer["next"]) == 5
    bad = {"schedule": {"cron": "* *"}}
    status, headers, problem = await h.call("POST", "/api/v1/schedules:preview", json=bad)
    assert_problem(status, headers, problem, 422, "invalid-field")
    assert problem["field"] == "schedule.cron"
    assert h.scheduler.calls == [("preview_schedule", body), ("preview_schedule", bad)]
    status, headers, problem = await h.call("POST", "/api/v1/schedules:preview", json=[1])
    assert_problem(status, headers, problem, 400, "bad-request")
    assert len(h.scheduler.calls) == 2  # refused before the port
