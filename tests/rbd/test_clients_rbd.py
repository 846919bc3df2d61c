"""virtvol (command and library) with an rbd pool; two daemons on one Ceph pool; no binding."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.client.helpers import MIB, allocated, assert_same_file, write_sparse_image
from tests.client.test_cli import virtvol
from tests.conftest import Virtvold, run_virsh, start_virtvold, stop_virtvold
from tests.rbd.conftest import (
    CEPH_POOL,
    RBD_POOL,
    SECRET_UUID,
    define_rbd_pool,
    rbd_pool_xml,
    volume_name,
)
from tests.rbd.test_virsh_rbd import exported
from virtvol.client import Hole, connect
from virtvol.daemon.storage import StorageRegistry, rbdvolumes
from virtvol.protocol.errors import ErrorReport

if TYPE_CHECKING:
    from pathlib import Path

    from tools.ceph_cluster import CephCluster
    from virtvol.daemon.storage.poolxml import PoolRuntime


def _volume_xml(name: str, size: int) -> str:
    return f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity></volume>"


def test_virtvol_command(rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path) -> None:
    uri, name = rbd_virtvold.tcp_uri, volume_name("cli")
    source = tmp_path / "source.img"
    write_sparse_image(source, 8 * MIB)
    virtvol(uri, "vol-create-as", RBD_POOL, name, "8M")
    virtvol(uri, "vol-upload", name, str(source), "--pool", RBD_POOL, "--quiet")
    assert exported(ceph, name, tmp_path) == source.read_bytes()
    assert f"{CEPH_POOL}/{name}" in virtvol(uri, "vol-list", RBD_POOL).stdout
    back = tmp_path / "back.img"
    virtvol(uri, "vol-download", name, str(back), "--pool", RBD_POOL, "--quiet")
    assert_same_file(source, back)
    assert allocated(back) <= 2 * MIB
    virtvol(uri, "vol-delete", name, "--pool", RBD_POOL)
    assert name not in ceph.rbd("ls", CEPH_POOL).split()


async def test_library_round_trip(rbd_virtvold: Virtvold, tmp_path: Path) -> None:
    name = volume_name("lib")
    source = tmp_path / "source.img"
    write_sparse_image(source, 8 * MIB, seed=3)
    async with connect(rbd_virtvold.unix_uri) as conn:
        pool = await conn.lookup_pool_by_name(RBD_POOL)
        vol = await pool.create_volume(_volume_xml(name, 8 * MIB))
        up = await vol.upload_file(source)
        assert up.sparse
        assert up.hole_bytes >= 6 * MIB
        back = tmp_path / "back.img"
        down = await vol.download_file(back)
        assert down.sparse
        assert down.hole_bytes >= 6 * MIB
        assert_same_file(source, back)
        part = tmp_path / "part.img"
        await vol.download_file(part, offset=MIB - 5, length=MIB)
        assert part.read_bytes() == source.read_bytes()[MIB - 5 : 2 * MIB - 5]


async def test_pool_destroyed_during_a_download(rbd_virtvold: Virtvold, tmp_path: Path) -> None:
    """The cluster connection outlives the images a running download has open."""
    name = volume_name("held")
    content = os.urandom(12 * MIB)
    source = tmp_path / "source.img"
    source.write_bytes(content)
    async with connect(rbd_virtvold.tcp_uri) as conn:
        pool = await conn.lookup_pool_by_name(RBD_POOL)
        vol = await pool.create_volume(_volume_xml(name, len(content)))
        await vol.upload_file(source)
        received = bytearray()
        async with vol.download(sparse=True) as stream:
            async for item in stream:
                if not received:
                    await pool.destroy()
                received += bytes(item.length) if isinstance(item, Hole) else bytes(item)
        assert bytes(received) == content
        assert not await pool.is_active()
        await pool.start()
        assert name in [v.name for v in await pool.list_volumes()]


def test_two_daemons_share_one_ceph_pool(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    other = start_virtvold(tmp_path / "other")
    try:
        define_rbd_pool(other.tcp_uri, ceph, tmp_path)
        name = volume_name("shared")
        run_virsh(rbd_virtvold.tcp_uri, "vol-create-as", RBD_POOL, name, "6M")
        assert name in run_virsh(other.tcp_uri, "vol-list", RBD_POOL).stdout
        source = tmp_path / "source.img"
        write_sparse_image(source, 6 * MIB, seed=5)
        run_virsh(rbd_virtvold.tcp_uri, "vol-upload", "--pool", RBD_POOL, name, str(source))
        back = tmp_path / "back.img"
        run_virsh(other.tcp_uri, "vol-download", "--pool", RBD_POOL, name, str(back), "--sparse")
        assert_same_file(source, back)
        run_virsh(other.tcp_uri, "vol-delete", "--pool", RBD_POOL, name)
        assert name not in run_virsh(rbd_virtvold.tcp_uri, "vol-list", RBD_POOL).stdout
        for daemon in (rbd_virtvold, other):
            assert ceph.admin_key not in daemon.log_text()
    finally:
        stop_virtvold(other)


def test_rbd_pool_without_the_binding(
    tmp_path: Path, ceph: CephCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rbd", None)  # import rbd now raises ImportError
    registry = StorageRegistry(tmp_path / "state")
    ref = registry.define_pool_xml(
        f"<pool type='rbd'><name>nobinding</name><source><name>{CEPH_POOL}</name>"
        f"<host name='127.0.0.1' port='{ceph.port}'/></source></pool>"
    )
    with pytest.raises(ErrorReport) as failure:
        registry.start_pool(ref)
    assert "python3-rados and python3-rbd" in failure.value.message
    assert not registry.pool_is_active(ref)


def test_key_file_named_in_the_config(ceph: CephCluster, tmp_path: Path) -> None:
    keyring = tmp_path / "ceph.client.admin.keyring"
    keyring.write_text(f"[client.admin]\n\tkey = {ceph.admin_key}\n")
    config = tmp_path / "virtvold.toml"
    config.write_text(f'[ceph_keys]\n"admin key" = "{keyring}"\n')
    daemon = start_virtvold(tmp_path / "daemon", "--config", str(config))
    try:
        uri = daemon.tcp_uri
        listing = run_virsh(uri, "secret-list").stdout
        assert "ceph admin key" in listing
        uuid = listing.split()[listing.split().index("ceph") - 1]
        refused = run_virsh(uri, "secret-get-value", uuid, check=False)
        assert "Invalid secret: secret is private" in refused.stderr
        pool = tmp_path / "pool.xml"
        pool.write_text(
            f"<pool type='rbd'><name>{RBD_POOL}</name><source><name>{CEPH_POOL}</name>"
            f"<host name='127.0.0.1' port='{ceph.port}'/><auth type='ceph' username='admin'>"
            "<secret usage='admin key'/></auth></source></pool>"
        )
        run_virsh(uri, "pool-define", str(pool))
        run_virsh(uri, "pool-start", RBD_POOL)
        name = volume_name("keyfile")
        run_virsh(uri, "vol-create-as", RBD_POOL, name, "1M")
        assert name in ceph.rbd("ls", CEPH_POOL).split()
        assert not (tmp_path / "daemon" / "state" / "secrets").exists()  # never copied
        assert ceph.admin_key not in daemon.log_text()
    finally:
        stop_virtvold(daemon)


def _hidden_images(ceph: CephCluster) -> list[str]:
    return [n for n in ceph.rbd("ls", CEPH_POOL).split() if n.startswith(".virtvol-")]


def _wait_for_no_hidden_image(ceph: CephCluster, seconds: float) -> None:
    """Until the daemon removed what it hides, or ``seconds`` passed (it may keep it)."""
    deadline = time.monotonic() + seconds
    while _hidden_images(ceph) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("change", ["replace", "delete"])
async def test_download_keeps_reading_the_image_it_opened(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path, change: str
) -> None:
    """A download reads the content it started with to its end, as from a file, while
    another client replaces the volume with a whole upload or deletes it: never zeros
    from objects removed under it."""
    name = volume_name("readheld")
    content = os.urandom(48 * MIB)  # far more than a download reads ahead
    source = tmp_path / "source.img"
    source.write_bytes(content)
    replacement = tmp_path / "replacement.img"
    replacement.write_bytes(os.urandom(MIB))
    async with connect(rbd_virtvold.tcp_uri) as conn, connect(rbd_virtvold.tcp_uri) as other:
        pool = await conn.lookup_pool_by_name(RBD_POOL)
        vol = await pool.create_volume(_volume_xml(name, len(content)))
        await vol.upload_file(source)
        same = await (await other.lookup_pool_by_name(RBD_POOL)).lookup_volume(name)
        received = bytearray()
        async with vol.download(sparse=True) as stream:
            async for item in stream:
                if not received:
                    if change == "replace":
                        await same.upload_file(replacement)
                    else:
                        await same.delete()
                    await asyncio.to_thread(_wait_for_no_hidden_image, ceph, 2)
                received += bytes(item.length) if isinstance(item, Hole) else bytes(item)
        assert len(received) == len(content)
        assert bytes(received) == content
        if change == "replace":
            # A whole upload keeps the volume's size and its bytes past the stream.
            expected = replacement.read_bytes() + content[MIB:]
            assert exported(ceph, name, tmp_path) == expected
        else:
            assert name not in ceph.rbd("ls", CEPH_POOL).split()
    _wait_for_no_hidden_image(ceph, 10)
    assert _hidden_images(ceph) == []


def test_a_pool_connecting_holds_up_no_other_call(
    tmp_path: Path, ceph: CephCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an rbd pool waits for a monitor that does not answer (librados' timeout,
    30 s in the daemon), calls about other pools and about the pools' list go on."""
    monkeypatch.setattr(rbdvolumes, "CLUSTER_TIMEOUT", "3")
    registry = StorageRegistry(tmp_path / "state", sync_uploads=False)
    other = registry.ensure_pool("files", tmp_path / "files")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        ref = registry.define_pool_xml(
            f"<pool type='rbd'><name>silent</name><source><name>{CEPH_POOL}</name>"
            f"<host name='127.0.0.1' port='{silent.getsockname()[1]}'/></source></pool>"
        )
        failures: list[BaseException] = []

        def start() -> None:
            try:
                registry.start_pool(ref)
            except BaseException as exc:  # handed to the test's thread
                failures.append(exc)

        starting = threading.Thread(target=start)
        starting.start()
        time.sleep(0.5)
        began = time.monotonic()
        names = [pool.name for pool in registry.list_all_pools()]
        assert registry.list_volume_names(other, 10) == []
        assert time.monotonic() - began < 1.0
        with pytest.raises(ErrorReport) as refused:
            registry.start_pool(ref)  # a second start does not connect again
        assert refused.value.message.endswith("storage pool 'silent' is starting")
        starting.join()
    assert names == ["files", "silent"]
    assert len(failures) == 1
    assert "failed to connect to the RADOS monitor" in str(failures[0])
    assert not registry.pool_is_active(ref)
    registry.undefine_pool(ref)
    registry.close()


