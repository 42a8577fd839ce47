"""Default deny, the role matrix, every way a token can be wrong, rate limits, metric labels."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from node.auth import mint_token
from tests.web.apphelpers import NOW_S, Harness, Keys, assert_problem
from web.app import ROUTES, UNMATCHED_ROUTE
from web.security import ApiLimits, Role, TokenBucketLimiter

# (method, route template, concrete path, JSON body, least role) -- written out by hand,
# so this table is an independent statement of the policy, checked against ROUTES.
PROTECTED: list[tuple[str, str, str, dict[str, object] | None, Role]] = [
    ("GET", "/api/v1/cluster", "/api/v1/cluster", None, Role.VIEWER),
    ("GET", "/api/v1/nodes", "/api/v1/nodes", None, Role.VIEWER),
    ("GET", "/metrics", "/metrics", None, Role.VIEWER),
    (
        "POST",
        "/api/v1/cluster/transfer-leader",
        "/api/v1/cluster/transfer-leader",
        {"target": "n2"},
        Role.ADMIN,
    ),
    ("POST", "/api/v1/cluster/members", "/api/v1/cluster/members", {"id": "n9"}, Role.ADMIN),
    ("DELETE", "/api/v1/cluster/members/<node_id>", "/api/v1/cluster/members/n3", None, Role.ADMIN),
    ("POST", "/api/v1/cluster/snapshot", "/api/v1/cluster/snapshot", None, Role.ADMIN),
    ("POST", "/api/v1/jobs", "/api/v1/jobs", {"name": "x"}, Role.OPERATOR),
    ("GET", "/api/v1/jobs", "/api/v1/jobs", None, Role.VIEWER),
    ("GET", "/api/v1/jobs/<job_id>", "/api/v1/jobs/j1", None, Role.VIEWER),
    ("PUT", "/api/v1/jobs/<job_id>", "/api/v1/jobs/j1", {"name": "x"}, Role.OPERATOR),
    ("PATCH", "/api/v1/jobs/<job_id>", "/api/v1/jobs/j1", {"paused": True}, Role.OPERATOR),
    ("DELETE", "/api/v1/jobs/<job_id>", "/api/v1/jobs/j1", None, Role.OPERATOR),
    ("POST", "/api/v1/jobs/<job_id>/trigger", "/api/v1/jobs/j1/trigger", None, Role.OPERATOR),
    ("POST", "/api/v1/jobs/<job_id>/pause", "/api/v1/jobs/j1/pause", None, Role.OPERATOR),
    ("POST", "/api/v1/jobs/<job_id>/resume", "/api/v1/jobs/j1/resume", None, Role.OPERATOR),
    ("GET", "/api/v1/jobs/<job_id>/next", "/api/v1/jobs/j1/next", None, Role.VIEWER),
    ("GET", "/api/v1/jobs/<job_id>/runs", "/api/v1/jobs/j1/runs", None, Role.VIEWER),
    (
        "POST",
        "/api/v1/schedules:preview",
        "/api/v1/schedules:preview",
        {"schedule": {"cron": "* * * * *"}},
        Role.VIEWER,
    ),
    ("POST", "/api/v1/tasks", "/api/v1/tasks", {"executor": {}}, Role.OPERATOR),
    ("POST", "/api/v1/tasks:batch", "/api/v1/tasks:batch", {"tasks": []}, Role.OPERATOR),
    ("GET", "/api/v1/runs", "/api/v1/runs", None, Role.VIEWER),
    ("GET", "/api/v1/runs/<run_id>", "/api/v1/runs/r1", None, Role.VIEWER),
    ("POST", "/api/v1/runs/<run_id>/cancel", "/api/v1/runs/r1/cancel", None, Role.OPERATOR),
    ("GET", "/api/v1/runs/<run_id>/output", "/api/v1/runs/r1/output", None, Role.VIEWER),
    ("GET", "/api/v1/events", "/api/v1/events", None, Role.VIEWER),
]
PUBLIC = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/<name>"),
    ("GET", "/"),
    ("GET", "/static/<path:filename>"),
]


def test_the_matrix_covers_every_route() -> None:
    declared = {(m, r.rule) for r in ROUTES for m in r.methods}
    assert declared == {(m, t) for m, t, *_ in PROTECTED} | set(PUBLIC)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
@pytest.mark.parametrize(
    ("method", "template", "path", "body", "least"),
    PROTECTED,
    ids=lambda x: x if isinstance(x, str) else "",
)
async def test_role_matrix(
    role: Role, method: str, template: str, path: str, body: Any, least: Role
) -> None:
    h = Harness()
    status, headers, payload = await h.call(method, path, role=role, json=body)
    if role.allows(least):
        assert 200 <= status < 300, (status, payload)
    else:
        assert_problem(status, headers, payload, 403, "forbidden")
        assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
        assert h.port.calls == []
        assert h.scheduler.calls == []


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _claims(**overrides: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": "rota",
        "aud": "rota-api",
        "sub": "mallory",
        "role": "admin",
        "iat": int(NOW_S),
        "exp": int(NOW_S) + 3600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(
    header: Mapping[str, object], claims: Mapping[str, object], signature: bytes = b""
) -> str:
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    return head + "." + _b64(signature)


def bad_token(h: Harness, case: str) -> str:
    """A token that must be refused, built the way an attacker or a bug would build it."""
    k, other = h.keys, Keys()

    def sign(claims: dict[str, object], key: Any = k.private, kid: str | None = k.kid) -> str:
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(claims, key, algorithm="EdDSA", headers=headers)

    public_pem = k.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_head = {"alg": "HS256", "kid": k.kid, "typ": "JWT"}
    hs_unsigned = _unsigned(hs_head, _claims()).rsplit(".", 1)[0]
    hs_signature = hmac.new(public_pem, hs_unsigned.encode(), hashlib.sha256).digest()
    cases: dict[str, Callable[[], str]] = {
        "expired": lambda: mint_token(k.private, k.kid, Role.ADMIN, 60, "x", now=NOW_S - 61),
        "wrong_audience": lambda: sign(_claims(aud="someone-else")),
        "wrong_issuer": lambda: sign(_claims(iss="evil")),
        "wrong_key_known_kid": lambda: sign(_claims(), key=other.private),
        "unknown_kid": lambda: sign(_claims(), key=other.private, kid=other.kid),
        "no_kid": lambda: sign(_claims(), kid=None),
        "alg_none": lambda: _unsigned({"alg": "none", "kid": k.kid}, _claims()),
        "hs256_with_public_key": lambda: hs_unsigned + "." + _b64(hs_signature),
        "malformed": lambda: "not-a-token",
        "garbage_segments": lambda: "a.b.c",
        "tampered_payload": lambda: _swap_payload(sign(_claims(role="viewer")), _claims()),
        "missing_exp": lambda: sign(_claims(exp=None)),
        "missing_iat": lambda: sign(_claims(iat=None)),
        "missing_sub": lambda: sign(_claims(sub=None)),
        "missing_iss": lambda: sign(_claims(iss=None)),
        "missing_aud": lambda: sign(_claims(aud=None)),
        "missing_role": lambda: sign(_claims(role=None)),
        "unknown_role": lambda: sign(_claims(role="root")),
        "issued_in_the_future": lambda: sign(_claims(iat=int(NOW_S) + 3600)),
        "too_long": lambda: sign(_claims(sub="x" * 200, pad="y" * 5000)),
    }
    return cases[case]()


def _swap_payload(token: str, claims: dict[str, object]) -> str:
    head, _, signature = token.split(".")
    return f"{head}.{_b64(json.dumps(claims).encode())}.{signature}"


BAD_TOKEN_CASES = [
    "expired",
    "wrong_audience",
    "wrong_issuer",
    "wrong_key_known_kid",
    "unknown_kid",
    "no_kid",
    "alg_none",
    "hs256_with_public_key",
    "malformed",
    "garbage_segments",
    "tampered_payload",
    "missing_exp",
    "missing_iat",
    "missing_sub",
    "missing_iss",
    "missing_aud",
    "missing_role",
    "unknown_role",
    "issued_in_the_future",
    "too_long",
]


@pytest.mark.parametrize("case", BAD_TOKEN_CASES)
async def test_every_protected_route_refuses_a_bad_token(case: str) -> None:
    h = Harness()
    token = bad_token(h, case)
    for method, _, path, body, _ in PROTECTED:
        headers = {"Authorization": f"Bearer {token}"}
        status, got_headers, payload = await h.call(
            method, path, role=None, headers=headers, json=body
        )
        assert_problem(status, got_headers, payload, 401, "unauthorized")
        assert got_headers["WWW-Authenticate"].startswith(
            'Bearer realm="rota", error="invalid_token"'
        )
        assert token not in payload["detail"]
    assert h.port.calls == []


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer a b"],
)
async def test_missing_or_malformed_authorization_is_401(authorization: str | None) -> None:
    h = Harness()
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, _, path, body, _ in PROTECTED:
        got = await h.call(method, path, role=None, headers=headers, json=body)
        assert_problem(*got, 401, "unauthorized")
        assert got[1]["WWW-Authenticate"].startswith('Bearer realm="rota"')


async def test_a_good_token_in_a_lowercase_scheme_works() -> None:
    h = Harness()
    headers = {"Authorization": f"bearer {h.token(Role.VIEWER)}"}
    assert (await h.call("GET", "/api/v1/cluster", role=None, headers=headers))[0] == 200


async def test_public_routes_need_no_token_but_unknown_routes_do() -> None:
    h = Harness()
    examples = {"<name>": "init.js", "<path:filename>": "app.js"}
    for method, template in PUBLIC:
        path = template
        for param, value in examples.items():
            path = path.replace(param, value)
        assert (await h.call(method, path, role=None))[0] == 200, path
    assert_problem(*await h.call("GET", "/api/v2/secret", role=None), 401, "unauthorized")
    assert_problem(*await h.call("GET", "/api/v2/secret", role=Role.VIEWER), 404, "not-found")
    assert_problem(*await h.call("PATCH", "/healthz", role=None), 401, "unauthorized")


async def test_metrics_can_be_made_public() -> None:
    h = Harness(limits=ApiLimits(metrics_public=True))
    status, headers, body = await h.call("GET", "/metrics", role=None)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "rota_build_info" in body


async def test_rate_limit_is_per_token_and_refills() -> None:
    h = Harness(limits=ApiLimits(rate_limit_per_s=1.0, rate_limit_burst=2))
    alice = {"Authorization": f"Bearer {h.token(Role.VIEWER, sub='alice')}"}
    bob = {"Authorization": f"Bearer {h.token(Role.VIEWER, sub='bob')}"}
    for _ in range(2):
        assert (await h.call("GET", "/api/v1/cluster", role=None, headers=alice))[0] == 200
    got = await h.call("GET", "/api/v1/cluster", role=None, headers=alice)
    assert_problem(*got, 429, "rate-limited")
    assert got[1]["Retry-After"] == "1"
    assert (await h.call("GET", "/api/v1/cluster", role=None, headers=bob))[0] == 200
    h.mono.now += 1.0
    assert (await h.call("GET", "/api/v1/cluster", role=None, headers=alice))[0] == 200
    # Forbidden attempts spend tokens too (bob is back to a full bucket of 2).
    statuses = [
        (await h.call("POST", "/api/v1/cluster/snapshot", role=None, headers=bob))[0]
        for _ in range(3)
    ]
    assert statuses == [403, 403, 429]
    assert h.port.calls == []
    # Public routes are not limited.
    for _ in range(5):
        assert (await h.call("GET", "/healthz", role=None))[0] == 200


async def test_rate_limit_zero_disables_it() -> None:
    h = Harness(limits=ApiLimits(rate_limit_per_s=0, rate_limit_burst=1))
    for _ in range(20):
        assert (await h.call("GET", "/api/v1/cluster", role=Role.VIEWER))[0] == 200


def test_limiter_table_is_bounded_and_evicts_the_least_recent() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(1.0, 1, buckets_max=2, clock=lambda: now[0])
    assert limiter.acquire(b"a") == 0.0
    assert limiter.acquire(b"b") == 0.0
    assert limiter.acquire(b"a") == pytest.approx(1.0)  # empty: wait one second
    assert limiter.acquire(b"c") == 0.0  # evicts b (a was used more recently)
    stats = limiter.statistics()
    assert (stats.buckets, stats.admitted_total, stats.rejected_total) == (2, 3, 1)
    assert limiter.acquire(b"b") == 0.0  # b came back with a full bucket
    now[0] = 0.5
    assert limiter.acquire(b"c") == pytest.approx(0.5)


def _label_values(exposition: str, metric: str, label: str) -> set[str]:
    pattern = re.compile(rf'^{metric}{{[^}}]*\b{label}="([^"]*)"', re.M)
    return set(pattern.findall(exposition))


async def test_metrics_use_route_templates_and_bounded_labels() -> None:
    h = Harness()
    for i in range(1, 4):
        await h.call("DELETE", f"/api/v1/cluster/members/n{i}x")
        await h.call("GET", f"/no/such/path/{i}")
    await h.call("BREW", "/api/v1/cluster")
    await h.call("GET", "/healthz", role=None)
    text = h.metrics.render()[0].decode()
    routes = _label_values(text, "rota_http_requests_total", "route")
    assert routes == {"/api/v1/cluster/members/<node_id>", UNMATCHED_ROUTE, "/healthz"}
    assert _label_values(text, "rota_http_request_duration_seconds_bucket", "route") == routes
    assert _label_values(text, "rota_http_requests_total", "method") == {"DELETE", "GET", "OTHER"}
    assert _label_values(text, "rota_http_requests_total", "code") == {"200", "404", "405"}
