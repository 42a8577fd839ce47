"""Child processes for the crash tests (run as a script; the parent SIGKILLs them).

``log DIR SEED``: a Raft-like writer. Before each write it prints an ``intent`` line
describing it, after the write returns an ``ack`` line, each flushed at once. Entry
contents are a pure function of (index, term), so the parent can rebuild and check
every acknowledged entry without the child listing them.

``install DIR N``: builds an image of N rows, prints ``installing``, installs it
(one transaction), prints ``installed``.

Line format (space-separated): ``intent|ack save LO HI TERM HS_TERM HS_VOTE HS_COMMIT
CRC`` (LO..HI-1 the entries, ``-`` for no hard state, CRC over the entries' checksums)
and ``intent|ack compact INDEX``.
"""

from __future__ import annotations

import random
import sys
import zlib
from dataclasses import dataclass

from consensus.types import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from storage import LmdbLogStorage, Table
from storage.image import encode_image

CONF = ConfState(voters=frozenset({"n1", "n2", "n3"}))
VOTES = ("n1", "n2", "n3")


def entry(index: int, term: int) -> Entry:
    size = zlib.crc32(f"{index}:{term}".encode()) % 300
    return Entry(index, term, data=(f"{index}/{term}|".encode() * 40)[:size])


def batch_crc(entries: list[Entry]) -> int:
    crc = 0
    for e in entries:
        crc = zlib.crc32(e.checksum().to_bytes(4, "big"), crc)
    return crc


@dataclass
class Save:
    lo: int
    hi: int
    term: int
    hard_state: HardState | None
    crc: int

    def line(self, kind: str) -> str:
        hs = self.hard_state
        fields = ["-", "-", "-"] if hs is None else [hs.term, hs.vote or "-", hs.commit]
        return " ".join(
            str(x) for x in [kind, "save", self.lo, self.hi, self.term, *fields, self.crc]
        )

    @classmethod
    def parse(cls, words: list[str]) -> Save:
        lo, hi, term = int(words[0]), int(words[1]), int(words[2])
        hs = None
        if words[3] != "-":
            hs = HardState(int(words[3]), None if words[4] == "-" else words[4], int(words[5]))
        return cls(lo, hi, term, hs, int(words[6]))


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def next_save(s: LmdbLogStorage, rng: random.Random) -> Save:
    hard, _ = s.initial_state()
    last = s.last_index()
    last_term = s.term(last)
    term, vote, commit = max(hard.term, last_term), hard.vote, hard.commit
    if rng.random() < 0.15 or term == 0:  # a new term: maybe a vote, maybe a new leader
        term += rng.randint(1, 2)
        vote = rng.choice((None, *VOTES))
    elif vote is None and rng.random() < 0.3:
        vote = rng.choice(VOTES)
    lo = last + 1
    if term > last_term and last > commit and rng.random() < 0.3:
        lo = rng.randint(max(commit, s.first_index() - 1) + 1, last)  # overwrite a suffix
    hi = lo + rng.choice((0, 1, 1, 3, 8, 20, 64))
    entries = [entry(i, term) for i in range(lo, hi)]
    commit = max(commit, rng.randint(commit, min(hi - 1, last) if hi > lo else last))
    hs = HardState(term, vote, commit) if rng.random() < 0.8 or not entries else None
    return Save(lo, hi, term, hs, batch_crc(entries))


def run_log(path: str, seed: int) -> None:
    rng = random.Random(seed)
    s = LmdbLogStorage(path, initial_conf=CONF)
    emit("ready")
    while True:
        hard, _ = s.initial_state()
        if rng.random() < 0.04 and hard.commit > max(s.applied_index(), s.first_index()):
            index = rng.randint(max(s.applied_index(), s.first_index()) + 1, hard.commit)
            emit(f"intent compact {index}")
            s.apply([(Table.JOBS, b"applied", str(index).encode())], index)
            s.set_snapshot(s.create_snapshot(index, s.term(index), CONF))
            s.compact(index)
            emit(f"ack compact {index}")
            continue
        save = next_save(s, rng)
        emit(save.line("intent"))
        entries = [entry(i, save.term) for i in range(save.lo, save.hi)]
        s.save(save.hard_state, entries)
        emit(save.line("ack"))


def big_image(index: int, term: int, rows: int) -> Snapshot:
    records = [(Table.RUNS, b"run-%09d" % i, b"r" * 100) for i in range(rows)]
    return Snapshot(SnapshotMeta(index, term, CONF), encode_image(index, term, records))


def run_install(path: str, rows: int) -> None:
    s = LmdbLogStorage(path)
    snap = big_image(s.last_index() + 100, s.term(s.last_index()) + 1, rows)
    emit("installing")
    s.install_snapshot(snap)
    emit("installed")


if __name__ == "__main__":
    if sys.argv[1] == "log":
        run_log(sys.argv[2], int(sys.argv[3]))
    else:
        run_install(sys.argv[2], int(sys.argv[3]))
