"""virStorageVolWipePattern (python3-libvirt's ``wipePattern``) against virtvold."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tests.conftest import run_system_python, run_virsh

if TYPE_CHECKING:
    from tests.conftest import Virtvold

WIPE = """
import sys, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open(sys.argv[1])
vol = conn.storagePoolLookupByName("default").storageVolLookupByName("v")
for algorithm in (0, 9, 1, 10):
    try:
        vol.wipePattern(algorithm, 0)
        print(algorithm, "ok")
    except libvirt.libvirtError as e:
        print(algorithm, e.get_error_code(), e.get_error_domain(), e.get_error_message())
"""


def test_wipe_pattern_zero_wipes_as_wipe_does(virtvold: Virtvold) -> None:
    """libvirt's vol-wipe is the zero algorithm of this call, which python clients use
    directly; trim and an algorithm past the last are refused as libvirtd refuses them,
    scrub's patterns with the reason."""
    (virtvold.pool_dir / "v").write_bytes(os.urandom(8192))
    out = run_system_python(WIPE, virtvold.tcp_uri).stdout.splitlines()
    assert out == [
        "0 ok",
        "9 74 18 argument unsupported: 'trim' algorithm not supported",
        "1 74 18 argument unsupported: wiping algorithm 1 needs scrub, which virtvold does not run",
        "10 8 18 invalid argument: wiping algorithm 10 not supported",
    ]
    assert (virtvold.pool_dir / "v").read_bytes() == bytes(8192)


def test_a_wipe_zeroes_what_was_written_behind_the_daemons_back(virtvold: Virtvold) -> None:
    """libvirtd zeroes only what it last recorded as allocated: a volume made empty and
    filled since by another writer keeps its bytes through a wipe reported as done
    (docs/libvirtd-observed.md). virtvold wipes the file as it is."""
    uri = virtvold.tcp_uri
    run_virsh(uri, "vol-create-as", "default", "v", "1M", "--allocation", "0")
    (virtvold.pool_dir / "v").write_bytes(os.urandom(1 << 20))
    run_virsh(uri, "vol-wipe", "v", "--pool", "default")
    assert (virtvold.pool_dir / "v").read_bytes() == bytes(1 << 20)
