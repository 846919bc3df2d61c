"""The shared engine: the zero rule, the writer, the reader and the atomic file."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import struct
import subprocess
import threading
import tracemalloc
from typing import TYPE_CHECKING

import pytest

from tests.conftest import small_file_system
from tests.sparse.helpers import evict
from virtvol.sparse import files
from virtvol.sparse.reader import BufferPool, Chunk, SparseReader
from virtvol.sparse.writer import WRITEBACK_START, WRITEBACK_STEP, AtomicFile, SparseWriter
from virtvol.sparse.zeros import ZERO_BLOCK, is_zero, zero_runs

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KIB = 1024


def test_zero_runs_follow_file_offsets_not_buffer_starts() -> None:
    data = bytearray(3 * ZERO_BLOCK)
    data[ZERO_BLOCK + 5] = 1  # only the middle aligned block holds data
    # The same bytes cut at different buffer boundaries give the same blocks.
    assert zero_runs(data, 0) == [
        (True, 0, ZERO_BLOCK),
        (False, ZERO_BLOCK, 2 * ZERO_BLOCK),
        (True, 2 * ZERO_BLOCK, 3 * ZERO_BLOCK),
    ]
    shifted = memoryview(data)[100:]
    assert zero_runs(shifted, 100) == [
        (True, 0, ZERO_BLOCK - 100),
        (False, ZERO_BLOCK - 100, 2 * ZERO_BLOCK - 100),
        (True, 2 * ZERO_BLOCK - 100, len(shifted)),
    ]
    assert zero_runs(b"", 7) == []
    assert zero_runs(bytes(10), 3) == [(True, 0, 10)]


def _runs_block_by_block(data: bytes, position: int) -> list[tuple[bool, int, int]]:
    """``zero_runs`` by its definition: every piece between block boundaries judged, equal
    neighbours merged."""
    runs: list[tuple[bool, int, int]] = []
    start = 0
    while start < len(data):
        stop = min(len(data), start + ZERO_BLOCK - (position + start) % ZERO_BLOCK)
        zero = not any(data[start:stop])
        if runs and runs[-1][0] == zero:
            runs[-1] = (zero, runs[-1][1], stop)
        else:
            runs.append((zero, start, stop))
        start = stop
    return runs


@pytest.mark.parametrize("size", [0, 1, 4 * KIB, ZERO_BLOCK - 1, ZERO_BLOCK, ZERO_BLOCK + 1])
@pytest.mark.parametrize("position", [0, 1, 60 * KIB, ZERO_BLOCK - 1, 5 * ZERO_BLOCK])
@pytest.mark.parametrize("data_at", [None, 0, -1])
def test_zero_runs_of_small_pieces_are_those_of_the_rule(
    size: int, position: int, data_at: int | None
) -> None:
    """Pieces within one block take a shortcut; it must cut what the block walk cuts."""
    data = bytearray(size)
    if data_at is not None and size:
        data[data_at] = 7
    assert zero_runs(data, position) == _runs_block_by_block(bytes(data), position)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_writer_leaves_zero_blocks_and_holes_unwritten(tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = SparseWriter(fd)
        first = os.urandom(10 * KIB)
        dense = bytearray(4 * ZERO_BLOCK)
        dense[-1] = 9
        writer.apply([first, 100 * KIB, bytes(dense), 3 * ZERO_BLOCK])
        assert writer.position == len(first) + 100 * KIB + len(dense) + 3 * ZERO_BLOCK
        writer.finish()  # the trailing hole extends the file
        expected = first + bytes(100 * KIB) + bytes(dense) + bytes(3 * ZERO_BLOCK)
        assert path.read_bytes() == expected
        assert allocated(path) <= 3 * ZERO_BLOCK  # the 10 KiB, one data block, rounding
        assert writer.zero_bytes >= 2 * ZERO_BLOCK
    finally:
        os.close(fd)


def test_writer_copies_the_tail_of_another_file_past_the_stream(tmp_path: Path) -> None:
    old = tmp_path / "old"
    with old.open("wb") as handle:  # data, a hole of 20 blocks, data
        handle.write(os.urandom(4 * ZERO_BLOCK))
        handle.seek(24 * ZERO_BLOCK)
        handle.write(os.urandom(ZERO_BLOCK + 3))
    old_bytes = old.read_bytes()
    source = os.open(old, os.O_RDONLY)
    fd = os.open(tmp_path / "new", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = SparseWriter(fd)
        head = os.urandom(ZERO_BLOCK + 5)
        writer.apply([head, ZERO_BLOCK])  # the stream ends in a hole
        steps = 1
        while not writer.copy_tail(source, len(old_bytes), ZERO_BLOCK):
            steps += 1
        writer.finish()
        tail = old_bytes[2 * ZERO_BLOCK + 5 :]
        assert (tmp_path / "new").read_bytes() == head + bytes(ZERO_BLOCK) + tail
        assert steps == 3  # 3 blocks less 2 bytes of data, a block a step; the hole free
        assert allocated(tmp_path / "new") <= 7 * ZERO_BLOCK
        # A stream that went past the other file's end has nothing to copy.
        longer = SparseWriter(fd)
        longer.skip(len(old_bytes) + 1)
        assert longer.copy_tail(source, len(old_bytes), ZERO_BLOCK)
        longer.finish()
        assert os.fstat(fd).st_size == len(old_bytes) + 1
    finally:
        os.close(fd)
        os.close(source)


def test_writer_punches_inside_the_old_size_and_keeps_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "vol"
    path.write_bytes(b"\xee" * 8 * ZERO_BLOCK)
    fd = os.open(path, os.O_RDWR)
    try:
        writer = SparseWriter(fd, ZERO_BLOCK, 4 * ZERO_BLOCK)
        writer.apply([bytes(ZERO_BLOCK), b"A" * 10, ZERO_BLOCK * 10])  # the hole is clipped
        with pytest.raises(OSError, match="No space left") as info:
            writer.write(b"B")  # beyond offset + length
        assert info.value.errno == errno.ENOSPC
        writer.finish()
    finally:
        os.close(fd)
    expected = (
        b"\xee" * ZERO_BLOCK + bytes(ZERO_BLOCK) + b"A" * 10 + bytes(3 * ZERO_BLOCK - 10)
    ) + b"\xee" * 3 * ZERO_BLOCK
    assert path.read_bytes() == expected


def test_reader_hands_out_holes_and_data_in_pooled_buffers(tmp_path: Path) -> None:
    path = tmp_path / "src"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
        f.seek(256 * KIB)
        f.write(b"x" * 100 * KIB)
    pool = BufferPool(1, 64 * KIB)
    stop = threading.Event()
    pieces = []
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        while True:
            buffer = pool.take(stop)
            assert buffer is not None
            chunk = reader.next_chunk(buffer)
            pool.give(buffer)
            if chunk.eof:
                break
            pieces.append((chunk.data, chunk.length))
    assert pieces == [
        (False, 256 * KIB),
        (True, 64 * KIB),
        (True, 36 * KIB),
        (False, (1 << 20) - 356 * KIB),
    ]


@pytest.mark.parametrize("cut", [64 * KIB, 100 * KIB])
@pytest.mark.parametrize("cold", [False, True])
def test_reader_ends_early_when_the_file_shrank_where_it_had_holes(
    tmp_path: Path, cut: int, cold: bool
) -> None:
    """Past a file's end SEEK_DATA answers ENXIO, as it does in a trailing hole: a file
    cut short at (or inside) a hole the reader had not reached must end the read there,
    as a short read does, not read on as a hole up to the old size. Cold, the first read
    walks the extents ahead (its prefetch) before the file is cut."""
    path = tmp_path / "src"
    with open(path, "wb") as f:
        f.write(b"x" * 64 * KIB)
        f.seek(256 * KIB)
        f.write(b"y" * 64 * KIB)
    if cold:
        evict(path)
    buffer = bytearray(64 * KIB)
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        assert reader.next_chunk(buffer) == Chunk(True, 64 * KIB)
        os.truncate(path, cut)
        pieces = []
        while not (chunk := reader.next_chunk(buffer)).eof:
            pieces.append((chunk.data, chunk.length))
        assert reader.end == cut
    assert sum(length for _, length in pieces) == cut - 64 * KIB
    assert all(not data for data, _ in pieces)


def test_atomic_file_replaces_on_commit_and_vanishes_otherwise(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.write_bytes(b"old")
    with AtomicFile(target) as out:
        os.write(out.fd, b"half")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["t"]
    with AtomicFile(target) as out:
        os.write(out.fd, b"new")
        out.commit()
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["t"]
    assert is_zero(b"")
    assert not is_zero(b"\0\1")


def test_atomic_file_whose_folder_is_removed_meanwhile_fails_naming_its_paths(
    tmp_path: Path,
) -> None:
    """The folder (and the temporary in it) removed before the commit: the rename fails,
    naming the paths the caller knows, not the names in the folder held open."""
    folder = tmp_path / "work"
    folder.mkdir()
    target = folder / "t"
    with AtomicFile(target) as out:
        os.write(out.fd, b"new")
        shutil.rmtree(folder)
        with pytest.raises(FileNotFoundError) as failed:
            out.commit()
    assert (failed.value.filename, failed.value.filename2) == (out.temp, str(target))
    assert os.listdir(tmp_path) == []


def test_atomic_file_temporary_of_a_long_name_cuts_it_between_characters(
    tmp_path: Path,
) -> None:
    """The temporary keeps the start of a long name; cut inside a character, its name would
    not be UTF-8 (which some file systems refuse, and listings show as garbage)."""
    name = "a" + "\u00e9" * 127  # 255 bytes: 1, then 2 for each
    with AtomicFile(tmp_path / name) as out:
        temp = os.path.basename(out.temp)
        os.fsencode(temp).decode("utf-8")  # raises for half a character
        assert temp.startswith(".a\u00e9")
        assert len(os.fsencode(temp)) <= 255
        out.commit()
    assert os.listdir(tmp_path) == [name]


@pytest.mark.skipif(os.geteuid() != 0, reason="a file of another owner takes root to make")
@pytest.mark.parametrize("refusal", [errno.EPERM, errno.EINVAL])
def test_atomic_file_keeps_what_it_may_of_an_owner_it_cannot_give_the_file_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    """An owner this process may not give the file to (EPERM), or one the user namespace
    has no number for (EINVAL, a container's unmapped owner): the download goes on, and
    keeps the group where only the owner was refused, as ``cp -p`` does."""
    target = tmp_path / "t"
    target.write_bytes(b"old")
    os.chown(target, 65534, 65533)
    target.chmod(0o640)
    real_fchown = os.fchown

    def fchown(fd: int, uid: int, gid: int) -> None:
        if uid != -1:  # giving the file away is refused; its group alone is taken
            raise OSError(refusal, os.strerror(refusal))
        real_fchown(fd, uid, gid)

    monkeypatch.setattr(os, "fchown", fchown)
    with AtomicFile(target) as out:
        os.write(out.fd, b"new")
        out.commit()
    made = target.stat()
    assert target.read_bytes() == b"new"
    assert (made.st_uid, made.st_gid, made.st_mode & 0o7777) == (os.geteuid(), 65533, 0o640)


def test_atomic_file_keeps_the_access_acl_of_the_file_it_replaces(tmp_path: Path) -> None:
    """A file that lets one other user in through an ACL and keeps its group out: the group
    bits show the ACL's mask, so copied without the ACL they would let the group in."""
    anyone = 0xFFFFFFFF
    entries = [(0x01, 6, anyone), (0x02, 6, 1234), (0x04, 0, anyone), (0x10, 6, anyone)]
    entries.append((0x20, 0, anyone))
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    target = tmp_path / "t"
    target.write_bytes(b"old")
    os.setxattr(target, "system.posix_acl_access", acl)
    with AtomicFile(target) as out:
        os.write(out.fd, b"new")
        out.commit()
    assert target.read_bytes() == b"new"
    assert os.getxattr(target, "system.posix_acl_access") == acl
    assert target.stat().st_mode & 0o777 == 0o660


def attributes_of(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in os.listxattr(path)}


def test_atomic_file_keeps_the_extended_attributes_of_the_file_it_replaces(
    tmp_path: Path,
) -> None:
    """virsh writes a download over an existing file in place (O_TRUNC), so the file keeps
    what users and tools attached to it: a backup tool's marks, a note, any bytes. The
    file is read-only: its attributes must be given before its mode is (an unprivileged
    owner may not set them on a file it may not write)."""
    target = tmp_path / "t"
    target.write_bytes(b"old")
    attributes = {"user.backup.id": b"2026-12-01T05:00", "user.note": b"\0any \xff bytes"}
    for name, value in attributes.items():
        os.setxattr(target, name, value)
    target.chmod(0o444)
    with AtomicFile(target) as out:
        os.write(out.fd, b"new")
        out.commit()
    assert target.read_bytes() == b"new"
    assert attributes_of(target) == attributes
    assert target.stat().st_mode & 0o777 == 0o444


def test_atomic_file_keeps_what_changed_on_the_file_while_it_was_written(
    tmp_path: Path,
) -> None:
    """A download takes a while; a backup tool marking the file meanwhile, a note changed,
    another dropped, a chmod: virsh's write in place keeps all of it, and so does the
    replacement, which takes the file's metadata again just before its rename."""
    target = tmp_path / "t"
    target.write_bytes(b"old")
    os.setxattr(target, "user.note", b"first")
    os.setxattr(target, "user.gone", b"soon")
    with AtomicFile(target) as out:
        os.write(out.fd, b"new")
        os.setxattr(target, "user.backup.id", b"2026-12-01T06:00")
        os.setxattr(target, "user.note", b"second")
        os.removexattr(target, "user.gone")
        target.chmod(0o400)
        out.commit()
    assert target.read_bytes() == b"new"
    assert attributes_of(target) == {"user.note": b"second", "user.backup.id": b"2026-12-01T06:00"}
    assert target.stat().st_mode & 0o777 == 0o400
    assert os.listdir(tmp_path) == ["t"]


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A small XFS mounted from a file: XFS keeps values up to 64 KiB and as many
    attributes as the listing's 64 KiB of names allows (ext4 keeps one block's worth)."""
    with small_file_system(
        tmp_path / "xfs.img", tmp_path / "xfs", 300 << 20, "mkfs.xfs", "-q", "-f"
    ) as mount:
        yield mount


def test_copying_extended_attributes_holds_one_value_at_a_time(xfs: Path) -> None:
    """Whoever may set attributes on a file (its owner; for a volume, often its VM's
    user) may give it thousands of 64 KiB values: a copy holding them all at once would
    take hundreds of MiB of the daemon's memory for each upload. They are copied one by
    one, and all of them."""
    source, copy = xfs / "source", xfs / "copy"
    source.write_bytes(b"")
    copy.write_bytes(b"")
    value = os.urandom(64 << 10)
    count = 200  # 12.5 MiB of values
    for index in range(count):
        os.setxattr(source, f"user.{index}", value)
    fd = os.open(copy, os.O_WRONLY)
    tracemalloc.start()
    try:
        given = files.copy_extended_attributes(str(source), fd)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert peak < 1 << 20
    assert given == {f"user.{index}" for index in range(count)}
    assert all(os.getxattr(copy, f"user.{index}") == value for index in range(count))


def test_atomic_file_that_cannot_keep_an_attribute_leaves_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attribute the process may not give the replacement (the kernel refuses a label
    to a process without the privilege, EPERM) refuses the replacement: the file keeps its
    content and attributes, no temporary is left, and the error names the attribute."""
    target = tmp_path / "t"
    target.write_bytes(b"old")
    os.setxattr(target, "user.kept", b"1")
    os.setxattr(target, "user.label", b"vm-disk")
    real_setxattr = os.setxattr

    def setxattr(path: int | str, name: str, value: bytes, flags: int = 0) -> None:
        if name == "user.label":
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        real_setxattr(path, name, value, flags)

    monkeypatch.setattr(os, "setxattr", setxattr)
    with pytest.raises(files.AttributeNotKept) as refused:
        AtomicFile(target)
    assert refused.value.errno == errno.EPERM
    assert (
        str(refused.value) == "cannot keep extended attribute 'user.label': Operation not permitted"
    )
    assert refused.value.filename == str(target)
    assert target.read_bytes() == b"old"
    assert attributes_of(target) == {"user.kept": b"1", "user.label": b"vm-disk"}
    assert os.listdir(tmp_path) == ["t"]


