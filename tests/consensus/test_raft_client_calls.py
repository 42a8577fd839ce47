"""The rules of the client-facing calls on a single Raft core: ReadIndex, leadership
transfer and membership changes (see ``test_raft_rules.py`` for the conventions)."""

from __future__ import annotations

import random

import pytest

from consensus.raft import (
    ConfChangeRefused,
    Config,
    NotLeader,
    ProposalDropped,
    Raft,
)
from consensus.storage import MemoryStorage
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeOp,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    RequestVote,
    RequestVoteResponse,
    Role,
    TimeoutNow,
    encode_conf_change,
)
from tests.consensus.cores import drain, make, make_leader


# ================================================================ read index
def test_read_index_on_the_leader_waits_for_a_heartbeat_quorum() -> None:
    r = make_leader()
    r.read_index(b"r")
    assert drain(r) == [
        Heartbeat(1, "a", "b", 1, read_seq=1),
        Heartbeat(1, "a", "c", 1, read_seq=1),
    ]
    r.step(HeartbeatResponse(1, "b", "a", read_seq=0))  # an older round
    assert r.ready().read_states == ()
    r.step(HeartbeatResponse(1, "b", "a", read_seq=1))
    assert r.ready().read_states == (ReadState(1, b"r"),)


def test_read_index_before_committing_in_term_waits() -> None:
    r = make(voters="abc", terms=(1, 1), term=1, pre_vote=False)
    r.campaign()
    r.step(RequestVoteResponse(2, "b", "a", True))
    drain(r)
    r.read_index(b"r")
    assert drain(r) == []
    r.step(AppendEntriesResponse(2, "b", "a", 3))
    hb = [m for m in drain(r) if isinstance(m, Heartbeat)]
    assert [m.read_seq for m in hb] == [1, 1]
    r.step(HeartbeatResponse(2, "b", "a", read_seq=1))
    assert r.ready().read_states == (ReadState(3, b"r"),)


def test_read_index_on_a_follower_is_forwarded_and_answered() -> None:
    r = make(terms=(1,), term=1)
    with pytest.raises(NotLeader):
        r.read_index(b"r")  # no known leader
    r.step(Heartbeat(1, "b", "a", 1))
    drain(r)
    r.read_index(b"r")
    assert drain(r) == [ReadIndexRequest(1, "a", "b", b"r")]
    r.step(ReadIndexResponse(1, "b", "a", b"r", 7))
    r.step(ReadIndexResponse(1, "b", "a", b"q", 0))  # the leader could not serve it
    assert r.ready().read_states == (ReadState(7, b"r"),)


def test_a_leader_answers_forwarded_reads_after_its_round() -> None:
    r = make_leader()
    r.step(ReadIndexRequest(1, "c", "a", b"r"))
    drain(r)
    r.step(HeartbeatResponse(1, "b", "a", read_seq=1))
    assert drain(r) == [ReadIndexResponse(1, "a", "c", b"r", 1)]


def test_pending_reads_are_bounded() -> None:
    r = make_leader(max_pending_reads=2)
    r.read_index(b"1")
    r.read_index(b"2")
    with pytest.raises(ProposalDropped):
        r.read_index(b"3")
    r.step(ReadIndexRequest(1, "c", "a", b"4"))
    assert drain(r)[-1] == ReadIndexResponse(1, "a", "c", b"4", 0)


def test_losing_leadership_drops_pending_reads() -> None:
    r = make_leader()
    r.read_index(b"r")
    r.step(AppendEntries(2, "b", "a", 1, 1, (), 1))
    r.step(HeartbeatResponse(2, "c", "a", read_seq=1))
    assert r.ready().read_states == ()


# ================================================================ transfer
def test_transfer_to_an_up_to_date_voter_sends_timeout_now() -> None:
    r = make_leader()
    r.transfer_leadership("b")
    assert drain(r) == [TimeoutNow(1, "a", "b")]
    with pytest.raises(ProposalDropped):
        r.propose(b"x")


def test_timeout_now_starts_a_real_election_flagged_as_transfer() -> None:
    r = make(id="b", terms=(1,), term=1)
    r.step(TimeoutNow(1, "a", "b"))
    assert (r.role, r.term) == (Role.CANDIDATE, 2)
    assert drain(r) == [
        RequestVote(2, "b", "a", 1, 1, transfer=True),
        RequestVote(2, "b", "c", 1, 1, transfer=True),
    ]


