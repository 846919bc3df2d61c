"""A stream's file is closed only after the worker thread is out of it, however the stream ends.

The upload and download handlers are driven here without a socket: a fake
connection, a real registry, and a writer (or reader) whose worker-thread
call blocks on a ``threading.Event`` so the test decides when it returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_virsh, start_virtvold, stop_virtvold
from tests.daemon.fake_sink import FakeSink
from virtvol.daemon.connection import OUTPUT_HIGH_WATER, ClientConnection
from virtvol.daemon.context import DaemonContext
from virtvol.daemon.download import BUFFERS_PER_CONNECTION, FRAME_SIZE, Download
from virtvol.daemon.fileworker import FileWorker
from virtvol.daemon.sendbuffers import SendBuffers
from virtvol.daemon.storage import Chunk, StorageRegistry, VolumeReader, VolumeRef, VolumeWriter
from virtvol.daemon.streamio import TransferStats
from virtvol.daemon.upload import Upload
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    CallReceived,
    Connection,
    ErrorReplyReceived,
    ReplyReceived,
    Side,
    StreamEndReceived,
    StreamSkipRefused,
)
from virtvol.protocol.constants import (
    REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.errors import ErrorReport
from virtvol.protocol.frames import FrameReader, Header, encode_frame
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterable


MIB = 1 << 20


class Gate:
    """Holds a worker thread inside a call until the test opens it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.events: list[str] = []

    def hold(self, what: str) -> None:
        self.entered.set()
        assert self.opened.wait(30), "the test never let the worker go"
        self.events.append(f"{what} returned")

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30)


class BlockingWriter(VolumeWriter):
    """A volume writer whose ``apply`` (a batch of writes) blocks in the worker until the
    gate opens."""

    gate: Gate

    def apply(self, items: Iterable[memoryview | bytes | bytearray | int]) -> None:
        self.gate.hold("write")
        super().apply(items)


class BlockingReader(VolumeReader):
    """A volume reader whose ``next_chunk`` blocks in the worker until the gate opens."""

    gate: Gate

    def next_chunk(self, buffer: memoryview | bytearray) -> Chunk:
        self.gate.hold("read")
        return super().next_chunk(buffer)


@dataclass
class Pool:
    registry: StorageRegistry
    directory: Path
    executor: concurrent.futures.ThreadPoolExecutor

    def volume(self, name: str, content: bytes) -> VolumeRef:
        (self.directory / name).write_bytes(content)
        return self.registry.lookup_volume_by_name(self.registry.lookup_pool_by_name("p"), name)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    registry = StorageRegistry(tmp_path / "state", sync_uploads=False)
    registry.ensure_pool("p", tmp_path / "pool")
    executor = concurrent.futures.ThreadPoolExecutor(2)
    try:
        yield Pool(registry, tmp_path / "pool", executor)
    finally:
        executor.shutdown(wait=True)
        registry.close()


def _stats(direction: str) -> TransferStats:
    return TransferStats(direction, "p/vol", "test", False, 0, 0)


def blocking_writer(pool: Pool, volume: VolumeRef, gate: Gate) -> BlockingWriter:
    """Open a real upload of ``volume`` and make it a BlockingWriter (same state)."""
    writer = pool.registry.open_upload(volume, 0, 0)
    writer.__class__ = BlockingWriter
    assert isinstance(writer, BlockingWriter)
    writer.gate = gate
    return writer


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _temps(pool: Pool) -> list[str]:
    return [name for name in os.listdir(pool.directory) if name.startswith(".")]


async def _until_free(pool: Pool, volume: VolumeRef) -> None:
    """Wait until the volume takes another upload: a stream dropped without a worker job
    running is released in a worker thread soon after."""
    for _ in range(500):
        try:
            pool.registry.open_upload(volume, 0, 0).abort()
        except ErrorReport:
            await asyncio.sleep(0.01)
        else:
            return
    pool.registry.open_upload(volume, 0, 0).abort()  # still "in use": fails the test


