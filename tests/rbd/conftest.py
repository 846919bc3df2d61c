"""A throwaway Ceph cluster for the rbd pool tests (one per test session).

``ceph`` (fixture, session scope) -> ``tools.ceph_cluster.CephCluster``: one monitor
and one memstore OSD under a temporary folder, on a free loopback port, with an
RBD pool ``CEPH_POOL`` of one replica. Stopped (OSD first) and removed at the end.
Each pytest-xdist worker is a session of its own: a worker that runs rbd tests starts
its own cluster, on its own port and folder.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Virtvold, free_port, run_virsh, start_virtvold, stop_virtvold
from tools import ceph_cluster

if TYPE_CHECKING:
    from collections.abc import Iterator

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


# -- virtvold serving an rbd pool --------------------------------------------------------
#
# ``rbd_virtvold`` (fixture, function scope) -> ``tests.conftest.Virtvold``: a fresh
# virtvold whose pool ``RBD_POOL`` ("ceph") is an rbd pool on the session's cluster,
# set up the libvirt way with virsh: a ceph secret holding the admin key, then the
# pool definition naming it. The Ceph pool is shared by every test: use
# ``volume_name()`` for names no other test uses.

RBD_POOL = "ceph"
SECRET_UUID = "7d3c9a52-1f0e-4b8a-9c6d-2e4f5a6b7c8d"


def volume_name(prefix: str) -> str:
    """A volume name no other test of the session uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


def rbd_pool_xml(cluster: ceph_cluster.CephCluster, name: str = RBD_POOL) -> str:
    return (
        f"<pool type='rbd'><name>{name}</name><source><name>{CEPH_POOL}</name>"
        f"<host name='{cluster.mon_host}' port='{cluster.port}'/>"
        "<auth type='ceph' username='admin'>"
        f"<secret uuid='{SECRET_UUID}'/></auth></source></pool>"
    )


def define_rbd_pool(uri: str, cluster: ceph_cluster.CephCluster, folder: Path) -> None:
    """virsh secret-define, secret-set-value, pool-define, pool-start: a libvirt user's steps."""
    secret = folder / "secret.xml"
    secret.write_text(
        f"<secret ephemeral='no' private='yes'><uuid>{SECRET_UUID}</uuid>"
        "<usage type='ceph'><name>client.admin secret</name></usage></secret>"
    )
    pool = folder / "pool.xml"
    pool.write_text(rbd_pool_xml(cluster))
    run_virsh(uri, "secret-define", str(secret))
    run_virsh(uri, "secret-set-value", SECRET_UUID, "--base64", cluster.admin_key)
    run_virsh(uri, "pool-define", str(pool))
    run_virsh(uri, "pool-start", RBD_POOL)


@pytest.fixture
def rbd_virtvold(ceph: ceph_cluster.CephCluster, tmp_path: Path) -> Iterator[Virtvold]:
    """A fresh virtvold with the rbd pool ``RBD_POOL`` active (see above)."""
    daemon = start_virtvold(tmp_path / "virtvold")
    try:
        define_rbd_pool(daemon.tcp_uri, ceph, tmp_path)
        yield daemon
    finally:
        stop_virtvold(daemon)
