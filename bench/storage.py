"""Storage section: what durable writes cost, against the disk's own limit.

Measured in one process on one directory's disk. The measures are interleaved in
short slices over ``ROUNDS`` rounds and medians are reported, so that a burst of
disk noise (other processes' fsyncs) hits every number alike; the save/raw ratio
is the median of per-round ratios of neighbouring slices.

- ``raw_lmdb_synced_txn_per_s``: plain py-lmdb, ``sync=True, metasync=True``, one
  100-byte put per transaction — the ceiling for one durable commit at a time;
- ``save_<n>_commits_per_s`` / ``save_<n>_entries_per_s``: ``LmdbLogStorage.save``
  of ``n`` entries (100-byte payloads) plus a hard state, i.e. one ``Ready``;
- ``apply_64_entries_per_s``: ``apply`` of 64 row writes (100-byte values) and the
  applied index per transaction;
- goals: 1-entry save rate / raw rate >= 0.8 (the store's own cost is small beside
  the fsync) and 512-entry saves >= 100,000 entries/s (group commit works).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from bench.core import Metric, SectionResult, filesystem_of, median, rate_per_s
from consensus.types import Entry, HardState
from storage import LmdbLogStorage, StoreConfig, Table

ROUNDS = 10
MEASURE_S = 0.4
PAYLOAD = bytes(range(100))
SAVE_BATCHES = (1, 64, 512)
APPLY_BATCH = 64
APPLY_ENTRIES_AHEAD = 64 * 4096  # log entries kept ready ahead of apply (> 0.4 s of work)
CONFIG = StoreConfig(map_bytes_initial=1 << 30)

Measure = Callable[[], float]


def raw_lmdb(path: Path) -> Measure:
    env = lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=True, max_dbs=1)
    db = env.open_db(b"raw")
    key = 0

    def one() -> int:
        nonlocal key
        key += 1
        with env.begin(write=True) as txn:
            txn.put(key.to_bytes(8, "big"), PAYLOAD, db=db)
        return 1

    return lambda: rate_per_s(one, MEASURE_S)


def saves(store: LmdbLogStorage, batch: int) -> Measure:
    """save() commits/s with ``batch`` entries and a hard state each (growing the log)."""

    def one() -> int:
        lo = store.last_index() + 1
        entries = [Entry(i, 1, data=PAYLOAD) for i in range(lo, lo + batch)]
        store.save(HardState(1, "n1", lo - 1), entries)
        return 1

    return lambda: rate_per_s(one, MEASURE_S)


def applies(store: LmdbLogStorage) -> Measure:
    """Entries/s through apply() in batches of APPLY_BATCH row writes."""

    def one() -> int:
        first = store.applied_index() + 1
        writes = [
            (Table.RUNS, b"run-%012d" % i, PAYLOAD) for i in range(first, first + APPLY_BATCH)
        ]
        store.apply(writes, first + APPLY_BATCH - 1)
        return APPLY_BATCH

    def measure() -> float:
        # Applied entries must be in the log: append them ahead, outside the timing.
        while store.last_index() < store.applied_index() + APPLY_ENTRIES_AHEAD:
            lo = store.last_index() + 1
            store.save(None, [Entry(i, 1) for i in range(lo, lo + 8192)])
        return rate_per_s(one, MEASURE_S)

    return measure


def run(workdir: Path) -> SectionResult:
    started = time.perf_counter()
    stores = {n: LmdbLogStorage(workdir / f"save{n}", CONFIG) for n in SAVE_BATCHES}
    apply_store = LmdbLogStorage(workdir / "apply", CONFIG)
    measures: dict[str, Measure] = {"raw": raw_lmdb(workdir / "raw")}
    measures.update({f"save{n}": saves(s, n) for n, s in stores.items()})
    measures["apply"] = applies(apply_store)
    samples: dict[str, list[float]] = {name: [] for name in measures}
    try:
        for _ in range(ROUNDS):
            for name, measure in measures.items():
                samples[name].append(measure())
    finally:
        for s in (*stores.values(), apply_store):
            s.close()
    rate = {name: median(values) for name, values in samples.items()}
    paired = median([s / r for s, r in zip(samples["save1"], samples["raw"], strict=True)])
    metrics = [Metric("raw_lmdb_synced_txn_per_s", rate["raw"], "txn/s")]
    for n in SAVE_BATCHES:
        metrics.append(Metric(f"save_{n}_commits_per_s", rate[f"save{n}"], "commits/s"))
    metrics += [
        Metric("save_64_entries_per_s", rate["save64"] * 64, "entries/s"),
        Metric("save_512_entries_per_s", rate["save512"] * 512, "entries/s", goal_min=100_000),
        Metric(f"apply_{APPLY_BATCH}_entries_per_s", rate["apply"], "entries/s"),
        Metric("save_1_vs_raw_ratio", paired, "ratio", goal_min=0.8),
    ]
    context: dict[str, object] = {
        "workdir_filesystem": filesystem_of(workdir),
        "rounds": ROUNDS,
        "slice_s": MEASURE_S,
        "payload_bytes": len(PAYLOAD),
        "samples_per_s": {k: [round(v, 1) for v in vs] for k, vs in samples.items()},
        "lmdb_version": ".".join(map(str, lmdb.version())),
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    return SectionResult(metrics, context)
