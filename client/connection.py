"""Opening a connection (``connect``) and the ``Connection`` object.

The handshake is the one virsh performs, so that a libvirt daemon sees a
familiar client: AUTH_LIST, CONNECT_SUPPORTS_FEATURE(10) (keepalive; the only
feature a daemon answers before the open), CONNECT_OPEN with the URI's name,
then features 14 and 15 and, if 15 is supported, REGISTER_CLOSE_CALLBACK. An
error answer to a feature question means "not supported", as in libvirt.
"""

from __future__ import annotations

# The C module, not socket.py, whose import turns the C module's constants into
# enums (~3 ms of every command); the constants are the same.
import _socket
import errno
import os
import time

from virtvol.client.errors import (
    LibvirtError,
    NoSupport,
    TransportError,
    UnsupportedTransport,
    VirtvolError,
)
from virtvol.client.log import log
from virtvol.client.objects import StoragePool, StorageVolume
from virtvol.client.uri import SUPPORTED_TRANSPORTS, Target, parse_uri, resolve_uri
from virtvol.protocol import procedures
from virtvol.protocol import remote as r
from virtvol.protocol.constants import AuthType, DriverFeature
from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    import socket
    import ssl
    import uuid as uuidlib
    from collections.abc import Coroutine, Generator
    from types import TracebackType
    from typing import Any, Self

    from virtvol.client.interfaces import CallEngine
    from virtvol.client.rpc import RpcProtocol
    from virtvol.protocol.constants import ProtocolMode
else:

    def __getattr__(name: str) -> object:
        # ProtocolMode, exported here, is made on first use (virtvol.protocol.constants).
        if name == "ProtocolMode":
            from virtvol.protocol import constants

            return constants.ProtocolMode
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_KEEPALIVE", "Connection", "PendingConnection", "ProtocolMode", "connect"]

# (interval, count) of a connection that asks for nothing else: libvirt's client's.
DEFAULT_KEEPALIVE: tuple[float, int] = (5, 5)


# Seconds the goodbye calls may take together before the connection is closed anyway.
_GOODBYE_TIMEOUT = 5
# The goodbye of a connection left by an interruption (Ctrl-C, a signal that ends the
# command, a cancelled task): a daemon that stopped answering, often the reason for the
# interruption, must not hold the exit for long.
GOODBYE_TIMEOUT_INTERRUPTED = 1.0
# The send buffer of a Unix socket to the daemon, which uploads fill. Linux gives a Unix
# stream socket ~208 KiB (net.core.wmem_default); with 1 MiB (the kernel books twice
# that), one process moved 1 GiB to another in 0.21 s instead of 0.32 s
# (docs/performance.md). The kernel caps it at net.core.wmem_max.
UNIX_SEND_BUFFER = 1 << 20


def widen_unix_send_buffer(sock: _socket.socket) -> None:
    """Give ``sock``, a Unix stream socket, ``UNIX_SEND_BUFFER``."""
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, UNIX_SEND_BUFFER)


def set_no_delay(sock: _socket.socket) -> None:
    """Set TCP_NODELAY on ``sock``, a connected TCP socket (a call is a small write that
    waits for its answer); close ``sock`` if that fails."""
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise


def resolver_name(target: Target) -> bytes:
    """The host name as it goes to the resolver: bytes, as libvirt passes it. As text, it
    would first be IDNA-encoded, and that codec's import (with re) is ~4 ms of a command
    (and refuses names such as "a..b" before any lookup)."""
    assert target.host is not None
    return target.host.encode("utf-8", "surrogateescape")


