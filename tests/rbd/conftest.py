"""A throwaway Ceph cluster for the rbd pool tests (one per test session).

``ceph`` (fixture, session scope) -> ``tools.ceph_cluster.CephCluster``: one monitor
and one memstore OSD under a temporary folder, on a free loopback port, with an
RBD pool ``CEPH_POOL`` of one replica. Stopped (OSD first) and removed at the end.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tools import ceph_cluster

CEPH_POOL = "rbd"


@pytest.fixture(scope="session")
def ceph() -> Iterator[ceph_cluster.CephCluster]:
    """The session's Ceph cluster, with the RBD pool ``CEPH_POOL``."""
    errors: list[str] = []
    for _attempt in range(3):  # a port picked by free_port() can be taken meanwhile
        folder = Path(tempfile.mkdtemp(prefix="virtvol-ceph-"))
        try:
            cluster = ceph_cluster.start(folder, free_port())
        except ceph_cluster.CephError as exc:
            errors.append(str(exc))
            shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            cluster.create_pool(CEPH_POOL)
            yield cluster
        finally:
            cluster.stop()
            shutil.rmtree(folder, ignore_errors=True)
        return
    pytest.fail("Ceph cluster did not start:\n" + "\n".join(errors), pytrace=False)
