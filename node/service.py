"""The node as the web layer sees it: ``web.port.NodePort`` implemented over the Raft
driver, gossip and the peer transport.

Rules:
- Leader-only operations run locally on the leader and are forwarded to it from
  any other node over the authenticated transport (RPC methods ``cluster.*``); the
  client never has to find the leader.
- Forwarded bodies are small JSON objects; the answer is JSON too. A forwarded call
  that times out is ``Unavailable`` ("may or may not have happened"), never a false
  failure.
- Views are built from local state only (no I/O): Raft status, the leader's
  progress, gossip metadata.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import trio

from consensus.raft import ConfChangeRefused, NotLeader, ProposalDropped
from consensus.swim import Member, MemberState
from consensus.types import ConfChange, ConfChangeOp, NodeId, Role
from node.driver import Committed, NotCommitted, Outcome, RaftDriver, Unknown
from node.transport import TooManyRequests
from web.port import (
    ClusterView,
    Conflict,
    Invalid,
    MemberRole,
    MemberView,
    NotFound,
    NotLeaderError,
    PortError,
    Unavailable,
    parse_host_port,
)
from web.port import MemberState as GossipState

log = logging.getLogger("rota.service")

FORWARD_TIMEOUT_S = 10.0
PROPOSE_TIMEOUT_S = 10.0
CONF_CHANGE_TIMEOUT_S = 10.0
TRANSFER_TIMEOUT_S = 5.0


class Rpc(Protocol):
    """The slice of the peer transport this module uses."""

    async def request(self, peer: NodeId, method: str, body: bytes, timeout_s: float) -> bytes: ...

    def on_request(
        self, method: str, handler: Callable[[NodeId, bytes], Awaitable[bytes]]
    ) -> None: ...


class Membership(Protocol):
    """The slice of gossip this module uses."""

    def members(self) -> list[Member]: ...


GOSSIP_STATE: dict[MemberState, GossipState] = {
    MemberState.ALIVE: "alive",
    MemberState.SUSPECT: "suspect",
    MemberState.DEAD: "dead",
    MemberState.LEFT: "dead",
}


class NodeService:
    def __init__(
        self,
        driver: RaftDriver,
        gossip: Membership,
        rpc: Rpc,
        api_address: str,
        on_peer_address: Callable[[NodeId, tuple[str, int]], None],
    ) -> None:
        self.driver = driver
        self.gossip = gossip
        self.rpc = rpc
        self.id = driver.id
        self.api_address = api_address
        self._on_peer_address = on_peer_address
        rpc.on_request("raft.propose", self._serve_propose)
        rpc.on_request("cluster.transfer", self._remote(self._transfer_local))
        rpc.on_request("cluster.add", self._remote(self._add_local))
        rpc.on_request("cluster.remove", self._remote(self._remove_local))

    # ------------------------------------------------------------------- views
    def cluster_view(self) -> ClusterView:
        raft = self.driver.raft
        status = raft.status()
        conf = status.conf
        gossip = {m.id: m for m in self.gossip.members()}
        ids = sorted(conf.members() | {self.id})
        members = []
        for node in ids:
            g = gossip.get(node)
            members.append(
                MemberView(
                    id=node,
                    role=self._role_of(node, status.leader, conf.learners),
                    api_address=self.api_address
                    if node == self.id
                    else (g.meta.api_address or None if g else None),
                    state="alive" if node == self.id else (GOSSIP_STATE[g.state] if g else "dead"),
                    match_index=self._match_of(node),
                    applied_index=raft.applied_index
                    if node == self.id
                    else (g.meta.applied_index if g else 0),
                    queue_depth=g.meta.queue_depth if g else 0,
                    free_slots=g.meta.free_slots if g else 0,
                )
            )
        leader = status.leader if status.leader in ids else None
        return ClusterView(leader, status.term, status.commit, tuple(members))

    def _role_of(self, node: NodeId, leader: NodeId | None, learners: frozenset[str]) -> MemberRole:
        if node == leader:
            return "leader"
        if node in learners:
            return "learner"
        if node == self.id and self.driver.raft.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            return "candidate"
        return "follower"

    def _match_of(self, node: NodeId) -> int:
        raft = self.driver.raft
        if node == self.id:
            return raft.last_index()
        pr = raft.progress.get(node) if raft.role is Role.LEADER else None
        return pr.match if pr is not None else 0

    def is_ready(self) -> bool:
        raft = self.driver.raft
        return raft.leader is not None and raft.applied_index >= raft.commit_index

    # ---------------------------------------------------------------- proposals
    async def propose(self, data: bytes, timeout_s: float = PROPOSE_TIMEOUT_S) -> Outcome:
        """Commit ``data`` through the leader, wherever it is; the outcome is honest:
        ``Unknown`` whenever the command may have been appended but was not seen to
        commit. Retries only while no leader has accepted it (so never twice)."""
        deadline = trio.current_time() + timeout_s
        outcome = await self._propose_once(data, deadline)
        await self._wait_applied([outcome], deadline)
        return outcome

    async def _wait_applied(self, outcomes: Sequence[Outcome], deadline: float) -> None:
        """Answer only once this node has applied what committed too, so the caller's
        next local read sees its own writes."""
        committed = [o.index for o in outcomes if isinstance(o, Committed)]
        if committed:
            with trio.move_on_at(deadline + 1.0):
                await self.driver.wait_applied(max(committed))

    async def propose_many(
        self, datas: Sequence[bytes], timeout_s: float = PROPOSE_TIMEOUT_S
    ) -> list[Outcome]:
        """``propose`` for several commands: on the leader in one append of the core
        (``RaftDriver.propose_many``: one message per follower, one fsync, committed
        together), in order; elsewhere, or if leadership moves first, one by one."""
        if self.driver.raft.role is Role.LEADER:
            deadline = trio.current_time() + timeout_s
            try:
                outcomes = await self.driver.propose_many(datas, timeout_s)
            except NotLeader:
                pass  # nothing was appended: one by one, through the new leader
            except ProposalDropped as e:
                return [NotCommitted(str(e)) for _ in datas]
            else:
                await self._wait_applied(outcomes, deadline)
                return outcomes
        return [await self.propose(data, timeout_s) for data in datas]

    async def _propose_once(self, data: bytes, deadline: float) -> Outcome:
        while True:
            left = deadline - trio.current_time()
            if left <= 0:
                return Unknown("no leader accepted the proposal in time")
            raft = self.driver.raft
            if raft.role is Role.LEADER:
                try:
                    return await self.driver.propose(data, left)
                except NotLeader:
                    pass  # lost leadership before appending: safe to retry elsewhere
                except ProposalDropped as e:
                    return NotCommitted(str(e))
            elif raft.leader is not None:
                try:
                    raw = await self.rpc.request(raft.leader, "raft.propose", data, left)
                except Exception as e:  # not sent, or no answer: it may have been appended
                    if _never_sent(e):
                        await trio.sleep(min(0.05, max(left, 0)))
                        continue
                    return Unknown(f"forwarding to {raft.leader} failed: {e}")
                outcome = _decode_outcome(raw)
                if outcome is not None:
                    return outcome
                # The peer was no longer leader and did not append: try again.
            await self._wait_for_leader(min(left, 0.5))

    async def _wait_for_leader(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            await self.driver.wait_state_change()

    async def _serve_propose(self, peer: NodeId, data: bytes) -> bytes:
        if self.driver.raft.role is not Role.LEADER:
            return _encode_outcome(None)
        try:
            outcome: Outcome = await self.driver.propose(data, PROPOSE_TIMEOUT_S)
        except NotLeader:
            return _encode_outcome(None)
        except ProposalDropped as e:
            outcome = NotCommitted(str(e))
        return _encode_outcome(outcome)

    # ------------------------------------------------------------ leader calls
    async def transfer_leadership(self, target: str | None) -> str:
        body = await self._on_leader("cluster.transfer", {"target": target})
        leader = body.get("leader")
        assert isinstance(leader, str)
        return leader

    async def add_member(self, node_id: str, address: str | None) -> ClusterView:
        await self._on_leader("cluster.add", {"id": node_id, "address": address})
        return self.cluster_view()

    async def remove_member(self, node_id: str) -> ClusterView:
        await self._on_leader("cluster.remove", {"id": node_id})
        return self.cluster_view()

    async def take_snapshot(self) -> int:
        return await self.driver.take_snapshot()

    async def _on_leader(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run ``method`` on the leader: here if we lead, else forwarded."""
        raft = self.driver.raft
        local = {
            "cluster.transfer": self._transfer_local,
            "cluster.add": self._add_local,
            "cluster.remove": self._remove_local,
        }[method]
        if raft.role is Role.LEADER:
            return await local(body)
        leader = raft.leader
        if leader is None:
            raise Unavailable("no leader is known right now; try again shortly")
        try:
            raw = await self.rpc.request(
                leader, method, json.dumps(body).encode(), FORWARD_TIMEOUT_S
            )
        except Exception as e:  # the transport's errors: unavailable, timeout, remote
            raise Unavailable(f"forwarding to the leader {leader} failed: {e}") from e
        reply = json.loads(raw)
        assert isinstance(reply, dict)
        if "error" in reply:
            raise _error_from_wire(reply)
        return reply

    def _remote(
        self, local: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    ) -> Callable[[NodeId, bytes], Awaitable[bytes]]:
        async def handler(peer: NodeId, raw: bytes) -> bytes:
            try:
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise Invalid("expected a JSON object", "body")
                if self.driver.raft.role is not Role.LEADER:
                    raise NotLeaderError("not the leader", self.driver.raft.leader)
                reply = await local(body)
            except PortError as e:
                reply = _error_to_wire(e)
            except ValueError as e:
                reply = _error_to_wire(Invalid(str(e), "body"))
            return json.dumps(reply).encode()

        return handler

    async def _transfer_local(self, body: dict[str, Any]) -> dict[str, Any]:
        raft = self.driver.raft
        target = body.get("target")
        voters = raft.conf().voters
        if target is None:
            candidates = [v for v in voters if v != self.id and v in raft.progress]
            if not candidates:
                raise Conflict("there is no other voter to take over")
            target = max(candidates, key=lambda v: (raft.progress[v].match, v))
        if not isinstance(target, str) or target not in raft.conf().members():
            raise NotFound(f"{target!r} is not a member")
        if target not in voters:
            raise Invalid(f"{target} is a learner; only voters can lead", "target")
        if target == self.id:
            return {"leader": self.id}
        try:
            await self.driver.transfer_leadership(target)
        except (NotLeader, ProposalDropped) as e:
            raise Unavailable(str(e)) from e
        with trio.move_on_after(TRANSFER_TIMEOUT_S):
            while self.driver.raft.leader in (self.id, None):
                await self.driver.wait_state_change()
            return {"leader": self.driver.raft.leader}
        raise Unavailable(f"leadership did not move to {target} in time")

    async def _add_local(self, body: dict[str, Any]) -> dict[str, Any]:
        node = body.get("id")
        address = body.get("address")
        if not isinstance(node, str):
            raise Invalid("id must be a node id", "id")
        if address is not None:
            if not isinstance(address, str):
                raise Invalid("address must be host:port", "address")
            try:
                self._on_peer_address(node, parse_host_port(address))
            except ValueError as e:
                raise Invalid(str(e), "address") from e
        await self._conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, node))
        return {"id": node}

    async def _remove_local(self, body: dict[str, Any]) -> dict[str, Any]:
        node = body.get("id")
        if not isinstance(node, str):
            raise Invalid("id must be a node id", "id")
        if node not in self.driver.raft.conf().members():
            raise NotFound(f"{node} is not a member")
        await self._conf_change(ConfChange(ConfChangeOp.REMOVE, node))
        return {"id": node}

    async def _conf_change(self, cc: ConfChange) -> None:
        try:
            outcome = await self.driver.propose_conf_change(cc, CONF_CHANGE_TIMEOUT_S)
        except ConfChangeRefused as e:
            raise Conflict(str(e)) from e
        except (NotLeader, ProposalDropped) as e:
            raise Unavailable(str(e)) from e
        if isinstance(outcome, NotCommitted):
            raise Unavailable(f"the change was not committed: {outcome.reason}")
        if not isinstance(outcome, Committed):
            raise Unavailable(f"the change's outcome is unknown: {outcome.reason}")


