"""Progress (the leader's view of one follower) and its in-flight window."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.progress import Inflights, Progress, ProgressState, SnapshotTransfer
from consensus.types import Snapshot, SnapshotMeta


def progress(match: int = 0, next_: int = 1, msgs: int = 3, size: int = 1000) -> Progress:
    return Progress(match=match, next=next_, inflights=Inflights(msgs, size))


# ------------------------------------------------------------------ Inflights
def test_inflights_fill_by_count() -> None:
    infl = Inflights(max_msgs=2, max_bytes=1000)
    infl.add(3, 10)
    assert not infl.full()
    infl.add(5, 10)
    assert infl.full()
    with pytest.raises(AssertionError):
        infl.add(6, 10)


def test_inflights_fill_by_bytes() -> None:
    infl = Inflights(max_msgs=10, max_bytes=100)
    infl.add(3, 60)
    assert not infl.full()
    infl.add(4, 40)  # exactly at the bound counts as full
    assert infl.full()


def test_inflights_free_le_releases_every_message_acknowledged() -> None:
    infl = Inflights(max_msgs=5, max_bytes=1000)
    for last in (2, 4, 6, 8):
        infl.add(last, 10)
    infl.free_le(5)
    assert list(infl.items) == [(6, 10), (8, 10)]
    assert infl.bytes == 20
    infl.free_le(5)  # a duplicate acknowledgement frees nothing more
    assert infl.bytes == 20
    infl.free_le(100)
    assert (list(infl.items), infl.bytes) == ([], 0)


def test_inflights_free_first_and_reset() -> None:
    infl = Inflights(max_msgs=2, max_bytes=1000)
    infl.add(2, 30)
    infl.add(4, 50)
    infl.free_first()
    assert (list(infl.items), infl.bytes, infl.full()) == ([(4, 50)], 50, False)
    infl.reset()
    assert (list(infl.items), infl.bytes) == ([], 0)
    infl.free_first()  # on an empty window: nothing
    assert infl.bytes == 0


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 50)),
            st.tuples(st.just("ack"), st.integers(0, 200)),
            st.tuples(st.just("first"), st.just(0)),
        ),
        max_size=40,
    )
)
def test_inflights_stay_within_bounds(ops: list[tuple[str, int]]) -> None:
    infl = Inflights(max_msgs=4, max_bytes=100)
    last = 0
    for op, arg in ops:
        if op == "add" and not infl.full():
            last += 1 + arg % 5
            infl.add(last, arg)
        elif op == "ack":
            infl.free_le(arg)
        elif op == "first":
            infl.free_first()
        assert len(infl.items) <= 4
        assert infl.bytes == sum(size for _, size in infl.items)
        assert infl.bytes < 100 + 50  # at most one message beyond the byte bound
        assert [i for i, _ in infl.items] == sorted(i for i, _ in infl.items)


# ------------------------------------------------------------------ Progress
def test_probe_sends_one_message_then_pauses() -> None:
    pr = progress(match=0, next_=5)
    assert pr.state is ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(2, 64)
    assert pr.is_paused()
    assert pr.next == 5  # a probe does not move next


def test_replicate_moves_next_optimistically_up_to_the_window() -> None:
    pr = progress(match=4, next_=5, msgs=2)
    pr.become_replicate()
    pr.sent_entries(3, 96)
    assert pr.next == 8 and not pr.is_paused()
    pr.sent_entries(0, 0)  # an empty AppendEntries takes no slot
    assert pr.next == 8 and not pr.is_paused()
    pr.sent_entries(1, 32)
    assert pr.next == 9 and pr.is_paused()
    assert list(pr.inflights.items) == [(7, 96), (8, 32)]


def test_maybe_update_moves_match_and_unpauses() -> None:
    pr = progress(match=2, next_=3)
    pr.sent_entries(1, 32)
    assert pr.maybe_update(3)
    assert (pr.match, pr.next, pr.probe_sent) == (3, 4, False)
    assert not pr.maybe_update(3)  # duplicate
    assert not pr.maybe_update(1)  # stale
    assert pr.match == 3


def test_maybe_update_never_moves_next_back() -> None:
    pr = progress(match=2, next_=3)
    pr.become_replicate()
    pr.sent_entries(5, 160)  # next 8
    pr.maybe_update(4)
    assert (pr.match, pr.next) == (4, 8)


def test_maybe_decr_to_in_probe_uses_the_hint_and_ignores_stale_rejections() -> None:
    pr = progress(match=1, next_=10)
    pr.sent_entries(0, 0)
    assert not pr.maybe_decr_to(rejected=7, match_hint=3)  # not the probe we sent (9)
    assert pr.is_paused()
    assert pr.maybe_decr_to(rejected=9, match_hint=3)
    assert (pr.next, pr.probe_sent) == (4, False)


def test_maybe_decr_to_never_goes_below_match() -> None:
    pr = progress(match=5, next_=10)
    assert pr.maybe_decr_to(rejected=9, match_hint=2)
    assert pr.next == 6


def test_maybe_decr_to_in_replicate_falls_back_to_match() -> None:
    pr = progress(match=4, next_=5)
    pr.become_replicate()
    pr.sent_entries(3, 96)
    assert not pr.maybe_decr_to(rejected=4, match_hint=0)  # at or below match: stale
    assert pr.maybe_decr_to(rejected=7, match_hint=0)
    assert pr.next == 5


def test_state_moves_reset_the_window_and_the_pause() -> None:
    pr = progress(match=3, next_=4, msgs=1)
    pr.become_replicate()
    pr.sent_entries(1, 32)
    assert pr.is_paused()
    pr.become_probe()
    assert (pr.state, pr.next, pr.is_paused(), len(pr.inflights.items)) == (
        ProgressState.PROBE,
        4,
        False,
        0,
    )


def test_snapshot_state_is_paused_and_probe_resumes_after_the_snapshot() -> None:
    pr = progress(match=2, next_=3)
    snap = Snapshot(SnapshotMeta(10, 2))
    pr.become_snapshot(snap)
    assert pr.state is ProgressState.SNAPSHOT and pr.is_paused()
    assert pr.transfer == SnapshotTransfer(snap)
    pr.become_probe()
    assert (pr.next, pr.transfer is None) == (11, True)


def test_snapshot_transfer_rewind() -> None:
    t = SnapshotTransfer(Snapshot(data=b"x" * 40), sent=32, acked=8, done_sent=True)
    t.stalled_heartbeats = 2
    t.rewind(8)
    assert (t.sent, t.rewound_to, t.done_sent, t.stalled_heartbeats) == (8, 8, False, 0)
