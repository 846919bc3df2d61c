"""Walking a file's data and holes with SEEK_DATA / SEEK_HOLE.

The walk moves the file offset of the descriptor it is given (it uses
``lseek``); all other I/O in virtvol uses positioned calls (``pread``,
``pwrite``), so nobody depends on that offset.
"""

from __future__ import annotations

import errno
import os

from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "Extent",
    "iter_extents",
    "next_extent",
    "next_span",
    "span_after_hole",
]

# lseek() errors meaning "this descriptor cannot tell data from holes":
# pipes/sockets (ESPIPE), file systems or kernels without SEEK_DATA (EINVAL,
# EOPNOTSUPP). Such input is reported as all data.
_NO_EXTENT_INFO = {errno.ESPIPE, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


class Extent(Record):
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
    data, stop = next_span(fd, offset, end)
    return Extent(offset, stop - offset, data)


def next_span(fd: int, offset: int, end: int) -> tuple[bool, int]:
    """``next_extent`` as (data, where it stops), for ``offset < end``: no record, for
    readers that walk many small extents."""
    try:
        data_at = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False, end
        if exc.errno in _NO_EXTENT_INFO:
            return True, end
        raise
    if data_at > offset:
        return False, min(data_at, end)
    return True, _data_end(fd, offset, end)


def span_after_hole(fd: int, offset: int, end: int) -> tuple[bool, int]:
    """``next_span`` where a hole the walk just reported ends at ``offset``.

    SEEK_DATA found the data there already, so one SEEK_HOLE finds where it
    ends: a fragmented file costs two calls per extent, not three. Should the
    file have changed since (no data at ``offset`` any more), the full walk runs.
    """
    stop = _data_end(fd, offset, end)
    return (True, stop) if stop > offset else next_span(fd, offset, end)


def _data_end(fd: int, offset: int, end: int) -> int:
    """Where the data from ``offset`` (where SEEK_DATA found data) ends: the next hole."""
    try:
        hole_at = os.lseek(fd, offset, os.SEEK_HOLE)
    except OSError as exc:
        # ENXIO here means the file shrank under us; the caller's reads will
        # see EOF, so reporting data is the safe answer.
        if exc.errno != errno.ENXIO and exc.errno not in _NO_EXTENT_INFO:
            raise
        hole_at = end
    return min(hole_at, end)


def iter_extents(fd: int, start: int, end: int) -> Iterator[Extent]:
    """Yield the data and hole extents of ``fd`` covering ``[start, end)`` in order."""
    offset = start
    while (extent := next_extent(fd, offset, end)) is not None:
        yield extent
        offset = extent.end
