"""A linearizability checker for single-key histories, in the style of Porcupine.

Theory. A history is linearizable when every operation can be given a point between
its invocation and its completion such that, taken in the order of those points, the
operations are a legal run of a sequential model. The search is Wing & Gong's, with
Lowe's state cache, as Porcupine does it:

- Keys are independent (P-compositionality): each key's sub-history is checked alone.
- Call and return events sit in one doubly linked list in time order (a call before a
  return at the same instant: both orders are then allowed). Walking from the head, a
  call may be *linearized* if the model accepts it in the current state; it is then
  lifted out of the list with its return and the walk restarts. Reaching a return
  whose call is not linearized means the choice so far is wrong: backtrack (undo the
  last linearized call and try the next call after it).
- The cache holds (set of linearized ops as a bitmask, model state): a configuration
  already explored is never explored again, which makes most real histories linear.
- Unknown outcomes (``simulations.history``) complete at infinity, so they may be
  linearized anywhere after their invocation; the model makes "never" possible by
  letting an unknown op leave the state unchanged. The model is nondeterministic
  (a step returns every possible next state) and the search runs on sets of states
  (the power-set construction), so a choice inside one op never needs backtracking.
- Work is bounded: past ``steps_max`` steps for one key the verdict is
  ``inconclusive``, never a guess.

``JobRegister`` is the model of a Rota job used as a register: create by name, read,
and compare-and-set on ``version`` (``PATCH`` with ``If-Match``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from simulations.history import Op

STEPS_MAX_DEFAULT = 200_000
Verdict = Literal["ok", "violation", "inconclusive"]


class Model(Protocol):
    """A sequential specification. States are hashable and compared by value."""

    def init(self) -> Hashable: ...

    def step(self, state: Hashable, op: Op) -> Iterable[Hashable]:
        """Every state ``op`` (with its recorded outcome) may lead to; none if illegal."""
        ...

    def relevant(self, op: Op) -> bool:
        """Whether ``op`` can affect or observe the state (others are left out)."""
        ...


@dataclass(frozen=True, slots=True)
class KeyResult:
    key: str
    verdict: Verdict
    ops: int
    steps: int
    longest_prefix: tuple[int, ...] = ()  # op ids of the longest linearization found


@dataclass(frozen=True, slots=True)
class Result:
    verdict: Verdict
    keys: tuple[KeyResult, ...] = field(default_factory=tuple)

    def bad(self) -> list[KeyResult]:
        return [k for k in self.keys if k.verdict != "ok"]


@dataclass(eq=False, slots=True)
class _Entry:
    op: int  # index into the key's ops
    is_call: bool
    time: float
    match: _Entry | None = None  # a call's return
    prev: _Entry | None = None
    next: _Entry | None = None


def _entries(ops: Sequence[Op]) -> _Entry:
    """The head sentinel of the time-ordered event list of ``ops``."""
    events: list[tuple[float, int, _Entry]] = []
    for i, op in enumerate(ops):
        call = _Entry(i, True, op.invoke_s)
        ret = _Entry(i, False, op.complete_s)
        call.match = ret
        events += [(op.invoke_s, 0, call), (op.complete_s, 1, ret)]
    events.sort(key=lambda e: (e[0], e[1], e[2].op))
    head = _Entry(-1, False, -math.inf)
    last = head
    for _, _, entry in events:
        last.next, entry.prev = entry, last
        last = entry
    return head


def _lift(entry: _Entry) -> None:
    """Take a call and its return out of the list (``_unlift`` puts them back)."""
    assert entry.prev is not None and entry.match is not None
    entry.prev.next = entry.next
    if entry.next is not None:
        entry.next.prev = entry.prev
    ret = entry.match
    assert ret.prev is not None
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(entry: _Entry) -> None:
    ret = entry.match
    assert ret is not None and ret.prev is not None and entry.prev is not None
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    entry.prev.next = entry
    if entry.next is not None:
        entry.next.prev = entry


def check_key(model: Model, key: str, ops: Sequence[Op], steps_max: int) -> KeyResult:
    """Wing-Gong search with state caching over one key's operations."""
    head = _entries(ops)
    states: frozenset[Hashable] = frozenset({model.init()})
    linearized = 0
    cache: set[tuple[int, frozenset[Hashable]]] = set()
    calls: list[tuple[_Entry, frozenset[Hashable]]] = []
    longest: tuple[int, ...] = ()
    steps = 0
    entry = head.next
    while head.next is not None:
        steps += 1
        if steps > steps_max:
            return KeyResult(key, "inconclusive", len(ops), steps, longest)
        assert entry is not None, "a return always ends the list"
        if entry.is_call:
            op = ops[entry.op]
            after = frozenset(s2 for s in states for s2 in model.step(s, op))
            marked = linearized | (1 << entry.op)
            if after and (marked, after) not in cache:
                cache.add((marked, after))
                calls.append((entry, states))
                states, linearized = after, marked
                _lift(entry)
                if len(calls) > len(longest):
                    longest = tuple(ops[c.op].id for c, _ in calls)
                entry = head.next
            else:
                entry = entry.next
        else:
            if not calls:
                return KeyResult(key, "violation", len(ops), steps, longest)
            entry, states = calls.pop()
            linearized &= ~(1 << entry.op)
            _unlift(entry)
            entry = entry.next
    return KeyResult(key, "ok", len(ops), steps, longest)


