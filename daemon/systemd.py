"""systemd integration for ``virtvold``: readiness notification and socket activation.

Standard library only; nothing here links against libsystemd.

Readiness (``Type=notify``)
    :class:`Notifier` sends state changes to the service manager over the datagram socket
    named by ``NOTIFY_SOCKET``.  Outside systemd every call is a silent no-op.

Socket activation
    :func:`listeners_from_environment` takes over the listening descriptors systemd passed
    (``LISTEN_PID`` / ``LISTEN_FDS`` / ``LISTEN_FDNAMES``) and files them by name;
    :func:`claim` hands named descriptors out and refuses to start when any is left over;
    :func:`activated_listeners` applies ``virtvold``'s policy (read-write UNIX socket,
    read-only UNIX socket, TCP socket) on top of both.  See ``docs/systemd.md``.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, MutableMapping

__all__ = [
    "LISTEN_FDS_START",
    "READ_ONLY_SOCKET",
    "READ_WRITE_SOCKET",
    "TCP_SOCKET",
    "ActivatedListeners",
    "ActivationError",
    "Notifier",
    "activated_listeners",
    "claim",
    "listeners_from_environment",
]

log = logging.getLogger(__name__)

#: The first inherited descriptor (right after stdin, stdout and stderr).
LISTEN_FDS_START: Final = 3

#: Descriptor names ``virtvold`` claims; systemd names a descriptor after its socket unit.
READ_WRITE_SOCKET: Final = "virtvold.socket"
READ_ONLY_SOCKET: Final = "virtvold-ro.socket"
TCP_SOCKET: Final = "virtvold-tcp.socket"

_NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
_WATCHDOG_USEC: Final = "WATCHDOG_USEC"
_WATCHDOG_PID: Final = "WATCHDOG_PID"
_LISTEN_PID: Final = "LISTEN_PID"
_LISTEN_FDS: Final = "LISTEN_FDS"
_LISTEN_FDNAMES: Final = "LISTEN_FDNAMES"


# --------------------------------------------------------------------------------------------
# sd_notify
# --------------------------------------------------------------------------------------------


def _parse_pid(text: str | None) -> int | None:
    """A positive decimal pid, or None for anything else."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    pid = int(text)
    return pid if pid > 0 else None


def _notify_address(value: str | None) -> str | bytes | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, or None if unusable.

    An absolute path is a filesystem socket; a leading ``@`` names an abstract socket
    (the ``@`` stands for the leading NUL byte).  Other forms (for instance ``vsock:``
    addresses of newer systemd versions) are not supported and disable notification.
    """
    if not value:
        return None
    if value.startswith("@"):
        if len(value) < 2:
            return None
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def _one_line(text: str) -> str:
    """Collapse line breaks: each notification field must stay on one line."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends service state notifications to systemd.

    Read ``NOTIFY_SOCKET`` (and the watchdog variables) once, normally with
    :meth:`from_environment` at daemon start-up.  When the variable is absent or unusable,
    :attr:`enabled` is false and every method returns False without doing anything.  A send
    that fails (the manager went away, its queue is full) is logged at debug level and
    reported as False, never raised: notification must not take the daemon down.

    Datagrams go out with a non-blocking ``sendto`` on an ``AF_UNIX`` ``SOCK_DGRAM`` socket
    opened with close-on-exec, so calling from the event loop thread is fine.
    """

    def __init__(
        self,
        notify_socket: str | None,
        *,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
    ) -> None:
        self._address = _notify_address(notify_socket)
        self._watchdog = self._parse_watchdog(watchdog_usec, watchdog_pid)
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True
    ) -> Notifier:
        """Build a notifier from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        With ``unset`` (the default) the three variables are removed afterwards so that
        child processes (volume utilities the daemon runs) do not talk to systemd in its name.
        """
        env: MutableMapping[str, str] = os.environ if environ is None else environ
        notifier = cls(
            env.get(_NOTIFY_SOCKET),
            watchdog_usec=env.get(_WATCHDOG_USEC),
            watchdog_pid=env.get(_WATCHDOG_PID),
        )
        if unset:
            for name in (_NOTIFY_SOCKET, _WATCHDOG_USEC, _WATCHDOG_PID):
                env.pop(name, None)
        return notifier

    @staticmethod
    def _parse_watchdog(usec: str | None, pid: str | None) -> float | None:
        if usec is None or not usec.isascii() or not usec.isdigit():
            return None
        micros = int(usec)
        if micros <= 0:
            return None
        if pid is not None and _parse_pid(pid) != os.getpid():
            # The watchdog is meant for another process (or WATCHDOG_PID is garbage).
            return None
        return micros / 1_000_000

    # -- state ---------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether a usable ``NOTIFY_SOCKET`` was found."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout (``WatchdogSec=``) in seconds, or None if not requested.

        None also when ``WATCHDOG_PID`` names another process.  Ping with :meth:`watchdog`
        at least every :meth:`watchdog_ping_interval` seconds (half this value).
        """
        return self._watchdog

    def watchdog_ping_interval(self) -> float | None:
        """How often to send ``WATCHDOG=1``: half the watchdog timeout, or None."""
        return None if self._watchdog is None else self._watchdog / 2

    # -- messages ------------------------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one datagram; True if it was sent."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode() + b"\n"
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("systemd notification %r not sent: %s", assignments, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) finished; listeners are accepting."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        """``STATUS=...``: a one-line free-form status shown by ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``: a configuration reload has begun.

        Send :meth:`ready` when the reload is over.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping for ``WatchdogSec=``."""
        if self._watchdog is None:
            return False
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for more time for the current start/stop/reload."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    async def watchdog_loop(self) -> None:
        """Ping the watchdog every half interval until cancelled.

        Returns at once when no watchdog is configured.  Run it as a task on the daemon's
        event loop: a stalled loop then stops the pings and systemd restarts the service.
        """
        period = self.watchdog_ping_interval()
        if period is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(period)

    def close(self) -> None:
        """Close the notification socket (it is reopened if used again)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# socket activation