class Connection:
    """An open connection to a libvirt-compatible storage daemon.

    Create it with ``await connect(uri)`` or ``async with connect(uri) as conn``.
    Many calls may run at once on one connection (``asyncio.gather``). Every
    call takes a keyword-only ``timeout`` (seconds; None waits as long as the
    connection lives): ``CallTimeout`` then, and the connection stays usable.

    Attributes:
        uri: the URI it was opened with.
        target: where it connected, as parsed from the URI.
        protocol: ``"current"`` or ``"legacy"`` (acts as a client that predates sparse streams).
        sparse_fallback_reported: True once a stream on this connection fell back to
            dense and the warning was logged (it is logged once per connection).
    """

    def __init__(self, rpc: CallEngine, target: Target, protocol: ProtocolMode) -> None:
        # The wire machinery; internal, used by the pool, volume and stream handles.
        self._rpc = rpc
        self.target = target
        self.uri = target.uri
        self.protocol: ProtocolMode = protocol
        self.keepalive_supported = False
        self.sparse_fallback_reported = False
        self.upload_skips_leave_zeros: bool | None = None
        self._close_callback = False
        self._closed = False

    # -- lifetime ------------------------------------------------------------------------

    async def _handshake(self, keepalive: tuple[float, int] | None) -> None:
        try:
            auth = await self._rpc.call(procedures.AUTH_LIST)
            methods = auth.types
        except NoSupport:
            methods = ()
        if methods and AuthType.NONE not in methods:
            names = ", ".join(AuthType(m).name.lower() for m in methods)
            raise VirtvolError(f"the server requires authentication ({names}), not supported")
        self.keepalive_supported = await self.supports_feature(DriverFeature.PROGRAM_KEEPALIVE)
        await self._rpc.call(
            procedures.CONNECT_OPEN,
            r.ConnectOpenArgs(name=self.target.open_name, flags=self.target.open_flags),
        )
        await self.supports_feature(DriverFeature.REMOTE_EVENT_CALLBACK)
        if await self.supports_feature(DriverFeature.REMOTE_CLOSE_CALLBACK):
            await self._rpc.call(procedures.CONNECT_REGISTER_CLOSE_CALLBACK)
            self._close_callback = True
        if keepalive is not None and keepalive[0] > 0 and self.keepalive_supported:
            self._rpc.start_keepalive(keepalive[0], keepalive[1])

    async def close(self, *, timeout: float | None = None) -> None:
        """Say goodbye as virsh does (UNREGISTER_CLOSE_CALLBACK, CONNECT_CLOSE) and close.

        Safe to call more than once, from several tasks at once, and on a broken
        connection; each call returns once the connection is closed.

        Args:
            timeout: seconds the goodbye may take (None: 5; leaving ``async with`` by a
                cancellation or Ctrl-C: 1); the connection is closed all the same.
        """
        if self._closed:
            # Another close may still be saying goodbye: this one returns once it closed.
            await self._rpc.wait_closed()
            return
        self._closed = True
        answered = False
        try:
            if self._rpc.failure is None:
                answered = await self._say_goodbye(_GOODBYE_TIMEOUT if timeout is None else timeout)
        finally:
            # Cancelled during the goodbye, the connection is closed all the same: nothing
            # else would close it (a second close returns at once). A peer that did not
            # answer may read nothing more: what it has not read is dropped, or the close
            # would wait for it forever (an answer means it read all we sent before).
            self._rpc.close(drop_unsent=not answered)
        await self._rpc.wait_closed()

    async def _say_goodbye(self, timeout: float) -> bool:
        """Whether the peer answered the goodbye."""
        try:
            deadline = time.monotonic() + timeout
            if self._close_callback:
                await self._rpc.call(procedures.CONNECT_UNREGISTER_CLOSE_CALLBACK, timeout=timeout)
            left = max(0.0, deadline - time.monotonic())
            await self._rpc.call(procedures.CONNECT_CLOSE, timeout=left)
        except LibvirtError as exc:
            log.debug("close of %s: %s", self.uri, exc)
            return True
        except (TransportError, TimeoutError) as exc:
            log.debug("close of %s: %s", self.uri, exc)
            return False
        return True

    @property
    def is_alive(self) -> bool:
        """False once the connection failed or was closed."""
        return not self._closed and self._rpc.failure is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        interrupted = exc is not None and not isinstance(exc, Exception)
        await self.close(timeout=GOODBYE_TIMEOUT_INTERRUPTED if interrupted else None)

    # -- connection-level calls ----------------------------------------------------------

    async def supports_feature(self, feature: int, *, timeout: float | None = None) -> bool:
        """Ask CONNECT_SUPPORTS_FEATURE; an error answer means False (libvirt's rule)."""
        try:
            ret = await self._rpc.call(
                procedures.CONNECT_SUPPORTS_FEATURE,
                r.ConnectSupportsFeatureArgs(feature),
                timeout=timeout,
            )
        except LibvirtError:
            return False
        return ret.supported == 1

    async def lib_version(self, *, timeout: float | None = None) -> int:
        """The daemon's library version (major * 1000000 + minor * 1000 + micro)."""
        ret = await self._rpc.call(procedures.CONNECT_GET_LIB_VERSION, timeout=timeout)
        return ret.lib_ver

    async def get_type(self, *, timeout: float | None = None) -> str:
        """The driver name (e.g. ``"storage"``)."""
        return (await self._rpc.call(procedures.CONNECT_GET_TYPE, timeout=timeout)).type

    # -- pools ---------------------------------------------------------------------------

    def _pool(self, pool: r.StoragePool) -> StoragePool:
        return StoragePool(self, pool.name, pool.uuid)

    async def list_pools(
        self, *, flags: int = 0, timeout: float | None = None
    ) -> list[StoragePool]:
        """All pools matching libvirt's CONNECT_LIST_ALL_STORAGE_POOLS ``flags``
        (0: every pool), sorted by name."""
        ret = await self._rpc.call(
            procedures.CONNECT_LIST_ALL_STORAGE_POOLS,
            r.ListAllPoolsArgs(need_results=1, flags=flags),
            timeout=timeout,
        )
        return sorted((self._pool(p) for p in ret.pools), key=lambda p: p.name)

    async def lookup_pool_by_name(self, name: str, *, timeout: float | None = None) -> StoragePool:
        """The pool called ``name``.

        Raises:
            NoStoragePool: no such pool.
        """
        ret = await self._rpc.call(
            procedures.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name), timeout=timeout
        )
        return self._pool(ret.pool)

    async def lookup_pool_by_uuid(
        self, uuid: str | bytes | uuidlib.UUID, *, timeout: float | None = None
    ) -> StoragePool:
        """The pool with that UUID (text, 16 raw bytes, or ``uuid.UUID``).

        Raises:
            NoStoragePool: no such pool.
        """
        if isinstance(uuid, bytes):
            raw = uuid
        elif isinstance(uuid, str):
            import uuid as uuidlib  # here: it costs every command ~2 ms to import

            raw = uuidlib.UUID(uuid).bytes
        else:
            raw = uuid.bytes
        ret = await self._rpc.call(
            procedures.STORAGE_POOL_LOOKUP_BY_UUID, r.LookupByUuidArgs(raw), timeout=timeout
        )
        return self._pool(ret.pool)

    async def define_pool(
        self, xml: str, *, flags: int = 0, timeout: float | None = None
    ) -> StoragePool:
        """Define a persistent pool from its XML (it stays inactive until started)."""
        ret = await self._rpc.call(
            procedures.STORAGE_POOL_DEFINE_XML, r.PoolXmlArgs(xml, flags), timeout=timeout
        )
        return self._pool(ret.pool)

    async def create_pool(
        self, xml: str, *, flags: int = 0, timeout: float | None = None
    ) -> StoragePool:
        """Create and start a transient pool from its XML."""
        ret = await self._rpc.call(
            procedures.STORAGE_POOL_CREATE_XML, r.PoolXmlArgs(xml, flags), timeout=timeout
        )
        return self._pool(ret.pool)

    async def storage_pool_capabilities(self, *, timeout: float | None = None) -> str:
        """The ``<storagepoolCapabilities>`` XML: which pool types the daemon supports,
        with their source and volume formats."""
        ret = await self._rpc.call(
            procedures.CONNECT_GET_STORAGE_POOL_CAPABILITIES,
            r.StoragePoolCapabilitiesArgs(0),
            timeout=timeout,
        )
        return ret.capabilities

    async def find_storage_pool_sources(
        self, pool_type: str, *, src_spec: str | None = None, timeout: float | None = None
    ) -> str:
        """The ``<sources>`` XML of the storage a pool of ``pool_type`` could use (the
        NFS exports of a host, the volume groups on the host...).

        Args:
            pool_type: e.g. ``"netfs"``, ``"logical"``.
            src_spec: a ``<source>`` XML saying where to look (a host, a port...).

        Raises:
            NoSupport: the pool type cannot discover its sources (``dir``).
        """
        ret = await self._rpc.call(
            procedures.CONNECT_FIND_STORAGE_POOL_SOURCES,
            r.FindPoolSourcesArgs(pool_type, src_spec, 0),
            timeout=timeout,
        )
        return ret.xml

    # -- volumes by key or path ------------------------------------------------------------

    async def lookup_volume_by_key(
        self, key: str, *, timeout: float | None = None
    ) -> StorageVolume:
        """The volume with that key (for dir pools, its path).

        Raises:
            NoStorageVolume: no such volume.
        """
        ret = await self._rpc.call(
            procedures.STORAGE_VOL_LOOKUP_BY_KEY, r.VolLookupByKeyArgs(key), timeout=timeout
        )
        return StorageVolume.from_wire(self, ret.vol)

    async def lookup_volume_by_path(
        self, path: str, *, timeout: float | None = None
    ) -> StorageVolume:
        """The volume at that path.

        Raises:
            NoStorageVolume: no such volume.
        """
        ret = await self._rpc.call(
            procedures.STORAGE_VOL_LOOKUP_BY_PATH, r.VolLookupByPathArgs(path), timeout=timeout
        )
        return StorageVolume.from_wire(self, ret.vol)


