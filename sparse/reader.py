"""Reading a range of a file as data and holes, into the caller's (pooled) buffers.

The reader walks the extents once (one SEEK_DATA/SEEK_HOLE pair per extent)
and hands out holes as lengths and data as reads into the buffer it is
given, never crossing an extent boundary. With ``sparse`` False holes are
read like data (the kernel returns zeros), for plain streams. Pages the read
brings into memory are let go window by window, pages that were there before
stay (``cache.ReadWindow``).

``BufferPool`` is the fixed set of buffers a reading thread fills ahead of a
sender: the reader runs ahead by at most the pool, whatever the file size.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from virtvol.protocol.record import Record

from .cache import ReadWindow
from .extents import next_span, span_after_hole

if TYPE_CHECKING:
    import queue
    import threading
    from collections.abc import Callable
    from types import TracebackType

    from .zeros import Bytes

__all__ = ["CACHE_WINDOW", "PIECES_PER_READ", "BufferPool", "Chunk", "SparseReader", "read_pieces"]

# Reads are tracked for page-cache hygiene in windows of this many bytes.
CACHE_WINDOW = 32 << 20

# The most chunks one ``read_pieces`` call returns: a fragmented file (4 KiB of data
# every 64 KiB) then costs one call, and one thread hop, per 512 extents, not per extent.
PIECES_PER_READ = 1024


class Chunk(Record):
    """One step of a read: ``length`` bytes of data (in the caller's buffer) or of hole.

    A zero ``length`` marks the end.
    """

    data: bool
    length: int

    @property
    def eof(self) -> bool:
        """True when the read has nothing more to hand out."""
        return self.length == 0


_EOF = Chunk(False, 0)


class SparseReader:
    """Sequential reader of ``[offset, offset + length)`` of ``fd`` (length 0: to the end).

    Owns ``fd`` and closes it in ``close()``. Not thread-safe: one thread at
    a time, which the caller must wait for before ``close()``. With
    ``drop_cache`` False the pages the read brings in are left to the kernel,
    as ``cp`` leaves them (no residency checks, which cost ~0.6 ms per window).
    """

    def __init__(
        self,
        fd: int,
        offset: int = 0,
        length: int = 0,
        *,
        sparse: bool = True,
        drop_cache: bool = True,
    ) -> None:
        # lseek, not fstat: a block device's fstat size is 0.
        size = os.lseek(fd, 0, os.SEEK_END)
        self._fd = fd
        self._pos = min(offset, size)
        # length 0 means "to the end of the file", as in libvirt.
        self._end = size if length == 0 else min(size, offset + length)
        self._sparse = sparse
        # The current extent, as plain values (asked per chunk); none yet.
        self._in_data = True
        self._extent_end = 0
        self._last_hole = self._last_data = _EOF
        self._window = ReadWindow(fd, CACHE_WINDOW) if drop_cache else None

    @property
    def position(self) -> int:
        """Offset of the next byte to be handed out."""
        return self._pos

    def fileno(self) -> int:
        """The file's descriptor, -1 once closed."""
        return self._fd

    @property
    def end(self) -> int:
        """Offset where the read stops (moved back if the file shrank meanwhile)."""
        return self._end

    def next_chunk(self, buffer: Bytes) -> Chunk:
        """Read the next piece: data into ``buffer[:chunk.length]``, or a hole's length.

        Data never spans an extent boundary and never exceeds ``len(buffer)``.
        A chunk with length 0 is the end.

        Raises:
            OSError: the read failed.
        """
        pos = self._pos
        if pos >= self._end:
            return _EOF
        if pos >= self._extent_end and not self._find_extent(pos):
            return _EOF
        extent_end = self._extent_end
        # A fragmented file's extents are alike: the chunk handed out last (a record
        # that cannot change) is handed out again when it fits, instead of a new one.
        if not self._in_data:
            self._pos = extent_end
            chunk = self._last_hole
            if chunk.length != extent_end - pos:
                chunk = self._last_hole = Chunk(False, extent_end - pos)
            return chunk
        wanted = min(len(buffer), extent_end - pos)
        if self._window is not None:
            self._window.reading(pos)
        count = os.preadv(self._fd, [memoryview(buffer)[:wanted]], pos)
        if count == 0:  # the file shrank while being read
            self._end = pos
            return _EOF
        self._pos = pos + count
        chunk = self._last_data
        if chunk.length != count:
            chunk = self._last_data = Chunk(True, count)
        return chunk

    def _find_extent(self, pos: int) -> bool:
        """Make the extent at ``pos`` (< the end) the current one; False if the file
        ends before it."""
        end = self._end
        if not self._sparse:
            data, stop = True, end
        elif self._extent_end and not self._in_data:
            data, stop = span_after_hole(self._fd, pos, end)
        else:
            data, stop = next_span(self._fd, pos, end)
        if not data and stop == end:
            # A hole to the end: SEEK_DATA answers ENXIO past the end of a file that
            # shrank as it does in a trailing hole, and the shrinking must end the read,
            # as a short read does.
            size = os.lseek(self._fd, 0, os.SEEK_END)
            if size < end:
                stop = self._end = max(size, pos)
                if pos >= stop:
                    return False
        self._in_data, self._extent_end = data, stop
        return True

    def read_pieces(self, buffer: Bytes, most: int = PIECES_PER_READ) -> list[Chunk]:
        """The next chunks, data filling ``buffer`` back to back (see ``read_pieces``)."""
        return read_pieces(self.next_chunk, buffer, most)

    def close(self) -> None:
        """Let go of what the read brought into memory and close the file; safe twice."""
        if self._fd >= 0:
            try:
                if self._window is not None:
                    self._window.close()
            finally:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> SparseReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_pieces(
    next_chunk: Callable[[memoryview], Chunk], buffer: Bytes, most: int = PIECES_PER_READ
) -> list[Chunk]:
    """Fill ``buffer`` with as many following chunks as fit, in one call.

    Data chunks lie back to back in ``buffer`` from its start, in order; hole
    chunks take no room. Stops when the buffer is full, after ``most`` chunks,
    or at the end. An empty list is the end.
    """
    view = memoryview(buffer)
    pieces: list[Chunk] = []
    used = 0
    size = len(view)
    while len(pieces) < most and used < size:
        chunk = next_chunk(view[used:])
        if not chunk.length:  # the end
            break
        pieces.append(chunk)
        if chunk.data:
            used += chunk.length
    return pieces


class BufferPool:
    """A fixed set of equal buffers shared by a filling thread and a consumer."""

    def __init__(self, count: int, size: int) -> None:
        import queue  # here: only the asyncio engine's reading threads need it

        self._empty = queue.Empty
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(bytearray(size))

    def take(self, stop: threading.Event, poll: float = 0.2) -> bytearray | None:
        """Wait for a free buffer; None once ``stop`` is set."""
        while not stop.is_set():
            try:
                return self._free.get(timeout=poll)
            except self._empty:
                continue
        return None

    def give(self, buffer: bytearray) -> None:
        """Hand a buffer back (from any thread)."""
        self._free.put(buffer)
