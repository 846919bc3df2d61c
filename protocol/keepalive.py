"""Keepalive timing, without clocks of its own: the caller passes the time in.

Theory of operation: any frame received proves the peer alive and resets the
countdown. After ``interval`` seconds of silence the tracker asks for a PING
and spends one of ``count`` tries; when no try is left and one more interval
passes in silence, the peer is dead. Tolerance is interval * (count + 1), as
in libvirt. While this side holds back its own reading (a consumer slower than the
peer), the peer's silence proves nothing and the countdown stays full; the peer's
tracker counts this side's silence all the same, so a PONG goes at least every
``HOLD_PONG_INTERVAL`` (``hold``): any frame tells a libvirt peer the other end is
alive, and a PONG, unlike a PING, asks for no answer, which could not be read and
would pile up at the peer.
"""

from __future__ import annotations

from virtvol.protocol.enums import Enum

# While this side holds back its reading, a PONG goes at least this often: a libvirt
# peer drops an end it has not heard from for keepalive_interval * (keepalive_count + 1)
# seconds, counted in whole seconds, with an interval of at least 1: half a second stays
# inside the tolerance of any count of 1 or more (with a count of 0, a peer that checks
# just past a whole second can still count one second of silence as its whole interval).
HOLD_PONG_INTERVAL = 0.5


class KeepaliveAction(Enum):
    NOTHING = "nothing"
    SEND_PING = "send-ping"
    SEND_PONG = "send-pong"  # unasked: this side is alive, while it does not read
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
        self._hold_interval = min(interval, HOLD_PONG_INTERVAL)
        self._holding = False

    def heard(self, now: float) -> None:
        """Record that a frame arrived."""
        self._holding = False
        self._last_heard = now
        self._tries_left = self.count

    def deadline(self) -> float:
        """When ``poll`` (or, while holding, ``hold``) next has something to do."""
        if self._holding:
            return self.next_hold_signal()
        return max(self._last_heard, self._last_ping) + self.interval

    def next_hold_signal(self) -> float:
        """When ``hold`` would next ask for a PONG."""
        return self._last_ping + self._hold_interval

    def hold(self, now: float) -> KeepaliveAction:
        """This side holds back reading: restart the countdown and ask for a PONG once
        ``HOLD_PONG_INTERVAL`` (or ``interval``, if shorter) passed since the last frame
        sent for keepalive, until a frame is heard or ``poll`` is called again. Never
        PEER_DEAD."""
        self._holding = True
        self._last_heard = now
        self._tries_left = self.count
        if now < self.next_hold_signal():
            return KeepaliveAction.NOTHING
        self._last_ping = now
        return KeepaliveAction.SEND_PONG

    def poll(self, now: float) -> KeepaliveAction:
        self._holding = False
        if now < self.deadline():
            return KeepaliveAction.NOTHING
        if self._tries_left == 0:
            return KeepaliveAction.PEER_DEAD
        self._tries_left -= 1
        self._last_ping = now
        return KeepaliveAction.SEND_PING
