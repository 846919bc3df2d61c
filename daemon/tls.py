"""TLS for virtvold's ``tls://`` listeners, as libvirtd does it.

Theory of operation: a TLS listener accepts a plain TCP connection and runs
the handshake in a task of its own (``loop.connect_accepted_socket``), so that
a failed handshake gets a log line naming the peer and the reason. The server asks for a client
certificate; OpenSSL checks its chain, dates and revocation during the
handshake. Once the handshake is done the daemon checks what OpenSSL cannot:
that a certificate was presented at all and that its distinguished name
matches ``tls_allowed_dn_list``. Then, as libvirtd does, it sends one byte,
``\\x01``, inside TLS to tell the client it passed, and only then reads RPC
frames. A refused client gets no byte: the connection is dropped, which
libvirt's clients report as "Unable to read TLS confirmation".

Credentials are found where libvirt keeps them (see ``locate_credentials``);
libvirtd.conf's ``ca_file``, ``cert_file``, ``key_file`` and ``crl_file``
override them. ``TlsPolicy`` objects are immutable: SIGHUP builds a new one
and new connections use it, while running connections keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

log = logging.getLogger("virtvol.daemon.tls")

# libvirt's system-wide PKI locations.
SYSTEM_CA_FILE = "/etc/pki/CA/cacert.pem"
SYSTEM_CRL_FILE = "/etc/pki/CA/cacrl.pem"
SYSTEM_SERVER_CERT = "/etc/pki/libvirt/servercert.pem"
SYSTEM_SERVER_KEY = "/etc/pki/libvirt/private/serverkey.pem"
# The per-user directory an unprivileged daemon looks in first (under $HOME).
USER_PKI_DIR = Path(".pki") / "libvirt"

HANDSHAKE_TIMEOUT = 30.0
LINGER = 5.0  # how long a client whose handshake failed gets to read our alert and hang up
# What the server sends inside TLS once the client's certificate passed its checks.
CONFIRMATION = b"\x01"

# gnutls's short names for the attributes of a distinguished name; libvirt
# matches tls_allowed_dn_list against the DN as gnutls_x509_crt_get_dn prints it.
_DN_SHORT_NAMES = {
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "commonName": "CN",
    "emailAddress": "EMAIL",
    "domainComponent": "DC",
    "userId": "UID",
    "streetAddress": "street",
    "title": "title",
    "givenName": "givenName",
    "surname": "surName",
    "serialNumber": "serialNumber",
    "postalCode": "postalCode",
}
_DN_SPECIALS = frozenset(',+"\\<>;=')


class TlsSetupError(ValueError):
    """TLS credentials that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """libvirtd.conf's TLS settings (empty strings: "use libvirt's locations")."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    crl_file: str = ""
    no_verify_certificate: bool = False
    allowed_dn_list: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ServerCredentials:
    ca_file: str
    cert_file: str
    key_file: str
    crl_file: str | None  # None: no revocation list


def locate_credentials(files: TlsFiles, *, privileged: bool, home: Path) -> ServerCredentials:
    """The CA, certificate, key and CRL files the server uses, chosen as libvirtd does.

    Explicit ``ca_file``/``cert_file``/``key_file`` are used together (all three
    needed). Otherwise an unprivileged daemon takes the CA certificate, the CRL
    and the certificate+key pair from ``~/.pki/libvirt`` where they exist, and
    everything else from the system locations. An explicit ``crl_file`` must
    exist; the default one is used only when present.
    """
    if files.ca_file or files.cert_file or files.key_file:
        missing = [
            name
            for name, value in (
                ("ca_file", files.ca_file),
                ("cert_file", files.cert_file),
                ("key_file", files.key_file),
            )
            if not value
        ]
        if missing:
            raise TlsSetupError(
                f"{', '.join(missing)} must be set too when any of ca_file, cert_file,"
                " key_file is set"
            )
        return ServerCredentials(
            files.ca_file, files.cert_file, files.key_file, files.crl_file or None
        )
    ca, cert, key = SYSTEM_CA_FILE, SYSTEM_SERVER_CERT, SYSTEM_SERVER_KEY
    crl: str | None = files.crl_file or None
    default_crl = SYSTEM_CRL_FILE
    if not privileged:
        user_dir = home / USER_PKI_DIR
        if (user_dir / "cacert.pem").exists():
            ca = str(user_dir / "cacert.pem")
        if (user_dir / "cacrl.pem").exists():
            default_crl = str(user_dir / "cacrl.pem")
        if (user_dir / "servercert.pem").exists() and (user_dir / "serverkey.pem").exists():
            cert, key = str(user_dir / "servercert.pem"), str(user_dir / "serverkey.pem")
    if crl is None and os.path.exists(default_crl):
        crl = default_crl
    return ServerCredentials(ca, cert, key, crl)


def _check_readable(kind: str, path: str) -> None:
    if not os.access(path, os.R_OK):
        reason = "No such file or directory" if not os.path.exists(path) else "Permission denied"
        raise TlsSetupError(f"Cannot read {kind} '{path}': {reason}")


def server_context(creds: ServerCredentials, *, verify_clients: bool) -> ssl.SSLContext:
    """An SSL context that presents the server certificate and asks for the client's.

    With ``verify_clients`` the client's chain must lead to the CA, be in date
    and (with a CRL) not be revoked, or the handshake fails. Without it (libvirtd's
    ``tls_no_verify_certificate``) no client certificate is asked for.
    """
    _check_readable("CA certificate", creds.ca_file)
    _check_readable("certificate", creds.cert_file)
    _check_readable("private key", creds.key_file)
    if creds.crl_file is not None:
        _check_readable("CA revocation list", creds.crl_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets: libvirt's clients wait for the confirmation byte
    # and take a ticket arriving alone as "no data yet", failing with EAGAIN.
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    try:
        context.load_cert_chain(creds.cert_file, creds.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(
            f"Unable to load server certificate {creds.cert_file} and key {creds.key_file}: {exc}"
        ) from None
    try:
        context.load_verify_locations(cafile=creds.ca_file)
        if creds.crl_file is not None:
            context.load_verify_locations(cafile=creds.crl_file)
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"Unable to load CA certificate or revocation list: {exc}") from None
    # CERT_OPTIONAL: a client without a certificate completes the handshake and
    # is refused afterwards with a clear reason; a bad certificate fails the handshake.
    context.verify_mode = ssl.CERT_OPTIONAL if verify_clients else ssl.CERT_NONE
    return context


SubjectName = tuple[tuple[tuple[str, str], ...], ...]


def _escape_dn_value(value: str) -> str:
    escaped = "".join(f"\\{ch}" if ch in _DN_SPECIALS else ch for ch in value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def distinguished_name(subject: SubjectName) -> str:
    """The subject as libvirt prints it, e.g. ``C=GB,ST=London,L=London,O=Red Hat,CN=client``.

    Attributes come in certificate order (country first in the usual layout),
    separated by commas, multi-valued RDNs joined with ``+``.
    """
    parts = []
    for rdn in subject:
        parts.append(
            "+".join(
                f"{_DN_SHORT_NAMES.get(name, name)}={_escape_dn_value(value)}"
                for name, value in rdn
            )
        )
    return ",".join(parts)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """fnmatch(3) without flags, as libvirtd uses it: ``*``, ``?``, ``[...]`` (``[!...]``),
    and a backslash that makes the next character literal."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "\\" and i < len(pattern):
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif (
            ch == "[" and (end := pattern.find("]", i + 1 if pattern[i : i + 1] in "!]" else i)) > 0
        ):
            body = pattern[i:end]
            negate = body.startswith(("!", "^"))
            body = body[1:] if negate else body
            members = "".join(c if c == "-" else re.escape(c) for c in body)
            out.append(f"[{'^' if negate else ''}{members}]")
            i = end + 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def compile_dn_patterns(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    """The patterns of ``tls_allowed_dn_list``, checked once.

    Raises:
        TlsSetupError: a pattern cannot be used (a range such as ``[z-a]``).
    """
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(_pattern_regex(pattern))
        except re.error as exc:
            raise TlsSetupError(
                f"malformed tls_allowed_dn_list pattern {pattern!r}: {exc}"
            ) from None
    return tuple(compiled)


def dn_allowed(dn: str, patterns: Sequence[str | re.Pattern[str]]) -> bool:
    """True when ``dn`` matches one of the shell-style patterns as a whole."""
    return any((_pattern_regex(p) if isinstance(p, str) else p).fullmatch(dn) for p in patterns)


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
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        subject = cert.get("subject") if cert else None
        dn = distinguished_name(subject) if subject else None  # type: ignore[arg-type]
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

    def __init__(self, policy: TlsPolicy, connection: ServedProtocol, peer: str) -> None:
        self._policy = policy
        self._connection = connection
        self._peer = peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = cast(asyncio.Transport, transport)
        dn, refusal = self._policy.admit(tls.get_extra_info("ssl_object"))
        if refusal is not None:
            log.warning("%s: TLS client refused: %s", self._peer, refusal)
            # No confirmation byte and no close_notify: libvirtd drops the socket too.
            tls.abort()
            return
        tls.write(CONFIRMATION)
        identity = f"DN '{dn}'" if dn else "TLS without a client certificate check"
        self._connection.peer_identity = identity
        tls.set_protocol(cast(asyncio.BaseProtocol, self._connection))
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
    ) -> None:
        self._sock = sock
        self._policy = policy
        self._make_connection = make_connection
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
            accepted = _Accepted(client)
            task = loop.create_task(self._handshake(accepted, _describe_address(address)))
            self._handshakes.add(task)
            task.add_done_callback(accepted.done)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, accepted: _Accepted, peer: str) -> None:
        loop = asyncio.get_running_loop()
        policy = self._policy()
        connection = self._make_connection()
        client = accepted.sock
        # A second handle on the socket: asyncio closes its own when the handshake
        # fails, maybe with the client's last records unread, and a close with unread
        # data sends a reset that can kill the client (SIGPIPE) before it reads our alert.
        spare = client.dup()
        try:
            await loop.connect_accepted_socket(
                lambda: TlsGate(policy, connection, peer),
                client,
                ssl=policy.context,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
            accepted.handed_over = True
        except (OSError, TimeoutError) as exc:
            log.warning("%s: TLS handshake failed: %s", peer, _reason(exc))
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        verify = getattr(exc, "verify_message", None)
        if verify:
            return f"client certificate refused: {verify} ({exc.reason})"
        if exc.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
            return f"the client does not speak TLS ({exc.reason})"
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return f"no handshake within {HANDSHAKE_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__
