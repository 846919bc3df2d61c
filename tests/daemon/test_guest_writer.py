"""A volume a running guest writes: QEMU holds its image with a lock on byte 101 (the
write permission's byte, ``RAW_LOCK_PERM_BASE`` + 1) through an open file description
(an OFD lock). A whole-volume upload renames a new file over the volume, which would
leave the guest writing into the old file, every write after the rename lost; libvirtd
writes the upload into the guest's file in place. The guest here is this test, holding
the volume open and locked as QEMU does."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_virsh, start_virtvold, stop_virtvold
from tests.daemon.conftest import while_written_in_place
from virtvol.daemon.storage import StorageRegistry
from virtvol.daemon.storage import registry as registry_module
from virtvol.daemon.storage import volumes as volumes_module
from virtvol.daemon.storage.backend import ChunkWriter
from virtvol.protocol.errors import ErrorReport

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import Virtvold
    from virtvol.daemon.storage.model import VolumeRef

_WRITE_PERMISSION_BYTE = 101


@contextlib.contextmanager
def guest_disk(path: Path) -> Iterator[int]:
    """``path`` open for reading and writing, locked as QEMU locks an image it writes."""
    fd = os.open(path, os.O_RDWR)
    try:
        lock = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, _WRITE_PERMISSION_BYTE, 1, 0)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
        yield fd
    finally:
        os.close(fd)


def _leftovers(pool: Path) -> list[str]:
    return [name for name in os.listdir(pool) if name.startswith(".virtvol-")]


def test_a_whole_upload_into_a_volume_a_guest_writes_is_refused(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    uri, pool = virtvold.tcp_uri, virtvold.pool_dir
    run_virsh(uri, "vol-create-as", virtvold.pool_name, "disk", "4096", "--allocation", "0")
    source = tmp_path / "new.img"
    source.write_bytes(b"n" * 4096)
    with guest_disk(pool / "disk") as disk:
        refused = run_virsh(uri, "vol-upload", "disk", str(source), virtvold.pool_name, check=False)
        os.pwrite(disk, b"guest", 0)
    assert refused.returncode == 1
    assert "Requested operation is not valid: volume 'disk' is still in use." in refused.stderr
    assert (pool / "disk").read_bytes() == b"guest" + bytes(4091)
    assert _leftovers(pool) == []
    # With a length it goes into the guest's file in place, as libvirtd writes it.
    with guest_disk(pool / "disk"):
        run_virsh(uri, "vol-upload", "disk", str(source), virtvold.pool_name, "--length", "4096")
    assert (pool / "disk").read_bytes() == b"n" * 4096


def test_a_guest_that_opens_the_volume_during_a_whole_upload_keeps_its_writes(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    uri, pool = virtvold.tcp_uri, virtvold.pool_dir
    volume = pool / "disk"
    run_virsh(uri, "vol-create-as", virtvold.pool_name, "disk", "4096", "--allocation", "0")
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    upload = subprocess.Popen(
        ["virsh", "-c", uri, "vol-upload", "disk", str(fifo), virtvold.pool_name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    try:
        with fifo.open("wb") as feed:
            deadline = time.monotonic() + 20
            while not _leftovers(pool):  # the upload's temporary is there: it runs
                assert time.monotonic() < deadline, "the upload never started"
                time.sleep(0.02)
            with guest_disk(volume) as disk:
                feed.write(b"n" * 4096)
                feed.close()
                output, _ = upload.communicate(timeout=30)
                os.pwrite(disk, b"guest", 0)
    finally:
        if upload.poll() is None:
            upload.kill()
            upload.wait()
    assert upload.returncode == 1, output
    assert "volume 'disk' is still in use." in output
    assert volume.read_bytes() == b"guest" + bytes(4091)
    assert _leftovers(pool) == []


def test_a_whole_upload_through_another_daemon_waits_for_a_write_in_place(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    """Two daemons serve one directory (a system and a session one): while one writes a
    volume in place (an upload with a length, held halfway by its FIFO), the other's
    whole-volume upload would rename a new file over it, and the rest of the first upload,
    reported done, would go into the replaced file."""
    uri, pool, half = virtvold.tcp_uri, virtvold.pool_dir, 1 << 20
    other = start_virtvold(tmp_path / "other", "--pool", f"shared={pool}")
    try:
        run_virsh(uri, "vol-create-as", virtvold.pool_name, "disk", str(2 * half))
        replacement = tmp_path / "replacement.img"
        replacement.write_bytes(b"r" * 2 * half)
        refused = while_written_in_place(
            uri,
            virtvold.pool_name,
            "disk",
            tmp_path / "feed",
            (pool / "disk").read_bytes,
            lambda: run_virsh(
                other.tcp_uri, "vol-upload", "disk", str(replacement), "shared", check=False
            ),
        )
    finally:
        stop_virtvold(other)
    assert refused.returncode == 1
    assert "Requested operation is not valid: volume 'disk' is still in use." in refused.stderr
    assert (pool / "disk").read_bytes() == b"n" * 2 * half
    assert _leftovers(pool) == []


_Seen = tuple[StorageRegistry, "VolumeRef"]


def _two_daemons_on(tmp_path: Path) -> tuple[_Seen, _Seen]:
    """Volume "disk" (8 bytes "o") of one directory as two daemons' registries see it."""
    refs: list[_Seen] = []
    for state in ("a", "b"):
        registry = StorageRegistry(tmp_path / state, sync_uploads=False)
        pool = registry.ensure_pool("p", tmp_path / "pool")
        (tmp_path / "pool" / "disk").write_bytes(b"o" * 8)
        refs.append((registry, registry.lookup_volume_by_name(pool, "disk")))
    return refs[0], refs[1]