def test_a_stop_while_a_pool_start_waits_for_its_cluster_leaves_nothing_unretrieved(
    tmp_path: Path,
) -> None:
    """SIGTERM while an rbd pool's start waits for a monitor that does not answer
    (librados' 30 s): the start gives up at once, so its worker does not hold up the
    stop, and its failure, which no connection waits for any more, is not left for
    asyncio to log as an error "never retrieved"."""
    daemon = start_virtvold(tmp_path / "virtvold")
    try:
        with socket.socket() as silent:  # accepts connections, never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            pool = tmp_path / "silent.xml"
            pool.write_text(
                f"<pool type='rbd'><name>silent</name><source><name>{CEPH_POOL}</name>"
                f"<host name='127.0.0.1' port='{silent.getsockname()[1]}'/></source></pool>"
            )
            run_virsh(daemon.tcp_uri, "pool-define", str(pool))
            starting = subprocess.Popen(
                ["virsh", "-c", daemon.tcp_uri, "pool-start", "silent"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            silent.settimeout(60)
            monitor, _ = silent.accept()  # librados is waiting for the monitor's answer
            with monitor:
                stopped = stop_virtvold(daemon, timeout=60)
            starting.wait(60)
    finally:
        stop_virtvold(daemon)
    assert stopped == 0
    log = daemon.log_text()
    assert "never retrieved" not in log
    assert "stopped" in log


def test_a_slow_cluster_holds_up_no_other_call(
    tmp_path: Path, ceph: CephCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pool-info, pool-dumpxml and pool-refresh of an rbd pool ask the cluster for its
    sizes (up to librados' 30 s when it stopped answering): other calls go on meanwhile."""
    registry = StorageRegistry(tmp_path / "state", sync_uploads=False)
    registry.secrets.define_xml(
        f"<secret ephemeral='no' private='yes'><uuid>{SECRET_UUID}</uuid>"
        "<usage type='ceph'><name>admin</name></usage></secret>"
    )
    registry.secrets.set_value(uuid.UUID(SECRET_UUID).bytes, base64.b64decode(ceph.admin_key))
    ref = registry.define_pool_xml(rbd_pool_xml(ceph))
    registry.start_pool(ref)
    slow_runtime = rbdvolumes.RbdVolumes.runtime
    # The cluster answers 2 s after it is asked, or as soon as the test has made its other
    # call: a call held up behind it would take those 2 s.
    asked = threading.Event()
    answer = threading.Event()

    def slow(self: rbdvolumes.RbdVolumes) -> PoolRuntime:
        asked.set()
        answer.wait(2)
        return slow_runtime(self)

    monkeypatch.setattr(rbdvolumes.RbdVolumes, "runtime", slow)
    calls = [
        lambda: registry.pool_info(ref),
        lambda: registry.pool_xml(ref),
        lambda: registry.refresh_pool(ref),
    ]
    for call in calls:
        asked.clear()
        answer.clear()
        asking = threading.Thread(target=call)
        asking.start()
        assert asked.wait(10)
        began = time.monotonic()
        assert [pool.name for pool in registry.list_all_pools()] == [RBD_POOL]
        assert time.monotonic() - began < 1.0
        answer.set()
        asking.join()
    assert registry.pool_is_active(ref)
    registry.close()
