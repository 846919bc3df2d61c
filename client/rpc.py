"""The asyncio side of a client connection: bytes in, bytes out, waiters, flow control.

Theory of operation: ``RpcProtocol`` is an ``asyncio.BufferedProtocol`` that
lets the transport write straight into the protocol core's frame buffers
(``Connection.get_buffer`` / ``buffer_updated``), so stream data reaches a
consumer as a memoryview over the bytes the kernel filled. Every event the core
produces is dispatched at once:

* a reply resolves the future of the call with the same serial (many calls may
  be in flight, answered in any order);
* stream frames go to the ``StreamSink`` registered under the opening call's
  serial (registered before the call is written, because a server may send
  stream frames before the reply);
* a keepalive PING is answered with a PONG at once; a separate task sends our
  own PINGs after ``interval`` seconds of silence and drops the connection when
  ``count`` of them went unanswered.

When anything goes wrong with the connection (the peer closes it, breaks the
protocol, stops answering keepalives) the failure is stored and raised in every
waiter, every stream and every later call: nothing hangs.

Flow control, both ways, with bounded memory:

* receiving: a sink that holds too much unconsumed data calls
  ``pause_reading(owner)``; the socket is not read until every owner resumed.
  The kernel's socket buffer then fills and TCP stops the peer. It is read all
  the same while a call or a stream waits for the peer (``want_reading``): the
  lagging stream's consumer may be the very one waiting for it (two streams read
  in turn, a call made in the middle of a download); that stream's data queues
  meanwhile, up to a bound (``streams.READ_HOLD_LIMIT``): past it the socket is read
  only while an answer is awaited (a call's, a stream's finish or abort), up to a hard
  bound past which the stream gives itself up (``streams.READ_HARD_LIMIT``).
* sending: ``drain()`` waits while the transport is above its high-water mark
  (``pause_writing``/``resume_writing``). Data frames are written as the 28-byte
  head and the payload view, never joined. The stdlib transports copy whatever
  they cannot send at once; uvloop keeps a reference to the view instead, so a
  reused buffer may only be recycled once the transport has sent it on:
  ``write_data(..., release=...)`` calls ``release`` then (the transport's
  unsent byte count tells, checked on every write and every millisecond).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Any, Protocol, cast, overload

from virtvol.client.errors import (
    CallTimeout,
    ConnectionClosed,
    LibvirtError,
    ProtocolViolation,
    TransportError,
    core_errors,
    error_from_remote,
)
from virtvol.client.log import CONNECTION_FAILURE, log
from virtvol.protocol.connection import (
    Connection,
    ErrorReplyReceived,
    Event,
    FrameIgnored,
    MessageReceived,
    PingReceived,
    PongReceived,
    ReplyReceived,
    Side,
    StreamDataReceived,
    StreamEndReceived,
    StreamFailed,
    StreamFinished,
    StreamHoleReceived,
)
from virtvol.protocol.keepalive import KeepaliveAction, KeepaliveTracker

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from virtvol.client.interfaces import FileTransfers
    from virtvol.protocol.frames import Payload
    from virtvol.protocol.procedures import ArgsT, Procedure, RetT
    from virtvol.protocol.xdr import XdrStruct

__all__ = ["RpcProtocol", "StreamSink"]


# The transport pauses the producer above this many buffered bytes. A few
# frames' worth keeps the socket busy while bounding what we hold.
WRITE_HIGH_WATER = 4 * 1024 * 1024
WRITE_LOW_WATER = 1024 * 1024
# How often a transport that holds written views is checked for having sent
# them on. Not less than 1 ms: uvloop's timers count whole milliseconds, and a
# shorter delay fires on every loop iteration, so the check spun a CPU (225,000
# polls during one 1 GiB upload), the CPU the daemon needs on a small machine.
_RELEASE_POLL = 0.001

StreamEvent = (
    StreamDataReceived | StreamHoleReceived | StreamEndReceived | StreamFinished | StreamFailed
)


class StreamSink(Protocol):
    """Receives the frames of one stream (implemented by the stream objects)."""

    def stream_event(self, event: StreamEvent) -> None: ...

    def connection_failed(self, exc: TransportError) -> None: ...


class RpcProtocol(asyncio.BufferedProtocol):
    """One client connection: the protocol core plus asyncio plumbing.

    Args:
        description: how to name the peer in error messages (the URI).
    """

    def __init__(self, description: str) -> None:
        self.core = Connection(Side.CLIENT)
        self.description = description
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._waiters: dict[int, asyncio.Future[XdrStruct | None]] = {}
        self._sinks: dict[int, StreamSink] = {}
        self._failure: TransportError | None = None
        self._closing = False
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._read_pausers: set[object] = set()
        # Those waiting for the peer, for whom the socket is read whoever paused it: a
        # stream's consumer waiting for its data, and those waiting for an answer (a
        # stream's finish or abort confirmed; calls waiting are ``_waiters``).
        self._read_wanters: set[object] = set()
        self._answer_wanters: set[object] = set()
        # Streams too far behind to queue more unless an answer is awaited (``hold_reading``).
        self._read_holders: set[object] = set()
        # Whether the transport's reading is paused (``_update_reading``).
        self._reading_paused = False
        self._last_heard = self.loop.time()
        self._keepalive_task: asyncio.Task[None] | None = None
        # Set when reading is first held back: the keepalive task, asleep until its next
        # step, wakes to ping on the shorter hold cadence.
        self._reading_held = asyncio.Event()
        # uvloop references written views instead of copying them.
        self._copies_on_write = True
        # (bytes written when the memory was handed over, its release), oldest first.
        self._releases: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        # Every byte handed to the transport so far.
        self._written = 0
        self._release_poll: asyncio.TimerHandle | None = None
        self._writelines = False
        # Where the last PONG written ends, in ``_written``'s count.
        self._pong_end = 0
        self.pings_received = 0
        self.pings_sent = 0

    # -- asyncio.BufferedProtocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast("asyncio.Transport", transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        uvloop_transport = type(transport).__module__.startswith("uvloop")
        self._copies_on_write = not uvloop_transport
        # uvloop's writelines hands both pieces to one writev; the stdlib's joins them.
        self._writelines = uvloop_transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.core.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._last_heard = self.loop.time()
        try:
            with core_errors(self.description):
                self.core.buffer_updated(nbytes)
                while (event := self.core.next_event()) is not None:
                    self._dispatch(event)
        except ProtocolViolation as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._failure is None:
            if self._closing:
                failure: TransportError = ConnectionClosed("the connection is closed")
            else:
                reason = f": {exc}" if exc else ""
                failure = ConnectionClosed(f"disconnected from {self.description}{reason}")
            self._failure = failure
        self._fail_everyone(self._failure)
        self._write_ready.set()
        self._run_releases()
        # uvloop's TLS transport keeps bound methods of this protocol after the loss:
        # dropping our reference breaks the cycle, so the buffers go at once.
        self.transport = None
        if self._keepalive_task is not None:
            # The loop keeps the task until it ends; our reference would make a cycle
            # through its CancelledError's traceback.
            self._keepalive_task.cancel()
            self._keepalive_task = None
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_ready.clear()

    def resume_writing(self) -> None:
        self._write_ready.set()
        self._check_releases()

    # -- dispatch -------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        if type(event) is StreamDataReceived:  # the common case, first and cheapest
            sink = self._sinks.get(event.serial)
            if sink is not None:
                sink.stream_event(event)
            return
        if isinstance(event, ReplyReceived):
            waiter = self._waiters.get(event.serial)
            if waiter is not None:
                self._forget_waiter(event.serial)
                if not waiter.done():
                    waiter.set_result(event.result)
        elif isinstance(event, ErrorReplyReceived):
            waiter = self._waiters.get(event.serial)
            if waiter is not None:
                self._forget_waiter(event.serial)
                if not waiter.done():
                    waiter.set_exception(error_from_remote(event.error))
        elif isinstance(
            event,
            StreamDataReceived
            | StreamHoleReceived
            | StreamEndReceived
            | StreamFinished
            | StreamFailed,
        ):
            sink = self._sinks.get(event.serial)
            if sink is not None:
                sink.stream_event(event)
            if isinstance(event, StreamFinished | StreamFailed):
                self._sinks.pop(event.serial, None)
        elif isinstance(event, PingReceived):
            self.pings_received += 1
            self._answer_ping()
        elif isinstance(event, PongReceived):
            pass
        elif isinstance(event, MessageReceived):
            log.debug("event %d from %s ignored", event.procedure, self.description)
        elif isinstance(event, FrameIgnored):
            log.debug("frame ignored (%s): %s", event.reason, event.header.describe())
        else:  # pragma: no cover - server-side events never reach a client
            log.debug("unexpected event %r", event)

    def _answer_ping(self) -> None:
        """PONG, unless the last one has not left the transport's buffer yet: one answers
        every PING before it, and a peer that sends PINGs without reading would otherwise
        fill this process's memory with PONGs, one for each."""
        transport = self.transport
        if transport is None:
            return
        if self._written - transport.get_write_buffer_size() < self._pong_end:
            return
        self._write(self.core.send_pong())
        self._pong_end = self._written

    # -- failure ------------------------------------------------------------------------

    @property
    def failure(self) -> TransportError | None:
        """Why the connection is unusable, or None while it works."""
        return self._failure

    def check(self) -> None:
        """Raise the connection's failure, if any."""
        if self._failure is not None:
            raise self._failure

    def _fail(self, failure: TransportError) -> None:
        if self._failure is None:
            self._failure = failure
            log.warning("%s", failure, extra=CONNECTION_FAILURE)
        self._fail_everyone(self._failure)
        if self.transport is not None:
            self.transport.abort()

    def _fail_everyone(self, failure: TransportError) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_exception(failure)
        sinks, self._sinks = self._sinks, {}
        for sink in sinks.values():
            sink.connection_failed(failure)

    # -- calls ----------------------------------------------------------------------------

    def start_call(
        self,
        procedure: Procedure[Any, RetT],
        args: XdrStruct | None = None,
        *,
        sink: StreamSink | None = None,
    ) -> tuple[int, asyncio.Future[RetT]]:
        """Write a CALL; returns its serial and the future of its result.

        A ``sink`` receives the frames of the stream the call opens; it is
        registered before the call leaves, since stream frames may overtake the reply.

        Raises:
            UnsendableValue: ``args`` cannot be encoded; nothing was sent.
            TransportError: the connection has failed.
        """
        self.check()
        with core_errors(self.description):
            serial, frame = self.core.call(procedure.number, args)
        # The core decodes the reply with the procedure's result struct: a RetT.
        waiter: asyncio.Future[RetT] = self.loop.create_future()
        self._waiters[serial] = cast("asyncio.Future[XdrStruct | None]", waiter)
        self._update_reading()
        if sink is not None:
            self._sinks[serial] = sink
        self._write(frame)
        return serial, waiter

    @overload
    async def call(
        self, procedure: Procedure[None, RetT], *, timeout: float | None = None
    ) -> RetT: ...
    @overload
    async def call(
        self, procedure: Procedure[ArgsT, RetT], args: ArgsT, *, timeout: float | None = None
    ) -> RetT: ...
    async def call(
        self,
        procedure: Procedure[Any, RetT],
        args: XdrStruct | None = None,
        *,
        timeout: float | None = None,
    ) -> RetT:
        """Make a call and wait for its result, typed by the procedure table.

        Args:
            timeout: seconds to wait for the answer (None: as long as the connection lives).

        Raises:
            LibvirtError: the peer answered with an error.
            TransportError: the connection failed before the answer came.
            CallTimeout: no answer within ``timeout``.
            UnsendableValue: ``args`` cannot be encoded; nothing was sent.
        """
        serial, waiter = self.start_call(procedure, args)
        try:
            if timeout is None:
                return await waiter
            try:
                async with asyncio.timeout(timeout):
                    return await waiter
            except TimeoutError:
                if waiter.done() and not waiter.cancelled():
                    # The answer came in the loop's turn the deadline fell due in, before
                    # this task resumed: it is the call's outcome (dropped, it would be
                    # lost; a call that changed something would look as if it had not).
                    return waiter.result()
                raise CallTimeout(
                    f"no answer to {procedure.name} from {self.description} within {timeout:g} s"
                ) from None
        finally:
            # Given up (timed out, cancelled): the core keeps the call pending, so a late
            # answer is still matched (and dropped, having no waiter) instead of breaking
            # the connection; nobody waits for it, so it keeps no socket reading on.
            self._forget_waiter(serial)

    async def call_all(
        self, calls: Sequence[tuple[Procedure[Any, Any], XdrStruct | None]], *, window: int
    ) -> list[Any]:
        """Make ``calls`` with up to ``window`` of them in flight: each one's result, or
        the ``LibvirtError`` the peer answered it with, in their order. A new call goes
        out each time the oldest one is answered (peers may answer in any order).

        Raises:
            ValueError: ``window`` is below 1.
            TransportError: the connection failed before every answer came.
            UnsendableValue: a call's arguments cannot be encoded.
        """
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        results: list[Any] = []
        in_flight: collections.deque[tuple[int, asyncio.Future[Any]]] = collections.deque()
        try:
            for procedure, args in calls:
                if len(in_flight) >= window:
                    results.append(await _result_or_error(in_flight[0][1]))
                    in_flight.popleft()
                in_flight.append(self.start_call(procedure, args))
            while in_flight:
                results.append(await _result_or_error(in_flight[0][1]))
                in_flight.popleft()
        finally:  # failed or cancelled: the answers still due are dropped as they come
            for serial, waiter in in_flight:
                self._forget_waiter(serial)
                waiter.cancel()
        return results

    def forget_sink(self, serial: int) -> None:
        """Stop routing a stream's frames (its call failed)."""
        self._sinks.pop(serial, None)

    # -- writing --------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self._written += len(data)

    def write_frame(self, frame: bytes) -> None:
        """Write a control frame (finish, abort, hole)."""
        self.check()
        self._write(frame)

    # -- the stream adapter: what Upload and Download call ---------------------------------

    def send_stream_data(
        self, serial: int, data: Payload, *, release: Callable[[], None] | None = None
    ) -> None:
        """Send one data frame of stream ``serial`` (see ``write_data`` for ``release``).

        Raises:
            LocalProtocolError: the stream cannot send data now.
            TransportError: the connection failed.
        """
        head, payload = self.core.send_data(serial, data)
        self.write_data(head, payload, release=release)

    def send_stream_hole(self, serial: int, length: int) -> None:
        """Send a hole of ``length`` bytes on stream ``serial``."""
        self.write_frame(self.core.send_hole(serial, length))

    def finish_stream(self, serial: int) -> None:
        """Tell the peer that stream ``serial`` is complete (the answer comes as an event)."""
        self.write_frame(self.core.send_finish(serial))

    def abort_stream(self, serial: int) -> None:
        """Abort stream ``serial`` (the peer's confirmation comes as an event)."""
        self.write_frame(self.core.send_abort(serial))

    def write_data(
        self, head: bytes, payload: Payload, *, release: Callable[[], None] | None = None
    ) -> None:
        """Write a data frame as its head and its payload, without joining them.

        Args:
            head: the 28 bytes from ``Connection.send_data``.
            payload: the data (a view into the caller's buffer is fine).
            release: called once the transport no longer needs ``payload``'s memory.
        """
        self.check()
        transport = self.transport
        assert transport is not None
        if self._writelines:
            transport.writelines((head, payload))
        else:
            transport.write(head)
            transport.write(payload)
        self._written += len(head) + (
            payload.nbytes if isinstance(payload, memoryview) else len(payload)
        )
        if release is not None:
            if self._copies_on_write:
                release()
            else:
                self._releases.append((self._written, release))
                self._check_releases()

    def holds_views(self) -> bool:
        """True when written memory may still be referenced by the transport (uvloop)."""
        return not self._copies_on_write

    def _check_releases(self) -> None:
        """Release the memory of every write the transport has sent on.

        The transport's buffer is first in, first out and counts its unsent
        bytes exactly, so everything up to ``written - buffered`` has left it
        (into the kernel): a buffer is handed back as soon as its own frame is
        sent, without waiting for the whole queue to empty.
        """
        releases = self._releases
        if not releases:
            return
        if self.transport is None:
            self._run_releases()
            return
        sent = self._written - self.transport.get_write_buffer_size()
        while releases and releases[0][0] <= sent:
            releases.popleft()[1]()
        if releases:
            self._schedule_release_poll()

    def _run_releases(self) -> None:
        releases, self._releases = self._releases, collections.deque()
        for _, release in releases:
            release()

    def _schedule_release_poll(self) -> None:
        if self._release_poll is None:
            self._release_poll = self.loop.call_later(_RELEASE_POLL, self._release_poll_fired)

    def _release_poll_fired(self) -> None:
        self._release_poll = None
        self._check_releases()

    async def drain(self) -> None:
        """Wait until the transport wants more data (or raise the connection's failure)."""
        self.check()
        if not self._write_ready.is_set():
            await self._write_ready.wait()
            self.check()

    async def flushed(self) -> None:
        """Wait until the transport holds no reference to written memory."""
        if self._copies_on_write:
            return
        done: asyncio.Future[None] = self.loop.create_future()

        def release() -> None:
            if not done.done():
                done.set_result(None)

        self._releases.append((self._written, release))
        self._check_releases()
        await done

    # -- reading flow control --------------------------------------------------------------

    def pause_reading(self, owner: object) -> None:
        """Stop reading the socket until ``owner`` (and any other pauser) resumes, while
        nothing waits for the peer (``_update_reading``)."""
        self._read_pausers.add(owner)
        self._update_reading()

    def resume_reading(self, owner: object) -> None:
        """Withdraw ``owner``'s pause."""
        if owner in self._read_pausers:
            self._read_pausers.discard(owner)
            self._update_reading()

    def want_reading(self, owner: object, *, answer: bool = False) -> None:
        """Read the socket while ``owner`` waits for the peer, whoever paused it; an
        ``answer`` (a stream's finish or abort confirmed) even past ``hold_reading``."""
        (self._answer_wanters if answer else self._read_wanters).add(owner)
        self._update_reading()

    def stop_wanting_reading(self, owner: object) -> None:
        """``owner`` no longer waits for the peer."""
        if owner in self._read_wanters or owner in self._answer_wanters:
            self._read_wanters.discard(owner)
            self._answer_wanters.discard(owner)
            self._update_reading()

    @property
    def answer_awaited(self) -> bool:
        """Whether a call's answer, or a stream's finish or abort, is waited for."""
        return bool(self._waiters or self._answer_wanters)

    def hold_reading(self, owner: object) -> None:
        """Stop reading the socket for another stream's consumer (``owner`` has queued
        all it may): only an awaited answer keeps it read, until ``release_reading``."""
        self._read_holders.add(owner)
        self._update_reading()

    def release_reading(self, owner: object) -> None:
        """Withdraw ``owner``'s ``hold_reading``."""
        if owner in self._read_holders:
            self._read_holders.discard(owner)
            self._update_reading()

    def _update_reading(self) -> None:
        """Hold the socket's reading back while a stream's consumer lags (a pauser), unless
        a call or a stream waits for what the peer sends: held then, the socket would
        never bring it, since the lagging consumer may be the one waiting. The lagging
        stream's data queues meanwhile, up to its own bound."""
        if self.answer_awaited:
            hold = False
        elif self._read_holders:
            hold = True
        else:
            hold = bool(self._read_pausers) and not self._read_wanters
        if hold is self._reading_paused:
            return
        self._reading_paused = hold
        if hold:
            self._reading_held.set()
        else:
            # Time spent paused is our silence, not the peer's.
            self._last_heard = self.loop.time()
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):
                if hold:
                    self.transport.pause_reading()
                else:
                    self.transport.resume_reading()

    def _forget_waiter(self, serial: int) -> None:
        """Stop waiting for the answer to call ``serial`` (answered, or given up)."""
        if self._waiters.pop(serial, None) is not None:
            self._update_reading()

    # -- keepalive --------------------------------------------------------------------------

    def start_keepalive(self, interval: float, count: int) -> None:
        """Send PINGs after ``interval`` s of silence; give up after ``count`` unanswered."""
        if self._keepalive_task is None and self._failure is None:
            self._keepalive_task = self.loop.create_task(self._keepalive(interval, count))

    async def _keepalive(self, interval: float, count: int) -> None:
        tracker = KeepaliveTracker(interval, count, self.loop.time())
        heard = self._last_heard
        while self._failure is None:
            now = self.loop.time()
            if self._reading_paused:
                # Held back here (a slow consumer): the peer's silence is ours, ours is not.
                action = tracker.hold(now)
                heard = self._last_heard = now
            else:
                if self._last_heard != heard:
                    heard = self._last_heard
                    tracker.heard(heard)
                action = tracker.poll(now)
            if action is KeepaliveAction.SEND_PING:
                log.debug("keepalive: ping %s", self.description)
                self.pings_sent += 1
                self._write(self.core.send_ping())
            elif action is KeepaliveAction.SEND_PONG:
                self._write(self.core.send_pong())
            elif action is KeepaliveAction.PEER_DEAD:
                self._fail(
                    ConnectionClosed(
                        f"connection to {self.description} closed: no keepalive response "
                        f"within {interval * (count + 1):g} s"
                    )
                )
                return
            # Until the next step, or until reading is first held back (while it is held,
            # nothing sets the event again).
            self._reading_held.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._reading_held.wait(), max(0.05, tracker.deadline() - self.loop.time())
                )

    # -- whole files --------------------------------------------------------------------------

    def file_transfers(self) -> FileTransfers:
        """``transfer`` (imported on first use: it brings threads and ctypes)."""
        from virtvol.client import transfer

        return transfer

    # -- closing ------------------------------------------------------------------------------

    def close(self, *, drop_unsent: bool = False) -> None:
        """Close the transport (pending waiters get ``ConnectionClosed``).

        Args:
            drop_unsent: close at once, without sending what the transport still holds:
                a peer that reads nothing more would otherwise hold the close forever.
        """
        self._closing = True
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if self.transport is not None:
            if drop_unsent:
                self.transport.abort()
            else:
                self.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the transport is gone (several tasks may: one cancelled leaves the
        others waiting, shielded from cancelling the future they share)."""
        await asyncio.shield(self.closed)


async def _result_or_error(waiter: asyncio.Future[Any]) -> Any:
    """A call's result, or the ``LibvirtError`` the peer answered it with."""
    try:
        return await waiter
    except LibvirtError as exc:
        return exc
