"""The linearizability checker on hand-built histories: known-linearizable ones pass,
planted anomalies (a stale read, a lost update, a phantom create) are caught, unknown
outcomes may apply late or never, and a search too large ends as inconclusive."""

from __future__ import annotations

import math
from collections.abc import Hashable

from simulations.history import Op, outcome_of
from simulations.linearizability import JobRegister, check, check_key

M = JobRegister()


class Ops:
    """A tiny history builder: times in seconds, ``None`` completion = unknown."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(
        self,
        kind: str,
        input: Hashable,
        status: str,
        output: Hashable,
        t0: float,
        t1: float | None,
        key: str = "k",
        client: str = "c",
    ) -> Ops:
        done = math.inf if t1 is None else t1
        self.ops.append(Op(len(self.ops), client, key, kind, input, status, output, t0, done))  # type: ignore[arg-type]
        return self

    def create(self, marker: str, t0: float, t1: float | None, status: str = "ok") -> Ops:
        return self.add("create", marker, status if t1 is not None else "unknown", None, t0, t1)

    def read(self, value: Hashable, t0: float, t1: float, status: str = "ok") -> Ops:
        return self.add("read", None, status, value, t0, t1)

    def cas(
        self,
        version: int,
        marker: str,
        t0: float,
        t1: float | None,
        status: str = "ok",
        out: int = 0,
        client: str = "c",
    ) -> Ops:
        st = status if t1 is not None else "unknown"
        output = out if st == "fail" else None
        return self.add("cas", (version, marker), st, output, t0, t1, client=client)


def verdict(h: Ops) -> str:
    return check(M, h.ops).verdict


def test_a_sequential_history_is_linearizable() -> None:
    h = Ops().create("a", 0, 1).read((1, "a"), 2, 3).cas(1, "b", 4, 5).read((2, "b"), 6, 7)
    assert verdict(h) == "ok"


def test_concurrent_writes_may_take_either_order() -> None:
    h = Ops().create("a", 0, 1)
    h.cas(1, "b", 2, 6, client="x").cas(1, "c", 3, 7, "fail", 409).read((2, "b"), 8, 9)
    assert verdict(h) == "ok"
    # A read overlapping the write may see the old or the new value.
    h2 = Ops().create("a", 0, 1).cas(1, "b", 2, 6).read((1, "a"), 3, 4).read((2, "b"), 5, 7)
    assert verdict(h2) == "ok"


def test_a_planted_stale_read_is_a_violation() -> None:
    # The write completed before the read began, yet the read saw the old value.
    h = Ops().create("a", 0, 1).cas(1, "b", 2, 3).read((1, "a"), 4, 5)
    result = check(M, h.ops)
    assert result.verdict == "violation"
    assert result.bad()[0].key == "k"


def test_a_planted_lost_update_is_a_violation() -> None:
    # Two CAS from version 1 both acknowledged: one of them must have been lost.
    h = Ops().create("a", 0, 1).cas(1, "b", 2, 3).cas(1, "c", 2.5, 3.5).read((2, "c"), 4, 5)
    assert verdict(h) == "violation"
    # And an acknowledged write that a later read never sees.
    h2 = Ops().create("a", 0, 1).cas(1, "b", 2, 3).read((1, "a"), 4, 5)
    assert verdict(h2) == "violation"


def test_a_failed_cas_that_took_effect_is_a_violation() -> None:
    # 409 (certainly nothing changed), yet a later read shows its value.
    h = Ops().create("a", 0, 1).cas(1, "b", 2, 3, "fail", 409).read((2, "b"), 4, 5)
    assert verdict(h) == "violation"


def test_a_phantom_create_and_a_read_of_a_missing_job() -> None:
    assert verdict(Ops().read((1, "a"), 0, 1)) == "violation"
    gone = Ops().create("a", 0, 1).add("read", None, "fail", 404, 2, 3)
    assert verdict(gone) == "violation"
    assert verdict(Ops().add("read", None, "fail", 404, 0, 1)) == "ok"


def test_unknown_outcomes_may_apply_late_or_never() -> None:
    late = Ops().create("a", 0, 1).cas(1, "b", 2, None).read((1, "a"), 3, 4).read((2, "b"), 9, 10)
    assert verdict(late) == "ok"
    never = Ops().create("a", 0, 1).cas(1, "b", 2, None).read((1, "a"), 9, 10)
    assert verdict(never) == "ok"
    # But it cannot apply before it was invoked.
    early = Ops().create("a", 0, 1).read((2, "b"), 2, 3).cas(1, "b", 4, None)
    assert verdict(early) == "violation"
    # Nor twice: after it applied and another write followed, it is spent.
    twice = Ops().create("a", 0, 1).cas(1, "b", 2, None).read((2, "b"), 3, 4)
    twice.cas(2, "c", 5, 6).cas(1, "b", 6.5, 7, "fail", 409).read((3, "c"), 8, 9)
    assert verdict(twice) == "ok"


def test_an_unknown_create_may_have_happened() -> None:
    h = Ops().create("a", 0, None).add("create", "b", "fail", 409, 1, 2).read((1, "a"), 3, 4)
    assert verdict(h) == "ok"
    # A 409 says the job existed: with no create that could have made it, a violation.
    assert verdict(Ops().add("create", "b", "fail", 409, 1, 2)) == "violation"


def test_keys_are_checked_independently() -> None:
    h = Ops().create("a", 0, 1).add("create", "z", "ok", None, 0, 1, key="other")
    h.add("read", None, "ok", (1, "z"), 2, 3, key="other").read((1, "a"), 2, 3)
    result = check(M, h.ops)
    assert result.verdict == "ok" and [k.key for k in result.keys] == ["k", "other"]
    h.add("read", None, "ok", (1, "a"), 4, 5, key="other")  # a value of the other key
    assert [k.key for k in check(M, h.ops).bad()] == ["other"]


def test_the_search_is_bounded() -> None:
    # Many concurrent unknown writes and a read nobody wrote: the search must explore
    # a lot before concluding; with a tiny budget it says so instead of guessing.
    h = Ops().create("a", 0, 1)
    for i in range(9):
        h.cas(1 + i % 3, f"m{i}", 2, None, client=f"c{i}")
    h.read((9, "never"), 3, 4)
    ops = [op for op in h.ops if M.relevant(op)]
    assert check_key(M, "k", ops, steps_max=50).verdict == "inconclusive"
    assert check_key(M, "k", ops, steps_max=10_000_000).verdict == "violation"


def test_outcomes_of_client_errors() -> None:
    from node.httpclient import ApiError, BadResponse, ConnectionRefused, TransportError

    assert outcome_of(ConnectionRefused("x")) == ("fail", 0)
    assert outcome_of(TransportError("timed out")) == ("unknown", None)
    assert outcome_of(ApiError(409, "Conflict", "", "https://rota.dev/problems/conflict")) == (
        "fail",
        409,
    )
    assert outcome_of(ApiError(503, "Unavailable", "", "https://rota.dev/problems/x")) == (
        "unknown",
        None,
    )
    assert outcome_of(ApiError(404, "Not Found", "<html>")) == ("unknown", None)  # not Rota's
    assert outcome_of(BadResponse("x")) == ("unknown", None)
