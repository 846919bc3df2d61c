"""Reading a range of a file as data and holes, into the caller's (pooled) buffers.

The reader walks the extents once (one SEEK_DATA/SEEK_HOLE pair per extent)
and hands out holes as lengths and data as reads into the buffer it is
given, never crossing an extent boundary. With ``sparse`` False holes are
read like data (the kernel returns zeros), for plain streams. Pages the read
brings into memory are let go window by window, pages that were there before
stay (``cache.ReadWindow``). Where a read would wait for the disk, the reader
asks the kernel for the data of the next extents at once (``POSIX_FADV_WILLNEED``),
so a cold fragmented file costs the disk's queue, not one wait per extent.

``BufferPool`` is the fixed set of buffers a reading thread fills ahead of a
sender: the reader runs ahead by at most the pool, whatever the file size.

What cannot seek, or has no size to seek to (a pipe, a socket, a character
device such as /dev/zero), is read by ``StreamReader`` instead: as data, from
where it stands to its end or the length asked for; ``source_reader`` picks.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record

from .cache import ReadWindow
from .extents import next_span, span_after_hole

if TYPE_CHECKING:
    import queue
    import threading
    from collections.abc import Callable
    from types import TracebackType

    from .zeros import Bytes

__all__ = [
    "CACHE_WINDOW",
    "PIECES_PER_READ",
    "BufferPool",
    "Chunk",
    "SparseReader",
    "StreamReader",
    "open_source",
    "read_pieces",
    "source_reader",
]

# Reads are tracked for page-cache hygiene in windows of this many bytes.
CACHE_WINDOW = 32 << 20

# How much data a cold read asks the kernel for ahead of itself, and the most extents
# one such request walks ahead (the same SEEK_DATA/SEEK_HOLE the read makes, made early).
# Reading a cold fragmented 1 GiB file (4 KiB every 64 KiB) one extent at a time waited
# for the disk 16384 times: 1.5-1.8 s; with 256 extents asked for ahead, 0.2 s. A cold
# dense 1 GiB file read in 4 MiB pieces took 0.69-0.78 s asking 4 MiB ahead and
# 0.60-0.69 s asking 32 MiB ahead (five runs each): the disk's queue stays full while
# the reader hands a piece on. As far ahead as one cache window, whose pages the
# hygiene watches (see ``_prefetch``).
PREFETCH_DATA = CACHE_WINDOW
PREFETCH_EXTENTS = 1024

# A read that must not wait for the disk: it fails with EAGAIN instead (Linux 4.14).
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)

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
        # Extents walked early for a prefetch, as (data, stop), in order after the current.
        self._ahead: deque[tuple[bool, int]] = deque()
        self._prefetched_to = self._pos  # where the data asked for ahead ends
        self._prefetched = 0  # bytes asked for ahead and not read yet (about)
        self._nowait = _NOWAIT

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
        count = self._read(memoryview(buffer)[:wanted], pos)
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
        following = self._next_ahead(pos) if self._ahead else None
        if following is None:
            following = self._walk(pos, after_hole=bool(self._extent_end) and not self._in_data)
        data, stop = following
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

    def _next_ahead(self, pos: int) -> tuple[bool, int] | None:
        """The next extent walked ahead, or None where the file changed since it was
        walked: a hole is asked again (one SEEK_DATA), as data written into it, or the
        file cut short inside it, must read as the walk made now would find them."""
        data, stop = self._ahead.popleft()
        if data:
            return data, stop
        try:
            data_at: int | None = os.lseek(self._fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            data_at = None  # no data after it: a hole to the end, or a file cut short
        if (stop == self._end and data_at is None) or (data_at is not None and data_at >= stop):
            return data, stop
        self._ahead.clear()
        self._prefetched_to = pos
        return None

    def _walk(self, pos: int, *, after_hole: bool) -> tuple[bool, int]:
        """The extent at ``pos`` (< the end) as (data, stop); ``after_hole``: a hole the
        walk reported ends at ``pos``."""
        if not self._sparse:
            return True, self._end
        if after_hole:
            return span_after_hole(self._fd, pos, self._end)
        return next_span(self._fd, pos, self._end)

    def _read(self, into: memoryview, pos: int) -> int:
        """``preadv`` at ``pos``; if that would wait for the disk, ask for what comes next
        first, so that the disk is busy with it while this read waits."""
        if self._nowait:
            try:
                count = os.preadv(self._fd, [into], pos, self._nowait)
            except BlockingIOError:
                if self._prefetched < PREFETCH_DATA // 2:
                    self._prefetch(pos)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self._nowait = 0  # not on this file system: plain reads
            else:
                if count:  # Linux 5.9 and 5.10 may answer 0 short of the end, not EAGAIN
                    self._prefetched = max(0, self._prefetched - count)
                    return count
        count = os.preadv(self._fd, [into], pos)
        self._prefetched = max(0, self._prefetched - count)
        return count

    def _prefetch(self, pos: int) -> None:
        """Ask the kernel (``POSIX_FADV_WILLNEED``) for the data from ``pos``, or from
        where the last request ended, up to ``PREFETCH_DATA`` in all and
        ``PREFETCH_EXTENTS`` extents walked ahead; with the page cache watched, only as
        far as the windows whose residency is known, so that what this brings in is let
        go like what reads bring in. ``pos`` is in the current extent, which is data."""
        limit = self._end
        if self._window is not None:
            limit = min(limit, self._window.known_through(pos))
        start = max(pos, self._prefetched_to)
        budget = PREFETCH_DATA - self._prefetched
        asked = walked = 0
        # The current extent, then those walked already, then new ones: (data, from, to).
        data, begin, stop = True, pos, self._extent_end
        known = iter(self._ahead)
        while asked < budget:
            if data and stop > start:
                first = max(begin, start)
                last = min(stop, limit, first + budget - asked)
                if last <= first:
                    break
                os.posix_fadvise(self._fd, first, last - first, os.POSIX_FADV_WILLNEED)
                asked += last - first
                self._prefetched_to = last
            following = next(known, None)
            if following is None:
                if stop >= limit or walked == PREFETCH_EXTENTS:
                    break
                following = self._walk(stop, after_hole=not data)
                self._ahead.append(following)
                known = iter(())
                walked += 1
            begin = stop
            data, stop = following
        self._prefetched += asked

    def read_pieces(self, buffer: Bytes, most: int = PIECES_PER_READ) -> list[Chunk]:
        """The next chunks, data filling ``buffer`` back to back (see ``read_pieces``)."""
        return read_pieces(self.next_chunk, buffer, most)

    def close(self) -> None:
        """Let go of what the read brought into memory and close the file; safe twice."""
        if self._fd >= 0:
            try:
                if self._window is not None:
                    # Pages a prefetch is still reading in are locked and the drop passes
                    # over them: a read closed early may leave up to PREFETCH_DATA behind.
                    # Waiting for them here could hold the daemon's event loop on the disk.
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


# The most one read of a stream asks for: procfs's sysctl files refuse a read of 4 MiB
# or more (ENOMEM); a pipe hands out no more than it holds (1 MiB at most) anyway.
_STREAM_READ_MOST = 1 << 20


class StreamReader:
    """Sequential reader of what cannot seek: the bytes of ``fd`` from where it stands,
    all of them data, to its end or ``length`` bytes (0: no limit).

    Owns ``fd`` and closes it in ``close()``; one thread at a time, as ``SparseReader``,
    whose ``position``, ``end``, ``read_pieces`` and ``close`` it has.
    """

    def __init__(self, fd: int, length: int = 0) -> None:
        import select  # here: only a source that cannot seek needs it

        self._fd = fd
        self._pos = 0
        # No size to know: the end is the length asked for, and never moves back.
        self._end = length if length else (1 << 63) - 1
        # Whether the source has bytes (or its end) ready: asked before and between reads.
        self._ready = select.poll()
        self._ready.register(fd, select.POLLIN)

    @property
    def position(self) -> int:
        """Bytes handed out so far."""
        return self._pos

    @property
    def end(self) -> int:
        """Where the read stops at the latest."""
        return self._end

    def fileno(self) -> int:
        """The source's descriptor, -1 once closed."""
        return self._fd

    def wait(self, seconds: float) -> bool:
        """Whether the source has bytes to read, or its end, within ``seconds``: a caller
        that must stay responsive while a producer stalls waits here, not in a read.
        Once ``length`` bytes were read that is the end, whatever the producer does next."""
        if self._pos >= self._end:
            return True
        return bool(self._ready.poll(max(0, round(seconds * 1000))))

    def read_pieces(self, buffer: Bytes, most: int = PIECES_PER_READ) -> list[Chunk]:
        """One data chunk read into ``buffer``'s start, or none at the end.

        Reads until the buffer is full, the end, or the source has nothing more ready
        (a slow producer's data goes out as it comes). Waits for the first bytes.

        Raises:
            OSError: the read failed.
        """
        view = memoryview(buffer).cast("B")[: self._end - self._pos]
        ready = self._ready
        used = 0
        while used < len(view):
            count = os.readv(self._fd, [view[used : used + _STREAM_READ_MOST]])
            if count == 0:  # the end of the stream
                break
            used += count
            if used < len(view) and not ready.poll(0):
                break
        self._pos += used
        return [Chunk(True, used)] if used else []

    def close(self) -> None:
        """Close the source; safe twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_source(path: str | os.PathLike[str]) -> int:
    """Open an upload's source to read. A FIFO whose writer has not come yet opens at once
    instead of waiting for it (on an event loop, that wait held up everything else); its
    reads block again, and ``StreamReader.wait`` waits for the writer's first bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def source_reader(fd: int, length: int = 0) -> SparseReader | StreamReader:
    """The reader for an upload's source ``fd`` (owned by it from now on), from its start:
    a file or a block device by its extents, leaving the page cache to the kernel (the
    source is the user's file, as ``cp`` and virsh leave it); anything else as a stream,
    and so a file that tells no true size: procfs's say 0 bytes (most refuse a seek to
    their end too), sysfs's a page, whatever their content, which virsh reads to its end.
    """
    if reads_as_stream(fd):
        return StreamReader(fd, length)
    return SparseReader(fd, 0, length, drop_cache=False)


def reads_as_stream(fd: int) -> bool:
    """Whether ``source_reader`` reads ``fd`` as a stream, to its end, its size unknown
    until then: anything but a block device or a regular file with a size to go by."""
    found = os.fstat(fd)
    return not (
        stat.S_ISBLK(found.st_mode) or (stat.S_ISREG(found.st_mode) and _has_size(fd, found))
    )


def _has_size(fd: int, found: os.stat_result) -> bool:
    """Whether the regular file ``fd`` has a size to read by. A small file with no blocks
    (sysfs's) is read as a stream whatever it is: one all holes, or held in its inode,
    reads the same bytes so, and an empty file as quickly."""
    if not found.st_size or (not found.st_blocks and found.st_size <= _STREAM_READ_MOST):
        return False
    try:
        os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ESPIPE):
            return False
        raise
    return True


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