async def _cancel_while_blocked(
    task: asyncio.Task[None], gate: Gate, still_open: Callable[[], bool]
) -> None:
    """Cancel ``task`` while its worker is held; the file must stay open until it returns."""
    await gate.wait_entered()
    task.cancel()
    try:
        await asyncio.sleep(0.1)  # plenty of time for a cleanup that does not wait
        assert still_open(), "the file was released while the worker was still in it"
        assert gate.events == []
    finally:
        gate.opened.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_upload_cancelled_mid_write_closes_after_the_worker(pool: Pool) -> None:
    old = os.urandom(MIB)
    volume = pool.volume("vol", old)
    gate = Gate()
    writer = blocking_writer(pool, volume, gate)
    fd = writer._fd
    closed_at: list[list[str]] = []
    real_abort = writer.abort

    def abort() -> None:
        closed_at.append(list(gate.events))
        real_abort()

    writer.abort = abort  # type: ignore[method-assign]
    upload = Upload(FakeSink(), 1, writer, executor=pool.executor, stats=_stats("upload"))
    task = asyncio.create_task(upload.run())
    upload.data_received(memoryview(b"\x01" * 65536))

    await _cancel_while_blocked(task, gate, lambda: fd_is_open(fd) and not closed_at)

    assert closed_at == [["write returned"]]  # released once, after the write
    assert (pool.directory / "vol").read_bytes() == old  # aborted: old content kept
    assert _temps(pool) == []
    # The volume is free again: another upload may start.
    pool.registry.open_upload(volume, 0, 0).abort()


async def test_upload_cancelled_before_its_first_step_is_released(pool: Pool) -> None:
    volume = pool.volume("vol", b"old")
    writer = pool.registry.open_upload(volume, 0, 0)
    upload = Upload(FakeSink(), 1, writer, executor=pool.executor, stats=_stats("upload"))
    # What the connection does when it goes: close the stream, cancel its task.
    task = asyncio.create_task(upload.run())
    task.cancel()
    upload.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until_free(pool, volume)
    assert _temps(pool) == []


async def test_an_idle_upload_dropped_with_its_connection_is_released_off_the_loop(
    pool: Pool,
) -> None:
    """A client gone in the middle of a large upload leaves a large temporary, whose
    removal frees its blocks and page cache (0.5 s for 2 GiB): run on the event loop, as
    it was when no write was in a worker, it held up every other client meanwhile."""
    volume = pool.volume("vol", b"old")
    writer = pool.registry.open_upload(volume, 0, 0)
    loop_thread = threading.current_thread()
    aborted_in: list[threading.Thread] = []
    real_abort = writer.abort

    def abort() -> None:
        aborted_in.append(threading.current_thread())
        real_abort()

    writer.abort = abort  # type: ignore[method-assign]
    upload = Upload(FakeSink(), 1, writer, executor=pool.executor, stats=_stats("upload"))
    task = asyncio.create_task(upload.run())
    upload.data_received(memoryview(b"\x01" * 65536))
    for _ in range(500):  # until the data is in the temporary
        await asyncio.sleep(0.01)
        if [(pool.directory / name).stat().st_size for name in _temps(pool)] == [65536]:
            break
    for _ in range(500):  # and the worker is out of it: the task waits for more
        if upload._file._jobs == 0:
            break
        await asyncio.sleep(0.01)
    assert upload._file._jobs == 0  # else the release would run in the job's thread anyway
    # What the connection does when it goes: cancel the stream's task, close the stream.
    task.cancel()
    upload.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(500):
        if aborted_in:
            break
        await asyncio.sleep(0.01)
    assert aborted_in
    assert aborted_in[0] is not loop_thread
    assert aborted_in == aborted_in[:1]  # once
    await _until_free(pool, volume)
    assert _temps(pool) == []
    assert (pool.directory / "vol").read_bytes() == b"old"


