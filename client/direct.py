"""The command line's connections: one blocking socket, no event loop.

A ``virtvol`` command makes a few calls one after the other, or moves one
file. An event loop costs it more than it gives: importing asyncio and uvloop
takes longer than most commands run, and every file read hops to a thread.
``DirectRpc`` drives the same protocol core as ``rpc.RpcProtocol`` over a
socket of its own, and its coroutines never suspend: the command's async code
(the same ``Connection``, pools and volumes as the library's) runs under
``run_blocking``, which steps the coroutine once and expects it finished.

Theory of operation: while it waits for an answer, ``DirectRpc`` reads
everything the peer sends and hands each event on at once: replies are kept
for the call with the same serial, stream frames go to the stream's sink, the
peer's keepalive PINGs are answered. After ``interval`` seconds of silence it
sends PINGs of its own and gives up after ``count`` unanswered ones, so a
vanished peer fails the command instead of hanging it (``KeepaliveTracker``,
as the event-loop client). Writing never waits without reading: while the
socket is full, what the peer sends is still read and handled, so a peer that
reports a stream error and stops reading is heard. Control frames that arise
while frames are being written (a PONG) wait until that write is complete: one
frame, or the frames of one read buffer (``send_stream_data(more=True)``).

Unix, TCP and TLS connections are all direct. Over TLS the socket is the ssl
module's, which sends no vector of buffers: small parts are joined into one write
(``TLS_JOIN_MAX``), large ones go one by one. Data it has decrypted but not handed
over yet does not wake a poll, so every read goes on while such data waits
(``SSLSocket.pending``), and a write that waits for the socket reads that first.
"""

from __future__ import annotations

# The C module, not socket.py: importing socket.py turns the C module's constants
# into enums (~3 ms of every command), and a command needs none of them.
import _socket
import collections
import math
import os
import select
import time

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, TypeVar, overload
else:
    from virtvol.protocol.hints import TypeVar, overload

from virtvol.client.connection import (
    DEFAULT_KEEPALIVE,
    Connection,
    connect_failure,
    handshake,
    open_target,
    resolver_name,
    set_no_delay,
    widen_unix_send_buffer,
)
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
    Connection as ProtocolCore,
)
from virtvol.protocol.connection import (
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
    StreamItemsReceived,
)
from virtvol.protocol.keepalive import KeepaliveAction, KeepaliveTracker

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Coroutine, Iterable, Sequence

    from virtvol.client.interfaces import FileTransfers
    from virtvol.client.rpc import StreamEvent
    from virtvol.client.uri import Target

    # What the resolver gives for one address: family, type, protocol, name, address.
    _Address = tuple[int, int, int, str, tuple[Any, ...]]

    # What a stream's sink hears: the asyncio engine's events, and runs of data and
    # skips gathered into one (``gather_stream_items``).
    DirectStreamEvent = StreamEvent | StreamItemsReceived
    from virtvol.protocol.constants import ProtocolMode
    from virtvol.protocol.frames import Payload
    from virtvol.protocol.procedures import ArgsT, Procedure, RetT
    from virtvol.protocol.xdr import XdrStruct

__all__ = ["DirectRpc", "open_direct", "run_blocking"]


# Over TLS, parts are joined into writes of up to this many bytes (each write is TLS
# records and a system call); a part this large goes alone, uncopied.
TLS_JOIN_MAX = 64 << 10
# What one wake-up reads over TLS, a record (16 KiB at most) at a time, before the
# events it completes are handled.
TLS_READ_ROUND = 4 << 20
# The most buffers one sendmsg takes (Linux's IOV_MAX), and so the most parts a batch
# of stream frames collects before it goes out.
_IOV_MAX = os.sysconf("SC_IOV_MAX")
# Small frames (a fragmented download's 4 KiB pieces and skips) are read into one buffer
# of this size: 16 times fewer reads and loop turns than the protocol core's default,
# for memory a command can spare (a daemon keeps one such buffer per client).
RECEIVE_BUFFER = 256 << 10
# The first allocation for a large frame: virtvold's download frames (4 MiB) fit, where
# the protocol's default (64 KiB, doubled as bytes arrive: six allocations and copies
# for one such frame) guards a server against peers announcing frames they never send.
# One connection's worth is bounded: a daemon can make this command commit 4 MiB.
PAYLOAD_FIRST_STEP = 4 << 20