async def _open_transport(target: Target) -> RpcProtocol:
    # Imported here: the command line opens most connections without an event loop
    # (``direct``), and these modules cost it tens of milliseconds.
    import asyncio

    from virtvol.client.rpc import RpcProtocol
    from virtvol.client.tls import client_context, locate_credentials
    from virtvol.client.tls_transport import open_tls

    loop = asyncio.get_running_loop()
    description = target.uri
    try:
        if target.transport == "unix":  # _connect let only SUPPORTED_TRANSPORTS through
            assert target.socket_path is not None
            _, protocol = await loop.create_unix_connection(
                lambda: RpcProtocol(description), target.socket_path
            )
            if protocol.transport is not None:
                try:
                    widen_unix_send_buffer(protocol.transport.get_extra_info("socket"))
                except OSError:
                    protocol.transport.abort()
                    raise
            return protocol
        assert target.host is not None
        context = None
        if target.transport == "tls":  # the credentials first, as libvirt reads them
            context = client_context(locate_credentials(target.pkipath), verify=target.tls_verify)
        addresses = await _addresses(loop, target)
        if context is None:
            sock, _ = await _connect_first(loop, addresses)
            _, protocol = await loop.create_connection(lambda: RpcProtocol(description), sock=sock)
        else:
            idna_refused = tls_name_refused(target, context)
            sock, address = await _connect_first(loop, addresses)
            # Without a check of the name, SNI may carry the address the ssl module takes
            # where it refuses the name.
            server_name = str(address[0]) if idna_refused else target.host
            opened = await open_tls(sock, server_name, context, lambda: RpcProtocol(description))
            assert isinstance(opened, RpcProtocol)
            protocol = opened
    except OSError as exc:
        raise connect_failure(target, exc) from exc
    return protocol


