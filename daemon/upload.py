"""Receiving a volume from the client (STORAGE_VOL_UPLOAD, procedure 208).

Theory of operation: the connection hands over each data frame's payload as the
memoryview the socket was read into, and each skip as a length; they wait in a queue, in
stream order, and a worker thread applies them in batches of up to ``BATCH_BYTES``
(``VolumeWriter.apply``: one pwritev per run of data straight from that memory; skips
and zero blocks punched or extended). The connection stops reading the socket while more
than ``HELD_MAX`` bytes are held (queued or being written; each frame also counts
``FRAME_COST``, so a flood of skips is held too) and reads again when a written batch
leaves a batch's worth of room, while queued batches remain for the worker: TCP pushes
back on a client faster than the disk, memory stays bounded, and the worker does not
wait for the socket to refill an empty queue. The client's finish commits the writer (for a
whole-volume upload: the old volume's bytes past the stream's end copied in steps, each a
worker job, then fdatasync and the atomic rename) and is acknowledged, and only
then is the replaced content let go (slow for a big volume, and nothing the client waits
for); an abort, an error or a lost connection aborts it, leaving the old content. A
write error aborts it in a worker and is then reported as STREAM/ERROR, so the client
that hears of it finds the volume free; the core then forgets the stream, so later
frames are dropped.

The writer's file belongs to a ``FileWorker``: however the stream ends (the
task cancelled in the middle of a batch, or before it ever ran), the abort
that closes the file runs only once no batch is in a worker thread, so no
write can land in a file that reused the descriptor. ``close`` releases the
stream from outside the task (the connection calls it when it goes).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from typing import TYPE_CHECKING

from virtvol.daemon.fileworker import FileClosedError, FileWorker
from virtvol.daemon.streamio import FrameSink, StreamChannel, TransferStats, unexpected_failure
from virtvol.protocol.errors import ErrorReport
from virtvol.protocol.frames import Payload

if TYPE_CHECKING:
    import concurrent.futures

    from virtvol.daemon.storage.backend import ChunkWriter
    from virtvol.protocol.connection import StreamSkipRefused

log = logging.getLogger("virtvol.daemon.stream")

# Bytes held per upload (waiting or being written), and taken per worker-thread hop.
# Reading resumes when a batch's worth of room is free, which is while the worker
# writes the next batch from what is still queued. Eight uploads at once then hold about
# what the daemon's payload pool recycles (``frames.POOLED_MAX``); payloads beyond it
# land in fresh memory: an allocation, its page faults and the copies of a buffer
# grown as the bytes arrive.
HELD_MAX = 8 << 20
BATCH_BYTES = 2 << 20
# What each queued frame counts besides its payload: the queue's slot and the object
# holding the payload or the skip's length. A skip has no payload, yet a flood of skips
# (or of 1-byte frames) queued while the worker writes must stop the reading too.
FRAME_COST = 64


class _End(enum.Enum):
    FINISH = "finished"
    ABORT = "aborted"


_Item = Payload | int  # data to write, or the length of a skip


class Upload:
    """One upload stream, from the OK reply of the call to the finish acknowledgement."""

    def __init__(
        self,
        sink: FrameSink,
        serial: int,
        writer: ChunkWriter,
        *,
        executor: concurrent.futures.Executor,
        stats: TransferStats,
    ) -> None:
        self._channel = StreamChannel(sink, serial)
        self._writer = writer
        # abort() is a no-op after a commit, except letting go of the replaced content.
        self._file = FileWorker(executor, writer.abort)
        self.stats = stats
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_bytes = 0  # what the queue holds (payloads and FRAME_COST per item)
        self._writing_bytes = 0  # the same for the batch in the worker
        self._end: _End | None = None
        self._wakeup = asyncio.Event()
        self._failed = False
        self._abort_answer: ErrorReport | None = None  # an abort's error, not STREAM/OK
        self._refused: StreamSkipRefused | None = None  # answered instead of any end
        self._reading_paused = False
        self._outcome = "dropped"

    # -- events routed here by the connection --------------------------------

    def data_received(self, data: Payload) -> None:
        self.items_received([data])

    def hole_received(self, length: int) -> None:
        self.items_received([length])

    def items_received(self, items: list[_Item]) -> None:
        """Data (payloads) and skips (lengths) that arrived in a row, in order: queued,
        counted (each with ``FRAME_COST``), the reading paused above ``HELD_MAX``."""
        if self._failed:
            return
        self._queue += items
        data = 0
        for item in items:
            if isinstance(item, int):
                self.stats.holes += 1
                self.stats.hole_bytes += item
            else:
                data += len(item)
        self.stats.data_bytes += data
        self._queued_bytes += data + FRAME_COST * len(items)
        if self._queued_bytes + self._writing_bytes > HELD_MAX and not self._reading_paused:
            self._reading_paused = True
            self._channel.pause_reading(self)
        self._wakeup.set()

    def client_finished(self) -> None:
        self._end = _End.FINISH
        self._wakeup.set()

    def client_aborted(self, answer: ErrorReport | None = None) -> None:
        """The client aborted; ``answer``: the error to answer with (an abort by a frame
        libvirt has no meaning for), instead of STREAM/OK."""
        # Nothing queued matters any more: the writer is about to be aborted.
        self._abort_answer = answer
        self._end = _End.ABORT
        self._queue.clear()
        self._queued_bytes = 0
        self._resume_reading()
        self._wakeup.set()

    def skip_refused(self, refused: StreamSkipRefused) -> None:
        """The client sent a skip libvirtd refuses: the stream is over on the wire; the
        upload is dropped as an abort is, then the refusal answers it."""
        self._refused = refused
        self.client_aborted()

    # -- the task ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    await self._apply_batch()
                if self._end is not None and not self._queue:
                    break
            if self._end is _End.FINISH:
                # A job per step of the kept tail: a lost connection or a stopping daemon
                # ends a long copy between two, and the abort leaves the old volume.
                while not await self._file.run(self._writer.keep_tail):
                    pass
                await self._file.run(self._writer.commit)
            else:
                await self._file.run(self._writer.abort)
                if self._abort_answer is not None:
                    raise self._abort_answer
            if self._refused is not None:
                self._outcome = "refused a skip"
                self._channel.refuse(self._refused)
                return
            self._outcome = self._end.value
            self._channel.acknowledge_end()
            # After the acknowledgement: the client need not wait for this.
            await self._file.run(self._writer.release_replaced)
        except Exception as exc:
            report = (
                exc
                if isinstance(exc, ErrorReport)
                else unexpected_failure(f"upload to {self.stats.volume}", exc)
            )
            self._outcome = f"failed: {report.message}"
            await self._abort_quietly()
            if self._refused is not None:
                # The core ended the stream with the refusal: no stream error can go on
                # it, and the refusal is the answer the client waits for.
                self._channel.refuse(self._refused)
            else:
                self._fail(report)
        finally:
            self.close()
            await self._file.wait_closed()

    async def _abort_quietly(self) -> None:
        """Abort the writer in a worker before a failure is reported: the client that hears
        of it finds the volume free (the release, later, would do it in a thread too)."""
        try:
            await self._file.run(self._writer.abort)
        except FileClosedError:
            pass  # the release has it
        except Exception:
            log.exception("aborting the upload to %s failed", self.stats.volume)

    def close(self) -> None:
        """End the stream now, whether its task ran or not; safe to call more than once.

        The writer is aborted (a no-op after its commit, keeping the old content
        otherwise) once no batch is in a worker thread.
        """
        if self._file.closing:
            return
        self._queue.clear()
        self._queued_bytes = 0
        self._resume_reading()
        self._file.close()
        self.stats.log_end(self._outcome)

    async def _apply_batch(self) -> None:
        """Write the queue's first ``BATCH_BYTES`` (data, skips, each with ``FRAME_COST``)."""
        queue = self._queue
        batch: list[_Item] = []
        size = 0
        while queue and size < BATCH_BYTES:
            item = queue.popleft()
            batch.append(item)
            size += FRAME_COST if isinstance(item, int) else len(item) + FRAME_COST
        self._queued_bytes -= size
        self._writing_bytes = size
        writer = self._writer
        try:
            await self._file.run(lambda: writer.apply(batch))
        finally:
            self._writing_bytes = 0
            if self._queued_bytes <= HELD_MAX - BATCH_BYTES:
                self._resume_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._channel.resume_reading(self)

    def _fail(self, report: ErrorReport) -> None:
        self._failed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._channel.send_error(report)
