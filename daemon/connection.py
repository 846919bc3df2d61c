"""One client connection: bytes in through BufferedProtocol, calls served as concurrent tasks.

Theory of operation: the transport reads straight into the protocol core's
frame buffers (``get_buffer``/``buffer_updated``), so stream payloads reach
the disk writer without a copy. Each decoded CALL becomes its own task: a slow
call, a thread-bound storage operation or a long stream never holds up another
call, and replies go out in whatever order the calls finish (libvirt matches
them by serial). Stream frames are routed to their stream's handler by serial.
A frame that breaks the protocol closes this connection only. The transport's
write limits are set to zero, so "writing paused" means exactly "the transport
holds unsent bytes"; the download handler uses that to know when its buffers
are no longer referenced. Keepalive: every PING gets a PONG; a client that
asked for feature 10 is pinged after ``interval`` seconds of silence and
dropped after ``interval * (count + 1)``, as libvirtd does. When the
connection goes, every stream opened on it is closed (not only cancelled: a
task cancelled before its first step never runs its own cleanup). Calls it
cannot serve get libvirtd's error and one log line per connection.

Limits (see ``limits``): a connection refused by admission is closed as soon
as it is accepted. One that has not sent CONNECT_OPEN within
``handshake_timeout`` is closed. With ``max_client_requests`` calls in flight,
or more than ``OUTPUT_HIGH_WATER`` (256 KiB) reply bytes unsent, the
connection stops reading its socket and stops handing out the frames it
already read, until a call ends or the client reads: a client that pipelines
calls or PINGs and never reads the answers costs a bounded amount of memory.
After ``FRAMES_PER_TURN`` frames a connection pauses until the event loop has
gone round once, so a flood on one socket delays the others by a turn, not by
everything it sent. A client whose unsent bytes do not drain at all (not a
byte taken) and that sends nothing for ``interval * (count + 1)`` keepalive
seconds has stopped reading and is dropped, keepalive or not; a slow reader is
not, nor one that holds its reading back and sends keepalive frames meanwhile.
While an upload holds reading back (a slow disk), the client gets an unasked
keepalive PONG every ``HOLD_PONG_INTERVAL``, since it hears nothing else.
Thread-bound work waits in this connection's own queue of the shared
``FairExecutor``, so one busy client cannot starve others; storage calls that touch
no file are answered on the loop when the registry's lock is free at once
(``dispatch.Runs.MEMORY``), and queue there like the rest when it is not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import functools
import logging
import socket
import struct
import sys
import termios
import time
from typing import TYPE_CHECKING, cast

from virtvol.daemon.dispatch import HANDLERS, Runs, vol_ref
from virtvol.daemon.download import BUFFERS_PER_CONNECTION, FRAME_SIZE, Download
from virtvol.daemon.sendbuffers import SendBuffers
from virtvol.daemon.session import POOL_EVENT_LIFECYCLE, POOL_EVENT_REFRESH, Session
from virtvol.daemon.storage import PoolRef, VolStreamFlags
from virtvol.daemon.storage.backend import ChunkReader, ChunkWriter
from virtvol.daemon.storage.model import PoolEvent
from virtvol.daemon.streamio import TransferStats, unexpected_status
from virtvol.daemon.upload import Upload
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    CallReceived,
    CallRejected,
    Connection,
    Event,
    FrameIgnored,
    PingReceived,
    StreamAbortedByStatus,
    StreamAbortReceived,
    StreamDataReceived,
    StreamFinishReceived,
    StreamHoleReceived,
    StreamItemsReceived,
    StreamSkipRefused,
    StreamWrittenByClient,
    rpc_error,
)
from virtvol.protocol.constants import MESSAGE_MAX
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport, check_flags
from virtvol.protocol.exceptions import ProtocolError, XdrEncodeError
from virtvol.protocol.frames import SCRATCH_SIZE
from virtvol.protocol.keepalive import KeepaliveAction, KeepaliveTracker
from virtvol.protocol.procedures import Proc, StreamDirection
from virtvol.protocol.stream import Side

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable, Coroutine, Sequence

    from virtvol.daemon.context import DaemonContext
    from virtvol.protocol.frames import Payload
    from virtvol.protocol.xdr import XdrStruct

log = logging.getLogger("virtvol.daemon.connection")

# VIR_CONNECT_CLOSE_REASON_EOF: what a client's close callback hears when we shut down.
_CLOSE_REASON_EOF = 1
_PEERCRED = struct.Struct("3i")
# Reply bytes a client may leave unread before we stop reading its calls.
OUTPUT_HIGH_WATER = 256 << 10
# Pool events a client may leave unread once its output is backed up: events come from
# other clients' calls, which nothing on this connection holds back, so past this the
# connection is dropped rather than let grow.
MAX_HELD_EVENTS = 1024
# Owners of a read pause (besides the upload handlers): they also hold back the
# frames already read, since serving those would add to what they limit.
_REQUEST_LIMIT = "max_client_requests"
_OUTPUT_BACKLOG = "unsent replies"
_TURN_OVER = "turn over"
_DISPATCH_HOLDS = frozenset({_REQUEST_LIMIT, _OUTPUT_BACKLOG, _TURN_OVER})
# The largest frame (header + payload) from a client that cannot write: before
# CONNECT_OPEN, or read-only. No call such a client may make comes near it, and
# a frame sent in full costs its size for as long as its connection lives: this
# keeps any local user at 1 MiB per connection instead of 32.
LIMITED_MESSAGE_MAX = 1 << 20
# The receive buffer of small frames while the connection has an upload open: a
# fragmented image's 4 KiB frames come ~60 to a read instead of ~4, for 240 KiB more per
# uploading connection (an upload may hold ``upload.HELD_MAX`` of queued data besides).
UPLOAD_RECEIVE_BUFFER = 256 << 10
# Frames one connection may have served before it lets every other connection
# have a turn of the event loop (the loop reads a busy socket many times over).
FRAMES_PER_TURN = 16
# A Unix socket's send buffer once its connection downloads. Linux gives a Unix stream
# socket ~208 KiB (net.core.wmem_default); with 1 MiB (the kernel books twice that, and
# caps the request at net.core.wmem_max), one process moved 1 GiB to another in 0.21 s
# instead of 0.32 s (docs/performance.md). Set only when a download opens, next to its
# 12 MiB of frame buffers: a connection that reads nothing can make the kernel hold
# ~2 MiB for it instead of ~0.2 MiB. TCP sizes its buffers itself, and a fixed size
# there was no faster.
DOWNLOAD_UNIX_SEND_BUFFER = 1 << 20


def describe_peer(transport: asyncio.BaseTransport) -> str:
    """``host:port`` for TCP, ``pid N uid U`` for Unix sockets (who, for the log)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            pid, uid, _ = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except OSError:
            return "unix client"
        return f"pid {pid} uid {uid}"
    return "client"


