"""The stealing tuning simulation: it runs the real planner and state machine to the
end of a load, stealing shortens a skewed makespan, and the ideal is a lower bound."""

from __future__ import annotations

from simulations.stealing import Load, Settings, Sim, ideal_ms, skewed_loads


def test_ideal_is_the_larger_of_spread_work_and_the_longest_task() -> None:
    assert ideal_ms(Load("even", 2, 2, (100,) * 8), 5) == 205  # 800 ms over 4 slots
    assert ideal_ms(Load("one-long", 2, 2, (1000, 10, 10)), 5) == 1005
    slow = Load("slow", 2, 1, (100,) * 3, slow_nodes=1, slow_factor=2.0)
    assert ideal_ms(slow, 0) == 200  # 300 ms over 1 + 1/2 slots


def test_stealing_relieves_a_slow_node_and_every_task_runs_once() -> None:
    load = next(x for x in skewed_loads(0) if x.name == "slow-node")
    off = Sim(load, Settings(steal_batch_max=0))
    on = Sim(load, Settings())
    off_ms, on_ms = off.run(), on.run()
    assert off.steals == 0 and on.steals > 0
    assert on_ms < off_ms
    ideal = ideal_ms(load, on.commit_ms)
    assert ideal <= on_ms and ideal <= off_ms
    runs = list(on.state.run_ids_newest_first())
    assert len(runs) == len(load.durations_ms)
    assert all(on.state.run(r).state == "succeeded" for r in runs)  # type: ignore[union-attr]


def test_the_same_load_and_settings_give_the_same_makespan() -> None:
    load = skewed_loads(3)[0]
    assert Sim(load, Settings()).run() == Sim(load, Settings()).run()
