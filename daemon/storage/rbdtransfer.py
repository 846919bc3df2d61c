"""Image side of downloads and uploads for rbd pools, with the dir pool's reader/writer interface.

``RbdReader`` and ``RbdWriter`` answer the calls the stream handlers make on
``VolumeReader`` / ``VolumeWriter`` (``next_chunk``, ``read_pieces``, ``close``;
``apply``, ``write``, ``skip``, ``commit``, ``abort``, ``release_replaced``), one
call at a time from a worker thread.

* A download asks the object map for allocated extents a window at a time
  (``diff_iterate``, whole objects) and reads only those. An extent is a
  whole RADOS object, so a hole inside one is found by zero detection on the
  data read: aligned all-zero blocks become holes, as in a sparse file.
* An upload writes data frames with ``Image.write`` and turns holes and
  all-zero blocks into ``write_zeroes`` (in steps below 2 GiB, which librbd
  refuses). A whole-volume upload goes to a fresh hidden image, where holes
  cost nothing at all (a new image reads as zeros) and the image grows as the
  stream does. A stream shorter than the volume keeps the volume's size and
  its bytes past the stream's end, as libvirt's in-place write of a file
  does: ``keep_tail`` copies the old image's allocated extents there, in steps
  of ``TAIL_STEP`` bytes of data. On commit the image is cut to its final size
  and swapped in (``RbdVolumes.replace``). An abort, an error or a lost connection removes it
  and leaves the volume as it was.
* Memory: one frame's worth of data at a time (librbd takes ``bytes``, so a
  frame is copied once on its way out).
"""

from __future__ import annotations

import collections
import errno
from typing import TYPE_CHECKING, Any

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.sparse.reader import Chunk, read_pieces
from virtvol.sparse.zeros import zero_runs

from .rbdvolumes import (
    EXTENT_WINDOW,
    MAX_IMAGE_SIZE,
    ExtentWindows,
    RbdVolumes,
    copy_range,
    data_extents,
    zero_range,
)
from .reports import storage_error, system_error

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

_EOF = Chunk(data=False, length=0)

# A whole-volume upload grows its fresh image by at least this much at a time
# (a resize is a metadata update; the final size is set on commit).
GROW_STEP = 1 << 30

# Bytes of the replaced image's data one ``keep_tail`` call copies (one worker job).
TAIL_STEP = 64 << 20


def _io_error(what: str, exc: BaseException) -> Exception:
    code = getattr(exc, "errno", None)
    return system_error(
        what, code if isinstance(code, int) and code > 0 else errno.EIO, ErrorDomain.STREAMS
    )


