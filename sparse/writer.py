"""Writing a stream of data and holes into a file, sparse and (on request) durable.

Data goes out with ``pwritev``, one call per run of contiguous data in a
batch, straight from the buffers it arrived in. Zero blocks in the data (the
rule of ``zeros.zero_runs``) and holes make their range read as zeros
without writing it: punched inside the file's existing size, left for a
final ``ftruncate`` past it. So a dense stream (an old client, an image sent
without the sparse flag) still leaves a sparse file, and a fresh file
(a temporary that replaces a volume, a download's output) gets only the
blocks that hold data.

Durability (``sync``): every ``WRITEBACK_START`` bytes of data written,
writeback of them starts (``sync_file_range``, no waiting), and every
``WRITEBACK_STEP`` bytes what was started a step before is waited for: the
disk works while the network does, memory waiting for the disk stays
bounded, and the final ``fdatasync`` only waits for what is still in flight.
The written pages stay in the page cache: a download that follows the upload
is served from memory. ``writeback`` alone starts and waits the same way
without the final flush: for a file written back soon anyway (ext4 writes a
file renamed over another back at the rename when nobody flushed it; a 1 GiB
upload without ``sync_uploads`` took 1.07-1.34 s that way, 0.75-0.99 s with
writeback started while the data arrived).

``AtomicFile`` is the "old or new content, never a mix" half: a hidden
temporary beside the target, renamed over it on commit (after the writer's
``finish``, so a durable write is on disk before its name is), removed
otherwise.
"""

from __future__ import annotations

import errno
import os
import stat

from virtvol.protocol.hints import TYPE_CHECKING

from . import files
from .zeros import Bytes, zero_runs

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

__all__ = [
    "WRITEBACK_START",
    "WRITEBACK_STEP",
    "AtomicFile",
    "SparseWriter",
    "StreamLimitError",
    "take_over",
]

# Data written before its writeback is started, and data started before what was
# started a step earlier is waited for. Both count data, not file offsets: data
# scattered over a large sparse range would otherwise wait after every extent.
WRITEBACK_START = 4 << 20
WRITEBACK_STEP = 32 << 20

# The largest file offset (off_t): no stream may write or reach past it.
MAX_OFFSET = (1 << 63) - 1


class StreamLimitError(OSError):
    """Data past the stream's length limit (ENOSPC) or past the largest file offset
    (EFBIG): the stream's fault, not the file system's."""