_WIRE_ERRORS: dict[str, type[PortError]] = {
    "not_leader": NotLeaderError,
    "unavailable": Unavailable,
    "conflict": Conflict,
    "not_found": NotFound,
    "invalid": Invalid,
}


def _error_to_wire(e: PortError) -> dict[str, Any]:
    kind = next(k for k, cls in _WIRE_ERRORS.items() if type(e) is cls)
    return {"error": kind, "detail": e.detail, "field": getattr(e, "field", None)}


def _error_from_wire(reply: dict[str, Any]) -> PortError:
    kind = reply.get("error")
    detail = str(reply.get("detail", "the leader refused the request"))
    if kind == "invalid":
        return Invalid(detail, str(reply.get("field") or "body"))
    if kind == "not_leader":
        return Unavailable(f"leadership is changing: {detail}")
    cls = _WIRE_ERRORS.get(str(kind), Unavailable)
    return cls(detail)


def _never_sent(e: Exception) -> bool:
    """Transport errors that prove the request never left this node. A lost
    connection does not: the leader may have appended the command before it broke."""
    return isinstance(e, TooManyRequests)


def _encode_outcome(outcome: Outcome | None) -> bytes:
    """``None`` means "not the leader, nothing appended" (the caller may retry)."""
    match outcome:
        case None:
            body: list[object] = ["retry"]
        case Committed(index, result):
            body = ["committed", index, result.hex()]
        case NotCommitted(reason):
            body = ["not_committed", reason]
        case Unknown(reason):
            body = ["unknown", reason]
    return json.dumps(body).encode()


def _decode_outcome(raw: bytes) -> Outcome | None:
    try:
        body = json.loads(raw)
        match body:
            case ["retry"]:
                return None
            case ["committed", int(index), str(result)]:
                return Committed(index, bytes.fromhex(result))
            case ["not_committed", str(reason)]:
                return NotCommitted(reason)
            case ["unknown", str(reason)]:
                return Unknown(reason)
    except ValueError:
        pass
    return Unknown("the leader's answer could not be read")
