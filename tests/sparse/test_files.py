"""Extent walking, hole punching, zero detection and sparse copy on real files."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.conftest import small_tmpfs
from virtvol.sparse import files as sparsefile
from virtvol.sparse.extents import Extent, iter_extents, next_extent, span_after_hole
from virtvol.sparse.zeros import is_zero

if TYPE_CHECKING:
    from pathlib import Path

B = 4096

MakeFile = Callable[[int, list[tuple[int, bytes]]], int]


@pytest.fixture
def make_file(tmp_path: Path) -> Iterator[MakeFile]:
    fds: list[int] = []

    def make(size: int, data: list[tuple[int, bytes]]) -> int:
        path = tmp_path / f"f{len(fds)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fds.append(fd)
        os.ftruncate(fd, size)
        for offset, chunk in data:
            os.pwrite(fd, chunk, offset)
        return fd

    yield make
    for fd in fds:
        os.close(fd)


def extents(fd: int, start: int = 0, end: int | None = None) -> list[tuple[int, int, bool]]:
    stop = os.fstat(fd).st_size if end is None else end
    return [(e.start, e.length, e.data) for e in iter_extents(fd, start, stop)]


def test_hole_first(make_file: MakeFile) -> None:
    fd = make_file(4 * B, [(2 * B, b"x" * B)])
    assert extents(fd) == [(0, 2 * B, False), (2 * B, B, True), (3 * B, B, False)]


def test_the_extent_after_a_hole_is_its_data_up_to_the_next_hole(make_file: MakeFile) -> None:
    fd = make_file(6 * B, [(2 * B, b"x" * 2 * B)])
    hole = next_extent(fd, 0, 6 * B)
    assert hole == Extent(0, 2 * B, data=False)
    assert span_after_hole(fd, hole.end, 6 * B) == (True, 4 * B)


def test_the_extent_after_a_hole_is_walked_again_when_the_data_went(make_file: MakeFile) -> None:
    fd = make_file(6 * B, [(2 * B, b"x" * B), (5 * B, b"y" * B)])
    hole = next_extent(fd, 0, 6 * B)
    assert hole == Extent(0, 2 * B, data=False)
    sparsefile.punch_hole(fd, 2 * B, B)  # the file changes between the two calls
    assert span_after_hole(fd, hole.end, 6 * B) == (False, 5 * B)


def test_data_first(make_file: MakeFile) -> None:
    fd = make_file(4 * B, [(0, b"x" * B)])
    assert extents(fd) == [(0, B, True), (B, 3 * B, False)]


def test_unaligned_tail_is_data(make_file: MakeFile) -> None:
    fd = make_file(2 * B + 100, [(2 * B, b"t" * 100)])
    assert extents(fd) == [(0, 2 * B, False), (2 * B, 100, True)]


def test_all_hole(make_file: MakeFile) -> None:
    fd = make_file(8 * B, [])
    assert extents(fd) == [(0, 8 * B, False)]


def test_one_byte_file(make_file: MakeFile) -> None:
    fd = make_file(1, [(0, b"z")])
    assert extents(fd) == [(0, 1, True)]


def test_empty_range_yields_nothing(make_file: MakeFile) -> None:
    fd = make_file(0, [])
    assert extents(fd) == []
    assert next_extent(fd, 10, 10) is None


def test_range_is_clipped_inside_extents(make_file: MakeFile) -> None:
    fd = make_file(4 * B, [(B, b"x" * 2 * B)])
    assert extents(fd, 100, 2 * B) == [(100, B - 100, False), (B, B, True)]


def test_one_tebibyte_sparse_file(make_file: MakeFile) -> None:
    tib = 1 << 40
    fd = make_file(tib, [(0, b"a" * 10), (tib // 2, b"b" * 3000), (tib - 5, b"c" * 5)])
    found = extents(fd)
    assert found == [
        (0, B, True),
        (B, tib // 2 - B, False),
        (tib // 2, B, True),
        (tib // 2 + B, tib - B - (tib // 2 + B), False),
        (tib - B, B, True),
    ]
    assert sum(length for _, length, _ in found) == tib


def test_pipe_is_all_data() -> None:
    read_end, write_end = os.pipe()
    try:
        assert list(iter_extents(read_end, 0, 10)) == [Extent(0, 10, data=True)]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_extent_end_property() -> None:
    assert Extent(5, 10, data=False).end == 15


def test_punch_hole_keeps_size_and_frees_blocks(make_file: MakeFile) -> None:
    fd = make_file(0, [(0, b"q" * 8 * B)])
    os.fsync(fd)
    sparsefile.punch_hole(fd, 2 * B, 4 * B)
    assert os.fstat(fd).st_size == 8 * B
    assert os.fstat(fd).st_blocks * 512 == 4 * B
    assert os.pread(fd, 8 * B, 0) == b"q" * 2 * B + bytes(4 * B) + b"q" * 2 * B
    sparsefile.punch_hole(fd, 0, 0)  # nothing to do


def test_unshare_leaves_a_file_whose_blocks_are_its_own_as_it_is(
    make_file: MakeFile, tmp_path: Path
) -> None:
    """ext4 shares no blocks and refuses the mode: nothing changes, nothing is raised
    (sharing file systems, XFS, are not tested here). Other refusals are raised."""
    fd = make_file(8 * B, [(0, b"q" * 2 * B)])
    sparsefile.unshare(fd, 0, 8 * B)
    assert os.fstat(fd).st_size == 8 * B
    assert os.pread(fd, 3 * B, 0) == b"q" * 2 * B + bytes(B)
    read_only = os.open(tmp_path / "f0", os.O_RDONLY)
    try:
        with pytest.raises(OSError, match=os.strerror(errno.EBADF)):
            sparsefile.unshare(read_only, 0, B)
    finally:
        os.close(read_only)


def test_punch_hole_falls_back_to_zeros(
    make_file: MakeFile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unsupported(fd: int, mode: int, offset: int, length: int) -> int:
        import ctypes

        ctypes.set_errno(errno.EOPNOTSUPP)
        return -1

    monkeypatch.setattr(sparsefile, "_fallocate", lambda: unsupported)
    fd = make_file(0, [(0, b"q" * 3 * B)])
    sparsefile.punch_hole(fd, B, 10 * B)  # past EOF: the size must not grow
    assert os.fstat(fd).st_size == 3 * B
    assert os.pread(fd, 3 * B, 0) == b"q" * B + bytes(2 * B)


def test_punch_hole_reports_real_errors(make_file: MakeFile) -> None:
    fd = make_file(B, [])
    read_only = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="Bad file descriptor"):
            sparsefile.punch_hole(read_only, 0, B)
    finally:
        os.close(read_only)


@pytest.mark.parametrize(
    "buf",
    [b"", bytes(1), bytearray(3 << 20), memoryview(bytearray(64)).cast("Q")],
)
def test_is_zero_true(buf: bytes | bytearray | memoryview) -> None:
    assert is_zero(buf)


@pytest.mark.parametrize("where", [0, 1, (1 << 20) - 1, 1 << 20, (2 << 20) + 7])
def test_is_zero_finds_one_byte(where: int) -> None:
    buf = bytearray(3 << 20)
    buf[where] = 1
    assert not is_zero(buf)
    assert not is_zero(memoryview(buf)[where:])
    assert is_zero(memoryview(buf)[:where])


def test_copy_sparse_keeps_holes(make_file: MakeFile) -> None:
    src = make_file(64 * B, [(B, b"1" * B), (40 * B, b"2" * 100)])
    dst = make_file(64 * B, [])
    sparsefile.copy_sparse(src, dst, 64 * B)
    assert os.pread(dst, 64 * B, 0) == os.pread(src, 64 * B, 0)
    assert os.fstat(dst).st_blocks * 512 == 2 * B


def test_copy_sparse_read_write_fallback(
    make_file: MakeFile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_copy_file_range(*args: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", no_copy_file_range)
    src = make_file(0, [(0, os.urandom(3 * B + 5)), (10 * B, b"end")])
    dst = make_file(10 * B + 3, [])
    sparsefile.copy_sparse(src, dst, 10 * B + 3, bytearray(B))
    assert os.pread(dst, 11 * B, 0) == os.pread(src, 11 * B, 0)
    assert os.fstat(dst).st_blocks * 512 == 5 * B


def test_allocate_reserves_blocks(make_file: MakeFile) -> None:
    fd = make_file(0, [])
    sparsefile.allocate(fd, 0, 4 * B)
    assert os.fstat(fd).st_size == 4 * B
    assert os.fstat(fd).st_blocks * 512 == 4 * B
    sparsefile.allocate(fd, 0, 0)


def test_copy_sparse_in_steps_from_an_offset(make_file: MakeFile) -> None:
    src = make_file(64 * B, [(0, b"a" * 4 * B), (10 * B, b"b" * 3 * B), (60 * B, b"c" * B)])
    dst = make_file(64 * B, [])
    stops = []
    at = 2 * B
    while at < 64 * B:
        at = sparsefile.copy_sparse(src, dst, 64 * B, start=at, most=2 * B)
        stops.append(at)
    # Two blocks of data a step; the holes cost no step.
    assert stops == [4 * B, 12 * B, 61 * B, 64 * B]
    assert os.pread(dst, 64 * B, 0) == bytes(2 * B) + os.pread(src, 62 * B, 2 * B)
    assert os.fstat(dst).st_blocks * 512 == 6 * B


# ``chattr``'s S, d and A: synchronous writes, no dump, no access times.
SYNC, NODUMP, NOATIME = 0x08, 0x40, 0x80


def _flags(fd: int) -> int:
    return sparsefile.inode_flags(fd) & sparsefile.KEPT_INODE_FLAGS


def test_a_copy_of_the_flags_gives_the_sources_and_takes_off_the_others(
    make_file: MakeFile,
) -> None:
    source, copy = make_file(0, []), make_file(0, [])
    sparsefile.set_inode_flags(source, sparsefile.inode_flags(source) | SYNC | NOATIME)
    sparsefile.set_inode_flags(copy, sparsefile.inode_flags(copy) | NODUMP)
    sparsefile.copy_inode_flags(source, copy)
    assert _flags(copy) == _flags(source) == SYNC | NOATIME


def test_a_file_without_flags_has_none_to_give() -> None:
    """A pipe has no attribute flags (ENOTTY): the copy leaves both as they are."""
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError, match="Inappropriate ioctl") as no_flags:
            sparsefile.inode_flags(read_end)
        assert no_flags.value.errno == errno.ENOTTY
        sparsefile.copy_inode_flags(read_end, write_end)
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs: it keeps few attribute flags (d and A, not S)."""
    with small_tmpfs(tmp_path / "tmpfs") as mount:
        yield mount


def test_flags_the_file_system_refuses_refuse_the_copy(make_file: MakeFile, tmpfs: Path) -> None:
    source = make_file(0, [])
    sparsefile.set_inode_flags(source, sparsefile.inode_flags(source) | SYNC | NODUMP)
    copy = os.open(tmpfs / "copy", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(sparsefile.FlagsNotKept) as refused:
            sparsefile.copy_inode_flags(source, copy, filename="/the/source")
        assert refused.value.letters == "+S+d"
        assert refused.value.errno == errno.EOPNOTSUPP
        assert refused.value.filename == "/the/source"
        assert str(refused.value) == "cannot keep attribute flags '+S+d': Operation not supported"
        assert _flags(copy) == 0
    finally:
        os.close(copy)
