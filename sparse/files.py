"""Block-level calls on plain file descriptors: punch, allocate, writeback, write, copy.

Everything positions its I/O explicitly (``pwrite``, ``copy_file_range`` with
offsets), so descriptors can be shared with readers of other ranges.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Collection, Sequence

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import cast
else:
    from virtvol.protocol.hints import cast

from . import libc
from .extents import iter_extents
from .zeros import ZEROS, zero_view

__all__ = [
    "FS_APPEND_FL",
    "FS_IOC_GETFLAGS",
    "FS_IOC_SETFLAGS",
    "FS_NOCOW_FL",
    "KEPT_INODE_FLAGS",
    "AttributeNotKept",
    "FlagsNotKept",
    "access_acl",
    "allocate",
    "copy_extended_attributes",
    "copy_inode_flags",
    "copy_sparse",
    "inode_flags",
    "punch_hole",
    "pwrite_all",
    "pwritev_all",
    "set_access_acl",
    "set_inode_flags",
    "start_writeback",
    "wait_writeback",
    "write_zeros",
]

# Where a file keeps its POSIX access ACL (the kernel's binary form, copied as it is).
_ACCESS_ACL = "system.posix_acl_access"
# An ACL to read or remove is not there, or the file system keeps none.
_NO_ACL = (errno.ENODATA, errno.EOPNOTSUPP)
# Extended attributes a replacement does not take from the file it replaces. The POSIX
# ACLs go with ``access_acl``/``set_access_acl``, after the mode whose group bits the
# access ACL's mask sets (a default ACL belongs to directories only). File capabilities
# are privileges given to the old content, as set-user-ID is: the kernel removes them
# from a file written in place, as libvirtd's upload and virsh's download write.
_NOT_COPIED = frozenset({_ACCESS_ACL, "system.posix_acl_default", "security.capability"})

# Linux's ioctls that read and set an inode's attribute flags (``chattr``'s), and the
# append-only one: its names cannot be removed or renamed, a file not written but at its end.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_APPEND_FL = 0x00000020
# btrfs's switch for copy on write (libvirt's ``<nocow/>``); other file systems have none.
FS_NOCOW_FL = 0x00800000
# The flags a replacement takes from the file it replaces, each with ``chattr``'s letter:
# what its owner chose for the file's contents and how they are kept. Not immutable (i)
# nor append-only (a), which would refuse the replacement its writes and its rename (a
# file with either is not replaced); not what the file system sets itself (extents,
# inline data, encryption, verity) nor what only folders take.
_KEPT_FLAG_LETTERS = {
    0x00000001: "s",  # secure deletion
    0x00000002: "u",  # undeletable
    0x00000004: "c",  # compressed
    0x00000008: "S",  # synchronous writes
    0x00000040: "d",  # no dump
    0x00000080: "A",  # no access times
    0x00000400: "m",  # not compressed
    0x00004000: "j",  # data journaled
    0x00008000: "t",  # no tail merging
    FS_NOCOW_FL: "C",  # no copy on write (btrfs takes it while the file is empty)
    0x02000000: "x",  # direct access
}
KEPT_INODE_FLAGS = sum(_KEPT_FLAG_LETTERS)
# What reading attribute flags fails with on a file system that keeps none: FUSE passes
# the ioctl to its server, and some (ntfs-3g) answer a command they do not know EINVAL.
_NO_FLAGS = (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_UNSHARE_RANGE = 0x40


_CFunction = Callable[[int, int, int, int], int]


def _fallocate() -> _CFunction | None:
    return cast(
        "_CFunction | None",
        libc.function("fallocate", "c_int", "c_int", "c_int", "c_longlong", "c_longlong"),
    )


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make ``[offset, offset + length)`` read as zeros without changing the file size.

    Deallocates the blocks (fallocate PUNCH_HOLE | KEEP_SIZE). Where the file
    system or the C library cannot punch, the range (clipped to the current
    size) is overwritten with zeros instead.
    """
    if length <= 0:
        return
    fallocate = _fallocate()
    if fallocate is not None:
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if fallocate(fd, mode, offset, length) == 0:
            return
        err = libc.errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err))
    write_zeros(fd, offset, min(offset + length, os.fstat(fd).st_size))


_SYNC_FILE_RANGE_WAIT_BEFORE = 0x01
_SYNC_FILE_RANGE_WRITE = 0x02
_SYNC_FILE_RANGE_WAIT_AFTER = 0x04