class SparseWriter:
    """Writes data and holes in stream order from ``offset`` into ``fd``.

    Does not own ``fd``. Not thread-safe: one thread at a time, which the
    owner of ``fd`` waits for before closing it.
    """

    def __init__(
        self,
        fd: int,
        offset: int = 0,
        length: int = 0,
        *,
        sync: bool = False,
        writeback: bool = False,
        detect_zeroes: bool = True,
        reserve: int = 0,
    ) -> None:
        """Args:
        fd: the open target file.
        offset: where the stream starts in the file.
        length: the most bytes the stream may cover, 0 for no limit.
        sync: make ``finish`` durable (fdatasync) and start writeback early.
        writeback: start writeback early without the final flush: for a file that
            will be written back anyway and soon (a temporary renamed over a volume or
            over a downloaded file, which ext4 writes back at the rename when nobody
            flushed it).
        detect_zeroes: leave zero blocks of the data as holes.
        reserve: keep ``[offset, reserve)`` allocated: holes and zero blocks there
            are zeroed, not left unallocated (a preallocated volume's space stays
            reserved, as libvirtd's in-place write leaves it). 0: no reservation.
        """
        self._fd = fd
        self._start = offset
        self._pos = offset
        self._limit = offset + length if length else None
        self._size = os.fstat(fd).st_size
        self._sync = sync
        self._writeback = sync or writeback
        self._detect_zeroes = detect_zeroes
        self._reserve = reserve
        self._writeback_from = offset  # where the data not yet started begins
        self._unstarted = 0  # data bytes written since writeback last started
        self._started = 0  # data bytes started since the last wait
        self._wait_from = offset  # what a wait covers: [wait_from, wait_to)
        self._wait_to: int | None = None
        self._tail_at: int | None = None  # where ``copy_tail`` goes on, once it started
        self.zero_bytes = 0  # data bytes found to be zero and not written

    @property
    def position(self) -> int:
        """Offset of the next byte the stream will write."""
        return self._pos

    def write(self, data: Bytes) -> None:
        """Write the next data at the stream position (zero blocks become holes).

        Raises:
            StreamLimitError: ENOSPC when the data goes beyond the length limit.
            OSError: I/O errors.
        """
        self.apply((data,))

    def skip(self, length: int) -> None:
        """Apply a hole: the next ``length`` bytes read as zeros, clipped to the length limit."""
        self.apply((length,))

    def apply(self, items: Iterable[Bytes | int]) -> None:
        """Apply data (buffers) and holes (lengths) in order, with one ``pwritev`` per data run.

        Raises:
            StreamLimitError: ENOSPC when data goes beyond the length limit, EFBIG
                beyond the largest file offset (what was before it is written).
            OSError: I/O errors.
        """
        run: list[memoryview] = []  # data contiguous in the file, ending at self._pos
        run_start = self._pos
        for item in items:
            if isinstance(item, int):
                length = item if self._limit is None else min(item, self._limit - self._pos)
                if length > 0:
                    run = self._flush(run, run_start)
                    if self._pos + length > MAX_OFFSET:
                        raise StreamLimitError(errno.EFBIG, os.strerror(errno.EFBIG))
                    self._zero(length)
                continue
            view = memoryview(item).cast("B")
            if self._limit is not None and self._pos + len(view) > self._limit:
                self._flush(run, run_start)
                raise StreamLimitError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if self._pos + len(view) > MAX_OFFSET:
                self._flush(run, run_start)
                raise StreamLimitError(errno.EFBIG, os.strerror(errno.EFBIG))
            if not self._detect_zeroes:
                if not run:
                    run_start = self._pos
                run.append(view)
                self._pos += len(view)
                continue
            base = self._pos
            for zero, start, stop in zero_runs(view, base):
                if zero:
                    run = self._flush(run, run_start)
                    self._pos = base + start
                    self._zero(stop - start)
                    self.zero_bytes += stop - start
                else:
                    if not run:
                        run_start = base + start
                    run.append(view[start:stop] if stop - start < len(view) else view)
                    self._pos = base + stop
        self._flush(run, run_start)

    def _flush(self, run: list[memoryview], start: int) -> list[memoryview]:
        """Write a run of data at ``start``; returns a new, empty run."""
        if not run:
            return run
        files.pwritev_all(self._fd, run, start)
        written = sum(map(len, run))
        end = start + written
        self._size = max(self._size, end)
        if self._writeback:
            self._unstarted += written
            if self._unstarted >= WRITEBACK_START:
                self._start_writeback(end)
        return []

    def _start_writeback(self, end: int) -> None:
        files.start_writeback(self._fd, self._writeback_from, end - self._writeback_from)
        self._writeback_from = end
        self._started += self._unstarted
        self._unstarted = 0
        if self._started < WRITEBACK_STEP:
            return
        self._started = 0
        if self._wait_to is not None:
            files.wait_writeback(self._fd, self._wait_from, self._wait_to - self._wait_from)
            self._wait_from = self._wait_to
        self._wait_to = end

    def _zero(self, length: int) -> None:
        """Make ``[position, position + length)`` read as zeros without writing them."""
        end = self._pos + length
        if self._pos < self._size:
            files.punch_hole(self._fd, self._pos, min(end, self._size) - self._pos)
        if self._pos < self._reserve:  # zeroed blocks, still reserved
            files.allocate(self._fd, self._pos, min(end, self._reserve) - self._pos)
        self._pos = end

    def copy_tail(self, source: int, end: int, most: int) -> bool:
        """After the stream: make ``[position, end)`` hold what ``source`` holds there.

        Only ``source``'s data extents are copied (``files.copy_sparse``), at
        most ``most`` bytes of them per call, so its holes stay holes and a long
        copy goes in steps; the file is first made ``end`` long with that range
        reading as zeros, and once the copy is done what it left empty is allocated up
        to ``reserve``. Nothing happens when the stream reached ``end``.

        Returns:
            True once the whole range is copied.

        Raises:
            OSError: reading ``source`` or writing the file failed.
        """
        if self._tail_at is None:
            self._tail_at = self._pos
            if end > self._pos:
                if self._pos < self._size:
                    files.punch_hole(self._fd, self._pos, min(end, self._size) - self._pos)
                if end > self._size:
                    os.ftruncate(self._fd, end)
                    self._size = end
        if self._tail_at >= end:
            return True
        self._tail_at = files.copy_sparse(source, self._fd, end, start=self._tail_at, most=most)
        if self._tail_at < end:
            return False
        if self._pos < self._reserve:
            # A preallocated volume's blocks never written read as holes to the extent
            # search, so the copy left them out: reserved now, after the copy, which a file
            # system that shares blocks (XFS, Btrfs) did without taking new ones.
            files.allocate(self._fd, self._pos, min(end, self._reserve) - self._pos)
        return True

    def finish(self) -> None:
        """Extend the file over a trailing hole and, with ``sync``, flush it to disk.

        A stream that covered nothing extends nothing, even one that starts past the
        file's end: its offset alone is no byte of the file (libvirtd leaves it too).

        Raises:
            OSError: the flush or the truncate failed.
        """
        # Only ever extend: another writer of the file (another daemon serving the same
        # directory) may have grown it past the stream's end meanwhile.
        if self._pos > self._size and self._pos > self._start:
            self._size = max(self._size, os.fstat(self._fd).st_size)
            if self._pos > self._size:
                os.ftruncate(self._fd, self._pos)
                self._size = self._pos
        if self._sync:
            os.fdatasync(self._fd)