async def test_download_cancelled_mid_read_closes_after_the_worker(pool: Pool) -> None:
    volume = pool.volume("vol", os.urandom(MIB))
    gate = Gate()
    reader = pool.registry.open_download(volume, 0, 0, 1)
    reader.__class__ = BlockingReader
    assert isinstance(reader, BlockingReader)
    reader.gate = gate
    fd = reader.fileno()
    closed_at: list[list[str]] = []
    real_close = reader.close

    def close() -> None:
        closed_at.append(list(gate.events))
        real_close()

    reader.close = close  # type: ignore[method-assign]
    buffers = SendBuffers(BUFFERS_PER_CONNECTION, FRAME_SIZE)
    download = Download(
        FakeSink(),
        1,
        reader,
        sparse=True,
        executor=pool.executor,
        stats=_stats("download"),
        buffers=buffers,
    )
    task = asyncio.create_task(download.run())

    await _cancel_while_blocked(task, gate, lambda: fd_is_open(fd) and not closed_at)

    # Released once, after the worker's job returned (one job reads several chunks).
    assert len(closed_at) == 1
    assert closed_at[0] == gate.events
    assert gate.events
    assert set(gate.events) == {"read returned"}
    # The buffer the read was filling is free again, but only after the read returned
    # (the release hands it back to the loop).
    await asyncio.sleep(0)
    assert all(buffers.try_take() is not None for _ in range(BUFFERS_PER_CONNECTION))


async def test_file_worker_release_waits_for_the_running_job(pool: Pool) -> None:
    gate = Gate()
    released = threading.Event()
    worker = FileWorker(pool.executor, released.set)
    job = asyncio.create_task(worker.run(lambda: gate.hold("job")))
    await gate.wait_entered()
    job.cancel()
    worker.close()
    worker.close()  # twice is harmless
    await asyncio.sleep(0.05)
    assert not released.is_set()
    gate.opened.set()
    await worker.wait_closed()
    assert released.is_set()
    assert gate.events == ["job returned"]
    with pytest.raises(asyncio.CancelledError):
        await job