def test_a_write_in_place_starting_in_a_whole_uploads_last_steps_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Daemon a's whole-volume upload takes the volume's metadata again (which waits on a
    frozen file system) before its rename; daemon b's write in place starts then."""
    (a, volume_a), (b, volume_b) = _two_daemons_on(tmp_path)
    taking, go = threading.Event(), threading.Event()
    take_changes = volumes_module.VolumeDir._take_changes

    def frozen(self: volumes_module.VolumeDir, name: str, fd: int, given: set[str]) -> None:
        taking.set()
        go.wait()
        take_changes(self, name, fd, given)

    monkeypatch.setattr(volumes_module.VolumeDir, "_take_changes", frozen)
    whole = a.open_upload(volume_a, 0, 0)
    whole.write(b"A" * 8)
    errors: list[BaseException] = []
    commit = threading.Thread(target=lambda: _collect(whole.commit, errors))
    commit.start()
    assert taking.wait(10)
    in_place = b.open_upload(volume_b, 0, 8)
    in_place.write(b"B" * 4)
    go.set()
    commit.join(10)
    in_place.write(b"B" * 4)
    in_place.commit()
    assert [str(e) for e in errors] == [
        "Requested operation is not valid: volume 'disk' is still in use."
    ]
    assert (tmp_path / "pool" / "disk").read_bytes() == b"B" * 8
    assert _leftovers(tmp_path / "pool") == []


@pytest.mark.parametrize("linked_elsewhere", [False, True])
def test_a_write_in_place_whose_file_was_replaced_before_it_marked_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked_elsewhere: bool
) -> None:
    """Daemon b opens the volume for a write in place; before it marks the file as
    written, daemon a's whole-volume upload renames its new file over it and lets go of
    its guard. Marked then, the file b holds is no volume any more: every byte b writes
    would be lost with a success reported. ``linked_elsewhere``: the replaced file keeps
    a link, as NFS keeps one (its client renames a file still open to ``.nfsXXXX``)."""
    (a, volume_a), (b, volume_b) = _two_daemons_on(tmp_path)
    opened, go = threading.Event(), threading.Event()
    mark = volumes_module.mark_as_written

    def late(fd: int) -> None:
        opened.set()
        assert go.wait(10)
        mark(fd)

    monkeypatch.setattr(volumes_module, "mark_as_written", late)
    results: list[object] = []
    errors: list[BaseException] = []

    def open_in_place() -> None:
        try:
            results.append(b.open_upload(volume_b, 0, 8))
        except ErrorReport as exc:
            errors.append(exc)

    in_place = threading.Thread(target=open_in_place)
    in_place.start()
    assert opened.wait(10)
    if linked_elsewhere:
        os.link(tmp_path / "pool" / "disk", tmp_path / "replaced")
    whole = a.open_upload(volume_a, 0, 0)
    whole.write(b"A" * 8)
    whole.commit()
    go.set()
    in_place.join(10)
    for writer in results:  # what b would write, had it been let in
        assert isinstance(writer, ChunkWriter)
        writer.apply([b"B" * 8])
        writer.commit()
    assert [str(e) for e in errors] == [
        "Requested operation is not valid: volume 'disk' is still in use."
    ]
    assert (tmp_path / "pool" / "disk").read_bytes() == b"A" * 8


