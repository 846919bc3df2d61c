"""The blocking engine (``direct``) when things go wrong: call timeouts, keepalive,
peers that stop reading, hang up or fail a stream, local write failures and
interruptions in the middle of a transfer.

Most peers are ``FakePeer`` scripts (the failure is then certain and exact); the
transfers that must leave a real daemon healthy run against virtvold.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import socket
import stat
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.client.fake_peer import VOLUME, FakePeer, stream_error
from tests.client.helpers import MIB, assert_same_file, open_descriptors
from virtvol.client import direct_transfer
from virtvol.client.direct import DirectRpc, open_direct, run_blocking
from virtvol.client.errors import (
    CallTimeout,
    ConnectionClosed,
    LibvirtError,
    ProtocolViolation,
)
from virtvol.client.objects import StorageVolume
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    CallReceived,
    Connection,
    PingReceived,
    PongReceived,
    Side,
    StreamAbortReceived,
)
from virtvol.protocol.constants import DriverFeature
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import Virtvold
    from virtvol.client.connection import Connection as ClientConnection

# Linux's SO_SNDBUF beyond the system's maximum, for root (the socket module lacks it).
SO_SNDBUFFORCE = 32
INTERVAL, COUNT = 0.2, 2
# What a dead peer may take: interval * (count + 1), plus scheduling slack.
DEAD_PEER_LIMIT = INTERVAL * (COUNT + 1) + 0.6


def open_conn(uri: str, **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("keepalive", (INTERVAL, COUNT))
    return run_blocking(open_direct(uri, **kwargs))


def rpc_of(conn: ClientConnection) -> DirectRpc:
    rpc = conn._rpc
    assert isinstance(rpc, DirectRpc)
    return rpc


def fake_volume(conn: ClientConnection) -> StorageVolume:
    return StorageVolume.from_wire(conn, VOLUME)


def real_volume(conn: ClientConnection, name: str = "vol") -> StorageVolume:
    async def lookup() -> StorageVolume:
        pool = await conn.lookup_pool_by_name("default")
        return await pool.lookup_volume(name)

    return run_blocking(lookup())


def data_file(path: Path, size: int) -> Path:
    """A file of ``size`` bytes with no zero block (all of it travels as data)."""
    block = bytes(range(1, 256)) * 4112  # 1048560 bytes, no zero byte
    with path.open("wb") as f:
        while f.tell() < size:
            f.write(block[: size - f.tell()])
    return path


def close(conn: ClientConnection) -> None:
    run_blocking(conn.close())


# -- calls ---------------------------------------------------------------------------------


def test_call_timeout_leaves_the_connection_usable(tmp_path: Path) -> None:
    held: list[int] = []
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.CONNECT_GET_TYPE] = lambda _p, event: held.append(event.serial)
        conn = open_conn(peer.uri)
        rpc = rpc_of(conn)
        started = time.monotonic()
        with pytest.raises(CallTimeout, match=r"no answer to CONNECT_GET_TYPE .* within 0.2 s"):
            run_blocking(conn.get_type(timeout=0.2))
        assert 0.2 <= time.monotonic() - started < 1.0
        assert len(held) == 1
        # The late answer is dropped; the next call gets its own.
        peer.reply(held[0], r.ConnectGetTypeRet(type="late"))
        assert run_blocking(conn.supports_feature(DriverFeature.REMOTE_CLOSE_CALLBACK))
        assert rpc._replies == {}
        assert conn.is_alive
        close(conn)


def test_a_ping_during_a_call_is_answered_with_a_pong(tmp_path: Path) -> None:
    marks: list[int] = []

    def ping_then_answer(peer: FakePeer, event: CallReceived) -> None:
        marks.append(len(peer.received))
        peer.send(peer.core.send_ping())
        peer.later(0.3, peer.reply, event.serial, r.ConnectGetTypeRet(type="storage"))

    with FakePeer(tmp_path) as peer:  # no keepalive feature: the client sends no PINGs
        peer.handlers[Proc.CONNECT_GET_TYPE] = ping_then_answer
        conn = open_conn(peer.uri)
        assert run_blocking(conn.get_type()) == "storage"
        rpc = rpc_of(conn)
        assert rpc.pings_received == 1
        assert rpc.pings_sent == 0
        # The very next bytes the peer got after its PING: one PONG frame, whole.
        pong = Connection(Side.CLIENT).send_pong()
        assert bytes(peer.received[marks[0] : marks[0] + len(pong)]) == pong
        assert sum(isinstance(e, PongReceived) for e in peer.events) == 1
        close(conn)


def test_a_peer_that_goes_silent_fails_the_call_by_keepalive(tmp_path: Path) -> None:
    with FakePeer(tmp_path, keepalive=True) as peer:
        conn = open_conn(peer.uri)
        assert conn.keepalive_supported
        peer.silent = True
        started = time.monotonic()
        with pytest.raises(ConnectionClosed, match=r"no keepalive response within 0\.6 s"):
            run_blocking(conn.get_type())
        elapsed = time.monotonic() - started
        assert INTERVAL * COUNT <= elapsed < DEAD_PEER_LIMIT
        assert rpc_of(conn).pings_sent == COUNT
        deadline = time.monotonic() + 2
        while sum(isinstance(e, PingReceived) for e in peer.events) < COUNT:
            assert time.monotonic() < deadline, "the PINGs never reached the peer"
            time.sleep(0.01)
        assert not conn.is_alive
        close(conn)  # nothing to say goodbye on


def test_a_slow_peer_that_answers_pings_keeps_the_connection(tmp_path: Path) -> None:
    def answer_late(peer: FakePeer, event: CallReceived) -> None:
        reply = (event.serial, r.ConnectGetTypeRet(type="storage"))
        peer.later(DEAD_PEER_LIMIT + 0.3, peer.reply, *reply)

    with FakePeer(tmp_path, keepalive=True) as peer:
        peer.handlers[Proc.CONNECT_GET_TYPE] = answer_late
        conn = open_conn(peer.uri)
        assert run_blocking(conn.get_type()) == "storage"
        assert rpc_of(conn).pings_sent > COUNT  # each PONG renewed the peer's credit
        assert sum(isinstance(e, PingReceived) for e in peer.events) == rpc_of(conn).pings_sent
        close(conn)


# -- uploads to a peer that stops reading --------------------------------------------------


def stop_reading_after_reply(peer: FakePeer, event: CallReceived) -> None:
    peer.reply(event.serial)
    peer.stop_reading()


def test_a_peer_that_stops_reading_and_answering_fails_the_upload_by_keepalive(
    tmp_path: Path,
) -> None:
    source = data_file(tmp_path / "src.img", 16 * MIB)

    def go_dead(peer: FakePeer, event: CallReceived) -> None:
        stop_reading_after_reply(peer, event)
        peer.silent = True

    with FakePeer(tmp_path, keepalive=True) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = go_dead
        conn = open_conn(peer.uri)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed, match="no keepalive response"):
            run_blocking(fake_volume(conn).upload_file(source))
        assert time.monotonic() - started < DEAD_PEER_LIMIT
        close(conn)


def test_a_stream_error_from_a_peer_that_stopped_reading_is_raised(tmp_path: Path) -> None:
    source = data_file(tmp_path / "src.img", 16 * MIB)

    def fail_after_a_while(peer: FakePeer, event: Any) -> None:
        if peer.data_bytes >= MIB and not peer.core.pending_calls() and not failed:
            failed.append(event.serial)
            peer.send(peer.core.send_stream_error(event.serial, stream_error("disk on fire")))
            peer.stop_reading()

    failed: list[int] = []
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda p, event: p.reply(event.serial)
        peer.on_data = fail_after_a_while
        conn = open_conn(peer.uri)
        started = time.monotonic()
        with pytest.raises(LibvirtError, match="disk on fire"):
            run_blocking(fake_volume(conn).upload_file(source))
        assert time.monotonic() - started < 3
        assert failed
        close(conn)


def test_a_peer_that_hangs_up_during_an_upload_fails_it(tmp_path: Path) -> None:
    source = data_file(tmp_path / "src.img", 16 * MIB)

    def hang_up_after_reply(peer: FakePeer, event: CallReceived) -> None:
        peer.reply(event.serial)
        peer.hang_up()

    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = hang_up_after_reply
        conn = open_conn(peer.uri)
        with pytest.raises(ConnectionClosed, match="disconnected from"):
            run_blocking(fake_volume(conn).upload_file(source))
        assert not conn.is_alive
        close(conn)


@pytest.mark.parametrize("size", [8 * MIB, 0], ids=["data", "empty"])
def test_a_stream_error_that_came_with_the_reply_is_the_one_raised(
    tmp_path: Path, size: int
) -> None:
    """The peer fails the stream as soon as it opened it (its error arrives with the
    reply): the upload says the peer's reason, not that the stream it ended is gone."""
    source = data_file(tmp_path / "src.img", size)

    def open_and_fail(peer: FakePeer, event: CallReceived) -> None:
        failure = peer.core.send_stream_error(event.serial, stream_error("no room left"))
        peer.send(peer.core.reply(event.serial) + failure)

    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = open_and_fail
        conn = open_conn(peer.uri)
        with pytest.raises(LibvirtError, match="no room left"):
            run_blocking(fake_volume(conn).upload_file(source))
        assert run_blocking(conn.get_type()) == "storage"
        close(conn)
    assert peer.data_bytes == 0


