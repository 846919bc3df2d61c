"""virtvold: an upload that fails while the client's frames keep coming ends with the
stream error, and the connection goes on.

A client learns of the failure only when it reads the error; until then its frames keep
arriving. The failed upload's end gives the connection back its small receive buffer,
under whatever part of a frame it holds then.
"""

from __future__ import annotations

import asyncio
import resource
from typing import TYPE_CHECKING

from tests.conftest import start_virtvold, stop_virtvold
from tests.daemon.conftest import raw_client
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived, StreamFailed
from virtvol.protocol.constants import (
    REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.frames import Header, encode_frame
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

FILE_SIZE_LIMIT = 1 << 20
# Between the small receive buffer (16 KiB) and the one of an upload (256 KiB).
FRAME_PAYLOAD = 200_000
FRAME_CUT = 150_000
ROUNDS = 3
MAX_FRAMES = 1000


def _limit_file_size() -> None:
    # Writes past it fail with EFBIG (Python ignores SIGXFSZ).
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, resource.RLIM_INFINITY))


async def test_a_write_error_amid_medium_frames_keeps_the_connection(tmp_path: Path) -> None:
    daemon = start_virtvold(tmp_path / "virtvold", preexec_fn=_limit_file_size)
    try:
        (daemon.pool_dir / "vol").write_bytes(b"old")
        async with raw_client(daemon.port) as client:
            vol = await client.volume("vol")
            for _ in range(ROUNDS):
                args = r.VolTransferArgs(vol, 0, 0, 0)
                opened = await client.call(Proc.STORAGE_VOL_UPLOAD, args)
                assert isinstance(opened, ReplyReceived)
                head = Header(
                    REMOTE_PROGRAM,
                    REMOTE_PROTOCOL_VERSION,
                    Proc.STORAGE_VOL_UPLOAD,
                    MessageType.STREAM,
                    opened.serial,
                    MessageStatus.CONTINUE,
                )
                frame = encode_frame(head, b"d" * FRAME_PAYLOAD)
                failed = asyncio.Event()

                async def keep_sending(
                    frame: bytes = frame, failed: asyncio.Event = failed
                ) -> None:
                    # Each frame in two writes, a moment apart: the daemon mostly holds
                    # the start of a frame, as a socket read may leave it any time.
                    for _ in range(MAX_FRAMES):
                        client.send(frame[:FRAME_CUT])
                        await client.writer.drain()
                        await asyncio.sleep(0.002)
                        client.send(frame[FRAME_CUT:])
                        await client.writer.drain()
                        if failed.is_set():
                            return

                sending = asyncio.create_task(keep_sending())
                event = await client.next_event(wait=30)
                failed.set()
                assert isinstance(event, StreamFailed), event
                # The file system's refusal names the volume, as libvirtd's does.
                volume = daemon.pool_dir / "vol"
                assert event.error.message == f"Unable to write {volume}: File too large"
                async with asyncio.timeout(30):
                    await sending
                reply = await client.call(Proc.CONNECT_GET_LIB_VERSION)
                assert isinstance(reply, ReplyReceived), reply
    finally:
        stop_virtvold(daemon)
    assert "Fatal error" not in daemon.log_text()
