"""Blocking work on one open file, run in worker threads, and a release that waits for it.

Theory of operation: ``loop.run_in_executor`` hands back an asyncio future
that is cancelled the moment the awaiting task is, while the thread goes on
with the job. Cleanup that closes the file from the event loop then pulls the
descriptor from under the thread, and the kernel may hand the same number to
the next file anybody opens: the thread's next ``pwrite`` or ``ftruncate``
lands in that other file. ``FileWorker`` owns the release of the file (its
closing, and whatever goes with it) and runs it only once no job is in a
thread any more: in a worker thread at once when none is, otherwise in the
worker thread right after the last job returns. No await is involved, so a
second cancellation cannot skip it, and a job not yet started when its task is
cancelled never starts. The release never runs on the event loop: removing a
large upload's temporary frees its blocks and page cache (0.5 s for 2 GiB),
which every other connection would wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable

log = logging.getLogger(__name__)

T = TypeVar("T")


def _released_already() -> None:
    """What a ``FileWorker`` holds once its release ran."""


class FileClosedError(RuntimeError):
    """A job was submitted after the release was asked for."""


class FileWorker:
    """Runs the blocking jobs of one file in ``executor``; ``close`` releases the file.

    Args:
        executor: where the jobs run.
        release: closes the file (and finishes what depends on it); runs exactly
            once, never while a job runs, in a worker thread (on the loop only
            once ``executor`` is shut down, in the shutting-down thread when that
            drops it from the queue).
    """

    def __init__(self, executor: concurrent.futures.Executor, release: Callable[[], None]) -> None:
        self._executor = executor
        self._release = release
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._jobs = 0  # submitted and not yet returned (or cancelled before starting)
        self._closing = False
        self._released = self._loop.create_future()

    @property
    def closing(self) -> bool:
        """True once ``close`` was called."""
        return self._closing

    async def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` in a worker thread and return its result.

        Cancelling the caller does not wait for a running job, but the release
        will.

        Raises:
            FileClosedError: ``close`` was called already.
        """
        with self._lock:
            if self._closing:
                raise FileClosedError("the file is closed")
            self._jobs += 1
        try:
            future = self._executor.submit(job)
        except BaseException:
            self._job_done()
            raise
        future.add_done_callback(lambda _: self._job_done())
        return await asyncio.wrap_future(future, loop=self._loop)

    def close(self) -> None:
        """Release the file once no job is in a thread; safe to call more than once."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            idle = self._jobs == 0
        if idle:
            try:
                queued = self._executor.submit(self._do_release)
            except RuntimeError:  # the workers are gone: the daemon is stopping
                self._do_release()
            else:
                # The daemon's stop drops what is still queued: then it runs in the thread
                # that dropped it, as a job dropped so would let it run.
                queued.add_done_callback(self._release_if_dropped)

    async def wait_closed(self) -> None:
        """Wait until the release has run (``close`` must have been called)."""
        await asyncio.shield(self._released)

    def _release_if_dropped(self, queued: concurrent.futures.Future[None]) -> None:
        if queued.cancelled():
            self._do_release()

    def _job_done(self) -> None:
        with self._lock:
            self._jobs -= 1
            release = self._closing and self._jobs == 0
        if release:
            self._do_release()

    def _do_release(self) -> None:
        # Runs once: let go of the release, often a bound method of the stream
        # that owns this worker (a cycle that kept the stream's connection and
        # buffers alive until the garbage collector ran).
        release, self._release = self._release, _released_already
        try:
            release()
        except Exception:
            log.exception("releasing a file failed")
        finally:
            # The loop may already be closed when a thread ends after daemon shutdown.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._mark_released)

    def _mark_released(self) -> None:
        if not self._released.done():
            self._released.set_result(None)
