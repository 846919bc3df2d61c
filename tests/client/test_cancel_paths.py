"""What a cancelled task leaves behind on a connection of the event-loop client: a stream
the peer opens after its opener gave up is aborted, and a cancelled goodbye still closes
the connection, and a cancelled download leaves nothing behind and holds nobody up; an
upload cancelled as it opens or finishes leaves the volume free for the next one; a close
goes through a peer that stopped reading, and a second close waits for the first; a
download left unread while a long call is read for is given up at its bound. The peer
is ``FakePeer``, scripted to hold back the answers in question, or a real virtvold.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.client.fake_peer import VOLUME, FakePeer
from tests.client.helpers import MIB, open_descriptors, until, write_sparse_image
from tests.client.test_direct_faults import send_whole_download
from virtvol.client import connect, connection, streams, transfer
from virtvol.client.objects import StorageVolume
from virtvol.client.rpc import RpcProtocol
from virtvol.protocol import remote as r
from virtvol.protocol.connection import CallReceived, StreamAbortReceived
from virtvol.protocol.procedures import Proc
from virtvol.sparse.writer import SparseWriter

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.conftest import Virtvold
    from virtvol.sparse.zeros import Bytes


async def _aborted(peer: FakePeer, serial: int) -> None:
    """Wait until the peer has had the client's abort of stream ``serial``."""
    await until(
        lambda: any(
            isinstance(event, StreamAbortReceived) and event.serial == serial
            for event in peer.events
        )
    )


class HeldCalls:
    """A handler that answers nothing: it keeps the serials and tells when one came."""

    def __init__(self) -> None:
        self.serials: list[int] = []
        self.came = threading.Event()

    def __call__(self, peer: FakePeer, event: CallReceived) -> None:
        self.serials.append(event.serial)
        self.came.set()

    async def wait(self) -> int:
        assert await asyncio.to_thread(self.came.wait, 10)
        return self.serials[0]


@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_a_stream_opened_after_its_opener_was_cancelled_is_aborted(
    tmp_path: Path, direction: str
) -> None:
    """The open is cancelled before the peer answers it; the peer then opens the stream.
    Nobody will ever use it: the client aborts it, or the peer would keep the volume busy
    for as long as the connection lives."""
    held = HeldCalls()
    procedure = Proc.STORAGE_VOL_UPLOAD if direction == "upload" else Proc.STORAGE_VOL_DOWNLOAD
    with FakePeer(tmp_path) as peer:
        peer.handlers[procedure] = held
        async with connect(peer.uri, keepalive=None) as conn:
            volume = StorageVolume.from_wire(conn, VOLUME)
            stream = volume.upload() if direction == "upload" else volume.download()
            opening = asyncio.create_task(stream.open())
            serial = await held.wait()
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
            peer.reply(serial)
            await _aborted(peer, serial)
            assert await conn.get_type() == "storage"
        assert peer.protocol_error is None


async def test_a_goodbye_cancelled_while_the_peer_is_silent_still_closes_the_connection(
    tmp_path: Path,
) -> None:
    held = HeldCalls()
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.CONNECT_CLOSE] = held
        conn = await connect(peer.uri, keepalive=None)
        closing = asyncio.create_task(conn.close())
        await held.wait()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        # The peer sees the end of the connection; it would otherwise stay open, its
        # socket with it, until the garbage collector found the connection.
        assert await asyncio.to_thread(peer.hung_up.wait, 10)
        assert not conn.is_alive


