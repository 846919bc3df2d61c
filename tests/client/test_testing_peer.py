"""``virtvol.client.testing``: the in-memory daemon that library users test against."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import socket
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

import virtvol.client
from tests.client.helpers import MIB, write_sparse_image
from virtvol.client import (
    Hole,
    InvalidArgument,
    LibvirtError,
    NoStoragePool,
    NoStorageVolume,
    NoSupport,
    OperationInvalid,
    PoolState,
    SparseUnsupported,
    StorageVolumeExists,
    TransportError,
    VolumeType,
    VolWipeAlgorithm,
    memory_server,
    memory_storage,
    memory_transport,
    testing,
)
from virtvol.client.rpc import RpcProtocol
from virtvol.client.testing import MemoryDaemon, memory_daemon
from virtvol.protocol import remote as r
from virtvol.protocol.connection import Connection as ProtocolConnection
from virtvol.protocol.connection import Side
from virtvol.protocol.constants import (
    REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION,
    MessageStatus,
    MessageType,
    VolStreamFlags,
)
from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.protocol.frames import Frame, FrameReader, Header, encode_frame
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from tests.conftest import Virtvold

KIB = 1024


async def test_pool_calls() -> None:
    daemon = MemoryDaemon(pools={"default": {"a.img": b"abc", "b.img": 4096}, "spare": {}})
    async with daemon.connect() as conn:
        assert await conn.get_type() == "storage"
        assert await conn.lib_version() == 9_000_000
        pools = await conn.list_pools()
        assert [p.name for p in pools] == ["default", "spare"]
        pool = await conn.lookup_pool_by_name("default")
        assert pool == pools[0]
        assert await conn.lookup_pool_by_uuid(pool.uuid) == pool
        info = await pool.info()
        assert info.state is PoolState.RUNNING
        assert info.allocation == 3
        assert info.capacity == info.allocation + info.available
        assert f"<uuid>{pool.uuid}</uuid>" in await pool.xml_desc()
        assert await pool.num_of_volumes() == 2
        assert [v.name for v in await pool.list_volumes()] == ["a.img", "b.img"]
        await pool.set_autostart(True)
        assert await pool.autostart()
        assert daemon.pools["default"].autostart
        await pool.destroy()
        assert not await pool.is_active()
        assert (await pool.info()).state is PoolState.INACTIVE
        await pool.start()
        assert await pool.is_active()


async def test_volume_calls() -> None:
    async with memory_daemon(pools={"default": {"a.img": b"abc"}}) as conn:
        pool = await conn.lookup_pool_by_name("default")
        xml = virtvol.client.volume_xml("new.img", 1 * MIB, allocation=0, format="raw")
        vol = await pool.create_volume(xml)
        info = await vol.info()
        assert (info.type, info.capacity, info.allocation) == (VolumeType.FILE, MIB, 0)
        assert await conn.lookup_volume_by_key(vol.key) == vol
        assert await conn.lookup_volume_by_path(await vol.path()) == vol
        assert await vol.pool() == pool
        assert "<name>new.img</name>" in await vol.xml_desc()
        await vol.resize(2 * MIB)
        assert (await vol.info()).capacity == 2 * MIB
        await vol.resize(MIB, delta=True, shrink=True)
        assert (await vol.info()).capacity == MIB
        await vol.delete()
        assert [v.name for v in await pool.list_volumes()] == ["a.img"]


async def test_sparse_stream_round_trip() -> None:
    daemon = MemoryDaemon(pools={"default": {"disk.img": 64 * KIB}})
    async with daemon.connect() as conn:
        pool = await conn.lookup_pool_by_name("default")
        vol = await pool.lookup_volume("disk.img")
        async with vol.upload() as upload:
            await upload.send(b"\x01" * 1000)
            await upload.skip(30_000)
            await upload.send(b"\x02" * 500)
        assert upload.sparse
        assert (upload.data_bytes, upload.hole_bytes) == (1500, 30_000)
        stored = daemon.volume("default", "disk.img")
        assert stored.allocation == 1500
        assert stored.content[:1000] == b"\x01" * 1000
        assert stored.content[31_000:31_500] == b"\x02" * 500

        items: list[bytes | Hole] = []
        async with vol.download() as download:
            async for item in download:
                items.append(item if isinstance(item, Hole) else bytes(item))
        assert download.sparse
        assert items == [b"\x01" * 1000, Hole(30_000), b"\x02" * 500, Hole(64 * KIB - 31_500)]


async def test_dense_download_sends_holes_as_zeros() -> None:
    async with memory_daemon(pools={"p": {"v": 10_000}}) as conn:
        vol = await (await conn.lookup_pool_by_name("p")).lookup_volume("v")
        received = b""
        async for item in vol.download(offset=100, length=5000, sparse=False):
            assert not isinstance(item, Hole)
            received += bytes(item)
        assert received == bytes(5000)


async def test_file_round_trip_keeps_holes(tmp_path: Path) -> None:
    source = tmp_path / "source.img"
    content = write_sparse_image(source, 8 * MIB)
    async with memory_daemon(pools={"default": {"disk.img": 0}}) as conn:
        vol = await (await conn.lookup_pool_by_name("default")).lookup_volume("disk.img")
        sent = await vol.upload_file(source)
        assert sent.sparse
        assert sent.hole_bytes > 4 * MIB
        assert (await vol.info()).capacity == len(content)
        copy = tmp_path / "copy.img"
        received = await vol.download_file(copy)
        assert received.hole_bytes == sent.hole_bytes
        assert copy.read_bytes() == content


async def test_download_file_writes_through_a_link_and_fills_a_fifo(tmp_path: Path) -> None:
    """The temporary replaces a symbolic link's target (the link stays); a FIFO takes the
    bytes in place and stays a FIFO; a socket is refused before the stream: renamed over,
    the node itself would be replaced."""
    (tmp_path / "real.img").write_bytes(b"old")
    (tmp_path / "link.img").symlink_to("real.img")
    os.mkfifo(tmp_path / "pipe")
    async with memory_daemon(pools={"p": {"v": b"new"}}) as conn:
        vol = await (await conn.lookup_pool_by_name("p")).lookup_volume("v")
        await vol.download_file(tmp_path / "link.img")
        reading = asyncio.ensure_future(asyncio.to_thread((tmp_path / "pipe").read_bytes))
        try:
            await vol.download_file(tmp_path / "pipe")
        finally:
            if not reading.done():  # a download that never opened the FIFO frees its reader
                with contextlib.suppress(OSError):
                    os.close(os.open(tmp_path / "pipe", os.O_WRONLY | os.O_NONBLOCK))
        assert await reading == b"new"
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(tmp_path / "sock"))
            with pytest.raises(OSError, match="not a regular file"):
                await vol.download_file(tmp_path / "sock")
    assert (tmp_path / "link.img").is_symlink()
    assert (tmp_path / "real.img").read_bytes() == b"new"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode)
    assert sorted(os.listdir(tmp_path)) == ["link.img", "pipe", "real.img", "sock"]


async def test_download_abandoned_midway_leaves_the_connection_usable() -> None:
    async with memory_daemon(pools={"p": {"v": bytes(range(256)) * 4096}}) as conn:
        vol = await (await conn.lookup_pool_by_name("p")).lookup_volume("v")
        async with vol.download() as download:
            async for _ in download:
                break
        assert download.data_bytes < 1 * MIB
        assert (await vol.info()).capacity == 1 * MIB


async def test_a_cancelled_download_stops_the_daemons_sender() -> None:
    async with memory_daemon(pools={"p": {"v": b"\x07" * (32 * MIB)}}) as conn:
        vol = await (await conn.lookup_pool_by_name("p")).lookup_volume("v")
        first_item = asyncio.Event()

        async def consume() -> None:
            async with vol.download() as download:
                async for _ in download:
                    first_item.set()
                    await asyncio.sleep(3600)

        consumer = asyncio.create_task(consume())
        await first_item.wait()
        senders = _senders()
        assert len(senders) == 1
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await asyncio.sleep(0)
        # Stopped by the abort, not run into the closed stream.
        assert senders[0].cancelled()
        # The abort was answered: the next call on the connection is served.
        assert (await vol.info()).capacity == 32 * MIB


async def test_a_download_sees_the_volume_as_it_opened() -> None:
    async with memory_daemon(pools={"p": {"v": b"\x05" * MIB}}) as conn:
        vol = await (await conn.lookup_pool_by_name("p")).lookup_volume("v")
        received = 0
        async with vol.download() as download:
            async for item in download:
                if received == 0:
                    await vol.resize(0, shrink=True)
                assert not isinstance(item, Hole)
                assert set(bytes(item)) == {5}
                received += len(item)
        assert received == MIB
        assert (await vol.info()).capacity == 0


def _senders() -> list[asyncio.Task[object]]:
    """The in-memory daemon's download tasks still running."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "_send_volume" in repr(task.get_coro())
    ]