def test_an_error_at_the_finish_is_raised_at_stage_finish(tmp_path: Path) -> None:
    source = data_file(tmp_path / "src.img", MIB)

    def fail_the_finish(peer: FakePeer, event: Any) -> None:
        peer.send(peer.core.send_stream_error(event.serial, stream_error("cannot commit")))

    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda p, event: p.reply(event.serial)
        peer.on_stream_end = fail_the_finish
        conn = open_conn(peer.uri)
        with pytest.raises(LibvirtError, match="cannot commit") as caught:
            run_blocking(fake_volume(conn).upload_file(source))
        assert caught.value.stage == "finish"
        assert peer.data_bytes == MIB
        assert run_blocking(conn.get_type()) == "storage"
        close(conn)


def test_a_peer_that_hangs_up_on_the_abort_leaves_the_first_error(tmp_path: Path) -> None:
    source = data_file(tmp_path / "src.img", 8 * MIB)

    def stop(data: int, holes: int) -> None:
        raise RuntimeError("stop")

    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda p, event: p.reply(event.serial)
        peer.on_stream_end = lambda p, _event: p.hang_up()
        conn = open_conn(peer.uri)
        with pytest.raises(RuntimeError, match="stop"):
            run_blocking(fake_volume(conn).upload_file(source, progress=stop))
        assert not conn.is_alive
        close(conn)
    assert any(isinstance(e, StreamAbortReceived) for e in peer.events)