def _sync_file_range() -> _CFunction | None:
    return cast(
        "_CFunction | None",
        libc.function("sync_file_range", "c_int", "c_int", "c_longlong", "c_longlong", "c_uint"),
    )


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing the dirty pages of ``[offset, offset + length)`` to disk, without waiting.

    A later ``fdatasync`` then only waits for what is still in flight. Best
    effort: where ``sync_file_range`` is missing or refused, nothing happens
    and ``fdatasync`` does all the work.
    """
    sync_file_range = _sync_file_range()
    if sync_file_range is not None and length > 0:
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def wait_writeback(fd: int, offset: int, length: int) -> None:
    """Write ``[offset, offset + length)`` to disk and wait for it; the pages stay cached.

    Paired with ``start_writeback`` one step behind, it keeps the disk busy
    while the network is, and leaves ``fdatasync`` little to wait for. The
    written pages stay in the page cache: a download that follows the upload
    reads memory, not the disk. Best effort, as ``start_writeback``.
    """
    sync_file_range = _sync_file_range()
    if sync_file_range is not None and length > 0:
        flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
        sync_file_range(fd, offset, length, flags)


def write_zeros(fd: int, offset: int, end: int) -> None:
    """Write zeros over ``[offset, end)``: where a hole cannot be punched."""
    while offset < end:
        offset += os.pwrite(fd, zero_view(min(len(ZEROS), WRITE_CALL_MAX, end - offset)), offset)


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, going on after short writes."""
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


# The most pieces one pwritev takes (Linux's IOV_MAX).
_IOV_MAX = os.sysconf("SC_IOV_MAX")
# The most bytes one write system call carries. Since Linux 6.16, ext4 gives a larger
# buffered write larger page-cache folios; where free memory has gone back to the
# hypervisor (virtio-balloon free page reporting, as on the development VM), memory
# for those costs several times more: 1 GiB written into a new file took 1.9-2.5 s
# in 1-4 MiB writes and 0.2-0.36 s in 256-512 KiB ones; eight downloads at once took
# 1.16-1.25 s in 256 KiB writes and 0.77-0.88 s in 128 KiB ones (docs/performance.md).
# With memory freed a moment ago, the size makes no difference.
WRITE_CALL_MAX = 128 << 10


def pwritev_all(fd: int, views: Sequence[memoryview], offset: int) -> None:
    """Write ``views`` back to back from ``offset``, at most ``WRITE_CALL_MAX`` bytes and
    IOV_MAX views per ``pwritev``: many small frames' payloads go in one call (the
    writing thread takes the GIL back rarely), a large frame in several."""
    total = sum(map(len, views))
    if total <= WRITE_CALL_MAX and len(views) <= _IOV_MAX:  # the usual case: one call
        _pwritev_fully(fd, list(views), offset, total)
        return
    call: list[memoryview] = []
    size = 0
    for view in views:
        while view:
            part = view[: WRITE_CALL_MAX - size]
            call.append(part)
            size += len(part)
            view = view[len(part) :]
            if size == WRITE_CALL_MAX or len(call) == _IOV_MAX:
                _pwritev_fully(fd, call, offset, size)
                offset += size
                call, size = [], 0
    if call:
        _pwritev_fully(fd, call, offset, size)


def _pwritev_fully(fd: int, call: list[memoryview], offset: int, total: int) -> None:
    """One ``pwritev`` of ``call`` (``total`` bytes), going on after short writes."""
    written = os.pwritev(fd, call, offset)
    while written < total:  # rare: a short write; go on after what was written
        offset += written
        total -= written
        while written >= len(call[0]):
            written -= len(call.pop(0))
        call[0] = call[0][written:]
        written = os.pwritev(fd, call, offset)


def fully_allocated(st: os.stat_result) -> bool:
    """Whether a file holds blocks for all its bytes (libvirt's preallocated volume):
    its space is reserved, and operations that zero it keep the reservation."""
    return st.st_size > 0 and st.st_blocks * 512 >= st.st_size


def allocate(fd: int, offset: int, length: int) -> None:
    """Reserve disk blocks for ``[offset, offset + length)``, growing the file if needed."""
    if length > 0:
        os.posix_fallocate(fd, offset, length)


def unshare(fd: int, offset: int, length: int) -> None:
    """Give ``[offset, offset + length)`` blocks of the file's own where the file system
    shares them with another file (a ``copy_file_range`` on XFS shares them), with
    fallocate's UNSHARE_RANGE, so that an allocated range stays allocated whatever
    happens to the other file.

    Best effort: a file system that shares no blocks or cannot unshare them (ext4,
    Btrfs) refuses the mode (EOPNOTSUPP or EINVAL), and the range is left as it is.
    """
    fallocate = _fallocate()
    if fallocate is None or length <= 0:
        return
    if fallocate(fd, _FALLOC_FL_UNSHARE_RANGE, offset, length) == 0:
        return
    err = libc.errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
        raise OSError(err, os.strerror(err))


