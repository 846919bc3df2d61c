"""The cold read's prefetch where the file changes, the read ends early, or the kernel errs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.sparse.helpers import evict, fragmented, resident_count
from virtvol.sparse.cache import PAGE_SIZE, resident_pages
from virtvol.sparse.reader import PREFETCH_DATA, Chunk, SparseReader

if TYPE_CHECKING:
    from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20


def test_cold_reader_sees_data_written_into_a_hole_ahead(tmp_path: Path) -> None:
    """Data written into a hole far ahead of the read, before the read gets there."""
    path = tmp_path / "src"
    with open(path, "wb") as f:
        f.write(b"x" * 64 * KIB)
        f.truncate(64 * MIB)
    evict(path)
    buffer = bytearray(64 * KIB)
    with SparseReader(os.open(path, os.O_RDONLY), drop_cache=False) as reader:
        assert reader.next_chunk(buffer) == Chunk(True, 64 * KIB)
        with open(path, "r+b") as f:
            f.seek(32 * MIB)
            f.write(b"z" * 64 * KIB)
        pieces = []
        while not (chunk := reader.next_chunk(buffer)).eof:
            pieces.append((chunk.data, chunk.length))
    assert any(data for data, _ in pieces), pieces


def device_read_ahead(path: Path) -> int:
    """The most the kernel reads ahead in the file's device (``read_ahead_kb``)."""
    device = os.stat(path).st_dev
    queue = f"/sys/dev/block/{os.major(device)}:{os.minor(device)}"
    for where in (f"{queue}/queue/read_ahead_kb", f"{queue}/../queue/read_ahead_kb"):
        try:
            with open(where) as setting:
                return int(setting.read()) * KIB
        except OSError:
            continue
    return 8 * MIB  # not a block device's file system: a generous guess


def test_a_cold_read_closed_early_leaves_at_most_the_prefetch_in_memory(tmp_path: Path) -> None:
    # What the prefetch was still reading in at the close (locked pages, which the drop
    # passes over) may stay: never more than its allowance, and the kernel's read-ahead.
    path = tmp_path / "dense"
    path.write_bytes(os.urandom(64 * MIB))
    evict(path)
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        assert reader.next_chunk(bytearray(64 * KIB)) == Chunk(True, 64 * KIB)
    assert resident_count(path) * PAGE_SIZE <= PREFETCH_DATA + device_read_ahead(path)


def test_a_cold_fragmented_read_closed_early_leaves_at_most_the_prefetch(tmp_path: Path) -> None:
    path = tmp_path / "fragmented"
    fragmented(path, 128 * MIB)
    evict(path)
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        assert reader.next_chunk(bytearray(64 * KIB)) == Chunk(True, 4 * KIB)
    assert resident_count(path) * PAGE_SIZE <= PREFETCH_DATA


def test_a_nowait_read_answering_0_before_the_end_does_not_end_the_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """preadv2(2), BUGS: on Linux 5.9 and 5.10 a RWF_NOWAIT read may return 0 where the
    data is not in memory, not at the end of the file (instead of EAGAIN)."""
    path = tmp_path / "dense"
    data = os.urandom(8 * MIB)
    path.write_bytes(data)
    evict(path)
    real = os.preadv

    def buggy_kernel(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        if flags and resident_pages(fd, offset - offset % 4096, 4096) == b"\x00":
            return 0
        return real(fd, buffers, offset, flags)

    monkeypatch.setattr(os, "preadv", buggy_kernel)
    got = bytearray()
    buffer = bytearray(MIB)
    with SparseReader(os.open(path, os.O_RDONLY), drop_cache=False) as reader:
        while not (chunk := reader.next_chunk(buffer)).eof:
            got += buffer[: chunk.length]
        assert reader.end == len(data)
    assert got == data


@pytest.mark.parametrize("offset", [0, 3 * MIB + 4096, 33 * MIB])
def test_a_cold_fragmented_ranged_read_leaves_nothing(tmp_path: Path, offset: int) -> None:
    path = tmp_path / "fragmented"
    fragmented(path, 100 * MIB)
    evict(path)
    buffer = bytearray(4 * MIB)
    with SparseReader(os.open(path, os.O_RDONLY), offset, 50 * MIB) as reader:
        total = 0
        while pieces := reader.read_pieces(buffer):
            total += sum(p.length for p in pieces)
    assert total == 50 * MIB
    assert resident_count(path) == 0