async def test_a_download_cancelled_twice_leaves_no_temporary_and_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while a write is on the disk, a download waits for the write before it
    closes its file; a second cancellation meanwhile (a second Ctrl-C, a time limit and
    then its caller's) must not skip the removal of the temporary."""
    work = tmp_path / "work"
    work.mkdir()
    writing, release = threading.Event(), threading.Event()
    apply = SparseWriter.apply

    def slow_apply(writer: SparseWriter, items: list[Bytes | int]) -> None:
        writing.set()
        assert release.wait(10)
        apply(writer, items)

    settling = asyncio.Event()
    settle = transfer._settle

    async def watched_settle(job: asyncio.Future[None]) -> None:
        settling.set()
        await settle(job)

    monkeypatch.setattr(SparseWriter, "apply", slow_apply)
    monkeypatch.setattr(transfer, "_settle", watched_settle)
    monkeypatch.setattr(transfer, "WRITE_BATCH_ITEMS", 1)

    def one_frame_then_nothing(peer: FakePeer, event: CallReceived) -> None:
        peer.send(peer.core.reply(event.serial) + b"".join(peer.core.send_data(event.serial, b"x")))

    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = one_frame_then_nothing
        async with connect(peer.uri, keepalive=None) as conn:
            descriptors = open_descriptors()
            volume = StorageVolume.from_wire(conn, VOLUME)
            task = asyncio.create_task(volume.download_file(work / "copy.img"))
            try:
                assert await asyncio.to_thread(writing.wait, 10)
                task.cancel()  # the stream is aborted, then the write waited for
                await asyncio.wait_for(settling.wait(), 10)
                task.cancel()
            finally:
                release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert open_descriptors() == descriptors
    assert os.listdir(work) == []


async def test_a_download_cancelled_during_a_write_leaves_the_event_loop_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancelled download waits for the write on the disk before it closes its file,
    but other tasks run meanwhile: here the one that lets the write end."""
    writing, release = threading.Event(), threading.Event()
    apply = SparseWriter.apply

    def slow_apply(writer: SparseWriter, items: list[Bytes | int]) -> None:
        writing.set()
        release.wait(10)
        apply(writer, items)

    monkeypatch.setattr(SparseWriter, "apply", slow_apply)

    async def let_the_write_end() -> None:
        for _ in range(20):  # the download reaches its cleanup within a few turns
            await asyncio.sleep(0)
        release.set()

    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(b"x" * 4096, 1)
        async with connect(peer.uri, keepalive=None) as conn:
            volume = StorageVolume.from_wire(conn, VOLUME)
            task = asyncio.create_task(volume.download_file(tmp_path / "copy.img"))
            assert await asyncio.to_thread(writing.wait, 10)
            task.cancel()
            releasing = asyncio.create_task(let_the_write_end())
            with pytest.raises(asyncio.CancelledError):
                await task
            # Set by the loop, not by the write's own time limit.
            assert releasing.done()
    assert not (tmp_path / "copy.img").exists()


async def test_a_stalled_download_cancelled_among_other_transfers_lets_them_finish(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    """One download's consumer stops: its queue fills and the connection stops reading
    for everyone. Cancelling it lets the transfers that share the connection go on."""
    (virtvold.pool_dir / "big").write_bytes(b"\x07" * (32 * MIB))
    other = write_sparse_image(virtvold.pool_dir / "other", 8 * MIB, seed=3)
    (virtvold.pool_dir / "target").write_bytes(b"")
    source = tmp_path / "source"
    sent = write_sparse_image(source, 8 * MIB, seed=4)
    async with connect(virtvold.tcp_uri) as conn:
        pool = await conn.lookup_pool_by_name("default")
        big, other_vol, target = [await pool.lookup_volume(n) for n in ("big", "other", "target")]
        first_item = asyncio.Event()

        async def stall() -> None:
            async with big.download() as stream:
                async for _ in stream:
                    first_item.set()
                    await asyncio.Event().wait()  # never set

        stalled = asyncio.create_task(stall())
        await first_item.wait()
        rpc = conn._rpc
        assert isinstance(rpc, RpcProtocol)
        await until(lambda: bool(rpc._read_pausers))
        others = asyncio.gather(
            other_vol.download_file(tmp_path / "other.copy"),
            target.upload_file(source),
            conn.list_pools(),
        )
        stalled.cancel()
        # Promptly: its abort is answered once the connection reads again (a generous
        # bound; a connection left paused waits out the abort's 30 s).
        await asyncio.wait({stalled}, timeout=10)
        assert stalled.cancelled()
        await asyncio.wait_for(others, 60)
        assert not rpc._read_pausers
        assert conn.is_alive
    assert (tmp_path / "other.copy").read_bytes() == other
    assert (virtvold.pool_dir / "target").read_bytes() == sent


@pytest.mark.parametrize("how", ["cancelled", "time limit"])
async def test_a_connect_given_up_during_the_handshake_closes_its_socket(
    tmp_path: Path, how: str
) -> None:
    held = HeldCalls()
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.CONNECT_OPEN] = held
        if how == "cancelled":
            opening = asyncio.create_task(connect(peer.uri).__aenter__())
            await held.wait()
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
        else:
            with pytest.raises(TimeoutError):
                await connect(peer.uri, timeout=0.3)
        assert await asyncio.to_thread(peer.hung_up.wait, 10)


@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_a_file_transfer_cancelled_before_its_stream_opened_leaves_nothing(
    tmp_path: Path, direction: str
) -> None:
    """No descriptor stays open, no temporary beside the destination, and the stream the
    peer opens afterwards is aborted."""
    held = HeldCalls()
    work = tmp_path / "work"
    work.mkdir()
    source = work / "source"
    write_sparse_image(source, MIB)
    procedure = Proc.STORAGE_VOL_UPLOAD if direction == "upload" else Proc.STORAGE_VOL_DOWNLOAD
    with FakePeer(tmp_path) as peer:
        peer.handlers[procedure] = held
        async with connect(peer.uri, keepalive=None) as conn:
            descriptors = open_descriptors()
            volume = StorageVolume.from_wire(conn, VOLUME)
            if direction == "upload":
                task = asyncio.create_task(volume.upload_file(source))
            else:
                task = asyncio.create_task(volume.download_file(work / "copy.img"))
            serial = await held.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert open_descriptors() == descriptors
            assert os.listdir(work) == ["source"]
            peer.reply(serial)
            await _aborted(peer, serial)


@pytest.mark.parametrize("leaving", ["break", "cancelled"])
async def test_a_download_iterated_without_async_with_and_left_early_is_aborted(
    virtvold: Virtvold, leaving: str
) -> None:
    """``async for item in vol.download()`` left early (a ``break``, a cancelled task):
    nothing else can abort that stream, whose unread data would otherwise stop the
    connection's reading for every call."""
    (virtvold.pool_dir / "big").write_bytes(b"\x07" * (32 * MIB))
    async with connect(virtvold.tcp_uri) as conn:
        pool = await conn.lookup_pool_by_name("default")
        big = await pool.lookup_volume("big")
        if leaving == "break":
            async for _ in big.download():
                break
        else:
            first_item = asyncio.Event()

            async def consume() -> None:
                async for _ in big.download():
                    first_item.set()
                    await asyncio.Event().wait()  # never set

            consumer = asyncio.create_task(consume())
            await first_item.wait()
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
        # A generous bound: a connection that stopped reading never answers.
        assert await asyncio.wait_for(conn.get_type(), 10) == "storage"
        assert (await big.info()).capacity == 32 * MIB


async def test_a_stream_opened_as_its_opener_is_cancelled_is_aborted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer's answer has come (the stream is open) when the cancellation reaches the
    opener, before it resumed: nobody uses that stream either, so it is aborted too."""
    held = HeldCalls()
    opening: list[asyncio.Task[None]] = []
    real_start_call = RpcProtocol.start_call

    def start_call(self: RpcProtocol, *args: object, **kwargs: object) -> object:
        started: tuple[int, asyncio.Future[Any]] = real_start_call(self, *args, **kwargs)  # type: ignore[arg-type]
        serial, waiter = started
        if getattr(args[0], "number", None) == Proc.STORAGE_VOL_DOWNLOAD:
            # The opener is cancelled once the answer is there, before it resumed.
            waiter.add_done_callback(lambda _: opening[0].cancel())
        return serial, waiter

    monkeypatch.setattr(RpcProtocol, "start_call", start_call)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = held
        async with connect(peer.uri, keepalive=None) as conn:
            volume = StorageVolume.from_wire(conn, VOLUME)
            opening.append(asyncio.create_task(volume.download().open()))
            serial = await held.wait()
            monkeypatch.undo()
            peer.reply(serial)
            with pytest.raises(asyncio.CancelledError):
                await opening[0]
            await _aborted(peer, serial)
            assert await conn.get_type() == "storage"
        assert peer.protocol_error is None


async def test_a_cancellation_as_the_waited_job_ends_is_raised() -> None:
    """The task is cancelled once the job has ended but before it resumed: the wait
    still ends in the cancellation, not as if nobody had asked for it."""
    job: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(transfer._settle(job))
    await asyncio.sleep(0)
    job.add_done_callback(lambda _: waiting.cancel())
    job.set_result(None)
    with pytest.raises(asyncio.CancelledError):
        await waiting


@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_a_time_limit_on_a_transfer_whose_peer_stops_answering_holds(
    tmp_path: Path, direction: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transfer stalls (a pipe that gives nothing to upload, a peer that sends
    nothing more to download) and the peer confirms no abort. The caller's time limit
    ran out, the stream was aborted, and the abort then waited 30 s for a confirmation
    that never came: a 0.5 s limit held the caller for 30.5 s. Cancelled, the abort waits
    a second at most; the connection goes on. (The wait of an abort nothing interrupted
    is an hour here: only the short one ends the transfer before the test's own limit.)"""
    monkeypatch.setattr(streams, "ABORT_WAIT", 3600.0)
    work = tmp_path / "work"
    work.mkdir()
    source = work / "source"
    os.mkfifo(source)
    # Its writer stays, silent: the upload waits for data that never comes.
    writer = os.open(source, os.O_RDWR | os.O_CLOEXEC)

    def one_frame_then_nothing(peer: FakePeer, event: CallReceived) -> None:
        peer.send(peer.core.reply(event.serial) + b"".join(peer.core.send_data(event.serial, b"x")))

    try:
        with FakePeer(tmp_path) as peer:
            peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda peer, event: peer.reply(event.serial)
            peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = one_frame_then_nothing
            peer.on_stream_end = lambda peer, event: None  # never confirmed
            async with connect(peer.uri, keepalive=None) as conn:
                volume = StorageVolume.from_wire(conn, VOLUME)
                if direction == "upload":
                    transferring = volume.upload_file(source)
                else:
                    transferring = volume.download_file(work / "copy.img")
                async with asyncio.timeout(60):  # reached by an abort's hour-long wait
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.5):
                            await transferring
                opened = next(
                    call
                    for call in peer.events
                    if isinstance(call, CallReceived)
                    and call.procedure.number
                    in (Proc.STORAGE_VOL_UPLOAD, Proc.STORAGE_VOL_DOWNLOAD)
                )
                await _aborted(peer, opened.serial)
                assert os.listdir(work) == ["source"]
                assert await conn.get_type() == "storage"
            assert peer.protocol_error is None
    finally:
        os.close(writer)