def test_reader_reads_a_block_device_to_its_end(tmp_path: Path) -> None:
    """A block device's fstat size is 0: the reader must take its size from lseek."""
    image = tmp_path / "disk.img"
    data = os.urandom(1 << 20)
    image.write_bytes(data)
    attach = ["losetup", "--find", "--show", "--read-only", str(image)]
    device = subprocess.run(attach, check=True, capture_output=True, text=True).stdout.strip()
    try:
        received = bytearray()
        buffer = bytearray(256 * KIB)
        with SparseReader(os.open(device, os.O_RDONLY)) as reader:
            while not (chunk := reader.next_chunk(buffer)).eof:
                assert chunk.data  # a device knows no holes
                received += buffer[: chunk.length]
        assert bytes(received) == data
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


def test_read_pieces_packs_many_small_extents_into_one_buffer(tmp_path: Path) -> None:
    path = tmp_path / "fragmented"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
        for offset in range(0, 1 << 20, 64 * KIB):
            f.seek(offset)
            f.write(bytes([offset // (64 * KIB) + 1]) * 4 * KIB)
    buffer = bytearray(40 * KIB)
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        pieces = reader.read_pieces(buffer)
        # Ten 4 KiB extents fill the buffer; the holes between them take no room.
        assert [(p.data, p.length) for p in pieces] == [
            (True, 4 * KIB),
            (False, 60 * KIB),
        ] * 9 + [(True, 4 * KIB)]
        assert bytes(buffer) == b"".join(bytes([i + 1]) * 4 * KIB for i in range(10))
        rest = reader.read_pieces(buffer, most=3)
        assert [(p.data, p.length) for p in rest] == [
            (False, 60 * KIB),
            (True, 4 * KIB),
            (False, 60 * KIB),
        ]
        while reader.read_pieces(buffer):
            pass
        assert reader.position == 1 << 20
        assert reader.read_pieces(buffer) == []


def test_chunks_of_unlike_extents_each_say_their_own_length(tmp_path: Path) -> None:
    """The reader hands out its last chunk again when the next is alike; extents of
    other sizes, and data cut by the buffer, must each get their own."""
    layout = [(4, 60), (4, 60), (8, 56), (8, 56), (12, 52), (4, 60)]  # KiB of data, of hole
    path = tmp_path / "unlike"
    with open(path, "wb") as f:
        for data, hole in layout:
            f.write(b"d" * data * KIB)
            f.seek(hole * KIB, os.SEEK_CUR)
        f.truncate()
    expected: list[tuple[bool, int]] = []
    for data, hole in layout:
        expected += [(True, min(data, 8) * KIB)] + ([(True, 4 * KIB)] if data > 8 else [])
        expected.append((False, hole * KIB))
    buffer = bytearray(8 * KIB)  # a 12 KiB extent comes as 8 KiB, then 4 KiB
    chunks = []
    with SparseReader(os.open(path, os.O_RDONLY)) as reader:
        while (chunk := reader.next_chunk(buffer)).length:
            chunks.append((chunk.data, chunk.length))
    assert chunks == expected


def test_reading_a_fragmented_file_costs_two_seeks_per_extent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEEK_DATA over a hole finds the data after it: the data's end takes one SEEK_HOLE,
    not a second SEEK_DATA first (a fragmented image has one extent every 64 KiB)."""
    path = tmp_path / "fragmented"
    extents = 16
    with open(path, "wb") as f:
        f.truncate(extents * 64 * KIB)
        for offset in range(32 * KIB, extents * 64 * KIB, 64 * KIB):
            f.seek(offset)
            f.write(b"d" * 4 * KIB)
    seeks: list[int] = []
    real_lseek = os.lseek

    def counting_lseek(fd: int, offset: int, whence: int) -> int:
        seeks.append(whence)
        return real_lseek(fd, offset, whence)

    buffer = bytearray(1 << 20)
    with SparseReader(os.open(path, os.O_RDONLY), drop_cache=False) as reader:
        monkeypatch.setattr(os, "lseek", counting_lseek)
        pieces = reader.read_pieces(buffer)
        monkeypatch.undo()
        assert reader.read_pieces(buffer) == []
    # hole, data, hole, data ... and the trailing hole
    assert [(p.data, p.length) for p in pieces] == [
        (False, 32 * KIB),
        *[(True, 4 * KIB), (False, 60 * KIB)] * (extents - 1),
        (True, 4 * KIB),
        (False, 28 * KIB),
    ]
    assert bytes(buffer[: extents * 4 * KIB]) == b"d" * extents * 4 * KIB
    # one SEEK_DATA per hole, one SEEK_HOLE per data extent, and the trailing hole's end
    # checked against the file's size (SEEK_END)
    assert seeks.count(os.SEEK_END) == 1
    assert len(seeks) == 2 * extents + 2


def test_durable_writes_wait_for_the_disk_per_step_of_data_not_of_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 24 extents of 1 MiB spread over 4 GiB: writeback starts every WRITEBACK_START of
    # data, and nothing waits for the disk before a whole step of data is written.
    waits: list[tuple[int, int]] = []
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(files, "wait_writeback", lambda fd, o, n: waits.append((o, n)))
    monkeypatch.setattr(files, "start_writeback", lambda fd, o, n: started.append((o, n)))
    extent = b"\x01" * (1 << 20)
    stride = (4 << 30) // 24
    with AtomicFile(tmp_path / "scattered") as output:
        writer = SparseWriter(output.fd, sync=True)
        for _ in range(24):
            writer.apply((extent, stride - len(extent)))
        per_start = WRITEBACK_START // len(extent)
        assert waits == []
        assert len(started) == 24 // per_start
        # Started ranges follow each other without gaps or overlaps.
        assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(started))
        # Two more steps of data: the first step's ranges are waited for, one step behind.
        for _ in range(2 * WRITEBACK_STEP // len(extent)):
            writer.apply((extent, stride - len(extent)))
        assert len(waits) == 1
        first_step_end = started[WRITEBACK_STEP // WRITEBACK_START - 1]
        assert waits[0] == (0, first_step_end[0] + first_step_end[1])
        writer.finish()


def test_a_writer_without_sync_never_starts_writeback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(files, "start_writeback", lambda fd, o, n: calls.append(o))
    with AtomicFile(tmp_path / "plain") as output:
        writer = SparseWriter(output.fd)
        writer.apply((b"\x01" * (8 << 20),))
        writer.finish()
    assert calls == []


def test_a_writer_with_early_writeback_but_no_sync_never_flushes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temporary renamed over a volume without sync_uploads: ext4 writes it back at the
    # rename anyway, so writeback starts while the data arrives, but nothing waits for
    # the disk at the end.
    started: list[int] = []
    flushed: list[int] = []
    monkeypatch.setattr(files, "start_writeback", lambda fd, o, n: started.append(o))
    monkeypatch.setattr(os, "fdatasync", flushed.append)
    with AtomicFile(tmp_path / "plain") as output:
        writer = SparseWriter(output.fd, writeback=True)
        writer.apply((b"\x01" * (8 << 20),))
        writer.finish()
    assert started == [0]
    assert flushed == []


def _written_by_pwritev_all(tmp_path: Path, views: list[memoryview], offset: int) -> bytes:
    """What a new file holds after ``pwritev_all`` wrote ``views`` at ``offset``."""
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        files.pwritev_all(fd, views, offset)
    finally:
        os.close(fd)
    return path.read_bytes()


def test_pwritev_all_writes_at_most_a_call_size_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4 MiB frame goes in several calls: larger buffered writes get large page-cache
    folios, which cost several times more where the hypervisor took free memory back."""
    real_pwritev = os.pwritev
    sizes: list[int] = []

    def pwritev(fd: int, views: list[memoryview], offset: int) -> int:
        sizes.append(sum(map(len, views)))
        return real_pwritev(fd, views, offset)

    monkeypatch.setattr(os, "pwritev", pwritev)
    views = [
        memoryview(os.urandom(4 << 20)),
        memoryview(b"x" * 1000),
        memoryview(os.urandom(files.WRITE_CALL_MAX - 1000 + 7)),
    ]
    assert _written_by_pwritev_all(tmp_path, views, 3) == bytes(3) + b"".join(views)
    assert max(sizes) == files.WRITE_CALL_MAX
    assert sum(sizes) == sum(map(len, views))
    assert len(sizes) == -(-sum(map(len, views)) // files.WRITE_CALL_MAX)


@pytest.mark.parametrize("short", [False, True])
def test_pwritev_all_writes_every_view_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short: bool
) -> None:
    """More views than one call takes, and (``short``) a kernel that writes at most
    1000 bytes per call, cutting views in the middle."""
    real_pwritev = os.pwritev
    calls: list[int] = []

    def pwritev(fd: int, views: list[memoryview], offset: int) -> int:
        calls.append(len(views))
        if not short:
            return real_pwritev(fd, views, offset)
        first = bytes(b"".join(views))[:1000]
        return real_pwritev(fd, [first], offset)

    monkeypatch.setattr(os, "pwritev", pwritev)
    count = files._IOV_MAX + 5 if not short else 40
    views = [memoryview(bytes([n % 251]) * (n % 97 + 1)) for n in range(count)]
    assert _written_by_pwritev_all(tmp_path, views, 10) == bytes(10) + b"".join(views)
    assert max(calls) <= files._IOV_MAX
    assert len(calls) == (2 if not short else -(-sum(map(len, views)) // 1000))