async def _addresses(
    loop: asyncio.AbstractEventLoop, target: Target
) -> list[tuple[int, int, int, tuple[Any, ...]]]:
    """The host's addresses in the resolver's order, as (family, type, proto, address).
    The name goes to the resolver as it is written (``resolver_name``).

    Raises:
        OSError: the resolver does not know the name.
    """
    found = await loop.getaddrinfo(resolver_name(target), target.port, type=_socket.SOCK_STREAM)
    return [(family, kind, proto, address) for family, kind, proto, _, address in found]


async def _connect_first(
    loop: asyncio.AbstractEventLoop, addresses: list[tuple[int, int, int, tuple[Any, ...]]]
) -> tuple[socket.socket, tuple[Any, ...]]:
    """A socket connected to the first of ``addresses`` that answers, and that address;
    when none does, the last one's failure, as the command line's connection
    (``direct``) and libvirt report it (the event loop's own connect would report
    "Multiple exceptions: ...")."""
    import socket

    last_failure: OSError | None = None
    for family, kind, proto, address in addresses:
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            await _connect_socket(loop, sock, address)
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
        return sock, address
    if last_failure is None:  # pragma: no cover - the resolver raises gaierror instead
        raise OSError("the resolver gave no address")
    try:
        raise last_failure
    finally:
        last_failure = None  # the traceback holds this frame: no cycle through it


