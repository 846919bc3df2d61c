"""The count a client asks the old list calls for (``maxnames``, ``maxuuids``), out of
range: libvirtd's generated dispatcher refuses a negative one and one above the
protocol's maximum, naming the argument, before it looks at anything else."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.daemon.conftest import error_of, raw_client, storage_driver_uri
from virtvol.protocol import remote as r
from virtvol.protocol.constants import (
    REMOTE_SECRET_LIST_MAX,
    REMOTE_STORAGE_POOL_LIST_MAX,
    REMOTE_STORAGE_VOL_LIST_MAX,
)
from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import Callable

    from virtvol.protocol.xdr import XdrStruct

POOL = r.StoragePool(name="nowhere", uuid=bytes(16))
# (procedure, its argument's name and maximum, the arguments for a count)
CALLS: list[tuple[Proc, str, str, Callable[[int], XdrStruct]]] = [
    (
        Proc.CONNECT_LIST_STORAGE_POOLS,
        "maxnames",
        "REMOTE_STORAGE_POOL_LIST_MAX",
        lambda count: r.ListNamesArgs(maxnames=count),
    ),
    (
        Proc.CONNECT_LIST_DEFINED_STORAGE_POOLS,
        "maxnames",
        "REMOTE_STORAGE_POOL_LIST_MAX",
        lambda count: r.ListNamesArgs(maxnames=count),
    ),
    (
        Proc.STORAGE_POOL_LIST_VOLUMES,
        "maxnames",
        "REMOTE_STORAGE_VOL_LIST_MAX",
        lambda count: r.PoolListVolumesArgs(pool=POOL, maxnames=count),
    ),
    (
        Proc.CONNECT_LIST_SECRETS,
        "maxuuids",
        "REMOTE_SECRET_LIST_MAX",
        lambda count: r.ListSecretsArgs(maxuuids=count),
    ),
]
MAXIMA = {
    "REMOTE_STORAGE_POOL_LIST_MAX": REMOTE_STORAGE_POOL_LIST_MAX,
    "REMOTE_STORAGE_VOL_LIST_MAX": REMOTE_STORAGE_VOL_LIST_MAX,
    "REMOTE_SECRET_LIST_MAX": REMOTE_SECRET_LIST_MAX,
}


@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
async def test_a_count_out_of_range_is_refused_as_libvirtd_refuses_it(
    request: pytest.FixtureRequest, daemon: str
) -> None:
    peer = request.getfixturevalue(daemon)
    name = storage_driver_uri(daemon)
    async with raw_client(peer.port, open_name=name) as client:
        for procedure, argument, maximum, args in CALLS:
            for count in (-1, -(2**31)):
                assert error_of(await client.call(procedure, args(count))) == (
                    ErrorCode.RPC,
                    ErrorDomain.RPC,
                    f"{argument} must be non-negative",
                ), (procedure, count)
            too_many = args(MAXIMA[maximum] + 1)
            assert error_of(await client.call(procedure, too_many)) == (
                ErrorCode.RPC,
                ErrorDomain.RPC,
                f"{argument} > {maximum}",
            ), procedure
