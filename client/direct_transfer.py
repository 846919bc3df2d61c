"""Moving whole files over a ``DirectRpc`` connection, in the calling thread.

The same promises as ``transfer`` (which serves event-loop connections): holes
and, with ``detect_zeroes``, all-zero blocks travel as skips on a sparse
stream and as zeros on a dense one; a download appears at its path only once
the stream finished cleanly, in an ``AtomicFile``, or goes into a FIFO or
device as it arrives (``download_output.DownloadOutput``). Only the driving differs:
one thread reads the file and writes the socket in turn, or reads the socket
and writes the file, with no thread hops and no queues. The kernel's socket
buffers keep the peer busy while the file is read or written, and the disk's
read-ahead runs on its own. So does writeback, except for a download over an
existing file (``DownloadOutput``): that thread then waits for the disk every
32 MiB, for data started 32 MiB before, as ext4's rename would wait for all of it.

Upload: ``read_pieces`` fills a buffer with as many extents as fit (a
fragmented image costs one call per buffer, not per extent), ``piece_runs``
splits it by the zero rule, data runs go out as frames pointing into the
buffer and zero runs merge into skips, all of one buffer's frames in as few
``sendmsg`` calls as the kernel takes them (written before the buffer is filled
again); after each buffer what the peer sent meanwhile is handled without
waiting, so a stream error stops the upload there. Download: the frames each
read of the socket brings are written to the file together (one
``SparseWriter.apply``) from the frame buffers they arrived in. A FIFO that takes
them slowly holds the next read of the socket back: the peer waits, nothing piles up.

Any failure, Ctrl-C included, aborts the stream (the peer's confirmation is
awaited for ``ABORT_WAIT`` seconds, ``ABORT_WAIT_INTERRUPTED`` after Ctrl-C or a
signal that ends the command), or drops the connection when it cut a
frame short or lost bytes a read took, and removes a download's temporary file.
"""

from __future__ import annotations

import os
import time

from virtvol.client.direct import DirectRpc
from virtvol.client.errors import (
    LibvirtError,
    StreamError,
    TransportError,
    error_from_remote,
)
from virtvol.client.transfer_base import (
    ABORT_WAIT,
    ABORT_WAIT_INTERRUPTED,
    FRAME_DATA_MAX,
    SOURCE_WAIT_STEP,
    TransferResult,
    at_stage,
    check_stream_arguments,
    negotiate_stream,
    past_length,
    piece_runs,
)
from virtvol.protocol import procedures
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    StreamDataReceived,
    StreamEndReceived,
    StreamFailed,
    StreamFinished,
    StreamHoleReceived,
    StreamItemsReceived,
)
from virtvol.protocol.exceptions import LocalProtocolError
from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.sparse.zeros import zero_view

if TYPE_CHECKING:
    from collections.abc import Callable

    from virtvol.client.direct import DirectStreamEvent
    from virtvol.client.interfaces import VolumeLike
    from virtvol.client.transfer_base import Progress
    from virtvol.protocol.frames import Payload
    from virtvol.protocol.procedures import Procedure
    from virtvol.sparse.reader import SparseReader, StreamReader
    from virtvol.sparse.sequential import SequentialWriter
    from virtvol.sparse.writer import SparseWriter

    Source = SparseReader | StreamReader
    Writer = SparseWriter | SequentialWriter

__all__ = ["download_file", "upload_file"]

# Bytes read from the source per ``read_pieces`` call (sent as frames of FRAME_DATA_MAX).
READ_BUFFER = 4 * FRAME_DATA_MAX


def _engine(volume: VolumeLike) -> DirectRpc:
    rpc = volume.connection._rpc
    if not isinstance(rpc, DirectRpc):  # pragma: no cover - each engine picks its own module
        raise TypeError("direct_transfer moves files over DirectRpc connections only")
    return rpc


