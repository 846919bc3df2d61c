"""Sparse-file helpers: data/hole extents, hole punching, zero detection, sparse copy.

Everything here works on plain file descriptors and is independent of the
storage registry, so the client can use the same helpers for local files.

The extent walker moves the file offset of the descriptor it is given (it uses
``lseek``); all other I/O in virtvol uses positioned calls (``pread``/``pwrite``),
so nobody depends on that offset.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

__all__ = [
    "ZERO_CHUNK",
    "Extent",
    "allocate",
    "copy_sparse",
    "drop_cache",
    "is_zero",
    "iter_extents",
    "next_extent",
    "punch_hole",
    "start_writeback",
]

# Reference buffer for zero detection and for writing zeros where a hole cannot
# be punched.
ZERO_CHUNK = 1 << 20
_ZEROS = bytes(ZERO_CHUNK)

# lseek() errors meaning "this descriptor cannot tell data from holes":
# pipes/sockets (ESPIPE), file systems or kernels without SEEK_DATA (EINVAL,
# EOPNOTSUPP). Such input is reported as all data.
_NO_EXTENT_INFO = {errno.ESPIPE, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of bytes ``[start, start + length)`` that is either data or a hole."""

    start: int
    length: int
    data: bool

    @property
    def end(self) -> int:
        """First offset after the extent."""
        return self.start + self.length


def next_extent(fd: int, offset: int, end: int) -> Extent | None:
    """Return the extent that starts at ``offset``, clipped to ``end``.

    One SEEK_DATA (plus one SEEK_HOLE when ``offset`` is in data) per call.
    ENXIO from SEEK_DATA means no data follows: the rest up to ``end`` is a
    trailing hole. Descriptors without hole information are all data. Returns
    None when ``offset >= end``. ``end`` should not exceed the file size, or the
    bytes beyond EOF are reported as hole.
    """
    if offset >= end:
        return None
    try:
        data_at = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return Extent(offset, end - offset, data=False)
        if exc.errno in _NO_EXTENT_INFO:
            return Extent(offset, end - offset, data=True)
        raise
    if data_at > offset:
        return Extent(offset, min(data_at, end) - offset, data=False)
    try:
        hole_at = os.lseek(fd, offset, os.SEEK_HOLE)
    except OSError as exc:
        # ENXIO here means the file shrank under us; the caller's reads will
        # see EOF, so reporting data is the safe answer.
        if exc.errno != errno.ENXIO and exc.errno not in _NO_EXTENT_INFO:
            raise
        hole_at = end
    return Extent(offset, min(hole_at, end) - offset, data=True)


def iter_extents(fd: int, start: int, end: int) -> Iterator[Extent]:
    """Yield the data and hole extents of ``fd`` covering ``[start, end)`` in order."""
    offset = start
    while (extent := next_extent(fd, offset, end)) is not None:
        yield extent
        offset = extent.end


def is_zero(buf: bytes | bytearray | memoryview) -> bool:
    """Return True when every byte of ``buf`` is zero.

    ``bytes.startswith`` with a buffer argument is a plain memcmp against a
    preallocated zero block and needs no copy. Measured on 1 MiB buffers
    (Python 3.11, this project's build machine): startswith 86 GiB/s,
    bytearray == bytes 88 GiB/s (but needs a bytes-like on both sides and a
    zero block of exactly the same length), tobytes() then == 20 GiB/s (copy),
    int.from_bytes 3 GiB/s, count(0) 2.4 GiB/s, memoryview == memoryview or
    == bytes 1 GiB/s (compares element by element), any() 0.25 GiB/s.
    """
    view = memoryview(buf).cast("B")  # byte-addressed slices, no copy
    return all(
        _ZEROS.startswith(view[pos : pos + ZERO_CHUNK]) for pos in range(0, len(view), ZERO_CHUNK)
    )


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


_CFunction = Callable[[int, int, int, int], int]


def _libc_function(name: str, *argtypes: type) -> _CFunction | None:
    try:
        # The C library is already loaded: no library search (ctypes.util runs ldconfig).
        func = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    return cast(_CFunction, func)


_fallocate = _libc_function(
    "fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong
)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make ``[offset, offset + length)`` read as zeros without changing the file size.

    Deallocates the blocks (fallocate PUNCH_HOLE | KEEP_SIZE). Where the file
    system or the C library cannot punch, the range (clipped to the current
    size) is overwritten with zeros instead.
    """
    if length <= 0:
        return
    if _fallocate is not None:
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if _fallocate(fd, mode, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err))
    _write_zeros(fd, offset, min(offset + length, os.fstat(fd).st_size))


_SYNC_FILE_RANGE_WAIT_BEFORE = 0x01
_SYNC_FILE_RANGE_WRITE = 0x02
_SYNC_FILE_RANGE_WAIT_AFTER = 0x04


_sync_file_range = _libc_function(
    "sync_file_range", ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint
)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing the dirty pages of ``[offset, offset + length)`` to disk, without waiting.

    A later ``fdatasync`` then only waits for what is still in flight. Best
    effort: where ``sync_file_range`` is missing or refused, nothing happens
    and ``fdatasync`` does all the work.
    """
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def drop_cache(fd: int, offset: int, length: int) -> None:
    """Write ``[offset, offset + length)`` to disk (waiting for it) and drop it from the page cache.

    For streaming a volume through a small, constantly reused window of page
    cache. Best effort: without ``sync_file_range`` only the clean pages go.
    """
    if length <= 0:
        return
    if _sync_file_range is not None:
        flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
        _sync_file_range(fd, offset, length, flags)
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _write_zeros(fd: int, offset: int, end: int) -> None:
    zeros = memoryview(_ZEROS)
    while offset < end:
        offset += os.pwrite(fd, zeros[: min(ZERO_CHUNK, end - offset)], offset)


def allocate(fd: int, offset: int, length: int) -> None:
    """Reserve disk blocks for ``[offset, offset + length)``, growing the file if needed."""
    if length > 0:
        os.posix_fallocate(fd, offset, length)


def copy_sparse(src_fd: int, dst_fd: int, end: int, buffer: bytearray | None = None) -> None:
    """Copy the data extents of ``src_fd`` in ``[0, end)`` to the same offsets of ``dst_fd``.

    Holes are not written, so they stay holes in a destination that was
    created empty (or truncated) to its final size. ``copy_file_range`` lets
    the kernel move (or share) the blocks; a read/write loop through
    ``buffer`` is the fallback.
    """
    for extent in iter_extents(src_fd, 0, end):
        if extent.data:
            _copy_range(src_fd, dst_fd, extent.start, extent.end, buffer)


def _copy_range(src_fd: int, dst_fd: int, offset: int, end: int, buffer: bytearray | None) -> None:
    try:
        while offset < end:
            copied = os.copy_file_range(src_fd, dst_fd, end - offset, offset, offset)
            if copied == 0:  # source shorter than expected
                return
            offset += copied
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    view = memoryview(buffer if buffer is not None else bytearray(ZERO_CHUNK))
    while offset < end:
        count = os.preadv(src_fd, [view[: min(len(view), end - offset)]], offset)
        if count == 0:
            return
        written = 0
        while written < count:
            written += os.pwrite(dst_fd, view[written:count], offset + written)
        offset += count
