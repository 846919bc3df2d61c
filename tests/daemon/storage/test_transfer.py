"""Downloads and uploads at file level: extents, holes, limits, atomic replacement."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import subprocess
import threading
from typing import TYPE_CHECKING, Any

import pytest

from tests.daemon.conftest import leave_a_hole
from tests.daemon.storage.conftest import BLOCK, NO_VOL, NOT_VALID, PoolSetup, allocated, fails
from virtvol.daemon.storage import (
    Chunk,
    StorageRegistry,
    VolumeReader,
    VolumeRef,
    VolumeWriter,
)
from virtvol.daemon.storage import pool as pool_module
from virtvol.daemon.storage import registry as registry_module
from virtvol.daemon.storage import volumes as volumes_module
from virtvol.daemon.storage.model import PoolEvent
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.sparse.writer import MAX_OFFSET

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from virtvol.daemon.storage import PoolRef

MIB = 1 << 20


def sparse_file(path: Path, size: int, data: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, chunk in data:
            f.seek(offset)
            f.write(chunk)


def drain(reader: VolumeReader, buffer_size: int = 64 * 1024) -> list[tuple[bool, int, bytes]]:
    """All chunks as (data?, length, bytes-if-data)."""
    buffer = bytearray(buffer_size)
    chunks = []
    with reader:
        while not (chunk := reader.next_chunk(buffer)).eof:
            chunks.append((chunk.data, chunk.length, bytes(buffer[: chunk.length]) * chunk.data))
    return chunks


def content(chunks: list[tuple[bool, int, bytes]]) -> bytes:
    return b"".join(data if is_data else bytes(length) for is_data, length, data in chunks)


@pytest.fixture
def holey(setup: PoolSetup) -> VolumeRef:
    """A 16-block volume: hole, 2 blocks of data, hole, 1 block of data, trailing hole."""
    sparse_file(
        setup.pool_dir / "holey",
        16 * BLOCK,
        [(2 * BLOCK, b"a" * 2 * BLOCK), (8 * BLOCK, b"b" * BLOCK)],
    )
    return setup.registry.lookup_volume_by_name(setup.ref, "holey")


def test_sparse_download_walks_extents(setup: PoolSetup, holey: VolumeRef) -> None:
    chunks = drain(setup.registry.open_download(holey, 0, 0, 1), buffer_size=BLOCK)
    assert [(d, n) for d, n, _ in chunks] == [
        (False, 2 * BLOCK),
        (True, BLOCK),  # data is cut at the buffer size...
        (True, BLOCK),
        (False, 4 * BLOCK),
        (True, BLOCK),
        (False, 7 * BLOCK),  # ...and the trailing hole is reported, so the size is known
    ]
    assert content(chunks) == (setup.pool_dir / "holey").read_bytes()


def test_download_window(setup: PoolSetup, holey: VolumeRef) -> None:
    registry = setup.registry
    whole = (setup.pool_dir / "holey").read_bytes()
    start, length = 3 * BLOCK - 10, 6 * BLOCK
    chunks = drain(registry.open_download(holey, start, length, 1))
    assert [(d, n) for d, n, _ in chunks] == [
        (True, BLOCK + 10),
        (False, 4 * BLOCK),
        (True, BLOCK - 10),
    ]
    assert content(chunks) == whole[start : start + length]
    assert drain(registry.open_download(holey, 15 * BLOCK, 0, 1)) == [(False, BLOCK, b"")]
    assert drain(registry.open_download(holey, 16 * BLOCK, 0, 1)) == []
    assert drain(registry.open_download(holey, 99 * BLOCK, 5, 1)) == []
    assert content(drain(registry.open_download(holey, 10, 1 << 40, 1))) == whole[10:]


def test_plain_download_reads_holes_as_data(setup: PoolSetup, holey: VolumeRef) -> None:
    chunks = drain(setup.registry.open_download(holey, 0, 0), buffer_size=5 * BLOCK)
    assert [(d, n) for d, n, _ in chunks] == [(True, 5 * BLOCK)] * 3 + [(True, BLOCK)]
    assert content(chunks) == (setup.pool_dir / "holey").read_bytes()


def test_download_of_huge_sparse_volume(setup: PoolSetup) -> None:
    tib = 1 << 40
    sparse_file(setup.pool_dir / "huge", tib, [(MIB, b"x" * 3000), (tib - 1, b"y")])
    volume = setup.registry.lookup_volume_by_name(setup.ref, "huge")
    chunks = drain(setup.registry.open_download(volume, 0, 0, 1))
    assert [(d, n) for d, n, _ in chunks] == [
        (False, MIB),
        (True, BLOCK),
        (False, tib - MIB - 2 * BLOCK),
        (True, BLOCK),
    ]
    assert chunks[1][2] == b"x" * 3000 + bytes(BLOCK - 3000)
    assert chunks[3][2].endswith(b"y")


def test_reader_stops_when_file_shrinks(setup: PoolSetup) -> None:
    volume = setup.file("v", b"z" * 2 * BLOCK)
    reader = setup.registry.open_download(volume, 0, 0)
    os.truncate(setup.pool_dir / "v", BLOCK)
    buffer = bytearray(4 * BLOCK)
    assert reader.next_chunk(buffer) == Chunk(True, BLOCK)
    assert reader.next_chunk(buffer).eof
    assert reader.position == reader.end == BLOCK
    reader.close()
    reader.close()


def test_download_flags(setup: PoolSetup, holey: VolumeRef) -> None:
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x2) in function storageVolDownload"):
        setup.registry.open_download(holey, 0, 0, 2)
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x2) in function storageVolUpload"):
        setup.registry.open_upload(holey, 0, 0, 2)


def test_whole_upload_replaces_exactly(setup: PoolSetup) -> None:
    """Upload over a volume full of other bytes: the result is the stream, holes included,
    then the volume's bytes past the stream's end, at its old size."""
    registry = setup.registry
    path = setup.pool_dir / "v"
    path.write_bytes(b"\xee" * 32 * BLOCK)
    leave_a_hole(path, 2 * BLOCK, BLOCK)  # where the stream has a hole (not preallocated)
    os.chmod(path, 0o640)
    volume = registry.lookup_volume_by_name(setup.ref, "v")
    first, second = os.urandom(BLOCK + 7), os.urandom(3 * BLOCK)
    writer = registry.open_upload(volume, 0, 0, 1)
    writer.write(memoryview(first))
    writer.skip(3 * BLOCK - 7)
    writer.write(second)
    writer.skip(4 * BLOCK)
    assert writer.position == 11 * BLOCK
    # Nothing changes until commit, and the temporary file is not a volume.
    assert path.read_bytes() == b"\xee" * 2 * BLOCK + bytes(BLOCK) + b"\xee" * 29 * BLOCK
    assert registry.list_volume_names(setup.ref, 10) == ["v"]
    writer.commit()
    expected = first + bytes(3 * BLOCK - 7) + second + bytes(4 * BLOCK) + b"\xee" * 21 * BLOCK
    assert path.read_bytes() == expected
    assert allocated(path) == (5 + 21) * BLOCK  # the holes are real holes
    assert (path.stat().st_mode & 0o7777) == 0o640
    assert sorted(os.listdir(setup.pool_dir)) == ["v"]
    # Longer than before works too, and ending in data sets the size.
    with registry.open_upload(volume, 0, 0, 1) as writer:
        writer.skip(40 * BLOCK)
        writer.write(b"end")
        writer.commit()
    assert path.stat().st_size == 40 * BLOCK + 3
    assert allocated(path) == BLOCK


def test_whole_upload_gives_new_content_no_set_id_bits(setup: PoolSetup) -> None:
    # New content must not run with a volume's set-user-ID or set-group-ID: the bits were
    # given to other content, and the replacement may belong to another owner (the
    # daemon's user, where it cannot give the file back to the volume's).
    volume = setup.file("v", b"old")
    path = setup.pool_dir / "v"
    os.chmod(path, 0o6755)
    with setup.registry.open_upload(volume, 0, 0) as writer:
        writer.write(b"new")
        writer.commit()
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o7777 == 0o755


def test_an_uploads_refresh_event_is_told_once_the_replaced_file_is_let_go_of(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client reads the pool's sizes on the refresh event: told while the replaced
    file of a whole-volume upload was still open, its blocks were still counted as used
    (a preallocated volume's all of them). Each stream tells the event once."""
    volume = setup.volume("v", MIB, None)  # fully allocated
    seen: list[str] = []
    setup.registry.on_event = lambda ref, event: seen.append(f"{event.name} of {ref.name}")
    replace = volumes_module.VolumeDir.replace

    def noting_the_release(self: volumes_module.VolumeDir, *args: Any, **kwargs: Any) -> Any:
        release = replace(self, *args, **kwargs)
        assert release is not None

        def released() -> None:
            release()
            seen.append("released")

        return released

    monkeypatch.setattr(volumes_module.VolumeDir, "replace", noting_the_release)
    writer = setup.registry.open_upload(volume, 0, 0)
    writer.write(b"new")
    writer.commit()
    assert seen == []
    writer.release_replaced()
    writer.abort()  # as the stream's end does once more
    assert seen == ["released", f"{PoolEvent.REFRESHED.name} of default"]
    seen.clear()
    for offset, length, end in [(0, 0, "abort"), (4, 3, "commit"), (4, 3, "abort")]:
        with setup.registry.open_upload(volume, offset, length) as writer:
            writer.write(b"new")
            getattr(writer, end)()
        assert seen == [f"{PoolEvent.REFRESHED.name} of default"], (offset, end)
        seen.clear()


