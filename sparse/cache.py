"""Page-cache hygiene: leave the cache as a transfer found it, at most.

A read of a volume that was in memory must stay a read from memory for the
next reader too: dropping it (as ``posix_fadvise(DONTNEED)`` on everything
read does) costs the next download a disk read that libvirtd would not make.
What a transfer itself brought in from the disk, though, is better let go:
streaming a cold volume otherwise fills memory with pages nobody asked to
keep, and fresh memory is what a cold read pays most for on a VM whose free
memory is handed back to the host.

So a reader asks the kernel (``mincore`` on a read-only mapping) which pages
of the next window were resident before reading it, and after the window
drops only the pages that were not. The mapping is never touched, so it
faults nothing in; it costs three system calls per window.
"""

from __future__ import annotations

import errno
import mmap
import os

from . import libc

__all__ = ["PAGE_SIZE", "ReadWindow", "resident_pages"]

PAGE_SIZE = mmap.PAGESIZE

_PROT_READ = 0x1
_MAP_SHARED = 0x01

# How close to the next window a read must start for the kernel's read-ahead to
# reach into it: the read itself (up to 4 MiB here) plus read-ahead (up to twice a
# large read), with room to spare.
READ_AHEAD_REACH = 16 << 20


def resident_pages(fd: int, offset: int, length: int) -> bytes:
    """One byte per page of ``[offset, offset + length)``: 1 where the page is in memory.

    ``offset`` must be a multiple of ``PAGE_SIZE``. The range should lie within
    the file; pages past its end read as not resident.

    Raises:
        OSError: the file cannot be mapped (a pipe, a special file).
    """
    if length <= 0:
        return b""
    import ctypes  # for the vector and MAP_FAILED; imported by libc.function as well

    mmap_ = libc.function(
        "mmap", "c_void_p", "c_void_p", "c_size_t", "c_int", "c_int", "c_int", "c_longlong"
    )
    munmap = libc.function("munmap", "c_int", "c_void_p", "c_size_t")
    mincore = libc.function("mincore", "c_int", "c_void_p", "c_size_t", "c_char_p")
    if mmap_ is None or munmap is None or mincore is None:
        raise OSError(errno.ENOSYS, "no mincore in the C library")
    pages = (length + PAGE_SIZE - 1) // PAGE_SIZE
    address = mmap_(None, length, _PROT_READ, _MAP_SHARED, fd, offset)
    if address in (None, ctypes.c_void_p(-1).value):  # NULL or MAP_FAILED
        libc.raise_errno()
    try:
        vector = ctypes.create_string_buffer(pages)
        if mincore(address, length, vector) != 0:
            libc.raise_errno()
    finally:
        munmap(address, length)
    raw = vector.raw
    if raw.translate(None, b"\x00\x01"):  # the low bit is residency, the rest reserved
        raw = bytes(b & 1 for b in raw)
    return raw


class ReadWindow:
    """Tracks a sequential read and drops, window by window, only the pages it brought in.

    Windows are the aligned ``step``-sized pieces of the file. The residency
    of a window is taken when the read comes within ``READ_AHEAD_REACH`` of it:
    by the time the read gets there, the kernel's read-ahead (which runs
    several MiB ahead of large reads) has already brought in its first pages,
    which must not count as resident before. A read that enters a window from
    afar (the next extent of a sparse file) takes its snapshot on entering.
    Call ``reading(offset)`` before each read and ``close()`` at the end. Best
    effort: where residency cannot be asked, nothing is dropped.
    """

    def __init__(self, fd: int, step: int) -> None:
        if step % PAGE_SIZE:
            raise ValueError("the window must be a whole number of pages")
        self._fd = fd
        self._step = step
        self._current: tuple[int, bytes] | None = None  # (window index, residency before)
        self._next: tuple[int, bytes] | None = None
        # The window whose look-ahead was taken (or found impossible): once per window.
        self._looked_ahead_from: int | None = None

    def reading(self, offset: int) -> None:
        """Note that a read starting at ``offset`` is about to happen."""
        index = offset // self._step
        if self._current is not None and self._current[0] == index:
            if self._looked_ahead_from != index:
                self._look_ahead(offset)
            return
        self._drop(self._current)
        ahead, self._next = self._next, None
        self._current = ahead if ahead is not None and ahead[0] == index else self._snapshot(index)
        if ahead is not None and ahead[0] != index:
            self._drop(ahead)
        self._look_ahead(offset)

    def _look_ahead(self, offset: int) -> None:
        # Only a read close to the next window lets read-ahead into it; reads far from
        # it (data scattered over a sparse file) spare themselves the snapshot.
        index = offset // self._step
        if (index + 1) * self._step - offset <= READ_AHEAD_REACH:
            self._looked_ahead_from = index
            self._next = self._snapshot(index + 1)

    def known_through(self, offset: int) -> int:
        """Where the windows end whose residency before the read is known, once the read
        at ``offset`` (given to ``reading`` first) has the next window's taken too: a
        read may ask for pages ahead of itself up to there and still let go of exactly
        the ones it brought in."""
        index = offset // self._step
        if self._looked_ahead_from != index:
            self._looked_ahead_from = index
            self._next = self._snapshot(index + 1)
        return (index + 2) * self._step

    def close(self) -> None:
        """Drop what the read brought into memory; safe to call twice."""
        current, self._current = self._current, None
        ahead, self._next = self._next, None
        self._drop(current)
        self._drop(ahead)

    def _snapshot(self, index: int) -> tuple[int, bytes] | None:
        start = index * self._step
        size = os.lseek(self._fd, 0, os.SEEK_END)  # a block device's fstat size is 0
        length = min(self._step, size - start)
        if length <= 0:
            return None
        try:
            return index, resident_pages(self._fd, start, length)
        except OSError:
            return None

    def _drop(self, window: tuple[int, bytes] | None) -> None:
        """Drop the pages of ``window`` that are in memory now and were not before.

        Pages that are not in memory now (holes, which nothing read) cost nothing to
        name, so each DONTNEED spans from one brought-in page to the next, up to a
        page that was resident before: a warm fragmented volume, whose holes were
        never in memory, costs no call at all, not one per hole.
        """
        if window is None:
            return
        index, before = window
        start = index * self._step
        try:
            now = resident_pages(self._fd, start, len(before) * PAGE_SIZE)
        except OSError:
            return
        now = now[: len(before)]
        # Bytes are 0 or 1 per page: as big integers, & and ^ work page by page.
        width = len(now)
        now_bits = int.from_bytes(now, "big")
        before_bits = int.from_bytes(before, "big")
        ones = int.from_bytes(b"\x01" * width, "big")
        kept = (now_bits & before_bits).to_bytes(width, "big")  # must stay in memory
        brought = (now_bits & (before_bits ^ ones)).to_bytes(width, "big")
        page = brought.find(1)
        while page >= 0:
            stop = kept.find(1, page)
            if stop < 0:
                stop = width
            offset, length = start + page * PAGE_SIZE, (stop - page) * PAGE_SIZE
            os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_DONTNEED)
            page = brought.find(1, stop)
