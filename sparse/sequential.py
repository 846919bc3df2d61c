"""Writing a stream into a node that is filled, not replaced: a FIFO, a character
device (``/dev/stdout`` on a pipe or a terminal, ``/dev/null``) or a block device.

Such a target takes the bytes in stream order, from its start: a reader at the other
end of a FIFO sees them as they arrive, and a device holds them where they belong.
Nothing can be punched or skipped there (a FIFO cannot seek; a device's old bytes
would show through a skip), so holes and zero runs are written as zeros.

The target is open non-blocking: a write waits for room with ``poll`` in steps of
``WAIT_STEP`` seconds, so a reader that stalls holds the stream back (nothing is
buffered beyond what is being written) and the writer still sees that it was
``stop``-ped or interrupted (Ctrl-C) in between, and calls ``on_wait`` after each step
(the connection keeps its peer from taking the wait for a dead client). A FIFO nobody
reads yet is waited for the same way: it opens once a reader opened it.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import time

from virtvol.protocol.hints import TYPE_CHECKING

from .zeros import ZEROS, Bytes, zero_view

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["WAIT_STEP", "SequentialWriter", "is_filled_in_place", "node_of", "open_in_place"]

# Seconds a write waits for room (or an open for a FIFO's reader) between looks at
# whether the download is still wanted.
WAIT_STEP = 0.1

# The most bytes one write call carries: a pipe takes 64 KiB at a time anyway, and a
# device is written in pieces the size its own writes take.
WRITE_CALL_MAX = 1 << 20


def is_filled_in_place(mode: int) -> bool:
    """Whether a file of ``mode`` takes a download's bytes itself (a FIFO, a character
    or block device), where a regular file is replaced by a complete copy."""
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def node_of(found: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a FIFO or device from any node put at its path later: its file system,
    inode number, kind and device number. The inode number of one removed is soon given
    to a new file (a FIFO replaced by a regular file may have its very number); the kind
    and the device number then still differ."""
    return (found.st_dev, found.st_ino, stat.S_IFMT(found.st_mode), found.st_rdev)


def open_in_place(
    path: str,
    wanted: Callable[[], bool] = lambda: True,
    *,
    node: tuple[int, int, int, int] | None = None,
) -> int:
    """Open the FIFO or device at ``path`` for writing, non-blocking, neither created nor
    truncated; a FIFO without a reader is waited for while ``wanted()`` holds. With
    ``node`` (``node_of`` the one looked at), only that FIFO or device is taken.

    Raises:
        InterruptedError: ``wanted()`` turned false before a reader came.
        OSError: the open failed, or ``path`` is no longer ``node``.
    """
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    while True:
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno != errno.ENXIO or not stat.S_ISFIFO(os.stat(path).st_mode):
                raise
        else:
            _check_node(fd, path, node)
            return fd
        if not wanted():
            raise InterruptedError(errno.EINTR, "the download was cancelled", path)
        time.sleep(WAIT_STEP)


def _check_node(fd: int, path: str, node: tuple[int, int, int, int] | None) -> None:
    """Close ``fd`` and refuse it unless it is ``node``. The path is opened again and
    again while a FIFO's reader is awaited: one replaced meanwhile by a regular file, or
    by a link to one or to another device, would otherwise have the stream written over
    its start, in place."""
    if node is None or node_of(os.fstat(fd)) == node:
        return
    os.close(fd)
    # ESTALE: the node looked at is gone from its path; the words say what happened.
    raise OSError(errno.ESTALE, "no longer the FIFO or device it was, not written", path)


class SequentialWriter:
    """Writes data and holes in stream order into ``fd`` (opened by ``open_in_place``),
    holes as zeros. The interface of ``SparseWriter`` (``apply``, ``finish``...).

    Does not own ``fd``. One thread writes; ``stop`` may come from any other.
    ``on_wait`` is called in the writing thread after each ``WAIT_STEP`` spent waiting
    for room.
    """

    def __init__(self, fd: int, on_wait: Callable[[], None] | None = None) -> None:
        self._fd = fd
        self._on_wait = on_wait
        self._pos = 0
        # Imported here: every download looks its target up through this module, and
        # threading is ~1 ms of a command's start that only a FIFO or a device needs.
        import threading

        self._stopped = threading.Event()
        self.zero_bytes = 0  # nothing is left as a hole here

    @property
    def position(self) -> int:
        """Bytes of the stream written so far."""
        return self._pos

    def stop(self) -> None:
        """Make a write that waits for room, and every later one, fail (ECANCELED)."""
        self._stopped.set()

    def write(self, data: Bytes) -> None:
        self.apply((data,))

    def skip(self, length: int) -> None:
        self.apply((length,))

    def apply(self, items: Iterable[Bytes | int]) -> None:
        """Write data (buffers) and holes (lengths, as zeros) in order.

        Raises:
            OSError: the write failed (EPIPE: the FIFO's reader went away; ENOSPC: the
                end of a device), or ECANCELED once ``stop`` was called.
        """
        for item in items:
            if isinstance(item, int):
                while item > 0:
                    count = min(item, len(ZEROS))
                    self._write_all(zero_view(count))
                    item -= count
            else:
                self._write_all(memoryview(item).cast("B"))

    def _write_all(self, view: memoryview) -> None:
        while view:
            if self._stopped.is_set():
                raise OSError(errno.ECANCELED, os.strerror(errno.ECANCELED))
            try:
                written = os.write(self._fd, view[:WRITE_CALL_MAX])
            except BlockingIOError:
                _wait_for_room(self._fd)
                if self._on_wait is not None:
                    self._on_wait()
                continue
            if written == 0:  # a device that takes nothing more: its end
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self._pos += written
            view = view[written:]

    def finish(self) -> None:
        """Nothing is left to write: every byte went out as it came."""


def _wait_for_room(fd: int) -> None:
    """Wait at most ``WAIT_STEP`` seconds for ``fd`` to take more (or to fail: a
    reader gone shows as room, and the next write says EPIPE)."""
    waiter = select.poll()
    waiter.register(fd, select.POLLOUT)
    waiter.poll(WAIT_STEP * 1000)
