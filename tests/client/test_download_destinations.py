"""Where a download lands: the file the user named, as virsh would leave it, and nothing
more. Both engines (the command line's blocking one and the library's event loop) share
``download_output.download_target`` and ``sparse.writer.AtomicFile``; each is run here
against a scripted peer that sends a small volume.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.client.fake_peer import POOL, VOLUME, FakePeer
from tests.client.helpers import ENGINES, on_engine
from tests.client.test_cli import _serve_the_volume
from tests.client.test_direct_faults import send_whole_download
from tests.conftest import NOBODY, small_tmpfs
from virtvol.client import download_output
from virtvol.client.errors import SparseUnsupported, StreamError, UnsendableValue
from virtvol.client.objects import StorageVolume
from virtvol.protocol.connection import CallReceived, StreamAbortReceived
from virtvol.protocol.procedures import Proc
from virtvol.sparse import files
from virtvol.sparse.sequential import node_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from virtvol.client.connection import Connection
    from virtvol.client.transfer_base import Progress, TransferResult
    from virtvol.protocol.constants import ProtocolMode

CHUNK = bytes(range(1, 256)) * 16
FRAMES = 3
_VENV_VIRTVOL = Path(sys.executable).with_name("virtvol")


def download(
    engine: str,
    peer: FakePeer,
    path: Path | str,
    *,
    length: int = 0,
    progress: Progress | None = None,
) -> TransferResult:
    """Download the peer's volume into ``path`` over a connection of ``engine``."""

    async def move(conn: Connection) -> TransferResult:
        volume = StorageVolume.from_wire(conn, VOLUME)
        return await volume.download_file(path, length=length, progress=progress)

    return on_engine(engine, peer.uri, move, keepalive=None)


def serving_peer(folder: Path) -> FakePeer:
    peer = FakePeer(folder)
    peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(CHUNK, FRAMES)
    return peer


@pytest.mark.parametrize("engine", ENGINES)
def test_a_download_over_a_file_keeps_its_permissions(tmp_path: Path, engine: str) -> None:
    """virsh writes into an existing file, which keeps its mode: a private image must not
    become readable by everyone because a new copy of it was downloaded."""
    work = tmp_path / "work"
    work.mkdir()
    target = work / "private.img"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with serving_peer(tmp_path) as peer:
        download(engine, peer, target)
    assert target.read_bytes() == CHUNK * FRAMES
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


