"""The throwaway cluster itself: cephx on, images in the pool, Python binding usable."""

from __future__ import annotations

from typing import TYPE_CHECKING

import rados
import rbd

from tests.rbd.conftest import CEPH_POOL

if TYPE_CHECKING:
    from tools.ceph_cluster import CephCluster


def test_cluster_takes_rbd_images_with_cephx(ceph: CephCluster) -> None:
    assert "cephx" in ceph.conf.read_text()
    with rados.Rados(conffile=str(ceph.conf)) as cluster, cluster.open_ioctx(CEPH_POOL) as ioctx:
        rbd.RBD().create(ioctx, "cluster-probe", 1 << 20)
        try:
            with rbd.Image(ioctx, "cluster-probe") as image:
                image.write(b"probe", 4096)
                assert image.read(4096, 5) == b"probe"
            assert "cluster-probe" in ceph.rbd("ls", CEPH_POOL).split()
        finally:
            rbd.RBD().remove(ioctx, "cluster-probe")


def test_cluster_refuses_a_wrong_key(ceph: CephCluster) -> None:
    wrong = "AQBvaFtjAAAAABAAsG4n1+8bHDwYgUuxGQTw8w=="
    cluster = rados.Rados(
        conffile=str(ceph.conf), conf={"key": wrong, "keyring": ""}, name="client.admin"
    )
    try:
        cluster.conf_set("client_mount_timeout", "3")
        try:
            cluster.connect(timeout=3)
        except rados.Error:
            return
        raise AssertionError("a wrong key was accepted")
    finally:
        cluster.shutdown()
