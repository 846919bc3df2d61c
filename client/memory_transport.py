"""The in-memory transport between a client ``RpcProtocol`` and the in-memory daemon.

Bytes cross it one event-loop turn each way, never inside the writer's own call,
as they would cross a socket; the server is held back while the client does not read.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from virtvol.client.rpc import RpcProtocol

__all__ = ["MemoryTransport", "Peer"]

_INBOUND_FRAMES = 8  # frames the server may get ahead of a client that reads


class Peer(Protocol):
    """The server end, as the transport sees it."""

    def receive(self, data: bytes) -> None: ...

    def stop(self) -> None: ...


class MemoryTransport(asyncio.Transport):
    """The client's end: what it writes goes to the server, what the server writes
    reaches the client's protocol on a later loop turn (never inside its own call)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: RpcProtocol) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self.peer: Peer | None = None
        self._inbound: collections.deque[bytes | memoryview] = collections.deque()
        self._delivery: asyncio.Handle | None = None
        self._reading = True
        self._closing = False
        self._lost = False
        # Set whenever the client may take more: the server's download back-pressure.
        self._room = asyncio.Event()

    # Client -> server.
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        chunk = bytes(data)
        peer = self.peer
        assert peer is not None
        self._loop.call_soon(peer.receive, chunk)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    # Server -> client.
    def deliver(self, data: bytes) -> None:
        if self._lost:
            return
        self._inbound.append(memoryview(data))
        self._schedule_delivery()

    def _schedule_delivery(self) -> None:
        if self._delivery is None and self._reading and self._inbound:
            self._delivery = self._loop.call_soon(self._deliver_pending)

    def _deliver_pending(self) -> None:
        self._delivery = None
        while self._inbound and self._reading and not self._closing:
            chunk = self._inbound.popleft()
            buffer = self._protocol.get_buffer(len(chunk))
            count = min(len(buffer), len(chunk))
            buffer[:count] = chunk[:count]
            if count < len(chunk):
                # The rest waits its turn: the client may pause reading in buffer_updated.
                self._inbound.appendleft(chunk[count:])
            self._protocol.buffer_updated(count)
        self._room.set()

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        self._schedule_delivery()
        self._room.set()

    async def room(self) -> None:
        """Wait while the client has stopped reading or has many frames waiting, as a
        socket's buffers would make a server wait."""
        while (not self._reading or len(self._inbound) > _INBOUND_FRAMES) and not self._closing:
            self._room.clear()
            await self._room.wait()

    def is_reading(self) -> bool:
        return self._reading

    # Closing.
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._shut(None)

    def abort(self) -> None:
        self._shut(None)

    def drop(self, reason: Exception) -> None:
        """The server side went away."""
        self._shut(reason)

    def _shut(self, reason: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._room.set()
        if self.peer is not None:
            self.peer.stop()
        self._loop.call_soon(self._connection_lost, reason)

    def _connection_lost(self, reason: Exception | None) -> None:
        self._lost = True
        self._inbound.clear()
        self._protocol.connection_lost(reason)