async def _connect_socket(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple[Any, ...]
) -> None:
    """Connect the non-blocking ``sock`` to ``address`` as it is. (uvloop's
    ``sock_connect`` looks the address up again and loses an IPv6 address's scope,
    so a link-local address with a zone would not connect.)

    Raises:
        OSError: the connection failed.
    """
    error = sock.connect_ex(address)
    if error == errno.EINPROGRESS:
        writable: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(sock.fileno(), wake)
        try:
            await writable
        finally:
            loop.remove_writer(sock.fileno())
        error = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


def open_target(uri: str | None, *, read_only: bool) -> Target:
    """Where ``uri`` (or the default URI) leads, for a transport virtvol opens.

    Raises:
        InvalidURI: the URI cannot be used (``UnsupportedTransport``: ssh and others).
    """
    target = parse_uri(resolve_uri(uri), read_only=read_only)
    if target.transport not in SUPPORTED_TRANSPORTS:
        *others, last = sorted(SUPPORTED_TRANSPORTS)
        raise UnsupportedTransport(target.transport, f"{', '.join(others)} or {last}")
    return target


def tls_name_refused(target: Target, context: ssl.SSLContext) -> bool:
    """True for a host name the IDNA codec refuses ("a..b", a label over 63 characters),
    which the ssl module cannot check a certificate against nor send as SNI: the address
    connected to goes as SNI instead, where ``context`` checks no name.

    Raises:
        TransportError: ``context`` checks the name and the name is refused.
    """
    assert target.host is not None
    try:
        target.host.encode("idna")
    except UnicodeError:
        if context.check_hostname:
            raise TransportError(
                f"unable to connect to server at '{target.host}:{target.port}': "
                "the host name cannot be checked against a certificate"
            ) from None
        return True
    return False


def connect_failure(target: Target, exc: OSError) -> TransportError:
    """Why ``target`` could not be reached, in libvirt's client's words (virsh users
    recognise them): the system's text for the error number, as libvirt prints it, not
    the wording of whichever layer raised it (asyncio's is "Connect call failed (...)").
    A ``TransportError`` is worded already (a host name TLS cannot check): it is returned
    as it is."""
    if isinstance(exc, TransportError):
        return exc
    # A name lookup's failure (socket.gaierror) carries a negative EAI code, not an errno:
    # its own text is the one to show ("Name or service not known").
    if exc.errno and exc.errno > 0 and not isinstance(exc, _socket.gaierror):
        reason = os.strerror(exc.errno)
    else:
        reason = exc.strerror or str(exc) or _unnumbered_reason(exc)
    if target.socket_path is not None:
        return TransportError(f"Failed to connect socket to '{target.socket_path}': {reason}")
    if isinstance(exc, _socket.gaierror):
        return TransportError(
            f"Unable to resolve address '{target.host}' service '{target.port}': {reason}"
        )
    return TransportError(f"unable to connect to server at '{target.host}:{target.port}': {reason}")


# The error numbers of the OSError subclasses asyncio raises bare, with no number and no
# text (the event loop's TLS transport, for a server that hangs up in the handshake).
_UNNUMBERED = (
    (ConnectionResetError, errno.ECONNRESET),
    (ConnectionAbortedError, errno.ECONNABORTED),
    (ConnectionRefusedError, errno.ECONNREFUSED),
    (BrokenPipeError, errno.EPIPE),
)