@pytest.mark.parametrize("offset", [0, 4])
def test_a_write_in_place_done_during_a_whole_upload_is_not_lost(
    tmp_path: Path, offset: int
) -> None:
    """Daemon b writes the volume in place, and is done, while daemon a's whole-volume
    upload runs (into the bytes a's stream sent, or into the old end a keeps, copied
    already): a's look for writers in its last steps finds none. Renamed over the volume,
    a's file would lose b's acknowledged write (a wipe so done would find the old bytes
    back)."""
    (a, volume_a), (b, volume_b) = _two_daemons_on(tmp_path)
    whole = a.open_upload(volume_a, 0, 0)
    whole.apply([b"A" * 4])
    assert isinstance(whole, ChunkWriter)
    whole.keep_tail()  # the old end, as it is now, is in a's temporary
    time.sleep(0.05)  # past the granularity of the file's timestamps
    in_place = b.open_upload(volume_b, offset, 4)
    in_place.apply([b"B" * 4])
    in_place.commit()
    with pytest.raises(ErrorReport, match=r"volume 'disk' is still in use\."):
        whole.commit()
    expected = bytearray(b"o" * 8)
    expected[offset : offset + 4] = b"B" * 4
    assert (tmp_path / "pool" / "disk").read_bytes() == expected
    assert _leftovers(tmp_path / "pool") == []