async def test_errors_carry_libvirts_codes() -> None:
    async with memory_daemon(pools={"default": {"a.img": b"a"}, "off": {}}) as conn:
        pool = await conn.lookup_pool_by_name("default")
        with pytest.raises(NoStorageVolume) as missing:
            await pool.lookup_volume("nope.img")
        assert (missing.value.code, missing.value.domain) == (
            ErrorCode.NO_STORAGE_VOL,
            ErrorDomain.STORAGE,
        )
        assert str(missing.value) == (
            "Storage volume not found: no storage vol with matching name 'nope.img'"
        )
        with pytest.raises(NoStoragePool) as no_pool:
            await conn.lookup_pool_by_name("nope")
        assert no_pool.value.code == ErrorCode.NO_STORAGE_POOL
        with pytest.raises(NoStoragePool):
            await conn.lookup_pool_by_uuid(uuid.UUID(int=1))
        with pytest.raises(StorageVolumeExists):
            await pool.create_volume(virtvol.client.volume_xml("a.img", 1))
        with pytest.raises(InvalidArgument):
            await (await pool.lookup_volume("a.img")).resize(0)
        off = await conn.lookup_pool_by_name("off")
        await off.destroy()
        with pytest.raises(OperationInvalid, match="storage pool 'off' is not active"):
            await off.lookup_volume("x")
        with pytest.raises(NoSupport):
            await conn.define_pool("<pool type='dir'><name>x</name></pool>")
        # The connection goes on after each refusal.
        assert await pool.num_of_volumes() == 1


