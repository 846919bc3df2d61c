"""The blocking engine writes a buffer's worth of stream frames in a few system calls.

A fragmented image (4 KiB of data every 64 KiB) makes two small frames per extent;
written one ``sendmsg`` each they cost more than the bytes they carry.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tests.client.helpers import KIB, MIB, assert_same_file
from virtvol.client.direct import DirectRpc, open_direct, run_blocking

if TYPE_CHECKING:
    import _socket
    from collections.abc import Sequence
    from pathlib import Path

    from tests.conftest import Virtvold
    from virtvol.protocol.frames import Payload

EXTENT = 4 * KIB
STRIDE = 64 * KIB
SIZE = 64 * MIB  # 1024 extents: 2048 frames, more than one sendmsg may carry (IOV_MAX)


class _CountingSocket:
    """The connection's socket, counting the calls that write to it."""

    def __init__(self, inner: _socket.socket) -> None:
        self.inner = inner
        self.sendmsg_calls = 0

    def sendmsg(self, buffers: Sequence[Payload]) -> int:
        self.sendmsg_calls += 1
        return self.inner.sendmsg(buffers)

    def recv_into(self, buffer: memoryview) -> int:
        return self.inner.recv_into(buffer)

    def close(self) -> None:
        self.inner.close()


def _fragmented(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(SIZE)
        for offset in range(0, SIZE, STRIDE):
            f.seek(offset)
            f.write(os.urandom(EXTENT))


def test_a_fragmented_upload_writes_its_frames_in_batches(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    source = tmp_path / "fragmented.img"
    _fragmented(source)
    (virtvold.pool_dir / "vol").write_bytes(b"")
    conn = run_blocking(open_direct(virtvold.tcp_uri))
    try:
        rpc = conn._rpc
        assert isinstance(rpc, DirectRpc)
        counting = _CountingSocket(rpc._sock)
        rpc._sock = counting  # type: ignore[assignment]

        async def upload() -> None:
            pool = await conn.lookup_pool_by_name("default")
            vol = await pool.lookup_volume("vol")
            result = await vol.upload_file(source)
            assert (result.data_bytes, result.hole_bytes) == (
                SIZE // STRIDE * EXTENT,
                SIZE - SIZE // STRIDE * EXTENT,
            )

        run_blocking(upload())
        frames = 2 * SIZE // STRIDE
        # The call, the finish and the batches: a few dozen writes, not one per frame.
        assert counting.sendmsg_calls < frames // 20
    finally:
        run_blocking(conn.close())
    assert_same_file(source, virtvold.pool_dir / "vol")