def fail_the_stream_once(error_sent: threading.Event) -> Callable[[FakePeer, Any], None]:
    """A data handler for the scripted peer: the first frame gets a stream error ("disk
    on fire") back, as virtvold sends on a failed write; ``error_sent`` is set then."""

    def fail_once(peer: FakePeer, event: Any) -> None:
        if not error_sent.is_set():
            peer.send(peer.core.send_stream_error(event.serial, stream_error("disk on fire")))
            error_sent.set()

    return fail_once


def test_a_stream_error_from_a_peer_that_goes_on_reading_stops_the_upload_early(
    tmp_path: Path,
) -> None:
    """virtvold and libvirtd report a failed write at once and drop the frames that
    follow: the client must hear it while it sends, not after the whole file, even
    when its socket never fills (a fast peer on TCP, with large buffers)."""
    source = data_file(tmp_path / "src.img", 64 * MIB)
    error_sent = threading.Event()
    fail_once = fail_the_stream_once(error_sent)

    def wait_for_the_error(data: int, holes: int) -> None:
        assert error_sent.wait(5)

    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda p, event: p.reply(event.serial)
        peer.on_data = fail_once
        conn = open_conn(peer.uri)
        sock = rpc_of(conn)._sock
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 128 * MIB)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 128 * MIB
        with pytest.raises(LibvirtError, match="disk on fire") as caught:
            run_blocking(fake_volume(conn).upload_file(source, progress=wait_for_the_error))
        assert caught.value.stage != "finish"
        assert run_blocking(conn.get_type()) == "storage"  # no frame was cut: it goes on
        close(conn)
        assert peer.hung_up.wait(5)
    # Heard one read buffer after it came, not after the 64 MiB of the file.
    assert len(peer.received) < 16 * MIB


