"""The API app over a real one-node scheduler: ``JobsService`` on the scheduler state
machine over LMDB (``tests.node.onenode``) for jobs, tasks and runs, and the in-memory
cluster twin (``FakeNodePort``) for the cluster routes. Plus a fingerprint of all the
state a request could change, to assert that a rejected request changed nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.node.test_jobs_service import JobsNode
from tests.web.apphelpers import Harness


@contextmanager
def real_scheduler(tmp_path: Path, **harness: Any) -> Iterator[tuple[Harness, JobsNode]]:
    """A ``Harness`` whose app serves jobs, tasks and runs from a real ``JobsService``."""
    node = JobsNode(tmp_path / "store")
    h = Harness(**harness)
    h.app.extensions["rota"].scheduler = node.jobs
    try:
        yield h, node
    finally:
        node.store.close()


def fingerprint(h: Harness, node: JobsNode) -> tuple[bytes, object]:
    """Everything a request could change: the scheduler's replicated state (jobs, runs,
    fire records) and the cluster twin's view."""
    return node.sm.state.to_image(), h.port.cluster_view()