def test_a_whole_upload_whose_first_look_at_the_volume_fails_leaves_nothing_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The volume's stat, taken once the upload's temporary is made, fails (EIO, a stale
    NFS handle): the files opened are closed, the temporary is removed and the volume is
    free for the next upload."""
    (a, volume_a), _ = _two_daemons_on(tmp_path)
    open_files = registry_module._open_upload_files
    fstat = os.fstat
    failing: list[int] = []

    def opened(*args: object, **kwargs: object) -> tuple[str | None, int, int | None]:
        temp, fd, keep = open_files(*args, **kwargs)  # type: ignore[arg-type]
        assert keep is not None
        failing.append(keep)
        return temp, fd, keep

    def stat_fails_once(fd: int) -> os.stat_result:
        if failing and fd == failing[0]:
            failing.clear()
            raise OSError(errno.EIO, "Input/output error")
        return fstat(fd)

    monkeypatch.setattr(registry_module, "_open_upload_files", opened)
    monkeypatch.setattr(os, "fstat", stat_fails_once)
    descriptors = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="Input/output error"):
        a.open_upload(volume_a, 0, 0)
    assert sorted(os.listdir("/proc/self/fd")) == descriptors
    assert _leftovers(tmp_path / "pool") == []
    monkeypatch.setattr(registry_module, "_open_upload_files", open_files)
    with a.open_upload(volume_a, 0, 0) as again:
        again.apply([b"A" * 8])
        again.commit()
    assert (tmp_path / "pool" / "disk").read_bytes() == b"A" * 8


def _collect(call: Callable[[], object], errors: list[BaseException]) -> None:
    try:
        call()
    except ErrorReport as exc:
        errors.append(exc)


@contextlib.contextmanager
def _whole_upload_in_its_last_steps(
    monkeypatch: pytest.MonkeyPatch, registry: StorageRegistry, volume: VolumeRef
) -> Iterator[None]:
    """A whole-volume upload of b"A" * 4 into ``volume`` through ``registry``, its commit
    held in another thread once it holds the volume against writers, before its rename:
    the body runs there; the commit then goes on and must succeed."""
    guarded, go = threading.Event(), threading.Event()
    keep_writers_out = volumes_module.VolumeDir._keep_writers_out
    holder: list[threading.Thread] = []

    def held_before_the_rename(
        self: volumes_module.VolumeDir, name: str, kept_from: os.stat_result | None = None
    ) -> int:
        guard = keep_writers_out(self, name, kept_from)
        if threading.current_thread() in holder:
            guarded.set()
            assert go.wait(10)
        return guard

    monkeypatch.setattr(volumes_module.VolumeDir, "_keep_writers_out", held_before_the_rename)
    upload = registry.open_upload(volume, 0, 0)
    upload.write(b"A" * 4)
    errors: list[BaseException] = []
    holder.append(threading.Thread(target=lambda: _collect(upload.commit, errors)))
    holder[0].start()
    try:
        assert guarded.wait(10)
        yield
    finally:
        go.set()
        holder[0].join(10)
    assert errors == []


@pytest.mark.parametrize("byte", [201, 1 << 62])
def test_a_write_in_place_is_refused_while_the_volume_is_held_against_writers(
    tmp_path: Path, byte: int
) -> None:
    """201: a QEMU that does not share writing (or a whole-volume upload's last steps);
    1 << 62: virtvold's own byte, held by another daemon's whole-volume upload then."""
    (a, volume), _ = _two_daemons_on(tmp_path)
    held = _locked(tmp_path / "pool" / "disk", byte)
    with held, pytest.raises(ErrorReport, match=r"volume 'disk' is still in use\."):
        a.open_upload(volume, 0, 8)
    writer = a.open_upload(volume, 0, 8)  # nothing held once refused
    writer.write(b"n" * 8)
    writer.commit()
    assert (tmp_path / "pool" / "disk").read_bytes() == b"n" * 8


def test_a_whole_upload_is_refused_while_a_guest_holds_write_unchanged(tmp_path: Path) -> None:
    (a, volume), _ = _two_daemons_on(tmp_path)
    held = _locked(tmp_path / "pool" / "disk", 102)
    with held, pytest.raises(ErrorReport, match=r"volume 'disk' is still in use\."):
        a.open_upload(volume, 0, 0)
    assert _leftovers(tmp_path / "pool") == []


@contextlib.contextmanager
def _locked(path: Path, byte: int) -> Iterator[None]:
    """``byte`` of ``path`` held, shared, by an open file description of another holder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        lock = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, byte, 1, 0)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
        yield
    finally:
        os.close(fd)


@pytest.mark.parametrize("created_again", [False, True])
def test_a_whole_upload_whose_volume_was_deleted_meanwhile_lands_in_no_volume(
    tmp_path: Path, created_again: bool
) -> None:
    """Daemon b deletes the volume daemon a's whole-volume upload is replacing (and, with
    ``created_again``, makes and writes a new volume of that name). a's rename would put
    its bytes in place of b's new volume, or bring the deleted one back; the upload is
    refused instead (as a volume changed meanwhile, or no longer there) and leaves nothing
    behind."""
    (a, volume_a), (b, volume_b) = _two_daemons_on(tmp_path)
    disk = tmp_path / "pool" / "disk"
    whole = a.open_upload(volume_a, 0, 0)
    whole.apply([b"A" * 8])
    b.delete_volume(volume_b)
    if created_again:
        pool_b = b.lookup_pool_by_name("p")
        b.create_volume_xml(pool_b, "<volume><name>disk</name><capacity>8</capacity></volume>")
        with b.open_upload(volume_b, 0, 8) as new:
            new.apply([b"N" * 8])
            new.commit()
    refusal = r"volume 'disk' is still in use\." if created_again else "no storage vol"
    with pytest.raises(ErrorReport, match=refusal):
        whole.commit()
    if created_again:
        assert disk.read_bytes() == b"N" * 8
    else:
        assert not disk.exists()
    assert _leftovers(tmp_path / "pool") == []


def _change(registry: StorageRegistry, volume: VolumeRef, change: str) -> None:
    """Daemon ``registry``'s wipe of ``volume``, its growth to 64 KiB, or its removal."""
    if change == "wipe":
        registry.wipe_volume(volume)
    elif change == "resize":
        registry.resize_volume(volume, 64 << 10)
    else:
        registry.delete_volume(volume)


