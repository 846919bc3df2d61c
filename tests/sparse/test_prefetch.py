"""A read that would wait for the disk asks the kernel for the data ahead of it.

Without it, a cold fragmented file (4 KiB of data every 64 KiB) is read one small
extent at a time, one wait for the disk each. The reader tries each read without
waiting (RWF_NOWAIT); when that fails it asks for the next extents at once
(POSIX_FADV_WILLNEED). A warm file is never asked for; with the page cache watched,
what the asking brings in is let go like what the reads bring in.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

from tests.sparse.helpers import evict, fragmented, record_fadvise
from virtvol.sparse.cache import resident_pages
from virtvol.sparse.reader import CACHE_WINDOW, PREFETCH_DATA, SparseReader

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

KIB = 1 << 10
MIB = 1 << 20
STEP = 64 * KIB
PIECE = 4 * KIB


def read_data(reader: SparseReader, buffer_size: int = MIB) -> bytes:
    buffer = bytearray(buffer_size)
    data = bytearray()
    while pieces := reader.read_pieces(buffer):
        used = 0
        for piece in pieces:
            if piece.data:
                data += buffer[used : used + piece.length]
                used += piece.length
    return bytes(data)


def test_a_cold_read_asks_for_the_extents_ahead_at_its_first_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fragmented"
    data = fragmented(path, 16 * MIB)
    evict(path)
    asked = record_fadvise(monkeypatch, os.POSIX_FADV_WILLNEED)
    with SparseReader(os.open(path, os.O_RDONLY), drop_cache=False) as reader:
        first = reader.read_pieces(bytearray(PIECE))
        assert [(p.data, p.length) for p in first] == [(True, PIECE)]
        # The first read would have waited: every extent of the file was asked for then.
        assert asked == [(index * STEP, PIECE) for index in range(16 * MIB // STEP)]
        rest = read_data(reader)
    assert data == data[:PIECE] + rest
    assert len(asked) == 16 * MIB // STEP  # nothing asked twice


def test_a_cold_read_asks_for_no_more_than_its_allowance_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dense"
    path.write_bytes(os.urandom(4 * PREFETCH_DATA))
    evict(path)
    asked = record_fadvise(monkeypatch, os.POSIX_FADV_WILLNEED)
    with SparseReader(os.open(path, os.O_RDONLY), drop_cache=False) as reader:
        reader.read_pieces(bytearray(PIECE))
        assert asked == [(0, PREFETCH_DATA)]
        assert read_data(reader) == path.read_bytes()[PIECE:]
    # Later requests go on from where the earlier ones ended, each within the allowance.
    for (offset, length), (after, _) in itertools.pairwise(asked):
        assert offset + length <= after
    assert all(length <= PREFETCH_DATA for _, length in asked)


def test_a_warm_read_asks_for_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fragmented"
    data = fragmented(path, 16 * MIB)
    asked = record_fadvise(monkeypatch, os.POSIX_FADV_WILLNEED)
    with SparseReader(os.open(path, os.O_RDONLY), drop_cache=False) as reader:
        assert read_data(reader) == data
    assert asked == []


def test_with_the_cache_watched_a_cold_read_asks_only_within_known_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fragmented"
    size = 4 * CACHE_WINDOW
    data = fragmented(path, size)
    evict(path)
    asked = record_fadvise(monkeypatch, os.POSIX_FADV_WILLNEED)
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        reader.read_pieces(bytearray(PIECE))
        # The window being read and the next one have their residency taken: no further.
        assert asked
        assert max(offset + length for offset, length in asked) <= 2 * CACHE_WINDOW
        assert data == data[:PIECE] + read_data(reader)
    fd = os.open(path, os.O_RDONLY)
    try:  # everything the reads and the asking brought in was let go again
        assert resident_pages(fd, 0, size).count(1) == 0
    finally:
        os.close(fd)
