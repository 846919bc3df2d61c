"""Page-cache hygiene: a transfer never evicts what was in memory before it.

Residency is asked from the kernel (mincore). A volume that was resident
before a download or an upload is resident after it; a cold volume a
download read is let go again.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.sparse.helpers import evict, fragmented, record_fadvise
from virtvol.daemon.storage import VolumeReader
from virtvol.sparse import cache
from virtvol.sparse.cache import PAGE_SIZE, resident_pages
from virtvol.sparse.reader import CACHE_WINDOW, SparseReader

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20
# Larger than the reader's cache window, so several windows are crossed.
SIZE = 48 * MIB


def resident_fraction(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        pages = resident_pages(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return pages.count(1) / len(pages)


def read_all(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(4 * MIB):
            pass


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    path = tmp_path / "vol"
    with open(path, "wb") as f:
        for _ in range(SIZE // MIB):
            f.write(os.urandom(MIB))
    return path


def download(path: Path) -> int:
    """Read the whole file through the daemon's download reader; returns the data bytes."""
    buffer = bytearray(4 * MIB)
    total = 0
    with VolumeReader(os.open(path, os.O_RDONLY), 0, 0, sparse=True) as reader:
        while not (chunk := reader.next_chunk(buffer)).eof:
            total += chunk.length
    return total


def test_residency_is_reported(volume: Path) -> None:
    read_all(volume)
    assert resident_fraction(volume) == 1.0
    evict(volume)
    assert resident_fraction(volume) < 0.05
    fd = os.open(volume, os.O_RDONLY)
    try:
        os.pread(fd, PAGE_SIZE, 5 * PAGE_SIZE)
        assert resident_pages(fd, 5 * PAGE_SIZE, PAGE_SIZE) == b"\x01"
    finally:
        os.close(fd)


def test_a_resident_volume_stays_resident_after_a_download(volume: Path) -> None:
    read_all(volume)
    assert resident_fraction(volume) == 1.0
    assert download(volume) == SIZE
    assert resident_fraction(volume) == 1.0


def test_a_cold_volume_is_let_go_after_a_download(volume: Path) -> None:
    evict(volume)
    assert download(volume) == SIZE
    assert resident_fraction(volume) == 0.0


def test_half_resident_volume_keeps_exactly_its_resident_half(volume: Path) -> None:
    evict(volume)
    with open(volume, "rb") as f:  # the first 8 MiB were in use before the download
        f.read(8 * MIB)
    assert download(volume) == SIZE
    fd = os.open(volume, os.O_RDONLY)
    try:
        # A few pages may go to the kernel's own reclaim at any time (a VM's proactive
        # reclaim does); a download that dropped what was resident drops them all.
        assert resident_pages(fd, 0, 8 * MIB).count(0) <= 8 * MIB // PAGE_SIZE // 100
        assert resident_pages(fd, 16 * MIB, SIZE - 16 * MIB).count(1) < SIZE // PAGE_SIZE // 10
    finally:
        os.close(fd)


def test_a_reader_told_to_keep_the_cache_never_asks_for_residency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "source"
    path.write_bytes(b"\x01" * (8 << 20))
    asked: list[int] = []

    def recorded(fd: int, offset: int, length: int) -> bytes:
        asked.append(offset)
        return bytes(length // PAGE_SIZE)

    monkeypatch.setattr(cache, "resident_pages", recorded)
    buffer = bytearray(1 << 20)
    with SparseReader(os.open(path, os.O_RDONLY), drop_cache=False) as kept:
        while kept.read_pieces(buffer):
            pass
    assert asked == []
    with SparseReader(os.open(path, os.O_RDONLY)) as dropping:
        while dropping.read_pieces(buffer):
            pass
    assert asked  # the default reader takes residency snapshots


def test_scattered_extents_of_a_cold_file_are_let_go(tmp_path: Path) -> None:
    # Data near the end of the first window (so its look-ahead is taken), then data
    # three windows further: the unused look-ahead and every window read are dropped.
    path = tmp_path / "scattered"
    with open(path, "wb") as f:
        f.truncate(4 * CACHE_WINDOW)
        f.seek(CACHE_WINDOW - 4 * MIB)
        f.write(os.urandom(2 * MIB))
        f.seek(3 * CACHE_WINDOW + MIB)
        f.write(os.urandom(2 * MIB))
    evict(path)
    assert resident_fraction(path) == 0.0
    buffer = bytearray(MIB)
    read = 0
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        while pieces := reader.read_pieces(buffer):
            read += sum(p.length for p in pieces if p.data)
    assert read == 4 * MIB
    assert resident_fraction(path) == 0.0


def test_a_warm_fragmented_file_is_read_without_a_drop_per_hole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holes were never in memory and nothing read them: they are not "brought in", and
    a warm fragmented volume (one extent every 64 KiB) costs no DONTNEED per hole."""
    path = tmp_path / "fragmented"
    size = 2 * CACHE_WINDOW
    fragmented(path, size)
    fd = os.open(path, os.O_RDONLY)
    try:  # only the data is read into memory, as a user of the volume would
        for offset in range(0, size, 64 << 10):
            os.pread(fd, 4096, offset)
        assert resident_pages(fd, 0, size).count(1) == size // (64 << 10)
    finally:
        os.close(fd)
    drops = record_fadvise(monkeypatch, os.POSIX_FADV_DONTNEED)
    buffer = bytearray(MIB)
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        while reader.read_pieces(buffer):
            pass
    assert drops == []
    fd = os.open(path, os.O_RDONLY)
    try:
        data_pages = resident_pages(fd, 0, size)[:: (64 << 10) // PAGE_SIZE]
    finally:
        os.close(fd)
    assert data_pages == b"\x01" * (size // (64 << 10))  # every extent still in memory

    # Cold, what the read brought in goes again, in a few calls, not one per extent.
    evict(path)
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        while reader.read_pieces(buffer):
            pass
    assert resident_fraction(path) == 0.0
    assert 0 < len(drops) <= 4
