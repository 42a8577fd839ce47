"""EventFeed: the ring, resumption, fan-out bounds, slow subscribers, snapshots, stats."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing

from node.commands import Ok, Rejected, Steal, SubmitTasks
from node.events import HISTORY_MAX, STEALS_MAX, EventFeed, node_load
from node.model import RetryPolicy, Run, ShellSpec, TaskSpec, run_id_for
from node.records import encode_run
from node.state import SchedulerState
from node.statetables import TABLE_JOBS, TABLE_RUNS, Change
from web.port import (
    ClusterSnapshot,
    ClusterView,
    FeedEvent,
    History,
    Reset,
    StealEvent,
    Unavailable,
)
from web.testing import FakeNodePort

T0 = 1_800_000_000_000


def make_run(index: int, **over: object) -> Run:
    run_id = run_id_for(index, 0)
    fields: dict[str, object] = {
        "id": run_id,
        "job_id": "j000000000001",
        "kind": "scheduled",
        "origin_id": run_id,
        "scheduled_at": T0,
        "attempt": 1,
        "state": "queued",
        "node": None,
        "token": index,
        "queued_at": T0 + 250,
        "priority": 5,
        "timeout_s": 60,
        "executor": ShellSpec(("true",)),
        "retry": RetryPolicy(),
    }
    fields.update(over)
    return Run(**fields)  # type: ignore[arg-type]


def change(run: Run) -> Change:
    return (TABLE_RUNS, run.id.encode(), encode_run(run))


def feed(**kw: object) -> EventFeed:
    state = SchedulerState()
    port = FakeNodePort()
    return EventFeed(
        "n1",
        port.cluster_view,
        lambda: node_load("n1", 4, state),
        lambda: state,
        applied_index=10,
        **kw,  # type: ignore[arg-type]
    )


def drain(channel: trio.MemoryReceiveChannel[FeedEvent]) -> list[FeedEvent]:
    out: list[FeedEvent] = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


def test_run_changes_reach_subscribers_rendered_once_with_the_id_on_the_batch_end() -> None:
    f = feed()
    rx = f.subscribe(None)
    a, b = make_run(11), make_run(11, id=run_id_for(11, 1), origin_id=run_id_for(11, 1))
    f.on_apply(11, [(TABLE_JOBS, b"j1", b"x"), change(a), change(b)])
    events = drain(rx)
    assert [(e.index, e.run_id, e.last_in_batch) for e in events] == [  # type: ignore[union-attr]
        (11, a.id, False),
        (11, b.id, True),
    ]
    first = events[0]
    assert not isinstance(first, ClusterSnapshot | Reset)
    text = first.json()
    assert text is not None and json.loads(text)["id"] == a.id
    assert first.json() is text  # cached: every stream shares one rendering


def test_a_deleted_run_has_no_json() -> None:
    f = feed()
    rx = f.subscribe(None)
    f.on_apply(11, [(TABLE_RUNS, b"r1", None)])
    (event,) = drain(rx)
    assert not isinstance(event, ClusterSnapshot | Reset) and event.json() is None


def test_resume_replays_the_ring_after_the_id_and_resets_when_it_is_too_old() -> None:
    f = feed(ring_max=4)
    for index in range(11, 17):  # six events; the ring keeps 13..16
        f.on_apply(index, [change(make_run(index))])
    assert f.evicted_through == 12
    resumed = drain(f.subscribe(13))
    assert [e.index for e in resumed] == [14, 15, 16]  # type: ignore[union-attr]
    assert drain(f.subscribe(12)) != [] and drain(f.subscribe(16)) == []
    old = drain(f.subscribe(11))
    assert len(old) == 1 and isinstance(old[0], Reset)


def test_nothing_before_the_feed_started_can_be_resumed() -> None:
    f = feed()  # applied_index=10: the feed never saw 1..10
    assert isinstance(drain(f.subscribe(9))[0], Reset)
    assert drain(f.subscribe(10)) == []


def test_a_slow_subscriber_is_dropped_without_blocking_the_others() -> None:
    f = feed(buffer_max=2)
    slow, fast = f.subscribe(None), f.subscribe(None)
    for index in range(11, 15):
        f.on_apply(index, [change(make_run(index))])
        drain(fast)
    assert len(drain(slow)) == 2  # what it had buffered, then its channel ended
    with pytest.raises(trio.EndOfChannel):
        slow.receive_nowait()
    f.on_apply(15, [change(make_run(15))])
    assert len(drain(fast)) == 1
    assert f.statistics().dropped_slow_total == 1 and f.statistics().subscribers == 1


def test_a_closed_subscriber_is_forgotten_and_the_cap_holds() -> None:
    f = feed(subscribers_max=2)
    a, _b = f.subscribe(None), f.subscribe(None)
    with pytest.raises(Unavailable):
        f.subscribe(None)
    a.close()
    f.subscribe(None)  # a's place is free again
    f.on_apply(11, [change(make_run(11))])
    assert f.statistics().subscribers == 2


def test_a_backlog_larger_than_the_buffer_ends_in_a_reset_by_the_stream() -> None:
    f = feed(ring_max=16, buffer_max=3)
    for index in range(11, 21):
        f.on_apply(index, [change(make_run(index))])
    rx = f.subscribe(10)
    assert len(drain(rx)) == 3
    with pytest.raises(trio.EndOfChannel):
        rx.receive_nowait()


def test_snapshot_stats_count_finished_runs_and_fire_lateness_once() -> None:
    f = feed()
    fired = make_run(11)  # created by batch 11: a fire, 250 ms late
    f.on_apply(11, [change(fired)])
    f.on_apply(12, [change(make_run(11, node="n2"))])  # placed later: not a second fire
    done = make_run(11, state="succeeded", node="n2", started_at=T0 + 300, finished_at=T0 + 900)
    failed = make_run(13, state="failed", finished_at=T0 + 5)
    f.on_apply(13, [change(done), change(failed)])
    snap = f.snapshot(1.0)
    stats = snap.stats
    assert (stats.fires, stats.runs_finished, stats.runs_failed) == (1, 2, 1)
    assert stats.fire_lateness_s_max == pytest.approx(0.25) and not stats.partial
    assert snap.applied_index == 13 and snap.load.free_slots == 4
    assert isinstance(snap.cluster, ClusterView)
    again = f.snapshot(1.0).stats  # the next window starts empty
    assert (again.fires, again.runs_finished) == (0, 0)


def test_stats_say_partial_when_the_ring_overflowed_within_a_window() -> None:
    f = feed(ring_max=2)
    for index in range(11, 15):
        f.on_apply(index, [change(make_run(index, state="succeeded", finished_at=T0))])
    stats = f.snapshot(1.0).stats
    assert stats.partial and stats.runs_finished == 2


async def test_run_sends_a_snapshot_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    f = feed(snapshot_interval_s=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(f.run)
        rx = f.subscribe(None)
        assert isinstance(rx.receive_nowait(), History)  # the first snapshot's stats
        assert isinstance(rx.receive_nowait(), ClusterSnapshot)  # the latest, at once
        started = trio.current_time()
        times = []
        for _ in range(3):
            assert isinstance(await rx.receive(), ClusterSnapshot)
            times.append(trio.current_time() - started)
        assert times == pytest.approx([1.0, 2.0, 3.0])
        nursery.cancel_scope.cancel()


def test_steals_are_kept_from_committed_steal_commands_and_bounded() -> None:
    f = feed()
    ids = (run_id_for(11, 0), run_id_for(11, 1))
    f.on_command(Steal(ids, "n1", "n2", T0), Ok(ids))
    f.on_command(Steal(ids, "n1", "n3", T0), Ok(()))  # nothing was still queued: no steal
    f.on_command(Steal(ids, "n2", "n3", T0), Rejected("invalid", "no"))
    snap = f.snapshot(1.0)
    assert snap.steals == (StealEvent("2027-01-15T08:00:00Z", "n1", "n2", 2),)
    assert snap.stats.runs_stolen == 2
    assert f.snapshot(1.0).stats.runs_stolen == 0  # counted in one window only
    for i in range(STEALS_MAX + 5):
        f.on_command(Steal(ids[:1], "n2", f"n{i + 3}", T0 + i), Ok(ids[:1]))
    steals = f.snapshot(1.0).steals
    assert len(steals) == STEALS_MAX and steals[-1].to_node == f"n{STEALS_MAX + 7}"
    assert steals[0].to_node == "n8"  # the oldest five left the ring


def test_a_subscriber_gets_the_bounded_history_of_stats_first() -> None:
    clock = iter(range(1000, 2000))
    f = feed(wall_clock=lambda: float(next(clock)))
    assert drain(f.subscribe(None)) == []  # no snapshot yet: no history either
    f.on_apply(11, [change(make_run(11, state="succeeded", finished_at=T0))])
    for _ in range(HISTORY_MAX + 3):
        f.snapshot(1.0)
    events = drain(f.subscribe(None))
    assert isinstance(events[0], History)
    points = events[0].points
    assert len(points) == HISTORY_MAX
    assert [p.at_s for p in points] == [float(t) for t in range(1003, 1003 + HISTORY_MAX)]
    assert all(p.runs_finished == 0 for p in points)  # the one finished run left the history


def test_run_events_hold_the_state_record_itself_without_decoding() -> None:
    state = SchedulerState()
    f = EventFeed(
        "n1",
        FakeNodePort().cluster_view,
        lambda: node_load("n1", 4, state),
        lambda: state,
        applied_index=10,
    )
    (run_id,) = state.apply(SubmitTasks((TaskSpec(ShellSpec(("true",))),), (None,), T0), 11).ids  # type: ignore[union-attr]
    f.on_apply(11, state.drain_changes())
    (event,) = list(f._ring)
    assert event.run() is state.run(run_id)
    assert json.loads(event.json() or "")["id"] == run_id