async def test_file_worker_release_queued_behind_busy_workers_runs_at_shutdown() -> None:
    """An idle worker's release waits in the executor's queue like any job: the daemon's
    stop, which drops the jobs still queued, must not drop it (an upload's temporary would
    stay in the pool, its file open)."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    busy = threading.Event()
    executor.submit(busy.wait, 10)  # the only worker is taken
    released = threading.Event()
    worker = FileWorker(executor, released.set)
    worker.close()  # idle: its release is queued behind the busy worker
    try:
        executor.shutdown(wait=False, cancel_futures=True)
    finally:
        busy.set()
    assert released.wait(5)
    await worker.wait_closed()


class FakeTransport(asyncio.Transport):
    """Just enough transport for a ClientConnection driven by the test."""

    def __init__(self, protocol: ClientConnection) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def feed(conn: ClientConnection, data: bytes) -> None:
    """Hand ``data`` to the connection as the transport would."""
    view = memoryview(data)
    while view:
        buffer = conn.get_buffer(-1)
        count = min(len(buffer), len(view))
        buffer[:count] = view[:count]
        conn.buffer_updated(count)
        view = view[count:]


async def reply_to(client: Connection, transport: FakeTransport, serial: int) -> object:
    """Wait for the reply to ``serial`` among what the connection wrote."""
    for _ in range(500):
        client.receive_data(bytes(transport.written))
        transport.written.clear()
        while (event := client.next_event()) is not None:
            if isinstance(event, ReplyReceived | ErrorReplyReceived) and event.serial == serial:
                return event
        await asyncio.sleep(0.01)
    raise AssertionError(f"no reply to call {serial}")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("procedure", [Proc.STORAGE_VOL_UPLOAD, Proc.STORAGE_VOL_DOWNLOAD])
async def test_stream_opened_as_the_connection_dies_is_released(
    pool: Pool, procedure: Proc, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = pool.volume("vol", b"old content")
    context = DaemonContext(
        registry=pool.registry, legacy=False, keepalive_interval=5, keepalive_count=5
    )
    before = open_fds()
    conn = ClientConnection(context, "test", read_only=False)
    transport = FakeTransport(conn)
    conn.connection_made(transport)
    real_spawn = conn._spawn

    def spawn_then_die(work: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        # The connection dies right after the stream's task is created, before its first step.
        task = real_spawn(work, name)
        if name.startswith("stream"):
            transport.closing = True
            conn.connection_lost(ConnectionResetError("reset by the test"))
        return task

    monkeypatch.setattr(conn, "_spawn", spawn_then_die)
    client = Connection(Side.CLIENT)
    serial, frame = client.call(Proc.CONNECT_OPEN, r.ConnectOpenArgs(name="", flags=0))
    feed(conn, frame)
    assert isinstance(await reply_to(client, transport, serial), ReplyReceived)
    wire = r.StorageVol(pool=volume.pool, name=volume.name, key=volume.key)
    _, frame = client.call(procedure, r.VolTransferArgs(vol=wire, offset=0, length=0, flags=1))
    feed(conn, frame)
    async with asyncio.timeout(10):
        await conn.wait_closed()
    for _ in range(100):  # a release may still be finishing in a worker
        if open_fds() == before:
            break
        await asyncio.sleep(0.02)
    context.shutdown_executors()
    assert open_fds() - before == set(), "descriptors left open"

    assert _temps(pool) == []
    pool.registry.open_upload(volume, 0, 0).abort()  # the volume is not "in use"
    assert (pool.directory / "vol").read_bytes() == b"old content"


def test_daemon_start_removes_temporaries_left_by_a_crash(tmp_path: Path) -> None:
    pool_dir = tmp_path / "virtvold" / "pool"
    pool_dir.mkdir(parents=True)
    (pool_dir / "vol").write_bytes(b"content")
    (pool_dir / ".virtvol-upload-0123456789abcdef").write_bytes(b"half an upload")
    daemon = start_virtvold(tmp_path / "virtvold")
    try:
        listing = run_virsh(daemon.tcp_uri, "vol-list", "default").stdout
        assert "vol" in listing
        assert ".virtvol" not in listing
        assert sorted(os.listdir(pool_dir)) == ["vol"]
    finally:
        stop_virtvold(daemon)


class BackedUpTransport(FakeTransport):
    """A transport whose peer takes nothing: every byte written stays in its buffer."""

    def __init__(self, protocol: ClientConnection) -> None:
        super().__init__(protocol)
        self.unsent = 0
        self.reading_paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.unsent += len(data)

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False


async def test_a_downloads_end_behind_unsent_data_leaves_the_client_heard(pool: Pool) -> None:
    """The end of a download goes out while its data waits for a reader (a FIFO that
    stalled): the connection keeps reading, so the client's keepalive frames are heard
    and it is not taken for gone. Replies to calls are what a backlog stops reading for."""
    volume = pool.volume("vol", os.urandom(1 << 20))
    context = DaemonContext(
        registry=pool.registry, legacy=False, keepalive_interval=5, keepalive_count=5
    )
    conn = ClientConnection(context, "test", read_only=False)
    transport = BackedUpTransport(conn)
    conn.connection_made(transport)
    client = Connection(Side.CLIENT)
    serial, frame = client.call(Proc.CONNECT_OPEN, r.ConnectOpenArgs(name="", flags=0))
    feed(conn, frame)
    assert isinstance(await reply_to(client, transport, serial), ReplyReceived)
    assert not transport.reading_paused
    wire = r.StorageVol(pool=volume.pool, name=volume.name, key=volume.key)
    serial, frame = client.call(
        Proc.STORAGE_VOL_DOWNLOAD, r.VolTransferArgs(vol=wire, offset=0, length=0, flags=0)
    )
    feed(conn, frame)
    ended = False
    for _ in range(500):
        client.receive_data(bytes(transport.written))
        transport.written.clear()
        while (event := client.next_event()) is not None:
            ended = ended or isinstance(event, StreamEndReceived)
        if ended:
            break
        await asyncio.sleep(0.01)
    assert ended, "the download's end was not sent"
    assert transport.unsent > OUTPUT_HIGH_WATER  # the end went out behind a backlog
    assert not transport.reading_paused, "the connection stopped reading at the end"
    transport.abort()
    async with asyncio.timeout(10):
        await conn.wait_closed()


def _refused_skip(sink: FakeSink, volume: VolumeRef) -> tuple[int, StreamSkipRefused]:
    """Open a sparse upload of ``volume`` on ``sink``'s core, as a client would, and
    have the core refuse a skip of length 0 on it."""
    client = Connection(Side.CLIENT)
    wire = r.StorageVol(volume.pool, volume.name, volume.key)
    serial, call = client.call(
        Proc.STORAGE_VOL_UPLOAD, r.VolTransferArgs(vol=wire, offset=0, length=0, flags=1)
    )
    sink.rpc.receive_data(call)
    assert isinstance(sink.rpc.next_event(), CallReceived)
    sink.rpc.reply(serial)
    head = Header(
        REMOTE_PROGRAM,
        REMOTE_PROTOCOL_VERSION,
        Proc.STORAGE_VOL_UPLOAD,
        MessageType.STREAM_HOLE,
        serial,
        MessageStatus.CONTINUE,
    )
    sink.rpc.receive_data(encode_frame(head, bytes(12)))
    refused = sink.rpc.next_event()
    assert isinstance(refused, StreamSkipRefused)
    return serial, refused


def _refusals(sink: FakeSink) -> list[tuple[int, int, str | None]]:
    """What ``sink`` was asked to send, each frame as its serial, status and error."""
    frames = FrameReader()
    frames.feed(b"".join(sink.sent))
    return [
        (frame.header.serial, frame.header.status, r.RemoteError.decode(frame.payload).message)
        for frame in frames
        if frame.header.type == MessageType.REPLY
    ]


_UNAPPLIED = "Library function returned error but did not set virError"


async def test_a_refused_skip_is_answered_once_the_upload_is_dropped(pool: Pool) -> None:
    """The refusal goes once the temporary is gone and the volume free: a client that
    hears it may upload again at once, and finds the old content."""
    volume = pool.volume("vol", b"old")
    sink = FakeSink()
    serial, refused = _refused_skip(sink, volume)
    writer = pool.registry.open_upload(volume, 0, 0)
    upload = Upload(sink, serial, writer, executor=pool.executor, stats=_stats("upload"))
    task = asyncio.create_task(upload.run())
    upload.data_received(memoryview(b"new"))
    upload.skip_refused(refused)
    await task
    assert _refusals(sink) == [(serial, MessageStatus.ERROR, _UNAPPLIED)]
    assert _temps(pool) == []
    assert (pool.directory / "vol").read_bytes() == b"old"
    pool.registry.open_upload(volume, 0, 0).abort()  # free again
    assert serial not in sink.rpc.streams


async def test_a_refused_skip_is_answered_when_dropping_the_upload_fails(pool: Pool) -> None:
    """The stream is over on the wire once the core refused the skip: a failure while
    the upload is dropped cannot go as a stream error, and the refusal still answers
    it (the client would otherwise wait for an answer forever)."""
    volume = pool.volume("vol", b"old")
    sink = FakeSink()
    serial, refused = _refused_skip(sink, volume)
    writer = pool.registry.open_upload(volume, 0, 0)
    real_abort = writer.abort
    aborts: list[None] = []

    def abort() -> None:
        aborts.append(None)
        if len(aborts) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_abort()

    writer.abort = abort  # type: ignore[method-assign]
    upload = Upload(sink, serial, writer, executor=pool.executor, stats=_stats("upload"))
    task = asyncio.create_task(upload.run())
    upload.skip_refused(refused)
    await task
    assert len(aborts) >= 2  # the failed drop was tried again
    assert _refusals(sink) == [(serial, MessageStatus.ERROR, _UNAPPLIED)]
    assert _temps(pool) == []
    assert (pool.directory / "vol").read_bytes() == b"old"