def test_a_stream_error_stops_a_long_hole_sent_as_zeros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a dense stream a hole travels as zero frames; a long one is heard from the
    peer a read buffer at a time, as data is, not only after its last zero."""
    source = tmp_path / "hole.img"
    with source.open("wb") as f:
        f.truncate(64 * MIB)
    error_sent = threading.Event()
    fail_once = fail_the_stream_once(error_sent)

    # Once zeros went out, the client's looks at the socket wait for the error to be on
    # its way: a busy machine's scheduling cannot let it send more buffers before that.
    sending, looking = direct_transfer._Stream.send_data, direct_transfer._Stream.poll
    zeros_sent = threading.Event()

    def send_data(stream: Any, data: memoryview) -> None:
        sending(stream, data)
        zeros_sent.set()

    def poll(stream: Any) -> None:
        if zeros_sent.is_set():
            assert error_sent.wait(5)
        looking(stream)

    monkeypatch.setattr(direct_transfer._Stream, "send_data", send_data)
    monkeypatch.setattr(direct_transfer._Stream, "poll", poll)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda p, event: p.reply(event.serial)
        peer.on_data = fail_once
        conn = open_conn(peer.uri)
        sock = rpc_of(conn)._sock
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 128 * MIB)
        with pytest.raises(LibvirtError, match="disk on fire"):
            run_blocking(fake_volume(conn).upload_file(source, sparse=False))
        assert run_blocking(conn.get_type()) == "storage"
        close(conn)
        assert peer.hung_up.wait(5)
    # Heard a read buffer after the error came, not after the 64 MiB of the hole.
    assert len(peer.received) < 16 * MIB


@pytest.mark.timeout(20)
def test_ctrl_c_in_the_middle_of_a_frame_drops_the_connection_at_once(tmp_path: Path) -> None:
    """An interrupted data frame cannot be followed by an abort (the peer would read the
    abort as data): the connection is given up, which aborts the upload on the peer."""
    source = data_file(tmp_path / "src.img", 16 * MIB)
    main_thread = threading.main_thread().ident
    assert main_thread is not None

    def interrupt_later(peer: FakePeer, event: CallReceived) -> None:
        stop_reading_after_reply(peer, event)
        peer.later(0.3, signal.pthread_kill, main_thread, signal.SIGINT)

    before = open_descriptors()
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = interrupt_later
        conn = open_conn(peer.uri, keepalive=None)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_blocking(fake_volume(conn).upload_file(source))
        assert time.monotonic() - started < 3
        assert not conn.is_alive
        close(conn)
        peer.resume_reading()
        assert peer.hung_up.wait(5)
        # What the peer read is whole frames and the start of one; never an abort.
        assert peer.protocol_error is None
        assert not any(isinstance(e, StreamAbortReceived) for e in peer.events)
        assert peer.core.reader.buffered > 0
    assert open_descriptors() == before  # the socket and the source: both closed


def ping_while_full(peer: FakePeer, event: CallReceived) -> None:
    """An upload handler: the reply, then no reading while the client's writes fill the
    socket; 0.3 s later a PING, and reading again 0.2 s after it."""
    stop_reading_after_reply(peer, event)

    def ping_and_resume() -> None:
        peer.send(peer.core.send_ping())
        time.sleep(0.2)  # the client reads the PING while its frame is half written
        peer.resume_reading()

    peer.later(0.3, ping_and_resume)


def test_a_ping_while_a_write_waits_is_answered_after_the_frame(tmp_path: Path) -> None:
    source = data_file(tmp_path / "src.img", 8 * MIB)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = ping_while_full
        conn = open_conn(peer.uri)
        result = run_blocking(fake_volume(conn).upload_file(source, sparse=False))
        assert result.data_bytes == 8 * MIB
        assert rpc_of(conn).pings_received == 1
        assert peer.protocol_error is None  # the PONG did not land inside a data frame
        assert sum(isinstance(e, PongReceived) for e in peer.events) == 1
        assert peer.data_bytes == 8 * MIB
        close(conn)


class _InterruptedAfterARead:
    """The connection's socket, with a Ctrl-C that lands as a read returns, once
    ``after`` bytes came in: the bytes are out of the socket but nobody counted them."""

    def __init__(self, inner: _socket.socket, after: int) -> None:
        self.inner = inner
        self.after = after

    def recv_into(self, buffer: memoryview) -> int:
        count = self.inner.recv_into(buffer)
        self.after -= count
        if self.after <= 0 < self.after + count:
            raise KeyboardInterrupt
        return count

    def sendmsg(self, buffers: Any) -> int:
        return self.inner.sendmsg(buffers)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.timeout(20)
def test_ctrl_c_as_a_read_returns_drops_the_connection_at_once(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    """The bytes that read took are lost: the frames after them cannot be read, so
    neither the abort's confirmation nor a goodbye can be waited for. The connection is
    given up (which aborts the download on the peer) instead of waiting 30 s for an
    answer that cannot be heard."""
    data_file(virtvold.pool_dir / "vol", 16 * MIB)
    work = tmp_path / "work"
    work.mkdir()
    before = open_descriptors()
    conn = open_conn(virtvold.unix_uri)
    vol = real_volume(conn)
    rpc = rpc_of(conn)
    rpc._sock = _InterruptedAfterARead(rpc._sock, 3 * MIB + 12345)  # type: ignore[assignment]
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_blocking(vol.download_file(work / "down.img"))
    assert not conn.is_alive
    close(conn)
    assert time.monotonic() - started < 3
    assert list(work.iterdir()) == []
    assert open_descriptors() == before
    again = open_conn(virtvold.tcp_uri)  # the daemon lives on
    assert run_blocking(again.get_type()) == "storage"
    close(again)


# -- downloads that break --------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["between frames", "inside a frame"])
def test_a_download_cut_short_leaves_no_file(tmp_path: Path, cut: str) -> None:
    chunk = bytes(range(1, 256)) * 256

    def send_then_hang_up(peer: FakePeer, event: CallReceived) -> None:
        peer.reply(event.serial)
        for _ in range(3):
            peer.send(b"".join(peer.core.send_data(event.serial, chunk)))
        if cut == "inside a frame":
            head, payload = peer.core.send_data(event.serial, chunk)
            peer.send(head + payload[: len(chunk) // 2])
        peer.hang_up()

    work = tmp_path / "work"
    work.mkdir()
    before = open_descriptors()
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_then_hang_up
        conn = open_conn(peer.uri)
        with pytest.raises(ConnectionClosed, match="disconnected from"):
            run_blocking(fake_volume(conn).download_file(work / "down.img"))
        close(conn)
    assert list(work.iterdir()) == []
    assert open_descriptors() == before  # the socket, the temporary: all closed


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x1c" + b"\xff" * 24,  # a frame of an unknown program
        b"\x7f\xff\xff\xff" + b"\xff" * 24,  # a length no frame may have
    ],
    ids=["unknown-program", "frame-too-long"],
)
def test_a_download_whose_peer_breaks_the_protocol_leaves_no_file(
    tmp_path: Path, garbage: bytes
) -> None:
    def send_garbage(peer: FakePeer, event: CallReceived) -> None:
        peer.reply(event.serial)
        peer.send(garbage)

    work = tmp_path / "work"
    work.mkdir()
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_garbage
        conn = open_conn(peer.uri)
        # A broken protocol, not a lost connection: said as such.
        with pytest.raises(ProtocolViolation, match="protocol error"):
            run_blocking(fake_volume(conn).download_file(work / "down.img"))
        assert not conn.is_alive
        close(conn)
    assert list(work.iterdir()) == []


@contextlib.contextmanager
def lowered_file_size_limit(limit: int) -> Iterator[None]:
    """Files this process writes may not grow past ``limit`` bytes (root included):
    a write beyond fails with EFBIG (SIGXFSZ is ignored meanwhile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_local_write_failure_aborts_the_download(virtvold: Virtvold, tmp_path: Path) -> None:
    data_file(virtvold.pool_dir / "vol", 8 * MIB)
    work = tmp_path / "work"
    work.mkdir()
    conn = open_conn(virtvold.unix_uri)
    try:
        vol = real_volume(conn)
        with lowered_file_size_limit(MIB), pytest.raises(OSError, match="File too large") as caught:
            run_blocking(vol.download_file(work / "down.img"))
        assert caught.value.errno == errno.EFBIG
        assert list(work.iterdir()) == []
        # The stream was aborted and confirmed: the connection goes on.
        assert run_blocking(conn.get_type()) == "storage"
    finally:
        close(conn)
    again = open_conn(virtvold.tcp_uri)
    try:
        run_blocking(real_volume(again).download_file(work / "down.img"))
    finally:
        close(again)
    assert_same_file(virtvold.pool_dir / "vol", work / "down.img")


def send_whole_download(chunk: bytes, frames: int) -> Callable[[FakePeer, CallReceived], None]:
    """A download handler that sends the reply, ``frames`` data frames and the end at once."""

    def send(peer: FakePeer, event: CallReceived) -> None:
        parts = [peer.core.reply(event.serial)]
        parts += [b"".join(peer.core.send_data(event.serial, chunk)) for _ in range(frames)]
        parts.append(peer.core.send_eof(event.serial))
        peer.send(b"".join(parts))

    return send


def test_a_download_that_came_with_the_reply_reports_its_progress(tmp_path: Path) -> None:
    chunk = bytes(range(1, 256)) * 16
    seen: list[tuple[int, int]] = []
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(chunk, 3)
        conn = open_conn(peer.uri)
        target = tmp_path / "down.img"
        result = run_blocking(
            fake_volume(conn).download_file(target, progress=lambda d, h: seen.append((d, h)))
        )
        close(conn)
    assert result.data_bytes == 3 * len(chunk)
    assert seen[-1] == (3 * len(chunk), 0)
    assert target.read_bytes() == chunk * 3


@pytest.mark.timeout(20)
def test_a_write_failure_on_frames_that_came_with_the_reply_is_raised_at_once(
    tmp_path: Path,
) -> None:
    """The whole (small) download arrives with the opening reply, so the write fails
    before the receiving loop starts: nothing more will come until the client speaks."""
    chunk = bytes(range(1, 256)) * 16
    work = tmp_path / "work"
    work.mkdir()
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(chunk, 3)
        conn = open_conn(peer.uri)
        with (
            lowered_file_size_limit(len(chunk)),
            pytest.raises(OSError, match="File too large") as caught,
        ):
            run_blocking(fake_volume(conn).download_file(work / "down.img"))
        assert caught.value.errno == errno.EFBIG
        assert run_blocking(conn.get_type()) == "storage"  # the abort was confirmed
        close(conn)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_from_the_download_progress_aborts_it(
    virtvold: Virtvold, tmp_path: Path, error: type[BaseException]
) -> None:
    data_file(virtvold.pool_dir / "vol", 8 * MIB)
    work = tmp_path / "work"
    work.mkdir()
    calls: list[int] = []

    def progress(data: int, holes: int) -> None:
        calls.append(data)
        raise error("stop")

    conn = open_conn(virtvold.unix_uri)
    try:
        with pytest.raises(error, match="stop"):
            run_blocking(real_volume(conn).download_file(work / "down.img", progress=progress))
        assert len(calls) == 1
        assert list(work.iterdir()) == []
        assert run_blocking(conn.get_type()) == "storage"
        assert conn.is_alive
    finally:
        close(conn)


# -- uploads interrupted by the caller -----------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_from_the_upload_progress_aborts_it(
    virtvold: Virtvold, tmp_path: Path, error: type[BaseException]
) -> None:
    source = data_file(tmp_path / "src.img", 16 * MIB)
    old = b"previous contents" * 1000
    (virtvold.pool_dir / "vol").write_bytes(old)
    calls: list[int] = []

    def progress(data: int, holes: int) -> None:
        calls.append(data)
        if data >= 4 * MIB:
            raise error("stop")

    conn = open_conn(virtvold.tcp_uri)
    try:
        with pytest.raises(error, match="stop"):
            run_blocking(real_volume(conn).upload_file(source, progress=progress))
        assert 0 < calls[-1] < 16 * MIB
        assert run_blocking(conn.get_type()) == "storage"  # aborted, confirmed, goes on
    finally:
        close(conn)
    assert (virtvold.pool_dir / "vol").read_bytes() == old
    assert virtvold.process.poll() is None


