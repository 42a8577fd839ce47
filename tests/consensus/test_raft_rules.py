"""One rule at a time: direct calls on a single Raft core, asserting exact fields.

Elections, votes and terms, the follower's AppendEntries handling, the leader's
commit and replication, follower snapshots and the Ready contract. Each test builds
a core in a known state (``cores.make``), feeds it messages or calls, and checks
what it sends, persists and becomes. Reads, transfers and membership changes are in
``test_raft_client_calls.py``; known core bugs in ``test_raft_core_bugs.py``.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from consensus.raft import (
    Config,
    NotLeader,
    ProposalDropped,
    Raft,
)
from consensus.storage import MemoryStorage
from consensus.types import (
    AppendEntries,
    AppendEntriesResponse,
    ConfState,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from tests.consensus.cores import drain, make, make_leader, vote_req


# ==================================================================== voting
def _vote_case(
    case: str,
    state: tuple[tuple[int, ...], int, str | None],
    msg: RequestVote,
    answer: tuple[int, bool] | None,
    after: tuple[int, str | None],
) -> object:
    return pytest.param(state, msg, answer, after, id=case)


VOTE_CASES = [
    # receiver (log terms, term, vote), request, answer (term, granted), (term, vote) after
    _vote_case("fresh voter", ((1,), 1, None), vote_req(2, (1, 1)), (2, True), (2, "b")),
    _vote_case("longer log", ((1,), 1, None), vote_req(2, (3, 1)), (2, True), (2, "b")),
    _vote_case("later last term", ((1, 1, 1), 1, None), vote_req(2, (1, 2)), (2, True), (2, "b")),
    _vote_case("same vote again", ((1,), 2, "b"), vote_req(2, (1, 1)), (2, True), (2, "b")),
    _vote_case("voted for another", ((1,), 2, "c"), vote_req(2, (1, 1)), (2, False), (2, "c")),
    _vote_case("shorter log", ((1, 1), 1, None), vote_req(2, (1, 1)), (2, False), (2, None)),
    _vote_case("older last term", ((1, 2), 2, None), vote_req(3, (5, 1)), (3, False), (3, None)),
    _vote_case("stale term", ((1,), 3, None), vote_req(2, (1, 1)), None, (3, None)),
    # Pre-votes never change the receiver's term or vote.
    _vote_case("pre granted", ((1,), 1, "c"), vote_req(2, (1, 1), pre=True), (2, True), (1, "c")),
    _vote_case(
        "pre stale log", ((1, 1), 1, None), vote_req(2, (1, 1), True), (1, False), (1, None)
    ),
    _vote_case(
        "pre same term", ((1,), 2, "c"), vote_req(2, (1, 1), pre=True), (2, False), (2, "c")
    ),
    _vote_case("pre stale term", ((1,), 3, None), vote_req(2, (1, 1), True), (3, False), (3, None)),
]


@pytest.mark.parametrize(("state", "msg", "answer", "after"), VOTE_CASES)
def test_vote_granting(
    state: tuple[tuple[int, ...], int, str | None],
    msg: RequestVote,
    answer: tuple[int, bool] | None,
    after: tuple[int, str | None],
) -> None:
    terms, term, vote = state
    r = make(terms=terms, term=term, vote=vote)
    r.step(msg)
    sent = drain(r)
    if answer is None:
        assert sent == []
    else:
        assert sent == [RequestVoteResponse(answer[0], "a", "b", answer[1], msg.pre_vote)]
    durable, _ = r.log.storage.initial_state()
    assert (r.term, r.vote) == (durable.term, durable.vote) == after


def test_a_vote_is_persisted_before_the_answer_is_sent() -> None:
    r = make(terms=(1,), term=1)
    r.step(vote_req(2, (1, 1)))
    rd = r.ready()
    assert rd.hard_state == HardState(2, "b", 0)
    assert rd.must_sync
    assert rd.messages == (RequestVoteResponse(2, "a", "b", True),)


def test_granting_a_vote_resets_the_election_timer() -> None:
    r = make(terms=(1,), term=1)
    for _ in range(5):
        r.tick()
    r.step(vote_req(2, (1, 1)))
    assert r.election_elapsed == 0


def test_votes_are_ignored_during_the_lease() -> None:
    r = make(terms=(1,), term=1)
    r.step(Heartbeat(1, "c", "a", 0))  # c is the leader we hear from
    drain(r)
    r.step(vote_req(2, (5, 1)))
    r.step(vote_req(2, (5, 1), pre=True))
    assert drain(r) == []
    assert (r.term, r.vote, r.leader) == (1, None, "c")


def test_a_transfer_vote_bypasses_the_lease() -> None:
    r = make(terms=(1,), term=1)
    r.step(Heartbeat(1, "c", "a", 0))
    drain(r)
    r.step(replace(vote_req(2, (1, 1)), transfer=True))
    assert drain(r) == [RequestVoteResponse(2, "a", "b", True)]
    assert (r.term, r.vote) == (2, "b")


def test_the_lease_ends_after_an_election_timeout_without_the_leader() -> None:
    r = make(terms=(1,), term=1, election_ticks_min=10, election_ticks_max=100)
    r.step(Heartbeat(1, "c", "a", 0))
    for _ in range(10):
        r.tick()
    r.step(vote_req(2, (1, 1), pre=True))
    assert drain(r)[-1] == RequestVoteResponse(2, "a", "b", True, pre_vote=True)


def test_without_check_quorum_there_is_no_lease() -> None:
    r = make(terms=(1,), term=1, check_quorum=False)
    r.step(Heartbeat(1, "c", "a", 0))
    drain(r)
    r.step(vote_req(2, (1, 1)))
    assert drain(r) == [RequestVoteResponse(2, "a", "b", True)]


def test_a_follower_that_knows_the_leader_refuses_votes_in_its_term() -> None:
    r = make(terms=(1,), term=2, check_quorum=False)
    r.step(Heartbeat(2, "c", "a", 0))
    drain(r)
    r.step(vote_req(2, (1, 1)))
    assert drain(r) == [RequestVoteResponse(2, "a", "b", False)]


def test_a_leader_refuses_votes_in_its_own_term() -> None:
    r = make_leader()
    r.step(RequestVote(1, "b", "a", 9, 1))
    assert drain(r) == [RequestVoteResponse(1, "a", "b", False)]
    assert r.role is Role.LEADER


# ================================================================= elections
def test_campaign_starts_with_a_pre_vote_that_changes_nothing_durable() -> None:
    r = make(voters="abc", learners="d", terms=(1, 1), term=1)
    r.campaign()
    rd = r.ready()
    assert r.role is Role.PRE_CANDIDATE
    assert rd.hard_state is None and not rd.must_sync
    assert rd.soft_state == SoftState(Role.PRE_CANDIDATE, None, 1)
    # Voters only (not the learner d), asking about term 2.
    assert rd.messages == (
        RequestVote(2, "a", "b", 2, 1, pre_vote=True),
        RequestVote(2, "a", "c", 2, 1, pre_vote=True),
    )


def test_a_won_pre_vote_starts_the_real_election() -> None:
    r = make(terms=(1,), term=1)
    r.campaign()
    drain(r)
    r.step(RequestVoteResponse(2, "b", "a", True, pre_vote=True))
    assert r.role is Role.CANDIDATE
    rd = r.ready()
    assert rd.hard_state == HardState(2, "a", 0) and rd.must_sync
    assert rd.messages == (RequestVote(2, "a", "b", 1, 1), RequestVote(2, "a", "c", 1, 1))


def test_a_lost_pre_vote_returns_to_follower_in_the_same_term() -> None:
    r = make(terms=(1,), term=1)
    r.campaign()
    drain(r)
    r.step(RequestVoteResponse(1, "b", "a", False, pre_vote=True))
    assert r.role is Role.PRE_CANDIDATE  # one rejection of three is not a defeat
    r.step(RequestVoteResponse(1, "c", "a", False, pre_vote=True))
    assert (r.role, r.term) == (Role.FOLLOWER, 1)


def test_a_pre_vote_rejection_from_a_later_term_brings_us_to_that_term() -> None:
    r = make(terms=(1,), term=1)
    r.campaign()
    drain(r)
    r.step(RequestVoteResponse(5, "b", "a", False, pre_vote=True))
    assert (r.role, r.term, r.vote) == (Role.FOLLOWER, 5, None)


def test_a_candidate_wins_with_a_majority_and_appends_its_no_op() -> None:
    r = make(terms=(1,), term=1, pre_vote=False)
    r.campaign()
    drain(r)
    r.step(RequestVoteResponse(2, "b", "a", True))
    assert r.role is Role.LEADER
    rd = r.ready()
    assert rd.entries == (Entry(2, 2),)
    assert rd.messages == (
        AppendEntries(2, "a", "b", 1, 1, (Entry(2, 2),), 0),
        AppendEntries(2, "a", "c", 1, 1, (Entry(2, 2),), 0),
    )


def test_a_candidate_loses_with_a_majority_of_rejections() -> None:
    r = make(voters="abcde", terms=(1,), term=1, pre_vote=False)
    r.campaign()
    drain(r)
    for p in "bc":
        r.step(RequestVoteResponse(2, p, "a", False))
    assert r.role is Role.CANDIDATE
    r.step(RequestVoteResponse(2, "d", "a", False))
    assert (r.role, r.term, r.vote) == (Role.FOLLOWER, 2, "a")


def test_votes_from_non_voters_are_not_counted() -> None:
    r = make(voters="abc", learners="d", pre_vote=False)
    r.campaign()
    r.step(RequestVoteResponse(1, "d", "a", True))
    assert r.role is Role.CANDIDATE


def test_a_candidate_steps_down_on_an_append_from_a_leader_of_its_term() -> None:
    r = make(terms=(1,), term=1, pre_vote=False)
    r.campaign()
    drain(r)
    r.step(AppendEntries(2, "b", "a", 1, 1, (), 1))
    assert (r.role, r.term, r.leader) == (Role.FOLLOWER, 2, "b")
    assert drain(r) == [AppendEntriesResponse(2, "a", "b", 1)]


def test_a_single_voter_elects_itself_at_once() -> None:
    r = make(voters="a")
    r.campaign()
    assert (r.role, r.term, r.commit_index) == (Role.LEADER, 1, 1)


def test_learners_never_campaign() -> None:
    r = make(id="d", voters="abc", learners="d", election_ticks_max=10)
    for _ in range(100):
        r.tick()
    r.campaign()
    assert r.role is Role.FOLLOWER and drain(r) == []


def test_the_election_timeout_is_randomized_within_its_bounds() -> None:
    timeouts = set()
    for seed in range(40):
        r = Raft(Config(id="a"), MemoryStorage(ConfState(frozenset("abc"))), random.Random(seed))
        ticks = 0
        while r.role is Role.FOLLOWER:
            r.tick()
            ticks += 1
        timeouts.add(ticks)
    assert min(timeouts) >= 10 and max(timeouts) <= 20 and len(timeouts) > 3


# ================================================================= term rules
def test_an_append_from_a_later_term_makes_us_its_follower() -> None:
    r = make_leader()
    r.step(AppendEntries(3, "b", "a", 1, 1, (), 1))
    assert (r.role, r.term, r.vote, r.leader) == (Role.FOLLOWER, 3, None, "b")


def test_a_leader_steps_down_on_any_answer_from_a_later_term() -> None:
    r = make_leader()
    r.step(HeartbeatResponse(4, "c", "a"))
    assert (r.role, r.term, r.leader) == (Role.FOLLOWER, 4, None)


@pytest.mark.parametrize("msg_type", [AppendEntries, Heartbeat])
def test_a_stale_append_or_heartbeat_is_answered_with_our_term(msg_type: type) -> None:
    r = make(terms=(1, 2), term=2)
    if msg_type is AppendEntries:
        r.step(AppendEntries(1, "b", "a", 1, 1, (Entry(2, 1),), 1))
    else:
        r.step(Heartbeat(1, "b", "a", 1))
    assert drain(r) == [AppendEntriesResponse(2, "a", "b", 0, reject=True)]
    assert r.log.last_term() == 2  # nothing appended


def test_stale_messages_are_dropped_silently_without_pre_vote_and_check_quorum() -> None:
    r = make(terms=(1, 2), term=2, pre_vote=False, check_quorum=False)
    r.step(AppendEntries(1, "b", "a", 1, 1, (Entry(2, 1),), 1))
    assert drain(r) == []


def test_a_stale_answer_does_not_disturb_a_leader() -> None:
    r = make_leader()
    r.step(AppendEntriesResponse(0, "b", "a", 0, reject=True))
    r.step(RequestVoteResponse(0, "b", "a", True))
    assert r.role is Role.LEADER and drain(r) == []


def test_messages_to_someone_else_or_from_ourselves_are_dropped() -> None:
    r = make(terms=(1,), term=1)
    r.step(AppendEntries(5, "b", "c", 1, 1, (), 1))
    r.step(AppendEntries(5, "a", "a", 1, 1, (), 1))
    assert r.term == 1 and drain(r) == []


# ====================================================== follower: appending
def test_append_with_a_matching_previous_entry_is_accepted() -> None:
    r = make(terms=(1, 1), term=1)
    r.step(AppendEntries(1, "b", "a", 2, 1, (Entry(3, 1), Entry(4, 1)), 3))
    rd = r.ready()
    assert rd.entries == (Entry(3, 1), Entry(4, 1))
    assert rd.hard_state == HardState(1, None, 3)
    assert rd.committed_entries == (Entry(1, 1), Entry(2, 1), Entry(3, 1))
    assert rd.messages == (AppendEntriesResponse(1, "a", "b", 4),)


def test_append_with_a_mismatching_previous_entry_is_rejected_with_a_hint() -> None:
    r = make(terms=(1, 1, 2, 2, 2), term=3)
    r.step(AppendEntries(4, "b", "a", 7, 4, (Entry(8, 4),), 3))
    assert drain(r) == [AppendEntriesResponse(4, "a", "b", 7, True, hint_index=5, hint_term=2)]
    r.step(AppendEntries(4, "b", "a", 4, 3, (Entry(5, 4),), 3))  # term 3 at 4: we have 2
    assert drain(r) == [AppendEntriesResponse(4, "a", "b", 4, True, hint_index=4, hint_term=2)]
    r.step(AppendEntries(4, "b", "a", 5, 1, (Entry(6, 4),), 3))  # term 1 at 5: skip term 2
    assert drain(r) == [AppendEntriesResponse(4, "a", "b", 5, True, hint_index=2, hint_term=1)]
    assert r.last_index() == 5 and r.commit_index == 0


def test_append_truncates_a_conflicting_suffix_and_keeps_the_rest() -> None:
    r = make(terms=(1, 1, 1, 1), term=1)
    r.step(AppendEntries(2, "b", "a", 1, 1, (Entry(2, 1), Entry(3, 2)), 1))
    rd = r.ready()
    assert rd.entries == (Entry(3, 2),)  # 2/1 already there; 3/1 and 4/1 replaced
    r.log.storage.save(rd.hard_state, rd.entries)
    r.advance(rd)
    assert [r.log.term(i) for i in range(1, 5)] == [1, 1, 2, None]
    assert r.log.storage.last_index() == 3


def test_append_commits_no_further_than_the_entries_it_carries() -> None:
    r = make(terms=(1, 1, 1, 1), term=1)
    r.step(AppendEntries(1, "b", "a", 1, 1, (Entry(2, 1),), 4))
    drain(r)
    assert r.commit_index == 2  # entries 3 and 4 might not match the leader's


def test_a_stale_append_below_our_commit_is_answered_with_the_commit() -> None:
    r = make(terms=(1, 1, 1), term=1, commit=3)
    r.step(AppendEntries(1, "b", "a", 1, 1, (Entry(2, 1),), 1))
    assert drain(r) == [AppendEntriesResponse(1, "a", "b", 3)]


def test_a_duplicate_append_changes_nothing() -> None:
    r = make(terms=(1, 1, 1), term=1)
    r.step(AppendEntries(1, "b", "a", 1, 1, (Entry(2, 1),), 0))
    rd = r.ready()
    assert rd.entries == ()
    assert rd.messages == (AppendEntriesResponse(1, "a", "b", 2),)
    assert r.last_index() == 3


def test_heartbeat_commits_up_to_our_last_index_only() -> None:
    r = make(terms=(1, 1), term=1)
    r.step(Heartbeat(1, "b", "a", 5, read_seq=7))
    assert drain(r) == [HeartbeatResponse(1, "a", "b", read_seq=7)]
    assert (r.commit_index, r.leader) == (2, "b")


# ============================================================ leader: commit
def test_commit_needs_a_quorum_of_voters() -> None:
    r = make_leader(voters="abcde")
    r.propose(b"x")
    r.step(AppendEntriesResponse(1, "b", "a", 2))
    assert r.commit_index == 1
    r.step(AppendEntriesResponse(1, "c", "a", 2))
    assert r.commit_index == 2


def test_learners_do_not_count_toward_commit() -> None:
    r = make_leader(voters="abc", learners="de")
    r.propose(b"x")
    r.step(AppendEntriesResponse(1, "d", "a", 2))
    r.step(AppendEntriesResponse(1, "e", "a", 2))
    assert r.commit_index == 1
    r.step(AppendEntriesResponse(1, "b", "a", 2))
    assert r.commit_index == 2


def test_commit_counts_only_entries_of_the_current_term() -> None:
    """Figure 8: entries of term 1 replicated everywhere do not commit by counting."""
    r = make(voters="abc", terms=(1, 1, 1), term=1)
    r.campaign()
    drain(r)
    for p in "bc":
        r.step(RequestVoteResponse(2, p, "a", True, pre_vote=True))
    r.step(RequestVoteResponse(2, "b", "a", True))
    assert (r.role, r.last_index()) == (Role.LEADER, 4)
    for p in "bc":
        r.step(AppendEntriesResponse(2, p, "a", 3))  # the old entries, not the no-op
    assert r.commit_index == 0
    r.step(AppendEntriesResponse(2, "b", "a", 4))
    assert r.commit_index == 4


def test_a_leader_sends_the_new_commit_index_at_once() -> None:
    r = make_leader()
    r.propose(b"x")
    drain(r)
    r.step(AppendEntriesResponse(1, "b", "a", 2))
    assert drain(r) == [AppendEntries(1, "a", p, 2, 1, (), 2) for p in "bc"]


def test_proposals_on_a_follower_fail_with_the_leader_hint() -> None:
    r = make(terms=(1,), term=1)
    r.step(Heartbeat(1, "c", "a", 1))
    with pytest.raises(NotLeader) as e:
        r.propose(b"x")
    assert e.value.leader == "c"


def test_proposals_are_bounded() -> None:
    r = make_leader(max_pending_proposals=2)
    assert r.propose(b"x") == 2
    assert r.propose(b"y") == 3
    with pytest.raises(ProposalDropped):
        r.propose(b"z")
    r.step(AppendEntriesResponse(1, "b", "a", 3))
    assert r.propose(b"z") == 4


def test_many_proposals_are_one_append_all_or_none() -> None:
    r = make_leader(max_pending_proposals=4)
    assert r.propose_many([b"x", b"y", b"z"]) == [2, 3, 4]
    to_b = [m for m in drain(r) if isinstance(m, AppendEntries) and m.dst == "b"]
    assert [[e.data for e in m.entries] for m in to_b] == [[b"x", b"y", b"z"]]
    with pytest.raises(ProposalDropped):
        r.propose_many([b"p", b"q"])  # 3 + 2 pending would pass the bound: none appended
    assert r.log.last_index() == 4
    r.step(AppendEntriesResponse(1, "b", "a", 4))
    assert r.commit_index == 4
    assert r.propose_many([b"p", b"q"]) == [5, 6]


# ============================================================= replication
def test_a_rejection_in_replicate_falls_back_to_probe_from_match() -> None:
    r = make_leader()
    for d in (b"x", b"y", b"z"):
        r.propose(d)
    drain(r)
    assert r.progress["b"].next == 5
    r.step(AppendEntriesResponse(1, "b", "a", 2, reject=True, hint_index=1, hint_term=1))
    assert r.status().peers["b"].state == "probe"
    assert drain(r) == [
        AppendEntries(
            1,
            "a",
            "b",
            1,
            1,
            tuple(Entry(i, 1, data=d) for i, d in ((2, b"x"), (3, b"y"), (4, b"z"))),
            1,
        )
    ]


def test_a_stale_rejection_is_ignored() -> None:
    r = make_leader()
    r.propose(b"x")
    drain(r)
    r.step(AppendEntriesResponse(1, "b", "a", 2))
    drain(r)
    r.step(AppendEntriesResponse(1, "b", "a", 1, reject=True, hint_index=0, hint_term=0))
    assert r.status().peers["b"].state == "replicate" and drain(r) == []


def test_max_msg_bytes_limits_each_append() -> None:
    r = make_leader(max_msg_bytes=60)  # two entries of 25 bytes
    for d in (b"1", b"2", b"3", b"4", b"5"):
        r.propose(d)
    sizes = [len(m.entries) for m in drain(r) if isinstance(m, AppendEntries) and m.dst == "b"]
    assert sizes == [1, 1, 1, 1, 1]  # pipelined one proposal at a time
    r2 = make_leader(max_msg_bytes=60, max_inflight_msgs=1)
    for d in (b"1", b"2", b"3", b"4", b"5"):
        r2.propose(d)
    drain(r2)
    r2.step(AppendEntriesResponse(1, "b", "a", 2))
    (m,) = [m for m in drain(r2) if isinstance(m, AppendEntries) and m.dst == "b"]
    assert [e.index for e in m.entries] == [3, 4]


def test_heartbeats_carry_min_of_commit_and_match() -> None:
    r = make_leader(heartbeat_ticks=1)
    r.propose(b"x")
    r.step(AppendEntriesResponse(1, "b", "a", 2))
    drain(r)
    r.tick()
    assert drain(r) == [Heartbeat(1, "a", "b", 2), Heartbeat(1, "a", "c", 1)]


def test_check_quorum_steps_down_without_a_live_quorum() -> None:
    r = make_leader(election_ticks_min=10)
    for _ in range(10):
        r.tick()
    assert r.role is Role.LEADER  # peers were active when we were elected
    r.step(HeartbeatResponse(1, "b", "a"))
    for _ in range(10):
        r.tick()
    assert r.role is Role.LEADER  # b answered: a and b are a quorum
    for _ in range(10):
        r.tick()
    assert (r.role, r.term) == (Role.FOLLOWER, 1)


def test_check_quorum_counts_voters_only() -> None:
    r = make_leader(learners="de", election_ticks_min=10)
    for _ in range(10):
        r.tick()
    for _ in range(10):
        r.step(HeartbeatResponse(1, "d", "a"))  # the learners are alive; b and c are not
        r.step(HeartbeatResponse(1, "e", "a"))
        r.tick()
    assert r.role is Role.FOLLOWER


def test_a_leader_sends_its_snapshot_when_the_entries_needed_are_compacted() -> None:
    r = make_leader(max_snapshot_chunk_bytes=3)
    for d in (b"x", b"y", b"z"):
        r.propose(d)
    r.step(AppendEntriesResponse(1, "b", "a", 4))
    drain(r)
    storage = r.log.storage
    snap = Snapshot(SnapshotMeta(3, 1, r.conf_at(3)), b"image")
    storage.set_snapshot(snap)
    storage.compact(3)
    r.step(AppendEntriesResponse(1, "c", "a", 4, reject=True, hint_index=1, hint_term=1))
    assert drain(r) == [
        InstallSnapshot(1, "a", "c", snap.meta, 0, b"ima", False),
        InstallSnapshot(1, "a", "c", snap.meta, 3, b"ge", True),
    ]
    assert r.status().peers["c"].state == "snapshot"
    r.step(InstallSnapshotResponse(1, "c", "a", 3, 5, done=True))
    assert r.status().peers["c"].state == "probe"
    assert drain(r) == [AppendEntries(1, "a", "c", 3, 1, (Entry(4, 1, data=b"z"),), 4)]


def test_a_restarted_core_keeps_term_vote_log_and_commit() -> None:
    r = make(terms=(1, 1), term=1)
    r.step(vote_req(3, (2, 1)))
    r.step(AppendEntries(3, "b", "a", 2, 1, (Entry(3, 3),), 3))
    drain(r)
    assert isinstance(r.log.storage, MemoryStorage)
    again = Raft(Config(id="a", applied=2), r.log.storage.crashed(), random.Random(0))
    assert (again.term, again.vote, again.role, again.leader) == (3, "b", Role.FOLLOWER, None)
    assert (again.last_index(), again.commit_index, again.applied_index) == (3, 3, 2)
    assert again.ready().committed_entries == (Entry(3, 3),)


# ======================================================== snapshots (follower)
def test_a_follower_installs_a_snapshot_and_answers_with_its_index() -> None:
    r = make(terms=(1,), term=1)
    meta_conf = ConfState(frozenset("abc"), frozenset("d"))
    meta = SnapshotMeta(10, 1, meta_conf)
    r.step(InstallSnapshot(1, "b", "a", meta, 0, b"ab", False))
    assert drain(r) == [InstallSnapshotResponse(1, "a", "b", 10, 2)]
    r.step(InstallSnapshot(1, "b", "a", meta, 2, b"cd", True))
    rd = r.ready()
    assert rd.snapshot is not None and rd.snapshot.data == b"abcd" and rd.must_sync
    assert rd.messages == (
        InstallSnapshotResponse(1, "a", "b", 10, 4, True),
        AppendEntriesResponse(1, "a", "b", 10),
    )
    r.log.storage.save(rd.hard_state, rd.entries, rd.snapshot)
    r.advance(rd)
    assert (r.commit_index, r.applied_index, r.last_index(), r.conf()) == (10, 10, 10, meta_conf)


def test_a_snapshot_we_already_have_is_acknowledged_without_installing() -> None:
    r = make(terms=(1, 1, 1), term=1, commit=3)
    r.step(InstallSnapshot(1, "b", "a", SnapshotMeta(2, 1), 0, b"ab", False))
    assert drain(r) == [
        InstallSnapshotResponse(1, "a", "b", 2, 0, True),
        AppendEntriesResponse(1, "a", "b", 3),
    ]
    assert r.log.pending_snapshot is None


# ============================================================ Ready contract
def test_ready_reports_each_thing_once() -> None:
    r = make_leader()
    r.propose(b"x")
    rd = r.ready()
    assert rd.entries == (Entry(2, 1, data=b"x"),) and rd.must_sync
    assert rd.hard_state is None  # nothing of term, vote or commit changed
    r.log.storage.save(rd.hard_state, rd.entries)
    r.advance(rd)
    assert not r.has_ready()
    r.step(AppendEntriesResponse(1, "b", "a", 2))
    rd = r.ready()
    assert rd.entries == () and rd.hard_state == HardState(1, "a", 2)
    assert rd.committed_entries == (Entry(2, 1, data=b"x"),)
    assert not rd.must_sync  # only the commit index changed
    r.advance(rd)
    rd = r.ready()
    assert rd.committed_entries == () and rd.hard_state is None and rd.messages == ()
    assert rd.is_empty()


def test_soft_state_appears_only_when_it_changes() -> None:
    r = make(terms=(1,), term=1)
    r.step(Heartbeat(1, "b", "a", 1))
    rd = r.ready()
    assert rd.soft_state == SoftState(Role.FOLLOWER, "b", 1)
    r.advance(rd)
    r.step(Heartbeat(1, "b", "a", 1))
    assert r.ready().soft_state is None


def test_entries_appended_between_ready_and_advance_stay_unstable() -> None:
    r = make_leader()
    r.propose(b"x")
    rd = r.ready()
    r.propose(b"y")
    r.log.storage.save(rd.hard_state, rd.entries)
    r.advance(rd)
    assert r.ready().entries == (Entry(3, 1, data=b"y"),)


def test_single_node_commits_and_applies_in_the_same_ready() -> None:
    r = make(voters="a")
    r.campaign()
    drain(r)
    r.propose(b"x")
    rd = r.ready()
    assert rd.entries == rd.committed_entries == (Entry(2, 1, data=b"x"),)