def internal_error(detail: str) -> ErrorReport:
    return ErrorReport.raised(ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, detail)


class ClientConnection(asyncio.BufferedProtocol):
    """The server side of one libvirt RPC connection."""

    def __init__(self, context: DaemonContext, listener: str, *, read_only: bool) -> None:
        self._ctx = context
        self._listener = listener
        self.rpc = Connection(
            Side.SERVER,
            max_message=LIMITED_MESSAGE_MAX,
            payload_buffers=context.payload_buffers,
            # A fragmented upload is two small frames per extent: they reach the upload
            # a read's worth at a time.
            gather_stream_items=True,
        )
        self.session = Session(read_only=read_only, legacy=context.legacy)
        self.peer = "?"
        # Who the peer proved to be (the TLS client's DN), set before connection_made.
        self.peer_identity: str | None = None
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: dict[int, Upload | Download] = {}
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._held_events: collections.deque[bytes] = collections.deque()
        self._read_pausers: set[object] = set()
        self._keepalive: KeepaliveTracker | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._started = time.monotonic()
        self._refused = False  # closed at once by admission: never served, never counted
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._bytes_queued = 0  # every byte handed to the transport
        self._bytes_received = 0  # every byte read from the client
        # What the client had taken and sent at the last stall check (_client_progress).
        self._progress_mark: tuple[int, int, int] = (0, 0, 0)
        self._calls_in_flight = 0
        self._frames_this_turn = 0
        self._streams_opening = 0
        self._send_buffers = SendBuffers(BUFFERS_PER_CONNECTION, FRAME_SIZE)
        self._calls = 0
        self._streams_opened = 0
        self._close_reason = "closed by the client"
        # What a client that keeps calling the same bad thing gets logged once for.
        self._logged_refusal = False
        self._logged_failures: set[str] = set()
        self.closed = self._loop.create_future()

    # -- asyncio.BufferedProtocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        # Zero limits: pause_writing fires whenever anything stays unsent.
        self._transport.set_write_buffer_limits(high=0, low=0)
        self.peer = describe_peer(transport)
        ctx = self._ctx
        refusal = ctx.connection_refusal()
        if refusal is not None:
            # Closed before anything is read or allocated; logged once per burst.
            ctx.admission.refusals.refused(f"{self.peer} on {self._listener}", refusal)
            self._refused = True
            self._transport.abort()
            return
        ctx.connections.add(self)
        ctx.total_connections += 1
        if ctx.connection_lines.allow():
            identity = f" as {self.peer_identity}" if self.peer_identity else ""
            log.info("%s: connected on %s%s", self.peer, self._listener, identity)
        self._handshake_timer = self._loop.call_later(
            ctx.limits.handshake_timeout, self._handshake_expired
        )
        if not ctx.accepting:
            self.close("the daemon is stopping")

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.rpc.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self._bytes_received += nbytes
        try:
            self.rpc.buffer_updated(nbytes)
        except ProtocolError as exc:
            self.abort(f"protocol error: {exc}")
            return
        if self._keepalive is not None:
            self._keepalive.heard(self._loop.time())
        self._dispatch_received()

    def _gone(self) -> bool:
        """True once the connection is closing or lost (a dispatched event may close it)."""
        return self._transport is None or self._transport.is_closing()

    def _dispatch_received(self) -> None:
        """Serve the frames read so far, unless a limit holds them back."""
        if self._gone():
            return
        try:
            while not (self._read_pausers & _DISPATCH_HOLDS):
                if self._calls_in_flight >= self._ctx.limits.max_client_requests:
                    self.pause_reading(_REQUEST_LIMIT)
                    return
                if self._frames_this_turn >= FRAMES_PER_TURN:
                    self.pause_reading(_TURN_OVER)
                    self._loop.call_soon(self._next_turn)
                    return
                event = self.rpc.next_event()
                if event is None:
                    return
                if type(event) is StreamItemsReceived:
                    self._frames_this_turn += len(event.items)
                else:
                    self._frames_this_turn += 1
                self._dispatch(event)
                if self._gone():
                    return
        except ProtocolError as exc:
            self.abort(f"protocol error: {exc}")

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        # Let go of the transport: uvloop's TLS transport keeps bound methods of this
        # protocol after the loss, and the cycle would hold the stream buffers until
        # the garbage collector runs.
        self._transport = None
        if exc is not None and self._close_reason == "closed by the client":
            self._close_reason = f"lost: {exc}"
        if self._refused:
            if not self.closed.done():
                self.closed.set_result(None)
            return  # never served, never counted
        for timer in (self._keepalive_timer, self._handshake_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        # A stream task cancelled before its first step never runs its own cleanup.
        for stream in list(self._streams.values()):
            stream.close()
        self._wake_drain_waiters()
        self._ctx.connections.discard(self)
        if self._ctx.connection_lines.allow():
            log.info(
                "%s: %s after %.3f s, %d calls, %d streams",
                self.peer,
                self._close_reason,
                time.monotonic() - self._started,
                self._calls,
                self._streams_opened,
            )
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._ctx.keepalive_interval is None:
            return  # no keepalive: a peer that stops reading is waited for, as libvirtd does
        stall = self._ctx.keepalive_interval * (self._ctx.keepalive_count + 1)
        if self._stall_timer is None and not self._refused:
            self._progress_mark = self._client_progress()
            self._stall_timer = self._loop.call_later(stall, self._output_stalled, stall)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._send_buffers.reclaim()
        while self._held_events and not self._write_paused:
            self.send(self._held_events.popleft())
        self._wake_drain_waiters()
        if _OUTPUT_BACKLOG in self._read_pausers:
            self.resume_reading(_OUTPUT_BACKLOG)
            self._dispatch_received()

    # -- FrameSink (used by the stream handlers) -----------------------------------

    def send(self, frame: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)
            self._bytes_queued += len(frame)
            if transport.get_write_buffer_size() > OUTPUT_HIGH_WATER:
                self.pause_reading(_OUTPUT_BACKLOG)

    def pool_event(self, pool: PoolRef, event: PoolEvent) -> None:
        """Tell the client of a pool event, once per callback it registered for it.

        Every pool event reaches every connection, on the event loop: the message is
        encoded once for all of this client's callbacks and their frames go out in one
        write, so that a client holding many (any local user may, on the read-only
        socket) costs the others little time per event."""
        event_id = POOL_EVENT_REFRESH if event is PoolEvent.REFRESHED else POOL_EVENT_LIFECYCLE
        told = [
            callback_id
            for callback_id, callback in self.session.pool_event_callbacks.items()
            if callback.wants(event_id, pool.uuid)
        ]
        if not told:
            return
        wire_pool = r.StoragePool(name=pool.name, uuid=pool.uuid)
        if event is PoolEvent.REFRESHED:
            message: XdrStruct = r.PoolRefreshEventMsg(callback_id=told[0], pool=wire_pool)
            procedure = Proc.STORAGE_POOL_EVENT_REFRESH
        else:
            message = r.PoolLifecycleEventMsg(
                callback_id=told[0], pool=wire_pool, event=int(event), detail=0
            )
            procedure = Proc.STORAGE_POOL_EVENT_LIFECYCLE
        self._send_events(self.rpc.send_callback_messages(procedure, message, told))

    def _send_events(self, frames: list[bytes]) -> None:
        """Send events, or hold them while the client's output is backed up (sent from
        ``resume_writing``); a client that leaves too many unread is dropped."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._held_events or transport.get_write_buffer_size() > OUTPUT_HIGH_WATER:
            if len(self._held_events) + len(frames) > MAX_HELD_EVENTS:
                self._held_events.clear()
                self.abort(f"the client left {MAX_HELD_EVENTS} pool events unread")
                return
            self._held_events.extend(frames)
            return
        transport.writelines(frames)
        self._bytes_queued += sum(len(frame) for frame in frames)
        if transport.get_write_buffer_size() > OUTPUT_HIGH_WATER:
            self.pause_reading(_OUTPUT_BACKLOG)

    def send_parts(self, parts: Sequence[Payload]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            # One writelines, one system call: a fragmented volume's frames are many and
            # small, and every write of its own would be a send of its own.
            transport.writelines(parts)
            self._bytes_queued += sum(len(part) for part in parts)

    def write_buffer_empty(self) -> bool:
        return self._transport is None or self._transport.get_write_buffer_size() == 0

    async def drained(self) -> None:
        while not self.write_buffer_empty():
            if self._transport is None or self._transport.is_closing():
                await self.closed  # the task is cancelled when the connection goes
            elif self._write_paused:
                waiter = self._loop.create_future()
                self._drain_waiters.append(waiter)
                await waiter
            else:
                await asyncio.sleep(0.001)  # a transport that buffered without pausing

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pause_reading(self, owner: object) -> None:
        transport = self._transport
        if not self._read_pausers and transport is not None and not transport.is_closing():
            transport.pause_reading()
        if owner not in _DISPATCH_HOLDS and not self._upload_holds_reading():
            self._keepalive_soon()
        self._read_pausers.add(owner)

    def _upload_holds_reading(self) -> bool:
        """Whether reading is held back for an upload (its disk behind), not only to pace
        the client's calls and output (``_DISPATCH_HOLDS``)."""
        return not self._read_pausers <= _DISPATCH_HOLDS

    def _keepalive_soon(self) -> None:
        """An upload starts holding reading back: let the keepalive look when its first
        PONG is due (the client's silence clock runs since our last frame, not since
        the pause)."""
        timer, tracker = self._keepalive_timer, self._keepalive
        if timer is None or timer.cancelled() or tracker is None:  # none, or the connection is gone
            return
        due = max(self._loop.time(), tracker.next_hold_signal())
        if timer.when() > due:
            timer.cancel()
            self._keepalive_timer = self._loop.call_at(due, self._keepalive_due)

    def resume_reading(self, owner: object) -> None:
        if owner not in self._read_pausers:
            return
        self._read_pausers.discard(owner)
        transport = self._transport
        if not self._read_pausers and transport is not None and not transport.is_closing():
            transport.resume_reading()
            if self._keepalive is not None:
                self._keepalive.heard(self._loop.time())

    # -- closing --------------------------------------------------------------------

    def stream_count(self) -> int:
        return len(self._streams) + self._streams_opening

    def close(self, reason: str, *, notify: bool = True) -> None:
        """Close after the queued frames are sent; with ``notify``, a registered close
        callback hears of it (not when the client asked for the close itself)."""
        if self._transport is None or self._transport.is_closing():
            return
        self._close_reason = reason
        if notify and self.session.close_callback:
            event = r.ConnectEventConnectionClosedMsg(reason=_CLOSE_REASON_EOF)
            self.send(self.rpc.send_message(Proc.CONNECT_EVENT_CONNECTION_CLOSED, event))
        self._transport.close()

    def abort(self, reason: str) -> None:
        """Drop the connection at once (protocol violation, dead peer)."""
        if self._transport is None:
            return
        if not self._transport.is_closing() or self._close_reason == "closed by the client":
            self._close_reason = reason
        if self._ctx.connection_lines.allow():
            log.warning("%s: closing: %s", self.peer, reason)
        self._transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone and every task of it has cleaned up."""
        await self.closed
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def wait_streams(self) -> None:
        """Wait for the streams running now to end."""
        tasks = [task for task in self._tasks if task.get_name().startswith("stream")]
        if tasks:
            await asyncio.wait(tasks)

    # -- events ---------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        if type(event) is StreamItemsReceived:
            handler = self._streams.get(event.serial)
            if isinstance(handler, Upload):
                handler.items_received(event.items)
        elif isinstance(event, StreamDataReceived):
            handler = self._streams.get(event.serial)
            if isinstance(handler, Upload):
                handler.data_received(event.data)
        elif isinstance(event, CallReceived):
            self._calls += 1
            self._calls_in_flight += 1
            task = self._spawn(self._serve(event), f"call-{event.serial}")
            task.add_done_callback(self._call_ended)
        elif isinstance(event, StreamHoleReceived):
            handler = self._streams.get(event.serial)
            if isinstance(handler, Upload):
                handler.hole_received(event.length)
        elif isinstance(event, StreamFinishReceived | StreamAbortReceived):
            stream = self._streams.get(event.serial)
            if stream is not None and isinstance(event, StreamFinishReceived):
                stream.client_finished()
            elif stream is not None:
                stream.client_aborted()
        elif isinstance(event, StreamAbortedByStatus):
            stream = self._streams.get(event.serial)
            if stream is not None:
                stream.client_aborted(unexpected_status(event.status))
        elif isinstance(event, StreamSkipRefused):
            handler = self._streams.get(event.serial)
            if isinstance(handler, Upload):
                handler.skip_refused(event)  # answers once the upload is dropped
            else:
                self.send(self.rpc.refuse_stream_frame(event))
        elif isinstance(event, StreamWrittenByClient):
            handler = self._streams.get(event.serial)
            if isinstance(handler, Download):
                handler.client_wrote()
        elif isinstance(event, PingReceived):
            self.send(self.rpc.send_pong())
        elif isinstance(event, CallRejected):
            self._calls += 1
            self._log_refusal(event.procedure, event.error.message)
            self._reply_error(event.serial, event.error)
        elif isinstance(event, FrameIgnored):
            log.debug("%s: dropped %s: %s", self.peer, event.header.describe(), event.reason)

    def _spawn(self, work: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        task = self._loop.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task %s failed", self.peer, task.get_name(), exc_info=task.exception())

    def _next_turn(self) -> None:
        self._frames_this_turn = 0
        self.resume_reading(_TURN_OVER)
        self._dispatch_received()

    def _call_ended(self, task: asyncio.Task[None]) -> None:
        self._calls_in_flight -= 1
        if _REQUEST_LIMIT in self._read_pausers:
            self.resume_reading(_REQUEST_LIMIT)
            self._dispatch_received()

    # -- limits -----------------------------------------------------------------------

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self.session.opened:
            return
        timeout = self._ctx.limits.handshake_timeout
        reason = f"no CONNECT_OPEN within handshake_timeout ({timeout:g} s)"
        if self.write_buffer_empty():
            self.close(reason, notify=False)
        else:
            # A close waits for the replies it left unread, and they may never be read:
            # with keepalive_interval = -1 nothing else would ever drop it, and it would
            # keep its descriptor and its place among max_clients for good.
            self.abort(reason)

    def _opened(self) -> None:
        if not self.session.read_only:
            self.rpc.reader.max_message = MESSAGE_MAX  # uploads send large data frames
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _client_progress(self) -> tuple[int, int, int]:
        """(bytes the transport has passed to the kernel, bytes the kernel still holds,
        bytes read from the client).

        A transport reports progress only when a whole write completes (uvloop), so
        a client slowly reading one large frame shows up in the kernel's queue
        (SIOCOUTQ: unread on a Unix socket, unacknowledged on TCP) instead. What the
        client sends counts only while we read it: a client that sends calls and never
        reads their replies gets its reading paused once they back up."""
        transport = self._transport
        if transport is None:
            return self._progress_mark
        passed = self._bytes_queued - transport.get_write_buffer_size()
        in_kernel = -1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)
                in_kernel = int.from_bytes(raw, sys.byteorder, signed=True)
            except OSError:
                pass
        return passed, in_kernel, self._bytes_received

    def _output_stalled(self, seconds: float) -> None:
        """A slow reader is fine, and so is one that holds its reading back but tells us
        it is alive (a client writing into a stalled FIFO sends keepalive frames); one
        that took nothing and sent nothing for ``seconds`` is gone."""
        self._stall_timer = None
        if self.write_buffer_empty():
            return
        progress = self._client_progress()
        if progress != self._progress_mark:
            self._progress_mark = progress
            self._stall_timer = self._loop.call_later(seconds, self._output_stalled, seconds)
            return
        self.abort(f"the client read nothing of its replies for {seconds:g} s")

    # -- calls ----------------------------------------------------------------------

    async def _serve(self, call: CallReceived) -> None:
        procedure = call.procedure
        if self._gone():
            # Read in the same batch as a CONNECT_CLOSE (or a drop) but started after
            # it: libvirtd reads nothing more from a connection that is closing.
            return
        try:
            self.session.check_allowed(procedure)
            handler = HANDLERS.get(procedure.number)
            if handler is None:
                # In the table (the client side uses it) but nothing a client may call here.
                message = f"unknown procedure: {procedure.number}"
                self._log_refusal(procedure.number, message)
                self._reply_error(call.serial, rpc_error(message))
                return
            if handler.runs is Runs.CLOSE:
                self.send(self.rpc.reply(call.serial))
                self.close("closed by CONNECT_CLOSE", notify=False)
                return
            if handler.runs is Runs.STREAM:
                await self._open_stream(call)
                return
            assert handler.function is not None
            if handler.runs is Runs.SESSION:
                result = handler.function(self.session, call.args)
                if self.session.opened:
                    self._opened()
                if self.session.keepalive_requested:
                    self._start_keepalive()
            elif handler.runs is Runs.MEMORY and self._ctx.registry.lock_at_once():
                # Answered here, which costs less than a worker's hop; a thread that
                # holds the lock (over file work) sends it to a worker, to wait there.
                try:
                    result = handler.function(self._ctx.registry, call.args)
                finally:
                    self._ctx.registry.unlock()
            else:
                result = await self._ctx.call_queue.submit(
                    self,
                    handler.function,
                    self._ctx.registry,
                    call.args,
                    high_priority=procedure.high_priority,
                )
        except ErrorReport as report:
            self._reply_error(call.serial, r.RemoteError.from_report(report))
            return
        except Exception as exc:
            if procedure.name not in self._logged_failures:  # once per connection, not per call
                self._logged_failures.add(procedure.name)
                log.exception("%s: %s failed", self.peer, procedure.name)
            failure = internal_error(f"{procedure.name} failed: {exc}")
            self._reply_error(call.serial, r.RemoteError.from_report(failure))
            return
        self._reply(call.serial, procedure.name, result)

    def _reply(self, serial: int, name: str, result: XdrStruct | None) -> None:
        """Answer a call; a result that cannot be encoded (a list longer than the
        protocol allows) is answered with the RPC error libvirtd sends then."""
        try:
            frame = self.rpc.reply(serial, result)
        except XdrEncodeError as exc:
            log.error("%s: the result of %s cannot be sent: %s", self.peer, name, exc)
            self._reply_error(serial, rpc_error(f"Unable to encode message payload: {exc}"))
            return
        self.send(frame)

    def _reply_error(self, serial: int, error: r.RemoteError) -> None:
        """Answer a call with an error; one that cannot be encoded (a message longer
        than a wire string) goes as a plain one, so the call is never left unanswered."""
        try:
            frame = self.rpc.reply_error(serial, error)
        except XdrEncodeError as exc:
            log.error("%s: an error reply cannot be sent: %s", self.peer, exc)
            frame = self.rpc.reply_error(serial, rpc_error("Unable to encode message payload"))
        self.send(frame)

    def _log_refusal(self, procedure: int, message: str | None) -> None:
        if not self._logged_refusal:
            self._logged_refusal = True
            log.warning(
                "%s: refused procedure %d (%s); further refusals on this connection go unlogged",
                self.peer,
                procedure,
                message,
            )

    async def _open_stream(self, call: CallReceived) -> None:
        args = call.args
        assert isinstance(args, r.VolTransferArgs)
        upload = call.procedure.stream is StreamDirection.UPLOAD
        function = "storageVolUpload" if upload else "storageVolDownload"
        if self._ctx.legacy:
            # libvirt before 3.4 took no flags on these calls.
            check_flags(args.flags, 0, function, ErrorDomain.STORAGE)
        if not self._ctx.accepting:
            raise ErrorReport.raised(
                ErrorCode.OPERATION_INVALID, ErrorDomain.STORAGE, "the daemon is stopping"
            )
        limit = self._ctx.limits.max_client_streams
        if len(self._streams) + self._streams_opening >= limit:
            raise ErrorReport.raised(
                ErrorCode.OPERATION_FAILED,
                ErrorDomain.STREAMS,
                f"too many streams open on this connection (max_client_streams is {limit})",
            )
        refusal = self._ctx.stream_refusal()
        if refusal is not None:
            raise ErrorReport.raised(ErrorCode.OPERATION_FAILED, ErrorDomain.STREAMS, refusal)
        self._streams_opening += 1
        try:
            handler = await self._open_handler(call, args, upload)
        finally:
            self._streams_opening -= 1
        self._streams_opened += 1
        if self.closed.done():  # the connection went while the file was being opened
            handler.close()
            return
        self._streams[call.serial] = handler
        if upload:
            self._size_receive_buffer()
        self.send(self.rpc.reply(call.serial))
        task = self._spawn(handler.run(), f"stream-{call.serial}")
        task.add_done_callback(lambda _: self._stream_ended(call.serial, handler))

    async def _open_handler(
        self, call: CallReceived, args: r.VolTransferArgs, upload: bool
    ) -> Upload | Download:
        sparse = bool(args.flags & VolStreamFlags.SPARSE)
        volume = vol_ref(args.vol)
        stats = TransferStats(
            "upload" if upload else "download",
            f"{volume.pool}/{volume.name}",
            self.peer,
            sparse,
            args.offset,
            args.length,
        )
        handler: Upload | Download
        if upload:
            writer = await self._in_thread(
                self._ctx.registry.open_volume_upload, volume, args.offset, args.length, args.flags
            )
            assert isinstance(writer, ChunkWriter)
            handler = Upload(self, call.serial, writer, executor=self._ctx.io, stats=stats)
        else:
            # The reader always reports holes: on a plain stream they go as zeros
            # from memory instead of being read from the disk.
            reader = await self._in_thread(
                self._ctx.registry.open_volume_download,
                volume,
                args.offset,
                args.length,
                args.flags | VolStreamFlags.SPARSE,
            )
            assert isinstance(reader, ChunkReader)
            self._widen_unix_send_buffer()
            handler = Download(
                self,
                call.serial,
                reader,
                sparse=sparse,
                executor=self._ctx.io,
                stats=stats,
                buffers=self._send_buffers,
            )
        return handler

    def _widen_unix_send_buffer(self) -> None:
        # Not once the transport is closing: uvloop's abort closes the descriptor at once,
        # and the number may already belong to a file a worker thread opened.
        if self._gone():
            return
        assert self._transport is not None
        sock = self._transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return
        # A smaller buffer than asked for (net.core.wmem_max) only costs speed.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, DOWNLOAD_UNIX_SEND_BUFFER)

    def _stream_ended(self, serial: int, handler: Upload | Download) -> None:
        # Also when the task was cancelled before its first step, so run() never ran.
        handler.close()
        if self._streams.get(serial) is handler:
            del self._streams[serial]
            if isinstance(handler, Upload):
                self._size_receive_buffer()

    def _size_receive_buffer(self) -> None:
        """Small frames are read ``UPLOAD_RECEIVE_BUFFER`` at a time while an upload is open
        (a fragmented image sends two per extent), ``SCRATCH_SIZE`` otherwise."""
        uploading = any(isinstance(handler, Upload) for handler in self._streams.values())
        size = UPLOAD_RECEIVE_BUFFER if uploading else SCRATCH_SIZE
        if self.rpc.reader.scratch_size != size:
            self.rpc.reader.resize_scratch(size)

    async def _in_thread(
        self, func: Callable[..., ChunkReader | ChunkWriter], *args: object
    ) -> ChunkReader | ChunkWriter:
        """Open a stream's file in a worker; if we are cancelled meanwhile, release it."""
        future = self._ctx.call_queue.submit(self, func, *args)
        try:
            result: ChunkReader | ChunkWriter = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(functools.partial(_release_opened, self._ctx.io))
            raise
        return result

    # -- keepalive --------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        interval = self._ctx.keepalive_interval
        if self._keepalive is not None or interval is None:
            return
        self._keepalive = KeepaliveTracker(interval, self._ctx.keepalive_count, self._loop.time())
        self._schedule_keepalive()

    def _schedule_keepalive(self) -> None:
        assert self._keepalive is not None
        self._keepalive_timer = self._loop.call_at(self._keepalive.deadline(), self._keepalive_due)

    def _keepalive_due(self) -> None:
        tracker = self._keepalive
        assert tracker is not None
        now = self._loop.time()
        if self._upload_holds_reading():
            # An upload holds reading back (a slow disk): the client's silence is ours,
            # but it hears nothing from us either, and would take us for dead.
            action = tracker.hold(now)
        else:
            if self._read_pausers:
                tracker.heard(now)  # we stopped listening to pace its calls: the silence is ours
            action = tracker.poll(now)
        if action is KeepaliveAction.PEER_DEAD:
            self.abort("no keepalive answer")
            return
        if action is KeepaliveAction.SEND_PING:
            self.send(self.rpc.send_ping())
        elif action is KeepaliveAction.SEND_PONG:
            self.send(self.rpc.send_pong())
        self._schedule_keepalive()


def _release_opened(
    executor: concurrent.futures.Executor, future: asyncio.Future[ChunkReader | ChunkWriter]
) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    opened = future.result()
    release = opened.abort if isinstance(opened, ChunkWriter) else opened.close
    try:
        executor.submit(release)  # an rbd image's close is a cluster round trip
    except RuntimeError:  # the workers are gone: the daemon is stopping
        release()