def copy_sparse(
    src_fd: int,
    dst_fd: int,
    end: int,
    buffer: bytearray | None = None,
    *,
    start: int = 0,
    most: int | None = None,
) -> int:
    """Copy the data extents of ``src_fd`` in ``[start, end)`` to the same offsets of ``dst_fd``.

    Holes are not written, so they stay holes in a destination whose range was
    empty (created, truncated or punched to its final size). ``copy_file_range``
    lets the kernel move (or share) the blocks; a read/write loop through
    ``buffer`` is the fallback. With ``most``, it stops once that many bytes of
    data are copied, so a long copy can go in steps.

    Returns:
        Where the copy stopped: ``end`` once the whole range is done, otherwise
        the offset the next step starts from.
    """
    copied = 0
    for extent in iter_extents(src_fd, start, end):
        if not extent.data:
            continue
        stop = extent.end if most is None else min(extent.end, extent.start + most - copied)
        _copy_range(src_fd, dst_fd, extent.start, stop, buffer)
        copied += stop - extent.start
        if most is not None and copied >= most and stop < end:
            return stop
    return end


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
    view = memoryview(buffer if buffer is not None else bytearray(len(ZEROS)))
    while offset < end:
        count = os.preadv(src_fd, [view[: min(len(view), end - offset)]], offset)
        if count == 0:
            return
        written = 0
        while written < count:
            written += os.pwrite(dst_fd, view[written:count], offset + written)
        offset += count


def inode_flags(fd: int) -> int:
    """The attribute flags (``FS_IOC_GETFLAGS``) of the file or folder open as ``fd``.

    Raises:
        OSError: the file system keeps none (ENOTTY, EOPNOTSUPP), or another failure.
    """
    import array  # the few callers pay for these imports, not every command
    import fcntl

    flags = array.array("i", [0])  # the kernel reads and writes an int
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
    return flags[0]


def set_inode_flags(fd: int, flags: int) -> None:
    """Set the attribute flags (``FS_IOC_SETFLAGS``) of the file or folder open as ``fd``
    to ``flags`` (all of them: read them first with ``inode_flags``)."""
    import array  # the few callers pay for these imports, not every command
    import fcntl

    fcntl.ioctl(fd, FS_IOC_SETFLAGS, array.array("i", [flags]), False)  # the kernel reads an int


def copy_inode_flags(source: int, fd: int, *, filename: str | None = None) -> None:
    """Give the file open as ``fd`` the ``KEPT_INODE_FLAGS`` of the file open as
    ``source``, exactly: one ``fd`` has that ``source`` lacks (``C`` from its folder) is
    taken off too. A file system that keeps no flags leaves both as they are.
    ``filename``: ``source``'s name, for the error.

    All or nothing, as ``copy_extended_attributes`` is and for its reasons: libvirtd and
    virsh write a file in place, so it keeps its flags, and a replacement without them is
    a different file (``S`` makes every write synchronous, ``C`` keeps a VM's disk from
    fragmenting on btrfs). Give them while the new file is still empty (btrfs takes ``C``
    only then) and its creator's (only the owner, or CAP_FOWNER, may set flags).

    Raises:
        FlagsNotKept: the file system or this process's privileges refused the flags
            (``j`` takes CAP_SYS_RESOURCE).
        OSError: ``source``'s flags could not be read.
    """
    try:
        held = inode_flags(fd)
        wanted = (held & ~KEPT_INODE_FLAGS) | (inode_flags(source) & KEPT_INODE_FLAGS)
    except OSError as exc:
        if exc.errno in _NO_FLAGS:
            return
        raise
    if wanted == held:
        return
    try:
        set_inode_flags(fd, wanted)
    except OSError as exc:
        changed = held ^ wanted
        letters = "".join(
            ("+" if bit & wanted else "-") + letter
            for bit, letter in _KEPT_FLAG_LETTERS.items()
            if bit & changed
        )
        raise FlagsNotKept(letters, exc, filename) from None


def access_acl(file: int | str) -> bytes | None:
    """The POSIX access ACL of a file (a descriptor, or a path, followed if a symbolic
    link) as the kernel stores it; None when it has none."""
    try:
        return os.getxattr(file, _ACCESS_ACL)
    except OSError as exc:
        if exc.errno in _NO_ACL:
            return None
        raise


