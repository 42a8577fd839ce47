"""The API's security policy: roles, the token-verifier seam, limits and rate limiting.

Rules:
- Default deny. A route is public only when it says so; every other route needs a
  verified bearer token whose role ranks at least the route's role
  (viewer < operator < admin).
- Token verification is a seam (``TokenVerifierPort``): ``node/auth.py`` implements
  it with Ed25519 JWTs. ``InvalidToken.reason`` is shown to clients and must never
  contain the token or key material.
- Rate limiting is per verified token (keyed by the token's SHA-256, never by the
  token itself), a token bucket, in a bounded LRU table: an evicted bucket comes
  back full, which only matters to a client holding more tokens than the table.
- This module does no I/O and imports nothing of Quart, so ``node/`` can use it cheaply.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class Role(enum.Enum):
    """API roles in increasing power: each includes the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, required: Role) -> bool:
        """True when a holder of this role may use a route that requires ``required``."""
        return self.rank >= required.rank


_RANKS = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
ROLE_NAMES: tuple[str, ...] = tuple(r.value for r in Role)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    role: Role
    expires_at_s: float  # Unix time
    token_key: bytes = field(repr=False)  # SHA-256 of the token: a bucket key, not a secret


class InvalidToken(Exception):
    """The bearer token was rejected. ``reason`` is short and safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenVerifierPort(Protocol):
    """Verifies a bearer token; implemented by ``node.auth.TokenVerifier``."""

    def verify(self, token: str) -> Principal:
        """Return the token's principal or raise ``InvalidToken``. Must be fast when cached."""
        ...


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """Bounds the HTTP API enforces. Built from ``NodeConfig`` by the daemon.

    ``rate_limit_per_s == 0`` disables rate limiting (benchmarks); ``metrics_public``
    serves ``/metrics`` without a token (for scrapers that cannot send one; the
    default requires a viewer token, which Prometheus sends via ``authorization``).
    """

    max_body_bytes: int = 1_048_576
    page_size_max: int = 500
    rate_limit_per_s: float = 200.0
    rate_limit_burst: int = 400
    rate_limit_buckets_max: int = 10_000
    metrics_public: bool = False
    # Open GET /api/v1/events streams: per token subject (past it: 429) and in all (503).
    sse_streams_per_subject_max: int = 4
    sse_streams_max: int = 256

    def __post_init__(self) -> None:
        assert self.max_body_bytes >= 1, self.max_body_bytes
        assert self.page_size_max >= 1, self.page_size_max
        assert self.rate_limit_per_s >= 0, self.rate_limit_per_s
        assert self.rate_limit_burst >= 1, self.rate_limit_burst
        assert self.rate_limit_buckets_max >= 1, self.rate_limit_buckets_max
        assert 1 <= self.sse_streams_per_subject_max <= self.sse_streams_max, (
            self.sse_streams_per_subject_max,
            self.sse_streams_max,
        )


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    buckets: int
    admitted_total: int
    rejected_total: int


class TokenBucketLimiter:
    """Per-key token buckets: ``rate_per_s`` refill, ``burst`` capacity, ``buckets_max`` keys.

    ``clock`` is a monotonic clock in seconds (injected so tests need no sleeping).
    Not thread-safe: the app uses it from the event loop only.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        buckets_max: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert rate_per_s > 0 and burst >= 1 and buckets_max >= 1
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._buckets_max = buckets_max
        self._clock = clock
        # key -> (tokens, last refill time); ordered oldest-used first.
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._admitted_total = 0
        self._rejected_total = 0

    def acquire(self, key: bytes) -> float:
        """Take one token for ``key``. Returns 0.0 if admitted, else seconds until one is due."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate_per_s)
        admitted = tokens >= 1.0
        if admitted:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._buckets_max:
            self._buckets.popitem(last=False)
        assert len(self._buckets) <= self._buckets_max
        if admitted:
            self._admitted_total += 1
            return 0.0
        self._rejected_total += 1
        return (1.0 - tokens) / self._rate_per_s

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(len(self._buckets), self._admitted_total, self._rejected_total)
