"""``python -m simulations [--mode raft|scheduler] --seeds START:END``: run seeded
whole-cluster simulations.

``--mode raft`` (the default) simulates the Raft cluster alone (``simulations.world``);
``--mode scheduler`` adds the replicated scheduler, the leader's planner and workers
(``simulations.sched_world``). Ends with one line ``seeds: N, violations: V (T s)``
and exits non-zero on any violation. A failure prints the seed, its fault mix, the
violation and the command that replays it with a trace. ``--bug NAME`` plants a
known bug (to show the checkers catch it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

from consensus.raft import KNOWN_BUGS
from simulations.checks import Violation
from simulations.sched_world import SchedWorld
from simulations.world import World

MODES: dict[str, type[World]] = {"raft": World, "scheduler": SchedWorld}


def run_one(args: tuple[str, int, frozenset[str]]) -> tuple[int, str | None, str]:
    mode, seed, bugs = args
    world = MODES[mode](seed, bugs)
    try:
        world.run()
        return seed, None, world.describe_faults()
    except (Violation, AssertionError) as e:
        return seed, f"{type(e).__name__}: {e}", world.describe_faults()


def parse_range(text: str) -> range:
    start, _, end = text.partition(":")
    lo = int(start)
    return range(lo, int(end) if end else lo + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__)
    parser.add_argument("--mode", choices=sorted(MODES), default="raft")
    parser.add_argument("--seeds", default="0:100", help="START:END (END exclusive)")
    parser.add_argument("--trace", action="store_true", help="print every event (one seed)")
    every_bug = KNOWN_BUGS.union(*(w.sim_bugs for w in MODES.values()))
    parser.add_argument("--bug", action="append", default=[], choices=sorted(every_bug))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stop-on-first", action="store_true")
    args = parser.parse_args(argv)
    world_cls = MODES[args.mode]
    seeds = parse_range(args.seeds)
    bugs = frozenset(args.bug)
    if not bugs <= KNOWN_BUGS | world_cls.sim_bugs:
        parser.error(
            f"--bug {', '.join(sorted(bugs - KNOWN_BUGS - world_cls.sim_bugs))} "
            f"is not a bug of --mode {args.mode}"
        )
    mode_flag = "" if args.mode == "raft" else f" --mode {args.mode}"
    bug_flags = "".join(f" --bug {b}" for b in sorted(bugs))
    if args.trace:
        for seed in seeds:
            world = world_cls(seed, bugs, trace=True)
            print(f"seed {seed}: faults {world.describe_faults()}")
            try:
                print(f"trace hash {world.run()}")
            except (Violation, AssertionError) as e:
                print(f"VIOLATION at {world.now} ms: {e}")
                return 1
        return 0
    started = time.monotonic()
    violations = 0
    work = [(args.mode, s, bugs) for s in seeds]
    with multiprocessing.Pool(max(1, args.jobs)) as pool:
        for seed, error, mix in pool.imap_unordered(run_one, work, chunksize=4):
            if error is None:
                continue
            violations += 1
            print(
                f"seed {seed}: {error}\n  faults: {mix}\n  replay: python -m simulations"
                f"{mode_flag} --seeds {seed}:{seed + 1} --trace{bug_flags}",
                flush=True,
            )
            if args.stop_on_first:
                pool.terminate()
                break
    elapsed = time.monotonic() - started
    print(f"seeds: {len(seeds)}, violations: {violations} ({elapsed:.1f} s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
