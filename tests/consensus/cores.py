"""Single Raft cores in a known state, for the rule tests (``test_raft_*.py``).

``make`` builds a core from its durable state; ``drain`` plays the driver (persist
into the core's own storage, collect the messages, advance); ``make_leader`` gives
``a`` as the leader of term 1 with its no-op acknowledged by every peer.
"""

from __future__ import annotations

import random
from typing import Any

from consensus.raft import Config, Raft
from consensus.storage import MemoryStorage
from consensus.types import (
    AppendEntriesResponse,
    ConfState,
    Entry,
    HardState,
    Message,
    RequestVote,
    RequestVoteResponse,
    Role,
)


def make(
    id: str = "a",
    voters: str = "abc",
    learners: str = "",
    terms: tuple[int, ...] = (),
    term: int = 0,
    vote: str | None = None,
    commit: int = 0,
    **cfg: Any,
) -> Raft:
    """A core whose durable state is given: a log with entries of ``terms`` (from 1)."""
    storage = MemoryStorage(ConfState(frozenset(voters), frozenset(learners)))
    storage.save(HardState(term, vote, commit), [Entry(i + 1, t) for i, t in enumerate(terms)])
    return Raft(Config(id=id, **cfg), storage, random.Random(0))


def drain(r: Raft) -> list[Message]:
    """Handle every Ready (persisting into the core's storage); return the messages."""
    out: list[Message] = []
    while r.has_ready():
        rd = r.ready()
        r.log.storage.save(rd.hard_state, rd.entries, rd.snapshot)
        out.extend(rd.messages)
        r.advance(rd)
    return out


def make_leader(voters: str = "abc", learners: str = "", **cfg: Any) -> Raft:
    """``a`` as leader of term 1 with its no-op (1/1) acknowledged by every peer."""
    r = make(voters=voters, learners=learners, **cfg)
    r.campaign()
    drain(r)
    for p in sorted(set(voters + learners) - {"a"}):
        r.step(RequestVoteResponse(1, p, "a", True, pre_vote=True))
    for p in sorted(set(voters + learners) - {"a"}):
        r.step(RequestVoteResponse(1, p, "a", True))
    assert r.role is Role.LEADER
    for p in sorted(set(voters + learners) - {"a"}):
        r.step(AppendEntriesResponse(1, p, "a", 1))
    drain(r)
    assert r.commit_index == 1
    return r


def vote_req(term: int, last: tuple[int, int], pre: bool = False, src: str = "b") -> RequestVote:
    return RequestVote(term, src, "a", last[0], last[1], pre_vote=pre)
