"""Every bound of the store in one frozen value, with the unit in each name.

Rules: defaults are production values; tests shrink them. ``__post_init__`` rejects
nonsense (a bound of zero, an initial map above its maximum) at construction.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class StoreConfig:
    # LMDB map: starts at ``map_bytes_initial``, doubles on MapFullError up to
    # ``map_bytes_max``; past that a write raises StorageFull.
    map_bytes_initial: int = 64 * MIB
    map_bytes_max: int = 256 * GIB
    # Term cache: at most this many (first index, term) runs of the log's tail.
    term_runs_cached_max: int = 64
    # Opening checks the first entry and this many entries at the tail.
    open_verify_entries: int = 256
    # State machine: writes per apply() and items per scan().
    apply_writes_max: int = 1_000_000
    scan_items_max: int = 10_000
    # Snapshot images accepted by the assembler.
    snapshot_image_bytes_max: int = 8 * GIB
    # Run output (node-local): rolling tail of ``output_bytes_max_per_run`` per run,
    # stored in chunks of at most ``output_chunk_bytes_max``.
    output_bytes_max_per_run: int = 1 * MIB
    output_chunk_bytes_max: int = 64 * KIB
    output_append_bytes_max: int = 4 * MIB
    output_read_bytes_max: int = 1 * MIB
    output_runs_max: int = 10_000
    output_age_ms_max: int = 7 * DAY_MS
    output_prune_runs_max: int = 1_000

    def __post_init__(self) -> None:
        positive = (
            self.map_bytes_initial,
            self.term_runs_cached_max,
            self.open_verify_entries,
            self.apply_writes_max,
            self.scan_items_max,
            self.snapshot_image_bytes_max,
            self.output_bytes_max_per_run,
            self.output_chunk_bytes_max,
            self.output_append_bytes_max,
            self.output_read_bytes_max,
            self.output_runs_max,
            self.output_age_ms_max,
            self.output_prune_runs_max,
        )
        assert all(v > 0 for v in positive), f"every bound is positive: {self}"
        assert self.map_bytes_initial <= self.map_bytes_max, "initial map above its maximum"
