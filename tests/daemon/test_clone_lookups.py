"""A clone (STORAGE_VOL_CREATE_XML_FROM) into a pool that is not there: libvirtd looks
up the pool the call names (by its UUID) before anything else, the definition included,
and says it is not found."""

from __future__ import annotations

import os

import pytest

from tests.daemon.conftest import error_of, raw_client
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived
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
    (peer.pool_dir / "source").write_bytes(b"s" * 4096)
    os.chmod(peer.pool_dir / "source", 0o666)  # the reference libvirtd runs as nobody
    # The reference libvirtd runs unprivileged: its storage driver is the session one.
    name = "storage:///session" if daemon == "reference_libvirtd" else "storage:///system"
    async with raw_client(peer.port, open_name=name) as client:
        found = await client.call(
            Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name="default")
        )
        assert isinstance(found, ReplyReceived)
        assert isinstance(found.result, r.PoolRet)
        refresh = r.PoolFlagsArgs(pool=found.result.pool, flags=0)
        assert isinstance(await client.call(Proc.STORAGE_POOL_REFRESH, refresh), ReplyReceived)
        source = await client.volume("source")
        args = r.VolCreateXmlFromArgs(pool=NOWHERE, xml=xml, clonevol=source, flags=0)
        assert error_of(await client.call(Proc.STORAGE_VOL_CREATE_XML_FROM, args)) == (
            ErrorCode.NO_STORAGE_POOL,
            ErrorDomain.STORAGE,
            NOT_FOUND,
        )
    assert sorted(os.listdir(peer.pool_dir)) == ["source"]
