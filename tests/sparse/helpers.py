"""Helpers shared by the sparse engine's tests: cold files, residency, fragmented images,
recorded ``posix_fadvise`` advice."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from virtvol.sparse.cache import resident_pages

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

KIB = 1 << 10


def evict(path: Path) -> None:
    """Write the file out and drop it from the page cache: every page is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert resident_pages(fd, 0, os.fstat(fd).st_size).count(1) == 0
    finally:
        os.close(fd)


def resident_count(path: Path) -> int:
    """How many pages of the file are in memory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return resident_pages(fd, 0, os.fstat(fd).st_size).count(1)
    finally:
        os.close(fd)


def fragmented(path: Path, size: int, step: int = 64 * KIB, piece: int = 4 * KIB) -> bytes:
    """A file of ``size`` with ``piece`` bytes of random data every ``step``; returns the
    data, in order."""
    data = os.urandom(size // step * piece)
    with open(path, "wb") as f:
        f.truncate(size)
        for index in range(size // step):
            f.seek(index * step)
            f.write(data[index * piece : (index + 1) * piece])
    return data


def record_fadvise(monkeypatch: pytest.MonkeyPatch, advice: int) -> list[tuple[int, int]]:
    """The ``(offset, length)`` of every ``posix_fadvise`` with ``advice`` from now on
    (each still given to the kernel)."""
    given: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def recorded(fd: int, offset: int, length: int, kind: int) -> None:
        if kind == advice:
            given.append((offset, length))
        real(fd, offset, length, kind)

    monkeypatch.setattr(os, "posix_fadvise", recorded)
    return given
