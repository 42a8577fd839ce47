"""The history of client operations in a real-process scenario (``simulations/chaos.py``).

Every operation a client sends is recorded with its invocation and completion time
(one monotonic clock, shared by the client threads) and one of three outcomes:

- ``ok``: the node answered with a success; ``output`` is what the client learned.
- ``fail``: the operation certainly changed nothing: a 4xx answer with a Rota
  problem+json body (``output`` is the status code), or a refused connection
  (nothing was sent; ``output`` is 0).
- ``unknown``: anything else — a timeout, a connection that broke after the request
  was sent, a 5xx, an answer that was not Rota's. The operation may take effect at
  any time after its invocation, or never; its completion time is ``math.inf``.

A timeout is never a failure: treating it as one is how checkers report phantom
lost updates. Rules: an ``Op`` is immutable once recorded; ``History`` is safe to use
from several threads; ``input`` and ``output`` are hashable (the checker caches
states built from them).
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from node.httpclient import ApiError, ClientError, ConnectionRefused

Status = Literal["ok", "fail", "unknown"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation: ``kind`` on ``key`` with ``input``, and what came back."""

    id: int
    client: str
    key: str
    kind: str
    input: Hashable
    status: Status
    output: Hashable
    invoke_s: float
    complete_s: float  # math.inf when the outcome is unknown

    def __post_init__(self) -> None:
        assert self.status in ("ok", "fail", "unknown"), self.status
        assert (self.status == "unknown") == (self.complete_s == math.inf), self
        assert self.complete_s >= self.invoke_s, self


def outcome_of(error: ClientError) -> tuple[Status, Hashable]:
    """How a client error counts (see the module doc): ``fail`` only when certain."""
    if isinstance(error, ConnectionRefused):
        return "fail", 0
    if (
        isinstance(error, ApiError)
        and 400 <= error.status < 500
        and error.type != "about:blank"  # a problem+json body (httpclient's default type)
    ):
        return "fail", error.status
    return "unknown", None


class History:
    """Operations recorded by any number of client threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._ops: list[Op] = []

    def record(
        self,
        client: str,
        key: str,
        kind: str,
        input: Hashable,
        call: Callable[[], T],
        output: Callable[[T], Hashable],
    ) -> tuple[Op, T | None]:
        """Run ``call()`` and record it; ``output(result)`` is what an ``ok`` learned.
        Returns the op and the call's result (None unless ok)."""
        invoke_s = self._clock()
        result: T | None = None
        try:
            result = call()
            status: Status = "ok"
            out = output(result)
        except ClientError as e:
            status, out = outcome_of(e)
        complete_s = math.inf if status == "unknown" else self._clock()
        with self._lock:
            op = Op(next(self._ids), client, key, kind, input, status, out, invoke_s, complete_s)
            self._ops.append(op)
        return op, result

    def add(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def counts(self) -> Counter[str]:
        return Counter(op.status for op in self.ops())

    def dump(self, path: Path) -> None:
        """One JSON object per line, in recording order (for post-mortems)."""
        with path.open("w") as f:
            for op in self.ops():
                doc = {
                    "id": op.id,
                    "client": op.client,
                    "key": op.key,
                    "kind": op.kind,
                    "input": op.input,
                    "status": op.status,
                    "output": op.output,
                    "invoke_s": op.invoke_s,
                    "complete_s": None if op.complete_s == math.inf else op.complete_s,
                }
                f.write(json.dumps(doc) + "\n")
