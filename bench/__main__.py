"""``python -m bench [SECTION ...] [--out FILE]``: run benchmark sections (all by
default), merge their results into one JSON file and print a table."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench import cluster, etcd, fires, plots, rss, scaling, steal, storage, tasks
from bench.core import Section, SectionResult, filesystem_of, format_table, merge_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench-results"
SECTIONS: dict[str, Section] = {
    "storage": storage.run,
    "cluster": cluster.run,
    "tasks": tasks.run,
    "fires": fires.run,
    "rss": rss.run,
    "steal": steal.run,
    "etcd": etcd.run,
    "scaling": scaling.run,
    "plots": plots.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"any of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bench.json")
    args = parser.parse_args(argv)
    names: list[str] = args.sections or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if filesystem_of(RESULTS_DIR) == "tmpfs":
        print(f"warning: {RESULTS_DIR} is on tmpfs: fsync costs nothing there", file=sys.stderr)
    results: dict[str, SectionResult] = {}
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=RESULTS_DIR, prefix=f"tmp-{name}-") as workdir:
            results[name] = SECTIONS[name](Path(workdir))
    merge_results(args.out, results)
    print(format_table(results))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
