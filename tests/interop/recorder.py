"""A recording relay: it sits between a client and a daemon, forwards every byte
both ways unchanged, and keeps a copy of each direction of each connection.

The copies are decoded with the protocol core's frame reader afterwards, so a
test can prove what crossed the wire (which call flags were sent, which calls
failed, how many skip frames went each way), for TCP and Unix sockets alike.
tshark cannot capture a Unix socket; for TCP the tests cross-check this
relay's view against a tshark capture (see ``tests.interop.pcap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from virtvol.protocol.constants import MessageStatus, MessageType
from virtvol.protocol.frames import Frame, FrameReader
from virtvol.protocol.remote import StreamHole, VolTransferArgs

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass(frozen=True)
class Endpoint:
    """Where to listen or connect: a TCP port on 127.0.0.1 or a Unix socket path."""

    port: int | None = None
    path: Path | None = None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.path is not None:
            return await asyncio.open_unix_connection(str(self.path))
        return await asyncio.open_connection("127.0.0.1", self.port)


@dataclass
class Conversation:
    """Both directions of one connection, as raw bytes."""

    client_bytes: bytearray = field(default_factory=bytearray)
    server_bytes: bytearray = field(default_factory=bytearray)

    def client_frames(self) -> list[Frame]:
        return _frames(self.client_bytes)

    def server_frames(self) -> list[Frame]:
        return _frames(self.server_bytes)


def _frames(data: bytearray) -> list[Frame]:
    reader = FrameReader()
    reader.feed(bytes(data))
    frames = list(reader)
    assert reader.at_frame_boundary(), "the recorded stream ends inside a frame"
    return frames


@dataclass(frozen=True)
class TransferCall:
    """A recorded UPLOAD/DOWNLOAD call: its flags and whether the daemon accepted it."""

    procedure: int
    flags: int
    accepted: bool
    error_message: str | None


@dataclass
class WireSummary:
    transfer_calls: list[TransferCall]
    skips_from_client: int
    skips_from_server: int
    hole_bytes: int


def summarize(conversations: list[Conversation]) -> WireSummary:
    """What the recorded connections carried, as the matrix assertions need it."""
    from virtvol.protocol.remote import RemoteError

    calls: list[TransferCall] = []
    skips_from_client = skips_from_server = hole_bytes = 0
    for conversation in conversations:
        replies = {
            frame.header.serial: frame
            for frame in conversation.server_frames()
            if frame.header.type == MessageType.REPLY
        }
        for frame in conversation.client_frames():
            header = frame.header
            if header.type == MessageType.CALL and header.procedure in (208, 209):
                args = VolTransferArgs.decode(frame.payload)
                reply = replies[header.serial]
                accepted = reply.header.status == MessageStatus.OK
                message = None if accepted else RemoteError.decode(reply.payload).message
                calls.append(TransferCall(header.procedure, args.flags, accepted, message))
            elif header.type == MessageType.STREAM_HOLE:
                skips_from_client += 1
                hole_bytes += StreamHole.decode(frame.payload).length
        for frame in conversation.server_frames():
            if frame.header.type == MessageType.STREAM_HOLE:
                skips_from_server += 1
                hole_bytes += StreamHole.decode(frame.payload).length
    return WireSummary(calls, skips_from_client, skips_from_server, hole_bytes)


class Recorder:
    """Relays ``listen`` to ``upstream`` in a thread of its own, recording everything."""

    def __init__(self, upstream: Endpoint, listen: Endpoint) -> None:
        self.upstream = upstream
        self.listen = listen
        self.conversations: list[Conversation] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    def __enter__(self) -> Recorder:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _start(self) -> None:
        if self.listen.path is not None:
            self._server = await asyncio.start_unix_server(self._relay, str(self.listen.path))
        else:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.listen.port)

    async def _stop(self) -> None:
        # Relays end when their client closes; give them a moment, then cut them.
        for _ in range(100):
            if not self._relays:
                break
            await asyncio.sleep(0.02)
        for task in list(self._relays):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        conversation = Conversation()
        self.conversations.append(conversation)
        try:
            up_reader, up_writer = await self.upstream.connect()
            await asyncio.gather(
                _pump(reader, up_writer, conversation.client_bytes),
                _pump(up_reader, writer, conversation.server_bytes),
            )
        finally:
            self._relays.discard(task)
            writer.close()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, copy: bytearray) -> None:
    try:
        while chunk := await source.read(1 << 20):
            copy += chunk
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            sink.close()


@contextlib.contextmanager
def recording(upstream: Endpoint, listen: Endpoint) -> Iterator[Recorder]:
    with Recorder(upstream, listen) as recorder:
        yield recorder