def test_transfer_to_a_lagging_voter_waits_for_it_to_catch_up() -> None:
    r = make_leader()
    r.propose(b"x")
    r.step(AppendEntriesResponse(1, "c", "a", 2))
    drain(r)
    r.transfer_leadership("b")
    assert not [m for m in drain(r) if isinstance(m, TimeoutNow)]
    r.step(AppendEntriesResponse(1, "b", "a", 2))
    assert TimeoutNow(1, "a", "b") in drain(r)


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    r = make_leader(election_ticks_min=10)
    r.transfer_leadership("b")
    for _ in range(9):
        r.tick()
        r.step(HeartbeatResponse(1, "c", "a"))
    with pytest.raises(ProposalDropped):
        r.propose(b"x")
    r.tick()
    assert r.propose(b"x") == 2


def test_transfer_refusals() -> None:
    r = make_leader(learners="d")
    with pytest.raises(ProposalDropped):
        r.transfer_leadership("d")  # a learner
    r.transfer_leadership("a")  # to ourselves: nothing to do
    assert r.lead_transferee is None
    with pytest.raises(NotLeader):
        make().transfer_leadership("b")


# ================================================================ membership
def test_a_configuration_takes_effect_when_appended() -> None:
    r = make_leader()
    r.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "d"))
    assert r.conf() == ConfState(frozenset("abc"), frozenset("d"))
    assert "d" in r.progress
    assert r.conf_at(1) == ConfState(frozenset("abc"))
    assert r.conf_at(2) == r.conf()


def test_a_follower_rolls_its_configuration_back_when_the_entry_is_truncated() -> None:
    r = make(terms=(1,), term=1)
    cc = Entry(
        2, 1, EntryType.CONF_CHANGE, encode_conf_change(ConfChange(ConfChangeOp.REMOVE, "c"))
    )
    r.step(AppendEntries(1, "b", "a", 1, 1, (cc,), 1))
    assert r.conf().voters == frozenset("ab")
    r.step(AppendEntries(2, "c", "a", 1, 1, (Entry(2, 2),), 1))
    assert r.conf().voters == frozenset("abc")


def test_a_restarted_core_rebuilds_its_configuration_from_the_log() -> None:
    storage = MemoryStorage(ConfState(frozenset("abc")))
    add = encode_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "d"))
    promote = encode_conf_change(ConfChange(ConfChangeOp.PROMOTE, "d"))
    storage.save(
        HardState(1, None, 0),
        [
            Entry(1, 1),
            Entry(2, 1, EntryType.CONF_CHANGE, add),
            Entry(3, 1, EntryType.CONF_CHANGE, promote),
        ],
    )
    r = Raft(Config(id="a"), storage, random.Random(0))
    assert r.conf() == ConfState(frozenset("abcd"))
    assert r.conf_at(2) == ConfState(frozenset("abc"), frozenset("d"))


@pytest.mark.parametrize(
    ("cc", "why"),
    [
        (ConfChange(ConfChangeOp.ADD_LEARNER, "b"), "already a member"),
        (ConfChange(ConfChangeOp.PROMOTE, "b"), "not a learner"),
        (ConfChange(ConfChangeOp.REMOVE, "z"), "not a member"),
    ],
)
def test_senseless_membership_changes_are_refused(cc: ConfChange, why: str) -> None:
    r = make_leader()
    with pytest.raises(ConfChangeRefused, match=why):
        r.propose_conf_change(cc)


def test_one_membership_change_at_a_time() -> None:
    r = make_leader(learners="d")
    r.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "e"))
    with pytest.raises(ConfChangeRefused, match="pending"):
        r.propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, "d"))
    r.step(AppendEntriesResponse(1, "b", "a", 2))
    r.step(AppendEntriesResponse(1, "d", "a", 2))
    assert r.propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, "d")) == 3


def test_a_lagging_learner_is_not_promoted() -> None:
    r = make_leader(learners="d")
    r.propose(b"x")
    r.step(AppendEntriesResponse(1, "b", "a", 2))
    with pytest.raises(ConfChangeRefused, match="caught up"):
        r.propose_conf_change(ConfChange(ConfChangeOp.PROMOTE, "d"))


def test_no_membership_change_before_an_entry_of_the_term_commits() -> None:
    r = make(terms=(1,), term=1, pre_vote=False)
    r.campaign()
    r.step(RequestVoteResponse(2, "b", "a", True))
    with pytest.raises(ConfChangeRefused, match="not committed"):
        r.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "d"))
