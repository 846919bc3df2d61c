"""Where a download's bytes go, whichever engine drives its stream.

A regular file (or a new one) is replaced by a complete copy (``AtomicFile``), unless no
rename of this process may replace it (then it is written in place, as virsh writes it);
a FIFO or a device takes the bytes itself as they arrive (``sparse.sequential``). On the command
line's blocking engine only downloads import this module: an upload, or a command moving
no bytes, starts without it.
"""

from __future__ import annotations

import errno
import os
import stat

from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record
from virtvol.sparse import files
from virtvol.sparse.sequential import SequentialWriter, is_filled_in_place, node_of, open_in_place
from virtvol.sparse.writer import AtomicFile, SparseWriter

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DownloadOutput", "DownloadTarget", "download_target"]


class DownloadTarget(Record):
    """Where a download goes: ``path`` to open, and whether it is filled in place (a
    FIFO or a device, written as the bytes arrive) or replaced by a complete copy;
    ``node``: the FIFO or device looked at (``sequential.node_of``: file system, inode
    number, kind, device number), which is the only node its opening may take.
    ``overwrite``: a regular file this process may write but not replace, written in
    place as virsh writes it (``node`` is then that file's, ``owner`` its owner's id);
    without ``node``, a new file made in place, as virsh makes it, where no temporary
    could be renamed (a folder whose names cannot be renamed or removed: append-only).
    ``follow``: ``path`` is opened through symbolic links (a file no name leads to,
    reached as ``/dev/stdout``'s or ``/proc/self/fd/N``'s target)."""

    path: str
    in_place: bool
    node: tuple[int, int, int, int] | None = None
    overwrite: bool = False
    owner: int | None = None
    follow: bool = False


def download_target(path: str | os.PathLike[str]) -> DownloadTarget:
    """Where a download of ``path`` goes. A FIFO or a device (``/dev/stdout``,
    ``/dev/null``) takes the bytes itself, as virsh writes into it. Anything else is
    replaced by an ``AtomicFile``: ``path``, or the file a symbolic link there leads to (the
    link stays a link, as when virsh writes through it). A file that cannot be replaced, as
    its folder may not be written, or is sticky and neither it nor the file is this user's,
    or it is mounted there (bound over the name), or its folder is append-only, is
    overwritten in place instead, as virsh opens it (so is one this process may write but
    not read that has ``user.*`` attributes, which it could not give a replacement): where virsh
    writes, the rename would be refused (in a sticky folder, over a mount, in an append-only
    folder, after the whole volume went by); so is a new file made in an append-only folder,
    where no temporary could be renamed or removed, and a file no name leads to (a program's
    stdout caught in an unlinked file), which no rename can replace.

    Checked before the stream opens, not found by the final rename after the whole
    volume went by.

    Raises:
        IsADirectoryError: ``path`` is a directory, or names one ("copy/", "copy/."),
            which no file can be created as, even where none exists.
        PermissionError: ``path`` is a file this process may not write (``OSError``
            EROFS where its file system is read-only), or an append-only one (EPERM).
        OSError: ``path`` is a socket, which cannot be opened and the rename would replace.
    """
    given = os.fspath(path)
    try:
        found: os.stat_result | None = os.stat(given)
    except FileNotFoundError:
        found = None
    mode = found.st_mode if found is not None else None
    if os.path.basename(given) in ("", ".", ".."):  # "copy/" must not become "copy"
        mode = stat.S_IFDIR
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), given)
    if found is not None and mode is not None and is_filled_in_place(mode):
        return DownloadTarget(given, in_place=True, node=node_of(found))
    if mode is not None and not stat.S_ISREG(mode):
        raise OSError(f"not a regular file: {given} (a download would replace it, not fill it)")
    # The rename that replaces the file needs only its folder's permission: a read-only
    # file, or another user's, would be replaced where virsh's open for writing is refused.
    # The effective ids decide, as they decide that open.
    if mode is not None and not os.access(given, os.W_OK, effective_ids=_EFFECTIVE_IDS):
        # access() does not say why: a read-only file system is named as the open names it.
        why = errno.EROFS if os.statvfs(given).f_flag & os.ST_RDONLY else errno.EACCES
        raise OSError(why, os.strerror(why), given)
    if found is not None and _append_only(given, os.O_RDONLY):
        # access() lets it be written (at its end): virsh's open to write it over is
        # refused, and so would the rename over it be, once the whole volume went by.
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), given)
    real = os.path.realpath(given)
    if found is not None and not _leads_to(real, found):
        # No name leads to the file (unlinked, or never named: a program's stdout caught in
        # Python's TemporaryFile, O_TMPFILE; /proc names it "/tmp/#12345 (deleted)"): it
        # is written through the path given, as virsh writes it, or a new file would be
        # made at that made-up name and the one asked for left empty.
        return DownloadTarget(
            given,
            in_place=False,
            node=node_of(found),
            overwrite=True,
            owner=found.st_uid,
            follow=True,
        )
    if found is None:
        if _append_only(os.path.dirname(real), os.O_RDONLY | os.O_DIRECTORY):
            return DownloadTarget(real, in_place=False, overwrite=True)
    elif not _replaceable(real, found) or _attributes_unreadable(given):
        # A file this process may write but not read whose ``user.*`` attributes it cannot
        # read, so none it could give a replacement: written in place, it keeps them, as
        # virsh's write keeps them.
        return DownloadTarget(
            real, in_place=False, node=node_of(found), overwrite=True, owner=found.st_uid
        )
    return DownloadTarget(real, in_place=False)


def _attributes_unreadable(path: str) -> bool:
    """Whether ``path`` carries ``user.*`` extended attributes this process may not read:
    reading one takes read permission on the file, listing them does not."""
    if os.access(path, os.R_OK, effective_ids=_EFFECTIVE_IDS):
        return False
    try:
        return any(name.startswith("user.") for name in os.listxattr(path))
    except OSError:  # a file system that keeps none
        return False


def _leads_to(path: str, found: os.stat_result) -> bool:
    """Whether ``path`` names the file ``found``."""
    try:
        return os.path.samestat(os.stat(path), found)
    except OSError:
        return False


def _append_only(path: str, flags: int) -> bool:
    """Whether the file or folder at ``path`` is append-only (``chattr +a``): a file
    takes writes at its end only; a folder's names cannot be renamed or removed, so no
    temporary there can take a file's place, nor be removed after a failure. False where
    it cannot be opened (``flags``) to ask, or its file system keeps no such flags."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return bool(files.inode_flags(fd) & files.FS_APPEND_FL)
    except OSError:
        return False
    finally:
        os.close(fd)


def _replaceable(path: str, found: os.stat_result) -> bool:
    """Whether this process may rename a new file over the file ``found`` at ``path``."""
    folder = os.path.dirname(path)
    if not os.access(folder, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE_IDS):
        return False
    if _is_mount_point(path, found, folder):
        return False  # a rename over it is refused (EBUSY), whoever asks
    if _append_only(folder, os.O_RDONLY | os.O_DIRECTORY):
        return False  # so is one in such a folder (EPERM)
    user = os.geteuid()
    if user == 0:  # a sticky folder's rule does not hold root back
        return True
    held = os.stat(folder)
    return not held.st_mode & stat.S_ISVTX or user in (held.st_uid, found.st_uid)


_EFFECTIVE_IDS = os.access in os.supports_effective_ids


def _is_mount_point(path: str, found: os.stat_result, folder: str) -> bool:
    """Whether the file ``found`` at ``path`` (a real path) is mounted there: a file bound
    over the name, as a container's /etc/hosts or an image from another file system, which
    no rename may replace (EBUSY).

    It is when its mount is not its folder's, each as the name leads to it now. The mount
    table is not asked: it also lists a mount hidden by another mounted over its folder,
    and the file then at the name is that file system's own, which a rename replaces
    (written in place, a failure would cut it short). Where the kernel cannot say (no
    /proc), the file is taken as not mounted: the download goes as it always went, and a
    rename refused at the end loses nothing."""
    try:
        mounts = {_mount_id(path, found), _mount_id(folder, None)}
    except OSError:
        return False
    return None not in mounts and len(mounts) == 2


def _mount_id(path: str, expected: os.stat_result | None) -> int | None:
    """The id of the mount ``path`` is on (``/proc/self/fdinfo``'s ``mnt_id``), its last
    name not followed; None where it is no longer the file ``expected``, or unsaid."""
    # O_PATH: a look at the name, not an open of the file (no device's open runs).
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if expected is not None and not os.path.samestat(os.fstat(fd), expected):
            return None
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            for line in info:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    finally:
        os.close(fd)
    return None


def _open_to_overwrite(target: DownloadTarget) -> int:
    """The file of ``target`` (``overwrite``), truncated as virsh's open truncates it;
    made, as virsh's open makes it, where ``target`` names no file (``node`` None): one
    that appeared at the name since is refused (EEXIST), untouched.

    Only if what opens is on the same file system with the same inode number, kind and
    owner as the file looked at; otherwise (ESTALE) nothing is truncated. That tells a
    file put at the name since from the one looked at, but not in every case: a removed
    file's inode number is soon given to a new one, and a new file of the same owner
    that got it passes (one of another user's does not, by its owner)."""
    # What opens may no longer be a regular file: O_NONBLOCK keeps a FIFO swapped in
    # from holding the open until a reader comes, O_NOCTTY a terminal swapped in from
    # becoming this process's controlling terminal; either is then refused (a FIFO
    # without a reader by the open itself, ENXIO; anything else as not the file looked
    # at, ESTALE).
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    if not target.follow:
        flags |= os.O_NOFOLLOW
    if target.node is None:
        return os.open(target.path, flags | os.O_CREAT | os.O_EXCL, 0o666)
    fd = os.open(target.path, flags)
    try:
        opened = os.fstat(fd)
        if node_of(opened) != target.node or opened.st_uid != target.owner:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), target.path)
        os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


