"""LmdbLogStorage beyond the shared contract: a differential run against the in-memory
twin, the state-machine tables, schema and lock checks, map growth and full disks,
corruption detection, and concurrent readers."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lmdb_raw import flip_byte, rewrite

from consensus.storage import MemoryStorage
from consensus.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from storage import (
    CorruptRecord,
    LmdbLogStorage,
    SchemaTooNew,
    StorageFull,
    StoreConfig,
    StoreLocked,
    Table,
)
from storage import tables as t
from storage.codec import encode_entry, encode_nat
from storage.errors import CorruptEntry, SchemaError
from storage.state import Write

if TYPE_CHECKING:
    from storage.env import Db, Txn

CONF = ConfState(voters=frozenset({"n1"}))
SMALL = StoreConfig(term_runs_cached_max=2, open_verify_entries=3)


def ents(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(i, term, data=f"{i}/{term}".encode()) for i in range(lo, hi)]


# ---------------------------------------------------------------- differential


class Pair:
    """The same operations on MemoryStorage (the model) and LMDB; compare after each."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        self.path, self.rng = path, rng
        self.mem = MemoryStorage(CONF)
        self.db = LmdbLogStorage(path, SMALL, initial_conf=CONF)
        self.term = 1

    def check(self) -> None:
        m, d = self.mem, self.db
        assert (d.first_index(), d.last_index()) == (m.first_index(), m.last_index())
        lo, hi = m.first_index(), m.last_index()
        assert [d.term(i) for i in range(lo - 1, hi + 1)] == [
            m.term(i) for i in range(lo - 1, hi + 1)
        ]
        assert d.entries(lo, hi + 1) == m.entries(lo, hi + 1)
        assert d.initial_state() == m.initial_state()
        assert d.snapshot().meta == m.snapshot().meta

    def append(self) -> None:
        m, rng = self.mem, self.rng
        # Applied entries are committed: a new leader never overwrites them.
        start = rng.randint(max(m.first_index(), self.db.applied_index() + 1), m.last_index() + 1)
        if start <= m.last_index():
            self.term += 1  # only a newer leader overwrites entries
        batch = ents(start, start + rng.randint(1, 12), self.term)
        hs = HardState(self.term, "n1", 0) if rng.random() < 0.5 else None
        for s in (m, self.db):
            s.save(hs, batch)

    def leader_snapshot(self) -> None:
        m = self.mem
        index = self.rng.randint(
            max(m.first_index(), self.db.applied_index() + 1), m.last_index() + 3
        )
        term = m.term(index) if index <= m.last_index() else self.term
        from storage.image import encode_image

        rows = [(Table.RUNS, f"r{index}".encode(), b"x")]
        snap = Snapshot(SnapshotMeta(index, term, CONF), encode_image(index, term, rows))
        for s in (m, self.db):
            s.save(HardState(self.term, None, index), [], snap)
        assert self.db.get(Table.RUNS, f"r{index}".encode()) == b"x"

    def compact(self) -> None:
        m, d = self.mem, self.db
        lo = max(d.applied_index(), m.snapshot().meta.index) + 1
        if lo > m.last_index():
            return
        index = self.rng.randint(lo, m.last_index())
        d.apply([], index)
        snap = d.create_snapshot(index, d.term(index), CONF)
        for s in (m, d):
            s.set_snapshot(snap)
        upto = self.rng.randint(m.first_index() - 1, index)
        for s in (m, d):
            s.compact(upto)

    def restart(self) -> None:
        self.db.close()
        self.mem = self.mem.crashed()
        self.db = LmdbLogStorage(self.path, SMALL)


