"""virtvold, in-process: a connection reads small frames into a larger buffer while it has
an upload open, and goes back to the small one when the upload ends."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from tests.daemon.conftest import in_process_client
from virtvol.daemon.connection import UPLOAD_RECEIVE_BUFFER, ClientConnection
from virtvol.daemon.context import DaemonContext
from virtvol.daemon.storage import StorageRegistry
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived, StreamFinished
from virtvol.protocol.frames import SCRATCH_SIZE
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def context(tmp_path: Path) -> Iterator[DaemonContext]:
    registry = StorageRegistry(tmp_path / "state", sync_uploads=False)
    registry.load()
    registry.ensure_pool("default", tmp_path / "pool")
    (tmp_path / "pool" / "disk.img").write_bytes(b"old content")
    ctx = DaemonContext(registry=registry, legacy=False, keepalive_interval=5, keepalive_count=5)
    try:
        yield ctx
    finally:
        ctx.shutdown_executors()
        registry.close()


def _served(context: DaemonContext) -> ClientConnection:
    (served,) = context.connections
    assert isinstance(served, ClientConnection)
    return served


def _scratch_size(context: DaemonContext) -> int:
    return _served(context).rpc.reader.scratch_size


async def test_an_upload_reads_small_frames_into_a_larger_buffer(
    context: DaemonContext, tmp_path: Path
) -> None:
    extents = 200  # 4 KiB of data every 64 KiB, ~800 KiB of frames
    async with in_process_client(context) as client:
        assert _scratch_size(context) == SCRATCH_SIZE
        vol = await client.volume("disk.img")
        opened = await client.call(Proc.STORAGE_VOL_UPLOAD, r.VolTransferArgs(vol, 0, 0, 1))
        assert isinstance(opened, ReplyReceived)
        assert _scratch_size(context) == UPLOAD_RECEIVE_BUFFER
        serial = max(client.rpc.streams)
        items: list[bytes | int] = []
        for n in range(extents):
            items += [bytes([n % 255 + 1]) * 4096, 61440]
        client.send(*client.rpc.send_stream_items(serial, items))
        client.send(client.rpc.send_finish(serial))
        while not isinstance(await client.next_event(), StreamFinished):
            pass
        # The stream's task ends a moment after its acknowledgement (it lets go of the
        # replaced content first).
        async with asyncio.timeout(10):
            await _served(context).wait_streams()
        assert _scratch_size(context) == SCRATCH_SIZE
        written = (tmp_path / "pool" / "disk.img").read_bytes()
    assert len(written) == extents * 65536
    for n in range(extents):
        extent = written[n * 65536 : (n + 1) * 65536]
        assert extent == bytes([n % 255 + 1]) * 4096 + bytes(61440)