# -- a source that changes during the upload --------------------------------------------------


def test_a_source_cut_short_where_it_had_a_hole_fails_the_upload(tmp_path: Path) -> None:
    """The file is cut back to its first read buffer of data while being sent: what it
    held after that (a hole, then data) is gone, and must not travel as a hole."""
    source = data_file(tmp_path / "src.img", 12 * MIB)
    with source.open("r+b") as f:
        f.truncate(4 * MIB)
        f.truncate(8 * MIB)  # a hole from 4 MiB, where the first read buffer ends
    data_file(tmp_path / "tail.img", 4 * MIB)
    with source.open("ab") as tail:
        tail.write((tmp_path / "tail.img").read_bytes())

    def cut_after_the_first_buffer(data: int, holes: int) -> None:
        if os.stat(source).st_size > 4 * MIB:
            os.truncate(source, 4 * MIB)

    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = lambda p, event: p.reply(event.serial)
        conn = open_conn(peer.uri)
        with pytest.raises(OSError, match="shrank"):
            run_blocking(fake_volume(conn).upload_file(source, progress=cut_after_the_first_buffer))
        assert run_blocking(conn.get_type()) == "storage"  # aborted and confirmed
        close(conn)
    assert any(isinstance(e, StreamAbortReceived) for e in peer.events)
    assert peer.data_bytes == 4 * MIB


