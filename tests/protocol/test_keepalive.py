"""KeepaliveTracker: when to ping a silent peer and when to give up on it."""

from __future__ import annotations

import pytest

from virtvol.protocol.keepalive import KeepaliveAction, KeepaliveTracker

NOTHING = KeepaliveAction.NOTHING
PING = KeepaliveAction.SEND_PING
DEAD = KeepaliveAction.PEER_DEAD
PONG = KeepaliveAction.SEND_PONG


def test_nothing_before_the_first_interval() -> None:
    tracker = KeepaliveTracker(interval=5, count=5, now=100.0)
    assert tracker.deadline() == 105.0
    assert tracker.poll(100.0) is NOTHING
    assert tracker.poll(104.999) is NOTHING


def test_ping_after_each_silent_interval_then_dead() -> None:
    """libvirtd's defaults (5 s, 5 tries): dead after interval * (count + 1) = 30 s."""
    tracker = KeepaliveTracker(interval=5, count=5, now=0.0)
    for n in range(1, 6):
        assert tracker.poll(5.0 * n - 0.5) is NOTHING
        assert tracker.poll(5.0 * n) is PING
        assert tracker.poll(5.0 * n) is NOTHING  # one ping per interval
        assert tracker.deadline() == 5.0 * (n + 1)
    assert tracker.poll(29.9) is NOTHING
    assert tracker.poll(30.0) is DEAD
    assert tracker.poll(31.0) is DEAD


def test_virsh_defaults_tolerate_35_seconds() -> None:
    tracker = KeepaliveTracker(interval=5, count=6, now=0.0)
    actions = [tracker.poll(float(t)) for t in range(0, 36)]
    assert actions.count(PING) == 6
    assert DEAD not in actions[:35]
    assert actions[35] is DEAD


def test_late_poll_pings_once_and_restarts_the_interval() -> None:
    tracker = KeepaliveTracker(interval=5, count=2, now=0.0)
    assert tracker.poll(12.0) is PING
    assert tracker.deadline() == 17.0
    assert tracker.poll(16.0) is NOTHING
    assert tracker.poll(17.0) is PING
    assert tracker.poll(22.0) is DEAD


def test_heard_resets_the_countdown() -> None:
    tracker = KeepaliveTracker(interval=5, count=2, now=0.0)
    assert tracker.poll(5.0) is PING
    assert tracker.poll(10.0) is PING
    tracker.heard(11.0)  # the PONG (or any frame) arrives
    assert tracker.deadline() == 16.0
    assert tracker.poll(15.9) is NOTHING
    assert tracker.poll(16.0) is PING
    assert tracker.poll(21.0) is PING
    assert tracker.poll(26.0) is DEAD


def test_frames_keep_a_peer_alive_without_pings() -> None:
    tracker = KeepaliveTracker(interval=5, count=1, now=0.0)
    for t in range(1, 100):
        tracker.heard(float(t))
        assert tracker.poll(t + 0.5) is NOTHING


def test_zero_count_gives_up_after_one_interval() -> None:
    tracker = KeepaliveTracker(interval=2.5, count=0, now=10.0)
    assert tracker.poll(12.4) is NOTHING
    assert tracker.poll(12.5) is DEAD


@pytest.mark.parametrize(("interval", "count"), [(0, 5), (-1, 5), (5, -1)])
def test_bad_settings(interval: float, count: int) -> None:
    with pytest.raises(ValueError, match="keepalive"):
        KeepaliveTracker(interval=interval, count=count, now=0.0)


def test_while_reading_is_held_a_pong_goes_every_half_second_and_the_peer_never_dies() -> None:
    """A consumer slower than the peer holds its reading back for a minute: the peer's
    silence is this side's doing, and this side's silence must not look like death to
    the peer, whose tolerance can be as short as 1 s. PONGs, which ask for no answer
    (one could not be read)."""
    tracker = KeepaliveTracker(interval=5, count=5, now=-3.0)  # quiet for 3 s before
    actions = [tracker.hold(t / 10) for t in range(600)]
    assert actions[0] is PONG  # the first hold after a quiet spell signals at once
    assert [t for t, action in enumerate(actions) if action is PONG] == list(range(0, 600, 5))
    assert set(actions) == {PONG, NOTHING}
    assert tracker.deadline() == 60.0  # the next hold signal, half a second after the last


def test_a_short_interval_sets_the_hold_cadence() -> None:
    tracker = KeepaliveTracker(interval=0.25, count=1, now=0.0)
    assert [tracker.hold(t / 10) for t in range(6)] == [
        NOTHING,
        NOTHING,
        NOTHING,
        PONG,
        NOTHING,
        NOTHING,
    ]


def test_after_a_hold_the_countdown_starts_full_from_its_end() -> None:
    tracker = KeepaliveTracker(interval=5, count=1, now=0.0)
    assert tracker.hold(40.0) is PONG
    assert tracker.poll(44.9) is NOTHING  # polling ends the hold: the full interval again
    assert tracker.deadline() == 45.0
    assert tracker.poll(45.0) is PING
    assert tracker.poll(50.0) is DEAD


def test_a_frame_heard_ends_the_hold() -> None:
    tracker = KeepaliveTracker(interval=5, count=5, now=0.0)
    assert tracker.next_hold_signal() == 0.5  # since the tracker began
    tracker.hold(10.0)
    assert tracker.deadline() == tracker.next_hold_signal() == 10.5
    tracker.heard(10.5)
    assert tracker.deadline() == 15.5