async def test_more_refusals_as_libvirt_words_them() -> None:
    async with memory_daemon(pools={"p": {"v": b"12345678"}}) as conn:
        pool = await conn.lookup_pool_by_name("p")
        vol = await pool.lookup_volume("v")
        assert await vol.pool() == pool
        await pool.refresh()
        with pytest.raises(OperationInvalid, match="storage pool 'p' is already active"):
            await pool.start()
        with pytest.raises(NoStorageVolume, match="no storage vol with matching key /p/w"):
            await conn.lookup_volume_by_key("/p/w")
        with pytest.raises(NoStorageVolume, match="no storage vol with matching path '/p/w'"):
            await conn.lookup_volume_by_path("/p/w")
        with pytest.raises(LibvirtError) as bad_xml:
            await pool.create_volume("<volume><name>w</name>")
        assert bad_xml.value.code == ErrorCode.XML_DETAIL
        with pytest.raises(LibvirtError) as no_name:
            await pool.create_volume("<volume><capacity>1</capacity></volume>")
        assert no_name.value.code == ErrorCode.XML_ERROR
        with pytest.raises(InvalidArgument, match="unknown storage size unit 'parsecs'"):
            await pool.create_volume(
                "<volume><name>w</name><capacity unit='parsecs'>1</capacity></volume>"
            )
        with pytest.raises(InvalidArgument, match="can't shrink capacity below zero"):
            await vol.resize(9, delta=True, shrink=True)
        with pytest.raises(InvalidArgument, match="past the end"):
            await vol.download(offset=9).open()
        await vol.wipe()
        assert (await vol.info()).allocation == 8
        assert await pool.num_of_volumes() == 1


async def test_pattern_wipes_zero_or_are_refused_as_virtvold_refuses_them() -> None:
    daemon = MemoryDaemon(pools={"p": {"v": b"\xff" * 8, "w": b"\xff" * 8}})
    async with daemon.connect() as conn:
        pool = await conn.lookup_pool_by_name("p")
        await (await pool.lookup_volume("v")).wipe_pattern(VolWipeAlgorithm.ZERO)
        assert daemon.volume("p", "v").content == bytes(8)
        kept = await pool.lookup_volume("w")
        for refused, words in (
            (VolWipeAlgorithm.TRIM, "'trim' algorithm not supported"),
            (VolWipeAlgorithm.DOD, "wiping algorithm 2 needs scrub"),
        ):
            with pytest.raises(LibvirtError, match=words) as no:
                await kept.wipe_pattern(refused)
            assert no.value.code == ErrorCode.ARGUMENT_UNSUPPORTED
        with pytest.raises(InvalidArgument, match="wiping algorithm 10 not supported"):
            await kept.wipe_pattern(10)  # type: ignore[arg-type]
        assert daemon.volume("p", "w").content == b"\xff" * 8