def check(model: Model, ops: Iterable[Op], steps_max: int = STEPS_MAX_DEFAULT) -> Result:
    """Check every key's sub-history; the worst verdict wins (violation > inconclusive)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if model.relevant(op):
            by_key[op.key].append(op)
    results = tuple(check_key(model, k, by_key[k], steps_max) for k in sorted(by_key))
    verdicts = {r.verdict for r in results}
    verdict: Verdict = (
        "violation"
        if "violation" in verdicts
        else "inconclusive"
        if "inconclusive" in verdicts
        else "ok"
    )
    return Result(verdict, results)


# ---------------------------------------------------------------- the job register

# State: None (no job by that name) or (version, marker): the marker is the value a
# client last wrote into the job's metadata. Inputs and outputs by kind:
#   create  input marker              ok: the job exists at (1, marker)
#   read    input None                ok output (version, marker); fail 404: no job
#   cas     input (version, marker)   ok: was at version, now (version + 1, marker)
# A fail with 409 means "exists" (create) or "not at that version" (cas); 404 means
# "no job"; any other fail (refused, 429, ...) tells nothing and changes nothing.
Register = tuple[int, str] | None


class JobRegister:
    """Rota jobs as compare-and-set registers (see the comment above)."""

    def init(self) -> Register:
        return None

    def relevant(self, op: Op) -> bool:
        # An unknown read observed nothing and changed nothing.
        return op.kind in ("create", "read", "cas") and not (
            op.kind == "read" and op.status == "unknown"
        )

    def step(self, state: Hashable, op: Op) -> list[Hashable]:
        assert state is None or isinstance(state, tuple), state
        match op.kind, op.status:
            case "create", "ok":
                return [(1, op.input)] if state is None else []
            case "create", "unknown":
                return [state, (1, op.input)] if state is None else [state]
            case "read", "ok":
                return [state] if state == op.output else []
            case "cas", "ok":
                version, marker = _cas_input(op)
                return [(version + 1, marker)] if state is not None and state[0] == version else []
            case "cas", "unknown":
                version, marker = _cas_input(op)
                if state is not None and state[0] == version:
                    return [state, (version + 1, marker)]
                return [state]
            case _, "fail":
                return [state] if _fail_fits(op, state) else []
        raise AssertionError(f"unexpected op {op}")


def _cas_input(op: Op) -> tuple[int, str]:
    assert isinstance(op.input, tuple) and len(op.input) == 2, op
    version, marker = op.input
    assert isinstance(version, int) and isinstance(marker, str), op
    return version, marker


def _fail_fits(op: Op, state: Hashable) -> bool:
    """Whether a failed ``op`` (changing nothing) is consistent with ``state``."""
    if op.output == 404:
        return state is None
    if op.output == 409:
        if op.kind == "create":
            return state is not None
        if op.kind == "cas":
            return isinstance(state, tuple) and state[0] != _cas_input(op)[0]
    return True