# -- download destinations that are not plain files -------------------------------------------


def test_a_download_through_a_symbolic_link_writes_its_target(tmp_path: Path) -> None:
    """virsh writes through the link; the temporary goes beside the link's target and
    replaces that, so the link stays a link."""
    chunk = bytes(range(1, 256)) * 16
    work = tmp_path / "work"
    (work / "images").mkdir(parents=True)
    (work / "images" / "real.img").write_bytes(b"old")
    link = work / "link.img"
    link.symlink_to("images/real.img")
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(chunk, 3)
        conn = open_conn(peer.uri)
        run_blocking(fake_volume(conn).download_file(link))
        close(conn)
    assert link.is_symlink()
    assert (work / "images" / "real.img").read_bytes() == chunk * 3
    assert sorted(p.name for p in work.rglob("*")) == ["images", "link.img", "real.img"]


def test_a_download_onto_a_socket_is_refused_before_the_stream(tmp_path: Path) -> None:
    """The temporary renamed over a socket would replace the node itself, and a socket
    takes no open(): such a destination is refused at once."""
    work = tmp_path / "work"
    work.mkdir()
    path = work / "sock"
    with socket.socket(socket.AF_UNIX) as listener, FakePeer(tmp_path) as peer:
        listener.bind(str(path))
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(b"x", 1)
        conn = open_conn(peer.uri)
        with pytest.raises(OSError, match="not a regular file"):
            run_blocking(fake_volume(conn).download_file(path))
        close(conn)
    assert Proc.STORAGE_VOL_DOWNLOAD not in peer.calls
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert os.listdir(work) == ["sock"]


def test_a_download_into_a_fifo_fills_it_and_leaves_it_a_fifo(tmp_path: Path) -> None:
    """Written in place, as virsh writes: the node is not replaced (/dev/null once became
    a regular file) and nothing is made beside it."""
    work = tmp_path / "work"
    work.mkdir()
    fifo = work / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(b"xyz", 2)
        conn = open_conn(peer.uri)
        run_blocking(fake_volume(conn).download_file(fifo))
        close(conn)
    reader.join(timeout=10)
    assert received == [b"xyzxyz"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(work) == ["pipe"]
