"""Calls libvirtd refuses for one reason before it looks at another: a clone
(STORAGE_VOL_CREATE_XML_FROM) into a pool that is not there, a resize to nothing, a
delete with flags."""

from __future__ import annotations

import os

import pytest

from tests.daemon.conftest import error_of, raw_client, shared_volume_file, storage_driver_uri
from virtvol.protocol import remote as r
from virtvol.protocol.constants import VolResizeFlags
from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.protocol.procedures import Proc

NOWHERE = r.StoragePool(name="nowhere", uuid=b"\x01" * 16)
NOT_FOUND = (
    "Storage pool not found: no storage pool with matching uuid"
    " '01010101-0101-0101-0101-010101010101' (nowhere)"
)


@pytest.mark.parametrize("xml", ["<volume><name>copy</name></volume>", "not xml"])
@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
async def test_a_clone_into_a_pool_not_there_is_refused_as_no_pool(
    request: pytest.FixtureRequest, daemon: str, xml: str
) -> None:
    peer = request.getfixturevalue(daemon)
    shared_volume_file(peer.pool_dir, "source", b"s" * 4096)
    name = storage_driver_uri(daemon)
    async with raw_client(peer.port, open_name=name) as client:
        await client.refresh_pool()
        source = await client.volume("source")
        args = r.VolCreateXmlFromArgs(pool=NOWHERE, xml=xml, clonevol=source, flags=0)
        assert error_of(await client.call(Proc.STORAGE_VOL_CREATE_XML_FROM, args)) == (
            ErrorCode.NO_STORAGE_POOL,
            ErrorDomain.STORAGE,
            NOT_FOUND,
        )
    assert sorted(os.listdir(peer.pool_dir)) == ["source"]


@pytest.mark.parametrize("flags", [0, VolResizeFlags.ALLOCATE, 1 << 31])
@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
async def test_a_resize_to_zero_without_delta_or_shrink_is_refused_first(
    request: pytest.FixtureRequest, daemon: str, flags: int
) -> None:
    """libvirt's API refuses a capacity of 0 without DELTA or SHRINK before the driver
    looks at the flags or the volume."""
    peer = request.getfixturevalue(daemon)
    shared_volume_file(peer.pool_dir, "disk", b"d" * 4096)
    name = storage_driver_uri(daemon)
    async with raw_client(peer.port, open_name=name) as client:
        await client.refresh_pool()
        disk = await client.volume("disk")
        args = r.VolResizeArgs(vol=disk, capacity=0, flags=flags)
        assert error_of(await client.call(Proc.STORAGE_VOL_RESIZE, args)) == (
            ErrorCode.INVALID_ARG,
            ErrorDomain.STORAGE,
            "capacity in virStorageVolResize cannot be zero without 'delta' or 'shrink' flags set",
        )
    assert (peer.pool_dir / "disk").read_bytes() == b"d" * 4096


@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
async def test_a_delete_with_flags_looks_the_volume_up_first(
    request: pytest.FixtureRequest, daemon: str
) -> None:
    """libvirtd's file backend checks a delete's flags only once it has found the volume
    (in an active pool) and seen it free."""
    peer = request.getfixturevalue(daemon)
    shared_volume_file(peer.pool_dir, "disk", b"d" * 4096)
    name = storage_driver_uri(daemon)
    async with raw_client(peer.port, open_name=name) as client:
        await client.refresh_pool()
        disk = await client.volume("disk")
        gone = r.StorageVol(pool="default", name="gone", key=str(peer.pool_dir / "gone"))
        assert error_of(
            await client.call(Proc.STORAGE_VOL_DELETE, r.VolFlagsArgs(vol=gone, flags=1))
        ) == (
            ErrorCode.NO_STORAGE_VOL,
            ErrorDomain.STORAGE,
            "Storage volume not found: no storage vol with matching name 'gone'",
        )
        assert error_of(
            await client.call(Proc.STORAGE_VOL_DELETE, r.VolFlagsArgs(vol=disk, flags=1))
        ) == (
            ErrorCode.INVALID_ARG,
            ErrorDomain.STORAGE,
            "unsupported flags (0x1) in function virStorageBackendVolDeleteLocal",
        )
    assert (peer.pool_dir / "disk").read_bytes() == b"d" * 4096
