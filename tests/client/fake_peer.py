"""A scripted libvirt peer for the blocking client's failure paths.

``FakePeer`` listens on a Unix socket, accepts one connection and serves it in
a thread with the protocol core (``Side.SERVER``): it answers the handshake and
the goodbye by itself and hands every other call to a handler the test sets
(``handlers[procedure] = fn(peer, event)``). It keeps every byte the client sent
(``received``) and every event they made (``events``), calls ``on_data`` for
each data frame of an upload; it answers the client's
PINGs with PONGs unless ``silent``, confirms finishes and aborts (unless
``on_stream_end`` says otherwise), and can stop
reading (``stop_reading``: the client's socket fills up) or hang up (``hang_up``).
With ``tls`` it listens on 127.0.0.1 instead and serves libvirt's TLS transport (the
handshake, then the confirmation byte) with that ``Pki``'s server certificate; ``uri``
names the client folder to connect with. Only the serving thread reads and writes the
TLS socket while it serves: ``later`` actions may write only while the peer does not
read (``stop_reading``).
Data frames of an upload are counted (``data_bytes``), not kept. Helpers send
frames as a handler needs them: ``reply``, ``send``, and the core (``core``).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import TYPE_CHECKING

from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    CallReceived,
    Connection,
    Event,
    PingReceived,
    Side,
    StreamAbortReceived,
    StreamDataReceived,
    StreamFinishReceived,
)
from virtvol.protocol.constants import AuthType, DriverFeature
from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.protocol.exceptions import ProtocolError
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from types import TracebackType

    from tests.tlsca import Pki
    from virtvol.protocol.xdr import XdrStruct

POOL = "default"
VOLUME = r.StorageVol(pool=POOL, name="vol", key="/pool/vol")


def storage_error(code: ErrorCode, message: str) -> r.RemoteError:
    """A storage driver's refusal, as libvirtd words them (level: error)."""
    return r.RemoteError(code=code, domain=ErrorDomain.STORAGE, message=message, level=2)


def stream_error(message: str) -> r.RemoteError:
    """A storage error as the peer reports it on a stream."""
    return r.RemoteError(
        code=ErrorCode.INTERNAL_ERROR,
        domain=ErrorDomain.STORAGE,
        message=message,
        level=2,
    )


