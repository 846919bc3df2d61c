"""A download that a whole-volume upload overtakes sends the old content whole.

The upload writes a temporary file and renames it over the volume; a download opened
before the rename goes on reading the file it opened, so its client gets the old bytes,
never the first part old and the rest new. The volume is larger than what the sockets
and the daemon's buffers hold, so most of it is still unread when the upload commits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.daemon.conftest import raw_client
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    ReplyReceived,
    StreamDataReceived,
    StreamEndReceived,
    StreamFinished,
)
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from tests.conftest import Virtvold

MIB = 1 << 20
SIZE = 48 * MIB
OLD, NEW = 0x4F, 0x4E  # "O", "N": no zero blocks, so every byte goes as data


async def test_a_download_overtaken_by_a_whole_upload_sends_the_old_content(
    virtvold: Virtvold,
) -> None:
    (virtvold.pool_dir / "disk.img").write_bytes(bytes([OLD]) * SIZE)
    async with raw_client(virtvold.port) as reader, raw_client(virtvold.port) as uploader:
        await reader.refresh_pool()
        vol = await reader.volume("disk.img")
        opened = await reader.call(
            Proc.STORAGE_VOL_DOWNLOAD, r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
        )
        assert isinstance(opened, ReplyReceived), opened
        first = await reader.next_event()
        assert isinstance(first, StreamDataReceived), first
        received = bytearray(first.data)

        # The download is under way and mostly unread: replace the volume whole.
        serial = await uploader.open_upload("disk.img", flags=0)
        for _ in range(SIZE // MIB):
            uploader.send(*uploader.rpc.send_data(serial, bytes([NEW]) * MIB))
        uploader.send(uploader.rpc.send_finish(serial))
        done = await uploader.next_event()
        assert isinstance(done, StreamFinished), done
        assert len(received) < SIZE // 2

        while True:
            event = await reader.next_event()
            if isinstance(event, StreamEndReceived):
                break
            assert isinstance(event, StreamDataReceived), event
            received += event.data
        reader.send(reader.rpc.send_finish(opened.serial))
        assert isinstance(await reader.next_event(), StreamFinished)

    assert len(received) == SIZE
    assert received.count(OLD) == SIZE
    assert (virtvold.pool_dir / "disk.img").read_bytes() == bytes([NEW]) * SIZE
