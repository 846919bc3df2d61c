"""TLS for virtvold's ``tls://`` listeners, as libvirtd does it.

Theory of operation: a TLS listener accepts a plain TCP connection and runs
the handshake in a task of its own (``loop.connect_accepted_socket``), so that
a failed handshake gets a log line naming the peer and the reason. The
server asks for a client certificate; OpenSSL checks its chain, dates and revocation during the
handshake. Once the handshake is done the daemon checks what OpenSSL cannot:
that a certificate was presented at all and that its distinguished name
matches ``tls_allowed_dn_list``. Then, as libvirtd does, it sends one byte,
``\\x01``, inside TLS to tell the client it passed, and only then reads RPC
frames. A refused client gets no byte: the connection is dropped, which
libvirt's clients report as "Unable to read TLS confirmation".

Credentials are found where libvirt keeps them (``tlscreds``), DNs are
formatted and matched as libvirtd does (``distinguished_names``). ``TlsPolicy``
objects are immutable: SIGHUP builds a new one and new connections use it,
while running connections keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from virtvol.daemon.distinguished_names import (
    certificate_dn,
    compile_dn_patterns,
    dn_allowed,
)
from virtvol.daemon.tlscreds import (
    ServerCredentials,
    TlsFiles,
    TlsSetupError,
    locate_credentials,
    server_context,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["TlsFiles", "TlsListener", "TlsPolicy", "TlsSetupError"]

log = logging.getLogger("virtvol.daemon.tls")

LINGER = 5.0  # how long a client whose handshake failed gets to read our alert and hang up
# What the server sends inside TLS once the client's certificate passed its checks.
CONFIRMATION = b"\x01"


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """Everything a TLS listener needs to admit a client."""

    context: ssl.SSLContext
    verify_clients: bool
    allowed_dn_list: tuple[re.Pattern[str], ...] | None
    credentials: ServerCredentials

    @classmethod
    def load(cls, files: TlsFiles) -> TlsPolicy:
        creds = locate_credentials(files, privileged=os.geteuid() == 0, home=Path.home())
        verify = not files.no_verify_certificate
        allowed = files.allowed_dn_list
        return cls(
            server_context(creds, verify_clients=verify),
            verify,
            compile_dn_patterns(allowed) if allowed is not None else None,
            creds,
        )

    def admit(self, ssl_object: ssl.SSLObject | None) -> tuple[str | None, str | None]:
        """``(client DN or None, reason for refusal or None)`` after a finished handshake."""
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            # From the certificate's own bytes: what libvirt matches shows the string
            # types of the values, which the decoded form (getpeercert()) loses.
            dn = certificate_dn(der) if der else None
        except ValueError as exc:
            if self.verify_clients:
                return None, str(exc)
            dn = None
        if not self.verify_clients:
            return dn, None
        if dn is None:
            return None, "no client certificate was presented"
        if self.allowed_dn_list is not None and not dn_allowed(dn, self.allowed_dn_list):
            return dn, (
                f"client's distinguished name '{dn}' is not on the list of allowed clients"
                " (tls_allowed_dn_list)"
            )
        return dn, None


class ServedProtocol(Protocol):
    """The protocol that serves an admitted client (``connection.ClientConnection``)."""

    peer_identity: str | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...


class TlsGate(asyncio.Protocol):
    """The TLS transport's first protocol: admits the client, then hands over.

    asyncio calls ``connection_made`` as soon as the handshake is done and
    before any application data is read, so admission happens without a race:
    a refused client is dropped, an admitted one gets the confirmation byte and
    its transport is switched to the protocol that serves it.
    """

    def __init__(
        self,
        policy: TlsPolicy,
        connection: ServedProtocol,
        peer: str,
        handshake_over: Callable[[], None],
    ) -> None:
        self._policy = policy
        self._connection = connection
        self._peer = peer
        self._handshake_over = handshake_over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = cast("asyncio.Transport", transport)
        # Counted as a handshake no more before admission counts it as a connection.
        self._handshake_over()
        dn, refusal = self._policy.admit(tls.get_extra_info("ssl_object"))
        if refusal is not None:
            log.warning("%s: TLS client refused: %s", self._peer, refusal)
            # No confirmation byte and no close_notify: libvirtd drops the socket too.
            tls.abort()
            return
        tls.write(CONFIRMATION)
        identity = f"DN '{dn}'" if dn else "TLS without a client certificate check"
        self._connection.peer_identity = identity
        tls.set_protocol(cast("asyncio.BaseProtocol", self._connection))
        self._connection.connection_made(tls)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - never before handover
        pass


@dataclass(slots=True)
class _Accepted:
    """An accepted socket until its transport owns it."""

    sock: socket.socket
    handed_over: bool = False

    def done(self, task: asyncio.Task[None]) -> None:
        # A handshake that failed or was cancelled (even before it started) must not
        # leave the socket open; once a transport owns it, the transport closes it.
        if not self.handed_over:
            self.sock.close()


class TlsListener:
    """Accepts connections on a listening socket and runs each one's TLS handshake.

    The handshake runs in its own task (``connect_accepted_socket``) so that a
    failure is logged with the peer and the reason; asyncio's own TLS servers
    drop such connections silently.
    """

    def __init__(
        self,
        sock: socket.socket,
        policy: Callable[[], TlsPolicy],
        make_connection: Callable[[], ServedProtocol],
        *,
        in_progress: set[asyncio.Task[None]],
        refusal: Callable[[], str | None],
        handshake_timeout: float,
        refused: Callable[[str, str], None],
    ) -> None:
        self._sock = sock
        self._policy = policy
        self._make_connection = make_connection
        # Connections still in their handshake are no connections yet (admission sees
        # them once handed over), but they count as such, as libvirtd counts them, and
        # each holds descriptors: ``refusal`` (counting the handshakes of every listener,
        # ``in_progress``) says whether one more may start.
        self._in_progress = in_progress
        self._refusal = refusal
        # handshake_timeout: the TLS handshake gets as long as a client has for CONNECT_OPEN
        # afterwards, so a peer that never finishes it holds its place no longer.
        self._handshake_timeout = handshake_timeout
        self._refused = refused
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, address = await loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE and friends: wait a little, keep serving
                log.error("accepting a TLS connection failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            refusal = self._refusal()
            if refusal is not None:
                client.close()
                self._refused(_describe_address(address), refusal)
                continue
            accepted = _Accepted(client)
            task = loop.create_task(self._handshake(accepted, _describe_address(address)))
            self._handshakes.add(task)
            self._in_progress.add(task)
            task.add_done_callback(accepted.done)
            task.add_done_callback(self._handshakes.discard)
            task.add_done_callback(self._in_progress.discard)

    async def _handshake(self, accepted: _Accepted, peer: str) -> None:
        loop = asyncio.get_running_loop()
        policy = self._policy()
        connection = self._make_connection()
        client = accepted.sock
        # A second handle on the socket: asyncio closes its own when the handshake
        # fails, maybe with the client's last records unread, and a close with unread
        # data sends a reset that can kill the client (SIGPIPE) before it reads our alert.
        spare = client.dup()
        this_handshake = asyncio.current_task()
        assert this_handshake is not None

        def handshake_over() -> None:
            self._in_progress.discard(this_handshake)

        try:
            await loop.connect_accepted_socket(
                lambda: TlsGate(policy, connection, peer, handshake_over),
                client,
                ssl=policy.context,
                ssl_handshake_timeout=self._handshake_timeout,
            )
            accepted.handed_over = True
        except (OSError, TimeoutError) as exc:
            log.warning("%s: TLS handshake failed: %s", peer, _reason(exc, self._handshake_timeout))
            client.close()
            await _linger(spare)
        finally:  # also when the daemon stops in the middle (cancelled)
            spare.close()

    def close(self) -> None:
        """Stop accepting and abandon unfinished handshakes."""
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._accepting, *self._handshakes) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


async def _linger(sock: socket.socket) -> None:
    """Hang up our side, then read and drop what the refused client still sends until it
    hangs up too (5 s at most)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        sock.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER):
            while await loop.sock_recv(sock, 65536):
                pass
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()


def _describe_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return "client"


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        verify = getattr(exc, "verify_message", None)
        if verify:
            return f"client certificate refused: {verify} ({exc.reason})"
        if exc.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
            return f"the client does not speak TLS ({exc.reason})"
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return f"no handshake within {timeout:g} s"
    return str(exc) or type(exc).__name__
