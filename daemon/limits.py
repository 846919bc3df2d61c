"""Admission: how many connections the daemon takes, and what it does with the rest.

Theory of operation: every accepted connection is checked against two limits
before it is served: ``max_clients`` connections in all (libvirtd's name and
default) and the file descriptors left. ``max_anonymous_clients`` bounds, as in
libvirtd, the clients whose authentication is under way, and with authentication
"none" on every listener there are none: a connection that has not sent
CONNECT_OPEN yet, or whose TLS handshake runs, is counted among ``max_clients``
only (the TLS listener asks before each handshake), and ``handshake_timeout``
closes it. A refused connection is closed at once, so the refusal itself costs
no descriptor for longer than the accept. The descriptor
budget is the soft RLIMIT_NOFILE (raised to the hard limit at start, as far as
the kernel lets us) minus the descriptors open at start minus a reserve kept
for volume files, directory handles and log rotation; each connection takes
one descriptor of it, each open stream two and each TLS handshake in progress
two, whichever listener or call asks: a daemon that runs out
of descriptors serves nobody, since it can no longer open a volume or accept
on any socket. Refusals are logged once per burst: the first one, then at most
one summary line every ``REFUSAL_LOG_PERIOD`` seconds while they go on.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("virtvol.daemon.limits")

# Descriptors kept back for what connections open: volume files, pool
# directories, the state directory. A sixteenth of the limit, at least 64.
FD_RESERVE_MIN = 64
FD_RESERVE_FRACTION = 16
REFUSAL_LOG_PERIOD = 10.0
# Connection lines (connected, closed, closing) logged at most, per period.
CONNECTION_LINES_BURST = 200
CONNECTION_LINES_PERIOD = 10.0
# What an open stream holds: its volume file, and room for a temp file or a directory.
STREAM_DESCRIPTORS = 2
# What a TLS handshake in progress holds: its socket, and a second handle on it (``tls``).
HANDSHAKE_DESCRIPTORS = 2


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-daemon and per-connection limits (see ``config.Settings``)."""

    max_clients: int = 5000
    max_client_requests: int = 5
    max_client_streams: int = 16
    handshake_timeout: float = 30.0


def nofile_soft_limit() -> int:
    """The soft RLIMIT_NOFILE in force (a large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def open_descriptor_count() -> int:
    """Descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir used
    except OSError:
        return 0


class RefusalLog:
    """Logs refused connections once per burst instead of once per connection."""

    def __init__(
        self,
        period: float = REFUSAL_LOG_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._period = period
        self._clock = clock
        self._last_logged: float | None = None
        self._unlogged = 0
        self.total = 0

    def refused(self, peer: str, reason: str) -> None:
        self.total += 1
        now = self._clock()
        if self._last_logged is not None and now - self._last_logged < self._period:
            self._unlogged += 1
            return
        if self._unlogged:
            log.warning(
                "refused %d more connection(s) in the last %.0f s",
                self._unlogged,
                now - self._last_logged if self._last_logged is not None else 0.0,
            )
        log.warning(
            "refusing connection from %s: %s (further refusals are summed up, one line per %.0f s)",
            peer,
            reason,
            self._period,
        )
        self._last_logged = now
        self._unlogged = 0


class LineBudget:
    """At most ``burst`` log lines per ``period`` seconds; the rest are counted and summed
    up in one line when the next period starts (with the first line logged in it).

    For lines any local user can cause at will, one per connection: connecting and
    closing again as fast as the kernel allows must not fill the disk with the log.
    """

    def __init__(
        self,
        what: str,
        *,
        burst: int = CONNECTION_LINES_BURST,
        period: float = CONNECTION_LINES_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._what = what
        self._burst = burst
        self._period = period
        self._clock = clock
        self._started: float | None = None
        self._lines = 0
        self._left_out = 0

    def allow(self) -> bool:
        """True when one more line may be logged now."""
        now = self._clock()
        if self._started is None or now - self._started >= self._period:
            if self._left_out:
                log.warning(
                    "%d %s line(s) left out of the log in %.0f s",
                    self._left_out,
                    self._what,
                    now - self._started if self._started is not None else 0.0,
                )
            self._started, self._lines, self._left_out = now, 0, 0
        if self._lines < self._burst:
            self._lines += 1
            return True
        self._left_out += 1
        return False


class Admission:
    """Decides whether one more connection can be served."""

    def __init__(self, limits: ConnectionLimits, *, fd_limit: int, fds_at_start: int) -> None:
        self.limits = limits
        self.fd_limit = fd_limit
        self.fd_reserve = max(FD_RESERVE_MIN, fd_limit // FD_RESERVE_FRACTION)
        # One descriptor per connection; the reserve is for what they open.
        self.fd_budget = max(1, fd_limit - fds_at_start - self.fd_reserve)
        self.refusals = RefusalLog()

    def refusal(self, clients: int, streams: int = 0, handshakes: int = 0) -> str | None:
        """Why one more connection cannot be taken (None: it can). Counts exclude it;
        each open stream is counted as two descriptors (its file and a spare), and each
        TLS handshake in progress as a connection, as libvirtd counts it, of two."""
        if clients + handshakes >= self.limits.max_clients:
            return f"max_clients ({self.limits.max_clients}) connections are open"
        descriptors = clients + STREAM_DESCRIPTORS * streams + HANDSHAKE_DESCRIPTORS * handshakes
        if descriptors >= self.fd_budget:
            in_handshake = f", {handshakes} TLS handshakes" if handshakes else ""
            return (
                f"out of file descriptors: {clients} connections{in_handshake} and {streams}"
                f" streams open, soft limit {self.fd_limit}, {self.fd_reserve} kept for"
                " volume files"
            )
        return None

    def stream_refusal(self, clients: int, streams: int, handshakes: int = 0) -> str | None:
        """Why one more stream cannot be opened (None: it can). Counts exclude it.

        Connections already in may open streams past the budget, into the reserve,
        but never into its second half: that stays for pool directories and whatever
        else a call opens, so the daemon keeps serving calls with every stream open.
        """
        descriptors = (
            clients + STREAM_DESCRIPTORS * (streams + 1) + HANDSHAKE_DESCRIPTORS * handshakes
        )
        if descriptors > self.fd_budget + self.fd_reserve // 2:
            return (
                f"too many streams open in the daemon ({streams}) for its open-files limit"
                f" ({self.fd_limit})"
            )
        return None