async def test_a_client_that_breaks_the_protocol_is_dropped() -> None:
    async with memory_daemon(pools={"p": {}}) as conn:
        assert isinstance(conn._rpc, RpcProtocol)
        transport = conn._rpc.transport
        assert transport is not None
        transport.write(b"\x00\x00\x00\x04")  # a frame shorter than its own header
        with pytest.raises(TransportError):
            await conn.get_type()
        assert not conn.is_alive


async def test_stream_errors_name_their_stage() -> None:
    async with memory_daemon(pools={"default": {"a.img": b"a"}}) as conn:
        vol = await (await conn.lookup_pool_by_name("default")).lookup_volume("a.img")
        await vol.delete()
        with pytest.raises(NoStorageVolume) as refused:
            async with vol.upload() as upload:
                await upload.send(b"x")
        assert refused.value.stage == "open"


async def test_a_daemon_without_sparse_streams() -> None:
    daemon = MemoryDaemon(pools={"p": {"v": 8192}}, sparse_streams=False)
    async with daemon.connect() as conn:
        vol = await (await conn.lookup_pool_by_name("p")).lookup_volume("v")
        with pytest.raises(SparseUnsupported) as refused:
            await vol.upload(sparse=True).open()
        assert refused.value.stage == "open"
        assert "unsupported flags (0x1) in function storageVolUpload" in str(refused.value)
        async with vol.upload() as upload:
            await upload.skip(100)
            await upload.send(b"z")
        assert (upload.sparse, upload.fell_back) == (False, True)
        assert daemon.volume("p", "v").content[:101] == bytes(100) + b"z"


async def test_state_outlives_a_connection() -> None:
    daemon = MemoryDaemon(pools={"p": {}})
    async with daemon.connect() as conn:
        pool = await conn.lookup_pool_by_name("p")
        await pool.create_volume(virtvol.client.volume_xml("kept", 4 * KIB))
    assert daemon.volume("p", "kept").capacity == 4 * KIB
    async with daemon.connect(protocol="legacy") as conn:
        vol = await (await conn.lookup_pool_by_name("p")).lookup_volume("kept")
        assert (await vol.info()).allocation == 0