# --------------------------------------------------------------------------------------------


class ActivationError(RuntimeError):
    """systemd socket activation is set up in a way the daemon cannot start with."""


def _set_cloexec(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)


def _describe(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        name = "?"
    return f"fd {sock.fileno()} ({socket.AddressFamily(sock.family).name} {name!r})"


def _close_all(groups: Iterable[Iterable[socket.socket]]) -> None:
    for group in groups:
        for sock in group:
            sock.close()


def listeners_from_environment(
    environ: MutableMapping[str, str] | None = None,
) -> dict[str, list[socket.socket]]:
    """Take over the descriptors passed by systemd socket activation, filed by name.

    Returns an empty dict when the process was not socket-activated: ``LISTEN_PID`` is
    missing, malformed or not this process, ``LISTEN_FDS`` is missing, or it is 0.
    Otherwise:

    * ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` are removed from ``environ``;
    * descriptors ``3 .. 3+n-1`` get close-on-exec;
    * ``LISTEN_FDNAMES`` must be present and hold exactly ``n`` ``:``-separated names;
    * each descriptor becomes a :class:`socket.socket` (family, type and protocol read from
      the kernel) appended to the list of its name; one name may cover several
      descriptors (a socket unit with several ``ListenStream=`` lines).

    Raises :class:`ActivationError` for a malformed ``LISTEN_FDS``, missing or miscounted
    names, or a descriptor that is not a socket.
    """
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    if _parse_pid(env.get(_LISTEN_PID)) != os.getpid():
        return {}
    count_text = env.get(_LISTEN_FDS)
    if count_text is None:
        return {}
    names_text = env.get(_LISTEN_FDNAMES)
    for name in (_LISTEN_PID, _LISTEN_FDS, _LISTEN_FDNAMES):
        env.pop(name, None)

    if not count_text.isascii() or not count_text.isdigit():
        raise ActivationError(f"Malformed LISTEN_FDS {count_text!r} from systemd socket activation")
    count = int(count_text)
    if count == 0:
        return {}

    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + count)
    for fd in fds:
        try:
            _set_cloexec(fd)
        except OSError as exc:
            raise ActivationError(
                f"Activation file descriptor {fd} (of LISTEN_FDS={count}) is not open: {exc}"
            ) from exc

    if names_text is None:
        raise ActivationError("Missing LISTEN_FDNAMES env from systemd socket activation")
    names = names_text.split(":")
    if len(names) != count:
        raise ActivationError(f"Expecting {count} FD names but got {len(names)}")

    listeners: dict[str, list[socket.socket]] = {}
    for fd, name in zip(fds, names, strict=True):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            _close_all(listeners.values())
            if exc.errno == errno.ENOTSOCK:
                raise ActivationError(
                    f"Activation file descriptor {fd} ({name!r}) is not a socket"
                ) from exc
            raise ActivationError(
                f"Activation file descriptor {fd} ({name!r}) is unusable: {exc}"
            ) from exc
        listeners.setdefault(name, []).append(sock)
    return listeners


