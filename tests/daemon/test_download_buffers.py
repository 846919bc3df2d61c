"""A download's frame buffers: not refilled while the transport still holds their bytes,
and not kept by a download that has sent everything.

The first test drives the handler without a socket: a transport that keeps what it is
given by reference and copies the bytes out only when the test lets it drain (as uvloop
keeps unsent data), a scripted reader, and the connection's real ``SendBuffers``. The
last runs a real virtvold.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING

import pytest

from tests.daemon.conftest import raw_client
from virtvol.daemon.download import BUFFERS_PER_CONNECTION, Download
from virtvol.daemon.sendbuffers import SendBuffers
from virtvol.daemon.streamio import TransferStats
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    CallReceived,
    Connection,
    ReplyReceived,
    StreamDataReceived,
    StreamEndReceived,
)
from virtvol.protocol.procedures import Proc
from virtvol.protocol.stream import Side
from virtvol.sparse.reader import Chunk

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.conftest import Virtvold
    from virtvol.protocol.frames import Payload

K = 4096


class LazyTransport:
    """The connection as a download sees it: bytes leave only on ``drain``."""

    def __init__(self, rpc: Connection, buffers: SendBuffers) -> None:
        self.rpc = rpc
        self._buffers = buffers
        self._unsent: list[Payload] = []
        self.wire = bytearray()
        self._drained = asyncio.Event()

    def send(self, frame: bytes) -> None:
        self._unsent.append(frame)

    def send_parts(self, parts: Sequence[Payload]) -> None:
        self._unsent.extend(parts)

    def write_buffer_empty(self) -> bool:
        return not self._unsent

    async def drained(self) -> None:
        while self._unsent:
            await self._drained.wait()

    def drain(self) -> None:
        for part in self._unsent:
            self.wire += bytes(part)
        self._unsent.clear()
        self._buffers.reclaim()  # what the connection does when its transport drains
        self._drained.set()
        self._drained.clear()

    def pause_reading(self, owner: object) -> None:
        pass

    def resume_reading(self, owner: object) -> None:
        pass


class ScriptedReader:
    """First read: data A, a hole, data B; then data C; then the end."""

    def __init__(self) -> None:
        self.reads = 0

    @property
    def position(self) -> int:
        return 0

    @property
    def end(self) -> int:
        return 5 * K

    def next_chunk(self, buffer: memoryview | bytearray) -> Chunk:
        raise NotImplementedError  # the download reads whole buffers

    def read_pieces(self, buffer: memoryview | bytearray) -> list[Chunk]:
        self.reads += 1
        if self.reads == 1:
            buffer[0 : 2 * K] = b"A" * K + b"B" * K
            return [Chunk(True, K), Chunk(False, K), Chunk(True, K)]
        if self.reads == 2:
            buffer[0 : 2 * K] = b"C" * 2 * K
            return [Chunk(True, 2 * K)]
        return []

    def close(self) -> None:
        pass


def _open_download(server: Connection, client: Connection) -> int:
    args = r.VolTransferArgs(r.StorageVol("p", "v", "k"), 0, 0, 0)  # a plain stream
    serial, call = client.call(Proc.STORAGE_VOL_DOWNLOAD, args)
    server.receive_data(call)
    assert isinstance(server.next_event(), CallReceived)
    client.receive_data(server.reply(serial))
    client.events()
    return serial


@pytest.mark.parametrize("buffers", [1, 3])
async def test_a_plain_download_sends_each_buffers_own_bytes(buffers: int) -> None:
    """On a plain stream a hole goes out as zero frames, and waiting for them to drain
    used to free the buffer whose data after the hole was still to be sent: the next
    read landed in it before those bytes left."""
    server, client = Connection(Side.SERVER), Connection(Side.CLIENT)
    serial = _open_download(server, client)
    pool = SendBuffers(buffers, 16 * K)
    transport = LazyTransport(server, pool)
    executor = concurrent.futures.ThreadPoolExecutor(1)
    stats = TransferStats("download", "p/v", "test", False, 0, 0)
    download = Download(
        transport, serial, ScriptedReader(), sparse=False, executor=executor,
        stats=stats, buffers=pool,
    )  # fmt: skip
    task = asyncio.create_task(download.run())
    try:
        for _ in range(50):
            await asyncio.sleep(0.01)
            transport.drain()
        client.receive_data(bytes(transport.wire))
        transport.wire.clear()
        received = _data_of(client)
        server.receive_data(client.send_finish(serial))  # the client's finish, as it comes
        server.next_event()
        download.client_finished()
        for _ in range(5):
            await asyncio.sleep(0.01)
            transport.drain()
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        executor.shutdown(wait=True)
    assert received == b"A" * K + bytes(K) + b"B" * K + b"C" * 2 * K


def _data_of(client: Connection) -> bytes:
    """The data of the download frames the client connection has received."""
    data = b""
    for event in client.events():
        if isinstance(event, StreamDataReceived):
            data += bytes(event.data)
    return data


async def test_downloads_read_to_their_end_before_any_finish_all_end(virtvold: Virtvold) -> None:
    """A client may read several downloads of one connection to their EOF before it
    finishes any (libvirtd serves that). A download that had read the end still held the
    buffer of that last, empty read until the client's finish, so once every buffer of
    the connection was held so, the next download never got one: no data, no EOF."""
    count = BUFFERS_PER_CONNECTION + 2
    for index in range(count):
        (virtvold.pool_dir / f"vol{index}").write_bytes(bytes([65 + index]) * 100_000)
    async with raw_client(virtvold.port) as client:
        serials = []
        for index in range(count):
            vol = await client.volume(f"vol{index}")
            args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
            reply = await client.call(Proc.STORAGE_VOL_DOWNLOAD, args)
            assert isinstance(reply, ReplyReceived), reply
            serials.append(reply.serial)
        data = dict.fromkeys(serials, b"")
        ended: list[int] = []

        def take(event: object) -> None:
            if isinstance(event, StreamDataReceived):
                data[event.serial] += bytes(event.data)
            elif isinstance(event, StreamEndReceived):
                ended.append(event.serial)

        for event in client.events:  # what arrived while the calls were answered
            take(event)
        while len(ended) < count:
            take(await client.next_event(wait=10))  # a download left waiting fails here
        for serial in serials:
            client.send(client.rpc.send_finish(serial))
    assert sorted(ended) == serials
    assert [data[serial] for serial in serials] == [
        bytes([65 + index]) * 100_000 for index in range(count)
    ]
