"""node.memo.Memo and the decoders that use it: built once per raw form, bounded,
never caching a failure, and keeping apart values that are equal but not the same."""

from __future__ import annotations

import pytest

from node.memo import Memo
from node.model import RetryPolicy, ShellSpec, TaskSpec, ValidationError
from node.records import DecodeError, pack, task_spec_in, task_spec_out, unpack


def test_an_input_is_built_once_and_its_value_shared() -> None:
    built: list[object] = []
    memo: Memo[tuple[object, ...]] = Memo()

    def build(raw: object) -> tuple[object, ...]:
        built.append(raw)
        assert isinstance(raw, list)
        return tuple(raw)

    first = memo.get([1, "a"], build)
    again = memo.get([1, "a"], build)
    assert first is again and built == [[1, "a"]]
    assert (memo.hits, memo.misses) == (1, 1)


def test_equal_but_different_inputs_are_kept_apart() -> None:
    memo: Memo[str] = Memo()
    seen = [memo.get(raw, lambda r: f"{type(r).__name__}:{r!r}") for raw in (1, 1.0, True)]
    assert seen == ["int:1", "float:1.0", "bool:True"]
    assert memo.get(-0.0, repr) == "-0.0" and memo.get(0.0, repr) == "0.0"


def test_a_failed_build_caches_nothing() -> None:
    memo: Memo[int] = Memo()
    calls: list[object] = []

    def build(raw: object) -> int:
        calls.append(raw)
        raise ValueError("bad")

    for _ in range(2):
        with pytest.raises(ValueError):
            memo.get("x", build)
    assert len(calls) == 2 and len(memo) == 0


def test_a_full_memo_starts_over_and_never_grows_past_its_bound() -> None:
    memo: Memo[int] = Memo(items_max=3)
    for i in range(10):
        memo.get(i, lambda r: r if isinstance(r, int) else 0)
        assert len(memo) <= 3
    assert memo.get(9, lambda r: -1) == 9  # the newest input is still there


def test_decoded_task_specs_are_shared_and_still_checked() -> None:
    spec = TaskSpec(ShellSpec(("/bin/echo", "hi")), priority=7, retry=RetryPolicy(max_attempts=3))
    raw = task_spec_out(spec)
    one, two = task_spec_in(unpack(pack(raw))), task_spec_in(unpack(pack(raw)))
    assert one == spec and one is two
    bad = list(raw)
    bad[1] = 42  # priority out of range: rejected on every decode, never memoised
    for _ in range(2):
        with pytest.raises(DecodeError):
            task_spec_in(bad)
    with pytest.raises(ValidationError):
        TaskSpec(ShellSpec(("/bin/true",)), priority=42)
