"""The storage layer's side of volume downloads and uploads: ``virtvol.sparse`` plus
libvirt's errors and the volume's life cycle.

* A download is a ``SparseReader`` over the volume: holes as lengths, data
  read into the stream's buffers, and only what the download itself brought
  into the page cache let go afterwards.
* An upload with an offset or a length writes in place, like libvirt. A skip
  (a hole in the stream) makes its range read as zeros: punched inside the
  existing size, extended past it. libvirt instead leaves whatever bytes were
  there, which is never what the sender meant.
* An upload of the whole volume (offset 0, length 0) writes a hidden temporary
  file in the pool directory and renames it over the volume on commit, so the
  volume holds either the old or the new content, never a mix. As libvirt's
  in-place write does, a stream shorter than the volume keeps the volume's size
  and its bytes past the stream's end: before the rename those are copied from
  the old file into the temporary at the same offsets (``keep_tail``, in steps
  of ``TAIL_STEP`` bytes of data; only its data extents, so holes stay holes
  and an empty tail costs nothing). A longer stream grows the volume. With
  ``sync_uploads`` (the default) the data, kept tail included, is flushed with
  fdatasync before the rename: without it a power cut soon
  after the rename could leave a file with the new name but unwritten blocks,
  which breaks the "old or new" promise. The directory itself is not fsynced:
  losing the rename in a crash only brings the old content back, which is
  still one of the two states. The replaced volume is let go only after the
  client has its acknowledgement (``release_replaced``): dropping the last
  reference to a large file frees its page cache and blocks, which the client
  need not wait for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.sparse.reader import Chunk, SparseReader, read_pieces
from virtvol.sparse.writer import SparseWriter, StreamLimitError

from .reports import storage_error, system_error

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

    from virtvol.sparse.zeros import Bytes

__all__ = ["TAIL_STEP", "UnreadableVolume", "VolumeReader", "VolumeWriter"]

# Bytes of the replaced volume's data that one ``keep_tail`` call copies: each call is
# one job of the upload's worker, and an upload cut between two ends the copy there.
TAIL_STEP = 64 << 20


class VolumeReader:
    """Sequential reader of ``[offset, offset + length)`` of a volume file (length 0: to EOF).

    Owns ``fd`` and closes it in ``close()``. With ``sparse`` False holes are
    read like data (the kernel returns zeros), for non-sparse streams.
    """

    def __init__(self, fd: int, offset: int, length: int, *, sparse: bool) -> None:
        self._reader = SparseReader(fd, offset, length, sparse=sparse)

    @property
    def position(self) -> int:
        """Offset of the next byte to be handed out."""
        return self._reader.position

    @property
    def end(self) -> int:
        """Offset where the download stops."""
        return self._reader.end

    def fileno(self) -> int:
        """The volume's descriptor, -1 once closed."""
        return self._reader.fileno()

    def next_chunk(self, buffer: memoryview | bytearray) -> Chunk:
        """Read the next piece: data into ``buffer[:chunk.length]``, or a hole's length.

        Data never spans an extent boundary and never exceeds ``len(buffer)``.
        A chunk with length 0 is the end of the download.
        """
        try:
            return self._reader.next_chunk(buffer)
        except OSError as exc:
            raise system_error("cannot read from stream", exc, ErrorDomain.STREAMS) from None

    def read_pieces(self, buffer: memoryview | bytearray) -> list[Chunk]:
        """As many following chunks as fit in ``buffer``, data back to back from its
        start (see ``virtvol.sparse.reader.read_pieces``); an empty list is the end."""
        return read_pieces(self.next_chunk, buffer)

    def close(self) -> None:
        """Release the file; safe to call twice."""
        self._reader.close()

    def __enter__(self) -> VolumeReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class UnreadableVolume:
    """The download of a volume that holds no bytes to read (a sub-directory): the stream
    opens, as libvirt's does, and its first read fails with ``failure``."""

    def __init__(self, failure: ErrorReport) -> None:
        self._failure = failure

    @property
    def position(self) -> int:
        return 0

    @property
    def end(self) -> int:
        return 0

    def next_chunk(self, buffer: memoryview | bytearray) -> Chunk:
        raise self._failure

    def read_pieces(self, buffer: memoryview | bytearray) -> list[Chunk]:
        raise self._failure

    def close(self) -> None:
        """Nothing is held."""


