"""Volume upload and download streams, with sparse negotiation.

Streams open with the sparse negotiation of ``transfer_base.negotiate_stream``
(``stream.sparse`` tells the outcome, ``stream.fell_back`` a refusal). In
``protocol="legacy"`` mode the flag is never sent, and a hole from the peer is
a protocol error.

On a dense upload stream ``skip`` sends zeros, so the volume's contents are
the same either way; only the bytes on the wire differ.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Self, TypeVar

from virtvol.client.errors import (
    LibvirtError,
    TransportError,
    error_from_remote,
)
from virtvol.client.errors import StreamError as StreamError  # re-exported for older imports
from virtvol.client.log import log
from virtvol.client.rpc import RpcProtocol
from virtvol.client.transfer_base import (
    ABORT_WAIT,
    ABORT_WAIT_INTERRUPTED,
    FRAME_DATA_MAX,
    at_stage,
    check_stream_arguments,
    negotiate_stream,
    past_length,
)
from virtvol.protocol import procedures
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    StreamDataReceived,
    StreamEndReceived,
    StreamFailed,
    StreamFinished,
    StreamHoleReceived,
)
from virtvol.protocol.exceptions import LocalProtocolError
from virtvol.protocol.record import Record

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from types import TracebackType

    from virtvol.client.interfaces import VolumeLike as StorageVolume
    from virtvol.client.rpc import StreamEvent
    from virtvol.protocol.procedures import Procedure

__all__ = ["FRAME_DATA_MAX", "Download", "Hole", "Upload"]


# A download pauses the socket when this much data waits for its consumer.
READ_HIGH_WATER = 8 * 1024 * 1024
READ_LOW_WATER = 2 * 1024 * 1024
READ_MAX_ITEMS = 256
# The socket is read past a download's pause while a call or another stream waits for the
# peer (the lagging consumer may be the one waiting); its items queue meanwhile. Past
# READ_HOLD_LIMIT another stream's reader waits for this download's consumer (the socket
# is held again); an awaited answer (a call's, a finish's) may not wait (its waiter may be
# this consumer) and the items queue on, behind which the answer comes from an honest
# peer, up to READ_HARD_LIMIT: past that the download is aborted, its reader told why.
READ_HOLD_LIMIT = 2 * READ_HIGH_WATER
READ_HARD_LIMIT = 4 * READ_HIGH_WATER
# Items too, for a peer's tiny frames and holes (a few hundred bytes each held).
READ_HOLD_ITEMS = 32 * READ_MAX_ITEMS
READ_HARD_ITEMS = 64 * READ_MAX_ITEMS

_ZEROS = bytes(FRAME_DATA_MAX)

_T = TypeVar("_T")


class Hole(Record):
    """A run of ``length`` bytes that read as zeros and were not sent."""

    length: int


class _StreamBase:
    procedure: Procedure[r.VolTransferArgs, None]
    direction: str

    def __init__(
        self, volume: StorageVolume, *, offset: int, length: int, sparse: bool | None
    ) -> None:
        check_stream_arguments(volume, offset, length, sparse)
        self.volume = volume
        self.offset = offset
        self.length = length
        # Where an upload's data ends in the volume, when known before it opens
        # (``transfer.upload_file`` sets it): see ``transfer_base._skips_leave_zeros``.
        self.source_end: int | None = None
        self.requested_sparse = sparse
        self.sparse = False
        self.fell_back = False
        self.serial = -1
        rpc = volume.connection._rpc
        if not isinstance(rpc, RpcProtocol):
            # The command line's blocking connections move whole files only.
            raise StreamError("streams need a connection opened with connect()")
        self._rpc = rpc
        self._error: BaseException | None = None
        self._done: asyncio.Future[None] | None = None
        self._opened = False
        self._closed = False
        self._abort_sent = False  # the abort went out (``abort``, ``Download._fall_behind``)

    # -- opening with negotiation ------------------------------------------------------

    async def _call(self, flags: int) -> None:
        self._done = asyncio.get_running_loop().create_future()
        args = r.VolTransferArgs(self.volume.wire, self.offset, self.length, flags)
        serial, waiter = self._rpc.start_call(self.procedure, args, sink=self)
        self.serial = serial
        try:
            # Shielded: an opener that gives up (cancelled) leaves the answer to come.
            await asyncio.shield(waiter)
        except BaseException:
            if waiter.done() and (waiter.cancelled() or waiter.exception() is not None):
                self._rpc.forget_sink(serial)  # refused: the stream never opened
                raise
            # Also when the answer came before the cancellation reached this task: the
            # stream is open then, and nobody else will abort it.
            await self._abandon_open(waiter, serial)
            raise

    async def _abandon_open(self, waiter: asyncio.Future[None], serial: int) -> None:
        """Close the stream whose opener gave up before it resumed: wait (as an
        interrupted abort waits, ``ABORT_WAIT_INTERRUPTED``) for the peer's answer and,
        if it opened the stream, for the confirmation of its abort. The peer then no
        longer holds the volume when the opener's caller goes on, and another stream on
        it is not refused as 'in use'. A peer too slow for that has the stream aborted
        whenever its answer comes."""
        self._on_abort()
        try:
            async with asyncio.timeout(ABORT_WAIT_INTERRUPTED):
                with contextlib.suppress(LibvirtError, TransportError):
                    await asyncio.shield(waiter)
                if waiter.cancelled() or waiter.exception() is not None:
                    return  # never opened
                try:
                    self._rpc.abort_stream(serial)
                except (LocalProtocolError, TransportError):
                    return
                assert self._done is not None  # made by ``_call``
                await self._peers_word(asyncio.shield(self._done))
        except TimeoutError:
            log.warning("no answer to the abort of a stream on %s", self.volume.connection.uri)
        finally:
            if not waiter.done():
                waiter.add_done_callback(lambda _: self._abort_unwanted(waiter, serial))
            self._rpc.forget_sink(serial)
            self._closed = True

    async def _peers_word(self, waiting: Awaitable[None], *, answer: bool = True) -> None:
        """Await ``waiting``, which the peer's frames end: the socket is read meanwhile,
        even when another stream's lagging consumer holds its reading back (past that
        stream's ``READ_HOLD_LIMIT``, only for an ``answer``: a finish or an abort)."""
        waiting_task = object()  # one per wait: several tasks may read one stream
        self._rpc.want_reading(waiting_task, answer=answer)
        try:
            await waiting
        finally:
            self._rpc.stop_wanting_reading(waiting_task)

    def _abort_unwanted(self, waiter: asyncio.Future[None], serial: int) -> None:
        """Abort the stream the peer opened after its opener gave up: nobody will use it,
        and the peer would hold the volume for as long as the connection lives."""
        if waiter.cancelled() or waiter.exception() is not None:
            return  # never opened
        with contextlib.suppress(LocalProtocolError, TransportError):
            self._rpc.abort_stream(serial)

    async def open(self) -> None:
        """Make the opening call (``async with`` does this)."""
        try:
            await self._open()
        except LibvirtError as exc:
            raise at_stage(exc, "open") from exc.__cause__

    async def _open(self) -> None:
        if self._opened:
            raise StreamError("the stream is already open", stage="open")
        self._opened = True
        self.sparse, self.fell_back = await negotiate_stream(
            self.volume,
            self.requested_sparse,
            self.direction,
            self._call,
            offset=self.offset,
            end=self.source_end,
        )

    # -- sink ---------------------------------------------------------------------------

    def stream_event(self, event: StreamEvent) -> None:
        if type(event) is StreamDataReceived:  # the common case
            self._stream_data(event)
        elif isinstance(event, StreamFinished):
            self._set_done()
        elif isinstance(event, StreamFailed):
            self._error = error_from_remote(event.error)
            self._set_done()
        else:
            self._stream_data(event)

    def _stream_data(
        self, event: StreamDataReceived | StreamHoleReceived | StreamEndReceived
    ) -> None:
        raise NotImplementedError

    def connection_failed(self, exc: TransportError) -> None:
        if self._error is None:
            self._error = exc
        self._set_done()

    def _set_done(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        self._wake()

    def _wake(self) -> None:
        pass

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._opened or self.serial < 0:
            raise StreamError("the stream is not open")
        if self._closed:
            raise StreamError("the stream is closed")

    async def _wait_done(self) -> None:
        """Wait for the peer's answer to our finish."""
        assert self._done is not None
        try:
            await self._peers_word(asyncio.shield(self._done))
        except asyncio.CancelledError:
            # The finish is out: the peer commits (or fails) the stream whatever this
            # task does. Waited for as an interrupted abort is, so that the peer no longer
            # holds the volume when the cancellation reaches the caller.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ABORT_WAIT_INTERRUPTED):
                    await self._peers_word(asyncio.shield(self._done))
            raise
        self._closed = True
        if self._error is not None:
            raise self._error

    async def abort(self) -> None:
        """Abort the stream and wait for the peer's confirmation (errors are swallowed):
        ``ABORT_WAIT`` seconds at most, ``ABORT_WAIT_INTERRUPTED`` in a task being
        cancelled (a time limit ran out)."""
        if self._closed or self._done is None or self._done.done():
            self._end_readers_wait()
            return
        try:
            if not self._abort_sent:
                self._rpc.abort_stream(self.serial)
                self._abort_sent = True
        except (LocalProtocolError, TransportError):
            self._end_readers_wait()
            return
        self._on_abort()
        task = asyncio.current_task()
        cancelled = task is not None and task.cancelling() > 0
        try:
            # Unconfirmed, what the peer still sends on the stream is dropped
            # (``_on_abort``) until the confirmation ends the stream for the connection.
            async with asyncio.timeout(ABORT_WAIT_INTERRUPTED if cancelled else ABORT_WAIT):
                await self._peers_word(asyncio.shield(self._done))
        except TimeoutError:
            log.warning("no answer to the abort of a stream on %s", self.volume.connection.uri)
        finally:
            self._end_readers_wait()

    def _end_readers_wait(self) -> None:
        """Close the stream for its users: a task still waiting for its data (another
        one aborted it, and no confirmation woke them) sees it closed."""
        self._closed = True
        self._wake()

    def _on_abort(self) -> None:
        pass


class Upload(_StreamBase):
    """A stream writing into a volume.

    Use ``async with vol.upload(...) as stream``: ``send`` data, ``skip`` holes;
    leaving the block finishes the stream (or aborts it on an exception).

    Attributes:
        sparse: whether holes travel as skip frames (else ``skip`` sends zeros).
        fell_back: True when the peer refused sparse and the stream went dense.
        data_bytes: data bytes sent so far. hole_bytes: bytes skipped so far.
    """

    procedure = procedures.STORAGE_VOL_UPLOAD
    direction = "upload"

    def __init__(
        self, volume: StorageVolume, *, offset: int, length: int, sparse: bool | None
    ) -> None:
        super().__init__(volume, offset=offset, length=length, sparse=sparse)
        self.data_bytes = 0
        self.hole_bytes = 0

    def _stream_data(
        self, event: StreamDataReceived | StreamHoleReceived | StreamEndReceived
    ) -> None:  # pragma: no cover - the protocol core refuses these on an upload
        self._error = StreamError(f"unexpected {type(event).__name__} on an upload")

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.finish()
        else:
            await self.abort()

    def send_frame(self, data: memoryview, *, release: Callable[[], None] | None = None) -> None:
        """Write one data frame of at most ``FRAME_DATA_MAX`` bytes, without waiting.

        ``release`` is called once the transport no longer needs ``data``'s
        memory. Call ``drain`` afterwards to respect flow control.
        """
        self._check()
        try:
            self._rpc.send_stream_data(self.serial, data, release=release)
        except LocalProtocolError as exc:
            raise StreamError(str(exc)) from None
        self.data_bytes += len(data)

    async def drain(self) -> None:
        """Wait while the connection's send buffer is full."""
        await self._rpc.drain()
        if self._error is not None:
            raise self._error

    async def unless_failed(self, waiting: asyncio.Future[_T]) -> _T:
        """``waiting``'s result, or the stream's error if the stream fails first (the peer
        failed it, the connection went), ``waiting`` then cancelled: for a sender whose
        source may keep it waiting (a pipe whose producer stalls).

        Raises:
            LibvirtError: the peer reported an error on the stream.
            TransportError: the connection failed.
        """
        assert self._done is not None
        try:
            await asyncio.wait((waiting, self._done), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()  # not done: nobody is waiting for it any more
        if waiting.done() and not waiting.cancelled():
            return waiting.result()
        self._check()
        raise StreamError("the stream ended before its data")

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send data (split into frames of ``FRAME_DATA_MAX``).

        The caller may reuse ``data``'s memory once this returns.

        Raises:
            LibvirtError: the peer reported an error on the stream.
            TransportError: the connection failed.
        """
        view = memoryview(data).cast("B")
        for start in range(0, len(view), FRAME_DATA_MAX):
            self.send_frame(view[start : start + FRAME_DATA_MAX])
            await self.drain()
        if not isinstance(data, bytes) and self._rpc.holds_views():
            await self._rpc.flushed()

    async def skip(self, length: int) -> None:
        """Skip ``length`` bytes: a hole on a sparse stream, zeros on a dense one."""
        if length <= 0:
            raise ValueError(f"a hole needs a positive length, not {length}")
        self._check()
        if self.sparse:
            try:
                self._rpc.send_stream_hole(self.serial, length)
            except LocalProtocolError as exc:
                raise StreamError(str(exc)) from None
            self.hole_bytes += length
            await self.drain()
            return
        zeros = memoryview(_ZEROS)
        left = length
        while left:
            count = min(left, FRAME_DATA_MAX)
            self.send_frame(zeros[:count])
            left -= count
            await self.drain()

    async def finish(self) -> None:
        """Tell the peer the upload is complete and wait for its confirmation.

        Raises:
            LibvirtError: the peer could not complete the upload.
        """
        self._check()
        try:
            self._rpc.finish_stream(self.serial)
        except LocalProtocolError as exc:
            raise StreamError(str(exc), stage="finish") from None
        try:
            await self._wait_done()
        except LibvirtError as exc:
            raise at_stage(exc, "finish") from exc.__cause__


Item = bytes | memoryview | Hole


class Download(_StreamBase):
    """A stream reading a volume; iterate it for data chunks and ``Hole`` items.

    ``async with vol.download(...) as stream: async for item in stream: ...``;
    ``async for`` alone opens the stream on first use. Leaving the block early
    (or on an exception) aborts the stream; so does leaving an ``async for``
    alone early (a ``break``, an exception, a cancelled task), once the event loop
    closes the iteration it left. Tasks iterating one download at once share its items:
    each goes to one of them, taken in the stream's order (a task's items are in order,
    but have gaps; joining them up is the caller's business); one reader gets them all.

    Memory is bounded: when ``READ_HIGH_WATER`` bytes wait for the consumer the
    connection stops reading its socket until the consumer catches up, unless a call
    or another stream on the connection waits for the peer meanwhile: the items then
    queue up to ``READ_HOLD_LIMIT``. Past it other streams' readers wait for this one's
    consumer; an awaited answer (a call's, a finish's) does not, and they queue on to
    ``READ_HARD_LIMIT``, past which the download is aborted, its reader getting a
    ``StreamError`` saying it fell behind. (A task reading one download to its end while
    another it opened goes unread thus waits forever once that one holds the socket.)
    A peer that sends more than the ``length`` asked for (when not 0) fails the stream
    with ``StreamError`` after the items within it, and it is aborted.

    Attributes:
        sparse: whether the peer sends holes (else every byte comes as data).
        fell_back: True when the peer refused sparse and the stream went dense.
        data_bytes, hole_bytes: what has been yielded so far.
    """

    procedure = procedures.STORAGE_VOL_DOWNLOAD
    direction = "download"

    def __init__(
        self, volume: StorageVolume, *, offset: int, length: int, sparse: bool | None
    ) -> None:
        super().__init__(volume, offset=offset, length=length, sparse=sparse)
        self._items: collections.deque[Item] = collections.deque()
        self._queued = 0
        self._eof = False
        self._aborting = False
        self._paused = False
        self._held = False  # past READ_HOLD_LIMIT: other streams' readers wait for ours
        self._waiter: asyncio.Future[None] | None = None
        self._finish_sent = False
        self._received = 0  # data and hole bytes the peer sent
        self._overrun: StreamError | None = None  # they went past ``length``
        self.data_bytes = 0
        self.hole_bytes = 0

    @property
    def holds_items(self) -> bool:
        """Whether items arrived that the iteration has not yielded yet."""
        return bool(self._items)

    def _past_length(self, count: int) -> bool:
        """Whether ``count`` more bytes go past the length asked for (which fails the
        stream, and drops them)."""
        self._received += count
        if not self.length or self._received <= self.length:
            return False
        self._overrun = past_length(self.volume.connection.uri, self.length)
        return True

    def _stream_data(
        self, event: StreamDataReceived | StreamHoleReceived | StreamEndReceived
    ) -> None:
        if self._aborting or self._overrun is not None:
            return
        if isinstance(event, StreamDataReceived):
            if self._past_length(len(event.data)):
                self._wake()
                return
            self._items.append(event.data)
            self._queued += len(event.data)
        elif isinstance(event, StreamHoleReceived):
            if self._past_length(event.length):
                self._wake()
                return
            self._items.append(Hole(event.length))
        else:
            self._eof = True
        if self._queued > READ_HARD_LIMIT or len(self._items) > READ_HARD_ITEMS:
            # Only an awaited answer reads this far: held back, it might never come.
            self._fall_behind()
            return
        if not self._held and (
            self._queued > READ_HOLD_LIMIT or len(self._items) > READ_HOLD_ITEMS
        ):
            # Other streams' consumers keep reading no further: they wait for this one's.
            self._held = True
            self._rpc.hold_reading(self)
        if not self._paused and (
            self._queued > READ_HIGH_WATER or len(self._items) > READ_MAX_ITEMS
        ):
            self._paused = True
            self._rpc.pause_reading(self)
        self._wake()

    def _fall_behind(self) -> None:
        """Give the download up, its consumer too far behind (``READ_HARD_LIMIT``): its
        items go, the peer is told to stop, and the reader gets the error next."""
        self._overrun = StreamError(
            f"the download from {self.volume.connection.uri} fell behind its consumer by "
            f"more than {READ_HARD_LIMIT >> 20} MiB while the connection was read for an "
            "answer (a call's, a stream's finish); it was aborted"
        )
        self._items.clear()
        self._queued = 0
        self._resume()
        with contextlib.suppress(LocalProtocolError, TransportError):
            self._rpc.abort_stream(self.serial)
            self._abort_sent = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _resume(self) -> None:
        if self._held:
            self._held = False
            self._rpc.release_reading(self)
        if self._paused:
            self._paused = False
            self._rpc.resume_reading(self)

    def _on_abort(self) -> None:
        self._aborting = True
        self._items.clear()
        self._queued = 0
        self._resume()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed:
            await self.abort()
        self._resume()

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Item]:
        # A generator, closed when the loop that iterates it is left (the event loop
        # closes a generator dropped early): a stream opened by the iteration itself
        # has no ``async with`` to abort it, and its unread data would stop the
        # connection's reading for every other call.
        entered = self._opened
        try:
            while True:
                try:
                    item = await self.__anext__()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not entered:
                await self.__aexit__(None, None, None)

    async def __anext__(self) -> Item:
        if not self._opened:
            await self.open()
        while True:
            if self._items:
                item = self._items.popleft()
                if isinstance(item, Hole):
                    self.hole_bytes += item.length
                else:
                    self._queued -= len(item)
                    self.data_bytes += len(item)
                if self._paused and self._queued < READ_LOW_WATER and len(self._items) < 16:
                    self._resume()
                return item
            if self._overrun is not None:
                await self.abort()
                raise self._overrun
            if self._error is not None:
                self._closed = True
                self._resume()
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            if self._eof:
                await self._finish()
                raise StopAsyncIteration
            self._resume()
            # One waiter for every task reading the stream at once, which the peer's next
            # frame wakes together; shielded, so that one cancelled leaves it to the others.
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._peers_word(asyncio.shield(waiter), answer=False)
            finally:
                if waiter.done() and self._waiter is waiter:
                    self._waiter = None

    async def _finish(self) -> None:
        if not self._finish_sent:  # another task reading the stream may have sent it
            try:
                self._rpc.finish_stream(self.serial)
            except LocalProtocolError as exc:
                raise StreamError(str(exc)) from None
            self._finish_sent = True
        await self._wait_done()
