"""Autopilot's membership decisions."""

from __future__ import annotations

from consensus.types import ConfChange, ConfChangeOp, ConfState
from node.autopilot import PeerHealth, decide

ALIVE = PeerHealth(alive=True, down_for_s=0.0, match_index=100, has_raft_address=True)


def down(seconds: float) -> PeerHealth:
    return PeerHealth(alive=False, down_for_s=seconds, match_index=50, has_raft_address=True)


def conf(voters: str, learners: str = "") -> ConfState:
    return ConfState(frozenset(voters.split()), frozenset(learners.split()))


def test_new_gossip_member_is_added_as_learner() -> None:
    health = {"n2": ALIVE, "n3": ALIVE, "n4": ALIVE}
    assert decide(conf("n1 n2 n3"), "n1", 100, health, 3, 30) == ConfChange(
        ConfChangeOp.ADD_LEARNER, "n4"
    )


def test_nothing_to_do_in_a_healthy_cluster() -> None:
    assert decide(conf("n1 n2 n3"), "n1", 100, {"n2": ALIVE, "n3": ALIVE}, 3, 30) is None


def test_caught_up_learner_replaces_a_dead_voter_first_then_dead_voter_is_removed() -> None:
    health = {"n2": ALIVE, "n3": down(60), "n4": ALIVE}
    assert decide(conf("n1 n2 n3", "n4"), "n1", 100, health, 3, 30) == ConfChange(
        ConfChangeOp.PROMOTE, "n4"
    )
    assert decide(conf("n1 n2 n3 n4"), "n1", 100, health, 3, 30) == ConfChange(
        ConfChangeOp.REMOVE, "n3"
    )


def test_lagging_learner_is_not_promoted() -> None:
    lagging = PeerHealth(alive=True, down_for_s=0, match_index=10, has_raft_address=True)
    health = {"n2": ALIVE, "n3": down(60), "n4": lagging}
    assert decide(conf("n1 n2 n3", "n4"), "n1", 100, health, 3, 30) is None


def test_voter_within_grace_is_kept_and_target_size_is_kept_without_replacement() -> None:
    assert decide(conf("n1 n2 n3"), "n1", 100, {"n2": ALIVE, "n3": down(5)}, 3, 30) is None
    assert decide(conf("n1 n2 n3"), "n1", 100, {"n2": ALIVE, "n3": down(600)}, 3, 30) is None


def test_dead_learner_is_removed_after_grace() -> None:
    health = {"n2": ALIVE, "n3": ALIVE, "n4": down(31)}
    assert decide(conf("n1 n2 n3", "n4"), "n1", 100, health, 3, 30) == ConfChange(
        ConfChangeOp.REMOVE, "n4"
    )


def test_member_without_raft_address_is_not_added() -> None:
    no_addr = PeerHealth(alive=True, down_for_s=0, match_index=0, has_raft_address=False)
    assert (
        decide(conf("n1 n2 n3"), "n1", 100, {"n2": ALIVE, "n3": ALIVE, "n4": no_addr}, 3, 30)
        is None
    )
