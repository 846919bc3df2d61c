"""``--protocol legacy``: virtvold as a daemon from before sparse streams (libvirt < 3.4)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tests.conftest import Virtvold, run_virsh
from tests.daemon.conftest import make_sparse_file, raw_client
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path


def test_virsh_sparse_transfers_refused(legacy_virtvold: Virtvold, tmp_path: Path) -> None:
    uri = legacy_virtvold.tcp_uri
    source = make_sparse_file(tmp_path / "src", 1 << 20, [(0, os.urandom(5000))])
    run_virsh(uri, "vol-create-as", "default", "X", "1M")
    upload = run_virsh(
        uri, "vol-upload", "--pool", "default", "X", str(source), "--sparse", check=False
    )
    assert upload.returncode == 1
    assert upload.stderr.splitlines() == [
        "error: cannot upload to volume X",
        "error: unsupported flags (0x1) in function storageVolUpload",
    ]
    download = run_virsh(
        uri,
        "vol-download",
        "--pool",
        "default",
        "X",
        str(tmp_path / "out"),
        "--sparse",
        check=False,
    )
    assert download.returncode == 1
    assert download.stderr.splitlines() == [
        "error: cannot download from volume X",
        "error: unsupported flags (0x1) in function storageVolDownload",
    ]
    # Plain transfers work as they did before 3.4.
    run_virsh(uri, "vol-upload", "--pool", "default", "X", str(source))
    run_virsh(uri, "vol-download", "--pool", "default", "X", str(tmp_path / "plain"))
    assert (tmp_path / "plain").read_bytes() == source.read_bytes()


async def test_skip_frame_closes_the_connection(legacy_virtvold: Virtvold) -> None:
    run_virsh(legacy_virtvold.tcp_uri, "vol-create-as", "default", "Y", "1M")
    before = (legacy_virtvold.pool_dir / "Y").read_bytes()
    async with raw_client(legacy_virtvold.port) as client:
        lib = await client.call(Proc.CONNECT_GET_LIB_VERSION)
        assert isinstance(lib, ReplyReceived)
        assert lib.result == r.ConnectGetLibVersionRet(3_003_000)
        serial = await client.open_upload("Y", flags=0)
        client.send(*client.rpc.send_data(serial, b"abc"))
        # Our client core refuses holes on a plain stream: forge the frame as an old peer would.
        client.rpc.streams[serial].sparse = True
        client.send(client.rpc.send_hole(serial, 4096))
        assert await client.next_event() is None
    assert (legacy_virtvold.pool_dir / "Y").read_bytes() == before
