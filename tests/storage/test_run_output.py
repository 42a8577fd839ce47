"""Node-local run output: the rolling per-run cap, reads by offset, tails, and
retention by count and by age (time always passed in)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import LmdbLogStorage, OutputStore, StoreConfig

CAP = 1000
CFG = StoreConfig(
    output_bytes_max_per_run=CAP,
    output_chunk_bytes_max=64,
    output_runs_max=5,
    output_age_ms_max=10_000,
    output_prune_runs_max=3,
    output_read_bytes_max=4096,
)


@pytest.fixture
def out(tmp_path: Path) -> Iterator[OutputStore]:
    s = LmdbLogStorage(tmp_path / "n", CFG)
    yield s.outputs
    s.close()


def all_of(out: OutputStore, run: str) -> bytes:
    got = out.read(run, 0, CFG.output_read_bytes_max)
    assert got is not None
    return got.data


def test_append_and_read_by_offset(out: OutputStore) -> None:
    assert out.append("r1", b"hello ", now_ms=1) == 6
    assert out.append("r1", b"world", now_ms=2) == 11
    assert all_of(out, "r1") == b"hello world"
    part = out.read("r1", 3, 5)
    assert part is not None
    assert (part.offset, part.data, part.next_offset, part.size) == (3, b"lo wo", 8, 11)
    end = out.read("r1", 11, 10)
    assert end is not None and (end.data, end.offset) == (b"", 11)
    beyond = out.read("r1", 50, 10)
    assert beyond is not None and (beyond.data, beyond.offset) == (b"", 11)
    assert out.read("nobody", 0, 10) is None
    assert out.tail("r1", 5) == b"world"
    assert out.tail("nobody", 5) == b""


def test_the_cap_keeps_a_rolling_tail_with_absolute_offsets(out: OutputStore) -> None:
    rng = random.Random(3)
    written = bytearray()
    for _ in range(60):
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(0, 150)))
        written += chunk
        assert out.append("r", chunk, now_ms=5) == len(written)
        summary = out.summary("r")
        assert summary is not None
        assert summary.size == len(written)
        assert summary.first_offset == max(0, len(written) - CAP)
        assert all_of(out, "r") == bytes(written[summary.first_offset :])
    assert len(written) > 3 * CAP
    head = out.read("r", 0, 100)  # the head was dropped: the read starts at the first kept byte
    assert head is not None
    assert head.offset == head.first_offset == len(written) - CAP
    assert head.data == bytes(written[head.offset : head.offset + 100])
    for start in (len(written) - CAP, len(written) - 333, len(written) - 1):
        got = out.read("r", start, 77)
        assert got is not None and got.data == bytes(written[start : start + 77])
    assert out.tail("r", 10) == bytes(written[-10:])
    assert out.tail("r", 4000) == bytes(written[-CAP:])


def test_one_append_larger_than_the_cap_keeps_its_end(out: OutputStore) -> None:
    out.append("r", b"a" * 10, now_ms=1)
    big = bytes(range(256)) * 10
    assert out.append("r", big, now_ms=2) == 10 + len(big)
    assert all_of(out, "r") == big[-CAP:]


def test_retention_by_count_evicts_the_least_recently_written(out: OutputStore) -> None:
    for i in range(5):
        out.append(f"r{i}", b"x", now_ms=100 + i)
    out.append("r0", b"y", now_ms=200)  # r0 is now the most recent
    out.append("r5", b"z", now_ms=201)  # a sixth run: r1 goes
    assert out.run_count() == 5
    assert out.summary("r1") is None
    assert [out.summary(f"r{i}") is not None for i in (0, 2, 3, 4, 5)] == [True] * 5
    assert all_of(out, "r0") == b"xy"


def test_retention_by_age_is_bounded_per_call(out: OutputStore) -> None:
    for i in range(5):
        out.append(f"r{i}", b"data" * 100, now_ms=1_000 * i)  # r0..r4 written at 0..4000
    # The age limit is 10 s: at 12.5 s, r0..r2 (written before 2.5 s) have expired.
    assert out.prune(now_ms=12_500) == 3
    assert out.prune(now_ms=12_500) == 0
    assert [out.summary(f"r{i}") is None for i in range(5)] == [True] * 3 + [False] * 2
    out.append("r3", b"!", now_ms=12_600)  # a write makes a run young again
    for i in range(5, 9):
        out.append(f"r{i}", b"x", now_ms=13_000)
    assert out.run_count() == 5  # the count limit evicted r4 for r8
    # At 30 s everything has expired, but one call drops at most 3 runs.
    assert out.prune(now_ms=30_000) == 3
    assert out.prune(now_ms=30_000) == 2
    assert out.run_count() == 0
    assert out.read("r3", 0, 10) is None


def test_delete_and_output_survive_a_restart(tmp_path: Path) -> None:
    s = LmdbLogStorage(tmp_path / "n", CFG)
    s.outputs.append("a", b"alpha", now_ms=1)
    s.outputs.append("b", b"beta", now_ms=1)
    assert s.outputs.delete("a") and not s.outputs.delete("a")
    s.close()
    s = LmdbLogStorage(tmp_path / "n", CFG)
    assert s.outputs.summary("a") is None and all_of(s.outputs, "b") == b"beta"
    s.close()


def test_bounds_are_enforced(out: OutputStore) -> None:
    with pytest.raises(AssertionError):
        out.read("r", 0, CFG.output_read_bytes_max + 1)
    with pytest.raises(AssertionError):
        out.append("r", bytes(CFG.output_append_bytes_max + 1), now_ms=1)
    with pytest.raises(AssertionError):
        out.append("bad\x00id", b"x", now_ms=1)