def set_access_acl(fd: int, acl: bytes | None) -> None:
    """Give the file exactly the access ACL ``acl`` (from ``access_acl``): None removes
    one it has, such as one inherited from its directory's default ACL. The ACL sets the
    group permission bits too (they show its mask), so it goes after any ``fchmod``."""
    if acl is not None:
        os.setxattr(fd, _ACCESS_ACL, acl)
        return
    try:
        os.removexattr(fd, _ACCESS_ACL)
    except OSError as exc:
        if exc.errno not in _NO_ACL:
            raise


class AttributeNotKept(OSError):
    """A file's extended attribute its replacement could not be given: ``attribute``
    names it, ``errno`` and ``strerror`` say why (``filename``: the file, where known)."""

    def __init__(self, attribute: str, cause: OSError, filename: str | None = None) -> None:
        super().__init__(cause.errno, cause.strerror, filename)
        self.attribute = attribute

    def __str__(self) -> str:
        return f"cannot keep extended attribute '{self.attribute}': {self.strerror}"


class FlagsNotKept(OSError):
    """Attribute flags a file's replacement could not be given: ``letters`` says which,
    as ``chattr`` writes them (``+S-C``), ``errno`` and ``strerror`` say why
    (``filename``: the file, where known)."""

    def __init__(self, letters: str, cause: OSError, filename: str | None = None) -> None:
        super().__init__(cause.errno, cause.strerror, filename)
        self.letters = letters

    def __str__(self) -> str:
        return f"cannot keep attribute flags '{self.letters}': {self.strerror}"


def copy_extended_attributes(
    source: int | str, fd: int, *, given: Collection[str] = ()
) -> set[str]:
    """Give the file open as ``fd`` the extended attributes of ``source`` (a descriptor, or
    a path, followed if a symbolic link): every one this process may list (``trusted.*``
    only with CAP_SYS_ADMIN), the SELinux label ``security.selinux`` among them, but not
    the POSIX ACLs nor file capabilities (``_NOT_COPIED``). One the file already has with
    the same value (a label the new file got from the policy) is left as it is.

    All or nothing, by choice: libvirtd and virsh write a file in place, so it keeps every
    attribute, and a replacement that silently lacks one is a different file. A VM's disk
    without its SELinux label is one the VM may no longer open, which shows only when it
    starts; a backup tool's mark gone makes it copy or skip the wrong files. So an
    attribute the file system or this process's privileges refuse (a ``security.*`` label
    takes a privilege: the SELinux policy's relabel permission, Smack's CAP_MAC_ADMIN,
    CAP_SYS_ADMIN where no security module handles the name) fails the copy, and the
    caller keeps the old file and says why, instead of renaming a lesser copy over it.
    Give the attributes while the new file is still its creator's to write: setting a
    ``user.*`` attribute takes write permission on the file, not only a writable descriptor.

    ``given``: the names an earlier call gave ``fd`` (what it returned). Those ``source``
    no longer has are removed: a second call just before the replacement takes what
    changed on ``source`` while the new content was written.

    Returns:
        The names of the attributes ``fd`` was given.

    Raises:
        AttributeNotKept: an attribute ``fd`` could not be given.
        OSError: ``source``'s attributes could not be read (EACCES: ``user.*`` ones take
            read permission on the file).
    """
    filename = source if isinstance(source, str) else None
    copied = set()
    # One value at a time: a file may carry thousands of 64 KiB values (XFS keeps as
    # many as fit the listing's 64 KiB of names), and whoever may set them chooses.
    for name in _copied_names(source):
        value = _attribute_value(source, name)
        if value is None:  # removed since it was listed
            continue
        copied.add(name)
        if _attribute_value(fd, name) == value:
            continue
        try:
            os.setxattr(fd, name, value)
        except OSError as exc:
            raise AttributeNotKept(name, exc, filename) from None
    for name in set(given) - copied:
        try:
            os.removexattr(fd, name)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise AttributeNotKept(name, exc, filename) from None
    return copied


def _copied_names(file: int | str) -> list[str]:
    """The names of the attributes of ``file`` that ``copy_extended_attributes`` copies."""
    try:
        names = os.listxattr(file)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:  # a file system that keeps none
            return []
        raise
    return [name for name in names if name not in _NOT_COPIED]


def _attribute_value(file: int | str, name: str) -> bytes | None:
    """The value of extended attribute ``name``; None when the file has none of that name."""
    try:
        return os.getxattr(file, name)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise
