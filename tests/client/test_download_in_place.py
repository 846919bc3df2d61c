"""Downloads into a FIFO, /dev/stdout, /dev/null or a block device: written in place as
the bytes arrive, holes as zeros, as virsh writes them; a reader that goes away or stalls,
and a cancelled download, end cleanly. The library on both engines against virtvold;
the command line next to virsh against a real libvirtd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

import pytest

from tests.client.fake_peer import VOLUME, FakePeer, stream_error
from tests.client.helpers import ENGINES, MIB, on_engine, write_sparse_image
from tests.client.test_direct_faults import send_whole_download
from tests.conftest import reference_libvirtd_with, run_virsh, start_virtvold, stop_virtvold
from virtvol.client import (
    LibvirtError,
    StorageVolume,
    connect,
    download_output,
)
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd, Virtvold
    from virtvol.client.connection import Connection
    from virtvol.client.transfer_base import Progress, TransferResult
    from virtvol.protocol.connection import CallReceived

pytestmark = pytest.mark.interop

SIZE = 8 * MIB
# The command line as users run it: ``run`` ends the process without a final flush of a
# stdout whose reader went away.
_COMMAND = [sys.executable, "-c", "from virtvol.client.cli import run; run()"]


class FifoReader:
    """A thread reading a FIFO: all of it, or ``stop_after`` bytes before closing it; it
    waits before each read while ``paused`` is clear."""

    def __init__(self, path: Path, *, stop_after: int | None = None) -> None:
        self.path = path
        self.stop_after = stop_after
        self.data = bytearray()
        self.paused = threading.Event()
        self.paused.set()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb", buffering=0) as fifo:
            while self.stop_after is None or len(self.data) < self.stop_after:
                self.paused.wait()
                want = 1 << 16 if self.stop_after is None else self.stop_after - len(self.data)
                piece = fifo.read(want)
                if not piece:
                    return
                self.data += piece

    def result(self) -> bytes:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return bytes(self.data)


def make_fifo(folder: Path, name: str = "fifo") -> Path:
    path = folder / name
    os.mkfifo(path)
    return path


def download(
    engine: str,
    uri: str,
    target: str | Path,
    *,
    progress: Progress | None = None,
    **options: int | bool | None,
) -> TransferResult:
    """Download volume "v.img" of pool "default" into ``target`` on ``engine``."""

    async def move(conn: Connection) -> TransferResult:
        pool = await conn.lookup_pool_by_name("default")
        volume = await pool.lookup_volume("v.img")
        result = await volume.download_file(target, progress=progress, **options)  # type: ignore[arg-type]
        await volume.info()  # the connection is still of use
        return result

    return on_engine(engine, uri, move)


def download_from_peer(engine: str, peer: FakePeer, target: Path) -> TransferResult:
    """Download the scripted peer's volume into ``target`` on ``engine``."""

    async def move(conn: Connection) -> TransferResult:
        return await StorageVolume.from_wire(conn, VOLUME).download_file(target)

    return on_engine(engine, peer.uri, move, keepalive=None)


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    """A folder of its own for the FIFOs (virtvold's files sit in tmp_path)."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture
def sparse_volume(virtvold: Virtvold) -> bytes:
    """Volume "v.img": data islands, holes, written zeros and a trailing hole."""
    return write_sparse_image(virtvold.pool_dir / "v.img", SIZE)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("sparse", [None, False])
def test_a_download_fills_a_fifo_as_it_is_read(
    virtvold: Virtvold, sparse_volume: bytes, downloads: Path, engine: str, sparse: bool | None
) -> None:
    fifo = make_fifo(downloads)
    reader = FifoReader(fifo)
    result = download(engine, virtvold.tcp_uri, fifo, sparse=sparse)
    assert reader.result() == sparse_volume  # holes arrive as zeros
    assert result.total_bytes == SIZE
    assert (result.sparse, result.hole_bytes > 0) == (sparse is None, sparse is None)
    assert result.zero_bytes == 0  # nothing is left as a hole in a FIFO
    assert os.listdir(downloads) == ["fifo"]  # no temporary beside it


@pytest.mark.parametrize("engine", ENGINES)
def test_a_download_into_dev_null_succeeds(
    virtvold: Virtvold, sparse_volume: bytes, engine: str
) -> None:
    result = download(engine, virtvold.tcp_uri, "/dev/null")
    assert result.total_bytes == SIZE


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fifo_whose_reader_goes_away_fails_the_download_with_a_broken_pipe(
    virtvold: Virtvold, sparse_volume: bytes, downloads: Path, engine: str
) -> None:
    fifo = make_fifo(downloads)
    reader = FifoReader(fifo, stop_after=10)
    with pytest.raises(BrokenPipeError):
        download(engine, virtvold.tcp_uri, fifo)
    assert reader.result() == sparse_volume[:10]
    assert os.listdir(downloads) == ["fifo"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_slow_reader_holds_the_download_back(
    virtvold: Virtvold, downloads: Path, engine: str
) -> None:
    """While the reader pauses, the download stops taking the volume: what it took is
    bounded by a few batches, not the volume's 64 MiB."""
    volume = os.urandom(64 * MIB)
    (virtvold.pool_dir / "v.img").write_bytes(volume)
    fifo = make_fifo(downloads)
    reader = FifoReader(fifo)
    reader.paused.clear()
    taken = [0]

    def progress(data: int, holes: int) -> None:
        taken[0] = data + holes

    def release_the_reader() -> None:
        time.sleep(1.5)
        taken_while_paused.append(taken[0])
        reader.paused.set()

    taken_while_paused: list[int] = []
    threading.Thread(target=release_the_reader, daemon=True).start()
    result = download(engine, virtvold.tcp_uri, fifo, progress=progress)
    assert reader.result() == volume
    assert result.total_bytes == len(volume)
    assert taken_while_paused[0] <= 32 * MIB, taken_while_paused


