"""Snapshot images: framing and checksums, chunked streaming and reassembly,
installation on a fresh store, and atomicity of an install that dies half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from crash_child import big_image

from consensus.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from storage import (
    CorruptSnapshot,
    LmdbLogStorage,
    SchemaTooNew,
    SnapshotAssembler,
    SnapshotChunk,
    Table,
    snapshot_chunks,
)
from storage import tables as t
from storage.image import ImageHeader, Record, check_image, encode_image, image_records, read_header

CONF = ConfState(voters=frozenset({"n1", "n2"}), learners=frozenset({"n3"}))
ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("crash_child.py")


def rows(n: int) -> list[Record]:
    out: list[Record] = []
    for i in range(n):
        out.append((Table.JOBS, t.job_key(f"job{i:05d}"), b"job record %d" % i))
        out.append((Table.FIRES, t.fire_key(f"job{i:05d}", 1_000 * i), b"run%d" % i))
        out.append((Table.NEXT_FIRE, t.next_fire_key(5_000 + i, f"job{i:05d}"), b""))
    out.sort(key=lambda r: (list(Table).index(r[0]), r[1]))
    return out


def populated(path: Path, n: int = 300) -> LmdbLogStorage:
    s = LmdbLogStorage(path, initial_conf=CONF)
    s.save(HardState(2, "n1", 10), [Entry(i, 2, data=b"e%d" % i) for i in range(1, 11)])
    s.apply([(table, key, value) for table, key, value in rows(n)], 8)
    return s


def dump(s: LmdbLogStorage) -> dict[Table, list[tuple[bytes, bytes]]]:
    return {table: s.scan(table, limit=10_000) for table in Table}


# -------------------------------------------------------------------- framing


def test_image_round_trip() -> None:
    image = encode_image(42, 7, rows(50))
    header = check_image(image, SnapshotMeta(42, 7))
    assert (header.index, header.term, header.record_count) == (42, 7, 150)
    assert list(image_records(image, header)) == rows(50)
    empty = encode_image(1, 1, [])
    assert list(image_records(empty, check_image(empty, SnapshotMeta(1, 1)))) == []


def test_records_out_of_order_are_refused_when_encoding() -> None:
    with pytest.raises(AssertionError):
        encode_image(1, 1, [(Table.RUNS, b"b", b""), (Table.RUNS, b"a", b"")])
    with pytest.raises(AssertionError):
        encode_image(1, 1, [(Table.RUNS, b"a", b""), (Table.JOBS, b"a", b"")])


def test_every_damage_is_caught() -> None:
    image = encode_image(42, 7, rows(20))
    meta = SnapshotMeta(42, 7)
    header = read_header(image)
    assert header is not None
    for pos in [0, 9, 12, header.header_bytes - 2, header.header_bytes + 3, len(image) - 1]:
        bad = bytearray(image)
        bad[pos] ^= 0x10
        with pytest.raises(CorruptSnapshot):
            check_image(bytes(bad), meta)
    for cut in (5, 14, header.header_bytes, len(image) - 1):
        with pytest.raises(CorruptSnapshot):
            check_image(image[:cut], meta)
    with pytest.raises(CorruptSnapshot, match="index 42"):
        check_image(image, SnapshotMeta(43, 7))
    with pytest.raises(CorruptSnapshot, match="magic"):
        check_image(b"not an image at all", meta)


def test_an_image_from_a_newer_schema_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.image

    monkeypatch.setattr(storage.image, "SCHEMA_VERSION", t.SCHEMA_VERSION + 1)
    image = encode_image(3, 1, [])
    monkeypatch.undo()
    with pytest.raises(SchemaTooNew):
        check_image(image, SnapshotMeta(3, 1))


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize("chunk_bytes", [1, 7, 1000, 1 << 20])
def test_chunks_reassemble_to_the_same_snapshot(chunk_bytes: int) -> None:
    snap = Snapshot(SnapshotMeta(42, 7, CONF), encode_image(42, 7, rows(40)))
    chunks = list(snapshot_chunks(snap, chunk_bytes))
    assert all(len(c.data) <= chunk_bytes for c in chunks)
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assembler = SnapshotAssembler(snap.meta, image_bytes_max=1 << 20)
    results = [assembler.feed(c) for c in chunks]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] == snap


def test_the_assembler_rejects_what_does_not_fit() -> None:
    snap = Snapshot(SnapshotMeta(42, 7, CONF), encode_image(42, 7, rows(40)))
    chunks = list(snapshot_chunks(snap, 256))
    a = SnapshotAssembler(snap.meta, 1 << 20)
    a.feed(chunks[0])
    with pytest.raises(CorruptSnapshot, match="expected 256"):
        a.feed(chunks[2])
    with pytest.raises(CorruptSnapshot, match="another snapshot"):
        SnapshotAssembler(SnapshotMeta(41, 7, CONF), 1 << 20).feed(chunks[0])
    wrong = Snapshot(SnapshotMeta(42, 7, CONF), encode_image(40, 7, rows(40)))
    with pytest.raises(CorruptSnapshot, match="index 40"):  # from the first chunk
        SnapshotAssembler(wrong.meta, 1 << 20).feed(next(snapshot_chunks(wrong, 256)))
    with pytest.raises(CorruptSnapshot, match="exceeds"):
        SnapshotAssembler(snap.meta, 300).feed(chunks[0])  # the header announces more
    last = chunks[-1]
    damaged = SnapshotChunk(last.meta, last.offset, last.data[:-1] + b"?", True)
    b = SnapshotAssembler(snap.meta, 1 << 20)
    for c in chunks[:-1]:
        b.feed(c)
    with pytest.raises(CorruptSnapshot, match="checksum"):
        b.feed(damaged)


# ------------------------------------------------------------------- installing


def test_create_stream_install_gives_identical_tables(tmp_path: Path) -> None:
    src = populated(tmp_path / "a")
    snap = src.create_snapshot(8, 2, CONF)
    dst = LmdbLogStorage(tmp_path / "b")
    assembler = SnapshotAssembler(snap.meta, dst.config.snapshot_image_bytes_max)
    received = None
    for chunk in snapshot_chunks(snap, 4096):
        received = assembler.feed(chunk)
    assert received == snap
    dst.save(HardState(2, None, 8), [], received)
    assert dump(dst) == dump(src) != {table: [] for table in Table}
    assert (dst.applied_index(), dst.first_index(), dst.last_index(), dst.term(8)) == (8, 9, 8, 2)
    assert dst.initial_state()[1] == CONF
    assert dst.create_snapshot(8, 2, CONF).data == snap.data  # byte-identical image
    src.close()
    dst.close()
    again = LmdbLogStorage(tmp_path / "b")
    assert again.snapshot() == snap and again.verify() == 0
    again.close()


def test_install_replaces_every_table(tmp_path: Path) -> None:
    s = populated(tmp_path / "a")
    image = encode_image(20, 3, [(Table.QUEUE, t.queue_key("n1", 1, 2, "r"), b"")])
    s.install_snapshot(Snapshot(SnapshotMeta(20, 3, CONF), image))
    assert {table: len(v) for table, v in dump(s).items() if v} == {Table.QUEUE: 1}
    s.close()


def test_a_snapshot_that_is_not_an_image_changes_nothing(tmp_path: Path) -> None:
    s = populated(tmp_path / "a")
    before = (dump(s), s.first_index(), s.last_index(), s.applied_index())
    with pytest.raises(CorruptSnapshot):
        s.save(HardState(3, None, 20), [], Snapshot(SnapshotMeta(20, 3, CONF), b"opaque"))
    assert (dump(s), s.first_index(), s.last_index(), s.applied_index()) == before
    s.close()


def test_an_install_failing_half_way_leaves_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = populated(tmp_path / "a")
    before = (dump(s), s.first_index(), s.last_index(), s.applied_index(), s.snapshot())

    def dies_half_way(data: bytes, header: ImageHeader) -> Iterator[Record]:
        for n, record in enumerate(image_records(data, header)):
            if n == 500:
                raise RuntimeError("killed inside the transaction")
            yield record

    monkeypatch.setattr("storage.log.image_records", dies_half_way)
    snap = Snapshot(SnapshotMeta(30, 4, CONF), encode_image(30, 4, rows(400)))
    with pytest.raises(RuntimeError):
        s.install_snapshot(snap)
    assert (dump(s), s.first_index(), s.last_index(), s.applied_index(), s.snapshot()) == before
    s.close()
    again = LmdbLogStorage(tmp_path / "a")
    assert (dump(again), again.first_index(), again.last_index()) == before[:3]
    again.close()


def install_and_kill(path: Path, out: Path, delay_s: float | None) -> None:
    """Start an install in a child and SIGKILL it ``delay_s`` after it begins (None:
    right after it reports the install done)."""
    with out.open("wb") as f:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), "install", str(path), str(INSTALL_ROWS)],
            stdout=f,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    deadline = time.monotonic() + 30
    word = "installing" if delay_s is not None else "installed"
    while word not in out.read_text():
        assert child.poll() is None and time.monotonic() < deadline, out.read_text()
        time.sleep(0.002)
    time.sleep(delay_s or 0.0)
    child.send_signal(signal.SIGKILL)
    child.wait()


INSTALL_ROWS = 150_000  # an install of ~20 MB: a few hundred ms inside one transaction
KILL_DELAYS_S = (0.01, 0.05, 0.1, 0.2, None)


def test_a_killed_install_leaves_the_old_state_or_the_new(tmp_path: Path) -> None:
    outcomes: list[str] = []
    new: Snapshot | None = None
    # Kills early and late in the transaction, and one after its commit.
    for attempt, delay_s in enumerate(KILL_DELAYS_S):
        path = tmp_path / f"node{attempt}"
        with populated(path, n=50) as old:
            before = (dump(old), old.first_index(), old.last_index(), old.applied_index())
            if new is None:  # what the child installs (the same every time)
                term = old.term(old.last_index()) + 1
                new = big_image(old.last_index() + 100, term, INSTALL_ROWS)
        install_and_kill(path, tmp_path / "child.out", delay_s)
        with LmdbLogStorage(path) as s:
            s.verify()
            if s.applied_index() == before[3]:
                assert (dump(s), s.first_index(), s.last_index(), s.applied_index()) == before
                assert s.snapshot().meta.index == 0
                outcomes.append("old")
            else:
                index = new.meta.index
                assert s.snapshot() == new
                assert (s.first_index(), s.last_index(), s.applied_index()) == (
                    index + 1,
                    index,
                    index,
                )
                assert s.get(Table.JOBS, t.job_key("job00001")) is None
                assert len(s.scan(Table.RUNS, start=b"run-000149990", limit=100)) == 10
                outcomes.append("new")
    assert outcomes[-1] == "new" and "old" in outcomes, outcomes
