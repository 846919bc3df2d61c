"""virtvold, in-process: every call gets an answer, even when its result cannot be sent.

A storage handler is replaced by one whose result breaks the protocol's limits
(a name longer than a wire string), or whose error message cannot be encoded:
the daemon must answer with libvirt's RPC error "Unable to encode message
payload" and go on serving the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.daemon.conftest import RawClient, error_of, in_process_client
from virtvol.daemon.context import DaemonContext
from virtvol.daemon.dispatch import HANDLERS, storage
from virtvol.daemon.storage import StorageRegistry
from virtvol.protocol import procedures
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived
from virtvol.protocol.constants import REMOTE_STRING_MAX
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

POOL = r.StoragePool(name="default", uuid=bytes(16))


def _unsendable_names(registry: StorageRegistry, args: r.PoolListVolumesArgs) -> r.ListVolNamesRet:
    return r.ListVolNamesRet(names=("n" * (REMOTE_STRING_MAX + 1),))


def _unsendable_error(registry: StorageRegistry, args: r.PoolFlagsArgs) -> None:
    # A lone surrogate has no UTF-8 form, even with surrogateescape.
    raise ErrorReport(ErrorCode.INTERNAL_ERROR, ErrorDomain.STORAGE, "bad \ud800 name")


def _three_volumes(registry: StorageRegistry, args: r.PoolArgs) -> r.NumRet:
    return r.NumRet(num=3)


@pytest.fixture
def context(tmp_path: Path) -> Iterator[DaemonContext]:
    ctx = DaemonContext(
        registry=StorageRegistry(tmp_path / "state"),
        legacy=False,
        keepalive_interval=5.0,
        keepalive_count=5,
    )
    try:
        yield ctx
    finally:
        ctx.shutdown_executors()


@pytest.fixture
async def client(
    context: DaemonContext, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RawClient]:
    for handler in (
        storage(procedures.STORAGE_POOL_LIST_VOLUMES, _unsendable_names),
        storage(procedures.STORAGE_POOL_REFRESH, _unsendable_error),
        storage(procedures.STORAGE_POOL_NUM_OF_VOLUMES, _three_volumes),
    ):
        monkeypatch.setitem(HANDLERS, handler.procedure.number, handler)
    async with in_process_client(context) as raw:
        yield raw


async def test_a_result_that_cannot_be_encoded_is_answered_with_an_error(
    client: RawClient,
) -> None:
    listed = await client.call(
        Proc.STORAGE_POOL_LIST_VOLUMES, r.PoolListVolumesArgs(pool=POOL, maxnames=1)
    )
    code, domain, message = error_of(listed)
    assert (code, domain) == (ErrorCode.RPC, ErrorDomain.RPC)
    assert message is not None
    assert message.startswith("Unable to encode message payload: ListVolNamesRet.names")
    counted = await client.call(Proc.STORAGE_POOL_NUM_OF_VOLUMES, r.PoolArgs(pool=POOL))
    assert isinstance(counted, ReplyReceived)
    assert counted.result == r.NumRet(num=3)


async def test_an_error_that_cannot_be_encoded_is_answered_with_a_plain_one(
    client: RawClient,
) -> None:
    refreshed = await client.call(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(pool=POOL, flags=0))
    assert error_of(refreshed) == (
        ErrorCode.RPC,
        ErrorDomain.RPC,
        "Unable to encode message payload",
    )
    counted = await client.call(Proc.STORAGE_POOL_NUM_OF_VOLUMES, r.PoolArgs(pool=POOL))
    assert isinstance(counted, ReplyReceived)
