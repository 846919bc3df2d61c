"""Moving whole files: ``upload_file`` and ``download_file``, over ``virtvol.sparse``.

Theory of operation. Upload: a reader thread walks the source's data and
holes (``SparseReader``), reads data in ``FRAME_DATA_MAX`` pieces into a
small ``BufferPool`` and (with ``detect_zeroes``) splits each piece by the
shared zero rule (``zero_runs``). The event loop sends data runs as frames
pointing into those buffers and merges zero runs and holes into skips. A
buffer goes back to the pool once the transport no longer needs it, so disk
reads run ahead of the socket by at most the pool, and nothing on the loop
blocks on the disk.

Download: frames arrive as memoryviews; they and the holes are batched in
stream order and handed to a single writer thread (``SparseWriter.apply``:
one ``pwritev`` per run of data, zero blocks left as holes). The output is an
``AtomicFile``, a fresh temporary beside the destination, so every region
never written is a hole; it is extended to the final size and renamed over
the destination only when the stream finished cleanly. A failed download
leaves no file behind. The written file is left in the page cache. A FIFO
or device takes the bytes in order instead (``DownloadOutput``, holes as
zeros); with ``WRITES_IN_FLIGHT`` batches waiting on a slow reader the loop
stops taking frames, and the peer waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from virtvol.client import download_output
from virtvol.client.errors import LibvirtError
from virtvol.client.streams import Download, Hole, Upload
from virtvol.client.transfer_base import (
    FRAME_DATA_MAX,
    SOURCE_WAIT_STEP,
    Progress,
    TransferResult,
    check_stream_arguments,
    piece_runs,
)
from virtvol.sparse.reader import BufferPool, SparseReader, StreamReader, open_source, source_reader

if TYPE_CHECKING:
    from virtvol.client.interfaces import VolumeLike as StorageVolume
    from virtvol.sparse.zeros import Bytes

__all__ = ["Progress", "TransferResult", "download_file", "upload_file"]

_Result = TypeVar("_Result")

# Read-ahead: buffers of FRAME_DATA_MAX per upload. Several are needed because
# a transport that references (not copies) written memory holds some of them.
UPLOAD_BUFFERS = 8
# Download: bytes (or holes) batched into one writer call, and batches in flight.
WRITE_BATCH = 4 * 1024 * 1024
WRITE_BATCH_ITEMS = 1024
WRITES_IN_FLIGHT = 4


async def _settle(job: asyncio.Future[_Result]) -> None:
    """Wait until a worker's job has ended, even through cancellation (re-raised after).

    What the worker uses (a descriptor, a buffer) is released after this, so it
    must never return while the job may still touch it. The job's own outcome is
    not raised here: its owner handles it.
    """
    cancelled = False
    while not job.done():
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # The job's own cancellation, or this task's: that one may come after
            # the job ended too, before this task resumed.
            cancelled = cancelled or not job.cancelled()
        except Exception:
            break
    if cancelled:
        raise asyncio.CancelledError


def _nothing() -> None:
    pass


# -- upload ---------------------------------------------------------------------------


class _Chunk:
    """One pooled buffer filled by the reader, with its ``(zero, start, stop)`` runs."""

    __slots__ = ("buffer", "pending", "pool", "runs")

    def __init__(self, buffer: bytearray, runs: list[tuple[bool, int, int]], pool: BufferPool):
        self.buffer = buffer
        self.runs = runs
        self.pool = pool
        self.pending = sum(1 for zero, _, _ in runs if not zero)

    def release_one(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.pool.give(self.buffer)


_Item = _Chunk | int | None  # a chunk, a hole length, or the end


class _Reader:
    """The thread that reads the source ahead of the sender."""

    def __init__(
        self,
        reader: SparseReader | StreamReader,
        *,
        detect_zeroes: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # The thread owns ``reader`` once started: it closes it after its last
        # read, so no cancellation on the loop can close it under a running preadv.
        self.reader = reader
        self.end = reader.end
        self.detect_zeroes = detect_zeroes
        self.loop = loop
        self.items: asyncio.Queue[_Item | BaseException] = asyncio.Queue()
        self.pool = BufferPool(UPLOAD_BUFFERS, FRAME_DATA_MAX)
        # Bounds the items (holes included) handed over but not yet consumed.
        self.slots = threading.Semaphore(UPLOAD_BUFFERS * 4)
        self.stop = threading.Event()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.thread = threading.Thread(target=self._run, name="virtvol-read", daemon=True)

    def _hand_over(self, item: _Item | BaseException) -> bool:
        while not self.stop.is_set():
            if self.slots.acquire(timeout=0.2):
                self.loop.call_soon_threadsafe(self.items.put_nowait, item)
                return True
        return False

    @property
    def fd(self) -> int:
        """The source's descriptor (-1 once closed)."""
        return self.reader.fileno()

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            self._walk()
        except BaseException as exc:  # handed to the loop, which raises it
            with contextlib.suppress(RuntimeError):  # the loop is gone
                self._hand_over(exc)
        finally:
            self.reader.close()
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._mark_finished)

    def _mark_finished(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def _walk(self) -> None:
        reader = self.reader
        while (buffer := self.pool.take(self.stop)) is not None:
            if isinstance(reader, StreamReader):
                # A stalled pipe must not hold up an upload that failed or was cancelled.
                while not reader.wait(SOURCE_WAIT_STEP):
                    if self.stop.is_set():
                        self.pool.give(buffer)
                        return
            position = reader.position
            # Many small extents share one buffer: a fragmented image is read ahead
            # by the pool's bytes, not by its number of buffers.
            pieces = reader.read_pieces(buffer)
            if not pieces:
                self.pool.give(buffer)
                if reader.end < self.end:
                    raise OSError(f"the source file shrank while reading it (at {reader.end})")
                self._hand_over(None)
                return
            runs = piece_runs(
                memoryview(buffer), pieces, position, detect_zeroes=self.detect_zeroes
            )
            if all(zero for zero, _, _ in runs):
                self.pool.give(buffer)
                item: _Item = reader.position - position
            else:
                item = _Chunk(buffer, runs, self.pool)
            if not self._hand_over(item):
                return


async def upload_file(
    volume: StorageVolume,
    path: str | os.PathLike[str],
    *,
    offset: int = 0,
    length: int = 0,
    sparse: bool | None = None,
    detect_zeroes: bool = True,
    progress: Progress | None = None,
) -> TransferResult:
    """Upload a local file (or block device) into ``volume``.

    The source's holes and, with ``detect_zeroes``, its all-zero blocks are sent
    as skips on a sparse stream (as zeros on a dense one).

    Args:
        volume: the destination.
        path: the source file, read from its start.
        offset: where in the volume writing starts.
        length: the most bytes to upload (0: the whole file).
        sparse: None negotiates, True requires sparse, False sends every byte.
        detect_zeroes: turn all-zero blocks into holes.
        progress: called as ``progress(data_bytes, hole_bytes)`` while sending.

    Returns:
        The ``TransferResult``.

    Raises:
        OSError: the source cannot be read.
        LibvirtError: the peer refused or failed the upload.
        TransportError: the connection failed.
    """
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    fd = open_source(path)
    reader: _Reader | None = None
    try:
        source = source_reader(fd, length)
    except BaseException:
        os.close(fd)
        raise
    try:
        upload = Upload(volume, offset=offset, length=length, sparse=sparse)
        if not isinstance(source, StreamReader):
            upload.source_end = offset + source.end
        async with upload as stream:
            started_reader = _Reader(source, detect_zeroes=detect_zeroes, loop=loop)
            started_reader.start()
            reader = started_reader
            try:
                await _send_items(stream, reader, progress)
            finally:
                reader.stop.set()
                # The thread closes the file after its last read and says so as its last
                # act, waited for even through a cancellation (raised after); it then only
                # ends, and is joined here so that none is left running on return. Not in
                # the loop's default executor: the caller's own jobs there could hold the
                # join up for as long as they run.
                try:
                    await _settle(reader.finished)
                finally:
                    reader.thread.join()
        return TransferResult(
            data_bytes=stream.data_bytes,
            hole_bytes=stream.hole_bytes,
            zero_bytes=0,
            seconds=time.monotonic() - started,
            sparse=stream.sparse,
            fell_back=stream.fell_back,
        )
    finally:
        if reader is None:  # no thread ever had the file
            source.close()


async def _send_items(stream: Upload, reader: _Reader, progress: Progress | None) -> None:
    hole = 0
    items = reader.items
    while True:
        if items.empty():  # the source keeps us waiting: a failed stream must not
            item = await stream.unless_failed(asyncio.ensure_future(items.get()))
        else:
            item = items.get_nowait()
        reader.slots.release()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            break
        if isinstance(item, int):
            hole += item
        else:
            view = memoryview(item.buffer)
            for zero, start, stop in item.runs:
                if zero:
                    hole += stop - start
                    continue
                if hole:
                    await stream.skip(hole)
                    hole = 0
                stream.send_frame(view[start:stop], release=item.release_one)
                await stream.drain()
        if progress is not None:
            # A pending hole counts as a hole only if it will travel as one.
            if stream.sparse:
                progress(stream.data_bytes, stream.hole_bytes + hole)
            else:
                progress(stream.data_bytes + hole, 0)
    if hole:
        await stream.skip(hole)
    if progress is not None:
        progress(stream.data_bytes, stream.hole_bytes)


# -- download -------------------------------------------------------------------------


async def _open_output(
    path: str | os.PathLike[str], detect_zeroes: bool
) -> download_output.DownloadOutput:
    """Open the download's destination off the loop. A FIFO opens once a reader came,
    which may take long: the thread that waits for it gives up when this is cancelled.
    A file written in place is truncated as it opens, which may take long too (a file of
    many GB): it is opened in the same way."""
    loop = asyncio.get_running_loop()
    target = await loop.run_in_executor(None, download_output.download_target, path)
    if not target.in_place and not target.overwrite:
        return download_output.DownloadOutput(target, detect_zeroes=detect_zeroes)
    cancelled = threading.Event()

    def open_it() -> download_output.DownloadOutput:
        return download_output.DownloadOutput(
            target, detect_zeroes=detect_zeroes, wanted=lambda: not cancelled.is_set()
        )

    opening = loop.run_in_executor(None, open_it)
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        cancelled.set()
        with contextlib.suppress(asyncio.CancelledError):
            await _settle(opening)
        if not opening.cancelled() and opening.exception() is None:
            opening.result().abort()  # the reader came just as the download was cancelled
        raise


async def download_file(
    volume: StorageVolume,
    path: str | os.PathLike[str],
    *,
    offset: int = 0,
    length: int = 0,
    sparse: bool | None = None,
    detect_zeroes: bool = True,
    progress: Progress | None = None,
) -> TransferResult:
    """Download ``volume`` into a local sparse file, or into a FIFO or device.

    The file appears at ``path`` (replacing any file there) only after the
    stream finished cleanly; until then the data goes to a hidden temporary
    file in the same folder, which is removed if anything fails. A FIFO or a
    device at ``path`` (``/dev/stdout``, ``/dev/null``) is written as the bytes
    arrive, from its start, holes as zeros, as virsh does: a FIFO is waited for
    until a reader opens it, and a reader slower than the stream holds it back.
    A file this process may write but not replace (its folder may not be written,
    or is sticky and holds another user's file, or is append-only, or the file is
    mounted there, or no name leads to it) is written in place, as virsh
    writes it: truncated first, left cut short if anything fails.

    Args:
        volume: the source.
        path: the destination file.
        offset: where in the volume reading starts.
        length: the most bytes to download (0: to the end).
        sparse: None negotiates, True requires sparse, False receives every byte.
        detect_zeroes: leave all-zero blocks of received data as holes.
        progress: called as ``progress(data_bytes, hole_bytes)`` while receiving.

    Returns:
        The ``TransferResult``.

    Raises:
        OSError: the destination cannot be written (before anything is transferred
            when it is a directory, ``IsADirectoryError``, a file this process may not
            write or an append-only one, ``PermissionError``, or a socket; a symbolic
            link's target is replaced); ``BrokenPipeError`` when a FIFO's reader went
            away before the end.
        LibvirtError: the peer refused or failed the download.
        TransportError: the connection failed.
    """
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    check_stream_arguments(volume, offset, length, sparse)  # before the file is touched
    output = await _open_output(path, detect_zeroes)
    writer = output.writer
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="virtvol-write")
    in_flight: set[asyncio.Future[None]] = set()
    slots = asyncio.Semaphore(WRITES_IN_FLIGHT)
    write_errors: list[BaseException] = []
    try:

        async def submit(items: list[Bytes | int]) -> None:
            # One thread applies the batches in order: the writer's position is its own.
            await slots.acquire()
            future = loop.run_in_executor(executor, writer.apply, items)
            in_flight.add(future)

            def done(f: asyncio.Future[None]) -> None:
                in_flight.discard(f)
                slots.release()
                error = None if f.cancelled() else f.exception()
                if error is not None:
                    write_errors.append(error)

            future.add_done_callback(done)

        batch: list[Bytes | int] = []
        batch_size = 0
        # A FIFO's reader gets what arrived without waiting for a batch to fill up.
        in_place = output.target.in_place
        async with Download(volume, offset=offset, length=length, sparse=sparse) as stream:
            try:
                async for item in stream:
                    if isinstance(item, Hole):
                        batch.append(item.length)
                    else:
                        batch.append(item)
                        batch_size += len(item)
                    if (
                        batch_size >= WRITE_BATCH
                        or len(batch) >= WRITE_BATCH_ITEMS
                        or (in_place and not stream.holds_items)
                    ):
                        await submit(batch)
                        batch, batch_size = [], 0
                    if write_errors:
                        raise write_errors[0]
                    if progress is not None:
                        progress(stream.data_bytes, stream.hole_bytes)
            except LibvirtError:
                # What came before the peer's error still reaches a FIFO or device,
                # as the command line's engine writes it before it hears the error.
                if in_place and in_flight:
                    await asyncio.wait(in_flight)
                raise
            if batch:
                await submit(batch)
            if in_flight:
                await asyncio.gather(*in_flight)
            if write_errors:
                raise write_errors[0]
        await loop.run_in_executor(executor, writer.finish)
        output.commit()
        return TransferResult(
            data_bytes=stream.data_bytes,
            hole_bytes=stream.hole_bytes,
            zero_bytes=writer.zero_bytes,
            seconds=time.monotonic() - started,
            sparse=stream.sparse,
            fell_back=stream.fell_back,
        )
    finally:
        # Let running writes end before the descriptor is closed (its number
        # could otherwise be reused under them), even when cancelled meanwhile;
        # cancelled, the temporary still goes. The writer's one thread runs its jobs
        # in order, so once a last, empty job has run no write (nor the finish) is
        # left, whatever the loop's side cancelled; it is waited for on the loop,
        # not in the executor's shutdown, which would hold every other task up.
        output.stop()  # a write waiting for a FIFO's stalled reader gives up
        try:
            await _settle(asyncio.wrap_future(executor.submit(_nothing)))
        finally:
            executor.shutdown(wait=False)
            output.abort()  # a no-op after the commit
            # The thread ends once it sees the shutdown: waited for off the loop (through
            # a cancellation, raised after), so that none is left running on return.
            await _settle(loop.run_in_executor(None, executor.shutdown))