def test_an_upload_ending_while_a_volume_is_built_tells_no_refresh_event(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvirtd's refresh after an upload passes over a pool with a volume being built or
    cloned (an async job), and tells no event then."""
    volume = setup.file("v", b"old")
    seen: list[PoolEvent] = []
    setup.registry.on_event = lambda ref, event: seen.append(event)
    building, go = threading.Event(), threading.Event()
    create = volumes_module.VolumeDir.create

    def slow(self: volumes_module.VolumeDir, request: Any) -> None:
        building.set()
        assert go.wait(10)
        create(self, request)

    monkeypatch.setattr(volumes_module.VolumeDir, "create", slow)
    build = threading.Thread(target=setup.volume, args=("new", MIB))
    build.start()
    try:
        assert building.wait(10)
        for offset, length in [(0, 0), (0, 3)]:
            with setup.registry.open_upload(volume, offset, length) as writer:
                writer.write(b"new")
                writer.commit()
    finally:
        go.set()
        build.join(10)
    assert seen == []
    with setup.registry.open_upload(volume, 0, 0) as writer:
        writer.write(b"new")
        writer.commit()
    assert seen == [PoolEvent.REFRESHED]


ACCESS_ACL, DEFAULT_ACL = "system.posix_acl_access", "system.posix_acl_default"


def posix_acl(named_user: int, rights: int) -> bytes:
    """A POSIX ACL as the kernel stores it: owner rw-, ``named_user`` with ``rights``,
    owning group and others nothing, mask ``rights``."""
    anyone = 0xFFFFFFFF
    entries = [(0x01, 6, anyone), (0x02, rights, named_user), (0x04, 0, anyone)]
    entries += [(0x10, rights, anyone), (0x20, 0, anyone)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def test_whole_upload_keeps_the_volumes_access_acl(setup: PoolSetup) -> None:
    # libvirt writes in place, so a volume keeps the ACL that lets one user (a VM's) in
    # and keeps its group out. Group bits show an ACL's mask: copied without the ACL
    # they would let the owning group read and write the new content.
    volume = setup.file("v", b"old")
    path = setup.pool_dir / "v"
    os.chown(path, -1, 100)
    acl = posix_acl(1234, 6)
    os.setxattr(path, ACCESS_ACL, acl)
    with setup.registry.open_upload(volume, 0, 0) as writer:
        writer.write(b"new")
        writer.commit()
    assert path.read_bytes() == b"new"
    assert os.getxattr(path, ACCESS_ACL) == acl
    assert path.stat().st_mode & 0o777 == 0o660


def test_whole_upload_takes_no_acl_from_the_pool_directory(setup: PoolSetup) -> None:
    # A directory's default ACL is inherited by files made in it, the upload's
    # temporary among them; the volume it replaces had none and its new content has none.
    volume = setup.file("v", b"old")
    path = setup.pool_dir / "v"
    os.chmod(path, 0o640)
    os.setxattr(setup.pool_dir, DEFAULT_ACL, posix_acl(4321, 6))
    with setup.registry.open_upload(volume, 0, 0) as writer:
        writer.write(b"new")
        writer.commit()
    assert path.read_bytes() == b"new"
    assert ACCESS_ACL not in os.listxattr(path)
    assert path.stat().st_mode & 0o777 == 0o640


def attributes_of(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in os.listxattr(path)}


def test_whole_upload_keeps_the_volumes_extended_attributes(setup: PoolSetup) -> None:
    # libvirt writes in place, so a volume keeps what users and tools attached to it (a
    # backup tool's marks, notes).
    volume = setup.file("v", b"old")
    path = setup.pool_dir / "v"
    attributes = {"user.backup.id": b"2026-12-01T05:00", "user.note": b"\0any \xff bytes"}
    for name, value in attributes.items():
        os.setxattr(path, name, value)
    with setup.registry.open_upload(volume, 0, 0) as writer:
        writer.write(b"new")
        writer.commit()
    assert path.read_bytes() == b"new"
    assert attributes_of(path) == attributes


def test_whole_upload_keeps_what_changed_on_the_volume_while_it_ran(setup: PoolSetup) -> None:
    # An upload takes minutes; meanwhile a backup tool marks the volume, a user changes a
    # note, drops another and narrows the permissions. libvirtd's write in place keeps all
    # of that; so does the replacement, which takes them again just before its rename.
    volume = setup.file("v", b"old")
    path = setup.pool_dir / "v"
    os.setxattr(path, "user.note", b"first")
    os.setxattr(path, "user.gone", b"soon")
    path.chmod(0o640)
    with setup.registry.open_upload(volume, 0, 0) as writer:
        writer.write(b"new")
        os.setxattr(path, "user.backup.id", b"2026-12-01T06:00")
        os.setxattr(path, "user.note", b"second")
        os.removexattr(path, "user.gone")
        path.chmod(0o600)
        writer.commit()
    assert path.read_bytes() == b"new"
    assert attributes_of(path) == {"user.note": b"second", "user.backup.id": b"2026-12-01T06:00"}
    assert path.stat().st_mode & 0o777 == 0o600


def test_whole_upload_refused_at_its_end_for_an_attribute_set_meanwhile_it_cannot_keep(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A label given to the volume while the upload ran, which the daemon may not give:
    # the upload is refused at its end as it would have been at its start, the volume
    # keeps its content and attributes, and no temporary nor descriptor stays.
    volume = setup.file("v", b"old")
    path = setup.pool_dir / "v"
    before = len(os.listdir("/proc/self/fd"))
    writer = setup.registry.open_upload(volume, 0, 0)
    writer.write(b"new")
    os.setxattr(path, "user.label", b"vm-disk")
    refusing(monkeypatch, "setxattr", "user.label", errno.EPERM)
    reason = f"cannot keep extended attribute 'user.label' of '{path}': Operation not permitted"
    with fails(ErrorCode.SYSTEM_ERROR, reason, ErrorDomain.NONE):
        writer.commit()
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert attributes_of(path) == {"user.label": b"vm-disk"}
    assert os.listdir(setup.pool_dir) == ["v"]
    assert len(os.listdir("/proc/self/fd")) == before
    setup.registry.delete_volume(volume)  # not left busy


def test_whole_upload_refused_while_its_temporary_is_made_leaves_nothing_behind(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The permissions refused after the attributes were given: no temporary, nothing of
    # it kept by the pool (each refused upload would otherwise leave a little behind).
    from virtvol.daemon.storage import volumes as volumes_module

    volume = setup.file("v", b"old")
    os.setxattr(setup.pool_dir / "v", "user.note", b"kept")

    def refused(fd: int, existing: os.stat_result) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(volumes_module, "take_over", refused)
    with pytest.raises(OSError, match="Input/output error"):
        setup.registry.open_upload(volume, 0, 0)
    pool_files = setup.registry._pools["default"].opened_directory()
    assert pool_files._given == {}
    assert pool_files._temps == {}
    assert os.listdir(setup.pool_dir) == ["v"]


def refusing(monkeypatch: pytest.MonkeyPatch, call: str, attribute: str, refusal: int) -> None:
    """Make ``os.<call>`` fail for ``attribute`` as the kernel refuses it (``refusal``)."""
    real = getattr(os, call)

    def refused(path: int | str, name: str, *args: object) -> object:
        if name == attribute:
            raise OSError(refusal, os.strerror(refusal))
        return real(path, name, *args)

    monkeypatch.setattr(os, call, refused)


@pytest.mark.parametrize(
    ("call", "refusal", "message"),
    [
        # setting security.* takes CAP_SYS_ADMIN, or SELinux's relabel permission
        ("setxattr", errno.EPERM, "cannot keep extended attribute 'user.label' of '{path}'"),
        # reading a user.* attribute takes read permission on the file
        ("getxattr", errno.EACCES, "cannot read the extended attributes of '{path}'"),
    ],
    ids=["set", "read"],
)
def test_whole_upload_refused_for_an_attribute_it_cannot_keep(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch, call: str, refusal: int, message: str
) -> None:
    # A volume that would lose its SELinux label is one its VM may no longer open: the
    # upload is refused, the volume keeps its content and attributes, no temporary stays.
    volume = setup.file("v", b"old")
    path = setup.pool_dir / "v"
    os.setxattr(path, "user.kept", b"1")
    os.setxattr(path, "user.label", b"vm-disk")
    refusing(monkeypatch, call, "user.label", refusal)
    reason = f"{message.format(path=path)}: {os.strerror(refusal)}"
    with fails(ErrorCode.SYSTEM_ERROR, reason, ErrorDomain.NONE):
        setup.registry.open_upload(volume, 0, 0)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert attributes_of(path) == {"user.kept": b"1", "user.label": b"vm-disk"}
    assert os.listdir(setup.pool_dir) == ["v"]
    with setup.registry.open_upload(volume, 0, 0) as writer:  # the volume is not left busy
        writer.write(b"new")
        writer.commit()
    assert path.read_bytes() == b"new"


@contextlib.contextmanager
def unprivileged(directory: Path) -> Iterator[None]:
    """Run the body without root's power to write any file: as ``nobody`` for root,
    with ``directory`` writable and its parents searchable meanwhile."""
    if os.geteuid() != 0:
        yield
        return
    modes = {path: path.stat().st_mode for path in (directory, *directory.parents)}
    for path, mode in modes.items():
        path.chmod(mode | (0o777 if path == directory else 0o001))
    # The interpreter's own modules may lie where nobody cannot read (a Python under
    # /root): what the body imports on first use is imported now, as root.
    import ctypes  # noqa: F401 (the sparse engine's libc calls)

    groups, group = os.getgroups(), os.getegid()
    os.setgroups([])
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(group)
        os.setgroups(groups)
        for path, mode in modes.items():
            path.chmod(mode)


def test_whole_upload_refused_for_a_label_the_daemon_may_not_give(setup: PoolSetup) -> None:
    # The kernel's own refusal: a daemon without the privilege to label files may read a
    # volume's label (here Smack's: setting it takes CAP_SYS_ADMIN where no security
    # module claims it; on an SELinux host the SELinux label is refused alike) but not
    # give it to new content, so it refuses the upload and leaves the volume as it was.
    if os.geteuid() != 0:
        pytest.fail("labelling a volume takes root", pytrace=False)
    volume = setup.file("v", b"old")
    path = setup.pool_dir / "v"
    os.chown(path, 65534, 65534)
    os.setxattr(path, "security.SMACK64", b"vm-disk")
    refusal = (
        f"cannot keep extended attribute 'security.SMACK64' of '{path}': Operation not permitted"
    )
    with unprivileged(setup.pool_dir), fails(ErrorCode.SYSTEM_ERROR, refusal, ErrorDomain.NONE):
        setup.registry.open_upload(volume, 0, 0)
    assert path.read_bytes() == b"old"
    assert attributes_of(path) == {"security.SMACK64": b"vm-disk"}
    assert os.listdir(setup.pool_dir) == ["v"]


def test_upload_refused_for_a_volume_the_daemon_cannot_write(setup: PoolSetup) -> None:
    # libvirt writes an upload in place, so a volume it cannot open for writing (a
    # read-only golden image, another user's file) refuses it. A whole-volume upload
    # is a rename, which needs only the directory's permission: it must ask the same.
    volume = setup.file("golden", b"golden")
    path = setup.pool_dir / "golden"
    path.chmod(0o444)
    refusal = f"Unable to open stream for '{path}': Permission denied"
    with unprivileged(setup.pool_dir):
        for offset in (0, 1):
            with fails(ErrorCode.SYSTEM_ERROR, refusal, ErrorDomain.STREAMS):
                setup.registry.open_upload(volume, offset, 0)
        # Reading it is not writing it.
        with setup.registry.open_download(volume, 0, 0) as reader:
            assert reader.next_chunk(bytearray(64)).length == 6
    assert path.read_bytes() == b"golden"
    assert os.listdir(setup.pool_dir) == ["golden"]
    # The refusals left the volume free.
    path.chmod(0o644)
    with setup.registry.open_upload(volume, 0, 0) as writer:
        writer.write(b"new")
        writer.commit()
    assert path.read_bytes() == b"new" + b"golden"[3:]


def test_whole_upload_refused_for_a_volume_the_daemon_cannot_read(setup: PoolSetup) -> None:
    # The volume's bytes past the stream's end are read to be kept: a volume the daemon
    # may write but not read refuses a whole-volume upload up front, losing nothing.
    volume = setup.file("drop", b"dropbox")
    path = setup.pool_dir / "drop"
    path.chmod(0o222)
    refusal = f"Unable to open stream for '{path}': Permission denied"
    with unprivileged(setup.pool_dir):
        with fails(ErrorCode.SYSTEM_ERROR, refusal, ErrorDomain.STREAMS):
            setup.registry.open_upload(volume, 0, 0)
        assert os.listdir(setup.pool_dir) == ["drop"]
        # In place it needs no reading, as in libvirtd.
        with setup.registry.open_upload(volume, 0, 3) as writer:
            writer.write(b"new")
            writer.commit()
    assert path.read_bytes() == b"newpbox"


def test_whole_upload_of_nothing_keeps_the_volume(setup: PoolSetup) -> None:
    volume = setup.file("v", b"old")
    setup.registry.open_upload(volume, 0, 0).commit()
    assert (setup.pool_dir / "v").read_bytes() == b"old"


def test_whole_upload_abort_keeps_old_content(setup: PoolSetup) -> None:
    volume = setup.file("v", b"precious" * 1000)
    writer = setup.registry.open_upload(volume, 0, 0, 1)

    def interrupted() -> None:
        with writer:
            writer.write(b"half-baked")
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        interrupted()
    assert (setup.pool_dir / "v").read_bytes() == b"precious" * 1000
    assert os.listdir(setup.pool_dir) == ["v"]
    writer.abort()  # a second abort is harmless
    with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "upload stream is already finished"):
        writer.write(b"late")
    with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "upload stream is already finished"):
        writer.commit()
    setup.registry.delete_volume(volume)  # no longer busy


def test_upload_fsyncs_when_asked(setup: PoolSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    from virtvol.daemon.storage import StorageRegistry

    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    registry = StorageRegistry(setup.state_dir)
    registry.load()
    volume = setup.file("v", b"old")
    registry.open_upload(volume, 0, 0).commit()
    assert len(synced) == 1
    registry.open_upload(volume, 1, 0).commit()  # in-place uploads are not synced
    assert len(synced) == 1
    registry.close()


def open_files() -> set[str]:
    targets = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the descriptor listdir used
            targets.add(os.readlink(f"/proc/self/fd/{fd}"))
    return targets


def test_synced_upload_starts_writeback_and_releases_old_content_late(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from virtvol.daemon.storage import StorageRegistry
    from virtvol.sparse import files
    from virtvol.sparse import writer as sparse_writer

    started: list[tuple[int, int]] = []
    monkeypatch.setattr(sparse_writer, "WRITEBACK_START", 4096)
    monkeypatch.setattr(files, "start_writeback", lambda fd, at, n: started.append((at, n)))
    registry = StorageRegistry(setup.state_dir)
    registry.load()
    volume = setup.file("v", b"old")
    old_inode = os.stat(setup.pool_dir / "v").st_ino
    writer = registry.open_upload(volume, 0, 0)
    writer.write(b"\x01" * 10000)
    assert started == [(0, 10000)]
    writer.commit()
    assert (setup.pool_dir / "v").read_bytes() == b"\x01" * 10000
    # The replaced file is still referenced until release_replaced (then abort: a no-op).
    assert str(setup.pool_dir / "v (deleted)") in open_files()
    writer.release_replaced()
    writer.abort()
    assert old_inode != os.stat(setup.pool_dir / "v").st_ino
    assert str(setup.pool_dir / "v (deleted)") not in open_files()
    registry.close()


def test_failed_sync_keeps_old_content(setup: PoolSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    from virtvol.daemon.storage import StorageRegistry

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    registry = StorageRegistry(setup.state_dir)
    registry.load()
    volume = setup.file("v", b"old")
    writer = registry.open_upload(volume, 0, 0)
    writer.write(b"new")
    # The file system's failure names the volume, as libvirtd names it on a failed write.
    message = f"Unable to write {setup.pool_dir / 'v'}: Input/output error"
    with fails(ErrorCode.SYSTEM_ERROR, message, ErrorDomain.STREAMS):
        writer.commit()
    assert (setup.pool_dir / "v").read_bytes() == b"old"
    assert os.listdir(setup.pool_dir) == ["v"]
    registry.close()


def test_partial_upload_writes_in_place(setup: PoolSetup) -> None:
    path = setup.pool_dir / "v"
    path.write_bytes(b"\xee" * 16 * BLOCK)
    leave_a_hole(path, 4 * BLOCK, BLOCK)  # where the stream skips (not preallocated)
    volume = setup.registry.lookup_volume_by_name(setup.ref, "v")
    writer = setup.registry.open_upload(volume, 2 * BLOCK, 8 * BLOCK, 1)
    writer.write(b"A" * BLOCK)
    writer.skip(3 * BLOCK)  # old bytes there must read as zeros and be freed
    writer.write(b"B" * 10)
    no_space = "cannot write to stream: No space left on device"
    with fails(ErrorCode.SYSTEM_ERROR, no_space, ErrorDomain.STREAMS):
        writer.write(b"C" * 4 * BLOCK)  # beyond offset + length
    writer.skip(100 * BLOCK)  # clipped to the window
    writer.commit()
    expected = (
        b"\xee" * 2 * BLOCK
        + b"A" * BLOCK
        + bytes(3 * BLOCK)
        + b"B" * 10
        + bytes(4 * BLOCK - 10)
        + b"\xee" * 6 * BLOCK
    )
    assert path.read_bytes() == expected
    assert allocated(path) == 16 * BLOCK - 6 * BLOCK


def test_in_place_upload_extends_with_holes(setup: PoolSetup) -> None:
    path = setup.pool_dir / "v"
    path.write_bytes(b"x" * BLOCK)
    volume = setup.registry.lookup_volume_by_name(setup.ref, "v")
    writer = setup.registry.open_upload(volume, BLOCK // 2, 0, 1)
    writer.skip(4 * BLOCK)  # half inside the file (punched), the rest extends it
    writer.commit()
    assert path.read_bytes() == b"x" * (BLOCK // 2) + bytes(4 * BLOCK)
    writer = setup.registry.open_upload(volume, 0, 0)
    writer.abort()
    assert path.stat().st_size == 4 * BLOCK + BLOCK // 2


def test_in_place_upload_never_shortens_what_another_daemon_grew(
    setup: PoolSetup, tmp_path: Path
) -> None:
    # Two daemons may serve one directory. One's upload ends in a hole past the volume's
    # end, which it extends the volume over; meanwhile the other grew the volume and wrote
    # past that point: the extension must not cut the volume back and lose those bytes.
    path = setup.pool_dir / "v"
    path.write_bytes(b"x" * BLOCK)
    volume = setup.registry.lookup_volume_by_name(setup.ref, "v")
    writer = setup.registry.open_upload(volume, BLOCK // 2, 0, 1)
    writer.skip(4 * BLOCK)
    other = StorageRegistry(tmp_path / "other-state", sync_uploads=False)
    try:
        other_ref = other.ensure_pool("other", setup.pool_dir)
        other_volume = other.lookup_volume_by_name(other_ref, "v")
        other.resize_volume(other_volume, 64 * BLOCK)
        with other.open_upload(other_volume, 32 * BLOCK, 0, 1) as other_writer:
            other_writer.write(b"kept" * BLOCK)
            other_writer.commit()
    finally:
        other.close()
    writer.commit()
    content = path.read_bytes()
    assert len(content) == 64 * BLOCK
    assert content[: BLOCK // 2] == b"x" * (BLOCK // 2)
    assert content[BLOCK // 2 : 32 * BLOCK] == bytes(32 * BLOCK - BLOCK // 2)
    assert content[32 * BLOCK : 36 * BLOCK] == b"kept" * BLOCK


def test_upload_to_missing_or_inactive(setup: PoolSetup) -> None:
    ghost = VolumeRef("default", "ghost", "/k")
    with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + "name 'ghost'"):
        setup.registry.open_upload(ghost, 0, 0)
    volume = setup.volume("v", 1)
    setup.registry.destroy_pool(setup.ref)
    with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "storage pool 'default' is not active"):
        setup.registry.open_upload(volume, 0, 0)
    with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "storage pool 'default' is not active"):
        setup.registry.open_download(volume, 0, 0)


def test_reader_survives_whole_upload(setup: PoolSetup) -> None:
    volume = setup.file("v", b"old!" * BLOCK)
    reader = setup.registry.open_download(volume, 0, 0, 1)
    writer = setup.registry.open_upload(volume, 0, 0, 1)
    writer.write(b"new")
    writer.commit()
    assert content(drain(reader)) == b"old!" * BLOCK
    assert (setup.pool_dir / "v").read_bytes() == b"new" + (b"old!" * BLOCK)[3:]


@pytest.mark.parametrize("whole_volume", [True, False])
def test_zero_blocks_in_data_become_holes(setup: PoolSetup, whole_volume: bool) -> None:
    """A dense stream (zeros sent as data) over a volume full of other bytes still leaves
    exact bytes and a sparse volume: zero blocks are punched or skipped, never written."""
    size = 4 * MIB + 1234
    old = setup.file("dense", b"\xaa" * size)
    leave_a_hole(setup.pool_dir / "dense", 0, BLOCK)  # where the payload is zeros
    payload = bytearray(size)
    payload[MIB + 5 : MIB + 300005] = os.urandom(300000)
    payload[-1000:] = b"\x01" * 1000
    # length 0 is the atomic whole-volume path; an explicit length writes in place.
    length = 0 if whole_volume else size
    with setup.registry.open_upload(old, 0, length, 0) as writer:
        view = memoryview(payload)
        for start in range(0, size, 262120):  # libvirt's dense chunk: not block aligned
            writer.write(view[start : start + 262120])
        writer.commit()
    path = setup.pool_dir / "dense"
    assert path.read_bytes() == bytes(payload)
    assert allocated(path) < 600 * 1024


def test_durable_upload_leaves_the_new_volume_in_memory(setup: PoolSetup) -> None:
    """The upload is flushed to disk, but a download that follows reads memory, not the disk."""
    from virtvol.daemon.storage import StorageRegistry
    from virtvol.sparse.cache import resident_pages

    registry = StorageRegistry(setup.state_dir)  # sync_uploads is on by default
    registry.load()
    volume = setup.file("v", b"old")
    data = os.urandom(MIB)
    with registry.open_upload(volume, 0, 0) as writer:
        for _ in range(80):  # past a couple of writeback steps
            writer.write(data)
        writer.commit()
    fd = os.open(setup.pool_dir / "v", os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == 80 * MIB
        assert resident_pages(fd, 0, 80 * MIB).count(0) == 0
    finally:
        os.close(fd)
    registry.close()


def test_write_past_the_largest_offset_is_a_stream_error(setup: PoolSetup) -> None:
    volume = setup.file("big", b"")
    writer = setup.registry.open_upload(volume, 0, 0)
    with writer:
        writer._writer._pos = MAX_OFFSET - 2  # where only a file system without limits gets
        with fails(
            ErrorCode.SYSTEM_ERROR, "cannot write to stream: File too large", ErrorDomain.STREAMS
        ):
            writer.write(b"abcd")
        with fails(
            ErrorCode.SYSTEM_ERROR, "cannot write to stream: File too large", ErrorDomain.STREAMS
        ):
            writer.skip(4)


def _without_flock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[StorageRegistry, PoolRef]:
    """A registry on a file system whose flock fails (ENOLCK, as NFS without its lock
    daemon), with pool "p" holding volume "disk" (8 bytes "o")."""

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    registry = StorageRegistry(tmp_path / "state", sync_uploads=False)
    pool = registry.ensure_pool("p", tmp_path / "pool")
    (tmp_path / "pool" / "disk").write_bytes(b"o" * 8)
    return registry, pool


def test_a_refresh_on_a_file_system_without_flock_keeps_an_upload_being_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without flock a temporary's lock shows nothing: a refresh of the same daemon, which
    runs beside an upload being opened, must know the temporary is that upload's from
    the moment it exists (here the upload stops while its attributes are copied)."""

    registry, pool = _without_flock(tmp_path, monkeypatch)
    volume = registry.lookup_volume_by_name(pool, "disk")
    copying, go = threading.Event(), threading.Event()
    copy = volumes_module.VolumeDir._take_attributes

    def frozen(
        self: volumes_module.VolumeDir, name: str, fd: int, given: set[str] | None = None
    ) -> set[str]:
        copying.set()
        go.wait()
        return copy(self, name, fd, given)

    monkeypatch.setattr(volumes_module.VolumeDir, "_take_attributes", frozen)
    opened: list[VolumeWriter] = []
    upload = threading.Thread(target=lambda: opened.append(registry.open_upload(volume, 0, 0)))
    upload.start()
    assert copying.wait(10)
    registry.refresh_pool(pool)
    go.set()
    upload.join(10)
    opened[0].write(b"n" * 8)
    opened[0].commit()
    assert (tmp_path / "pool" / "disk").read_bytes() == b"n" * 8


def test_a_refresh_without_flock_keeps_an_upload_opened_after_a_restart_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh looks for leftovers after letting the registry's lock go, through a view
    of the directory it had. Destroyed and started again meanwhile, the pool opened the
    directory anew, and an upload reserved its temporary there: without flock the
    refresh must still see that reservation, or it removes the temporary and the upload
    fails at its end."""

    registry, pool = _without_flock(tmp_path, monkeypatch)
    looking, go = threading.Event(), threading.Event()
    remove = pool_module.remove_leftovers

    def after_a_pause(view: volumes_module.VolumeDir) -> None:
        if threading.current_thread() is refresh:  # not the start's own clean-up
            looking.set()
            assert go.wait(10)
        remove(view)

    monkeypatch.setattr(registry_module, "remove_leftovers", after_a_pause)
    refresh = threading.Thread(target=registry.refresh_pool, args=(pool,))
    refresh.start()
    assert looking.wait(10)
    registry.destroy_pool(pool)
    registry.start_pool(pool)
    upload = registry.open_upload(registry.lookup_volume_by_name(pool, "disk"), 0, 0)
    go.set()
    refresh.join(10)
    upload.write(b"n" * 8)
    upload.commit()
    assert (tmp_path / "pool" / "disk").read_bytes() == b"n" * 8


@contextlib.contextmanager
def _append_only(folder: Path) -> Iterator[None]:
    """``folder`` append-only (chattr +a): files may be made in it, none renamed or removed."""
    subprocess.run(["chattr", "+a", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-a", str(folder)], check=True)


@pytest.mark.skipif(
    os.geteuid() != 0, reason="an append-only folder (chattr +a) takes root to make"
)
def test_a_whole_upload_the_folder_refuses_to_rename_fails_with_the_renames_words(
    setup: PoolSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """An append-only pool folder (or a file system gone read-only) refuses the rename of
    a finished upload and the removal of its temporary alike: the client must hear why
    the volume was not replaced, not that the temporary could not be removed, and an
    abort must not fail for it either. The temporary left is logged, as a leftover is."""
    volume = setup.file("v", b"o" * 8)
    with _append_only(setup.pool_dir):
        whole = setup.registry.open_upload(volume, 0, 0)
        whole.write(b"n" * 8)
        with fails(
            ErrorCode.OPERATION_FAILED,
            "operation failed: cannot replace volume 'v': Operation not permitted",
        ):
            whole.commit()
        setup.registry.open_upload(volume, 0, 0).abort()
        in_place = setup.registry.open_upload(volume, 0, 8)  # the volume was let go
        in_place.write(b"i" * 8)
        in_place.commit()
    assert (setup.pool_dir / "v").read_bytes() == b"i" * 8
    assert caplog.text.count("kept upload temporary") == 2, caplog.text


@pytest.mark.parametrize("whole", [True, False])
def test_an_upload_whose_file_fails_to_close_ends_with_the_volume_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    """Closing the written file reports a write the file system could not make (NFS
    reports a failed write-back at close): the upload ends with that error, a whole one
    leaves the volume as it was, and the volume is free for the next upload, not left "in
    use" until the daemon restarts."""
    registry = StorageRegistry(tmp_path / "state", sync_uploads=False)
    pool = registry.ensure_pool("p", tmp_path / "pool")
    disk = tmp_path / "pool" / "disk"
    disk.write_bytes(b"o" * 8)
    volume = registry.lookup_volume_by_name(pool, "disk")
    writer = registry.open_upload(volume, 0, 0 if whole else 8)
    writer.write(b"n" * 8)
    written = writer._fd
    close = os.close

    def failing_close(fd: int) -> None:
        close(fd)
        if fd == written:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "close", failing_close)
    with pytest.raises(ErrorReport, match="Input/output error"):
        writer.commit()
    monkeypatch.undo()
    writer.abort()
    if whole:
        assert disk.read_bytes() == b"o" * 8
    assert os.listdir(tmp_path / "pool") == ["disk"]
    with registry.open_upload(volume, 0, 8) as again:
        again.write(b"A" * 8)
        again.commit()
    assert disk.read_bytes() == b"A" * 8
