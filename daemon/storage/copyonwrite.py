"""Copy on write of a file or folder, set as libvirt's virFileSetCOW sets it: only btrfs
has a switch for it (the inode's NOCOW flag); anywhere else asking for either state fails.
"""

from __future__ import annotations

import errno
import os

from virtvol.sparse import files, libc

from .reports import system_error

_BTRFS_SUPER_MAGIC = 0x9123683E


def _file_system_type(fd: int) -> int:
    """statfs's f_type for ``fd`` (Python's statvfs does not give it)."""
    import ctypes

    fstatfs = libc.function("fstatfs", "c_int", "c_int", "c_void_p")
    if fstatfs is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    buffer = ctypes.create_string_buffer(256)  # struct statfs: 120 bytes on 64-bit Linux
    if fstatfs(fd, buffer) != 0:
        libc.raise_errno()
    return ctypes.c_long.from_buffer(buffer).value  # f_type is its first field


def set_copy_on_write(fd: int, path: str, enabled: bool) -> None:
    """Turn copy on write on or off for the file or folder open as ``fd``, in libvirt's
    words when it cannot (its typos kept)."""
    try:
        kind = _file_system_type(fd)
    except OSError as exc:
        raise system_error(f"unable query filesystem type on '{path}'", exc) from None
    if kind != _BTRFS_SUPER_MAGIC:
        raise system_error(f"unable to control COW flag on '{path}', not btrfs", errno.ENOSYS)
    try:
        held = files.inode_flags(fd)
    except OSError as exc:
        raise system_error(f"unable query COW flag on '{path}'", exc) from None
    wanted = held & ~files.FS_NOCOW_FL if enabled else held | files.FS_NOCOW_FL
    if wanted == held:
        return
    try:
        files.set_inode_flags(fd, wanted)
    except OSError as exc:
        raise system_error(f"unable control COW flag on '{path}'", exc) from None