class DownloadOutput:
    """A download's destination, open: ``writer`` takes the stream in order; ``commit``
    makes the result final and ``abort`` (or leaving it as a context manager uncommitted)
    drops it. The one place both engines decide how a target is written:

    - a regular file (or a new one): an ``AtomicFile`` written by a ``SparseWriter``,
      renamed over the target on commit, removed on abort; written back as it comes
      when it replaces a file;
    - a FIFO or a device: the node itself, written by a ``SequentialWriter`` as the
      bytes arrive (holes as zeros); commit and abort only close it, as whatever was
      written has been read or stored already;
    - a regular file that cannot be replaced (``DownloadTarget.overwrite``): the file
      itself, truncated (or made, in an append-only folder) and written by a
      ``SparseWriter``; commit and abort close it, a failure leaving it cut short, as
      virsh leaves it.

    Opening a FIFO waits for its reader while ``wanted()`` holds (see
    ``sparse.sequential.open_in_place``); ``on_wait`` is called while a write into it
    waits for room (``SequentialWriter``).
    """

    def __init__(
        self,
        target: DownloadTarget,
        *,
        detect_zeroes: bool,
        wanted: Callable[[], bool] = lambda: True,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self._atomic: AtomicFile | None = None
        self._fd = -1
        if target.in_place:
            self._fd = open_in_place(target.path, wanted, node=target.node)
            self.writer: SparseWriter | SequentialWriter = SequentialWriter(self._fd, on_wait)
        elif target.overwrite:
            self._fd = _open_to_overwrite(target)
            self.writer = SparseWriter(self._fd, detect_zeroes=detect_zeroes)
        else:
            self._atomic = AtomicFile(target.path)
            try:
                # Renamed over a file, the new one is written back by ext4 at the rename
                # (auto_da_alloc), all of it then, and the command waits for it: started
                # as the data comes, the disk writes it while the rest arrives.
                self.writer = SparseWriter(
                    self._atomic.fd, detect_zeroes=detect_zeroes, writeback=self._atomic.replaces
                )
            except BaseException:  # nobody would leave this as a context manager
                self._atomic.abort()
                raise

    def stop(self) -> None:
        """Make a write into a FIFO or device that waits for room give up (from any
        thread): a cancelled download must not wait for a reader that stalls."""
        if isinstance(self.writer, SequentialWriter):
            self.writer.stop()

    def commit(self) -> None:
        """Make the download final (after the writer's ``finish``)."""
        if self._atomic is not None:
            self._atomic.commit()
        else:
            self._close()

    def abort(self) -> None:
        """Drop a download not committed; a no-op after ``commit``, safe to call twice."""
        if self._atomic is not None:
            self._atomic.abort()
        else:
            self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> DownloadOutput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()
