"""Connection, pool and volume operations of the library against a real libvirtd 9.0."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from tests.client.helpers import ENGINES, on_engine
from tests.conftest import ReferenceLibvirtd, run_virsh
from virtvol.client import (
    InvalidArgument,
    LibvirtError,
    NoStoragePool,
    NoStorageVolume,
    NoSupport,
    OperationFailed,
    OperationInvalid,
    PoolState,
    StorageVolumeExists,
    VolumeType,
    VolWipeAlgorithm,
    connect,
)
from virtvol.client.objects import CALLS_IN_FLIGHT, describe_volumes
from virtvol.client.rpc import RpcProtocol
from virtvol.protocol.error_codes import ErrorCode

if TYPE_CHECKING:
    from pathlib import Path

    from virtvol.client.connection import Connection
    from virtvol.client.objects import VolumeInfo

pytestmark = pytest.mark.interop

VOL_XML = """<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>
<allocation unit='bytes'>0</allocation><target><format type='raw'/></target></volume>"""


async def test_connect_tcp_and_unix(reference_libvirtd: ReferenceLibvirtd) -> None:
    for uri in (reference_libvirtd.tcp_uri, reference_libvirtd.unix_uri):
        async with connect(uri) as conn:
            assert conn.keepalive_supported
            assert await conn.lib_version() == 9000000
            assert await conn.get_type() == "storage"
            pools = await conn.list_pools()
            assert [p.name for p in pools] == ["default"]
    conn = await connect(reference_libvirtd.tcp_uri)
    assert conn.is_alive
    await conn.close()
    await conn.close()
    assert not conn.is_alive


async def test_pool_operations(reference_libvirtd: ReferenceLibvirtd, tmp_path: Path) -> None:
    target = reference_libvirtd.state_dir / "other"
    xml = f"<pool type='dir'><name>other</name><target><path>{target}</path></target></pool>"
    async with connect(reference_libvirtd.tcp_uri) as conn:
        pool = await conn.lookup_pool_by_name("default")
        assert await pool.is_active()
        assert await pool.is_persistent()
        info = await pool.info()
        assert info.state is PoolState.RUNNING
        assert info.capacity > 0
        assert str(reference_libvirtd.pool_dir) in await pool.xml_desc()
        same = await conn.lookup_pool_by_uuid(str(pool.uuid))
        assert same == pool
        assert pool.uuid_string == str(pool.uuid)
        assert f"<uuid>{pool.uuid_string}</uuid>" in await pool.xml_desc()

        other = await conn.define_pool(xml)
        assert not await other.is_active()
        assert (await other.info()).state is PoolState.INACTIVE
        await other.start(flags=1)  # build the folder
        assert await other.is_active()
        with pytest.raises(OperationInvalid, match="already active"):
            await other.start()
        await other.set_autostart(True)
        assert await other.autostart()
        await other.set_autostart(False)
        await other.refresh()
        assert await other.list_volumes() == []
        with pytest.raises(OperationInvalid, match="still active"):
            await other.undefine()
        await other.destroy()
        with pytest.raises(OperationInvalid, match="not active"):
            await other.lookup_volume("x")
        await other.undefine()
        with pytest.raises(NoStoragePool, match="no storage pool with matching name 'other'"):
            await conn.lookup_pool_by_name("other")
        with pytest.raises(NoStoragePool):
            await conn.lookup_pool_by_uuid("00000000-0000-0000-0000-000000000001")


async def test_volume_operations(reference_libvirtd: ReferenceLibvirtd) -> None:
    async with connect(reference_libvirtd.tcp_uri) as conn:
        pool = await conn.lookup_pool_by_name("default")
        vol = await pool.create_volume(VOL_XML.format(name="a.img", size=1 << 20))
        assert vol.name == "a.img"
        assert vol.pool_name == "default"
        path = await vol.path()
        assert path == str(reference_libvirtd.pool_dir / "a.img")
        assert await conn.lookup_volume_by_key(vol.key) == vol
        assert await conn.lookup_volume_by_path(path) == vol
        assert (await vol.pool()) == pool
        info = await vol.info()
        assert info.type is VolumeType.FILE
        assert info.capacity == 1 << 20
        assert "<name>a.img</name>" in await vol.xml_desc()
        with pytest.raises(StorageVolumeExists, match="exists already"):
            await pool.create_volume(VOL_XML.format(name="a.img", size=1))
        await vol.resize(2 << 20)
        assert (await vol.info()).capacity == 2 << 20
        with pytest.raises(InvalidArgument, match="shrink"):
            await vol.resize(1 << 20)
        await vol.resize(1 << 20, shrink=True)
        clone = await pool.create_volume_from(VOL_XML.format(name="b.img", size=1 << 20), vol)
        await clone.wipe()
        names = [v.name for v in await pool.list_volumes()]
        assert names == ["a.img", "b.img"]
        assert await pool.num_of_volumes() == 2
        await clone.delete()
        await vol.delete()
        with pytest.raises(NoStorageVolume, match=r"matching name 'a\.img'"):
            await pool.lookup_volume("a.img")
        with pytest.raises(NoStorageVolume, match="matching path '/nope'"):
            await conn.lookup_volume_by_path("/nope")
    out = run_virsh(reference_libvirtd.tcp_uri, "vol-list", "default").stdout
    assert "a.img" not in out


async def test_many_calls_in_flight(reference_libvirtd: ReferenceLibvirtd) -> None:
    async with connect(reference_libvirtd.tcp_uri) as conn:
        pool = await conn.lookup_pool_by_name("default")
        results = await asyncio.gather(
            *(pool.info() for _ in range(50)),
            *(conn.lookup_pool_by_name("nope") for _ in range(10)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, NoStoragePool) for r in results) == 10
        assert sum(not isinstance(r, BaseException) for r in results) == 50


async def test_pool_storage_is_built_and_deleted(reference_libvirtd: ReferenceLibvirtd) -> None:
    target = reference_libvirtd.state_dir / "built"
    xml = f"<pool type='dir'><name>built</name><target><path>{target}</path></target></pool>"
    async with connect(reference_libvirtd.tcp_uri) as conn:
        pool = await conn.define_pool(xml)
        await pool.build()
        assert target.is_dir()
        await pool.start()
        with pytest.raises(OperationInvalid, match="is still active"):
            await pool.delete()
        await pool.destroy()
        await pool.delete()
        assert not target.exists()
        await pool.undefine()


async def test_pool_capabilities_and_source_discovery(
    reference_libvirtd: ReferenceLibvirtd,
) -> None:
    async with connect(reference_libvirtd.tcp_uri) as conn:
        capabilities = await conn.storage_pool_capabilities()
        assert capabilities.startswith("<storagepoolCapabilities>")
        assert "<pool type='dir' supported='yes'>" in capabilities
        with pytest.raises(NoSupport, match="does not support source discovery"):
            await conn.find_storage_pool_sources("dir")
        spec = "<source><host name='localhost'/></source>"
        with pytest.raises(OperationFailed, match="no storage pools were found"):
            await conn.find_storage_pool_sources("netfs", src_spec=spec)


async def test_wipe_pattern(reference_libvirtd: ReferenceLibvirtd) -> None:
    """Each algorithm reaches the daemon as its libvirt number: zero wipes, trim and
    scrub's patterns come back with libvirtd's refusals (no scrub installed)."""
    path = reference_libvirtd.pool_dir / "w.img"
    # Allocated whole: libvirtd zeroes as much as it last saw allocated.
    run_virsh(reference_libvirtd.tcp_uri, "vol-create-as", "default", "w.img", "4096")
    path.write_bytes(b"\xff" * 4096)
    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await (await conn.lookup_pool_by_name("default")).lookup_volume("w.img")
        await vol.wipe_pattern(VolWipeAlgorithm.ZERO)
        assert path.read_bytes() == bytes(4096)
        with pytest.raises(LibvirtError, match="'trim' algorithm not supported") as trim:
            await vol.wipe_pattern(VolWipeAlgorithm.TRIM)
        assert trim.value.code == ErrorCode.ARGUMENT_UNSUPPORTED
        with pytest.raises(LibvirtError, match="Cannot find 'scrub' in path"):
            await vol.wipe_pattern(VolWipeAlgorithm.GUTMANN)


@pytest.mark.parametrize("engine", ENGINES)
def test_describe_volumes_keeps_their_order_and_leaves_a_deleted_one_undescribed(
    reference_libvirtd: ReferenceLibvirtd, engine: str
) -> None:
    """Paths and infos asked for with several calls in flight come back in the volumes'
    order; one deleted since the listing has None where virsh prints "unknown"."""
    uri = reference_libvirtd.tcp_uri
    names = [f"v{index:02}" for index in range(3 * CALLS_IN_FLIGHT)]
    for index, name in enumerate(names):
        run_virsh(uri, "vol-create-as", "default", name, str(4096 * (index + 1)))

    async def describe(conn: Connection) -> list[tuple[str | None, VolumeInfo | None]]:
        pool = await conn.lookup_pool_by_name("default")
        volumes = await pool.list_volumes()
        run_virsh(uri, "vol-delete", "--pool", "default", "v07")
        assert await describe_volumes([], info=True) == []
        paths_only = await describe_volumes(volumes, info=False)
        assert [info for _, info in paths_only] == [None] * len(names)
        described = await describe_volumes(volumes, info=True)
        assert [path for path, _ in paths_only] == [path for path, _ in described]
        return described

    described = on_engine(engine, uri, describe)
    pool_dir = reference_libvirtd.pool_dir
    for index, (name, (path, info)) in enumerate(zip(names, described, strict=True)):
        if name == "v07":
            assert (path, info) == (None, None)
            continue
        assert path == str(pool_dir / name)
        assert info is not None
        assert (info.type, info.capacity) == (VolumeType.FILE, 4096 * (index + 1))


async def test_describe_volumes_cancelled_leaves_the_connection_usable(
    reference_libvirtd: ReferenceLibvirtd,
) -> None:
    """Cancelled with calls in flight, the answers still due are dropped as they come,
    and the connection goes on serving calls."""
    for index in range(4 * CALLS_IN_FLIGHT):
        run_virsh(reference_libvirtd.tcp_uri, "vol-create-as", "default", f"v{index}", "4096")
    async with connect(reference_libvirtd.tcp_uri) as conn:
        volumes = await (await conn.lookup_pool_by_name("default")).list_volumes()
        describing = asyncio.ensure_future(describe_volumes(volumes, info=True))
        await asyncio.sleep(0)  # the first calls are out, their answers not yet in
        describing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await describing
        assert await conn.get_type() == "storage"
        assert [path for path, _ in await describe_volumes(volumes[:2], info=False)] == [
            str(reference_libvirtd.pool_dir / volume.name) for volume in volumes[:2]
        ]
        rpc = conn._rpc
        assert isinstance(rpc, RpcProtocol)
        assert not rpc._waiters