def claim(
    listeners: Mapping[str, Iterable[socket.socket]], *names: str
) -> dict[str, list[socket.socket]]:
    """Hand out the listeners filed under ``names``; nothing else may be left.

    The result has every requested name as a key, with an empty list for a name systemd did
    not pass (its socket unit is stopped or disabled: that listener is then off, and must not
    be created by hand).  If ``listeners`` holds a descriptor under any other name, every
    listener is closed and :class:`ActivationError` is raised, as the daemon cannot know
    what to serve there.  ``listeners`` itself is not modified.
    """
    wanted = set(names)
    unclaimed = sorted(name for name, socks in listeners.items() if name not in wanted and socks)
    if unclaimed:
        counts = ", ".join(f"{name} ({len(list(listeners[name]))})" for name in unclaimed)
        _close_all(listeners.values())
        raise ActivationError(
            f"Some activation file descriptors are unclaimed: {counts}; "
            f"expected only {', '.join(names) or 'none'}"
        )
    return {name: list(listeners.get(name, ())) for name in names}


@dataclass
class ActivatedListeners:
    """The listening sockets systemd handed to ``virtvold``, by role.

    Every socket is a bound, listening ``SOCK_STREAM`` socket owned by the caller, ready for
    ``asyncio``'s ``start_unix_server(sock=...)`` / ``start_server(sock=...)``.  An empty list
    means that socket unit is not running: serve nothing there.
    """

    read_write: list[socket.socket] = field(default_factory=list)
    read_only: list[socket.socket] = field(default_factory=list)
    tcp: list[socket.socket] = field(default_factory=list)

    def all(self) -> list[socket.socket]:
        return [*self.read_write, *self.read_only, *self.tcp]

    def close(self) -> None:
        _close_all((self.all(),))


_UNIX_FAMILIES: Final = frozenset({socket.AF_UNIX})
_INET_FAMILIES: Final = frozenset({socket.AF_INET, socket.AF_INET6})


def _check_role(
    name: str, socks: list[socket.socket], families: frozenset[socket.AddressFamily], kind: str
) -> str | None:
    for sock in socks:
        if sock.family not in families or sock.type != socket.SOCK_STREAM:
            return f"{name}: {_describe(sock)} is not a {kind} stream socket"
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError as exc:
            return f"{name}: {_describe(sock)}: {exc}"
        if not listening:
            return f"{name}: {_describe(sock)} is not listening (Accept=yes is not supported)"
    return None


def activated_listeners(
    environ: MutableMapping[str, str] | None = None,
) -> ActivatedListeners | None:
    """``virtvold``'s activation policy; None when not socket-activated.

    Claims ``virtvold.socket`` (read-write, UNIX), ``virtvold-ro.socket`` (read-only, UNIX)
    and ``virtvold-tcp.socket`` (TCP, IPv4 or IPv6).  Raises :class:`ActivationError` (after
    closing everything) when a descriptor has another name, or a claimed one has the wrong
    address family or is not a listening stream socket.  Under activation the daemon must
    create no listeners of its own, and combining activation with ``--listen`` is an error.
    """
    listeners = listeners_from_environment(environ)
    if not listeners:
        return None
    claimed = claim(listeners, READ_WRITE_SOCKET, READ_ONLY_SOCKET, TCP_SOCKET)
    problems = [
        problem
        for problem in (
            _check_role(READ_WRITE_SOCKET, claimed[READ_WRITE_SOCKET], _UNIX_FAMILIES, "UNIX"),
            _check_role(READ_ONLY_SOCKET, claimed[READ_ONLY_SOCKET], _UNIX_FAMILIES, "UNIX"),
            _check_role(TCP_SOCKET, claimed[TCP_SOCKET], _INET_FAMILIES, "TCP"),
        )
        if problem is not None
    ]
    if problems:
        _close_all(claimed.values())
        raise ActivationError("Unusable activation file descriptors: " + "; ".join(problems))
    return ActivatedListeners(
        read_write=claimed[READ_WRITE_SOCKET],
        read_only=claimed[READ_ONLY_SOCKET],
        tcp=claimed[TCP_SOCKET],
    )
