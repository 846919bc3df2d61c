"""Worker threads shared fairly between connections.

Theory of operation: calls that must run in a thread (storage operations,
opening a stream's file) wait in a queue of their own connection. Whenever a
worker is free, the connection next in turn hands it its oldest job and goes to
the back of the line; a connection with nothing queued is not in the line at
all. One client that keeps many calls in flight therefore gets one worker per
round like everyone else, instead of filling a shared FIFO ahead of them. A job
cancelled before it starts is dropped; one cancelled while it runs finishes in
its thread and its result is discarded, as with ``run_in_executor``.

Priority workers, as libvirtd's ``prio_workers``: beyond the ``workers`` any
job may use, ``priority_workers`` more run only high-priority jobs (the
procedure table marks the calls that never block for long: lookups, info,
lists), so slow calls (pool builds, wipes, volume creation) filling every
worker do not hold up a client asking for a pool's info.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import concurrent.futures


@dataclass(slots=True)
class _Job:
    future: asyncio.Future[Any]
    func: Callable[..., Any]
    args: tuple[object, ...]
    high_priority: bool


class FairExecutor:
    """Runs each owner's jobs on ``executor``, ``workers`` at a time, owners in turn,
    and high-priority jobs on up to ``priority_workers`` more."""

    def __init__(
        self, executor: concurrent.futures.Executor, workers: int, priority_workers: int = 0
    ) -> None:
        self._executor = executor
        self._workers = workers
        self._priority_workers = priority_workers
        self._running = 0
        self._queues: collections.OrderedDict[object, collections.deque[_Job]] = (
            collections.OrderedDict()
        )

    @property
    def queued(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def submit(
        self, owner: object, func: Callable[..., Any], *args: object, high_priority: bool = False
    ) -> asyncio.Future[Any]:
        """Queue ``func(*args)`` for ``owner``; the future holds its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(owner)
        if queue is None:
            queue = self._queues[owner] = collections.deque()
        queue.append(_Job(future, func, args, high_priority))
        self._start_jobs()
        return future

    def _start_jobs(self) -> None:
        while self._queues:
            if self._running < self._workers:
                job = self._next_job(priority_only=False)
            elif self._running < self._workers + self._priority_workers:
                job = self._next_job(priority_only=True)
            else:
                return
            if job is None:
                return
            if job.future.cancelled():
                continue
            loop = job.future.get_loop()
            try:
                running = loop.run_in_executor(self._executor, job.func, *job.args)
            except RuntimeError as exc:  # the executor is shut down
                job.future.set_exception(exc)
                continue
            self._running += 1
            running.add_done_callback(functools.partial(self._finished, job.future))

    def _next_job(self, *, priority_only: bool) -> _Job | None:
        """The oldest job (high-priority only, if asked) of the first owner in line that
        has one; that owner goes to the back of the line."""
        for owner, queue in self._queues.items():
            for index, job in enumerate(queue):
                if job.high_priority or not priority_only:
                    del queue[index]
                    if queue:
                        self._queues.move_to_end(owner)
                    else:
                        del self._queues[owner]
                    return job
        return None

    def _finished(self, future: asyncio.Future[Any], running: asyncio.Future[Any]) -> None:
        self._running -= 1
        if future.cancelled():
            # Nobody waits for the outcome (the call's connection went): it is taken
            # here, or asyncio logs an error that no one retrieved it.
            if not running.cancelled():
                running.exception()
        else:
            if running.cancelled():
                future.cancel()
            elif (exc := running.exception()) is not None:
                future.set_exception(exc)
            else:
                future.set_result(running.result())
        self._start_jobs()
