"""virtvold, in-process: a connection reads small frames into a larger buffer while it has
an upload open, and goes back to the small one when the upload ends."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tests.daemon.conftest import in_process_client, served_connection
from virtvol.daemon.connection import UPLOAD_RECEIVE_BUFFER
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived, StreamFinished
from virtvol.protocol.constants import (
    REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.frames import SCRATCH_SIZE, Header, encode_frame
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

    from virtvol.daemon.context import DaemonContext


def _scratch_size(context: DaemonContext) -> int:
    return served_connection(context).rpc.reader.scratch_size


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
            await served_connection(context).wait_streams()
        assert _scratch_size(context) == SCRATCH_SIZE
        written = (tmp_path / "pool" / "disk.img").read_bytes()
    assert len(written) == extents * 65536
    for n in range(extents):
        extent = written[n * 65536 : (n + 1) * 65536]
        assert extent == bytes([n % 255 + 1]) * 4096 + bytes(61440)


async def test_a_frame_cut_across_the_end_of_an_upload_is_still_read(
    context: DaemonContext,
) -> None:
    # The buffer shrinks when the upload ends while it holds the start of a frame larger
    # than the small buffer: the rest of that frame must still find room.
    async with in_process_client(context) as client:
        vol = await client.volume("disk.img")
        opened = await client.call(Proc.STORAGE_VOL_UPLOAD, r.VolTransferArgs(vol, 0, 0, 0))
        assert isinstance(opened, ReplyReceived)
        serial = opened.serial
        late = Header(
            REMOTE_PROGRAM,
            REMOTE_PROTOCOL_VERSION,
            Proc.STORAGE_VOL_UPLOAD,
            MessageType.STREAM,
            serial,
            MessageStatus.CONTINUE,
        )
        frame = encode_frame(late, b"z" * (2 * SCRATCH_SIZE))
        cut = SCRATCH_SIZE + 1000
        client.send(client.rpc.send_finish(serial), frame[:cut])
        while not isinstance(await client.next_event(), StreamFinished):
            pass
        async with asyncio.timeout(10):
            await served_connection(context).wait_streams()
        assert _scratch_size(context) <= cut
        # The rest of the late frame (dropped: its stream is over), then a call.
        client.send(frame[cut:])
        reply = await client.call(Proc.CONNECT_GET_LIB_VERSION)
        assert isinstance(reply, ReplyReceived), reply