_T = TypeVar("_T")


def run_blocking(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine that never suspends (one using only ``DirectRpc``) to its end.

    Raises:
        RuntimeError: the coroutine waited for something only an event loop provides.
    """
    try:
        coroutine.send(None)
    except StopIteration as finished:
        result: _T = finished.value
        return result
    coroutine.close()
    raise RuntimeError("a blocking command waited on an event loop")


async def open_direct(
    uri: str | None,
    *,
    protocol: ProtocolMode = "current",
    read_only: bool = False,
    time_limit: float | None = 30.0,
    keepalive: tuple[float, int] | None = DEFAULT_KEEPALIVE,
) -> Connection:
    """Open a ``Connection`` over a blocking socket, handshake included (as ``connect``).

    A coroutine that never suspends: await it from code ``run_blocking`` runs.

    Raises:
        InvalidURI: the URI cannot be used (``UnsupportedTransport``: ssh and others).
        TransportError: the daemon cannot be reached or dropped the connection.
        LibvirtError: the daemon refused to open the connection, or TLS failed
            (libvirt's messages).
        TimeoutError: connecting and the handshake took longer than ``time_limit``.
    """
    target = open_target(uri, read_only=read_only)
    started = time.monotonic()
    sock = _open_socket(target, time_limit)
    rpc = DirectRpc(sock, target.uri, tls=target.transport == "tls")
    rpc.deadline = None if time_limit is None else started + time_limit
    conn = await handshake(rpc, target, protocol=protocol, keepalive=keepalive)
    rpc.deadline = None
    return conn


def _open_socket(target: Target, time_limit: float | None) -> _socket.socket:
    try:
        if target.transport == "tls":
            return _tls_socket(target, time_limit)
        if target.socket_path is None:
            assert target.port is not None
            return _tcp_socket(resolver_name(target), target.port, time_limit)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            widen_unix_send_buffer(sock)
            sock.settimeout(time_limit)
            sock.connect(target.socket_path)
        except BaseException:
            sock.close()
            raise
        return sock
    except OSError as exc:
        if isinstance(exc, TimeoutError) and exc.errno is None:
            raise  # the time limit ran out; the kernel's own ETIMEDOUT is a failure
        raise connect_failure(target, exc) from exc


def _tls_socket(target: Target, time_limit: float | None) -> _socket.socket:
    """A TLS connection whose server confirmed it, over the first of the host's addresses
    that answers; the credentials are read before connecting, as libvirt reads them.
    Failures to connect are worded by ``_open_socket``."""
    from virtvol.client.connection import tls_name_refused
    from virtvol.client.tls import client_context, locate_credentials, open_tls_socket

    assert target.host is not None
    assert target.port is not None
    context = client_context(locate_credentials(target.pkipath), verify=target.tls_verify)
    deadline = None if time_limit is None else time.monotonic() + time_limit
    # The name is looked up before it is judged, as the library does.
    addresses = _addresses(resolver_name(target), target.port)
    name_refused = tls_name_refused(target, context)
    sock = _connect_first(addresses, time_limit)
    try:
        server_name = str(sock.getpeername()[0]) if name_refused else target.host
    except BaseException:
        sock.close()
        raise
    left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
    return open_tls_socket(sock, server_name, context, left)


def _tcp_socket(host: bytes, port: int, time_limit: float | None) -> _socket.socket:
    """A socket connected to the first of ``host``'s addresses that answers, in the
    resolver's order, within ``time_limit`` for them all; when none does, the last
    address's failure is raised, as libvirt reports it. An address of a family this
    host cannot open (IPv6 disabled) is passed over, as ``socket.create_connection``
    does.
    """
    return _connect_first(_addresses(host, port), time_limit)


def _addresses(host: bytes, port: int) -> list[_Address]:
    """``host``'s addresses for a stream socket, in the resolver's order."""
    return _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)


def _connect_first(addresses: list[_Address], time_limit: float | None) -> _socket.socket:
    """See ``_tcp_socket``."""
    deadline = None if time_limit is None else time.monotonic() + time_limit
    last_failure: OSError | None = None
    for family, kind, proto, _, address in addresses:
        if deadline is not None and last_failure is not None and time.monotonic() >= deadline:
            break
        sock = None
        try:
            sock = _socket.socket(family, kind, proto)
            sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.001))
            sock.connect(address)
        except OSError as exc:
            if sock is not None:
                sock.close()
            last_failure = exc
            continue
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        set_no_delay(sock)
        return sock
    if last_failure is None:  # pragma: no cover - the resolver raises gaierror instead
        raise OSError("the resolver gave no address")
    try:
        raise last_failure
    finally:
        last_failure = None  # the traceback holds this frame: no cycle through it


class DirectRpc:
    """One client connection over a blocking socket (see the module docstring).

    Args:
        sock: the connected socket; the object owns it from now on.
        description: how to name the peer in error messages (the URI).

    Attributes:
        deadline: a ``time.monotonic()`` after which every wait fails with
            ``TimeoutError`` (the connection's time limit), or None.
    """

    def __init__(self, sock: _socket.socket, description: str, *, tls: bool = False) -> None:
        # A fragmented download is two small frames per extent: they reach the stream's
        # sink a read's worth at a time.
        self.core = ProtocolCore(
            Side.CLIENT,
            gather_stream_items=True,
            scratch_size=RECEIVE_BUFFER,
            payload_first_step=PAYLOAD_FIRST_STEP,
        )
        self.description = description
        self.deadline: float | None = None
        self.pings_received = 0
        self.pings_sent = 0
        self._sock = sock
        # What a read or write that cannot go on at once raises, and whether decrypted
        # bytes wait in the socket that no poll would wake for (TLS).
        self._would_block: tuple[type[OSError], ...] = (BlockingIOError,)
        self._wants_read: tuple[type[OSError], ...] = ()  # a TLS write that must read first
        self._send: Callable[[list[bytes | memoryview]], int] = sock.sendmsg
        self._waiting: Callable[[], int] = _nothing_waits
        self._tls = tls
        if tls:
            import ssl

            assert isinstance(sock, ssl.SSLSocket)
            self._would_block = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
            self._wants_read = (ssl.SSLWantReadError,)
            self._send = _tls_sender(sock)
            self._waiting = sock.pending
        sock.setblocking(False)
        self._fd = sock.fileno()
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        self._replies: dict[int, ReplyReceived | ErrorReplyReceived] = {}
        self._awaited: set[int] = set()
        self._sinks: dict[int, Callable[[DirectStreamEvent], None]] = {}
        self._failure: TransportError | None = None
        self._keepalive: KeepaliveTracker | None = None
        # Control frames (PONG, PING) that wait for the write under way to be complete.
        self._control: collections.deque[bytes] = collections.deque()
        # The PONG among them, if one waits: one answers every PING before it.
        self._queued_pong: bytes | None = None
        # Stream frames that wait to go out together (``send_stream_data(more=True)``).
        self._batch: list[Payload] = []
        self._writing = False

    # -- failure ------------------------------------------------------------------------

    @property
    def failure(self) -> TransportError | None:
        """Why the connection is unusable, or None while it works."""
        return self._failure

    def check(self) -> None:
        """Raise the connection's failure, if any."""
        if self._failure is not None:
            raise self._failure

    def _fail(self, failure: TransportError, *, warn: bool = False) -> TransportError:
        if self._failure is None:
            self._failure = failure
            if warn:  # as the event-loop client: a broken peer is news, a closed one is not
                log.warning("%s", failure, extra=CONNECTION_FAILURE)
        return self._failure

    def _lost(self, exc: OSError | None) -> TransportError:
        reason = f": {exc}" if exc else ""
        return self._fail(ConnectionClosed(f"disconnected from {self.description}{reason}"))

    # -- calls -----------------------------------------------------------------------------

    def start_call(
        self,
        procedure: Procedure[Any, Any],
        args: XdrStruct | None = None,
        *,
        sink: Callable[[DirectStreamEvent], None] | None = None,
    ) -> int:
        """Write a CALL and return its serial; ``sink`` receives the frames of the
        stream it opens (registered first: they may overtake the reply).

        Raises:
            UnsendableValue: ``args`` cannot be encoded; nothing was sent.
            TransportError: the connection has failed.
        """
        self.check()
        with core_errors(self.description):
            serial, frame = self.core.call(procedure.number, args)
        self._awaited.add(serial)
        if sink is not None:
            self._sinks[serial] = sink
        try:
            self.write((frame,))
        except BaseException:  # not sent: nothing of it is kept for an answer
            self._awaited.discard(serial)
            self._sinks.pop(serial, None)
            raise
        return serial

    def wait_reply(self, serial: int, name: str, timeout: float | None = None) -> Any:
        """The result of call ``serial`` (``name``: its procedure, for messages).

        Raises:
            LibvirtError: the peer answered with an error.
            TransportError: the connection failed first.
            CallTimeout: no answer within ``timeout`` seconds.
            TimeoutError: the connection's ``deadline`` passed.
        """
        limit = None if timeout is None else time.monotonic() + timeout
        try:
            while serial not in self._replies:
                if limit is not None and time.monotonic() >= limit:
                    raise CallTimeout(
                        f"no answer to {name} from {self.description} within {timeout:g} s"
                    )
                self.receive(limit)
        finally:
            self._awaited.discard(serial)
        answer = self._replies.pop(serial)
        if isinstance(answer, ErrorReplyReceived):
            raise error_from_remote(answer.error)
        return answer.result

    @overload
    async def call(
        self, procedure: Procedure[None, RetT], *, timeout: float | None = None
    ) -> RetT: ...
    @overload
    async def call(  # noqa: F811 (overload comes from virtvol.protocol.hints at run time)
        self, procedure: Procedure[ArgsT, RetT], args: ArgsT, *, timeout: float | None = None
    ) -> RetT: ...
    async def call(  # noqa: F811
        self,
        procedure: Procedure[Any, RetT],
        args: XdrStruct | None = None,
        *,
        timeout: float | None = None,
    ) -> RetT:
        """Make a call and return its result (see ``rpc.RpcProtocol.call``); never suspends."""
        serial = self.start_call(procedure, args)
        result: RetT = self.wait_reply(serial, procedure.name, timeout)
        return result

    async def call_all(
        self, calls: Sequence[tuple[Procedure[Any, Any], XdrStruct | None]], *, window: int
    ) -> list[Any]:
        """Make ``calls`` with up to ``window`` of them in flight (see
        ``rpc.RpcProtocol.call_all``); never suspends."""
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        results: list[Any] = []
        in_flight: collections.deque[tuple[int, str]] = collections.deque()
        try:
            for procedure, args in calls:
                if len(in_flight) >= window:
                    results.append(self._result_or_error(*in_flight[0]))
                    in_flight.popleft()
                in_flight.append((self.start_call(procedure, args), procedure.name))
            while in_flight:
                results.append(self._result_or_error(*in_flight[0]))
                in_flight.popleft()
        finally:  # a failed connection, or Ctrl-C: the answers still due are dropped
            for serial, _ in in_flight:
                self._awaited.discard(serial)
                self._replies.pop(serial, None)
        return results

    def _result_or_error(self, serial: int, name: str) -> Any:
        try:
            return self.wait_reply(serial, name)
        except LibvirtError as exc:
            return exc

    def forget_sink(self, serial: int) -> None:
        """Stop routing a stream's frames (its call failed)."""
        self._sinks.pop(serial, None)

    # -- reading -------------------------------------------------------------------------------

    def receive(self, limit: float | None = None) -> None:
        """Wait for what the peer sends (until ``limit``, a ``time.monotonic()``, at the
        latest) and handle every event it completes.

        Raises:
            TransportError: the connection failed.
            TimeoutError: the connection's ``deadline`` passed.
        """
        self.check()
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError(f"no answer from {self.description} in time")
        if self._waiting() or self._poller.poll(self._wait_ms(limit)):
            self._read()
        self._keep_alive()

    def _wait_ms(self, limit: float | None) -> int | None:
        """Milliseconds a poll may wait: until ``limit``, the connection's deadline or
        the keepalive's next step, whichever comes first (None: no end)."""
        ends = [end for end in (limit, self.deadline) if end is not None]
        if self._keepalive is not None:
            ends.append(self._keepalive.deadline())
        if not ends:
            return None
        return max(0, math.ceil((min(ends) - time.monotonic()) * 1000))

    def _read(self) -> None:
        self._read_once()
        while self._waiting():
            self._read_once()

    def _read_once(self) -> None:
        count = self._take()
        if count is None:
            return
        if count == 0:
            raise self._lost(None)
        # Over TLS a read brings one record (16 KiB at most): the records the socket
        # holds already are taken before the events are handled (an end among them is
        # met by the next read).
        taken = count
        while self._tls and taken < TLS_READ_ROUND and (count := self._take()):
            taken += count
        if self._keepalive is not None:
            self._keepalive.heard(time.monotonic())
        try:
            with core_errors(self.description):
                while (event := self.core.next_event()) is not None:
                    self._dispatch(event)
        except ProtocolViolation as exc:
            raise self._fail(exc, warn=True) from None
        if self._control and not self._writing:
            self.write(())

    def _take(self) -> int | None:
        """Read what the socket holds into the core: the count, 0 at the end, None when
        nothing waits."""
        try:
            count: int = self._sock.recv_into(self.core.get_buffer())
            if count:
                with core_errors(self.description):
                    self.core.buffer_updated(count)
        except self._would_block:
            return None
        except ProtocolViolation as exc:  # an OSError too: before the socket's errors
            raise self._fail(exc, warn=True) from None
        except OSError as exc:
            raise self._lost(exc) from exc
        except BaseException:
            # An interrupt (Ctrl-C) that lands as the read returns loses the bytes it
            # took from the socket: nothing after them can be read any more.
            self._fail(ConnectionClosed(f"a read from {self.description} was cut short"))
            raise
        return count

    def _dispatch(self, event: Event) -> None:
        if type(event) is StreamDataReceived or type(event) is StreamItemsReceived:
            # the common cases, first and cheapest
            sink = self._sinks.get(event.serial)
            if sink is not None:
                sink(event)
            return
        if isinstance(event, ReplyReceived | ErrorReplyReceived):
            if event.serial in self._awaited:
                self._replies[event.serial] = event
            elif isinstance(event, ErrorReplyReceived):
                # The stream a failed call opened is gone with it.
                self._sinks.pop(event.serial, None)
        elif isinstance(event, PingReceived):
            self.pings_received += 1
            self._queue_pong()
        elif isinstance(event, PongReceived):
            pass
        elif isinstance(event, MessageReceived):
            log.debug("event %d from %s ignored", event.procedure, self.description)
        elif isinstance(event, FrameIgnored):
            log.debug("frame ignored (%s): %s", event.reason, event.header.describe())
        elif isinstance(
            event, StreamHoleReceived | StreamEndReceived | StreamFinished | StreamFailed
        ):
            sink = self._sinks.get(event.serial)
            if sink is not None:
                sink(event)
            if isinstance(event, StreamFinished | StreamFailed):
                self._sinks.pop(event.serial, None)
        else:  # pragma: no cover - server-side events never reach a client
            log.debug("unexpected event %r", event)

    def _queue_pong(self) -> None:
        """Queue a PONG, unless one waits already: a peer that sends PINGs without reading
        them would otherwise fill this process's memory with PONGs, one for each."""
        if self._queued_pong is None:
            self._queued_pong = self.core.send_pong()
            self._control.append(self._queued_pong)

    # -- keepalive ---------------------------------------------------------------------------

    def start_keepalive(self, interval: float, count: int) -> None:
        """Send PINGs after ``interval`` s of silence; give up after ``count`` unanswered."""
        if self._keepalive is None:
            self._keepalive = KeepaliveTracker(interval, count, time.monotonic())

    def _keep_alive(self) -> None:
        tracker = self._keepalive
        if tracker is None:
            return
        action = tracker.poll(time.monotonic())
        if action is KeepaliveAction.SEND_PING:
            log.debug("keepalive: ping %s", self.description)
            self.pings_sent += 1
            self._control.append(self.core.send_ping())
            if not self._writing:
                self.write(())
        elif action is KeepaliveAction.PEER_DEAD:
            raise self._fail(
                ConnectionClosed(
                    f"connection to {self.description} closed: no keepalive response "
                    f"within {tracker.interval * (tracker.count + 1):g} s"
                ),
                warn=True,
            )

    def attend(self) -> bool:
        """Handle what the peer sent meanwhile, without waiting (its PINGs answered, ours
        sent when it is silent), for a command that waits on something else: a FIFO's
        reader to come. True: go on waiting.

        Raises:
            TransportError: the connection failed.
        """
        self.receive(time.monotonic())
        return True

    def hold_reading(self) -> None:
        """Called while the command holds back reading (a FIFO whose reader is slow): the
        peer hears nothing from this end meanwhile and would drop it after its keepalive
        tolerance, so an unasked PONG goes every ``HOLD_PONG_INTERVAL`` (an answer to a
        PING could not be read); the peer's silence meanwhile is not held against it.
        Nothing on a connection without keepalive of its own (``keepalive=None``), which
        a libvirt client with keepalive off does not send either.
        """
        tracker = self._keepalive
        if tracker is None or self._failure is not None or self._writing:
            return
        if tracker.hold(time.monotonic()) is KeepaliveAction.SEND_PONG:
            log.debug("keepalive: pong %s while reading is held back", self.description)
            self._queue_pong()
            self.write(())

    # -- writing -------------------------------------------------------------------------------

    def write(self, parts: Sequence[Payload], *, stream: int | None = None) -> None:
        """Write ``parts`` (one frame, or none to flush waiting control frames) in order.

        While the socket is full, what the peer sends is read and handled. With
        ``stream``, the end of that stream meanwhile (the peer failed it) stops the
        write. Whatever stops a write before its last byte (that, keepalive, Ctrl-C)
        leaves the peer in the middle of a frame, where nothing else may follow: the
        connection is then marked failed.

        Raises:
            TransportError: the connection failed (or was cut by the stream's end).
        """
        self.check()
        self._writing = True
        try:
            # Byte-addressed parts: bytes as they are (a frame's head, a skip), any other
            # buffer as a view of bytes (its length then counts bytes, as sendmsg does).
            self._write_all(
                [
                    part if type(part) is bytes else memoryview(part).cast("B")
                    for part in parts
                    if len(part)
                ],
                stream,
            )
            while self._control:
                frame = self._control.popleft()
                if frame is self._queued_pong:
                    self._queued_pong = None
                self._write_all([frame], None)
        finally:
            self._writing = False

    def _write_all(self, views: list[bytes | memoryview], stream: int | None) -> None:
        first = 0  # views[first:] are still to go
        try:
            while first < len(views):
                parts = views[first : first + _IOV_MAX]
                wanted = select.POLLIN | select.POLLOUT
                try:
                    sent = self._send(parts)
                except self._would_block as exc:
                    sent = 0
                    if isinstance(exc, self._wants_read):
                        wanted = select.POLLIN  # TLS must read first: writable says nothing
                except OSError as exc:
                    raise self._lost(exc) from exc
                if sent == sum(map(len, parts)):  # all of them: no counting part by part
                    first += len(parts)
                    continue
                took = sent
                while first < len(views) and sent >= len(views[first]):
                    sent -= len(views[first])
                    first += 1
                if first == len(views):
                    return
                if sent:
                    views[first] = memoryview(views[first])[sent:]
                if took:
                    # The socket took some (over TLS, a part or a few at a time): it may
                    # take more at once.
                    continue
                self._wait_writable(stream, wanted)
        except BaseException:
            # Part of the frame may be out (an interrupt can land before ``sent`` is
            # known): an abort or a PONG written now would be read as its payload.
            self._fail(ConnectionClosed(f"a frame to {self.description} was cut short"))
            raise

    def _wait_writable(self, stream: int | None, wanted: int) -> None:
        if self._waiting():
            self._read()
        self._poller.modify(self._fd, wanted)
        try:
            ready = self._poller.poll(self._wait_ms(None))
        finally:
            self._poller.modify(self._fd, select.POLLIN)
        if any(mask & (select.POLLIN | select.POLLHUP | select.POLLERR) for _, mask in ready):
            self._read()
        if stream is not None and stream not in self._sinks:
            raise self._fail(
                ConnectionClosed(f"the stream was ended by {self.description} during a write")
            )
        self._keep_alive()
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError(f"{self.description} does not read in time")

    # -- the stream adapter: what direct_transfer's streams call ------------------------------

    def send_stream_data(self, serial: int, data: Payload, *, more: bool = False) -> None:
        """Send one data frame of stream ``serial``.

        With ``more``, the frame may wait to go out with the next ones in one system
        call (a fragmented image sends two small frames per extent): ``data``'s memory
        must then stay untouched until ``flush_stream``, or a call without ``more``,
        returns. Otherwise the frame, and any waiting before it, are with the kernel
        when this returns.

        Raises:
            LocalProtocolError: the stream cannot send data now.
            TransportError: the connection failed, or the peer ended the stream meanwhile.
        """
        self._send_stream(serial, self.core.send_data(serial, data), more)

    def send_stream_hole(self, serial: int, length: int, *, more: bool = False) -> None:
        """Send a hole of ``length`` bytes on stream ``serial`` (``more``: as for data)."""
        self._send_stream(serial, (self.core.send_hole(serial, length),), more)

    def send_stream_items(
        self, serial: int, items: Iterable[Payload | int], *, more: bool = False
    ) -> None:
        """Send data (buffers) and holes (lengths) of stream ``serial`` in order, as one
        batch of frames (``more``: as for data). Nothing goes out if an item is refused.

        Raises:
            LocalProtocolError: the stream cannot send one of them now.
            TransportError: the connection failed, or the peer ended the stream meanwhile.
        """
        self._send_stream(serial, self.core.send_stream_items(serial, items), more)

    def _send_stream(self, serial: int, parts: Sequence[Payload], more: bool) -> None:
        self._batch += parts
        if not more or len(self._batch) >= _IOV_MAX:
            self.flush_stream(serial)

    def flush_stream(self, serial: int) -> None:
        """Write the frames of stream ``serial`` that wait to go out."""
        batch, self._batch = self._batch, []
        if batch:
            self.write(batch, stream=serial)

    def finish_stream(self, serial: int) -> None:
        """Tell the peer that stream ``serial`` is complete (the answer comes to its sink)."""
        self.flush_stream(serial)
        self.write((self.core.send_finish(serial),))

    def abort_stream(self, serial: int) -> None:
        """Abort stream ``serial`` (the peer's confirmation comes to its sink); frames
        still waiting to go out are dropped, as the abort discards them anyway."""
        self._batch = []
        self.write((self.core.send_abort(serial),))

    # -- whole files --------------------------------------------------------------------------

    def file_transfers(self) -> FileTransfers:
        """``direct_transfer``, which moves whole files over this connection."""
        from virtvol.client import direct_transfer

        return direct_transfer

    # -- closing -------------------------------------------------------------------------------

    def close(self, *, drop_unsent: bool = False) -> None:
        """Close the socket; later calls raise ``ConnectionClosed``. (Every write has
        left once it returned: nothing is held to send, ``drop_unsent`` or not.)"""
        self._fail(ConnectionClosed("the connection is closed"))
        self._sock.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: ``close`` closed the socket."""


def _nothing_waits() -> int:
    return 0


def _tls_sender(sock: ssl.SSLSocket) -> Callable[[list[bytes | memoryview]], int]:
    """``sendmsg`` for a TLS socket: the first part alone when it is large, else the
    small parts that fit ``TLS_JOIN_MAX`` joined. A write the socket cannot take at once
    is retried with the same parts, so with the same bytes, as TLS requires."""

    def send(parts: list[bytes | memoryview]) -> int:
        first = parts[0]
        if len(first) >= TLS_JOIN_MAX or len(parts) == 1:
            return sock.send(first)
        size = count = 0
        for part in parts:
            if size + len(part) > TLS_JOIN_MAX:
                break
            size += len(part)
            count += 1
        return sock.send(b"".join(parts[:count]))

    return send