async def test_a_time_limit_on_a_connection_whose_peer_stops_answering_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``async with connect()`` left by the caller's time limit: the goodbye then waited
    5 s for answers a silent peer never sends. Left by a cancellation, it waits a second
    at most, and the connection is closed all the same. (The goodbye nothing interrupted
    is given an hour here: only the short one ends before the test's own limit.)"""
    monkeypatch.setattr(connection, "_GOODBYE_TIMEOUT", 3600.0)
    held = HeldCalls()
    with FakePeer(tmp_path) as peer:
        for procedure in (
            Proc.CONNECT_GET_TYPE,
            Proc.CONNECT_UNREGISTER_CLOSE_CALLBACK,
            Proc.CONNECT_CLOSE,
        ):
            peer.handlers[procedure] = held
        async with asyncio.timeout(60):  # reached by the goodbye's hour-long wait
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5), connect(peer.uri, keepalive=None) as conn:
                    await conn.get_type()
        assert not conn.is_alive
        assert await asyncio.to_thread(peer.hung_up.wait, 10)


def _own_threads() -> set[threading.Thread]:
    """The threads the library started (its reader and writer threads) that still run."""
    return {thread for thread in threading.enumerate() if thread.name.startswith("virtvol-")}


@pytest.mark.parametrize("ending", ["finished", "cancelled"])
async def test_a_download_leaves_no_thread_running_when_it_returns(
    tmp_path: Path, ending: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread was let go (its executor shut down without waiting) and still
    ran when ``download_file`` returned: a caller that checks what it left behind found
    it. It is waited for, off the event loop. (The thread's own end is made slow here,
    so that returning before it shows every time.)"""
    worker: Callable[..., None] = concurrent.futures.thread._worker

    def slow_to_end(*args: Any) -> None:
        worker(*args)
        time.sleep(0.2)

    monkeypatch.setattr(concurrent.futures.thread, "_worker", slow_to_end)
    work = tmp_path / "work"
    work.mkdir()
    held = HeldCalls()
    with FakePeer(tmp_path) as peer:
        if ending == "finished":
            peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(b"x" * 4096, 3)
        else:
            peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = held
        async with connect(peer.uri, keepalive=None) as conn:
            volume = StorageVolume.from_wire(conn, VOLUME)
            before = _own_threads()
            task = asyncio.create_task(volume.download_file(work / "copy.img"))
            if ending == "cancelled":
                await held.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                await task
            assert _own_threads() == before


async def test_an_upload_leaves_no_thread_running_when_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reading thread said it was done as its last act, and ``upload_file`` returned
    on that word, before the thread had ended. It is waited for, off the event loop.
    (The thread's own end is made slow here, so that returning before it shows.)"""
    run = transfer._Reader._run

    def slow_to_end(reader: transfer._Reader) -> None:
        run(reader)
        time.sleep(0.2)

    monkeypatch.setattr(transfer._Reader, "_run", slow_to_end)
    source = tmp_path / "source"
    write_sparse_image(source, MIB)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda peer, event: peer.reply(event.serial)
        async with connect(peer.uri, keepalive=None) as conn:
            volume = StorageVolume.from_wire(conn, VOLUME)
            before = _own_threads()
            await volume.upload_file(source)
            assert _own_threads() == before


async def test_an_upload_cancelled_while_its_thread_ends_still_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while it waited for its reading thread's last word, ``upload_file``
    returned at once, the thread still running. The wait goes on through the
    cancellation, which is raised once the thread has ended. (The thread is held after
    its last read until the cancellation is on its way, then made slow to end, so that
    returning before it shows.)"""
    walk = transfer._Reader._walk
    start = transfer._Reader.start
    stopping = threading.Event()
    release = threading.Event()

    def held_after_its_last_read(reader: transfer._Reader) -> None:
        walk(reader)
        release.wait()
        time.sleep(0.2)

    def start_watched(reader: transfer._Reader) -> None:
        stop = reader.stop.set

        def watched_stop() -> None:  # the upload's last step: it waits for the thread next
            stop()
            stopping.set()

        reader.stop.set = watched_stop  # type: ignore[method-assign]
        start(reader)

    monkeypatch.setattr(transfer._Reader, "_walk", held_after_its_last_read)
    monkeypatch.setattr(transfer._Reader, "start", start_watched)
    source = tmp_path / "source"
    write_sparse_image(source, MIB)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda peer, event: peer.reply(event.serial)
        async with connect(peer.uri, keepalive=None) as conn:
            volume = StorageVolume.from_wire(conn, VOLUME)
            before = _own_threads()
            task = asyncio.create_task(volume.upload_file(source))
            try:
                assert await asyncio.to_thread(stopping.wait, 30), "never waited for its thread"
                task.cancel()
            finally:
                release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert _own_threads() == before


async def test_an_upload_does_not_wait_behind_the_callers_jobs_for_its_thread(
    tmp_path: Path,
) -> None:
    """The caller's own blocking jobs fill the event loop's default executor. An upload
    that waited there for its reading thread to end did not return before one of those
    jobs had ended, however long it ran: the upload waits for its thread itself."""
    loop = asyncio.get_running_loop()
    callers = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(callers)
    release = threading.Event()
    callers_job = loop.run_in_executor(None, release.wait)
    # Ends the caller's job in any case, so that a transfer waiting behind it ends too
    # (and this test fails, not hangs): the transfer's own end takes far less.
    ending = loop.call_later(30, release.set)
    source = tmp_path / "source"
    write_sparse_image(source, MIB)
    try:
        with FakePeer(tmp_path) as peer:
            peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda peer, event: peer.reply(event.serial)
            async with connect(peer.uri, keepalive=None) as conn:
                volume = StorageVolume.from_wire(conn, VOLUME)
                await volume.upload_file(source)
                assert not callers_job.done()
    finally:
        ending.cancel()
        release.set()
        await callers_job


async def _uploaded_again(
    conn: connection.Connection, volume: StorageVolume, virtvold: Virtvold, content: bytes
) -> None:
    """The next upload of ``volume`` ("vol.img") on ``conn`` is taken, not refused as
    'still in use', and the file holds ``content`` after it."""
    async with volume.upload(sparse=False) as upload:
        await upload.send(content)
    assert (virtvold.pool_dir / "vol.img").read_bytes() == content
    assert conn.is_alive


async def test_an_upload_whose_open_was_cancelled_no_longer_holds_the_volume(
    virtvold: Virtvold,
) -> None:
    """The opener is cancelled once its call has left, before the daemon answered: when
    the cancellation reaches the caller, the stream the daemon opened meanwhile has been
    aborted, so the next upload on the connection is not refused as 'still in use'."""
    (virtvold.pool_dir / "vol.img").write_bytes(b"\x05" * MIB)
    new = os.urandom(MIB)
    async with connect(virtvold.unix_uri, keepalive=None) as conn:
        pool = await conn.lookup_pool_by_name("default")
        volume = await pool.lookup_volume("vol.img")
        stream = volume.upload(sparse=False)
        opening = asyncio.create_task(stream.open())
        await asyncio.sleep(0)  # one turn of the loop: the opener writes its call, no more
        assert stream.serial >= 0
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await _uploaded_again(conn, volume, virtvold, new)


async def test_an_upload_cancelled_while_its_finish_is_confirmed_no_longer_holds_the_volume(
    virtvold: Virtvold,
) -> None:
    """Cancelled once its finish has left, an upload waits for the daemon's confirmation
    before the cancellation reaches the caller: the daemon has committed it by then, and
    the next upload on the connection is not refused as 'still in use'."""
    (virtvold.pool_dir / "vol.img").write_bytes(b"\x05" * MIB)
    first, second = os.urandom(MIB), os.urandom(MIB)
    async with connect(virtvold.unix_uri, keepalive=None) as conn:
        pool = await conn.lookup_pool_by_name("default")
        volume = await pool.lookup_volume("vol.img")
        upload = volume.upload(sparse=False)
        await upload.open()
        await upload.send(first)
        finishing = asyncio.create_task(upload.finish())
        await asyncio.sleep(0)  # one turn of the loop: the finish is written, no more
        finishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await finishing
        assert (virtvold.pool_dir / "vol.img").read_bytes() == first
        await _uploaded_again(conn, volume, virtvold, second)


async def test_a_connection_whose_peer_stopped_reading_closes_with_bytes_unsent(
    tmp_path: Path,
) -> None:
    """The peer stops reading in the middle of an upload, which is then cancelled: the
    goodbye goes unanswered, and the connection's close drops what the peer never read
    instead of waiting for it forever."""
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda peer, call: peer.reply(call.serial)
        conn = await connect(peer.uri, keepalive=None)
        rpc = conn._rpc
        assert isinstance(rpc, RpcProtocol)

        async def upload() -> None:
            async with StorageVolume.from_wire(conn, VOLUME).upload(sparse=False) as stream:
                peer.stop_reading()
                while True:
                    await stream.send(bytes(MIB))

        uploading = asyncio.create_task(upload())
        await until(lambda: not rpc._write_ready.is_set())  # the socket is full
        uploading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await uploading
        async with asyncio.timeout(10):
            await conn.close(timeout=0.5)
        assert not conn.is_alive
        assert rpc.transport is None


async def _second_close_during_goodbye(
    peer: FakePeer,
) -> tuple[RpcProtocol, asyncio.Task[None], asyncio.Task[None], int]:
    """A connection to ``peer`` whose first close waits for the answer to its
    CONNECT_CLOSE (serial given back), and a second close made then, after one turn of
    the loop: it has run as far as it goes without the answer, no further."""
    held = HeldCalls()
    peer.handlers[Proc.CONNECT_CLOSE] = held
    conn = await connect(peer.uri, keepalive=None)
    rpc = conn._rpc
    assert isinstance(rpc, RpcProtocol)
    first = asyncio.create_task(conn.close())
    serial = await held.wait()
    second = asyncio.create_task(conn.close())
    await asyncio.sleep(0)
    return rpc, first, second, serial


async def test_a_second_close_returns_once_the_connection_is_closed(tmp_path: Path) -> None:
    """A close made while another is saying goodbye returns when the connection is
    closed, not at once with the socket still open."""
    with FakePeer(tmp_path) as peer:
        rpc, first, second, serial = await _second_close_during_goodbye(peer)
        assert not second.done()
        peer.reply(serial)
        await asyncio.gather(first, second)
        assert rpc.transport is None


async def test_a_second_close_cancelled_leaves_the_first_to_end(tmp_path: Path) -> None:
    """A close made while another is saying goodbye, then cancelled, ends with its
    cancellation alone: the first close still returns, closed, without a cancellation
    that nobody asked of it."""
    with FakePeer(tmp_path) as peer:
        rpc, first, second, serial = await _second_close_during_goodbye(peer)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        peer.reply(serial)
        async with asyncio.timeout(10):
            await first
        assert rpc.transport is None


async def test_a_download_aborted_without_confirmation_ends_its_readers_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task reads a download while another aborts it, and the peer never confirms
    the abort: the reader's iteration ends with the abort instead of waiting forever."""
    monkeypatch.setattr(streams, "ABORT_WAIT", 0.1)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = lambda peer, call: peer.reply(call.serial)
        peer.on_stream_end = lambda peer, event: None  # never confirmed
        async with connect(peer.uri, keepalive=None) as conn:
            stream = StorageVolume.from_wire(conn, VOLUME).download()
            await stream.open()

            async def read() -> int:
                return sum([1 async for _ in stream])

            reading = asyncio.create_task(read())
            await until(lambda: stream._waiter is not None)  # the reader waits for data
            await stream.abort()
            async with asyncio.timeout(10):
                assert await reading == 0


async def test_a_download_left_unread_during_a_long_call_is_failed_at_its_bound(
    tmp_path: Path,
) -> None:
    """While a call waits, the socket is read past an unread download's pause; a peer
    that sends far more of the download before it answers (a long call, a hostile peer)
    does not make it queue without bound: past ``READ_HARD_LIMIT`` the download is
    aborted and its reader told why, and the call still gets its answer."""
    chunk = os.urandom(256 * 1024)
    frames = 2 * streams.READ_HARD_LIMIT // len(chunk)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = lambda peer, call: peer.reply(call.serial)
        stream_serials: list[int] = []

        def answer_after_data(peer: FakePeer, call: CallReceived) -> None:
            (serial,) = stream_serials
            for _ in range(frames):
                peer.send(b"".join(peer.core.send_data(serial, chunk)))
            peer.reply(call.serial, r.ConnectGetTypeRet(type="storage"))

        peer.handlers[Proc.CONNECT_GET_TYPE] = answer_after_data
        async with connect(peer.uri, keepalive=None) as conn:
            stream = StorageVolume.from_wire(conn, VOLUME).download()
            await stream.open()
            stream_serials.append(stream.serial)
            async with asyncio.timeout(10):
                # Answered after every frame: all of them were read by then.
                assert await conn.get_type() == "storage"
                assert stream._queued <= streams.READ_HARD_LIMIT
                with pytest.raises(streams.StreamError, match="fell behind"):
                    async for _ in stream:
                        pass
                await _aborted(peer, stream.serial)