class FakePeer:
    """See the module docstring. Use it as a context manager (it stops on leaving)."""

    def __init__(self, folder: Path, *, keepalive: bool = False, tls: Pki | None = None) -> None:
        self.path = folder / "peer-sock"
        self.uri = f"storage+unix:///system?socket={self.path}"
        self._tls: ssl.SSLContext | None = None
        self.core = Connection(Side.SERVER)
        self.keepalive = keepalive
        self.handlers: dict[int, Callable[[FakePeer, CallReceived], None]] = {}
        self.on_data: Callable[[FakePeer, StreamDataReceived], None] | None = None
        # The client's finish or abort (default: confirmed).
        self.on_stream_end: (
            Callable[[FakePeer, StreamFinishReceived | StreamAbortReceived], None] | None
        ) = None
        self.received = bytearray()
        self.events: list[Event] = []
        self.calls: list[int] = []
        self.data_bytes = 0
        self.protocol_error: ProtocolError | None = None
        self.silent = False  # neither answers calls nor PINGs (still reads)
        self.hung_up = threading.Event()  # the client's side closed, or we hung up
        self._reading = threading.Event()
        self._reading.set()
        self._stopping = threading.Event()
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        # The core is used by the serving thread and by delayed actions (``later``).
        self.core_lock = threading.RLock()
        self._timers: list[threading.Timer] = []
        if tls is None:
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(self.path))
        else:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(tls.server / "servercert.pem", tls.server / "serverkey.pem")
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # A small receive buffer (TCP would grow it to megabytes): a peer that stops
            # reading makes the client's writes wait soon, as a Unix socket does.
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            self._listener.bind(("127.0.0.1", 0))
            port = self._listener.getsockname()[1]
            client = tls.client_dir("client")
            self.uri = f"storage+tls://127.0.0.1:{port}/system?pkipath={client}"
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- what handlers and tests use ---------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write bytes to the client (whole)."""
        assert self._conn is not None
        with self._send_lock:
            self._conn.sendall(data)

    def reply(self, serial: int, result: XdrStruct | None = None) -> None:
        with self.core_lock:
            self.send(self.core.reply(serial, result))

    def refuse(self, serial: int, error: r.RemoteError) -> None:
        """Answer call ``serial`` with ``error``."""
        with self.core_lock:
            self.send(self.core.reply_error(serial, error))

    def later(self, delay: float, action: Callable[..., object], *args: object) -> None:
        """Run ``action(*args)`` in ``delay`` seconds (unless the peer stopped by then; a
        client that left meanwhile is no error)."""

        def run() -> None:
            with contextlib.suppress(OSError):
                action(*args)

        timer = threading.Timer(delay, run)
        self._timers.append(timer)
        timer.start()

    def stop_reading(self) -> None:
        """Read nothing more until ``resume_reading``: the client's writes fill the socket."""
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def hang_up(self) -> None:
        """Close the connection (the client sees the end of its stream)."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
        self.hung_up.set()

    def go_away(self) -> None:
        """Hang up and take no more connections, as a daemon that stopped: a client's next
        connection is refused."""
        self._listener.close()
        self.hang_up()

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
            timer.join(10)
        self._stopping.set()
        self._reading.set()
        self.hang_up()
        self._listener.close()
        self._thread.join(10)
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> FakePeer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the serving thread ---------------------------------------------------------------

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
                conn.sendall(b"\x01")  # libvirt's confirmation byte
        except OSError:
            return
        self._conn = conn
        try:
            while not self._stopping.is_set():
                self._reading.wait()
                if self._stopping.is_set() or self.hung_up.is_set():
                    break
                try:
                    data = conn.recv(1 << 20)
                except OSError:
                    break
                if not data:
                    break
                self.received += data
                try:
                    with self.core_lock:
                        self.core.receive_data(data)
                        for event in self.core.events():
                            self.events.append(event)
                            self._handle(event)
                except ProtocolError as exc:
                    self.protocol_error = exc
                    break
        finally:
            self.hung_up.set()

    def _handle(self, event: Event) -> None:
        if isinstance(event, StreamDataReceived):
            self.data_bytes += len(event.data)
            if self.on_data is not None:
                self.on_data(self, event)
            return
        if self.silent:
            return
        if isinstance(event, PingReceived):
            self.send(self.core.send_pong())
        elif isinstance(event, StreamFinishReceived | StreamAbortReceived):
            if self.on_stream_end is not None:
                self.on_stream_end(self, event)
            else:
                self.send(self.core.send_finish_ack(event.serial))
        elif isinstance(event, CallReceived):
            number = event.procedure.number
            self.calls.append(number)
            handler = self.handlers.get(number)
            if handler is not None:
                handler(self, event)
            else:
                self.reply(event.serial, self._standard_answer(event))

    def _standard_answer(self, event: CallReceived) -> XdrStruct | None:
        number = event.procedure.number
        if number == Proc.AUTH_LIST:
            return r.AuthListRet(types=(AuthType.NONE,))
        if number == Proc.CONNECT_SUPPORTS_FEATURE:
            assert isinstance(event.args, r.ConnectSupportsFeatureArgs)
            supported = {DriverFeature.REMOTE_CLOSE_CALLBACK}
            if self.keepalive:
                supported.add(DriverFeature.PROGRAM_KEEPALIVE)
            return r.ConnectSupportsFeatureRet(supported=int(event.args.feature in supported))
        if number == Proc.CONNECT_GET_TYPE:
            return r.ConnectGetTypeRet(type="storage")
        if number == Proc.STORAGE_VOL_GET_INFO:
            # An empty volume: an upload may skip its holes (transfer_base).
            return r.VolGetInfoRet(type=0, capacity=1 << 30, allocation=0)
        if number in (
            Proc.CONNECT_OPEN,
            Proc.CONNECT_CLOSE,
            Proc.CONNECT_REGISTER_CLOSE_CALLBACK,
            Proc.CONNECT_UNREGISTER_CLOSE_CALLBACK,
        ):
            return None
        raise AssertionError(f"the fake peer has no answer to procedure {number}")
