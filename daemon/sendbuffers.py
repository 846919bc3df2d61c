"""The frame buffers a connection's downloads fill from disk and send from.

Theory of operation: a download reads a chunk of the volume into a buffer in a
worker thread and hands a view of that buffer to the transport, which keeps a
reference to unsent data instead of copying it. A buffer is therefore "in
flight" from the moment it is sent until the transport holds no unsent bytes
(``reclaim``). The buffers belong to the connection, not to each download:
however many downloads a client opens, and whether or not it reads them, the
connection holds at most ``count`` buffers, allocated when first needed. A
download that finds none free waits for one.
"""

from __future__ import annotations

import asyncio
import collections


class SendBuffers:
    def __init__(self, count: int, size: int) -> None:
        self._count = count
        self._size = size
        self._allocated = 0
        self._free: list[memoryview] = []
        self._in_flight: list[memoryview] = []
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def allocated_bytes(self) -> int:
        return self._allocated * self._size

    def try_take(self) -> memoryview | None:
        """A free buffer, or None when all are being filled or in flight."""
        if self._free:
            return self._free.pop()
        if self._allocated < self._count:
            self._allocated += 1
            return memoryview(bytearray(self._size))
        return None

    async def take(self) -> memoryview:
        """A free buffer, waiting for one if need be."""
        while (buffer := self.try_take()) is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return buffer

    def sent(self, buffer: memoryview) -> None:
        """``buffer`` went to the transport: in flight until ``reclaim``."""
        self._in_flight.append(buffer)

    def give_back(self, buffer: memoryview) -> None:
        """``buffer`` was taken but not sent (a hole, the end, a failure): free at once."""
        self._free.append(buffer)
        self._wake()

    def reclaim(self) -> None:
        """The transport holds no unsent bytes: every buffer in flight is free again."""
        if self._in_flight:
            self._free.extend(self._in_flight)
            self._in_flight.clear()
            self._wake()

    def _wake(self) -> None:
        woken = 0
        while self._waiters and woken < len(self._free):
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                woken += 1
