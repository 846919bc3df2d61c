"""Walking a file's data and holes with SEEK_DATA / SEEK_HOLE.

The walk moves the file offset of the descriptor it is given (it uses
``lseek``); all other I/O in virtvol uses positioned calls (``pread``,
``pwrite``), so nobody depends on that offset.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from virtvol.protocol.record import Record

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Extent", "extent_after_hole", "iter_extents", "next_extent"]

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
    try:
        data_at = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return Extent(offset, end - offset, False)
        if exc.errno in _NO_EXTENT_INFO:
            return Extent(offset, end - offset, True)
        raise
    if data_at > offset:
        return Extent(offset, min(data_at, end) - offset, False)
    return _data_from(fd, offset, end)


def extent_after_hole(fd: int, offset: int, end: int) -> Extent | None:
    """``next_extent`` where a hole the walk just reported ends at ``offset``.

    SEEK_DATA found the data there already, so one SEEK_HOLE finds where it
    ends: a fragmented file costs two calls per extent, not three. Should the
    file have changed since (no data at ``offset`` any more), the full walk runs.
    """
    if offset >= end:
        return None
    extent = _data_from(fd, offset, end)
    return extent if extent.length > 0 else next_extent(fd, offset, end)


def _data_from(fd: int, offset: int, end: int) -> Extent:
    """The data extent from ``offset``, where SEEK_DATA found data: up to the next hole."""
    try:
        hole_at = os.lseek(fd, offset, os.SEEK_HOLE)
    except OSError as exc:
        # ENXIO here means the file shrank under us; the caller's reads will
        # see EOF, so reporting data is the safe answer.
        if exc.errno != errno.ENXIO and exc.errno not in _NO_EXTENT_INFO:
            raise
        hole_at = end
    return Extent(offset, min(hole_at, end) - offset, True)


def iter_extents(fd: int, start: int, end: int) -> Iterator[Extent]:
    """Yield the data and hole extents of ``fd`` covering ``[start, end)`` in order."""
    offset = start
    while (extent := next_extent(fd, offset, end)) is not None:
        yield extent
        offset = extent.end