class AtomicFile:
    """A hidden temporary beside ``path`` that takes its place on ``commit``, or vanishes.

    Usable as a context manager: leaving it without a commit removes the
    temporary. ``fd`` is open for writing until ``commit`` or ``abort``.

    A temporary that will replace an existing file takes that file's permissions, its
    access ACL, its extended attributes and its attribute flags
    (``files.copy_extended_attributes``, ``files.copy_inode_flags``: one that cannot be
    given refuses the replacement) and, where this process may give it away, its owner
    and group: the file named stays as its owner made it, as when it is written in place.
    """

    def __init__(self, path: str | os.PathLike[str], mode: int = 0o666) -> None:
        self.target = os.fspath(path)
        head, self._name = os.path.split(self.target)
        self._temp_name = f".{_shortened(self._name)}.{os.urandom(4).hex()}.part"
        self.temp = os.path.join(head, self._temp_name)
        self.fd = -1
        self._done = False
        # The temporary is made, renamed and removed in the folder held open here, not by
        # a path looked up again at the end: a folder moved meanwhile takes the download
        # along (as it takes the file virsh writes into), and no temporary is left in it.
        self._folder = os.open(head or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        # The file replaced, held (not opened for reading or writing) so that its identity
        # stays its own: what is at its name at the end is asked again only if it is still
        # that file, and a file made there after it was removed could otherwise get its
        # inode number.
        self._replaced = -1
        try:
            self._replaced = _hold(self._name, self._folder)
            existing = os.fstat(self._replaced) if self._replaced >= 0 else None
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            # Never wider than the file it replaces, not even before its mode is copied.
            mode = mode if existing is None else 0o600
            try:
                self.fd = os.open(self._temp_name, flags, mode, dir_fd=self._folder)
            except OSError as exc:
                raise _named(exc, self.temp) from None
        except BaseException:
            self._close_folder()
            raise
        self._replaces = existing is not None
        self._given: set[str] = set()  # the extended attributes taken from the target
        if existing is not None:
            try:
                self._take_metadata(existing)
            except BaseException:
                self.abort()
                raise

    def _take_metadata(self, existing: os.stat_result) -> None:
        """Give the temporary the target's extended attributes, attribute flags, owner,
        mode and ACL."""
        # Before the mode is taken: a read-only file's attributes could not be given
        # once the temporary is read-only too (unless root).
        self._given = files.copy_extended_attributes(self.target, self.fd, given=self._given)
        # Before the owner is: only a file's owner may set its flags (or CAP_FOWNER).
        self._take_flags()
        take_over(self.fd, existing)
        # Exactly the replaced file's ACL: without it the group bits, which show the
        # ACL's mask, would let the owning group in.
        files.set_access_acl(self.fd, files.access_acl(self.target))

    def _take_flags(self) -> None:
        """Give the temporary the target's attribute flags (``files.copy_inode_flags``):
        the first time while it is still empty, as btrfs takes ``C`` only then."""
        try:
            source = _open_to_look(self._name, self._folder)
        except OSError as exc:
            raise _named(exc, self.target) from None
        try:
            files.copy_inode_flags(source, self.fd, filename=self.target)
        except files.FlagsNotKept:
            raise
        except OSError as exc:
            raise _named(exc, self.target) from None
        finally:
            os.close(source)

    @property
    def replaces(self) -> bool:
        """Whether a file was at the target's name when this one was made."""
        return self._replaces

    def commit(self) -> None:
        """Take the target's metadata again (what changed on it while the temporary was
        written is kept, as a write in place keeps it), close the temporary and rename it
        over the target."""
        if self._replaces and self.fd >= 0:
            try:
                existing = self._still_replaced()
                if existing is not None:
                    os.fchmod(self.fd, 0o600)  # its creator's to write again, as at the start
                    self._take_metadata(existing)
            except BaseException:
                self.abort()
                raise
        self._close()
        try:
            os.replace(
                self._temp_name, self._name, src_dir_fd=self._folder, dst_dir_fd=self._folder
            )
        except OSError as exc:
            self.abort()
            raise _named(exc, self.temp, self.target) from None
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._close_folder()

    def _still_replaced(self) -> os.stat_result | None:
        """The file the temporary replaces, as it is now, if the target's name (in the
        folder and by path, which the attributes are read by) still leads to that very
        file; None where it was removed, moved or swapped for another file or a link
        meanwhile: the temporary then keeps what it took. Another's file or link put
        there must not give the new content its owner and mode (the content would be
        theirs to read), nor its attributes."""
        try:
            here = os.stat(self._name, dir_fd=self._folder, follow_symlinks=False)
            named = os.stat(self.target, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        held = os.fstat(self._replaced)
        if not os.path.samestat(here, held) or not os.path.samestat(named, held):
            return None
        return here

    def abort(self) -> None:
        """Close and remove the temporary; safe to call twice, a no-op after ``commit``."""
        self._close()
        if not self._done:
            self._done = True
            try:
                _remove(self._temp_name, self._folder)
            finally:
                self._close_folder()

    def _close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def _close_folder(self) -> None:
        """Let go of the folder and of the file replaced."""
        for fd in (self._folder, self._replaced):
            if fd >= 0:
                os.close(fd)
        self._folder = self._replaced = -1

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


def _named(exc: OSError, filename: str, filename2: str | None = None) -> OSError:
    """``exc`` naming the files by the paths the caller knows, not by the names in the
    folder held open that the call was given."""
    return type(exc)(exc.errno, exc.strerror, filename, None, filename2)


# Bytes of the target's name kept in its temporary's: with the dot and the random
# suffix it stays within the 255 bytes a name may have, whatever the target's length.
_NAME_KEPT = 200


def _shortened(name: str) -> str:
    """``name`` cut to at most ``_NAME_KEPT`` bytes, between characters: half of one
    would make a name that is not UTF-8, which some file systems refuse."""
    kept = 0
    for index, character in enumerate(name):
        kept += len(os.fsencode(character))  # an undecodable byte is one escape, one byte
        if kept > _NAME_KEPT:
            return name[:index]
    return name


def take_over(fd: int, existing: os.stat_result) -> None:
    """Give the temporary open as ``fd`` the owner, group and permissions of ``existing``.

    Only the permission bits are copied (no set-user-ID on new content). An owner
    this process may not give the file to (only root may: EPERM), or one this user
    namespace has no number for (EINVAL), is left as it is, the group still taken where
    it may be (a group of the user's own); so is a mode a file system refuses (FAT takes
    few): the temporary's own, 0600, then stays.
    """
    made = os.fstat(fd)
    same_group = made.st_gid == existing.st_gid
    if made.st_uid != existing.st_uid or not same_group:
        given = _give(fd, existing.st_uid, existing.st_gid)
        if not given and not same_group:
            _give(fd, -1, existing.st_gid)
    try:
        os.fchmod(fd, stat.S_IMODE(existing.st_mode) & 0o777)
    except PermissionError:
        return  # the temporary's own mode stays


def _give(fd: int, uid: int, gid: int) -> bool:
    """``fchown``; False where the owner or group is refused (EPERM, EINVAL).

    Raises:
        OSError: any other failure.
    """
    try:
        os.fchown(fd, uid, gid)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EINVAL):
            raise
        return False
    return True


def _open_to_look(name: str, folder: int) -> int:
    """``name`` in ``folder`` open for reading, or for writing where it may not be read:
    its attribute flags are read through a descriptor that does either (virsh, which
    writes the file in place, needs to write it)."""
    flags = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        return os.open(name, os.O_RDONLY | flags, dir_fd=folder)
    except PermissionError:
        return os.open(name, os.O_WRONLY | flags, dir_fd=folder)


# Plain ``try`` statements here, not ``contextlib.suppress``: importing contextlib is
# ~0.4 ms of every download's start (docs/performance.md).
def _hold(name: str, folder: int) -> int:
    """An ``O_PATH`` descriptor of ``name`` in ``folder``; -1 where there is none."""
    try:
        return os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        return -1


def _remove(name: str, folder: int) -> None:
    """Unlink ``name`` in ``folder``, if it is still there."""
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        return