@pytest.mark.parametrize("seed", range(6))
def test_lmdb_matches_the_in_memory_twin(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    pair = Pair(tmp_path / "n", rng)
    ops = [pair.append] * 6 + [pair.leader_snapshot, pair.compact, pair.compact, pair.restart]
    try:
        for _ in range(150):
            rng.choice(ops)()
            pair.check()
        assert pair.db.verify() == pair.mem.last_index() - pair.mem.first_index() + 1
    finally:
        pair.db.close()


# ----------------------------------------------------------------- state machine


@pytest.fixture
def store(tmp_path: Path) -> LmdbLogStorage:
    s = LmdbLogStorage(tmp_path / "n", initial_conf=CONF)
    s.save(HardState(1, "n1", 10), ents(1, 11, 1))
    return s


def test_apply_writes_and_the_applied_index_together(store: LmdbLogStorage, tmp_path: Path) -> None:
    store.apply([(Table.JOBS, b"a", b"1"), (Table.JOBS, b"b", b"2"), (Table.RUNS, b"r", b"x")], 3)
    store.apply([(Table.JOBS, b"a", None), (Table.JOBS, b"zz", None)], 4)  # deletes
    assert store.applied_index() == 4
    assert (store.get(Table.JOBS, b"a"), store.get(Table.JOBS, b"b")) == (None, b"2")
    with pytest.raises(AssertionError):
        store.apply([(Table.JOBS, b"c", b"3")], 4)  # applying index 4 twice
    with pytest.raises(AssertionError):
        store.apply([], 11)  # beyond the log
    store.close()
    again = LmdbLogStorage(tmp_path / "n")
    assert again.applied_index() == 4
    assert again.get(Table.RUNS, b"r") == b"x"
    again.close()


def test_a_failed_apply_leaves_nothing(
    store: LmdbLogStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage.state import put_writes

    def half_then_fail(txn: Txn, dbs: Mapping[str, Db], writes: Sequence[Write]) -> None:
        put_writes(txn, dbs, writes[:1])
        raise RuntimeError("crash inside the transaction")

    monkeypatch.setattr("storage.log.put_writes", half_then_fail)
    with pytest.raises(RuntimeError):
        store.apply([(Table.JOBS, b"a", b"1"), (Table.JOBS, b"b", b"2")], 2)
    monkeypatch.undo()
    assert store.get(Table.JOBS, b"a") is None
    assert store.applied_index() == 0
    store.apply([(Table.JOBS, b"a", b"1")], 2)
    assert store.get(Table.JOBS, b"a") == b"1"
    store.close()


def test_scan_prefix_start_end_and_limit(store: LmdbLogStorage) -> None:
    keys = [t.fire_key(job, at) for job in ("job1", "job10", "job2") for at in (5, 300, 70_000)]
    store.apply([(Table.FIRES, k, b"run") for k in keys], 1)
    job1 = store.scan(Table.FIRES, prefix=t.fire_prefix("job1"))
    assert [t.decode_fire_key(k) for k, _ in job1] == [("job1", 5), ("job1", 300), ("job1", 70_000)]
    page = store.scan(Table.FIRES, limit=4)
    rest = store.scan(Table.FIRES, start=t.key_successor(page[-1][0]), limit=100)
    assert [k for k, _ in page + rest] == sorted(keys)
    assert (
        len(store.scan(Table.FIRES, start=t.fire_key("job10", 6), end=t.fire_key("job2", 0))) == 2
    )
    assert store.scan(Table.JOBS) == []
    with pytest.raises(AssertionError):
        store.scan(Table.FIRES, limit=store.config.scan_items_max + 1)
    store.close()


def test_index_keys_sort_as_the_scheduler_needs(store: LmdbLogStorage) -> None:
    due = [(1_700_000_000_500, "b"), (1_700_000_000_000, "z"), (1_800_000_000_000, "a")]
    queued = [
        ("n1", 5, 100, "r1"),
        ("n1", 9, 200, "r2"),
        ("n1", 9, 150, "r3"),
        ("n10", 99, 1, "r4"),
    ]
    writes = [(Table.NEXT_FIRE, t.next_fire_key(at, j), b"") for at, j in due]
    writes += [(Table.QUEUE, t.queue_key(*q), b"") for q in queued]
    store.apply(writes, 1)
    now_due = store.scan(Table.NEXT_FIRE, end=t.next_fire_until(1_700_000_000_500))
    assert [t.decode_next_fire_key(k) for k, _ in now_due] == sorted(due)[:2]
    n1 = [t.decode_queue_key(k) for k, _ in store.scan(Table.QUEUE, prefix=t.queue_prefix("n1"))]
    assert [q[3] for q in n1] == ["r3", "r2", "r1"]  # priority first, then oldest
    assert n1[0] == ("n1", 9, 150, "r3")
    with pytest.raises(AssertionError):
        t.job_key("bad\x00id")
    store.close()


# ------------------------------------------------------------ schema and locking


def test_a_newer_schema_refuses_to_open(store: LmdbLogStorage, tmp_path: Path) -> None:
    store.close()
    rewrite(
        tmp_path / "n", t.DB_META, t.META_SCHEMA_VERSION, lambda _: encode_nat(t.SCHEMA_VERSION + 1)
    )
    with pytest.raises(SchemaTooNew, match="schema version 2"):
        LmdbLogStorage(tmp_path / "n")
    rewrite(tmp_path / "n", t.DB_META, t.META_SCHEMA_VERSION, lambda _: None)
    with pytest.raises(SchemaError, match="no schema version"):
        LmdbLogStorage(tmp_path / "n")


def test_a_directory_opens_once(store: LmdbLogStorage, tmp_path: Path) -> None:
    with pytest.raises(StoreLocked):
        LmdbLogStorage(tmp_path / "n")
    store.close()
    LmdbLogStorage(tmp_path / "n").close()


# ----------------------------------------------------------- growth and fullness


def test_the_map_grows_and_retries_the_transaction(tmp_path: Path) -> None:
    cfg = StoreConfig(map_bytes_initial=256 << 10)
    s = LmdbLogStorage(tmp_path / "n", cfg)
    big = [Entry(i, 1, data=bytes(1000)) for i in range(1, 2001)]  # ~2 MB in one save
    s.save(HardState(1, None, 0), big)
    stats = s.statistics()
    assert stats.map_grows >= 3 and stats.map_bytes >= 2 << 20
    s.close()
    s = LmdbLogStorage(tmp_path / "n", cfg)
    assert s.entries(1, 2001) == big
    s.close()


def test_a_full_map_raises_storage_full_and_writes_nothing(tmp_path: Path) -> None:
    s = LmdbLogStorage(
        tmp_path / "n", StoreConfig(map_bytes_initial=256 << 10, map_bytes_max=1 << 20)
    )
    s.save(HardState(1, None, 0), ents(1, 11, 1))
    with pytest.raises(StorageFull, match="maximum"):
        s.save(HardState(2, "n1", 0), [Entry(i, 2, data=bytes(4000)) for i in range(11, 400)])
    assert (s.last_index(), s.initial_state()[0]) == (10, HardState(1, None, 0))
    s.save(None, ents(11, 12, 2))  # small writes still fit
    assert s.verify() == 11
    s.close()


DISK_FULL_CHILD = """
import resource, signal, sys
from consensus.types import Entry, HardState
from storage import LmdbLogStorage, StorageFull, StoreConfig
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # exceeding the limit then fails with EFBIG
s = LmdbLogStorage(sys.argv[1], StoreConfig(map_bytes_initial=64 << 20))
limit = 2 << 20
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
last = 0
try:
    while True:
        s.save(HardState(1, None, 0), [Entry(last + 1 + i, 1, data=bytes(3000)) for i in range(50)])
        last += 50
except StorageFull as exc:
    assert s.last_index() == last, (s.last_index(), last)
    print(last, type(exc.__cause__).__name__, flush=True)
"""


def test_a_full_disk_raises_storage_full_and_writes_nothing(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", DISK_FULL_CHILD, str(tmp_path / "n")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    acked = int(out[0])
    assert acked > 0
    s = LmdbLogStorage(tmp_path / "n")
    assert s.last_index() == acked
    assert s.verify() == acked
    s.close()


# ------------------------------------------------------------------- corruption


def test_a_flipped_byte_is_detected_and_named(store: LmdbLogStorage, tmp_path: Path) -> None:
    store.close()
    rewrite(tmp_path / "n", t.DB_LOG, t.u64(4), flip_byte(-2))  # inside the entry's data
    s = LmdbLogStorage(tmp_path / "n", StoreConfig(open_verify_entries=3))  # 4 is not in the tail
    with pytest.raises(CorruptEntry, match="log entry 4 is corrupt") as err:
        s.entries(2, 8)
    assert err.value.index == 4
    assert s.entries(5, 11) == ents(5, 11, 1)  # the rest is still served
    with pytest.raises(CorruptEntry) as err:
        s.verify()
    assert err.value.index == 4
    s.close()


@pytest.mark.parametrize("index", [1, 10, 8])
def test_opening_refuses_a_corrupt_first_or_tail_entry(
    store: LmdbLogStorage, tmp_path: Path, index: int
) -> None:
    store.close()
    rewrite(tmp_path / "n", t.DB_LOG, t.u64(index), flip_byte(3))
    with pytest.raises(CorruptEntry) as err:
        LmdbLogStorage(tmp_path / "n", StoreConfig(open_verify_entries=3))
    assert err.value.index == index


def test_opening_refuses_a_log_with_a_hole(store: LmdbLogStorage, tmp_path: Path) -> None:
    store.close()
    rewrite(tmp_path / "n", t.DB_LOG, t.u64(5), lambda _: None)
    with pytest.raises(CorruptEntry, match="missing"):
        LmdbLogStorage(tmp_path / "n")


def test_an_entry_under_the_wrong_key_is_corrupt(store: LmdbLogStorage, tmp_path: Path) -> None:
    store.close()
    rewrite(tmp_path / "n", t.DB_LOG, t.u64(10), lambda _: encode_entry(Entry(9, 1, data=b"9/1")))
    with pytest.raises(CorruptEntry) as err:
        LmdbLogStorage(tmp_path / "n")
    assert err.value.index == 10


def test_opening_refuses_a_corrupt_hard_state(store: LmdbLogStorage, tmp_path: Path) -> None:
    store.close()
    rewrite(tmp_path / "n", t.DB_META, t.META_HARD_STATE, flip_byte(0))
    with pytest.raises(CorruptRecord, match="hard state"):
        LmdbLogStorage(tmp_path / "n")


def test_every_single_byte_flip_of_an_entry_is_caught() -> None:
    from storage.codec import decode_entry

    for entry in (Entry(7, 3, data=b"payload" * 5), Entry(300, 70_000, data=b"")):
        raw = encode_entry(entry)
        assert decode_entry(entry.index, raw) == entry
        for pos in range(len(raw)):
            for mask in (0x01, 0x80, 0xFF):
                bad = bytearray(raw)
                bad[pos] ^= mask
                with pytest.raises(CorruptEntry):
                    decode_entry(entry.index, bytes(bad))
        with pytest.raises(CorruptEntry):
            decode_entry(entry.index, raw[:-1])


# ------------------------------------------------------------------- threads


def test_readers_run_beside_the_writer_while_the_map_grows(tmp_path: Path) -> None:
    s = LmdbLogStorage(
        tmp_path / "n", StoreConfig(map_bytes_initial=256 << 10, term_runs_cached_max=2)
    )
    s.save(None, ents(1, 2, 1))
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        rng = random.Random(1)
        try:
            while not stop.is_set():
                last = s.last_index()
                lo = rng.randint(1, last)
                got = s.entries(lo, last + 1, 50_000)
                assert got[0].index == lo and all(e.term == e.index // 100 + 1 for e in got)
                assert s.term(lo) == lo // 100 + 1
                time.sleep(0.0002)  # spinning readers would starve the writer of the GIL
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        for lo in range(2, 3000, 50):
            s.save(None, [Entry(i, i // 100 + 1, data=bytes(900)) for i in range(lo, lo + 50)])
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert errors == []
    assert s.statistics().map_grows >= 2
    s.close()
