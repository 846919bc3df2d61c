"""A pool with more volumes than one list can carry.

libvirt's protocol caps a volume list at 16384 entries. libvirtd answers a
list-all call it cannot carry with an RPC-domain internal error and stays
usable; virtvold must answer the same, never leave the call without a reply.
Each daemon is checked with virsh, python3-libvirt and virtvol's library.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest

import virtvol.client
from tests.conftest import POOL_NAME, run_system_python, run_virsh
from virtvol.protocol.constants import REMOTE_STORAGE_VOL_LIST_MAX
from virtvol.protocol.errors import ErrorCode, ErrorDomain

if TYPE_CHECKING:
    from pathlib import Path

COUNT = REMOTE_STORAGE_VOL_LIST_MAX + 1
TOO_MANY = (
    f"internal error: Too many storage_vols '{COUNT}' for limit '{REMOTE_STORAGE_VOL_LIST_MAX}'"
)

LIST_ALL = r"""
import json, sys, libvirt
libvirt.registerErrorHandler(lambda *args: None, None)
conn = libvirt.open(sys.argv[1])
pool = conn.storagePoolLookupByName(sys.argv[2])
try:
    pool.listAllVolumes()
    answer = ["listed"]
except libvirt.libvirtError as exc:
    answer = [exc.get_error_code(), exc.get_error_domain(), exc.get_error_message()]
answer.append(pool.numOfVolumes())
conn.close()
print(json.dumps(answer))
"""


def _fill(pool_dir: Path, count: int) -> None:
    """``count`` empty volumes, made quickly."""
    for index in range(count):
        os.close(os.open(pool_dir / f"v{index:05d}", os.O_CREAT | os.O_WRONLY, 0o644))


@pytest.fixture(params=["virtvold", "libvirtd"])
def crowded_uri(request: pytest.FixtureRequest) -> str:
    """A daemon whose pool "default" holds one volume more than a list may carry."""
    daemon = request.getfixturevalue(
        "virtvold" if request.param == "virtvold" else "reference_libvirtd"
    )
    _fill(daemon.pool_dir, COUNT)
    run_virsh(daemon.tcp_uri, "pool-refresh", POOL_NAME)
    uri: str = daemon.tcp_uri
    return uri


async def test_a_list_too_long_for_the_protocol_is_refused_with_libvirts_error(
    crowded_uri: str,
) -> None:
    listing = run_virsh(crowded_uri, "vol-list", POOL_NAME, check=False)
    assert listing.returncode == 1
    assert f"error: {TOO_MANY}" in listing.stderr

    answer = json.loads(run_system_python(LIST_ALL, crowded_uri, POOL_NAME).stdout)
    assert answer == [ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, TOO_MANY, COUNT]

    async with virtvol.client.connect(crowded_uri) as conn:
        pool = await conn.lookup_pool_by_name(POOL_NAME)
        with pytest.raises(virtvol.client.LibvirtError) as refused:
            await pool.list_volumes(timeout=30)
        error = refused.value
        assert (error.code, error.domain, error.message) == (
            ErrorCode.INTERNAL_ERROR,
            ErrorDomain.RPC,
            TOO_MANY,
        )
        # The connection goes on.
        assert await pool.num_of_volumes(timeout=30) == COUNT
