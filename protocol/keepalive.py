"""Keepalive timing, without clocks of its own: the caller passes the time in.

Theory of operation: any frame received proves the peer alive and resets the
countdown. After ``interval`` seconds of silence the tracker asks for a PING
and spends one of ``count`` tries; when no try is left and one more interval
passes in silence, the peer is dead. Tolerance is interval * (count + 1), as
in libvirt.
"""

from __future__ import annotations

from virtvol.protocol.enums import Enum


class KeepaliveAction(Enum):
    NOTHING = "nothing"
    SEND_PING = "send-ping"
    PEER_DEAD = "peer-dead"


class KeepaliveTracker:
    """Decides when to ping a silent peer and when to give up on it."""

    def __init__(self, interval: float, count: int, now: float) -> None:
        if interval <= 0 or count < 0:
            raise ValueError("keepalive needs a positive interval and a non-negative count")
        self.interval = interval
        self.count = count
        self._last_heard = now
        self._tries_left = count
        self._last_ping = now

    def heard(self, now: float) -> None:
        """Record that a frame arrived."""
        self._last_heard = now
        self._tries_left = self.count

    def deadline(self) -> float:
        """When ``poll`` next has something to do."""
        return max(self._last_heard, self._last_ping) + self.interval

    def poll(self, now: float) -> KeepaliveAction:
        if now < self.deadline():
            return KeepaliveAction.NOTHING
        if self._tries_left == 0:
            return KeepaliveAction.PEER_DEAD
        self._tries_left -= 1
        self._last_ping = now
        return KeepaliveAction.SEND_PING
