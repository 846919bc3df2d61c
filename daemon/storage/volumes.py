"""Volume files of one directory pool, reached only through the pool directory's descriptor.

Every name is checked to be a plain file name and every open uses the pool
directory fd with O_NOFOLLOW, so no volume operation can read or write outside
the pool directory, whatever symlinks are planted in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fcntl
import functools
import logging
import os
import secrets
import stat
import struct
import threading
from typing import TYPE_CHECKING

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.sparse import files as sparse_files
from virtvol.sparse.writer import take_over

from .copyonwrite import set_copy_on_write
from .names import RESERVED_PREFIX, is_volume_name
from .probe import (
    DIRECTORY,
    HEADER_LIMIT,
    BackingStore,
    ImageHeader,
    detect_format,
    probe_header,
)
from .reports import (
    cannot_resize_image,
    cannot_wipe_ploop,
    needs_qemu_img,
    no_volume_named,
    storage_error,
    system_error,
    volume_exists,
    volume_in_use,
)
from .resizerules import new_capacity
from .volxml import MAX_FILE_SIZE, VolumeRequest

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Callable

VOLUME_MODE = 0o600  # what libvirt gives the files it creates in a dir pool
_UPLOAD_PREFIX = RESERVED_PREFIX + "upload-"


class OtherFile(enum.Enum):
    """A file at a volume's name that ``VolumeDir.stat`` does not take for a volume, as
    libvirt sees it (``VolumeDir.other_file``)."""

    # A symbolic link to a file or a folder: libvirt lists it as a volume of that name.
    LISTED_AS_VOLUME = "listed as a volume"
    # Anything else there once links are followed (a FIFO, a socket, a device): libvirt
    # finds the new volume's path taken.
    PATH_TAKEN = "path taken"


# Fresh names tried for an upload temporary that another daemon's clean-up removes at once.
_TEMP_ATTEMPTS = 3

# O_NONBLOCK: opening a FIFO someone planted must not hang; it is refused
# right after by the regular-file check. No effect on regular files.
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


class VolumeDir:
    """The files of an active pool; ``fd`` is the open pool directory."""

    def __init__(
        self,
        path: str,
        fd: int,
        temps: dict[str, int | None] | None = None,
        *,
        scanning: threading.Lock | None = None,
    ) -> None:
        self.path = path
        self.fd = fd
        # Held while the directory's entries are read through ``fd`` (``names``,
        # ``remove_stale_temps``). A view's ``fd`` is a duplicate, which shares the
        # directory's read position with the one it was made from, and ``os.scandir``
        # reads from that position and rewinds it when done: two scans at once would each
        # find some entries, none or some twice. So a view shares its directory's lock.
        self._scanning = threading.Lock() if scanning is None else scanning
        # The upload temporaries made here and not yet replaced or removed, each with a
        # descriptor of its own that holds its lock, None while it is being made (see
        # ``create_upload_temp``); a view shares its directory's (``view``).
        self._temps: dict[str, int | None] = {} if temps is None else temps
        # The names of the extended attributes each of those was given from its volume.
        self._given: dict[str, set[str]] = {}
        # Calls working in the directory outside the registry's lock (``hold``), and
        # whether ``close`` was asked for: the descriptor is closed after the last of them.
        self._users_lock = threading.Lock()
        self._users = 0
        self._closing = False

    def volume_path(self, name: str) -> str:
        """The volume's absolute path, which is also its key."""
        return ("" if self.path == "/" else self.path) + "/" + name

    def close(self) -> None:
        """Close the pool directory descriptor once no call holds it (``hold``); safe to
        call twice. A closed number goes to the next file opened: a call going on with it
        would make, rename or remove files in whatever directory got it."""
        with self._users_lock:
            if self._closing:
                return
            self._closing = True
            idle = self._users == 0
        if idle:
            os.close(self.fd)

    def hold(self) -> None:
        """Keep the descriptor open, whatever stops the pool, until ``let_go``. Taken
        under the registry's lock from a running pool, so never after ``close``."""
        with self._users_lock:
            assert not self._closing, "a stopped pool's directory is held"
            self._users += 1

    def let_go(self) -> None:
        """The end of a ``hold``: the last one after ``close`` closes the descriptor."""
        with self._users_lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            os.close(self.fd)

    def view(self) -> VolumeDir:
        """The same directory through a descriptor of its own, for looking at its entries
        outside the registry lock: a sub-directory may be the mount point of a file system
        that stopped answering, and only the call looking at it should wait. Stopping the
        pool meanwhile leaves the view's descriptor valid. Close it after use (``with``).
        It knows the directory's running uploads, so its ``remove_stale_temps`` leaves
        their temporaries alone, and its scans take turns with the directory's
        (``_scanning``)."""
        return VolumeDir(self.path, os.dup(self.fd), self._temps, scanning=self._scanning)

    def __enter__(self) -> VolumeDir:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def in_place(self) -> bool:
        """True while ``path`` still names the directory that was opened (not one moved,
        removed or replaced by a symbolic link to another since)."""
        try:
            named = os.stat(self.path)
        except OSError:
            return False
        opened = os.fstat(self.fd)
        return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)

    # -- looking up -------------------------------------------------------

    def stat(self, name: str) -> os.stat_result | None:
        """The volume's stat, or None when ``name`` is not a volume of the pool: a regular
        file or, as libvirt lists them, a sub-directory."""
        if not is_volume_name(name):
            return None
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return None
        return st if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else None

    def other_file(self, name: str) -> OtherFile | None:
        """What stands at ``name`` that ``stat`` does not take for a volume, in libvirt's
        eyes (``OtherFile``); None for nothing, a volume, or a dangling link."""
        try:
            found = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            if stat.S_ISREG(found.st_mode) or stat.S_ISDIR(found.st_mode):
                return None
            target = os.stat(name, dir_fd=self.fd)
        except OSError:
            return None
        if stat.S_ISLNK(found.st_mode) and (
            stat.S_ISREG(target.st_mode) or stat.S_ISDIR(target.st_mode)
        ):
            return OtherFile.LISTED_AS_VOLUME
        return OtherFile.PATH_TAKEN

    def is_directory(self, name: str) -> bool:
        """Whether volume ``name`` is a sub-directory (a volume of type dir)."""
        st = self.stat(name)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def require(self, name: str) -> os.stat_result:
        """The volume's stat, or libvirt's "no storage vol with matching name" error."""
        st = self.stat(name)
        if st is None:
            raise no_volume_named(name)
        return st

    def names(self) -> list[str]:
        """Volume names in sorted order: regular files and sub-directories; symlinks,
        other kinds of file and upload temporaries are not volumes."""
        found = []
        with self._scanning, os.scandir(self.fd) as entries:
            for entry in entries:
                if is_volume_name(entry.name) and (
                    entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)
                ):
                    found.append(entry.name)
        return sorted(found)

    def open(self, name: str, flags: int, *, stream: bool = False) -> int:
        """Open an existing volume file; symlinks and other non-regular files count as
        missing, but a sub-directory opened for writing fails as libvirt's open does (EISDIR).

        ``stream``: for an upload or a download, refused with libvirt's words for those.
        """
        if not is_volume_name(name):
            raise no_volume_named(name)
        try:
            fd = os.open(name, flags | _OPEN_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                raise no_volume_named(name) from None
            path = self.volume_path(name)
            if stream:
                raise system_error(
                    f"Unable to open stream for '{path}'", exc, ErrorDomain.STREAMS
                ) from None
            raise system_error(f"cannot open volume '{path}'", exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise no_volume_named(name)
        return fd

    def open_in_place(self, name: str, flags: int, *, stream: bool = False) -> int:
        """Open a volume to change its content in place (wipe, resize, ranged upload).

        A file with more than one hard link is refused: its other names may be
        outside the pool, and an in-place change would reach them too.
        """
        fd = self.open(name, flags, stream=stream)
        links = os.fstat(fd).st_nlink
        if links > 1:
            os.close(fd)
            raise storage_error(
                ErrorCode.OPERATION_INVALID,
                f"volume '{name}' has {links} hard links; changing it in place would change "
                "every file linked to it",
            )
        return fd

    def open_to_change(
        self,
        name: str,
        *,
        write_only_will_do: bool,
        refuse_unshared_writers: bool = False,
        stream: bool = False,
    ) -> int:
        """Volume ``name`` open to be changed in place (``open_in_place``) and marked as
        written (``mark_as_written``), or refused as in use where another daemon's
        whole-volume upload is about to rename a new file over it
        (``check_not_being_replaced``): a write, wipe or resize done there would go into
        the replaced file, reported done. Opened for reading too, which the mark needs;
        with ``write_only_will_do``, for writing only where the daemon may not read it
        (as libvirt opens it), unmarked then. ``refuse_unshared_writers``: refused too
        while a process that does not share writing (QEMU) holds it."""
        try:
            fd = self.open_in_place(name, os.O_RDWR, stream=stream)
        except ErrorReport as exc:
            if not write_only_will_do or exc.code != ErrorCode.SYSTEM_ERROR:
                raise
            fd = self.open_in_place(name, os.O_WRONLY, stream=stream)
        try:
            mark_as_written(fd)
            self.check_not_being_replaced(name, fd, refuse_unshared_writers=refuse_unshared_writers)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_not_written_elsewhere(self, name: str, fd: int) -> None:
        """Refuse, as libvirt refuses a volume in use, to replace volume ``name`` (open as
        ``fd``) while a guest, or another daemon serving the directory, writes it
        (``mark_as_written``): the writer would go on writing into the replaced file,
        every write after the rename lost."""
        if _marked_as_written(fd):
            raise volume_in_use(name)

    # -- what the files hold -------------------------------------------------

    def header(self, name: str, st: os.stat_result) -> ImageHeader:
        """What volume ``name`` (found with ``st``) is: a sub-directory is format dir,
        whether or not it may be opened; a file is what its first bytes say
        (``probe.probe_header``), raw when it cannot be read, as its bytes cannot tell
        otherwise."""
        if stat.S_ISDIR(st.st_mode):
            return DIRECTORY
        try:
            fd = os.open(name, os.O_RDONLY | _OPEN_FLAGS, dir_fd=self.fd)
        except OSError:
            return ImageHeader()
        try:
            return _header_of(fd)
        finally:
            os.close(fd)

    # -- creating ---------------------------------------------------------

    def _create_file(self, name: str, mode: int = VOLUME_MODE) -> int:
        try:
            return os.open(
                name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, mode, dir_fd=self.fd
            )
        except OSError as exc:
            # A file made there since the name was checked, or a dangling symbolic link
            # (which libvirt does not list either): EEXIST, in libvirt's words for it.
            raise _driver_error(f"Failed to create file '{self.volume_path(name)}'", exc) from None

    def _extend(self, fd: int, name: str, capacity: int) -> None:
        """Give a new volume file its size (past the file system's largest file: EFBIG)."""
        try:
            os.ftruncate(fd, capacity)
        except OSError as exc:
            raise _driver_error(f"cannot extend file '{self.volume_path(name)}'", exc) from None

    def _allocate(self, fd: int, name: str, allocation: int) -> None:
        """Reserve the blocks of a new volume's first ``allocation`` bytes."""
        try:
            sparse_files.allocate(fd, 0, allocation)
        except OSError as exc:
            path = self.volume_path(name)
            raise _driver_error(
                f"cannot allocate {allocation} bytes in file '{path}'", exc
            ) from None

    def _apply_permissions(self, fd: int, request: VolumeRequest) -> None:
        """The mode, owner and group the volume's XML asks for (open's mode is under umask)."""
        try:
            if request.mode is not None:
                os.fchmod(fd, request.mode)
            if request.owner is not None or request.group is not None:
                owner, group = request.owner, request.group
                os.fchown(fd, -1 if owner is None else owner, -1 if group is None else group)
        except OSError as exc:
            path = self.volume_path(request.name)
            raise _driver_error(f"Failed to create file '{path}'", exc) from None

    def _discard(self, name: str, fd: int) -> None:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self.fd)

    def create(self, request: VolumeRequest) -> None:
        """Create a raw file: sparse, with ``request.allocation`` bytes preallocated; or a
        sub-directory, for format dir (``buildrules`` has checked the request)."""
        if request.format == "dir":
            self._create_directory(request)
            return
        capacity = request.capacity or 0
        allocation = capacity if request.allocation is None else request.allocation
        fd = self._create_file(request.name)
        path = self.volume_path(request.name)
        try:
            self._apply_permissions(fd, request)
            if request.nocow:
                set_copy_on_write(fd, path, enabled=False)
            self._extend(fd, request.name, capacity)
            self._allocate(fd, request.name, allocation)
        except BaseException:
            self._discard(request.name, fd)
            raise
        os.close(fd)

    def _create_directory(self, request: VolumeRequest) -> None:
        """A new, empty sub-directory with the mode (libvirt's 0600 for new volumes unless
        the XML gives one), owner and group asked for; capacity and allocation mean
        nothing for it, as in libvirt."""
        name, path = request.name, self.volume_path(request.name)
        try:
            os.mkdir(name, 0o700, dir_fd=self.fd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS, dir_fd=self.fd)
        except FileExistsError:
            raise volume_exists(name) from None
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=self.fd)
            raise _driver_error(f"cannot create path '{path}'", exc) from None
        try:
            os.fchmod(fd, VOLUME_MODE if request.mode is None else request.mode)
            if request.owner is not None or request.group is not None:
                owner, group = request.owner, request.group
                os.fchown(fd, -1 if owner is None else owner, -1 if group is None else group)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=self.fd)
            raise _driver_error(f"cannot create path '{path}'", exc) from None
        finally:
            os.close(fd)

    def source_header(self, name: str) -> ImageHeader:
        """What volume ``name``, the source of a clone, is (``header``)."""
        return self.header(name, self.require(name))

    def create_from(
        self,
        request: VolumeRequest,
        source: str,
        *,
        reflink: bool = False,
        origin: VolumeDir | None = None,
    ) -> None:
        """Create a raw file holding a copy of volume ``source`` of ``origin`` (another
        pool's directory; this one when None).

        The new capacity is the larger of the requested one and the source's
        size. Only the source's data extents are copied, so its holes stay holes,
        unless the allocation asked for (the new capacity when none is) is at least
        the source's size: then that much is allocated, as libvirt allocates it, and a
        thick volume asked for is not handed over thin. libvirt allocates before it
        copies; here the copy comes first, as ``copy_file_range`` may share the source's
        blocks (XFS, Btrfs), and the copied range is then unshared with fallocate's
        UNSHARE_RANGE. Only ext4, which shares no blocks, is tested: on XFS the unsharing
        is untested, and on Btrfs, which cannot unshare a range, the copied data may stay
        shared with the source (its holes are allocated).
        With ``reflink`` the file shares the source's blocks instead, and a file
        system that cannot share them fails the call, as in libvirt (no copy). A
        source that is an image (qcow2 and the like) is refused: libvirt converts
        those with qemu-img.
        """
        origin = self if origin is None else origin
        if origin.is_directory(source):
            if reflink:
                # A directory has no blocks to share; libvirt's clone ioctl fails so.
                raise system_error(
                    f"failed to clone files from '{origin.volume_path(source)}'",
                    errno.EISDIR,
                    ErrorDomain.STORAGE,
                )
            # libvirt reads no bytes from a directory: the copy is an empty raw file,
            # whatever format its definition names, allocated as a new one (a directory's
            # size is 0, which no allocation is less than).
            self.create(dataclasses.replace(request, format="raw"))
            return
        src_fd = origin.open(source, os.O_RDONLY)
        try:
            if not _header_of(src_fd).is_raw:
                # A byte copy of an image is that image, not the raw volume asked for;
                # libvirt converts it with qemu-img.
                raise needs_qemu_img()
            size = os.fstat(src_fd).st_size
            capacity = max(request.capacity or 0, size)
            allocation = capacity if request.allocation is None else request.allocation
            dst_fd = self._create_file(request.name)
            try:
                self._apply_permissions(dst_fd, request)
                if request.nocow:
                    set_copy_on_write(dst_fd, self.volume_path(request.name), enabled=False)
                if reflink:
                    _share_blocks(src_fd, dst_fd, origin.volume_path(source))
                self._extend(dst_fd, request.name, capacity)
                if not reflink:
                    sparse_files.copy_sparse(src_fd, dst_fd, size)
                if allocation >= size:
                    # After the copy, which may share the source's blocks (copy_file_range
                    # on XFS): allocated before, a shared range would no longer be the
                    # clone's own. Unsharing it is left out of a clone asked to share.
                    self._allocate(dst_fd, request.name, allocation)
                    if not reflink:
                        sparse_files.unshare(dst_fd, 0, size)
            except OSError as exc:
                self._discard(request.name, dst_fd)
                raise system_error(
                    f"failed to copy '{origin.volume_path(source)}' to "
                    f"'{self.volume_path(request.name)}'",
                    exc,
                ) from None
            except BaseException:
                self._discard(request.name, dst_fd)
                raise
            os.close(dst_fd)
        finally:
            os.close(src_fd)

    # -- changing ---------------------------------------------------------

    def delete(self, name: str) -> None:
        """Remove the volume file, or the sub-directory when it is empty (as libvirt)."""
        directory = stat.S_ISDIR(self.require(name).st_mode)
        marked = -1 if directory else self._mark_for_removal(name)
        try:
            if directory:
                os.rmdir(name, dir_fd=self.fd)
            else:
                os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            raise no_volume_named(name) from None
        except OSError as exc:
            path = self.volume_path(name)
            if directory:
                raise _driver_error(f"cannot remove directory '{path}'", exc) from None
            raise system_error(f"cannot unlink file '{path}'", exc) from None
        finally:
            if marked >= 0:
                os.close(marked)

    def _mark_for_removal(self, name: str) -> int:
        """Volume file ``name`` marked as written (``mark_as_written``) until it is removed,
        or refused as in use where another daemon's whole-volume upload is about to rename
        a new file over it (``check_not_being_replaced``): removed then, the volume would
        come back with the upload's bytes, its removal reported done. Returns the
        descriptor that holds the mark; -1 for a file the daemon may not read (which the
        mark needs) or one gone meanwhile (the removal then says so). One gone once
        opened is no volume, as it is to the removal."""
        try:
            fd = os.open(name, os.O_RDONLY | _OPEN_FLAGS, dir_fd=self.fd)
        except OSError:
            return -1
        try:
            mark_as_written(fd)
            self.check_not_being_replaced(name, fd, refuse_unshared_writers=False)
        except ErrorReport:
            os.close(fd)
            if self.stat(name) is None:  # removed meanwhile, by another daemon
                raise no_volume_named(name) from None
            raise
        except BaseException:
            os.close(fd)
            raise
        return fd

    def wipe(self, name: str) -> None:
        """Make the whole volume read as zeros, keeping its size.

        As libvirt: a sparse volume is left with no blocks, a fully allocated one
        keeps them all (its space stays reserved), now holding zeros. An image file
        (qcow2 and the like) is zeroed whole, header included, as libvirt zeroes it: it
        is an empty raw volume afterwards. A ploop image is refused (libvirt wipes those
        with ploop's tools).
        """
        self.check_wipeable(name)
        fd = self.open_to_change(name, write_only_will_do=True)
        try:
            st = os.fstat(fd)
            # Read through a descriptor of its own: ``fd`` may only write.
            if self.header(name, st).format == "ploop":
                raise cannot_wipe_ploop()
            sparse_files.punch_hole(fd, 0, st.st_size)
            if sparse_files.fully_allocated(st):
                sparse_files.allocate(fd, 0, st.st_size)
        except OSError as exc:
            raise system_error(f"Failed to wipe vol '{self.volume_path(name)}'", exc) from None
        finally:
            os.close(fd)

    def check_wipeable(self, name: str) -> None:
        """Refuse a sub-directory as libvirt's wipe does, whatever the algorithm: it opens
        the volume before it looks at the algorithm, and a directory fails there."""
        if self.is_directory(name):
            path = self.volume_path(name)
            raise _driver_error(f"Failed to open storage volume with path '{path}'", errno.EISDIR)

    def resize(
        self, name: str, capacity: int, *, delta: bool, shrink: bool, allocate: bool
    ) -> None:
        """Change the volume's size with libvirt's rules (see StorageRegistry.resize_volume).

        The rules measure an image's virtual size; an image passes them and is then
        refused, since only qemu-img (or ploop's tools) could resize it.
        """
        if self.is_directory(name):
            # Nothing counted in a directory: the rules see size 0, then qemu-img's turn.
            self._new_size(0, 0, capacity, delta=delta, shrink=shrink, allocate=allocate)
            raise cannot_resize_image(DIRECTORY.format, None, allocate=allocate)
        fd = self.open_to_change(name, write_only_will_do=False)
        path = self.volume_path(name)
        try:
            st = os.fstat(fd)
            header = _header_of(fd)
            # An image's capacity is its virtual size: the shrink rules apply to that.
            current = st.st_size if header.capacity is None else header.capacity
            allocation = st.st_blocks * 512
            new = self._new_size(
                current, allocation, capacity, delta=delta, shrink=shrink, allocate=allocate
            )
            if not header.is_raw:
                # Truncating an image would cut or pad its structure, not change its size.
                raise cannot_resize_image(header.format, header.encryption, allocate=allocate)
            if new > MAX_FILE_SIZE:
                # libvirt hands the size to ftruncate, whose off_t is signed: 2**63 and
                # more are negative there.
                raise system_error(f"Failed to truncate file '{path}'", errno.EINVAL)
            try:
                if allocate and new > current:
                    # libvirt allocates the whole volume, the holes already in it too.
                    try:
                        sparse_files.allocate(fd, 0, new)
                    except OSError:
                        os.ftruncate(fd, current)  # give back what the failed call took
                        raise
                os.ftruncate(fd, new)
            except OSError as exc:
                raise system_error(f"Failed to truncate file '{path}'", exc) from None
        finally:
            os.close(fd)

    def _new_size(
        self,
        current: int,
        allocation: int,
        capacity: int,
        *,
        delta: bool,
        shrink: bool,
        allocate: bool,
    ) -> int:
        """The size a resize asks for, after libvirt's checks of it (``new_capacity``) and,
        to preallocate, of the pool's free space."""
        # The free space is checked first, as libvirt does: a failing fallocate keeps the
        # blocks it got, so trying would fill the file system before failing.
        return new_capacity(
            current,
            capacity,
            lambda: allocation,
            delta=delta,
            shrink=shrink,
            available=self.available if allocate else None,
        )

    def available(self) -> int:
        """Bytes the pool's file system has free for unprivileged use (the pool's "available")."""
        fs = os.statvfs(self.fd)
        return fs.f_frsize * fs.f_bavail

    # -- whole-volume upload temporaries ------------------------------------

    def create_upload_temp(self, like: str) -> tuple[str, int]:
        """Create a hidden temporary file for replacing volume ``like``.

        It gets the volume's permission bits (never a set-user-ID or set-group-ID
        bit: those were given to the old content), its owner and group where
        permitted (``take_over``), exactly its access ACL (an in-place write
        keeps the ACL; without it the group bits, which show the ACL's mask, would
        let the owning group in), its extended attributes, an SELinux label among
        them, and its attribute flags (``chattr``'s: synchronous writes, no copy on
        write...): an attribute or a flag that cannot be given refuses the upload. Its
        name starts with the reserved prefix, so listings never show it. It stays locked
        (``flock``) until ``replace`` or ``remove_temp``: another daemon serving the
        directory must not take it for a crash's leftover (``remove_stale_temps``).
        """
        st = self.require(like)
        acl = self._access_acl(like)
        for _ in range(_TEMP_ATTEMPTS):
            name = _UPLOAD_PREFIX + secrets.token_hex(8)
            # Known as a running upload's before it exists: a clean-up of this daemon
            # leaves it, whether or not the file system has locks to show it held.
            self._temps[name] = None
            try:
                fd = self._create_file(name, VOLUME_MODE)
            except BaseException:
                self._unlock(name)
                raise
            try:
                if not _lock(fd) or os.fstat(fd).st_nlink == 0:
                    # Another daemon's clean-up came between the creation and the lock.
                    os.close(fd)
                    self._unlock(name)
                    continue
                # Before the mode is taken: an unprivileged daemon may not set a
                # ``user.*`` attribute on a read-only file, even one it created.
                given = self._take_attributes(like, fd)  # while it is empty (btrfs's C)
                take_over(fd, st)
                self._set_access_acl(name, fd, acl)
                self._temps[name] = os.dup(fd)  # keeps the lock once the writer closes fd
                self._given[name] = given
            except BaseException:
                self._discard(name, fd)
                self._unlock(name)
                raise
            return name, fd
        raise storage_error(
            ErrorCode.OPERATION_FAILED, f"cannot keep an upload temporary in '{self.path}'"
        )

    def _open_reading_or_writing(self, name: str) -> int:
        """A descriptor on entry ``name`` that reads, or only writes where it may not be
        read: a lock, an ACL or a look at a volume needs one or the other, and a volume (or
        an upload's temporary, with its volume's permission bits) may allow only one of
        them. PermissionError where it allows neither."""
        try:
            return os.open(name, os.O_RDONLY | _OPEN_FLAGS, dir_fd=self.fd)
        except PermissionError:
            return os.open(name, os.O_WRONLY | _OPEN_FLAGS, dir_fd=self.fd)

    def _access_acl(self, name: str) -> bytes | None:
        """Volume ``name``'s access ACL, read through a descriptor that reads, or only
        writes where the volume may not be read (an upload needs only that)."""
        try:
            fd = self._open_reading_or_writing(name)
            try:
                return sparse_files.access_acl(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            path = self.volume_path(name)
            raise system_error(f"cannot read the ACL of '{path}'", exc) from None

    def _take_attributes(self, name: str, fd: int, given: set[str] | None = None) -> set[str]:
        """Give the temporary ``fd`` volume ``name``'s extended attributes and attribute
        flags (``chattr``'s), or refuse the upload (``sparse_files.copy_extended_attributes``
        and ``copy_inode_flags`` say why all or nothing); ``given``: the attributes an
        earlier call gave it. Returns the names of the attributes given."""
        path = self.volume_path(name)
        try:
            volume = os.open(name, os.O_RDONLY | _OPEN_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            raise system_error(f"cannot read the extended attributes of '{path}'", exc) from None
        try:
            try:
                copied = sparse_files.copy_extended_attributes(volume, fd, given=given or ())
            except sparse_files.AttributeNotKept as exc:
                what = f"cannot keep extended attribute '{exc.attribute}' of '{path}'"
                raise system_error(what, exc) from None
            except OSError as exc:
                what = f"cannot read the extended attributes of '{path}'"
                raise system_error(what, exc) from None
            try:
                sparse_files.copy_inode_flags(volume, fd)
            except sparse_files.FlagsNotKept as exc:
                what = f"cannot keep attribute flags '{exc.letters}' of '{path}'"
                raise system_error(what, exc) from None
            except OSError as exc:
                raise system_error(f"cannot read the attribute flags of '{path}'", exc) from None
        finally:
            os.close(volume)
        return copied

    def _set_access_acl(self, name: str, fd: int, acl: bytes | None) -> None:
        try:
            sparse_files.set_access_acl(fd, acl)
        except OSError as exc:
            path = self.volume_path(name)
            raise system_error(f"cannot set the ACL of '{path}'", exc) from None

    def replace(
        self, temp: str, name: str, *, kept_from: os.stat_result | None = None
    ) -> Callable[[], None] | None:
        """Atomically put file ``temp`` in place of volume ``name``.

        An upload temporary first takes again the volume's extended attributes, owner,
        permissions and ACL (``_take_changes``): the upload ran for a while, and what
        changed on the volume meanwhile is kept, as a write in place keeps it. Its
        bytes are another matter: ``kept_from`` is the volume as the upload found it, and
        one written since (another daemon's write in place or wipe, a guest gone since)
        is refused as in use: renamed over, every byte of that write would be lost; so is
        one deleted and made again since, and one deleted since is refused as no volume.

        The replaced file stays referenced (an ``O_PATH`` descriptor) until the
        returned callable runs: the last reference to a large file is what
        frees its page cache and blocks, which takes a while for a large file
        (docs/performance.md), and whoever waits for the rename need not wait for that.
        """
        guard = -1
        try:
            held = self._temps.get(temp)
            if held is not None:
                self._take_changes(name, held, self._given.get(temp, set()))
                # Last, right before the rename: a guest may have started on the volume
                # since the upload was opened, or while its metadata was taken.
                guard = self._keep_writers_out(name, kept_from)
            try:
                old = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            except OSError:
                old = -1
            try:
                os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            except BaseException:
                if old >= 0:
                    os.close(old)
                raise
        finally:
            if guard >= 0:
                os.close(guard)  # its locks go with it
            self._unlock(temp)
        return None if old < 0 else functools.partial(os.close, old)

    def _keep_writers_out(self, name: str, kept_from: os.stat_result | None = None) -> int:
        """Open whatever volume ``name`` is now and lock it against writers that start
        from here (``_REPLACING_BYTES``), then refuse it if another daemon's whole-volume
        upload holds it so too, if one already writes it (``check_not_written_elsewhere``)
        or wrote it since it was ``kept_from`` (a writer done before the lock: its size or
        its modification time moved).
        A name that no longer leads to the very file ``kept_from`` describes, before or
        after the holds, is refused:
        the rename would bring a volume deleted meanwhile back (refused as no volume), or
        put the upload's bytes in place of a volume made again under its name, or of
        another whole-volume upload's file (refused as in use, as a write meanwhile is),
        where libvirtd's write into the file it opened never lands in either.
        Returns the descriptor holding the locks, which the caller closes once the rename
        is done; -1 when there is no regular file to guard (a sub-directory refuses the
        rename, and a volume gone or swapped for a link, a FIFO or a device is nobody's
        disk)."""
        st = self.stat(name)
        if kept_from is not None:
            if st is None:
                raise no_volume_named(name)
            if not _same_file(st, kept_from):
                raise volume_in_use(name)
        if st is None or not stat.S_ISREG(st.st_mode):
            return -1
        try:
            fd = self._open_reading_or_writing(name)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                raise
            # Gone or swapped since its stat.
            if kept_from is not None:
                raise no_volume_named(name) from None
            return -1
        try:
            for byte in _REPLACING_BYTES:
                if not _hold(fd, byte):
                    raise volume_in_use(name)
            # Held shared, so another daemon's whole-volume upload in its own last steps got
            # it too: of two renames one would drop the other's upload, reported done.
            # Whichever looks last sees the other.
            if _locked_elsewhere(fd, _VIRTVOLD_REPLACING_BYTE, 1):
                raise volume_in_use(name)
            self.check_not_written_elsewhere(name, fd)
            now = os.fstat(fd)
            if kept_from is not None and (
                not _same_file(now, kept_from) or _written_since(now, kept_from)
            ):
                raise volume_in_use(name)
            # Looked at again with the holds taken: another daemon's upload that renamed
            # its file over the volume (or a removal) between the open and the holds let
            # go of it before, so the holds found nobody; the name tells.
            named = self.stat(name)
            if named is None and kept_from is not None:
                raise no_volume_named(name)
            if named is not None and (now.st_nlink == 0 or not _same_file(named, now)):
                raise volume_in_use(name)
        except BaseException:
            os.close(fd)
            raise
        if named is None:  # gone meanwhile: nothing left to guard
            os.close(fd)
            return -1
        return fd

    def check_not_being_replaced(
        self, name: str, fd: int, *, refuse_unshared_writers: bool = True
    ) -> None:
        """Refuse, as a volume in use, a write in place into volume ``name`` (open as
        ``fd``, already marked with ``mark_as_written``) that a whole-volume upload is
        about to rename a new file over (``_keep_writers_out``), or that a process which
        does not share writing holds, as QEMU refuses to start writing it: the write would
        go into the replaced file. Marking first, then looking, leaves no gap: of the two,
        whichever looks last sees the other. A file replaced between its opening and its
        marking (the upload's guard already let go) is seen by its name: it leads to
        another file, or to none. Its links cannot tell: NFS keeps a replaced file that is
        still open linked (renamed to ``.nfsXXXX``), as does a link of its own elsewhere.
        Without ``refuse_unshared_writers`` only virtvold's own byte is looked at: a wipe,
        a resize or a removal goes ahead under a guest, as libvirt's does."""
        held_against = _REPLACING_BYTES if refuse_unshared_writers else (_VIRTVOLD_REPLACING_BYTE,)
        if any(_locked_elsewhere(fd, byte, 1) for byte in held_against):
            raise volume_in_use(name)
        held = os.fstat(fd)
        try:
            named = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            raise volume_in_use(name) from None
        if held.st_nlink == 0 or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            raise volume_in_use(name)

    def _take_changes(self, name: str, fd: int, given: set[str]) -> None:
        """Give the temporary ``fd`` volume ``name``'s metadata as it is now; a volume gone
        meanwhile leaves it as it is (the rename makes it the volume again)."""
        st = self.stat(name)
        if st is None:
            return
        # Its creator's to write again, as when it was made: an unprivileged daemon may not
        # set a ``user.*`` attribute on a file whose mode does not let it write.
        os.fchmod(fd, VOLUME_MODE)
        self._take_attributes(name, fd, given)
        take_over(fd, st)
        self._set_access_acl(name, fd, self._access_acl(name))

    def remove_temp(self, temp: str) -> None:
        """Remove a temporary file, ignoring one that is already gone. One the directory
        refuses to remove (append-only, a file system gone read-only) is logged and kept,
        as a leftover is: this is a clean-up, whose failure must not hide why the upload
        ended, nor fail its abort."""
        try:
            os.unlink(temp, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("kept upload temporary '%s' in '%s': %s", temp, self.path, exc.strerror)
        finally:
            self._unlock(temp)

    def _unlock(self, temp: str) -> None:
        self._given.pop(temp, None)
        held = self._temps.pop(temp, None)
        if held is not None:
            os.close(held)

    def remove_stale_temps(self) -> None:
        """Delete the upload temporaries a crash left: not this pool's running uploads',
        nor those another process holds locked (another daemon's running uploads), nor
        those whose lock cannot be looked at. One that cannot be removed is logged and
        kept: a leftover costs space, not the pool."""
        with self._scanning, os.scandir(self.fd) as entries:
            candidates = [
                entry.name
                for entry in entries
                if entry.name.startswith(_UPLOAD_PREFIX)
                and entry.name not in self._temps
                and entry.is_file(follow_symlinks=False)
            ]
        for name in candidates:
            try:
                self._remove_if_unlocked(name)
            except FileNotFoundError:
                continue  # its upload finished or another clean-up came first
            except OSError as exc:
                log.warning("kept upload leftover '%s' in '%s': %s", name, self.path, exc.strerror)

    def _remove_if_unlocked(self, name: str) -> None:
        """Remove temporary ``name`` if no process holds its lock, holding the lock while it
        is removed: an upload that makes a temporary takes its lock, then sees whether it
        is still linked (``create_upload_temp``), so it never writes one removed here. The
        lock needs a descriptor that can read or write (a temporary has its volume's
        permission bits, which may allow only one of them); a file that allows neither
        raises."""
        fd = self._open_reading_or_writing(name)
        try:
            if _lock(fd):
                os.unlink(name, dir_fd=self.fd)
        finally:
            os.close(fd)


def _same_file(one: os.stat_result, other: os.stat_result) -> bool:
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def _written_since(now: os.stat_result, then: os.stat_result) -> bool:
    """Whether the file ``then`` described, seen ``now`` (the same file), was written (its
    size or its modification time moved, which a write, a punched hole or a truncation
    moves)."""
    return (now.st_size, now.st_mtime_ns) != (then.st_size, then.st_mtime_ns)


def backing_store(directory: str, header: ImageHeader) -> BackingStore | None:
    """The backing file a volume's header names, resolved as libvirt resolves it: a
    relative name from the pool ``directory``. Its format is the header's word for it, or
    else what its own first bytes say; a file that is not there is reported raw. Only a
    regular file is ever opened (a FIFO or a device named by a header could block or act
    on being opened). It may be anywhere, on a slow mount too: callers look outside the
    registry's lock."""
    if header.backing_name is None:
        return None
    name = header.backing_name
    parent = b"" if directory == "/" else os.fsencode(directory)
    path = name if name.startswith(b"/") else parent + b"/" + name
    try:
        text: str | None = path.decode()
    except UnicodeDecodeError:
        text = None
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return BackingStore(text, header.backing_format or "raw", None)
    fmt = header.backing_format
    if fmt is None:
        if stat.S_ISDIR(st.st_mode):
            fmt = "dir"
        elif stat.S_ISREG(st.st_mode):
            fmt = _probe_file_format(path)
        else:
            fmt = "raw"
    return BackingStore(text, fmt, st)


def _read_start(fd: int, st: os.stat_result) -> bytes:
    """The regular file's first ``HEADER_LIMIT`` bytes, no more than its size (``st``) says
    it has: files of /proc claim none, and reading some of them acts (/proc/kmsg
    hands over the kernel's messages, which the system log then misses)."""
    limit = min(HEADER_LIMIT, st.st_size)
    parts = []
    got = 0
    while got < limit:
        part = os.pread(fd, limit - got, got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _header_of(fd: int) -> ImageHeader:
    """What the open file's first bytes say it is; raw when they cannot be read. A
    directory is format dir, as libvirt calls it, with nothing in it counted."""
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return DIRECTORY
        return probe_header(_read_start(fd, st))
    except OSError:
        return ImageHeader()


def _probe_file_format(path: bytes) -> str:
    """The format of the regular file at ``path``; raw when it cannot be read."""
    fd = _open_regular(path)
    if fd is None:
        return "raw"
    try:
        return detect_format(_read_start(fd, os.fstat(fd)))
    except OSError:
        return "raw"
    finally:
        os.close(fd)


def _open_regular(path: bytes) -> int | None:
    """``path`` opened for reading if it is a regular file, else None (also when it cannot
    be opened). Whoever wrote a header may swap the file it names for a link to a device
    or a FIFO after its stat: an open of those acts (/dev/watchdog starts its countdown,
    a FIFO lets a waiting writer go). So the file is first taken with ``O_PATH``, which
    opens nothing, and only once that is seen to be a regular file is that same file
    opened, through its descriptor's entry in /proc."""
    try:
        found = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(found).st_mode):
            return None
        return os.open(
            f"/proc/self/fd/{found}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        )
    except OSError:
        return None
    finally:
        os.close(found)


# What a file system without locks answers a lock call with.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


def _lock(fd: int) -> bool:
    """Take the file's lock without waiting; False when another holder has it. On a file
    system without locks no holder can be seen: the file counts as unlocked."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return True
        raise
    return True


# QEMU locks, through an open file description, byte 100 plus the bit number of each
# permission it holds on an image, and byte 200 plus the bit number of each it does not
# share with others; it takes write permission only if nobody holds byte 201.
# Write (bit 1) and write-unchanged (bit 2): someone who holds either may write.
_GUEST_WRITE_BYTES = (101, 2)  # start, length
# Held by a whole-volume upload from its last look for writers until its rename: QEMU's
# "does not share write" byte, and one of virtvold's own, far past QEMU's 100-299, that
# another daemon's write in place looks at (``VolumeDir.check_not_being_replaced``).
_NOT_SHARING_WRITE_BYTE = 201
_VIRTVOLD_REPLACING_BYTE = 1 << 62
_REPLACING_BYTES = (_NOT_SHARING_WRITE_BYTE, _VIRTVOLD_REPLACING_BYTE)
# struct flock on Linux: type, whence, start, length, pid (and padding).
_FLOCK = struct.Struct("hhqqi4x")


def mark_as_written(fd: int) -> None:
    """Lock the open file's write permission byte as QEMU locks a disk it writes (shared,
    held by the descriptor's open file description until it is closed), so that another
    daemon serving the directory sees the volume written and does not replace it
    (``VolumeDir.check_not_written_elsewhere``), and QEMU and ``qemu-img`` (without
    ``-U``) refuse to open it for a writing guest meanwhile. A descriptor that may not
    read cannot take it, nor can one on a file system without locks: the write goes ahead
    unmarked."""
    lock = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, _GUEST_WRITE_BYTES[0], 1, 0)
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)


def _marked_as_written(fd: int) -> bool:
    """Whether another open file description holds a lock on the open file's write or
    write-unchanged byte (a guest's, ``mark_as_written``'s)."""
    return _locked_elsewhere(fd, *_GUEST_WRITE_BYTES)


def _locked_elsewhere(fd: int, start: int, length: int) -> bool:
    """Whether another open file description holds a lock on any of the ``length`` bytes
    from ``start`` of the open file. A file system without locks shows none."""
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    try:
        found = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return False
        raise
    return bool(_FLOCK.unpack(found)[0] != fcntl.F_UNLCK)


def _hold(fd: int, byte: int) -> bool:
    """Lock ``byte`` of the open file for its open file description, shared where the
    descriptor may read (as QEMU locks), else exclusive; False when another holder's lock
    is in the way. On a file system without locks there is nothing to hold: True."""
    readable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY
    kind = fcntl.F_RDLCK if readable else fcntl.F_WRLCK
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in _NO_LOCKS:
            return True
        raise
    return True


# Linux's ioctl that makes a file share all of another's blocks (copy on write).
_FICLONE = 0x40049409


def _driver_error(what: str, exc: OSError | int) -> ErrorReport:
    """A failure libvirt's storage driver reports itself (making a new volume's file,
    removing a directory volume, opening one to wipe it), so it carries the driver's
    domain (the util layer's helpers, such as resize's, carry none)."""
    return system_error(what, exc, ErrorDomain.STORAGE)


def _share_blocks(src_fd: int, dst_fd: int, source_path: str) -> None:
    """The clone shares the blocks of the file at ``source_path`` (FICLONE), or fails in
    libvirt's words where the file system cannot share them."""
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
    except OSError as exc:
        raise system_error(
            f"failed to clone files from '{source_path}'", exc, ErrorDomain.STORAGE
        ) from None
