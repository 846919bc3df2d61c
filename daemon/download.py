"""Sending a volume to the client (STORAGE_VOL_DOWNLOAD, procedure 209).

Theory of operation: the handler fills frame buffers taken from its
connection's ``SendBuffers``. A worker thread fills one buffer from the disk
(``VolumeReader.read_pieces``) while the previous one is on its way out, so
disk and socket overlap. A buffer's frames go out in one ``writelines``: a
head and a view into the buffer for each data chunk (no join on uvloop or
asyncio 3.12+, which keep references to unsent data instead of copying it), a
skip for each hole. Once all of its pieces are queued the buffer is "in flight"
until the transport holds no unsent bytes; not before, since on a plain stream
a hole goes out as zero frames whose draining must not free a buffer whose data
after the hole is still to be sent. When no buffer is free the handler waits for
the transport to drain: the disk is read no faster than the client takes the
data, and memory stays at a few buffers per connection whatever the volume size
and however many downloads the client opened. Holes are one skip frame on a
sparse stream; on a plain stream they go as data frames cut from one shared,
immutable zero buffer (no disk read, no allocation). Then the EOF frame, and
the handler waits for the client's finish (or abort) and acknowledges it.

The reader's file belongs to a ``FileWorker``: it is closed only once no read
is in a worker thread, however the stream ends (see ``fileworker``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from virtvol.daemon.fileworker import FileWorker
from virtvol.daemon.streamio import FrameSink, StreamChannel, TransferStats, unexpected_failure
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport

if TYPE_CHECKING:
    import concurrent.futures

    from virtvol.daemon.sendbuffers import SendBuffers
    from virtvol.daemon.storage import Chunk
    from virtvol.daemon.storage.backend import ChunkReader
    from virtvol.protocol.frames import Payload

# Data frame size. libvirt's peers accept frames up to 32 MiB (the interop tests
# download with virsh and python3-libvirt) but send 262120-byte ones. Larger frames
# cut the per-frame costs (a thread hop for the read, two writes, the client's
# per-message work) until the buffers fall out of the CPU caches; 4 MiB was the
# fastest (docs/performance.md). Three 4 MiB buffers per connection keep memory at
# 12 MiB per downloading client.
FRAME_SIZE = 4 << 20
# One buffer being filled from disk, up to two in flight on the socket.
BUFFERS_PER_CONNECTION = 3
_ZEROS = memoryview(bytes(FRAME_SIZE))


class Download:
    """One download stream, from the OK reply of the call to the finish acknowledgement."""

    def __init__(
        self,
        sink: FrameSink,
        serial: int,
        reader: ChunkReader,
        *,
        sparse: bool,
        executor: concurrent.futures.Executor,
        stats: TransferStats,
        buffers: SendBuffers,
    ) -> None:
        self._channel = StreamChannel(sink, serial)
        self._buffers = buffers
        # The buffer taken for the current read: being filled, or sent from. It goes to
        # the pool only once all of its pieces are queued (or the stream ends): in flight
        # if the transport got some of its bytes, free otherwise.
        self._held: memoryview | None = None
        self._held_queued = False  # the transport holds some of the held buffer's bytes
        self._reader = reader
        self._sparse = sparse
        self._loop = asyncio.get_running_loop()
        self._file = FileWorker(executor, self._release_file)
        self.stats = stats
        self._client_ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._client_wrote = False
        self._abort_answer: ErrorReport | None = None
        self._outcome = "dropped"

    # -- events routed here by the connection --------------------------------

    def client_finished(self) -> None:
        if not self._client_ended.done():
            self._client_ended.set_result("finished")

    def client_aborted(self, answer: ErrorReport | None = None) -> None:
        """The client aborted; ``answer``: the error to answer with (an abort by a frame
        libvirt has no meaning for), instead of STREAM/OK."""
        if not self._client_ended.done():
            self._abort_answer = answer
            self._client_ended.set_result("aborted")

    def client_wrote(self) -> None:
        """The client sent data or a skip into the download: dropped, as libvirtd drops
        them, and its finish is refused as libvirtd refuses it."""
        self._client_wrote = True

    # -- the task ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            complete = await self._send_volume()
            if complete:
                self._channel.send_eof()
            self._outcome = await self._client_ended
            if self._client_wrote and self._outcome == "finished":
                raise ErrorReport(
                    ErrorCode.RPC, ErrorDomain.STREAMS, "stream had unexpected termination"
                )
            if self._abort_answer is not None:
                raise self._abort_answer
            # libvirtd confirms a finish and an abort alike with an empty STREAM/OK.
            self._channel.acknowledge_end()
        except Exception as exc:
            report = (
                exc
                if isinstance(exc, ErrorReport)
                else unexpected_failure(f"download from {self.stats.volume}", exc)
            )
            self._outcome = f"failed: {report.message}"
            self._channel.send_error(report)
        finally:
            self.close()
            await self._file.wait_closed()

    def close(self) -> None:
        """End the stream now, whether its task ran or not; safe to call more than once.

        The file is closed, and the buffer being filled handed back, once no
        read is in a worker thread.
        """
        if self._file.closing:
            return
        self._file.close()
        self.stats.log_end(self._outcome)

    def _release_file(self) -> None:
        """The file's release (see ``FileWorker``): in a worker thread, never on the loop
        while the daemon runs."""
        self._reader.close()
        held, self._held = self._held, None
        if held is not None:
            # The pool belongs to the loop.
            with contextlib.suppress(RuntimeError):  # the loop is gone
                self._loop.call_soon_threadsafe(self._hand_back, held, self._held_queued)

    def _hand_back(self, buffer: memoryview, queued: bool) -> None:
        """Return a buffer to the pool: in flight until the transport drains if the
        transport got some of its bytes, free at once otherwise."""
        if queued:
            self._buffers.sent(buffer)
        else:
            self._buffers.give_back(buffer)

    async def _read(self, buffer: memoryview) -> list[Chunk]:
        reader = self._reader
        return await self._file.run(lambda: reader.read_pieces(buffer))

    async def _send_volume(self) -> bool:
        """Send every data and hole frame; False when the client aborted meanwhile."""
        pool = self._buffers
        channel, stats = self._channel, self.stats
        while True:
            if channel.write_buffer_empty():
                pool.reclaim()
            buffer = pool.try_take()
            while buffer is None:
                if not channel.write_buffer_empty():
                    await channel.drained()
                    pool.reclaim()
                    buffer = pool.try_take()
                else:
                    buffer = await pool.take()  # another download of ours is filling them
            self._held, self._held_queued = buffer, False
            # One thread hop fills the buffer with the data of many small extents.
            pieces = await self._read(buffer)
            if self._client_ended.done() or not pieces:
                # Nothing of this read goes out: the buffer is free now, not at the
                # client's finish (another download of the connection may wait for it).
                if self._held is buffer:
                    self._held = None
                    self._hand_back(buffer, queued=False)
                return not self._client_ended.done()
            # The buffer's frames go out in one write: data as views into the buffer,
            # holes as skips (or, on a plain stream, as zero frames sent on their own).
            items: list[Payload | int] = []
            used = 0
            for piece in pieces:
                if piece.data:
                    items.append(buffer[used : used + piece.length])
                    used += piece.length
                    stats.data_bytes += piece.length
                elif self._sparse:
                    items.append(piece.length)
                    stats.holes += 1
                    stats.hole_bytes += piece.length
                else:
                    # The buffer stays held while the zeros drain: the transport freeing
                    # up must not free it, as its data after the hole is still to go.
                    self._send_items(items)
                    items = []
                    if not await self._send_zeros(piece.length):
                        return False
            self._send_items(items)
            if self._held is buffer:
                self._held = None
                self._hand_back(buffer, self._held_queued)

    def _send_items(self, items: list[Payload | int]) -> None:
        """Write frames of the held buffer's pieces (views into it, or hole lengths)."""
        self._channel.send_items(items)
        if any(not isinstance(item, int) for item in items):
            self._held_queued = True

    async def _send_zeros(self, length: int) -> bool:
        """A hole on a plain stream, as zero data frames; False when the client aborted."""
        channel = self._channel
        while length > 0:
            count = min(FRAME_SIZE, length)
            channel.send_data(_ZEROS[:count])
            self.stats.data_bytes += count
            length -= count
            if not channel.write_buffer_empty():
                await channel.drained()
            if self._client_ended.done():
                return False
        return True
