"""Listening sockets: ``tcp://HOST:PORT``, ``tls://HOST[:PORT]``, ``unix:///PATH``,
``unix-ro:///PATH``, or systemd's.

Every listener is opened as a plain bound, listening socket first and then
handed to asyncio with ``sock=``, so sockets from socket activation and our own
take the same road.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import os
import socket
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Iterator

    from virtvol.daemon.systemd import ActivatedListeners

_BACKLOG = 128
RW_SOCKET_MODE = 0o700  # read-write: the owner only, libvirtd's unix_sock_rw_perms without polkit
RO_SOCKET_MODE = 0o777  # read-only: every local user, libvirtd's unix_sock_ro_perms
DEFAULT_TLS_PORT = 16514
PRIVATE_UMASK = 0o077  # a session daemon's socket directory: 0700
SHARED_UMASK = 0o022  # the system daemon's: 0755


class ListenError(ValueError):
    """A listen URL that cannot be parsed or bound."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One parsed ``--listen`` URL."""

    kind: str  # "tcp", "tls" or "unix"
    read_only: bool
    host: str = ""
    port: int = 0
    path: str = ""

    def describe(self) -> str:
        if self.kind in ("tcp", "tls"):
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{self.kind}://{host}:{self.port}"
        return f"{'unix-ro' if self.read_only else 'unix'}://{self.path}"


@dataclass(frozen=True, slots=True)
class UnixSocketAccess:
    """Who may connect to our own Unix sockets: libvirtd's ``unix_sock_*`` settings."""

    group: str = ""  # unix_sock_group: the sockets' group (name or number); "" keeps ours
    rw_mode: int = RW_SOCKET_MODE  # unix_sock_rw_perms
    ro_mode: int = RO_SOCKET_MODE  # unix_sock_ro_perms

    def gid(self) -> int:
        """The group id for ``group``; -1 leaves the group alone."""
        if not self.group:
            return -1
        if self.group.isascii() and self.group.isdigit():
            number = int(self.group)
            # (gid_t)-1 would leave the group alone, and more does not fit the system's type.
            if number >= 0xFFFFFFFF:
                raise ListenError(f"unix_sock_group: no group numbered {self.group}")
            return number
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise ListenError(f"unix_sock_group: no group named {self.group!r}") from None


def parse_listen_url(url: str) -> ListenAddress:
    """Parse ``tcp://HOST:PORT``, ``tls://HOST[:PORT]``, ``unix:///PATH`` or ``unix-ro:///PATH``."""
    parts = urlsplit(url)
    if parts.scheme == "tls":
        try:
            port = parts.port
        except ValueError:
            raise ListenError(f"bad port in listen URL {url!r}") from None
        if not parts.hostname:
            raise ListenError(f"listen URL {url!r} needs a host: tls://HOST[:PORT]")
        port = DEFAULT_TLS_PORT if port is None else port
        return ListenAddress("tls", read_only=False, host=parts.hostname, port=port)
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            raise ListenError(f"bad port in listen URL {url!r}") from None
        if not parts.hostname or port is None:
            raise ListenError(f"listen URL {url!r} needs a host and a port")
        return ListenAddress("tcp", read_only=False, host=parts.hostname, port=port)
    if parts.scheme in ("unix", "unix-ro"):
        # The path as written, "#" and "?" included: a URL parser would cut it there and
        # bind another socket than the one asked for.
        path = url.split("://", 1)[1] if "://" in url else ""
        if parts.netloc or not path.startswith("/"):
            raise ListenError(f"listen URL {url!r} needs an absolute path: unix:///PATH")
        return ListenAddress("unix", read_only=parts.scheme == "unix-ro", path=path)
    raise ListenError(f"listen URL {url!r}: scheme must be tcp, tls, unix or unix-ro")


@dataclass(slots=True)
class BoundSocket:
    """A listening socket and what it serves."""

    sock: socket.socket
    read_only: bool
    label: str
    unlink_path: str | None = None  # our own Unix socket file, removed at exit
    tls: bool = False  # clients must pass the TLS handshake and certificate checks first

    def close(self) -> None:
        self.sock.close()
        if self.unlink_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.unlink_path)


def _bind_tcp(address: ListenAddress) -> socket.socket:
    infos = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous run, refusing to steal a live one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ListenError(f"{path} is in use by another daemon")


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    """Files and directories made meanwhile get at most ``~mask`` (start-up only: the
    umask is the whole process's)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _bind_unix(
    address: ListenAddress, access: UnixSocketAccess, *, private_dirs: bool
) -> socket.socket:
    gid = access.gid()
    # As libvirtd: the directories it has to create are 0700 for a user's daemon (only
    # its owner has any business there), 0755 for the system's (whose read-only
    # socket is every user's).
    with _umask(PRIVATE_UMASK if private_dirs else SHARED_UMASK):
        os.makedirs(os.path.dirname(address.path) or "/", exist_ok=True)
    _remove_stale_socket(address.path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bound as 0600 and only then opened up: never reachable by more than its mode says.
        with _umask(0o177):
            sock.bind(address.path)
        # Mode and group are set before listen(): nobody connects in between.
        os.chmod(address.path, access.ro_mode if address.read_only else access.rw_mode)
        if gid != -1:
            os.chown(address.path, -1, gid)
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def bind(
    address: ListenAddress,
    access: UnixSocketAccess | None = None,
    *,
    private_dirs: bool = False,
) -> BoundSocket:
    """Open the listening socket for ``address``; with ``private_dirs`` (a session
    daemon), the directories made for a Unix socket are its owner's alone."""
    try:
        if address.kind in ("tcp", "tls"):
            sock = _bind_tcp(address)
            # Port 0 asks the system for one: the log and the status name the one it gave.
            bound = dataclasses.replace(address, port=sock.getsockname()[1])
            return BoundSocket(sock, False, bound.describe(), tls=address.kind == "tls")
        sock = _bind_unix(address, access or UnixSocketAccess(), private_dirs=private_dirs)
    except OSError as exc:
        reason = exc.strerror or str(exc)  # an over-long Unix path has no errno, only words
        raise ListenError(f"cannot listen on {address.describe()}: {reason}") from None
    return BoundSocket(sock, address.read_only, address.describe(), unlink_path=address.path)


def bind_all(
    urls: list[str], access: UnixSocketAccess | None = None, *, private_dirs: bool = False
) -> list[BoundSocket]:
    """Open every listener, or none (all are closed again when one fails)."""
    bound: list[BoundSocket] = []
    try:
        for url in urls:
            bound.append(bind(parse_listen_url(url), access, private_dirs=private_dirs))
    except BaseException:
        for item in bound:
            item.close()
        raise
    return bound


def from_activation(activated: ActivatedListeners) -> list[BoundSocket]:
    """Wrap systemd's sockets; systemd owns their files, so none is unlinked here."""
    result = [BoundSocket(s, False, f"systemd:{_name(s)}") for s in activated.read_write]
    result += [BoundSocket(s, True, f"systemd-ro:{_name(s)}") for s in activated.read_only]
    result += [BoundSocket(s, False, f"systemd-tcp:{_name(s)}") for s in activated.tcp]
    return result


def _name(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname())
    except OSError:
        return "?"