async def test_a_cancelled_download_does_not_wait_for_a_fifo(
    virtvold: Virtvold, sparse_volume: bytes, downloads: Path
) -> None:
    """Cancelled while waiting for a FIFO's reader to come, and while its reader stalls,
    the download ends at once."""
    async with connect(virtvold.tcp_uri) as conn:
        volume = await (await conn.lookup_pool_by_name("default")).lookup_volume("v.img")
        nobody_reads = make_fifo(downloads, "unread")
        stalled = make_fifo(downloads, "stalled")
        never_read = os.open(stalled, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read
        try:
            for fifo in (nobody_reads, stalled):
                task = asyncio.ensure_future(volume.download_file(fifo))
                await asyncio.sleep(0.5)
                assert not task.done()
                task.cancel()
                started = time.monotonic()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert time.monotonic() - started < 2
        finally:
            os.close(never_read)
        assert (await volume.info()).capacity == SIZE
    assert sorted(os.listdir(downloads)) == ["stalled", "unread"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("swap", ["symlink", "file"])
def test_a_fifo_swapped_for_a_file_while_its_reader_is_awaited_is_not_written(
    tmp_path: Path, downloads: Path, engine: str, swap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download waits for the FIFO's reader, opening its path again every step; the
    FIFO is replaced meanwhile (by whoever may write its folder) with a link to the
    user's file, or with a file. The next open took that file, and the volume was written
    over its start in place, through the link. The node opened must be the one looked at:
    anything else is refused before the stream opens."""
    fifo = make_fifo(downloads)
    precious = tmp_path / "precious"
    precious.write_bytes(b"precious" * 1000)
    looked_at = download_output.download_target

    def then_swapped(path: str | os.PathLike[str]) -> download_output.DownloadTarget:
        target = looked_at(path)
        fifo.unlink()
        if swap == "symlink":
            fifo.symlink_to(precious)
        else:
            fifo.write_bytes(b"theirs" * 1000)
        return target

    monkeypatch.setattr(download_output, "download_target", then_swapped)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(b"volume" * 1000, 3)
        with pytest.raises(OSError, match="no longer the FIFO or device") as refused:
            download_from_peer(engine, peer, fifo)
    assert refused.value.filename == str(fifo)
    assert Proc.STORAGE_VOL_DOWNLOAD not in peer.calls
    assert precious.read_bytes() == b"precious" * 1000
    if swap == "file":
        assert fifo.read_bytes() == b"theirs" * 1000


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stream_error_midway_fails_a_download_into_a_fifo(tmp_path: Path, engine: str) -> None:
    """The bytes before the error went to the reader; the peer's error is raised and the
    FIFO is closed, so the reader sees its end."""
    sent = b"abc" * 1000

    def send_then_fail(peer: FakePeer, event: CallReceived) -> None:
        parts = [peer.core.reply(event.serial), *peer.core.send_data(event.serial, sent)]
        parts.append(peer.core.send_stream_error(event.serial, stream_error("disk on fire")))
        peer.send(b"".join(parts))

    folder = tmp_path / "downloads"
    folder.mkdir()
    fifo = make_fifo(folder)
    reader = FifoReader(fifo)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_then_fail
        with pytest.raises(LibvirtError, match="disk on fire"):
            download_from_peer(engine, peer, fifo)
    assert reader.result() == sent
    assert os.listdir(folder) == ["fifo"]


@contextlib.contextmanager
def loop_device(size: int) -> Iterator[str]:
    """A block device of ``size`` bytes, every byte 0xFF."""
    backing = f"/tmp/virtvol-loop-{os.getpid()}-{time.monotonic_ns()}.img"
    with open(backing, "wb") as file:
        file.write(b"\xff" * size)
    try:
        made = subprocess.run(
            ["losetup", "--find", "--show", backing], capture_output=True, text=True, check=False
        )
        if made.returncode != 0:
            pytest.fail(f"no loop device: {made.stderr}", pytrace=False)
        device = made.stdout.strip()
        try:
            yield device
        finally:
            subprocess.run(["losetup", "--detach", device], check=False)
    finally:
        os.unlink(backing)


def read_device(device: str) -> bytes:
    with open(device, "rb") as file:
        return file.read()


@pytest.mark.parametrize("engine", ENGINES)
def test_a_download_into_a_block_device_writes_holes_as_zeros(
    virtvold: Virtvold, sparse_volume: bytes, engine: str
) -> None:
    """From the device's start, a range of the volume too; the bytes past it stay."""
    with loop_device(SIZE + MIB) as device:
        download(engine, virtvold.tcp_uri, device)
        assert read_device(device) == sparse_volume + b"\xff" * MIB
    with loop_device(SIZE) as device:
        download(engine, virtvold.tcp_uri, device, offset=MIB, length=3 * MIB)
        assert read_device(device) == sparse_volume[MIB : 4 * MIB] + b"\xff" * (SIZE - 3 * MIB)


# -- the command line, next to virsh ----------------------------------------------------


@pytest.fixture
def libvirtd_volume(reference_libvirtd: ReferenceLibvirtd, tmp_path: Path) -> bytes:
    """Volume "v.img" on the real libvirtd, uploaded from a sparse image."""
    source = tmp_path / "source.img"
    image = write_sparse_image(source, SIZE)
    uri = reference_libvirtd.tcp_uri
    run_virsh(uri, "vol-create-as", "default", "v.img", str(SIZE), "--allocation", "0")
    run_virsh(uri, "vol-upload", "v.img", str(source), "--pool", "default")
    source.unlink()
    return image


def run_binary(
    argv: list[str], *, sigpipe_ignored: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` in the C locale, stdout and stderr captured as bytes; with
    ``sigpipe_ignored``, as a shell that ignores SIGPIPE starts it (Python itself does)."""
    if sigpipe_ignored:
        argv = ["bash", "-c", 'trap "" PIPE; exec "$@"', "ignoring", *argv]
    return subprocess.run(
        argv,
        capture_output=True,
        env=dict(os.environ, LC_ALL="C"),
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def virsh_and_virtvol(uri: str, *args: str) -> tuple[list[str], list[str]]:
    return ["virsh", "-c", uri, *args], [*_COMMAND, "-c", uri, *args]


@pytest.mark.parametrize("options", [[], ["--sparse"]])
def test_vol_download_to_dev_stdout_writes_the_volume_into_the_pipe(
    reference_libvirtd: ReferenceLibvirtd, libvirtd_volume: bytes, options: list[str]
) -> None:
    uri = reference_libvirtd.tcp_uri
    for quiet in ([], ["-q"]):
        theirs, ours = virsh_and_virtvol(
            uri, *quiet, "vol-download", "v.img", "/dev/stdout", "--pool", "default", *options
        )
        virsh, virtvol = run_binary(theirs), run_binary(ours)
        # virsh's blank line after the command goes the same way, unless quiet.
        expected = libvirtd_volume + (b"" if quiet else b"\n")
        assert (virsh.stdout == expected, virsh.returncode) == (True, 0)
        assert (virtvol.stdout == expected, virtvol.returncode) == (True, 0), virtvol.stderr
        # The summary line goes to stderr, off the data.
        assert virtvol.stderr.startswith(b"" if quiet else b"downloaded ")


def test_vol_download_into_a_fifo_and_dev_null_as_virsh(
    reference_libvirtd: ReferenceLibvirtd, libvirtd_volume: bytes, tmp_path: Path
) -> None:
    uri = reference_libvirtd.tcp_uri
    fifo = make_fifo(tmp_path)
    for argv in virsh_and_virtvol(uri, "vol-download", "v.img", str(fifo), "--pool", "default"):
        reader = FifoReader(fifo)
        done = run_binary(argv)
        assert reader.result() == libvirtd_volume
        assert (done.stdout, done.returncode) == (b"\n", 0), done.stderr
    for argv in virsh_and_virtvol(uri, "vol-download", "v.img", "/dev/null", "--pool", "default"):
        done = run_binary(argv)
        assert (done.stdout, done.returncode) == (b"\n", 0), done.stderr
    assert os.listdir(tmp_path) == ["fifo"]


def test_a_fifo_reader_that_goes_away_fails_vol_download_in_virshs_words(
    reference_libvirtd: ReferenceLibvirtd, libvirtd_volume: bytes, tmp_path: Path
) -> None:
    """virsh started with SIGPIPE ignored, as virtvol runs (a shell's default kills virsh
    silently instead): both say the receive failed with a broken pipe."""
    uri = reference_libvirtd.tcp_uri
    fifo = make_fifo(tmp_path)
    answers = []
    for argv in virsh_and_virtvol(uri, "vol-download", "v.img", str(fifo), "--pool", "default"):
        reader = FifoReader(fifo, stop_after=10)
        done = run_binary(argv, sigpipe_ignored=True)
        assert reader.result() == libvirtd_volume[:10]
        answers.append((done.stdout, done.stderr.decode(), done.returncode))
    expected = (
        b"\n",
        "error: cannot receive data from volume v.img\nerror: recv handler failed: Broken pipe\n",
        1,
    )
    assert answers == [expected, expected]
    assert os.listdir(tmp_path) == ["fifo"]


def test_a_dev_stdout_reader_that_goes_away_fails_vol_download_in_virshs_words(
    reference_libvirtd: ReferenceLibvirtd, libvirtd_volume: bytes
) -> None:
    uri = reference_libvirtd.tcp_uri
    answers = []
    for argv in virsh_and_virtvol(uri, "vol-download", "v.img", "/dev/stdout", "--pool", "default"):
        command = ["bash", "-c", 'trap "" PIPE; exec "$@"', "ignoring", *argv]
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, LC_ALL="C"),
        ) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            assert process.stdout.read(10) == libvirtd_volume[:10]
            process.stdout.close()  # the reader goes away
            answers.append((process.stderr.read().decode(), process.wait(timeout=60)))
    expected = (
        "error: cannot receive data from volume v.img\nerror: recv handler failed: Broken pipe\n",
        1,
    )
    assert answers == [expected, expected]


def test_ctrl_c_ends_a_vol_download_into_a_stalled_fifo(
    reference_libvirtd: ReferenceLibvirtd, libvirtd_volume: bytes, tmp_path: Path
) -> None:
    """virsh dies of the signal; virtvol ends as it does for any Ctrl-C (status 130), at
    once and without a traceback, whether it waits for a reader or for room."""
    uri = reference_libvirtd.tcp_uri
    unread = make_fifo(tmp_path, "unread")
    stalled = make_fifo(tmp_path, "stalled")
    with (
        open(os.open(stalled, os.O_RDONLY | os.O_NONBLOCK), "rb"),  # opened, never read
        contextlib.ExitStack() as stack,
    ):
        # None of the four downloads can move on, so they wait side by side.
        downloads: list[tuple[list[str], int, subprocess.Popen[bytes]]] = []
        for fifo in (unread, stalled):
            for argv, status in zip(
                virsh_and_virtvol(uri, "vol-download", "v.img", str(fifo), "--pool", "default"),
                (-signal.SIGINT, 130),
                strict=True,
            ):
                process = stack.enter_context(
                    subprocess.Popen(
                        argv,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        stdin=subprocess.DEVNULL,
                        env=dict(os.environ, LC_ALL="C"),
                    )
                )
                stack.callback(process.kill)  # a failed test leaves none of them waiting
                downloads.append((argv, status, process))
        time.sleep(1.5)
        for argv, _, process in downloads:
            assert process.poll() is None, argv
            process.send_signal(signal.SIGINT)
        for argv, status, process in downloads:
            _, err = process.communicate(timeout=10)
            assert (err, process.returncode) == (b"", status), argv
    assert sorted(os.listdir(tmp_path)) == ["stalled", "unread"]


# libvirtd drops a client it has heard nothing from for interval * (count + 1) seconds:
# 2 s here, 30 s with libvirt's defaults. A stall of twice that would see a client that
# stays silent dropped halfway through.
KEEPALIVE_TOLERANCE = 2
STALL = 2 * KEEPALIVE_TOLERANCE


@pytest.fixture
def impatient_libvirtd() -> Iterator[ReferenceLibvirtd]:
    """A reference libvirtd that drops a silent client after ``KEEPALIVE_TOLERANCE`` s."""
    yield from reference_libvirtd_with(settings=["keepalive_interval = 1", "keepalive_count = 1"])


@pytest.fixture
def impatient_volume(impatient_libvirtd: ReferenceLibvirtd, tmp_path: Path) -> bytes:
    """Volume "v.img" of 64 MiB on ``impatient_libvirtd``: far more than the socket
    buffers and the FIFO hold, so a stalled reader holds the download back."""
    volume = os.urandom(64 * MIB)
    source = tmp_path / "source.img"
    source.write_bytes(volume)
    uri = impatient_libvirtd.tcp_uri
    run_virsh(uri, "vol-create-as", "default", "v.img", str(len(volume)))
    run_virsh(uri, "vol-upload", "v.img", str(source), "--pool", "default")
    source.unlink()
    return volume


def stalled_reader(fifo: Path) -> FifoReader:
    """A reader of ``fifo`` that stalls ``STALL`` seconds before it reads."""
    reader = FifoReader(fifo)
    reader.paused.clear()  # before its thread gets past opening the FIFO

    def stall() -> None:
        time.sleep(STALL)
        reader.paused.set()

    threading.Thread(target=stall, daemon=True).start()
    return reader


def assert_download_outlasts_a_stalled_reader(
    engine: str, uri: str, volume: bytes, downloads: Path
) -> None:
    """While the download waits for room in the FIFO it reads nothing, and the daemon
    hears nothing from it but the client's unasked keepalive PONGs, which tell it the
    client is alive: the whole volume arrives once the reader reads again."""
    fifo = make_fifo(downloads)
    reader = stalled_reader(fifo)
    started = time.monotonic()
    result = download(engine, uri, fifo)
    assert time.monotonic() - started > STALL  # the reader did hold it back
    assert reader.result() == volume
    assert result.total_bytes == len(volume)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_reader_stalled_past_libvirtds_keepalive_keeps_the_download(
    impatient_libvirtd: ReferenceLibvirtd, impatient_volume: bytes, downloads: Path, engine: str
) -> None:
    assert_download_outlasts_a_stalled_reader(
        engine, impatient_libvirtd.tcp_uri, impatient_volume, downloads
    )


def test_vol_download_into_a_fifo_stalled_past_libvirtds_keepalive(
    impatient_libvirtd: ReferenceLibvirtd, impatient_volume: bytes, downloads: Path
) -> None:
    fifo = make_fifo(downloads)
    reader = stalled_reader(fifo)
    _, ours = virsh_and_virtvol(
        impatient_libvirtd.tcp_uri, "vol-download", "v.img", str(fifo), "--pool", "default"
    )
    done = run_binary(ours)
    assert (done.stdout, done.returncode) == (b"\n", 0), done.stderr
    assert reader.result() == impatient_volume


@pytest.mark.parametrize("engine", ENGINES)
def test_a_reader_that_comes_after_libvirtds_keepalive_gets_the_download(
    impatient_libvirtd: ReferenceLibvirtd, impatient_volume: bytes, downloads: Path, engine: str
) -> None:
    """The download waits for the FIFO's reader before it opens the stream; the
    connection stays of use meanwhile."""
    fifo = make_fifo(downloads)
    readers: list[FifoReader] = []
    threading.Timer(STALL, lambda: readers.append(FifoReader(fifo))).start()
    result = download(engine, impatient_libvirtd.tcp_uri, fifo)
    assert readers[0].result() == impatient_volume
    assert result.total_bytes == len(impatient_volume)


@pytest.fixture
def impatient_virtvold(tmp_path: Path) -> Iterator[Virtvold]:
    """virtvold with libvirtd's keepalive settings of ``impatient_libvirtd``: it also
    drops a client that takes nothing of its output and sends nothing for 2 s."""
    config = tmp_path / "virtvold.toml"
    config.write_text("keepalive_interval = 1\nkeepalive_count = 1\n")
    daemon = start_virtvold(tmp_path / "virtvold", "--config", str(config))
    try:
        yield daemon
    finally:
        stop_virtvold(daemon)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "size", [64 * MIB, 12 * MIB], ids=["stalled-midway", "stalled-after-the-end"]
)
def test_a_reader_stalled_past_virtvolds_keepalive_keeps_the_download(
    impatient_virtvold: Virtvold, downloads: Path, engine: str, size: int
) -> None:
    """64 MiB: the reader stalls while the daemon still sends data. 12 MiB: the daemon
    has queued all of it, and the end of the stream, before the client took much."""
    volume = os.urandom(size)
    (impatient_virtvold.pool_dir / "v.img").write_bytes(volume)
    assert_download_outlasts_a_stalled_reader(engine, impatient_virtvold.tcp_uri, volume, downloads)