class VolumeWriter:
    """Writer of an upload stream into a volume file.

    Created by ``StorageRegistry.open_upload``; the stream layer calls
    ``apply`` (or ``write``/``skip``) in stream order, then ``keep_tail`` until
    it returns True (or not: ``commit`` finishes it), then exactly one of
    ``commit``/``abort``.
    """

    def __init__(
        self,
        fd: int,
        offset: int,
        length: int,
        *,
        finish: Callable[[bool], Callable[[], None] | None],
        sync: bool = False,
        writeback: bool = False,
        keep: int | None = None,
        path: str | None = None,
        reserve: int = 0,
    ) -> None:
        """Args:
        fd: the open target file (the volume, or the temporary that replaces it).
        offset: where the stream starts in the file.
        length: stream limit in bytes, 0 for none.
        finish: called once with True on commit, False on abort, after ``fd``
            is closed; it renames/removes the temporary and releases the volume.
            It may return a callable that lets go of the replaced content,
            run by ``release_replaced``.
        sync: fdatasync before ``finish(True)`` (and start writeback early).
        writeback: start writeback early without the fdatasync (``SparseWriter``).
        keep: the volume a whole-volume upload replaces, open for reading; its size
            and its bytes past the stream's end are kept (``keep_tail``). Owned:
            closed with ``fd``.
        path: the volume's path, named when the file system fails a write, as
            libvirtd names it ("Unable to write PATH: No space left on device").
        reserve: keep the file allocated up to there (``SparseWriter``'s ``reserve``).
        """
        self._fd = fd
        self._path = path
        self._keep = keep
        self._keep_end: int | None = None
        self._writer = SparseWriter(
            fd, offset, length, sync=sync, writeback=writeback, reserve=reserve
        )
        self._finish: Callable[[bool], Callable[[], None] | None] | None = finish
        self._release: Callable[[], None] | None = None

    @property
    def position(self) -> int:
        """Offset of the next byte the stream will write."""
        return self._writer.position

    def _check_open(self) -> None:
        if self._finish is None:
            raise storage_error(ErrorCode.OPERATION_INVALID, "upload stream is already finished")

    def apply(self, items: Iterable[Bytes | int]) -> None:
        """Apply data frames (buffers) and skips (lengths) in stream order.

        Zero blocks in the data become holes instead of written zeros, so a
        dense stream (an old client, or a sparse image sent without the flag)
        still leaves a sparse volume. Skips are clipped to the stream's length
        limit, as libvirt clips holes.

        Raises:
            ErrorReport: when data goes beyond the stream's length limit
                (libvirt's "cannot write to stream" with ENOSPC) or on I/O errors.
        """
        self._check_open()
        try:
            self._writer.apply(items)
        except OSError as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: OSError) -> ErrorReport:
        """libvirtd's words: the stream's own limits are "cannot write to stream", the
        file system's refusals (a full disk) name the volume."""
        if isinstance(exc, StreamLimitError) or self._path is None:
            return system_error("cannot write to stream", exc, ErrorDomain.STREAMS)
        return system_error(f"Unable to write {self._path}", exc, ErrorDomain.STREAMS)

    def write(self, data: Bytes) -> None:
        """Write the next data frame at the stream position (see ``apply``)."""
        self.apply((data,))

    def skip(self, length: int) -> None:
        """Apply a hole frame: the next ``length`` bytes read as zeros afterwards."""
        self.apply((length,))

    def keep_tail(self) -> bool:
        """After the stream's end: copy up to ``TAIL_STEP`` more bytes of the replaced
        volume's data past it (see ``SparseWriter.copy_tail``); True once all is there.

        Raises:
            ErrorReport: reading the volume or writing the temporary failed.
        """
        self._check_open()
        try:
            return self._copy_tail_step()
        except OSError as exc:
            raise self._failure(exc) from None

    def _copy_tail_step(self) -> bool:
        if self._keep is None:
            return True
        if self._keep_end is None:
            self._keep_end = os.fstat(self._keep).st_size
        return self._writer.copy_tail(self._keep, self._keep_end, TAIL_STEP)

    def commit(self) -> None:
        """Finish successfully (the stream's STREAM/OK): make the upload visible."""
        self._check_open()
        try:
            while not self._copy_tail_step():
                pass
            self._writer.finish()
        except OSError as exc:
            self.abort()
            raise self._failure(exc) from None
        self._close(True)

    def abort(self) -> None:
        """Give up (client abort, error, disconnect); safe to call more than once.

        After a commit this only runs ``release_replaced``.
        """
        if self._finish is not None:
            self._close(False)
        self.release_replaced()

    def release_replaced(self) -> None:
        """Let go of the content a committed whole-volume upload replaced.

        Slow for a large volume (the kernel frees its pages and blocks), so the
        stream layer calls it after acknowledging the finish; safe to call twice.
        """
        release, self._release = self._release, None
        if release is not None:
            release()

    def _close(self, success: bool) -> None:
        finish, self._finish = self._finish, None
        assert finish is not None
        keep, self._keep = self._keep, None
        failed = None
        for fd in (self._fd, keep):
            # Closed even when the call fails; a failure may be a write the file system
            # could not make (NFS reports a failed write-back here): no success then, and
            # the volume is let go of all the same.
            if fd is not None:
                try:
                    os.close(fd)
                except OSError as exc:
                    failed = failed or exc
        self._release = finish(success and failed is None)
        if success and failed is not None:
            raise self._failure(failed)

    def __enter__(self) -> VolumeWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()