def _unnumbered_reason(exc: OSError) -> str:
    """The system's text for what ``exc``'s class stands for ("" when it names nothing)."""
    for kind, number in _UNNUMBERED:
        if isinstance(exc, kind):
            return os.strerror(number)
    return ""


async def _connect(
    uri: str | None,
    *,
    time_limit: float | None,
    keepalive: tuple[float, int] | None,
    protocol: ProtocolMode,
    read_only: bool,
) -> Connection:
    if protocol not in ("current", "legacy"):
        raise ValueError(f"protocol must be 'current' or 'legacy', not {protocol!r}")
    target = open_target(uri, read_only=read_only)
    import asyncio

    async with asyncio.timeout(time_limit):
        rpc = await _open_transport(target)
        return await handshake(rpc, target, protocol=protocol, keepalive=keepalive)


async def handshake(
    rpc: CallEngine,
    target: Target,
    *,
    protocol: ProtocolMode,
    keepalive: tuple[float, int] | None,
) -> Connection:
    """Open a ``Connection`` over a transport that is already connected (internal:
    ``connect`` and ``virtvol.client.testing`` use it); the transport is closed on failure."""
    conn = Connection(rpc, target, protocol)
    try:
        await conn._handshake(keepalive)
    except BaseException:
        rpc.close()
        raise
    return conn


class PendingConnection:
    """What ``connect`` returns: ``await`` it for a ``Connection``, or use it with
    ``async with`` to have the connection closed on leaving the block.

    Nothing happens until it is awaited or entered; each await opens a new connection.
    """

    def __init__(
        self,
        *,
        uri: str | None,
        time_limit: float | None,
        keepalive: tuple[float, int] | None,
        protocol: ProtocolMode,
        read_only: bool,
    ) -> None:
        self._uri = uri
        self._time_limit = time_limit
        self._keepalive = keepalive
        self._protocol: ProtocolMode = protocol
        self._read_only = read_only
        self._conn: Connection | None = None

    def _open(self) -> Coroutine[object, None, Connection]:
        return _connect(
            self._uri,
            time_limit=self._time_limit,
            keepalive=self._keepalive,
            protocol=self._protocol,
            read_only=self._read_only,
        )

    def __await__(self) -> Generator[object, None, Connection]:
        return self._open().__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self._open()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            await self._conn.__aexit__(exc_type, exc, tb)


def connect(
    uri: str | None = None,
    *,
    timeout: float | None = 30.0,
    keepalive: tuple[float, int] | None = DEFAULT_KEEPALIVE,
    protocol: ProtocolMode = "current",
    read_only: bool = False,
) -> PendingConnection:
    """Connect to a libvirt-compatible daemon (virtvold or libvirtd).

    Usable as ``conn = await connect(uri)`` (close it with ``await conn.close()``)
    or ``async with connect(uri) as conn:``.

    Args:
        uri: a libvirt URI such as ``storage+tcp://host/system`` or
            ``storage+unix:///system?socket=/path``, or an alias from libvirt's
            client configuration; None picks the default as libvirt does
            (``virtvol.client.uri.default_uri``).
        timeout: seconds allowed for connecting and the handshake (None: no limit).
        keepalive: ``(interval, count)``: ping after ``interval`` s of silence and
            drop the connection after ``count`` unanswered pings; None or an
            interval of 0 disables our pings (the peer's are always answered).
        protocol: ``"current"``, or ``"legacy"`` to act as a client without
            sparse streams (never asks for them; a hole from the peer is a protocol error).
        read_only: open the connection read-only.

    Returns:
        A ``PendingConnection``: await it, or enter it with ``async with``, for a ``Connection``.

    Raises:
        InvalidURI: the URI cannot be used (``UnsupportedTransport``: its
            transport, such as ssh, is not one virtvol opens).
        TransportError: the daemon cannot be reached or dropped the connection.
        LibvirtError: the daemon refused to open the connection.
        TimeoutError: the handshake took longer than ``timeout``.
    """
    return PendingConnection(
        uri=uri, time_limit=timeout, keepalive=keepalive, protocol=protocol, read_only=read_only
    )