@pytest.mark.parametrize("change", ["wipe", "resize", "delete"])
def test_a_wipe_resize_or_delete_in_a_whole_uploads_last_steps_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Daemon a's whole-volume upload has looked for writers and holds the volume against
    new ones; daemon b wipes, resizes or deletes the volume before a's rename. Done, b's
    change would go into the file the rename replaces, reported done: a wiped volume with
    its old end still readable (kept by a's upload), a resize undone, a deleted volume
    back."""
    (a, volume_a), (b, volume_b) = _two_daemons_on(tmp_path)
    with (
        _whole_upload_in_its_last_steps(monkeypatch, a, volume_a),
        pytest.raises(ErrorReport, match=r"volume 'disk' is still in use\."),
    ):
        _change(b, volume_b, change)
    assert (tmp_path / "pool" / "disk").read_bytes() == b"A" * 4 + b"o" * 4
    assert _leftovers(tmp_path / "pool") == []


@pytest.mark.parametrize("change", ["wipe", "resize"])
def test_a_wipe_or_resize_whose_file_was_replaced_after_it_was_opened_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Daemon b opens the volume to wipe or resize it; daemon a's whole-volume upload then
    renames its new file over it. b's change would go into the replaced file, reported
    done, and the volume would keep the old end a's upload kept."""
    (a, volume_a), (b, volume_b) = _two_daemons_on(tmp_path)
    opened, go = threading.Event(), threading.Event()
    open_in_place = volumes_module.VolumeDir.open_in_place
    changer: list[threading.Thread] = []

    def held_once_open(
        self: volumes_module.VolumeDir, name: str, flags: int, *, stream: bool = False
    ) -> int:
        fd = open_in_place(self, name, flags, stream=stream)
        if threading.current_thread() in changer:
            opened.set()
            assert go.wait(10)
        return fd

    monkeypatch.setattr(volumes_module.VolumeDir, "open_in_place", held_once_open)
    errors: list[BaseException] = []
    changer.append(
        threading.Thread(target=lambda: _collect(lambda: _change(b, volume_b, change), errors))
    )
    changer[0].start()
    try:
        assert opened.wait(10)
        whole = a.open_upload(volume_a, 0, 0)
        whole.write(b"A" * 4)
        whole.commit()
    finally:
        go.set()
        changer[0].join(10)
    assert [str(e) for e in errors] == [
        "Requested operation is not valid: volume 'disk' is still in use."
    ]
    assert (tmp_path / "pool" / "disk").read_bytes() == b"A" * 4 + b"o" * 4
    assert _leftovers(tmp_path / "pool") == []


@pytest.mark.parametrize("change", ["wipe", "resize", "delete"])
def test_a_wipe_resize_or_delete_goes_ahead_under_a_guest_that_does_not_share_writing(
    tmp_path: Path, change: str
) -> None:
    """As libvirtd's do: only an upload, which would lose the guest's writes or its own,
    is refused there."""
    (_, _), (b, volume) = _two_daemons_on(tmp_path)
    disk = tmp_path / "pool" / "disk"
    with _locked(disk, 201):
        _change(b, volume, change)
    expected = {"wipe": bytes(8), "resize": b"o" * 8 + bytes((64 << 10) - 8)}
    if change == "delete":
        assert not disk.exists()
    else:
        assert disk.read_bytes() == expected[change]


def test_two_daemons_whole_uploads_in_their_last_steps_together_lose_neither(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Daemon a's whole-volume upload holds the volume against writers before its rename;
    daemon b's, which opened the same volume, comes to its own last steps then. Both
    renamed, b's upload, reported done, would be gone under a's, and with it b's bytes a
    kept none of (a's old end is the old volume's). b's is refused instead."""
    (a, volume_a), (b, volume_b) = _two_daemons_on(tmp_path)
    upload_b = b.open_upload(volume_b, 0, 0)
    upload_b.write(b"B" * 8)
    with (
        _whole_upload_in_its_last_steps(monkeypatch, a, volume_a),
        pytest.raises(ErrorReport, match=r"volume 'disk' is still in use\."),
    ):
        upload_b.commit()
    assert (tmp_path / "pool" / "disk").read_bytes() == b"A" * 4 + b"o" * 4
    assert _leftovers(tmp_path / "pool") == []


@pytest.mark.parametrize("other", ["upload", "delete"])
def test_a_whole_upload_whose_volume_is_replaced_or_deleted_before_its_hold_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    """Daemon b's whole-volume upload has opened the volume for its last steps, but not yet
    held it against writers; daemon a's whole upload then renames its file over the volume
    and lets go of it (or a deletes the volume). b's holds, taken on the file it opened,
    find nobody: renamed, b's upload would drop a's, both reported done, or bring the
    deleted volume back."""
    (a, volume_a), (b, volume_b) = _two_daemons_on(tmp_path)
    opened, go = threading.Event(), threading.Event()
    hold = volumes_module._hold
    late: list[threading.Thread] = []

    def held_late(fd: int, byte: int) -> bool:
        if threading.current_thread() in late and not opened.is_set():
            opened.set()
            assert go.wait(10)
        return hold(fd, byte)

    monkeypatch.setattr(volumes_module, "_hold", held_late)
    upload_b = b.open_upload(volume_b, 0, 0)
    upload_b.write(b"B" * 8)
    errors: list[BaseException] = []
    late.append(threading.Thread(target=lambda: _collect(upload_b.commit, errors)))
    late[0].start()
    try:
        assert opened.wait(10)
        if other == "upload":
            upload_a = a.open_upload(volume_a, 0, 0)
            upload_a.write(b"A" * 4)
            upload_a.commit()
        else:
            a.delete_volume(volume_a)
    finally:
        go.set()
        late[0].join(10)
    disk = tmp_path / "pool" / "disk"
    if other == "upload":
        assert [str(e) for e in errors] == [
            "Requested operation is not valid: volume 'disk' is still in use."
        ]
        assert disk.read_bytes() == b"A" * 4 + b"o" * 4
    else:
        assert [str(e) for e in errors] == [
            "Storage volume not found: no storage vol with matching name 'disk'"
        ]
        assert not disk.exists()
    assert _leftovers(tmp_path / "pool") == []


def test_hard_links_meeting_in_a_whole_uploads_last_steps_are_refused_for_that_moment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Volume "twin" is a second hard link to "disk". Daemon a's whole-volume upload of "disk"
    holds the file in its last steps; daemon b's removal of "twin" looks at the file's
    locks, not at the name the upload replaces, so it is refused then, and goes through
    once the upload is done, which leaves "disk" with the upload's bytes."""
    (a, volume_a), (b, _) = _two_daemons_on(tmp_path)
    pool = tmp_path / "pool"
    os.link(pool / "disk", pool / "twin")
    twin = b.lookup_volume_by_name(b.lookup_pool_by_name("p"), "twin")
    with (
        _whole_upload_in_its_last_steps(monkeypatch, a, volume_a),
        pytest.raises(ErrorReport, match=r"volume 'twin' is still in use\."),
    ):
        b.delete_volume(twin)
    b.delete_volume(twin)
    assert sorted(os.listdir(pool)) == ["disk"]
    assert (pool / "disk").read_bytes() == b"A" * 4 + b"o" * 4


def test_a_removal_whose_volume_another_daemon_removed_meanwhile_finds_no_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Daemon b has opened the volume to mark it for its removal; daemon a removes it
    first. b's removal ends as it did before it marked anything, and as libvirtd's ends
    when the file is gone: no such volume, not a volume in use."""
    (a, volume_a), (b, volume_b) = _two_daemons_on(tmp_path)
    opened, go = threading.Event(), threading.Event()
    mark = volumes_module.mark_as_written
    late: list[threading.Thread] = []

    def marked_late(fd: int) -> None:
        if threading.current_thread() in late:
            opened.set()
            assert go.wait(10)
        mark(fd)

    monkeypatch.setattr(volumes_module, "mark_as_written", marked_late)
    errors: list[BaseException] = []
    late.append(
        threading.Thread(target=lambda: _collect(lambda: b.delete_volume(volume_b), errors))
    )
    late[0].start()
    try:
        assert opened.wait(10)
        a.delete_volume(volume_a)
    finally:
        go.set()
        late[0].join(10)
    assert [str(e) for e in errors] == [
        "Storage volume not found: no storage vol with matching name 'disk'"
    ]
    assert os.listdir(tmp_path / "pool") == []
