"""The pieces behind the connection limits, one at a time: the fair worker queue, the
refusal log, admission, the connection's download buffers and the config keys."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import TYPE_CHECKING

import pytest

from virtvol.daemon.config import ConfigError, settings_from_toml
from virtvol.daemon.fairqueue import FairExecutor
from virtvol.daemon.limits import Admission, ConnectionLimits, LineBudget, RefusalLog
from virtvol.daemon.sendbuffers import SendBuffers

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def threads() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


async def test_a_busy_owner_does_not_delay_another_by_its_whole_queue(
    threads: concurrent.futures.ThreadPoolExecutor,
) -> None:
    fair = FairExecutor(threads, 2)
    busy = [fair.submit("busy", time.sleep, 0.05) for _ in range(40)]  # 1 s of work
    started = time.monotonic()
    assert await fair.submit("other", lambda: 42) == 42
    # One worker frees within 0.05 s and "other" is next in line.
    assert time.monotonic() - started < 0.5
    await asyncio.gather(*busy)
    assert fair.queued == 0


async def test_owners_take_turns(threads: concurrent.futures.ThreadPoolExecutor) -> None:
    fair = FairExecutor(threads, 1)
    order: list[str] = []
    gate = threading.Event()
    blocker = fair.submit("a", gate.wait, 5)
    jobs = [fair.submit(owner, order.append, owner) for owner in ("a", "a", "a", "b", "b")]
    gate.set()
    await asyncio.gather(blocker, *jobs)
    # "a" was first in line, then each owner goes to the back after one job.
    assert order == ["a", "b", "a", "b", "a"]


async def test_a_job_cancelled_before_it_starts_never_runs(
    threads: concurrent.futures.ThreadPoolExecutor,
) -> None:
    fair = FairExecutor(threads, 1)
    gate = threading.Event()
    ran: list[int] = []
    blocker = fair.submit("a", gate.wait, 5)
    doomed = fair.submit("b", ran.append, 1)
    doomed.cancel()
    after = fair.submit("b", ran.append, 2)
    gate.set()
    await asyncio.gather(blocker, after)
    assert ran == [2]


async def test_a_job_cancelled_while_it_runs_finishes_and_frees_its_worker(
    threads: concurrent.futures.ThreadPoolExecutor,
) -> None:
    fair = FairExecutor(threads, 1)
    gate = threading.Event()
    done: list[bool] = []

    def work() -> None:
        gate.wait(5)
        done.append(True)

    running = fair.submit("a", work)
    await asyncio.sleep(0.05)
    running.cancel()
    gate.set()
    assert await fair.submit("b", lambda: "next") == "next"
    assert done == [True]


async def test_a_failing_job_hands_its_exception_over(
    threads: concurrent.futures.ThreadPoolExecutor,
) -> None:
    fair = FairExecutor(threads, 2)

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await fair.submit("a", fail)
    assert await fair.submit("a", lambda: 1) == 1


async def test_high_priority_jobs_pass_slow_ones_on_the_priority_worker(
    threads: concurrent.futures.ThreadPoolExecutor,
) -> None:
    fair = FairExecutor(threads, 1, priority_workers=1)
    gate = threading.Event()
    ran: list[str] = []
    slow = fair.submit("a", gate.wait, 5)
    queued_low = fair.submit("a", ran.append, "low")
    # The only ordinary worker is busy and a low-priority job waits ahead of it.
    assert await asyncio.wait_for(fair.submit("b", lambda: "info", high_priority=True), 2) == (
        "info"
    )
    assert (
        await asyncio.wait_for(fair.submit("a", ran.append, "high", high_priority=True), 2) is None
    )
    assert ran == ["high"]  # the priority worker never takes the low-priority job
    gate.set()
    await asyncio.gather(slow, queued_low)
    assert ran == ["high", "low"]


async def test_without_priority_workers_high_priority_jobs_wait_their_turn(
    threads: concurrent.futures.ThreadPoolExecutor,
) -> None:
    fair = FairExecutor(threads, 1)
    gate = threading.Event()
    slow = fair.submit("a", gate.wait, 5)
    info = fair.submit("b", lambda: "info", high_priority=True)
    await asyncio.sleep(0.05)
    assert not info.done()
    gate.set()
    assert await info == "info"
    assert await slow is True


def test_refusals_are_logged_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    refusals = RefusalLog(period=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="virtvol.daemon.limits"):
        for _ in range(500):
            refusals.refused("peer", "max_clients (2) connections are open")
            now[0] += 0.001
        assert len(caplog.records) == 1
        now[0] += 10
        refusals.refused("peer", "max_clients (2) connections are open")
    assert len(caplog.records) == 3
    assert "refused 499 more connection(s)" in caplog.records[1].getMessage()
    assert refusals.total == 501


def test_connection_lines_beyond_the_budget_are_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    budget = LineBudget("connection", burst=3, period=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="virtvol.daemon.limits"):
        assert [budget.allow() for _ in range(1000)] == [True] * 3 + [False] * 997
        now[0] += 9.9
        assert not budget.allow()
        assert not caplog.records
        now[0] += 0.1
        assert budget.allow()
    assert [record.getMessage() for record in caplog.records] == [
        "998 connection line(s) left out of the log in 10 s"
    ]


def test_streams_may_take_half_the_reserve_and_no_more() -> None:
    admission = Admission(ConnectionLimits(), fd_limit=1024, fds_at_start=24)
    assert (admission.fd_reserve, admission.fd_budget) == (64, 936)
    # 10 connections: (936 + 32 - 10) // 2 = 479 streams in all, one more is refused.
    assert admission.stream_refusal(clients=10, streams=478) is None
    assert admission.stream_refusal(clients=10, streams=479) == (
        "too many streams open in the daemon (479) for its open-files limit (1024)"
    )
    # A TLS handshake in progress holds two descriptors of them.
    assert admission.stream_refusal(clients=10, streams=477, handshakes=1) is None
    assert admission.stream_refusal(clients=10, streams=478, handshakes=1) is not None


def test_admission_names_the_limit_that_refuses() -> None:
    limits = ConnectionLimits(max_clients=10)
    admission = Admission(limits, fd_limit=1024, fds_at_start=20)
    assert admission.refusal(clients=9) is None
    assert "max_clients (10)" in (admission.refusal(clients=10) or "")
    # TLS handshakes in progress count as connections, of two descriptors each.
    assert admission.refusal(clients=7, handshakes=2) is None
    assert "max_clients (10)" in (admission.refusal(clients=8, handshakes=2) or "")
    tight = Admission(ConnectionLimits(), fd_limit=1024, fds_at_start=20)
    assert tight.fd_budget == 1024 - 20 - 64
    assert tight.refusal(clients=tight.fd_budget - 1) is None
    assert "out of file descriptors" in (tight.refusal(clients=tight.fd_budget) or "")
    assert tight.refusal(clients=tight.fd_budget - 3, handshakes=1) is None
    assert "1 TLS handshakes" in (tight.refusal(clients=tight.fd_budget - 2, handshakes=1) or "")
    # Streams hold descriptors too.
    assert tight.refusal(clients=tight.fd_budget - 10, streams=4) is None
    assert "5 streams" in (tight.refusal(clients=tight.fd_budget - 10, streams=5) or "")


def test_max_anonymous_clients_zero_turns_the_limit_off() -> None:
    # libvirtd.conf: "Set this to zero to turn this feature off"; read, as libvirtd reads
    # it, though with authentication "none" no client waits for authentication.
    settings = settings_from_toml({"max_anonymous_clients": 0}, "test.toml")
    assert settings.max_anonymous_clients == 0
    with pytest.raises(ConfigError, match="max_anonymous_clients"):
        settings_from_toml({"max_anonymous_clients": -1}, "test.toml")


async def test_download_buffers_are_shared_and_bounded() -> None:
    buffers = SendBuffers(2, 1024)
    first, second = buffers.try_take(), buffers.try_take()
    assert first is not None
    assert second is not None
    assert buffers.try_take() is None
    assert buffers.allocated_bytes == 2048
    waiter = asyncio.ensure_future(buffers.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    buffers.sent(first)
    buffers.sent(second)
    await asyncio.sleep(0)
    assert not waiter.done()  # in flight until the transport drains
    buffers.reclaim()
    assert (await waiter) is not None
    assert buffers.allocated_bytes == 2048


async def test_a_cancelled_wait_for_a_buffer_leaves_it_for_others() -> None:
    buffers = SendBuffers(1, 16)
    held = buffers.try_take()
    assert held is not None
    cancelled = asyncio.ensure_future(buffers.take())
    waiting = asyncio.ensure_future(buffers.take())
    await asyncio.sleep(0)
    cancelled.cancel()
    buffers.give_back(held)
    assert (await waiting) is not None


def test_config_keys() -> None:
    settings = settings_from_toml(
        {
            "max_clients": 100,
            "max_anonymous_clients": 7,
            "max_client_requests": 2,
            "max_client_streams": 3,
            "handshake_timeout": 1.5,
        },
        "test.toml",
    )
    assert (settings.max_clients, settings.max_anonymous_clients) == (100, 7)
    assert (settings.max_client_requests, settings.max_client_streams) == (2, 3)
    assert settings.handshake_timeout == 1.5
    defaults = settings_from_toml({}, "empty.toml")
    assert (defaults.max_clients, defaults.max_anonymous_clients) == (5000, 20)
    assert (defaults.max_client_requests, defaults.max_client_streams) == (5, 16)
    assert defaults.handshake_timeout == 30.0
    for key, bad in (
        ("max_clients", 0),
        ("max_client_requests", 1.5),
        ("max_client_streams", True),
    ):
        with pytest.raises(ConfigError, match=key):
            settings_from_toml({key: bad}, "bad.toml")
    with pytest.raises(ConfigError, match="handshake_timeout"):
        settings_from_toml({"handshake_timeout": 0}, "bad.toml")
