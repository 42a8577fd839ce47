"""RFC 9457 problem details: every API error, and the one place errors become them.

Rules:
- Every error response is ``application/problem+json`` with ``type``, ``title``,
  ``status`` and ``detail``; validation errors add ``field``.
- ``type`` is ``https://rota.dev/problems/<slug>``: one scheme, stable slugs, listed
  in ``KINDS``. Clients switch on ``type``; ``title`` is fixed per type; ``detail``
  varies per occurrence and never carries secrets (tokens, keys) or stack traces.
- ``to_problem`` is the single translation point (port errors, Werkzeug's HTTP
  errors, bugs); the app calls it from its one error handler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from werkzeug.exceptions import HTTPException

from web.port import Conflict, Invalid, NotFound, NotLeaderError, PortError, Unavailable

log = logging.getLogger("rota.http")

PROBLEM_BASE = "https://rota.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemKind:
    slug: str
    status: int
    title: str

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug


MALFORMED_JSON = ProblemKind("malformed-json", 400, "Malformed JSON")
BAD_REQUEST = ProblemKind("bad-request", 400, "Bad request")
UNAUTHORIZED = ProblemKind("unauthorized", 401, "Unauthorized")
FORBIDDEN = ProblemKind("forbidden", 403, "Forbidden")
NOT_FOUND = ProblemKind("not-found", 404, "Not found")
METHOD_NOT_ALLOWED = ProblemKind("method-not-allowed", 405, "Method not allowed")
CONFLICT = ProblemKind("conflict", 409, "Conflict")
PAYLOAD_TOO_LARGE = ProblemKind("payload-too-large", 413, "Payload too large")
UNSUPPORTED_MEDIA_TYPE = ProblemKind("unsupported-media-type", 415, "Unsupported media type")
INVALID_FIELD = ProblemKind("invalid-field", 422, "Invalid field")
RATE_LIMITED = ProblemKind("rate-limited", 429, "Too many requests")
INTERNAL = ProblemKind("internal", 500, "Internal error")
NOT_LEADER = ProblemKind("not-leader", 503, "Not the leader")
UNAVAILABLE = ProblemKind("unavailable", 503, "Unavailable")
NOT_READY = ProblemKind("not-ready", 503, "Not ready")
HTTP_ERROR = ProblemKind("http-error", 400, "HTTP error")  # status taken from the exception

KINDS: tuple[ProblemKind, ...] = (
    MALFORMED_JSON,
    BAD_REQUEST,
    UNAUTHORIZED,
    FORBIDDEN,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    CONFLICT,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    INVALID_FIELD,
    RATE_LIMITED,
    INTERNAL,
    NOT_LEADER,
    UNAVAILABLE,
    NOT_READY,
    HTTP_ERROR,
)
_BY_STATUS = {k.status: k for k in (BAD_REQUEST, NOT_FOUND, METHOD_NOT_ALLOWED, PAYLOAD_TOO_LARGE)}
_PORT_KINDS: dict[type[PortError], ProblemKind] = {
    NotLeaderError: NOT_LEADER,
    Unavailable: UNAVAILABLE,
    Conflict: CONFLICT,
    NotFound: NOT_FOUND,
    Invalid: INVALID_FIELD,
}
# Werkzeug's own texts speak of "the server" and "URLs you entered"; say it plainly.
_HTTP_DETAILS = {
    404: "no such route",
    405: "method not allowed on this route (see the Allow header)",
}
# Headers of a Werkzeug HTTPException worth keeping (its Content-Type is HTML).
_KEPT_HEADERS = frozenset({"allow", "retry-after"})


class ApiProblem(Exception):
    """An error response. Raise it anywhere in a request; the app renders it."""

    def __init__(
        self,
        kind: ProblemKind,
        detail: str,
        *,
        field: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.field = field
        self.status = kind.status if status is None else status
        self.headers = dict(headers or {})
        self.extensions = dict(extensions or {})
        assert 400 <= self.status <= 599, self.status

    def body(self) -> bytes:
        doc: dict[str, object] = {
            "type": self.kind.type,
            "title": self.kind.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            doc["field"] = self.field
        doc.update(self.extensions)
        return json.dumps(doc).encode()


def invalid_field(field: str, detail: str) -> ApiProblem:
    """A 422 naming the field (``limit``, ``target``, a path parameter ...)."""
    return ApiProblem(INVALID_FIELD, f"{field}: {detail}", field=field)


def to_problem(error: Exception) -> ApiProblem:
    """Translate any exception raised while handling a request. The only such place."""
    match error:
        case ApiProblem():
            return error
        case NotLeaderError(leader=leader):
            return ApiProblem(
                NOT_LEADER,
                error.detail,
                headers={"Retry-After": "1"},
                extensions={"leader": leader},
            )
        case Invalid(field=field):
            return ApiProblem(INVALID_FIELD, error.detail, field=field)
        case Unavailable():
            return ApiProblem(UNAVAILABLE, error.detail, headers={"Retry-After": "1"})
        case PortError():
            return ApiProblem(_PORT_KINDS[type(error)], error.detail)
        case HTTPException(code=int(code)) if 400 <= code <= 599:
            kind = _BY_STATUS.get(code, HTTP_ERROR)
            headers = {k: v for k, v in error.get_headers() if k.lower() in _KEPT_HEADERS}
            detail = _HTTP_DETAILS.get(code) or error.description or kind.title
            return ApiProblem(kind, detail, status=code, headers=headers)
        case _:
            # A bug (or an HTTPException that is not an error). Log it; tell the client little.
            log.error("unhandled error while serving a request", exc_info=error)
            return ApiProblem(INTERNAL, "internal error; see the node's log")
