"""``python -m simulations --seeds START:END``: run seeded whole-cluster simulations.

Ends with one line ``seeds: N, violations: V`` and exits non-zero on any violation.
A failure prints the seed, its fault mix, the violation and the command that replays
it with a trace. ``--bug NAME`` plants a known bug (to show the checkers catch it).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

from consensus.raft import KNOWN_BUGS
from simulations.checks import Violation
from simulations.world import SIM_BUGS, World


def run_one(args: tuple[int, frozenset[str]]) -> tuple[int, str | None, str]:
    seed, bugs = args
    world = World(seed, bugs)
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
    parser.add_argument("--seeds", default="0:100", help="START:END (END exclusive)")
    parser.add_argument("--trace", action="store_true", help="print every event (one seed)")
    parser.add_argument("--bug", action="append", default=[], choices=sorted(KNOWN_BUGS | SIM_BUGS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stop-on-first", action="store_true")
    args = parser.parse_args(argv)
    seeds = parse_range(args.seeds)
    bugs = frozenset(args.bug)
    bug_flags = "".join(f" --bug {b}" for b in sorted(bugs))
    if args.trace:
        for seed in seeds:
            world = World(seed, bugs, trace=True)
            print(f"seed {seed}: faults {world.describe_faults()}")
            try:
                print(f"trace hash {world.run()}")
            except (Violation, AssertionError) as e:
                print(f"VIOLATION at {world.now} ms: {e}")
                return 1
        return 0
    started = time.monotonic()
    violations = 0
    work = [(s, bugs) for s in seeds]
    with multiprocessing.Pool(max(1, args.jobs)) as pool:
        for seed, error, mix in pool.imap_unordered(run_one, work, chunksize=4):
            if error is None:
                continue
            violations += 1
            print(
                f"seed {seed}: {error}\n  faults: {mix}\n  replay: python -m simulations "
                f"--seeds {seed}:{seed + 1} --trace{bug_flags}",
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