def test_the_testing_module_never_imports_the_daemon() -> None:
    """The in-memory daemon is the client's own: its modules import no daemon module."""
    imported: set[str] = set()
    for module in (testing, memory_server, memory_storage, memory_transport):
        tree = ast.parse(Path(module.__file__ or "").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "virtvol.protocol.connection" in imported
    assert [name for name in imported if name.startswith("virtvol.daemon")] == []


class _FramesToClient:
    """The client end of a ``MemoryServer`` driven by hand: what it is sent, as frames."""

    def __init__(self) -> None:
        self.reader = FrameReader()
        self.dropped: Exception | None = None

    def deliver(self, data: bytes) -> None:
        self.reader.feed(data)

    def drop(self, reason: Exception) -> None:
        self.dropped = reason

    def take(self) -> list[Frame]:
        return list(self.reader)


def _upload_frame(serial: int, kind: MessageType, status: MessageStatus, payload: bytes) -> bytes:
    header = Header(
        REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, Proc.STORAGE_VOL_UPLOAD, kind, serial, status
    )
    return encode_frame(header, payload)


def _stream_opened(
    procedure: Proc, sent: _FramesToClient, *, flags: int = 0
) -> tuple[MemoryDaemon, memory_server.MemoryServer, ProtocolConnection, int]:
    """An in-memory daemon holding volume "v" (b"old") in pool "p", its server talking to
    ``sent``, the client's protocol core and the serial of the stream ``procedure`` opened
    on "v" (its reply taken, and checked to be OK)."""
    daemon = MemoryDaemon(pools={"p": {"v": b"old"}})
    server = memory_server.MemoryServer(
        daemon.pools, sparse_streams=True, client=cast("memory_transport.MemoryTransport", sent)
    )
    client = ProtocolConnection(Side.CLIENT)
    vol = r.StorageVol("p", "v", "/p/v")
    serial, call = client.call(
        procedure, r.VolTransferArgs(vol=vol, offset=0, length=0, flags=flags)
    )
    server.receive(call)
    [reply] = sent.take()
    assert (reply.header.type, reply.header.status) == (MessageType.REPLY, MessageStatus.OK)
    return daemon, server, client, serial


def test_a_refused_skip_ends_its_upload_as_libvirtd_ends_it() -> None:
    """A skip libvirtd cannot apply (length 0) aborts its upload, answered by an error
    REPLY on the stream's serial; the finish after it goes unanswered and the
    connection is served on. The in-memory daemon answered nothing (a client waiting
    for the end waited forever) and kept the transfer."""
    sent = _FramesToClient()
    daemon, server, client, serial = _stream_opened(
        Proc.STORAGE_VOL_UPLOAD, sent, flags=VolStreamFlags.SPARSE
    )
    continuing = (MessageType.STREAM, MessageStatus.CONTINUE)
    server.receive(
        _upload_frame(serial, *continuing, b"new")
        + _upload_frame(serial, MessageType.STREAM_HOLE, MessageStatus.CONTINUE, bytes(12))
    )
    [refusal] = sent.take()
    assert refusal.header == Header(
        REMOTE_PROGRAM,
        REMOTE_PROTOCOL_VERSION,
        Proc.STORAGE_VOL_UPLOAD,
        MessageType.REPLY,
        serial,
        MessageStatus.ERROR,
    )
    error = r.RemoteError.decode(refusal.payload)
    assert (error.code, error.domain, error.message, error.int1, error.int2) == (
        ErrorCode.INTERNAL_ERROR,
        ErrorDomain.RPC,
        "Library function returned error but did not set virError",
        0,
        0,
    )
    assert server.transfers == {}
    # Data and a finish after the refusal: dropped, unanswered.
    server.receive(
        _upload_frame(serial, *continuing, b"late")
        + _upload_frame(serial, MessageType.STREAM, MessageStatus.OK, b"")
    )
    assert sent.take() == []
    # libvirtd writes in place: what came before the skip stays.
    assert daemon.volume("p", "v").content == b"new"
    other, call = client.call(Proc.CONNECT_GET_LIB_VERSION)
    server.receive(call)
    [answer] = sent.take()
    assert (answer.header.serial, answer.header.status) == (other, MessageStatus.OK)
    assert sent.dropped is None


def test_a_stream_frame_of_an_unknown_status_aborts_its_upload_as_libvirtd_does() -> None:
    """A stream frame whose status libvirt has no meaning for aborts its upload, answered
    by a stream error, and the connection is served on (as virtvold and libvirtd answer
    it). The in-memory daemon answered nothing, so the client waited for good, and kept
    the transfer."""
    sent = _FramesToClient()
    daemon, server, client, serial = _stream_opened(Proc.STORAGE_VOL_UPLOAD, sent)
    server.receive(
        _upload_frame(serial, MessageType.STREAM, MessageStatus.CONTINUE, b"new")
        + _upload_frame(serial, MessageType.STREAM, cast("MessageStatus", 7), b"")
    )
    [failure] = sent.take()
    assert (failure.header.type, failure.header.serial, failure.header.status) == (
        MessageType.STREAM,
        serial,
        MessageStatus.ERROR,
    )
    error = r.RemoteError.decode(failure.payload)
    assert (error.code, error.domain, error.message) == (
        ErrorCode.RPC,
        ErrorDomain.STREAMS,
        "stream aborted with unexpected status 7",
    )
    assert server.transfers == {}
    # What comes after it on that stream is dropped, unanswered.
    server.receive(_upload_frame(serial, MessageType.STREAM, MessageStatus.CONTINUE, b"late"))
    assert sent.take() == []
    assert daemon.volume("p", "v").content == b"new"
    other, call = client.call(Proc.CONNECT_GET_LIB_VERSION)
    server.receive(call)
    [answer] = sent.take()
    assert (answer.header.serial, answer.header.status) == (other, MessageStatus.OK)
    assert sent.dropped is None


class _RoomyFramesToClient(_FramesToClient):
    """A client end that reads at once: a download's sender never waits for room."""

    async def room(self) -> None:
        return None


async def test_data_sent_into_a_download_fails_its_finish_as_libvirtd_fails_it() -> None:
    """Data a client sends into a download is dropped and the download goes on to its
    end, but the client's finish is refused as libvirtd refuses it (and virtvold). The
    in-memory daemon confirmed the finish as if nothing had happened."""
    sent = _RoomyFramesToClient()
    daemon, server, client, serial = _stream_opened(Proc.STORAGE_VOL_DOWNLOAD, sent)

    def frame(status: MessageStatus, payload: bytes) -> bytes:
        header = Header(
            REMOTE_PROGRAM,
            REMOTE_PROTOCOL_VERSION,
            Proc.STORAGE_VOL_DOWNLOAD,
            MessageType.STREAM,
            serial,
            status,
        )
        return encode_frame(header, payload)

    server.receive(frame(MessageStatus.CONTINUE, b"into a download"))
    transfer = server.transfers[serial]
    assert transfer.task is not None
    await transfer.task
    data, eof = sent.take()
    assert (data.payload, eof.payload) == (b"old", b"")  # the end: an empty data frame
    server.receive(frame(MessageStatus.OK, b""))
    [failure] = sent.take()
    assert (failure.header.type, failure.header.serial, failure.header.status) == (
        MessageType.STREAM,
        serial,
        MessageStatus.ERROR,
    )
    error = r.RemoteError.decode(failure.payload)
    assert (error.code, error.domain, error.message) == (
        ErrorCode.RPC,
        ErrorDomain.STREAMS,
        "stream had unexpected termination",
    )
    assert server.transfers == {}
    assert daemon.volume("p", "v").content == b"old"
    other, call = client.call(Proc.CONNECT_GET_LIB_VERSION)
    server.receive(call)
    [answer] = sent.take()
    assert (answer.header.serial, answer.header.status) == (other, MessageStatus.OK)
    assert sent.dropped is None


# Volume definitions a parser refuses: cut short, malformed, holding a byte that is not
# UTF-8 (with or without a declaration naming an encoding that has it), without a name,
# another definition's, and one whose capacity is no number.
BAD_DEFINITIONS = (
    "<volume><name>w</name>",
    "<volume><name>w</name><capacity>1</capacity></volume",
    "<volume><name>w\udcff</name><capacity>1</capacity></volume>",
    "<?xml version='1.0' encoding='latin1'?><volume><name>w\udcff</name></volume>",
    "<volume><capacity>1</capacity></volume>",
    "<pool><name>w</name><capacity>1</capacity></pool>",
    "<volume><name>w</name><capacity>many</capacity></volume>",
)


async def _refusals_of_bad_definitions(conn: virtvol.client.Connection) -> list[str]:
    """Each refusal's code, domain and message up to its line number (the parsers' words
    differ past it)."""
    pool = await conn.lookup_pool_by_name("default")
    answers = []
    for xml in BAD_DEFINITIONS:
        with pytest.raises(LibvirtError) as refused:
            await pool.create_volume(xml)
        error = refused.value
        answers.append(f"{error.code} {error.domain} {':'.join(error.message.split(':')[:2])}")
    return answers


async def test_bad_definitions_are_refused_as_virtvold_refuses_them(virtvold: Virtvold) -> None:
    """The in-memory daemon answered malformed XML with VIR_ERR_XML_ERROR without the
    document's name and line, took a definition's bytes by its encoding declaration, and
    failed the call with an uncaught exception over a byte that is not UTF-8."""
    async with memory_daemon(pools={"default": {}}) as conn:
        ours = await _refusals_of_bad_definitions(conn)
    async with virtvol.client.connect(virtvold.tcp_uri) as conn:
        assert ours == await _refusals_of_bad_definitions(conn)


async def test_a_call_the_daemon_fails_on_is_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call whose handler fails with an exception other than a libvirt error (a fault of
    the in-memory daemon's own) is answered with an internal error, as virtvold answers
    one, instead of being left unanswered, the client waiting forever."""

    def fails(_element: object) -> int:
        raise RuntimeError("a fault")

    monkeypatch.setattr(memory_server, "_size", fails)
    async with memory_daemon(pools={"default": {}}) as conn:
        pool = await conn.lookup_pool_by_name("default")
        with pytest.raises(LibvirtError) as failed:
            await pool.create_volume(virtvol.client.volume_xml("w", 1))
        assert (failed.value.code, failed.value.domain) == (
            ErrorCode.INTERNAL_ERROR,
            ErrorDomain.RPC,
        )
        assert failed.value.message == "internal error: STORAGE_VOL_CREATE_XML failed: a fault"
        assert await pool.num_of_volumes() == 0