@pytest.mark.parametrize("engine", ENGINES)
def test_a_download_over_a_file_is_written_back_as_it_arrives(
    tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ext4 writes back a file renamed over another at the rename, all of it then, and
    the command waits: started as the data comes, the disk writes it while the rest
    arrives. A new file is left to the kernel's own writeback."""
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(files, "start_writeback", lambda fd, at, n: started.append((at, n)))
    size, chunk = 12 << 20, os.urandom(256 << 10)
    existing, new = tmp_path / "existing.raw", tmp_path / "new.raw"
    existing.write_bytes(b"old")
    for target in (new, existing):
        (tmp_path / target.stem).mkdir()  # a peer's socket each
        peer = FakePeer(tmp_path / target.stem)
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(chunk, size // len(chunk))
        with peer:
            download(engine, peer, target)
        assert target.read_bytes() == chunk * (size // len(chunk))
        if target == new:
            assert started == []
    # Started every 4 MiB of data, in order, from the start.
    assert started[0][0] == 0
    assert all(at + n == following for (at, n), (following, _) in itertools.pairwise(started))
    assert sum(n for _, n in started) >= 8 << 20


def test_an_output_that_fails_to_open_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary is made before its writer: a writer that cannot start (a file the
    kernel cannot describe) takes the temporary away with it."""

    def failing(fd: int, **options: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(download_output, "SparseWriter", failing)
    with pytest.raises(OSError, match="Input/output error"):
        download_output.DownloadOutput(
            download_output.download_target(tmp_path / "image.raw"), detect_zeroes=True
        )
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
@pytest.mark.parametrize("engine", ENGINES)
def test_a_download_over_another_users_file_leaves_it_theirs(tmp_path: Path, engine: str) -> None:
    """root downloading over a user's file (as virsh, writing into it) leaves it the user's."""
    work = tmp_path / "work"
    work.mkdir()
    target = work / "theirs.img"
    target.write_bytes(b"old")
    os.chown(target, 65534, 65534)
    target.chmod(0o600)
    with serving_peer(tmp_path) as peer:
        download(engine, peer, target)
    assert target.read_bytes() == CHUNK * FRAMES
    made = target.stat()
    assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (65534, 65534, 0o600)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_new_download_gets_the_usual_mode(tmp_path: Path, engine: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    previous = os.umask(0o027)
    try:
        with serving_peer(tmp_path) as peer:
            download(engine, peer, work / "new.img")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((work / "new.img").stat().st_mode) == 0o640


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("ending", ["/", "/."])
def test_a_path_naming_a_folder_that_does_not_exist_is_refused(
    tmp_path: Path, engine: str, ending: str
) -> None:
    """A path ending in "copy/" names a folder: virsh cannot create it; no file "copy"
    may appear instead."""
    work = tmp_path / "work"
    work.mkdir()
    with serving_peer(tmp_path) as peer, pytest.raises(IsADirectoryError):
        download(engine, peer, f"{work / 'copy'}{ending}")
    assert Proc.STORAGE_VOL_DOWNLOAD not in peer.calls
    assert os.listdir(work) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_a_file_name_as_long_as_the_file_system_takes_is_downloaded(
    tmp_path: Path, engine: str
) -> None:
    """The hidden temporary beside it must fit the file system's name limit too."""
    work = tmp_path / "work"
    work.mkdir()
    name = "é" * (os.pathconf(work, "PC_NAME_MAX") // 2)  # two bytes each in UTF-8
    with serving_peer(tmp_path) as peer:
        download(engine, peer, work / name)
    assert os.listdir(work) == [name]
    assert (work / name).read_bytes() == CHUNK * FRAMES


# -- a peer that sends more than was asked for ----------------------------------------------


def send_past_the_length(hole: int) -> Callable[[FakePeer, CallReceived], None]:
    """A download handler that sends ``hole`` bytes of hole (if any) after two frames of
    data, then a third frame and the end, whatever length was asked for."""

    def send(peer: FakePeer, event: CallReceived) -> None:
        parts = [peer.core.reply(event.serial)]
        parts += [b"".join(peer.core.send_data(event.serial, CHUNK)) for _ in range(2)]
        if hole:
            parts.append(peer.core.send_hole(event.serial, hole))
        parts.append(b"".join(peer.core.send_data(event.serial, CHUNK)))
        parts.append(peer.core.send_eof(event.serial))
        peer.send(b"".join(parts))

    return send


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("hole", [0, 1 << 40], ids=["data", "hole"])
def test_a_peer_that_sends_past_the_length_asked_for_fails_the_download(
    tmp_path: Path, engine: str, hole: int
) -> None:
    """The peer answers a download of 2 frames' length with more (data, or a hole of a
    TiB): nothing past the range asked for may reach the disk, and no file appears."""
    work = tmp_path / "work"
    work.mkdir()
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_past_the_length(hole)
        with pytest.raises(StreamError, match=f"more than the {2 * len(CHUNK)} bytes asked"):
            download(engine, peer, work / "copy.img", length=2 * len(CHUNK))
    assert os.listdir(work) == []
    assert any(isinstance(event, StreamAbortReceived) for event in peer.events)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_download_of_exactly_the_length_asked_for_succeeds(tmp_path: Path, engine: str) -> None:
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_past_the_length(0)
        result = download(engine, peer, tmp_path / "copy.img", length=3 * len(CHUNK))
    assert result.data_bytes == 3 * len(CHUNK)
    assert (tmp_path / "copy.img").read_bytes() == CHUNK * 3


# -- a file the user may not write ----------------------------------------------------------


def download_as_nobody(engine: str, peer: FakePeer, path: Path) -> TransferResult:
    """Download into ``path`` with ``nobody``'s file permissions (the connection is made
    as root: the peer's socket is in root's folder)."""

    async def move(conn: Connection) -> TransferResult:
        volume = StorageVolume.from_wire(conn, VOLUME)
        os.setegid(NOBODY)
        os.seteuid(NOBODY)
        try:
            return await volume.download_file(path)
        finally:
            os.seteuid(0)
            os.setegid(0)

    return on_engine(engine, peer.uri, move, keepalive=None)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("owner", [NOBODY, 0], ids=["read-only", "another-users"])
def test_a_download_over_a_file_the_user_may_not_write_is_refused(
    tmp_path: Path, nobodys_folder: Path, engine: str, owner: int
) -> None:
    """virsh opens the file to write it and is refused ("cannot create"); so is the
    command line. A rename needs only the folder's permission: the library replaced a
    read-only file, or another user's, which then became the downloader's."""
    target = nobodys_folder / "kept.img"
    target.write_bytes(b"old")
    os.chown(target, owner, owner)
    target.chmod(0o444 if owner == NOBODY else 0o644)
    with serving_peer(tmp_path) as peer, pytest.raises(PermissionError) as refused:
        download_as_nobody(engine, peer, target)
    assert refused.value.filename == str(target)
    assert Proc.STORAGE_VOL_DOWNLOAD not in peer.calls
    assert target.read_bytes() == b"old"
    assert (target.stat().st_uid, os.listdir(nobodys_folder)) == (owner, ["kept.img"])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("folder_mode", [0o755, 0o1777], ids=["read-only", "sticky"])
def test_a_file_that_cannot_be_replaced_is_written_in_place(
    tmp_path: Path, engine: str, folder_mode: int
) -> None:
    """A file the user may write in a folder where no file of theirs may take its place
    (root's, not writable to them, or sticky as /tmp): virsh writes into it; both engines
    refused the first before the stream and failed the second at the rename at its end.
    It is now written in place: the same file, its owner kept, nothing else left."""
    base = Path(tempfile.mkdtemp(prefix="virtvol-shared-", dir="/tmp"))  # nobody reaches it
    try:
        base.chmod(0o755)
        folder = base / "folder"
        folder.mkdir()
        folder.chmod(folder_mode)
        target = folder / "shared.img"
        target.write_bytes(b"old content, longer than nothing")
        target.chmod(0o666)
        before = target.stat()
        with serving_peer(tmp_path) as peer:
            download_as_nobody(engine, peer, target)
        assert target.read_bytes() == CHUNK * FRAMES
        after = target.stat()
        assert (after.st_ino, after.st_uid) == (before.st_ino, 0)
        assert os.listdir(folder) == ["shared.img"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_event_loop_truncates_a_file_written_in_place_off_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Truncating a file of many GB takes long: the library's engine opened and truncated
    a file written in place on the event loop's thread, which held every other task up.
    It is opened in the executor, as a FIFO or device is."""
    opened_on: list[threading.Thread] = []
    open_to_overwrite = download_output._open_to_overwrite

    def recording(target: download_output.DownloadTarget) -> int:
        opened_on.append(threading.current_thread())
        return open_to_overwrite(target)

    monkeypatch.setattr(download_output, "_open_to_overwrite", recording)
    base = Path(tempfile.mkdtemp(prefix="virtvol-shared-", dir="/tmp"))  # nobody reaches it
    try:
        base.chmod(0o755)
        folder = base / "folder"
        folder.mkdir()
        folder.chmod(0o1777)
        target = folder / "shared.img"
        target.write_bytes(b"old content")
        target.chmod(0o666)
        with serving_peer(tmp_path) as peer:
            download_as_nobody("event-loop", peer, target)
        assert target.read_bytes() == CHUNK * FRAMES
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert len(opened_on) == 1
    assert opened_on[0] is not threading.main_thread()


@pytest.mark.parametrize("swap", ["another-file", "another-owner"])
def test_a_file_to_write_in_place_swapped_before_its_opening_is_not_written(
    tmp_path: Path, swap: str
) -> None:
    """Between the look at a file to write in place and its opening, another may take
    its name (a new file), or one of another user's may come with the same inode number
    (a removed file's number is soon reused; played here by giving the file away): it is
    refused with ESTALE, and neither file is truncated."""
    target_path = tmp_path / "shared.img"
    target_path.write_bytes(b"looked at")
    found = os.stat(target_path)
    target = download_output.DownloadTarget(
        str(target_path),
        in_place=False,
        node=node_of(found),
        overwrite=True,
        owner=found.st_uid,
    )
    if swap == "another-file":
        target_path.rename(tmp_path / "moved.img")
        target_path.write_bytes(b"swapped in")
    else:
        os.chown(target_path, NOBODY, NOBODY)
    with pytest.raises(OSError, match="Stale file handle") as refused:
        download_output.DownloadOutput(target, detect_zeroes=True)
    assert refused.value.errno == errno.ESTALE
    assert target_path.read_bytes() == (b"swapped in" if swap == "another-file" else b"looked at")


# -- what happens around the file while it downloads ----------------------------------------


def once(action: Callable[[], None]) -> Progress:
    """A progress callback that runs ``action`` at its first call: while the stream runs,
    after the temporary was made and before it is renamed."""
    done: list[bool] = []

    def progress(data: int, holes: int) -> None:
        if not done:
            done.append(True)
            action()

    return progress


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("swap", ["symlink", "file"])
def test_a_file_swapped_in_during_a_download_does_not_give_it_away(
    tmp_path: Path, engine: str, swap: str
) -> None:
    """root downloads over its private image in a folder another user may write; that user
    swaps the image for a link to a file of theirs, or for such a file, while the stream
    runs. The download must not take that file's owner and mode (it did, just before the
    rename: the user could then read the volume), and nothing is written through the link:
    virsh, writing into the file it opened, leaves the other user's file alone too."""
    work = tmp_path / "work"
    work.mkdir()
    target = work / "private.img"
    target.write_bytes(b"old")
    target.chmod(0o600)
    theirs = tmp_path / "theirs"
    theirs.write_bytes(b"theirs")
    os.chown(theirs, 65534, 65534)
    theirs.chmod(0o644)

    def swap_it() -> None:
        if swap == "symlink":
            target.unlink()
            target.symlink_to(theirs)
        else:
            shutil.copy2(theirs, work / "planted")
            os.chown(work / "planted", 65534, 65534)
            os.replace(work / "planted", target)

    with serving_peer(tmp_path) as peer:
        download(engine, peer, target, progress=once(swap_it))
    made = target.lstat()
    assert (made.st_uid, made.st_gid, made.st_mode) == (0, 0, stat.S_IFREG | 0o600)
    assert target.read_bytes() == CHUNK * FRAMES
    assert theirs.read_bytes() == b"theirs"
    assert os.listdir(work) == ["private.img"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-a-file"])
def test_a_download_whose_folder_is_moved_meanwhile_lands_in_it(
    tmp_path: Path, engine: str, existing: bool
) -> None:
    """The folder is renamed while the stream runs (a user tidying up, a rotation). virsh
    writes into the file it opened, which moved with its folder; the download did its
    rename by the old path, failed, and left its hidden temporary in the moved folder."""
    work = tmp_path / "work"
    work.mkdir()
    if existing:
        (work / "copy.img").write_bytes(b"old")
    moved = tmp_path / "moved"
    with serving_peer(tmp_path) as peer:
        download(engine, peer, work / "copy.img", progress=once(lambda: os.rename(work, moved)))
    assert os.listdir(moved) == ["copy.img"]
    assert (moved / "copy.img").read_bytes() == CHUNK * FRAMES
    assert not work.exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_download_over_a_file_on_a_read_only_file_system_says_so(
    tmp_path: Path, engine: str
) -> None:
    """Refused before the stream opens, in the words virsh's open gets."""
    with small_tmpfs(tmp_path / "ro") as mount:
        (mount / "kept.img").write_bytes(b"old")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with (
            serving_peer(tmp_path) as peer,
            pytest.raises(OSError, match="Read-only file system") as refused,
        ):
            download(engine, peer, mount / "kept.img")
        assert (refused.value.errno, refused.value.filename) == (
            errno.EROFS,
            str(mount / "kept.img"),
        )
        assert Proc.STORAGE_VOL_DOWNLOAD not in peer.calls
        assert (mount / "kept.img").read_bytes() == b"old"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("source", ["same-file-system", "another-file-system"])
def test_a_download_over_a_file_mounted_there_writes_into_it(
    tmp_path: Path, engine: str, source: str
) -> None:
    """A file bind-mounted over the name (as containers get /etc/hosts, or a disk image
    from another file system) cannot be renamed over: the whole volume went by, then the
    rename failed (EBUSY) and the download was lost. virsh writes into the file; so does
    the download now, and the mount stays as it was, with nothing left beside it."""
    if os.geteuid() != 0:
        pytest.fail("mounting takes root", pytrace=False)
    work = tmp_path / "a folder"  # named in the mount table as "a\\040folder"
    work.mkdir()
    target = work / "disk.img"
    target.write_bytes(b"the file under the mount")
    with contextlib.ExitStack() as undo:
        if source == "another-file-system":
            other = tmp_path / "other"
            other.mkdir()
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other)], check=True
            )
            undo.callback(subprocess.run, ["umount", str(other)], check=True)
        else:
            other = tmp_path
        mounted = other / "mounted.img"
        mounted.write_bytes(b"old content of the mounted file")
        subprocess.run(["mount", "--bind", str(mounted), str(target)], check=True)
        undo.callback(subprocess.run, ["umount", str(target)], check=True)
        with serving_peer(tmp_path) as peer:
            download(engine, peer, target)
        assert target.read_bytes() == CHUNK * FRAMES
        assert target.stat().st_ino == mounted.stat().st_ino
        assert mounted.read_bytes() == CHUNK * FRAMES
        assert os.listdir(work) == ["disk.img"]
    assert target.read_bytes() == b"the file under the mount"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_file_under_a_mount_hidden_by_another_is_replaced_not_written_in_place(
    tmp_path: Path, engine: str
) -> None:
    """A file bound over "work/disk.img", then a file system mounted over "work" with a
    file of that name on it: the mount table still names "work/disk.img" as a mount
    point, but the file there now is the new file system's own, which a rename replaces.
    Taken for the hidden mount, it was written in place, and a download that failed
    midway left it cut short instead of as it was."""
    if os.geteuid() != 0:
        pytest.fail("mounting takes root", pytrace=False)
    work = tmp_path / "work"
    work.mkdir()
    target = work / "disk.img"
    target.write_bytes(b"the file under both mounts")
    hidden = tmp_path / "hidden.img"
    hidden.write_bytes(b"the file bound there first")
    with contextlib.ExitStack() as undo:
        subprocess.run(["mount", "--bind", str(hidden), str(target)], check=True)
        undo.callback(subprocess.run, ["umount", str(target)], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(work)], check=True)
        undo.callback(subprocess.run, ["umount", str(work)], check=True)
        target.write_bytes(b"kept: the file the name leads to now")
        with FakePeer(tmp_path) as peer:
            peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_past_the_length(0)
            with pytest.raises(StreamError):
                download(engine, peer, target, length=2 * len(CHUNK))
        assert target.read_bytes() == b"kept: the file the name leads to now"
        assert os.listdir(work) == ["disk.img"]
    assert hidden.read_bytes() == b"the file bound there first"


@contextlib.contextmanager
def append_only(path: Path) -> Iterator[None]:
    """``path`` (a file or folder) append-only for the block's time (``chattr +a``): a
    folder's names can be added, not removed or renamed; a file takes only appends."""
    subprocess.run(["chattr", "+a", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-a", str(path)], check=True)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-a-file"])
def test_a_download_into_an_append_only_folder_is_written_in_place(
    tmp_path: Path, engine: str, existing: bool
) -> None:
    """No name in an append-only folder (a log or backup folder) can be renamed or
    removed: the whole volume went by into a temporary, the rename was refused, and the
    temporary, which could not be removed either, stayed behind, as large as the volume.
    virsh writes the file in place, or makes it; so does the download now."""
    work = tmp_path / "work"
    work.mkdir()
    target = work / "copy.img"
    if existing:
        target.write_bytes(b"old content, longer than nothing")
    before = target.stat() if existing else None
    with append_only(work), serving_peer(tmp_path) as peer:
        download(engine, peer, target)
        assert target.read_bytes() == CHUNK * FRAMES
        assert os.listdir(work) == ["copy.img"]
    if before is not None:
        assert target.stat().st_ino == before.st_ino


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("arguments", "protocol", "refusal"),
    [
        ({"offset": -1}, "current", ValueError),
        ({"length": -1}, "current", ValueError),
        ({"offset": 1 << 64}, "current", UnsendableValue),
        ({"length": 1 << 64}, "current", UnsendableValue),
        ({"sparse": True}, "legacy", SparseUnsupported),
    ],
    ids=["negative-offset", "negative-length", "offset-2**64", "length-2**64", "legacy-sparse"],
)
def test_arguments_a_download_refuses_cost_no_file_written_in_place(
    tmp_path: Path,
    engine: str,
    arguments: dict[str, Any],
    protocol: ProtocolMode,
    refusal: type[Exception],
) -> None:
    """A file written in place (here: in an append-only folder) is truncated as it opens:
    arguments the stream would refuse are refused before, and the file keeps its bytes."""
    work = tmp_path / "work"
    work.mkdir()
    target = work / "copy.img"
    target.write_bytes(b"the only copy")

    async def move(conn: Connection) -> TransferResult:
        volume = StorageVolume.from_wire(conn, VOLUME)
        return await volume.download_file(target, **arguments)

    with append_only(work), serving_peer(tmp_path) as peer:
        with pytest.raises(refusal):
            on_engine(engine, peer.uri, move, keepalive=None, protocol=protocol)
        assert Proc.STORAGE_VOL_DOWNLOAD not in peer.calls
    assert target.read_bytes() == b"the only copy"
    assert os.listdir(work) == ["copy.img"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_download_over_an_append_only_file_is_refused_before_the_stream(
    tmp_path: Path, engine: str
) -> None:
    """An append-only file cannot be truncated, written over or renamed over: virsh's
    open is refused at once; the download moved the whole volume and then failed at the
    rename ("Operation not permitted")."""
    work = tmp_path / "work"
    work.mkdir()
    target = work / "log.img"
    target.write_bytes(b"kept")
    with (
        append_only(target),
        serving_peer(tmp_path) as peer,
        pytest.raises(PermissionError) as refused,
    ):
        download(engine, peer, target)
    assert (refused.value.errno, refused.value.filename) == (errno.EPERM, str(target))
    assert Proc.STORAGE_VOL_DOWNLOAD not in peer.calls
    assert target.read_bytes() == b"kept"
    assert os.listdir(work) == ["log.img"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_download_into_a_file_no_name_leads_to_fills_it(tmp_path: Path, engine: str) -> None:
    """A program that captures the command's stdout in a nameless file (Python's
    ``tempfile.TemporaryFile``, an O_TMPFILE) and asks for ``/dev/stdout``: that link
    leads to "/tmp/#12345 (deleted)", a name no file has. The download made a new file of
    that name beside it and left the captured one empty, status 0. virsh writes into
    the file itself; so does the download now (through ``/proc/self/fd/N`` here)."""
    work = tmp_path / "work"
    work.mkdir()
    captured = os.open(work, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        os.write(captured, b"what was there before")
        with serving_peer(tmp_path) as peer:
            download(engine, peer, f"/proc/self/fd/{captured}")
        assert os.pread(captured, 1 << 20, 0) == CHUNK * FRAMES
    finally:
        os.close(captured)
    assert os.listdir(work) == []


def test_vol_download_to_dev_stdout_captured_in_a_nameless_file_fills_it(
    tmp_path: Path,
) -> None:
    """The command line as such a program runs it, next to virsh: both write the volume
    into the captured file. virsh's blank line then overwrites its first byte (stdout's
    descriptor still stood at the start); virtvol's goes nowhere, so the file holds
    exactly the volume, as a file replaced by a download does."""
    captured = {}
    for client in ("virsh", "virtvol"):
        folder = tmp_path / client
        folder.mkdir()
        with (
            serving_peer(folder) as peer,
            tempfile.TemporaryFile(dir=folder) as out,
        ):
            _serve_the_volume(peer)
            program = "virsh" if client == "virsh" else str(_VENV_VIRTVOL)
            arguments = ["vol-download", VOLUME.name, "/dev/stdout", "--pool", POOL]
            done = subprocess.run(
                [program, "-c", peer.uri, *arguments],
                stdout=out,
                stderr=subprocess.PIPE,
                check=False,
                timeout=60,
            )
            out.seek(0)
            captured[client] = (done.returncode, out.read(), sorted(os.listdir(folder)))
    volume = CHUNK * FRAMES
    assert captured["virsh"] == (0, b"\n" + volume[1:], ["peer-sock"])
    assert captured["virtvol"] == (0, volume, ["peer-sock"])


def test_main_gives_stdout_back_after_a_download_into_its_own_file(tmp_path: Path) -> None:
    """``main`` runs one command and returns. Where the download filled stdout's own file
    in place, /dev/null stood in for stdout so that the blank line after the command did
    not land in the file; it stayed there once ``main`` had returned, and whatever the
    caller wrote to stdout after went nowhere."""
    script = (
        "import os, sys; from virtvol.client.cli import main; before = os.fstat(1);"
        " status = main(sys.argv[1:]);"
        " sys.stderr.write(f'\\n{status} {os.path.samestat(os.fstat(1), before)}')"
    )
    arguments = ["vol-download", VOLUME.name, "/dev/stdout", "--pool", POOL]
    with serving_peer(tmp_path) as peer, tempfile.TemporaryFile(dir=tmp_path) as out:
        _serve_the_volume(peer)
        done = subprocess.run(
            [sys.executable, "-c", script, "-c", peer.uri, *arguments],
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
            timeout=60,
        )
        out.seek(0)
        # stderr: the summary, then what the caller saw as ``main`` returned
        said = done.stderr.splitlines()[-1]
        assert (done.returncode, said, out.read()) == (0, b"0 True", CHUNK * FRAMES)


def test_vol_download_to_dev_stdout_caught_with_stderr_in_one_nameless_file_fills_it(
    tmp_path: Path,
) -> None:
    """A program that catches stdout and stderr in one unlinked file (``stderr=STDOUT``)
    and asks for ``/dev/stdout``: the summary line said on stderr after the download went
    where stderr's descriptor stood, the file's start, over the volume's first bytes."""
    arguments = ["vol-download", VOLUME.name, "/dev/stdout", "--pool", POOL]
    with serving_peer(tmp_path) as peer, tempfile.TemporaryFile(dir=tmp_path) as out:
        _serve_the_volume(peer)
        done = subprocess.run(
            [str(_VENV_VIRTVOL), "-c", peer.uri, *arguments],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=60,
        )
        out.seek(0)
        assert (done.returncode, out.read()) == (0, CHUNK * FRAMES)


@pytest.mark.parametrize("stderr_too", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_vol_download_into_stdouts_own_file_without_a_descriptor_to_spare(
    tmp_path: Path, stderr_too: bool
) -> None:
    """A download into stdout's own file (caught in a nameless file) sets stdout, and
    stderr where it shares the file, aside once the volume is in: under a low ``ulimit
    -n`` that copy failed with a traceback after the volume was written. Now each limit
    from the lowest one Python starts under either fails cleanly, before any byte of the
    volume moves (a clear error, status 1, the file holding no more than what the command
    said), or succeeds; the first fails."""
    arguments = ["vol-download", VOLUME.name, "/dev/stdout", "--pool", POOL]
    outcomes = []
    for limit in itertools.count(5):
        folder = tmp_path / str(limit)
        folder.mkdir()

        def lower_the_limit(limit: int = limit) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with serving_peer(folder) as peer, tempfile.TemporaryFile(dir=folder) as out:
            _serve_the_volume(peer)
            done = subprocess.run(
                [str(_VENV_VIRTVOL), "-c", peer.uri, *arguments],
                stdout=out,
                stderr=out if stderr_too else subprocess.PIPE,
                check=False,
                timeout=60,
                preexec_fn=lower_the_limit,
            )
            out.seek(0)
            written = out.read()
        said = (written if stderr_too else done.stderr).decode(errors="replace")
        assert "Traceback" not in said, said
        assert os.listdir(folder) == ["peer-sock"]  # no temporary left
        outcomes.append(done.returncode)
        if done.returncode == 0:
            break
        assert done.returncode == 1
        assert "error: cannot create /dev/stdout\n" in said
        assert written.strip(b"\n").startswith(b"error: ") or written == b"\n"
    assert outcomes[0] == 1
    assert written == CHUNK * FRAMES
