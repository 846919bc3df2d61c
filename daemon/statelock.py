"""One daemon per state directory: an exclusive lock on ``<state_dir>/virtvold.pid``.

Two daemons over one state directory would overwrite each other's pool definitions, and a
pool starting in one removes the upload temporaries of the other's running uploads. The
lock is an ``flock`` held for the daemon's life (the kernel drops it when the process ends,
however it ends), as libvirt's daemons hold their pid file; the file names the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

LOCK_FILE_NAME = "virtvold.pid"


class StateDirInUse(RuntimeError):
    """The state directory is locked by another daemon, or cannot be locked; says why."""


class StateDirLock:
    """The held lock; ``release`` (or the process's end) lets it go."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def lock_state_dir(state_dir: str) -> StateDirLock:
    """Create ``state_dir`` if needed and take its lock, or raise ``StateDirInUse``."""
    path = os.path.join(state_dir, LOCK_FILE_NAME)
    try:
        os.makedirs(state_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StateDirInUse(f"cannot lock state directory {state_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise StateDirInUse(
            f"state directory {state_dir} is in use by virtvold{holder} (lock file {path})"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StateDirInUse(f"cannot lock state directory {state_dir}: {exc.strerror}") from None
    # The pid is for people; a daemon that dies leaves a stale pid but never a held lock.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateDirLock(fd)


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