class _Stream:
    """One stream on a ``DirectRpc``: its opening with negotiation, its frames, its end."""

    def __init__(
        self,
        rpc: DirectRpc,
        volume: VolumeLike,
        procedure: Procedure[r.VolTransferArgs, None],
        *,
        offset: int,
        length: int,
        on_data: Callable[[DirectStreamEvent], None] | None = None,
    ) -> None:
        check_stream_arguments(volume, offset, length, None)
        self.rpc = rpc
        self.volume = volume
        self.procedure = procedure
        self.offset = offset
        self.length = length
        self.serial = -1
        self.sparse = False
        self.fell_back = False
        self.done = False
        self.error: LibvirtError | None = None
        self._on_data = on_data

    async def open(self, requested: bool | None, direction: str, *, end: int | None = None) -> None:
        try:
            self.sparse, self.fell_back = await negotiate_stream(
                self.volume, requested, direction, self._open_call, offset=self.offset, end=end
            )
        except LibvirtError as exc:
            raise at_stage(exc, "open") from exc.__cause__

    async def _open_call(self, flags: int) -> None:
        args = r.VolTransferArgs(self.volume.wire, self.offset, self.length, flags)
        serial = self.rpc.start_call(self.procedure, args, sink=self._event)
        self.serial = serial
        try:
            self.rpc.wait_reply(serial, self.procedure.name)
        except BaseException:
            self.rpc.forget_sink(serial)
            raise

    def _event(self, event: DirectStreamEvent) -> None:
        if isinstance(event, StreamFinished):
            self.done = True
        elif isinstance(event, StreamFailed):
            self.done = True
            self.error = error_from_remote(event.error)
        elif self._on_data is not None:
            self._on_data(event)

    def _ended(self) -> bool:
        # Read through a call: the sink sets ``done`` while ``receive`` runs, which a
        # type checker narrowing ``self.done`` after an earlier test cannot know.
        return self.done

    def check(self) -> None:
        """Raise the error the peer reported on the stream, if any."""
        if self.error is not None:
            raise self.error

    def send_data(self, data: memoryview) -> None:
        """Queue a data frame: ``data``'s memory must stay as it is until ``flush``."""
        self._sending(lambda: self.rpc.send_stream_data(self.serial, data, more=True))

    def send_hole(self, length: int) -> None:
        self._sending(lambda: self.rpc.send_stream_hole(self.serial, length, more=True))

    def send_items(self, items: list[memoryview | int]) -> None:
        """Queue data frames (buffers, kept as they are until ``flush``) and holes
        (lengths) in order, as one batch."""
        if items:
            self._sending(lambda: self.rpc.send_stream_items(self.serial, items, more=True))

    def flush(self) -> None:
        """Write the queued frames: their memory is free again when this returns."""
        self._sending(lambda: self.rpc.flush_stream(self.serial))

    def _sending(self, move: Callable[[], object]) -> None:
        """Make ``move`` (a plain call, not a context manager: contextlib's import is
        ~0.4 ms of every transfer command's start). A refused move becomes a
        ``StreamError``, unless the peer failed the stream (its error came before we sent
        anything, with the opening reply): the peer's error is then raised. So is it for
        a write cut short by a peer that failed the stream and stopped reading: that is
        the news, the dropped connection only its consequence."""
        try:
            move()
        except LocalProtocolError as exc:
            self.check()
            raise StreamError(str(exc)) from None
        except TransportError:
            self.check()
            raise

    def poll(self) -> None:
        """Handle what the peer sent meanwhile, without waiting: while the socket takes
        every frame nothing else reads it, and a peer that failed the stream drops the
        rest (and answers keepalive PINGs that would otherwise wait)."""
        self.rpc.receive(time.monotonic())

    def wait_done(self) -> None:
        """Wait for the peer's end of the stream; raise the error it reported."""
        while not self.done:
            self.rpc.receive()
        self.check()

    def finish(self) -> None:
        """Send our finish and wait for the peer's confirmation."""
        try:
            self.rpc.finish_stream(self.serial)
        except LocalProtocolError as exc:
            self.check()  # the peer failed the stream before it had anything to finish
            raise StreamError(str(exc), stage="finish") from None
        try:
            self.wait_done()
        except LibvirtError as exc:
            raise at_stage(exc, "finish") from exc.__cause__

    def abort(self, failure: BaseException) -> None:
        """Abort the stream ``failure`` ended and wait a while for the peer's confirmation
        (errors swallowed): not long for an interruption (Ctrl-C, a signal)."""
        if self.done or self.serial < 0 or self.rpc.failure is not None:
            return
        interrupted = not isinstance(failure, Exception)
        try:
            self.rpc.abort_stream(self.serial)
            limit = time.monotonic() + (ABORT_WAIT_INTERRUPTED if interrupted else ABORT_WAIT)
            while not self._ended() and time.monotonic() < limit:
                self.rpc.receive(limit)
        except (LocalProtocolError, TransportError, TimeoutError):
            pass


async def upload_file(
    volume: VolumeLike,
    path: str | os.PathLike[str],
    *,
    offset: int = 0,
    length: int = 0,
    sparse: bool | None = None,
    detect_zeroes: bool = True,
    progress: Progress | None = None,
) -> TransferResult:
    """Upload a local file into ``volume`` (the arguments of ``transfer.upload_file``)."""
    from virtvol.sparse.reader import StreamReader, open_source, source_reader  # uploads only

    rpc = _engine(volume)
    started = time.monotonic()
    fd = open_source(path)
    try:
        source = source_reader(fd, length)
    except BaseException:
        os.close(fd)
        raise
    with source:
        stream = _Stream(rpc, volume, procedures.STORAGE_VOL_UPLOAD, offset=offset, length=length)
        unseekable = source if isinstance(source, StreamReader) else None
        end = None if unseekable is not None else offset + source.end
        await stream.open(sparse, "upload", end=end)
        try:
            data, holes = _send_file(stream, source, unseekable, detect_zeroes, progress)
            stream.finish()
        except BaseException as failure:
            stream.abort(failure)
            raise
    return TransferResult(
        data_bytes=data,
        hole_bytes=holes,
        zero_bytes=0,
        seconds=time.monotonic() - started,
        sparse=stream.sparse,
        fell_back=stream.fell_back,
    )


def _send_file(
    stream: _Stream,
    source: Source,
    unseekable: StreamReader | None,
    detect_zeroes: bool,
    progress: Progress | None,
) -> tuple[int, int]:
    """Send the source's data and holes (``unseekable``: the source again when it cannot
    seek, a pipe or a character device, whose reads may wait); returns (data bytes, hole
    bytes) as they travelled."""
    buffer = bytearray(READ_BUFFER)
    view = memoryview(buffer)
    end = source.end
    data = holes = pending_hole = 0

    def send_hole(length: int) -> None:
        nonlocal data, holes
        if stream.sparse:
            stream.send_hole(length)
            holes += length
            return
        # A dense stream carries holes as zeros; a long hole is sent a read buffer's
        # worth at a time, each heard from the peer as after a buffer of data (an error
        # stops it there; a PING is answered).
        unchecked = 0
        while length:
            count = min(length, FRAME_DATA_MAX)
            stream.send_data(zero_view(count))
            data += count
            length -= count
            unchecked += count
            if unchecked >= READ_BUFFER:
                unchecked = 0
                stream.flush()
                stream.poll()
                stream.check()

    while True:
        if unseekable is not None:
            # A pipe's producer may stall for longer than the peer's keepalive allows:
            # its PINGs are answered (and its errors heard) while the pipe is empty.
            while not unseekable.wait(SOURCE_WAIT_STEP):
                stream.poll()
                stream.check()
        position = source.position
        pieces = source.read_pieces(buffer)
        if not pieces:
            break
        # The buffer's frames, in order: data (views into the buffer) and holes (lengths).
        items: list[memoryview | int] = []
        for zero, start, stop in piece_runs(view, pieces, position, detect_zeroes=detect_zeroes):
            if zero:
                pending_hole += stop - start
                continue
            if pending_hole:
                if stream.sparse:
                    items.append(pending_hole)
                    holes += pending_hole
                else:
                    stream.send_items(items)
                    items = []
                    send_hole(pending_hole)
                pending_hole = 0
            data += stop - start
            if stop - start <= FRAME_DATA_MAX:  # one frame (a small extent's every run)
                items.append(view[start:stop])
                continue
            for frame_start in range(start, stop, FRAME_DATA_MAX):
                items.append(view[frame_start : min(stop, frame_start + FRAME_DATA_MAX)])
        stream.send_items(items)
        stream.flush()  # before the next read overwrites the buffer the frames point into
        stream.poll()
        stream.check()
        if progress is not None:
            # A pending hole counts as a hole only if it will travel as one.
            if stream.sparse:
                progress(data, holes + pending_hole)
            else:
                progress(data + pending_hole, 0)
    if source.end < end:
        raise OSError(f"the source file shrank while reading it (at {source.end})")
    if pending_hole:
        send_hole(pending_hole)
    stream.flush()
    if progress is not None:
        progress(data, holes)
    return data, holes


async def download_file(
    volume: VolumeLike,
    path: str | os.PathLike[str],
    *,
    offset: int = 0,
    length: int = 0,
    sparse: bool | None = None,
    detect_zeroes: bool = True,
    progress: Progress | None = None,
) -> TransferResult:
    """Download ``volume`` into a local sparse file, which appears at ``path`` only once
    complete, or into the FIFO or device there as the bytes arrive (the arguments of
    ``transfer.download_file``)."""
    from virtvol.client import download_output  # downloads only: a start-up cost otherwise

    rpc = _engine(volume)
    started = time.monotonic()
    check_stream_arguments(volume, offset, length, sparse)  # before the file is touched
    # A FIFO's reader is waited for in steps: Ctrl-C still ends the wait. The connection
    # keeps the peer's keepalive satisfied meanwhile (reading), and while the reader
    # stalls (nothing is read then: unasked PONGs).
    with download_output.DownloadOutput(
        download_output.download_target(path),
        detect_zeroes=detect_zeroes,
        wanted=rpc.attend,
        on_wait=rpc.hold_reading,
    ) as output:
        receiver = _Receiver(output.writer, progress, length, volume.connection.uri)
        stream = _Stream(
            rpc,
            volume,
            procedures.STORAGE_VOL_DOWNLOAD,
            offset=offset,
            length=length,
            on_data=receiver.event,
        )
        await stream.open(sparse, "download")
        try:
            # A write failure is raised and progress reported here, never from inside
            # the protocol core's handling of the frames (a failure there would leave
            # the frames after it unhandled, and come again with each of them).
            while not receiver.ended and not stream.done and not receiver.stopped:
                rpc.receive()
                receiver.write()
                receiver.report()
            receiver.write()  # frames that came with the opening reply, if that was all
            receiver.report()
            stream.check()
            if not stream.done:
                stream.finish()
        except BaseException as failure:
            receiver.stopped = True
            stream.abort(failure)
            raise
        receiver.writer.finish()
        output.commit()
    return TransferResult(
        data_bytes=receiver.data,
        hole_bytes=receiver.holes,
        zero_bytes=receiver.writer.zero_bytes,
        seconds=time.monotonic() - started,
        sparse=stream.sparse,
        fell_back=stream.fell_back,
    )


class _Receiver:
    """Collects a download's frames as they arrive (until ``stopped``) and writes them,
    a receive's worth at a time, when ``write`` is called; fails the download at
    ``write`` once the frames go past ``length`` (when not 0), writing none of those."""

    def __init__(self, writer: Writer, progress: Progress | None, length: int, peer: str):
        self.writer = writer
        self.progress = progress
        self.length = length
        self.peer = peer
        self.data = 0
        self.holes = 0
        self._reported = (0, 0)
        self.ended = False
        self.stopped = False  # the download failed: the frames still coming are dropped
        self.failure: StreamError | None = None  # the frames went past the length
        self._pending: list[Payload | int] = []  # data and holes not yet written

    def report(self) -> None:
        """Call ``progress`` with the counts, if they changed since the last call."""
        counts = (self.data, self.holes)
        if self.progress is not None and counts != self._reported:
            self._reported = counts
            self.progress(*counts)

    def write(self) -> None:
        """Write what arrived since the last call: one ``SparseWriter.apply`` for all of
        it (a fragmented volume's many small frames), never from inside the protocol
        core's handling of the frames.

        Raises:
            OSError: the write failed.
            StreamError: the peer sent more than the length asked for.
        """
        if self.failure is not None:
            raise self.failure
        pending, self._pending = self._pending, []
        if pending:
            self.writer.apply(pending)

    def _past_length(self, count: int) -> bool:
        """Whether ``count`` more bytes go past the length asked for (which stops the
        download)."""
        if not self.length or self.data + self.holes + count <= self.length:
            return False
        self.failure = past_length(self.peer, self.length)
        self.stopped = True
        return True

    def event(self, event: DirectStreamEvent) -> None:
        if self.stopped:
            return
        if type(event) is StreamItemsReceived:
            data = holes = 0
            for item in event.items:
                if isinstance(item, int):
                    holes += item
                else:
                    data += len(item)
            if not self._past_length(data + holes):
                self._pending += event.items
                self.data += data
                self.holes += holes
        elif type(event) is StreamDataReceived:
            if not self._past_length(len(event.data)):
                self._pending.append(event.data)
                self.data += len(event.data)
        elif isinstance(event, StreamHoleReceived):
            if not self._past_length(event.length):
                self._pending.append(event.length)
                self.holes += event.length
        elif isinstance(event, StreamEndReceived):
            self.ended = True
