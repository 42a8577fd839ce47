"""The leader's view of each follower's log: replication state and flow control.

States (after etcd's ``tracker.Progress``)::

    PROBE      we do not know where the follower's log ends: send one AppendEntries,
               then wait for its answer (or the next heartbeat answer) before the next.
    REPLICATE  the follower is in step: pipeline AppendEntries optimistically, bounded
               by ``max_inflight_msgs`` messages and ``max_inflight_bytes`` bytes.
    SNAPSHOT   the follower needs a snapshot: stream its chunks with a bounded
               window; a lost chunk is resent from the last acknowledged offset.

Moves: PROBE -> REPLICATE on a successful answer; REPLICATE -> PROBE on a rejection
or an unreachable report; any -> SNAPSHOT when the entries it needs were compacted;
SNAPSHOT -> PROBE once the snapshot is installed.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from consensus.types import Snapshot


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Inflights:
    """A bounded window of in-flight AppendEntries: (last index, bytes) per message."""

    max_msgs: int
    max_bytes: int
    items: deque[tuple[int, int]] = field(default_factory=deque)
    bytes: int = 0

    def full(self) -> bool:
        return len(self.items) >= self.max_msgs or self.bytes >= self.max_bytes

    def add(self, last_index: int, size: int) -> None:
        assert not self.full(), "sending beyond the in-flight window"
        self.items.append((last_index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        """Forget every message whose last entry is at or below an acknowledged index."""
        while self.items and self.items[0][0] <= index:
            self.bytes -= self.items.popleft()[1]

    def free_first(self) -> None:
        if self.items:
            self.bytes -= self.items.popleft()[1]

    def reset(self) -> None:
        self.items.clear()
        self.bytes = 0


@dataclass(slots=True)
class SnapshotTransfer:
    """A snapshot being streamed: bytes below ``acked`` were confirmed, below ``sent`` sent."""

    snapshot: Snapshot
    sent: int = 0
    acked: int = 0
    done_sent: bool = False
    stalled_heartbeats: int = 0
    rewound_to: int = -1

    def rewind(self, offset: int) -> None:
        """Resend from ``offset`` (at most once per offset until progress is made)."""
        self.sent = self.rewound_to = offset
        self.done_sent = False
        self.stalled_heartbeats = 0


@dataclass(slots=True)
class Progress:
    match: int
    next: int
    inflights: Inflights
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    recent_active: bool = False
    transfer: SnapshotTransfer | None = None

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT and self.transfer is not None:
            self.next = max(self.match + 1, self.transfer.snapshot.meta.index + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.transfer = SnapshotTransfer(snapshot)

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.transfer = None if state is not ProgressState.SNAPSHOT else self.transfer
        self.inflights.reset()

    def is_paused(self) -> bool:
        match self.state:
            case ProgressState.PROBE:
                return self.probe_sent
            case ProgressState.REPLICATE:
                return self.inflights.full()
            case ProgressState.SNAPSHOT:
                return True

    def sent_entries(self, count: int, size: int) -> None:
        """Record an AppendEntries carrying ``count`` entries after ``next - 1``."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next += count
                self.inflights.add(self.next - 1, size)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to ``index``; True when it moved ``match``."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """A rejection of the probe at ``rejected``; False when it is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True
