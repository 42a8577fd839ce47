"""Autopilot: the leader's membership decisions, as a pure function.

Rules (DESIGN "Membership and transport"):
- The first ``bootstrap_expect`` servers are the voters; nodes that appear later in
  gossip join as learners.
- A learner that has caught up (its match index reached the leader's commit index)
  and is alive is promoted while fewer than ``bootstrap_expect`` voters are alive.
- A voter that gossip has held suspect or dead for longer than the grace period is
  removed once the configuration has more voters than ``bootstrap_expect`` (so a
  replacement is promoted first and the voter count never drops below the target
  while a healthy learner exists). A learner gone beyond the grace period is removed.
- One change at a time: the caller only asks when no change is pending, and this
  returns at most one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from consensus.types import ConfChange, ConfChangeOp, ConfState, NodeId


@dataclass(frozen=True, slots=True)
class PeerHealth:
    """What gossip and the leader's progress say about one node."""

    alive: bool
    down_for_s: float  # how long gossip has held it suspect or dead (0 when alive)
    match_index: int
    has_raft_address: bool


def decide(
    conf: ConfState,
    leader: NodeId,
    commit_index: int,
    health: Mapping[NodeId, PeerHealth],
    bootstrap_expect: int,
    grace_s: float,
) -> ConfChange | None:
    """The next membership change the leader should propose, or None."""
    live_voters = [v for v in conf.voters if v == leader or _alive(health, v)]
    for learner in sorted(conf.learners):
        h = health.get(learner)
        if (
            len(live_voters) < bootstrap_expect
            and h is not None
            and h.alive
            and h.match_index >= commit_index
        ):
            return ConfChange(ConfChangeOp.PROMOTE, learner)
    for voter in sorted(conf.voters - {leader}):
        h = health.get(voter)
        gone = h is not None and not h.alive and h.down_for_s >= grace_s
        if gone and len(conf.voters) > bootstrap_expect:
            return ConfChange(ConfChangeOp.REMOVE, voter)
    for learner in sorted(conf.learners):
        h = health.get(learner)
        if h is not None and not h.alive and h.down_for_s >= grace_s:
            return ConfChange(ConfChangeOp.REMOVE, learner)
    for node in sorted(health):
        h = health[node]
        if node not in conf.members() and h.alive and h.has_raft_address:
            return ConfChange(ConfChangeOp.ADD_LEARNER, node)
    return None


def _alive(health: Mapping[NodeId, PeerHealth], node: NodeId) -> bool:
    h = health.get(node)
    return h is not None and h.alive
