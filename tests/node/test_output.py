"""Run output read where it is: from this node's store, or from the node that holds
it over the peer RPC (an in-memory pair), with ``done`` decided by the holder."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import pytest

from consensus.types import ConfState
from node.commands import Assign, Complete, Start, SubmitTasks, encode_command
from node.model import TaskSpec
from node.modeljson import executor_from_json
from node.output import FLUSH_SETTLE_MS, RunOutputs
from node.scheduler import now_ms
from storage.log import LmdbLogStorage
from tests.node.onenode import OneNode
from web.port import NotFound, Unavailable

Handler = Callable[[str, bytes], Awaitable[bytes]]
SHELL = executor_from_json({"type": "shell", "command": ["/bin/true"]}, ())


class Rpcs:
    """Peer RPC between named nodes in one process; a node may be 'down'."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, Handler]] = {}
        self.down: set[str] = set()

    def of(self, node: str) -> NodeRpc:
        return NodeRpc(self, node)


class NodeRpc:
    def __init__(self, net: Rpcs, node: str) -> None:
        self.net, self.node = net, node

    async def request(self, peer: str, method: str, body: bytes, timeout_s: float) -> bytes:
        if peer in self.net.down:
            raise ConnectionError(f"{peer} is unreachable")
        return await self.net.handlers[peer][method](self.node, body)

    def on_request(self, method: str, handler: Handler) -> None:
        self.net.handlers.setdefault(self.node, {})[method] = handler


async def _run_on(node: OneNode, where: str) -> str:
    async def apply(cmd: object) -> None:
        await node.propose(encode_command(cmd), 1.0)  # type: ignore[arg-type]

    await apply(SubmitTasks((TaskSpec(SHELL),), (None,), now_ms()))
    (run,) = node.sm.state.unassigned()
    await apply(Assign((run.id,), where, now_ms()))
    await apply(Start(run.id, where, node.index, now_ms()))
    return run.id


@pytest.fixture
def cluster(tmp_path: Path) -> tuple[OneNode, LmdbLogStorage, Rpcs]:
    node = OneNode(tmp_path / "n1")
    other = LmdbLogStorage(tmp_path / "n2", initial_conf=ConfState(voters=frozenset({"n1"})))
    yield node, other, Rpcs()  # type: ignore[misc]
    node.store.close()
    other.close()


async def test_output_is_read_from_the_node_that_holds_it(
    cluster: tuple[OneNode, LmdbLogStorage, Rpcs],
) -> None:
    node, n2_store, net = cluster
    clock = [now_ms()]
    here = RunOutputs("n1", node.sm, node.store.outputs.read, net.of("n1"), lambda: clock[0])
    RunOutputs("n2", node.sm, n2_store.outputs.read, net.of("n2"), lambda: clock[0])
    run_id = await _run_on(node, "n2")
    n2_store.outputs.append(run_id, b"line one\nline two\n", now_ms=clock[0])
    chunk = await here.read(run_id, 0, 9)
    assert (chunk.data, chunk.offset, chunk.node, chunk.done) == (b"line one\n", 0, "n2", False)
    chunk = await here.read(run_id, chunk.next_offset, 1000)
    assert chunk.data == b"line two\n" and not chunk.done  # still running
    token = node.sm.state.run(run_id).token  # type: ignore[union-attr]
    await node.propose(
        encode_command(Complete(run_id, token, "succeeded", 0, None, "", clock[0])), 1.0
    )
    end = await here.read(run_id, chunk.next_offset, 1000)
    assert end.data == b"" and not end.done  # ended, but the last flush may not have landed
    clock[0] += FLUSH_SETTLE_MS + 1
    assert (await here.read(run_id, chunk.next_offset, 1000)).done
    assert not (await here.read(run_id, 0, 5)).done  # done only at the end of the output
    net.down.add("n2")
    with pytest.raises(Unavailable, match="n2"):
        await here.read(run_id, 0, 10)
    with pytest.raises(NotFound):
        await here.read("r000000000009000000", 0, 10)


async def test_a_local_run_is_read_from_this_nodes_store(
    cluster: tuple[OneNode, LmdbLogStorage, Rpcs],
) -> None:
    node, _, net = cluster
    here = RunOutputs("n1", node.sm, node.store.outputs.read, net.of("n1"))
    run_id = await _run_on(node, "n1")
    assert (await here.read(run_id, 0, 100)).data == b""
    node.store.outputs.append(run_id, b"x" * 10, now_ms=now_ms())
    chunk = await here.read(run_id, 4, 100)
    assert (chunk.data, chunk.offset, chunk.node) == (b"x" * 6, 4, "n1")


async def test_malformed_output_requests_get_error_replies(
    cluster: tuple[OneNode, LmdbLogStorage, Rpcs],
) -> None:
    node, _, net = cluster
    RunOutputs("n1", node.sm, node.store.outputs.read, net.of("n1"))
    serve = net.handlers["n1"]["output.read"]
    for body in (b"\xc1", msgpack.packb(["r1", -1, 5]), msgpack.packb({"run": 1}), b""):
        assert msgpack.unpackb(await serve("n2", body))[0] == 1
    reply = msgpack.unpackb(await serve("n2", msgpack.packb(["r000000000009000000", 0, 5])))
    assert reply[:2] == [1, "not_found"]