class RbdReader:
    """Sequential reader of ``[offset, end)`` of an image; always reports holes."""

    def __init__(self, volumes: RbdVolumes, name: str, offset: int, length: int) -> None:
        self._volumes = volumes
        self._name = name
        self._checked = False  # whether the end found the image not removed meanwhile
        self._image: Any = volumes.open_image(name, read_only=True)
        try:
            size: int = self._image.size()
            self._windows = ExtentWindows(self._image)
        except BaseException:
            self.close()
            raise
        self._pos = min(offset, size)
        self._end = size if length == 0 else min(size, offset + length)
        self._extents: collections.deque[tuple[int, int]] = collections.deque()
        self._window_end = self._pos
        self._pending = memoryview(b"")
        self._pending_at = 0
        self._runs: collections.deque[tuple[int, int, bool]] = collections.deque()

    @property
    def position(self) -> int:
        return self._pos

    @property
    def end(self) -> int:
        return self._end

    def next_chunk(self, buffer: memoryview | bytearray) -> Chunk:
        """Data into ``buffer[:chunk.length]`` or a hole's length; length 0 at the end.

        Neighbouring holes (gaps between extents, zero blocks read inside them)
        come out as one, ended by data or once it reaches ``EXTENT_WINDOW`` bytes (an
        empty object-map window, which may be larger, comes out whole).
        """
        hole = 0
        while self._pos < self._end and hole < EXTENT_WINDOW:
            if not self._runs:
                gap = self._next_extent_data(len(buffer))
                if gap:
                    self._pos += gap
                    hole += gap
                    continue
                if not self._runs:  # the image shrank under us
                    break
            start, stop, zero = self._runs[0]
            if zero:
                self._take_run()
                hole += stop - start
                continue
            if hole:
                break  # the data goes out with the next call
            memoryview(buffer)[: stop - start] = self._pending[start:stop]
            self._take_run()
            return Chunk(data=True, length=stop - start)
        if hole:
            return Chunk(data=False, length=hole)
        if not self._checked:
            # Before the stream's end tells the client all is well: an image another
            # daemon removed meanwhile read as zeros.
            if self._volumes.removed_meanwhile(self._image):
                raise system_error(
                    f"cannot read from stream: RBD image '{self._name}' was removed while it "
                    "was read",
                    errno.ENOENT,
                    ErrorDomain.STREAMS,
                )
            self._checked = True
        return _EOF

    def read_pieces(self, buffer: memoryview | bytearray) -> list[Chunk]:
        """As many following chunks as fit in ``buffer``, data back to back from its
        start (see ``virtvol.sparse.reader.read_pieces``); an empty list is the end."""
        return read_pieces(self.next_chunk, buffer)

    def _take_run(self) -> None:
        start, stop, _ = self._runs.popleft()
        self._pos += stop - start
        if not self._runs:
            self._pending = memoryview(b"")

    def _next_extent_data(self, most: int) -> int:
        """Read the next piece of data into the pending runs; or the hole before it."""
        while not self._extents or self._extents[0][1] <= self._pos:
            if self._extents:
                self._extents.popleft()
                continue
            if self._window_end >= self._end:
                return self._end - self._pos
            if self._window_end > self._pos:
                return self._window_end - self._pos
            window = self._windows.size(self._end - self._pos)
            try:
                found = data_extents(self._image, self._pos, window)
            except Exception as exc:
                raise _io_error("cannot read from stream", exc) from None
            self._windows.found(found)
            self._extents.extend(found)
            self._window_end = self._pos + window
        start, end = self._extents[0]
        if start > self._pos:
            return start - self._pos
        count = min(most, end - self._pos)
        try:
            data = self._image.read(self._pos, count)
        except Exception as exc:
            raise _io_error("cannot read from stream", exc) from None
        if len(data) < count:  # the image shrank under us
            self._end = self._pos + len(data)
            if not data:
                return 0
        self._pending = memoryview(data)
        # Zero blocks aligned to image offsets, by the one rule files use too.
        self._runs.extend(
            (start, stop, zero) for zero, start, stop in zero_runs(self._pending, self._pos)
        )
        return 0

    def close(self) -> None:
        """Close the image; safe to call twice."""
        image, self._image = self._image, None
        if image is not None:
            self._volumes.close_image(image)

    def __enter__(self) -> RbdReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RbdWriter:
    """Writer of an upload stream into an image (the volume, or a fresh hidden one).

    Args:
        volumes: the pool; held until the writer is fully done.
        name: the image to write.
        offset: where the stream starts; length: its limit (0: none).
        fresh: the image is new and empty (a whole-volume upload).
        finish: called once with True on commit, False on abort, after the image
            is closed; may return what lets go of a replaced image.
        keep: the volume a fresh image replaces: its size and its bytes past the
            stream's end are kept (``keep_tail``).
    """

    def __init__(
        self,
        volumes: RbdVolumes,
        name: str,
        offset: int,
        length: int,
        *,
        fresh: bool,
        finish: Callable[[bool], Callable[[], None] | None],
        keep: str | None = None,
    ) -> None:
        volumes.acquire()
        self._volumes: RbdVolumes | None = volumes
        self._finish: Callable[[bool], Callable[[], None] | None] | None = finish
        self._release: Callable[[], None] | None = None
        self._fresh = fresh
        self._pos = offset
        self._limit = offset + length if length else None
        self._keep = keep
        self._kept: Any = None  # the replaced image, open while its tail is copied
        self._kept_windows: ExtentWindows | None = None
        self._keep_end = 0
        self._tail_at = 0
        try:
            self._image: Any = volumes.open_image(name, hidden=fresh)
            self._size: int = self._image.size()
        except BaseException:
            self._finish = None
            self._let_go()
            raise

    @property
    def position(self) -> int:
        return self._pos

    def _check_open(self) -> None:
        if self._finish is None:
            raise storage_error(ErrorCode.OPERATION_INVALID, "upload stream is already finished")

    def apply(self, items: Iterable[memoryview | bytes | bytearray | int]) -> None:
        """Data frames (buffers) and hole frames (lengths) in stream order."""
        for item in items:
            if isinstance(item, int):
                self.skip(item)
            else:
                self.write(item)

    def write(self, data: memoryview | bytes | bytearray) -> None:
        """Write the next data frame; all-zero blocks are zeroed instead of written."""
        self._check_open()
        view = memoryview(data).cast("B")
        if self._limit is not None and self._pos + len(view) > self._limit:
            raise system_error("cannot write to stream", errno.ENOSPC, ErrorDomain.STREAMS)
        try:
            for zero, start, end in zero_runs(view, self._pos):
                if zero:
                    self._zero(end - start)
                else:
                    self._grow_to(self._pos + end - start)
                    self._image.write(bytes(view[start:end]), self._pos)
                    self._pos += end - start
        except ErrorReport:
            raise
        except Exception as exc:
            raise _io_error("cannot write to stream", exc) from None

    def skip(self, length: int) -> None:
        """A hole frame: the next ``length`` bytes read as zeros (clipped to the limit)."""
        self._check_open()
        if self._limit is not None:
            length = min(length, self._limit - self._pos)
        if length <= 0:
            return
        try:
            self._zero(length)
        except ErrorReport:
            raise
        except Exception as exc:
            raise _io_error("cannot write to stream", exc) from None

    def _check_within_bounds(self, end: int) -> None:
        """Refuse to take the image past ``MAX_IMAGE_SIZE``, as a file system refuses a
        file past its largest size."""
        if end > max(self._size, MAX_IMAGE_SIZE):
            raise system_error("cannot write to stream", errno.EFBIG, ErrorDomain.STREAMS)

    def _grow_to(self, end: int) -> None:
        if end <= self._size:
            return
        self._check_within_bounds(end)
        if self._fresh:
            # A fresh image grows in big steps and is cut to size on commit.
            new = min(max(end, self._size + GROW_STEP), MAX_IMAGE_SIZE)
            self._image.resize(new)
            self._size = new
            return
        # An existing one grows exactly, as a file written past its end, and never
        # shrinks: another daemon serving the Ceph pool may have grown it meanwhile (one
        # that grows it between these two calls makes the resize fail, not cut it back).
        current = self._image.size()
        if end > current:
            self._image.resize(end, allow_shrink=False)
        self._size = max(end, current)

    def _zero(self, length: int) -> None:
        end = self._pos + length
        self._check_within_bounds(end)  # before any old content is zeroed
        if not self._fresh and self._pos < self._size:
            zero_range(self._image, self._pos, min(end, self._size) - self._pos)
        self._grow_to(end)
        self._pos = end

    def keep_tail(self) -> bool:
        """After the stream's end: copy up to ``TAIL_STEP`` more bytes of the replaced
        image's data past it, at the same offsets; True once all is there."""
        self._check_open()
        try:
            return self._copy_tail_step()
        except ErrorReport:
            raise
        except Exception as exc:
            raise _io_error("cannot write to stream", exc) from None

    def _copy_tail_step(self) -> bool:
        if self._keep is None:
            return True
        if self._kept is None:
            assert self._volumes is not None
            self._kept = self._volumes.open_image(self._keep, read_only=True)
            self._kept_windows = ExtentWindows(self._kept)
            self._keep_end = self._kept.size()
            self._tail_at = self._pos
            self._grow_to(self._keep_end)
        assert self._kept_windows is not None
        copied = 0
        while self._tail_at < self._keep_end and copied < TAIL_STEP:
            window_end = self._tail_at + self._kept_windows.size(self._keep_end - self._tail_at)
            found = data_extents(self._kept, self._tail_at, window_end - self._tail_at)
            self._kept_windows.found(found)
            for start, end in found:
                stop = min(end, start + TAIL_STEP - copied)
                copy_range(self._kept, self._image, start, stop)
                copied += stop - start
                if copied >= TAIL_STEP:
                    window_end = stop
                    break
            self._tail_at = window_end
        return self._tail_at >= self._keep_end

    def commit(self) -> None:
        """Make the upload visible: a fresh image is cut to its final size (the stream's
        end, or the kept volume's when that is further) and swapped in."""
        self._check_open()
        try:
            while not self._copy_tail_step():
                pass
            final = max(self._pos, self._keep_end)
            if self._fresh and self._size != final:
                self._image.resize(final)
            self._image.flush()
        except ErrorReport:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise _io_error("cannot write to stream", exc) from None
        self._close(True)

    def abort(self) -> None:
        """Give up, leaving the volume as it was; safe to call more than once."""
        if self._finish is not None:
            self._close(False)
        self.release_replaced()

    def release_replaced(self) -> None:
        """Remove the image a committed whole-volume upload replaced; then let go of the pool."""
        release, self._release = self._release, None
        try:
            if release is not None:
                release()
        finally:
            if self._finish is None:
                self._let_go()

    def _close(self, success: bool) -> None:
        finish, self._finish = self._finish, None
        assert finish is not None
        assert self._volumes is not None
        image, self._image = self._image, None
        kept, self._kept = self._kept, None
        try:
            try:
                self._volumes.close_image(image)
            finally:
                if kept is not None:
                    self._volumes.close_image(kept)
        except BaseException:
            finish(False)
            raise
        self._release = finish(success)

    def _let_go(self) -> None:
        volumes, self._volumes = self._volumes, None
        if volumes is not None:
            volumes.release()

    def __enter__(self) -> RbdWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
