"""Frames a real client never sends: huge offsets and holes, calls to server-only procedures.

Each gets libvirt's error on the wire (or a stream error), never a client left
waiting, and the log gets at most one line per connection for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import urllib.parse
from typing import TYPE_CHECKING

import pytest

from tests.conftest import ReferenceLibvirtd, Virtvold
from tests.daemon.conftest import (
    RawClient,
    error_of,
    raw_client,
    shared_volume_file,
    storage_driver_uri,
)
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived, StreamFailed, StreamFinished
from virtvol.protocol.constants import (
    REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.frames import FrameReader, Header, encode_frame
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from virtvol.protocol.connection import Event
    from virtvol.protocol.xdr import XdrStruct

MIB = 1 << 20
SYSTEM_ERROR, STREAMS_DOMAIN = 38, 38
RPC_ERROR, RPC_DOMAIN = 39, 7
INTERNAL_ERROR, URI_DOMAIN = 1, 45
XML_DETAIL, STORAGE_DOMAIN, SECRET_DOMAIN = 35, 18, 30
QEMU_PROGRAM = 0x20008087


@pytest.mark.parametrize("procedure", [Proc.STORAGE_VOL_UPLOAD, Proc.STORAGE_VOL_DOWNLOAD])
@pytest.mark.parametrize("offset", [1 << 63, (1 << 64) - 1])
async def test_offset_past_2_63_is_refused_like_libvirtd(
    virtvold: Virtvold, procedure: Proc, offset: int
) -> None:
    (virtvold.pool_dir / "vol").write_bytes(b"old")
    async with raw_client(virtvold.port) as client:
        vol = await client.volume("vol")
        args = r.VolTransferArgs(vol=vol, offset=offset, length=0, flags=0)
        # libvirtd 9.0 seeks the file first and reports exactly this.
        path = virtvold.pool_dir / "vol"
        assert error_of(await client.call(procedure, args)) == (
            SYSTEM_ERROR,
            STREAMS_DOMAIN,
            f"Unable to seek {path} to {offset}: Invalid argument",
        )
        # Nothing was left open: the volume takes a whole upload again.
        upload = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
        reply = await client.call(Proc.STORAGE_VOL_UPLOAD, upload)
        assert isinstance(reply, ReplyReceived)
        client.send(client.rpc.send_abort(reply.serial))
    assert (virtvold.pool_dir / "vol").read_bytes() == b"old"


@pytest.mark.parametrize(("data", "hole"), [(10, (1 << 63) - 5), (0, (1 << 63) - 1)])
async def test_hole_ending_past_the_largest_offset_fails_the_stream(
    virtvold: Virtvold, data: int, hole: int
) -> None:
    (virtvold.pool_dir / "vol").write_bytes(b"old")
    async with raw_client(virtvold.port) as client:
        serial = await client.open_upload("vol")
        if data:
            client.send(*client.rpc.send_data(serial, b"y" * data))
        client.send(client.rpc.send_hole(serial, hole))
        client.send(*client.rpc.send_data(serial, b"z" * 10))
        client.send(client.rpc.send_finish(serial))
        event = await client.next_event(wait=10)  # a hang fails here
        assert isinstance(event, StreamFailed), event
        assert event.error.code == SYSTEM_ERROR
        assert event.error.message == "cannot write to stream: File too large"
        # The connection goes on, and the volume is free and unchanged.
        client.send(client.rpc.send_abort(await client.open_upload("vol")))
    assert (virtvold.pool_dir / "vol").read_bytes() == b"old"
    assert "Traceback" not in virtvold.log_text()


@pytest.mark.parametrize("with_args", [True, False])
async def test_server_only_and_unknown_procedures_log_once(
    virtvold: Virtvold, with_args: bool
) -> None:
    event_args = r.ConnectEventConnectionClosedMsg(reason=1) if with_args else None
    async with raw_client(virtvold.port) as client:
        for _ in range(300):
            for number, args in ((362, event_args), (100_000, None)):
                _, frame = client.rpc.call(number, args)
                client.send(frame)
            # Misdirected: a storage procedure called on another program (QEMU's).
            _, frame = client.rpc.call(Proc.CONNECT_GET_TYPE, program=QEMU_PROGRAM)
            client.send(frame)
        replies = 0
        while replies < 900:
            event = await client.next_event()
            assert event is not None
            assert error_of(event)[:2] == (RPC_ERROR, RPC_DOMAIN)
            assert str(error_of(event)[2]).startswith(
                ("unknown procedure: ", f"Cannot find program {QEMU_PROGRAM} version 1")
            )
            replies += 1
        assert isinstance(await client.call(Proc.CONNECT_GET_TYPE), ReplyReceived)
    await asyncio.sleep(0.2)
    log = virtvold.log_text()
    assert "Traceback" not in log
    assert log.count("refused procedure") == 1


async def test_a_second_connection_gets_its_own_log_line(virtvold: Virtvold) -> None:
    for _ in range(2):
        client = await RawClient.connect(virtvold.port)
        await client.open()
        for _ in range(3):
            error_of(await client.call(362, r.ConnectEventConnectionClosedMsg(reason=1)))
        await client.close()
    await asyncio.sleep(0.2)
    assert virtvold.log_text().count("refused procedure") == 2


async def test_a_call_reusing_an_open_streams_serial_closes_the_connection(
    virtvold: Virtvold,
) -> None:
    """Downloads opened again and again under one serial would each hold a descriptor
    while the connection saw one stream: past ``max_client_streams`` and the
    descriptor budget. The reuse is a protocol error; every stream is released."""
    (virtvold.pool_dir / "vol").write_bytes(b"x")
    pid = virtvold.process.pid
    async with raw_client(virtvold.port) as client:
        vol = await client.volume("vol")
        baseline = len(os.listdir(f"/proc/{pid}/fd"))
        args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
        reply = await client.call(Proc.STORAGE_VOL_DOWNLOAD, args)
        assert isinstance(reply, ReplyReceived)
        again = Header(
            REMOTE_PROGRAM,
            REMOTE_PROTOCOL_VERSION,
            Proc.STORAGE_VOL_DOWNLOAD,
            MessageType.CALL,
            reply.serial,
            MessageStatus.OK,
        )
        client.send(encode_frame(again, args.encode()))
        # The daemon's first frame of the stream and its EOF may come; a reply to the
        # second call (the client core knows no such call) may not.
        with contextlib.suppress(ConnectionError):
            while await client.next_event() is not None:
                pass
    # Below the baseline: the connection (and its stream) are gone.
    for _ in range(100):
        if len(os.listdir(f"/proc/{pid}/fd")) < baseline:
            break
        await asyncio.sleep(0.05)
    assert len(os.listdir(f"/proc/{pid}/fd")) < baseline
    assert f"protocol error: serial {reply.serial} is already in use" in virtvold.log_text()


@pytest.mark.parametrize(("program", "version"), [(QEMU_PROGRAM, 1), (REMOTE_PROGRAM, 2)])
async def test_stream_frames_of_another_program_or_version_are_not_written(
    virtvold: Virtvold, program: int, version: int
) -> None:
    """A stream is its call's program, version, procedure and serial (libvirtd matches all
    four): a data frame or skip that names the upload's procedure and serial under
    another program or version belongs to no stream and is dropped, not written into the
    volume; alone, or amid the upload's own frames read together."""
    (virtvold.pool_dir / "vol").write_bytes(b"old")
    async with raw_client(virtvold.port) as client:
        serial = await client.open_upload("vol")

        def foreign(kind: MessageType, payload: bytes) -> bytes:
            header = Header(program, version, Proc.STORAGE_VOL_UPLOAD, kind, serial, 2)
            return encode_frame(header, payload)

        data, skip = MessageType.STREAM, MessageType.STREAM_HOLE
        client.send(foreign(data, b"alone"), foreign(skip, r.StreamHole(4, 0).encode()))
        await asyncio.sleep(0.2)  # read on their own, before the upload's own frames
        client.send(
            *client.rpc.send_data(serial, b"new"),
            foreign(data, b"amid"),
            foreign(skip, r.StreamHole(4, 0).encode()),
            *client.rpc.send_data(serial, b" content"),
            client.rpc.send_finish(serial),
        )
        assert isinstance(await client.next_event(), StreamFinished)
    assert (virtvold.pool_dir / "vol").read_bytes() == b"new content"


async def test_calls_sent_after_connect_close_are_not_served(virtvold: Virtvold) -> None:
    """A client that said goodbye gets no more calls served, even those that arrived with
    its CONNECT_CLOSE: libvirtd stops reading the connection once it is closing."""
    (virtvold.pool_dir / "vol").write_bytes(b"old")
    async with raw_client(virtvold.port) as client:
        vol = await client.volume("vol")
        close_serial, close = client.rpc.call(Proc.CONNECT_CLOSE, None)
        _, delete = client.rpc.call(Proc.STORAGE_VOL_DELETE, r.VolFlagsArgs(vol=vol, flags=0))
        client.send(close + delete)
        answered = []
        while (event := await client.next_event()) is not None:
            answered.append(getattr(event, "serial", None))
        assert answered == [close_serial]
    async with raw_client(virtvold.port) as later:
        await later.volume("vol")  # a round trip: the deletion would have been done by now
    assert (virtvold.pool_dir / "vol").read_bytes() == b"old"


@pytest.mark.parametrize("name", ["storage://[/system", "qemu://host]/system", "qemu://[::1/x"])
async def test_a_name_libvirt_cannot_parse_is_refused_in_libvirts_words(
    virtvold: Virtvold, name: str
) -> None:
    """A CONNECT_OPEN name with an unclosed or stray bracket in its host made the URI
    split raise: every connection that sent one, before any authentication, put a
    traceback in the log and heard of an internal failure. libvirtd's parser refuses
    such a name with its own error, and the connection may open afterwards."""
    for _ in range(3):
        async with raw_client(virtvold.port, open_name=None) as client:
            open_args = r.ConnectOpenArgs(name=name, flags=0)
            assert error_of(await client.call(Proc.CONNECT_OPEN, open_args)) == (
                INTERNAL_ERROR,
                URI_DOMAIN,
                f"internal error: Unable to parse URI {name}",
            )
            await client.open()
    assert "Traceback" not in virtvold.log_text()


async def test_xml_that_is_not_utf_8_is_malformed_xml(virtvold: Virtvold) -> None:
    """A byte that is not UTF-8 in a definition (kept by the decoder as a surrogate) made
    the XML parser fail with UnicodeEncodeError: the client heard "internal error" and
    the daemon logged a traceback. libvirtd reports such a document as malformed XML
    (VIR_ERR_XML_DETAIL, storage domain), and so does virtvold now."""
    bad = "\udcff"  # the byte 0xff on the wire
    async with raw_client(virtvold.port) as client:
        default = await _default_pool(client)
        pool_xml = f"<pool type='dir'><name>x{bad}</name><target><path>/x</path></target></pool>"
        volume_xml = f"<volume><name>v{bad}</name><capacity>1</capacity></volume>"
        calls = [
            (
                Proc.STORAGE_POOL_DEFINE_XML,
                r.PoolXmlArgs(xml=pool_xml, flags=0),
                "storage_pool_definition",
                STORAGE_DOMAIN,
            ),
            (
                Proc.STORAGE_VOL_CREATE_XML,
                r.VolCreateXmlArgs(pool=default, xml=volume_xml, flags=0),
                "storage_volume_definition",
                STORAGE_DOMAIN,
            ),
            (
                Proc.SECRET_DEFINE_XML,
                r.SecretXmlArgs(xml=f"<secret>{bad}</secret>", flags=0),
                "definition_of_secret",  # libvirtd's secret driver names it so
                SECRET_DOMAIN,
            ),
            (  # read by its declaration, which names no encoding known
                Proc.STORAGE_POOL_DEFINE_XML,
                r.PoolXmlArgs(xml=f"<?xml version='1.0' encoding='bogus'?>{pool_xml}", flags=0),
                "storage_pool_definition",
                STORAGE_DOMAIN,
            ),
        ]
        for procedure, args, source, expected_domain in calls:
            code, domain, message = error_of(await client.call(procedure, args))
            assert (code, domain) == (XML_DETAIL, expected_domain), message
            assert str(message).startswith(f"({source}):1: "), message
    assert "Traceback" not in virtvold.log_text()
    assert list(virtvold.pool_dir.iterdir()) == []


@pytest.mark.parametrize("procedure", [Proc.STORAGE_VOL_UPLOAD, Proc.STORAGE_VOL_DOWNLOAD])
@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
async def test_a_stream_frame_of_an_unknown_status_aborts_that_stream_only(
    request: pytest.FixtureRequest, daemon: str, procedure: Proc
) -> None:
    """libvirtd takes a client's stream frame with a status it does not know for an abort
    it answers with an error, and serves the connection on; virtvold dropped it."""
    peer = request.getfixturevalue(daemon)
    shared_volume_file(peer.pool_dir, "vol", b"old")
    name = storage_driver_uri(daemon)
    async with raw_client(peer.port, open_name=name) as client:
        await client.refresh_pool()
        vol = await client.volume("vol")
        args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
        opened = await client.call(procedure, args)
        assert isinstance(opened, ReplyReceived)
        header = Header(
            REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, procedure, MessageType.STREAM, opened.serial, 7
        )
        client.send(encode_frame(header, b""))
        while True:
            event = await client.next_event()
            assert event is not None, "the connection was dropped"
            if isinstance(event, StreamFailed):
                break
        assert (event.error.code, event.error.domain, event.error.message) == (
            39,
            STREAMS_DOMAIN,
            "stream aborted with unexpected status 7",
        )
        again = await client.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS)
        assert isinstance(again, ReplyReceived), again
    assert (peer.pool_dir / "vol").read_bytes() == b"old"


@pytest.mark.parametrize("end", ["finish", "abort"])
@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
async def test_a_finish_or_abort_with_a_payload_is_a_finish_or_an_abort(
    request: pytest.FixtureRequest, daemon: str, end: str
) -> None:
    """libvirtd reads a client's STREAM/OK or STREAM/ERROR by its status, whatever bytes it
    carries, and answers it as it answers any finish or abort; virtvold dropped the
    connection (and the upload with it)."""
    peer = request.getfixturevalue(daemon)
    shared_volume_file(peer.pool_dir, "vol", b"old")
    name = storage_driver_uri(daemon)
    async with raw_client(peer.port, open_name=name) as client:
        await client.refresh_pool()
        vol = await client.volume("vol")
        upload = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
        opened = await client.call(Proc.STORAGE_VOL_UPLOAD, upload)
        assert isinstance(opened, ReplyReceived)
        serial = opened.serial
        client.send(*client.rpc.send_data(serial, b"new"))
        # Our state machine records the end; the frame that goes carries bytes besides.
        if end == "finish":
            client.rpc.send_finish(serial)
            status = MessageStatus.OK
        else:
            client.rpc.send_abort(serial)
            status = MessageStatus.ERROR
        header = Header(
            REMOTE_PROGRAM,
            REMOTE_PROTOCOL_VERSION,
            Proc.STORAGE_VOL_UPLOAD,
            MessageType.STREAM,
            serial,
            status,
        )
        client.send(encode_frame(header, b"junk"))
        assert await client.next_event() == StreamFinished(serial)
        again = await client.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS)
        assert isinstance(again, ReplyReceived), again
    if end == "finish":
        assert (peer.pool_dir / "vol").read_bytes() == b"new"


@pytest.mark.parametrize("status", [MessageStatus.OK, MessageStatus.ERROR, 7])
@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
async def test_a_skip_is_a_skip_whatever_its_status(
    request: pytest.FixtureRequest, daemon: str, status: int
) -> None:
    """libvirtd reads a skip frame (STREAM_HOLE) by its type and length, not its status;
    virtvold dropped the connection and the upload with it."""
    peer = request.getfixturevalue(daemon)
    shared_volume_file(peer.pool_dir, "vol", b"old")
    name = storage_driver_uri(daemon)
    async with raw_client(peer.port, open_name=name) as client:
        await client.refresh_pool()
        serial = await client.open_upload("vol")
        client.send(*client.rpc.send_data(serial, b"new"))
        client.rpc.send_hole(serial, 5)  # recorded; the frame that goes has another status
        header = Header(
            REMOTE_PROGRAM,
            REMOTE_PROTOCOL_VERSION,
            Proc.STORAGE_VOL_UPLOAD,
            MessageType.STREAM_HOLE,
            serial,
            status,
        )
        client.send(encode_frame(header, r.StreamHole(5).encode()))
        client.send(*client.rpc.send_data(serial, b"end"))
        client.send(client.rpc.send_finish(serial))
        assert await client.next_event() == StreamFinished(serial)
        again = await client.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS)
        assert isinstance(again, ReplyReceived), again
    assert (peer.pool_dir / "vol").read_bytes() == b"new" + bytes(5) + b"end"


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("finish", "finish"),
        ("finish", "abort"),
        ("finish", "data"),
        ("abort", "abort"),
        ("abort", "finish"),
    ],
)
@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
async def test_frames_after_the_clients_end_of_a_stream_are_dropped(
    request: pytest.FixtureRequest, daemon: str, first: str, then: str
) -> None:
    """Once the client finished or aborted an upload, libvirtd drops what else the client
    sends on it (a second finish, an abort, data) and answers the first; virtvold dropped
    the connection, and a finished upload with it."""
    peer = request.getfixturevalue(daemon)
    shared_volume_file(peer.pool_dir, "vol", b"old")
    name = storage_driver_uri(daemon)

    def frame(serial: int, what: str) -> bytes:
        status = {"finish": MessageStatus.OK, "abort": MessageStatus.ERROR}.get(
            what, MessageStatus.CONTINUE
        )
        header = Header(
            REMOTE_PROGRAM,
            REMOTE_PROTOCOL_VERSION,
            Proc.STORAGE_VOL_UPLOAD,
            MessageType.STREAM,
            serial,
            status,
        )
        return encode_frame(header, b"late" if what == "data" else b"")

    async with raw_client(peer.port, open_name=name) as client:
        await client.refresh_pool()
        serial = await client.open_upload("vol", flags=0)
        client.send(*client.rpc.send_data(serial, b"new"))
        ended = (
            client.rpc.send_finish(serial) if first == "finish" else client.rpc.send_abort(serial)
        )
        client.send(ended, frame(serial, then))
        assert await client.next_event() == StreamFinished(serial)
        again = await client.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS)
        assert isinstance(again, ReplyReceived), again
    if first == "finish":
        assert (peer.pool_dir / "vol").read_bytes() == b"new"


async def _frames_until(
    client: RawClient, reader: FrameReader, last: Callable[[Header], bool]
) -> list[str]:
    """The frames the daemon sends up to the one ``last`` picks (or the connection's
    end), each as its header and any error it carries."""
    seen = []
    async with asyncio.timeout(10):
        while True:
            for frame in reader:
                header = frame.header
                text = header.describe()
                if header.status == MessageStatus.ERROR and frame.payload:
                    text += f" {r.RemoteError.decode(frame.payload)!r}"
                seen.append(text)
                if last(header):
                    return seen
            try:
                data = await client.reader.read(1 << 20)
            except ConnectionError:  # the daemon closed with our bytes unread
                data = b""
            if not data:
                return [*seen, "connection closed"]
            reader.feed(data)


FrameSpec = tuple[int, int, bytes]  # type, status, payload of a frame of an upload


def _upload_frame(serial: int, kind: int, status: int, payload: bytes = b"") -> bytes:
    header = Header(
        REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, Proc.STORAGE_VOL_UPLOAD, kind, serial, status
    )
    return encode_frame(header, payload)


async def _odd_upload_then_another(
    peer: Virtvold | ReferenceLibvirtd,
    *,
    with_call: Sequence[FrameSpec] = (),
    after_reply: Sequence[FrameSpec] = (),
) -> str:
    """Open a sparse upload into "vol" of ``peer``, sending the frames ``with_call`` right
    behind the call and ``after_reply`` once it is answered; then send data and a
    finish on it and upload into "other" on the same connection. What the daemon sent
    back from the upload's reply on, in no order (the first upload's end and the second's
    reply race in both), the serials being the same on both daemons (the calls are)."""
    for volume in ("vol", "other"):
        shared_volume_file(peer.pool_dir, volume, b"old")
    name = "storage:///system" if isinstance(peer, Virtvold) else "storage:///session"

    def on_stream(specs: Sequence[FrameSpec], serial: int) -> bytes:
        return b"".join(_upload_frame(serial, *spec) for spec in specs)

    async with raw_client(peer.port, open_name=name) as client:
        await client.refresh_pool()
        vol, other_vol = [await client.volume(volume) for volume in ("vol", "other")]
        # From here on the frames are read raw: libvirtd's answers include a reply to a
        # call the client core no longer waits for.
        reader = FrameReader()
        serial, call = client.rpc.call(
            Proc.STORAGE_VOL_UPLOAD, r.VolTransferArgs(vol=vol, offset=0, length=0, flags=1)
        )
        client.send(call + on_stream(with_call, serial))
        seen = await _frames_until(client, reader, lambda h: h.type == MessageType.REPLY)
        client.send(
            on_stream(after_reply, serial),
            _upload_frame(serial, MessageType.STREAM, MessageStatus.CONTINUE, b"after"),
            _upload_frame(serial, MessageType.STREAM, MessageStatus.OK),
        )
        other, call = client.rpc.call(
            Proc.STORAGE_VOL_UPLOAD, r.VolTransferArgs(vol=other_vol, offset=0, length=0, flags=1)
        )
        client.send(call)
        # Until both uploads ended: the first by its finish's answer or an error reply
        # (whichever it gets), the second by its finish's answer.
        ended: set[int] = set()

        def note_end(header: Header) -> None:
            if header.type == MessageType.STREAM or header.status == MessageStatus.ERROR:
                ended.add(header.serial)

        def replied_to_other(header: Header) -> bool:
            note_end(header)
            return header.serial == other

        def both_ended(header: Header) -> bool:
            note_end(header)
            return ended >= {serial, other}

        seen += await _frames_until(client, reader, replied_to_other)
        if seen[-1] != "connection closed":
            client.send(
                _upload_frame(other, MessageType.STREAM, MessageStatus.CONTINUE, b"x"),
                _upload_frame(other, MessageType.STREAM, MessageStatus.OK),
            )
            seen += await _frames_until(client, reader, both_ended)
    return "\n".join(sorted(seen))


def _skip(payload: bytes) -> FrameSpec:
    return (MessageType.STREAM_HOLE, MessageStatus.CONTINUE, payload)


_DATA = (MessageType.STREAM, MessageStatus.CONTINUE, b"new")


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([_skip(struct.pack(">qI", 0, 0))], id="length-0"),
        pytest.param([_skip(struct.pack(">qI", -1, 0))], id="negative-length"),
        pytest.param([_skip(struct.pack(">qI", 5, 1))], id="flags"),
        pytest.param([_skip(struct.pack(">q", 5))], id="short"),
        # Data first: libvirtd writes in place where virtvold replaces the volume.
        pytest.param([_DATA, _skip(struct.pack(">qI", 5, 0) + b"more")], id="long"),
    ],
)
async def test_an_odd_skip_gets_what_libvirtd_answers(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd, frames: list[FrameSpec]
) -> None:
    """libvirtd answers a skip it cannot apply (length not above zero, flags) with an
    error REPLY on the stream's serial, drops the stream (its finish goes unanswered)
    and serves the connection on; it reads a skip's two words whatever follows them,
    and closes the connection over fewer bytes. virtvold dropped the connection over
    all of them."""
    seen = {
        daemon: await _odd_upload_then_another(peer, after_reply=frames)
        for daemon, peer in (("libvirtd", reference_libvirtd), ("virtvold", virtvold))
    }
    assert seen["virtvold"] == seen["libvirtd"]
    for volume in ("vol", "other"):
        written = [(peer.pool_dir / volume).read_bytes() for peer in (reference_libvirtd, virtvold)]
        assert written[1] == written[0], volume


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([_DATA], id="data"),
        pytest.param([_skip(struct.pack(">qI", 3, 0))], id="skip"),
        pytest.param([(MessageType.STREAM, MessageStatus.OK, b"")], id="finish"),
    ],
)
async def test_stream_frames_before_the_reply_are_dropped_like_libvirtd(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd, frames: list[FrameSpec]
) -> None:
    """libvirtd sets up an upload's stream while it serves the call: frames the client
    sends behind the call find no stream and are dropped, and the upload goes on.
    virtvold dropped the connection. (A refused skip there is dropped too; libvirtd's
    answer to it depends on which of its threads wins, so it is not compared.)"""
    seen = {
        daemon: await _odd_upload_then_another(peer, with_call=frames)
        for daemon, peer in (("libvirtd", reference_libvirtd), ("virtvold", virtvold))
    }
    assert seen["virtvold"] == seen["libvirtd"]
    # libvirtd may write a frame that lands after its stream was set up, just before
    # the reply went (a race of its threads); virtvold never does.
    assert (virtvold.pool_dir / "vol").read_bytes() == b"after"


async def _answers_to_names_with_nul(peer: Virtvold | ReferenceLibvirtd) -> list[str]:
    """What ``peer`` answers to lookups, creates, a clone and a delete whose names and
    paths hold a NUL byte; then what the pool's folder and the folder above it hold."""
    pool_dir = peer.pool_dir
    (pool_dir / "vol").write_bytes(b"old")
    os.chmod(pool_dir / "vol", 0o666)  # the reference libvirtd runs as nobody
    name = "storage:///system" if isinstance(peer, Virtvold) else "storage:///session"
    answers = []
    async with raw_client(peer.port, open_name=name) as client:
        pool = await _default_pool(client)
        await client.call(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(pool=pool, flags=0))
        cut_pool = r.StoragePool(name="default\0/..", uuid=pool.uuid)
        escaping = r.StorageVol(pool="default\0x", name="vol\0/../x", key="k\0")

        def volume_xml(name: str) -> str:
            return f"<volume><name>{name}</name><capacity>1</capacity></volume>"

        calls: list[tuple[Proc, XdrStruct]] = [
            (Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs("default\0junk")),
            (Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs("nope\0junk")),
            (Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs("\0default")),
            (Proc.STORAGE_VOL_LOOKUP_BY_NAME, r.VolLookupByNameArgs(pool, "vol\0junk")),
            (Proc.STORAGE_VOL_LOOKUP_BY_NAME, r.VolLookupByNameArgs(pool, "nope\0/../vol")),
            (Proc.STORAGE_VOL_LOOKUP_BY_NAME, r.VolLookupByNameArgs(cut_pool, "vol")),
            (Proc.STORAGE_VOL_LOOKUP_BY_PATH, r.VolLookupByPathArgs(f"{pool_dir}/vol\0/x")),
            (Proc.STORAGE_VOL_LOOKUP_BY_KEY, r.VolLookupByKeyArgs(f"{pool_dir}/vol\0/x")),
            (Proc.STORAGE_VOL_GET_PATH, r.VolArgs(escaping)),
            (Proc.STORAGE_VOL_CREATE_XML, r.VolCreateXmlArgs(pool, volume_xml("a\0/../x"), 0)),
            (Proc.STORAGE_VOL_CREATE_XML, r.VolCreateXmlArgs(pool, volume_xml("b") + "\0x", 0)),
            (
                Proc.STORAGE_VOL_CREATE_XML,
                r.VolCreateXmlArgs(pool, "<volume>\n  <name>d\0</name></volume>", 0),
            ),
            (
                Proc.STORAGE_VOL_CREATE_XML,
                r.VolCreateXmlArgs(pool, "<volume>\n  <name>d</name>\n\0</volume>", 0),
            ),
            (
                Proc.STORAGE_VOL_CREATE_XML_FROM,
                r.VolCreateXmlFromArgs(pool, volume_xml("c"), escaping, 0),
            ),
            (
                Proc.STORAGE_POOL_DEFINE_XML,
                r.PoolXmlArgs(
                    "<pool type='dir'><name>p\0/../x</name><target><path>/x</path></target></pool>",
                    0,
                ),
            ),
            (
                Proc.STORAGE_VOL_DELETE,
                r.VolFlagsArgs(r.StorageVol("default", "b\0/../vol", "k"), 0),
            ),
            # Names and paths a NUL leaves empty: they name no pool, volume or folder.
            (Proc.STORAGE_VOL_LOOKUP_BY_NAME, r.VolLookupByNameArgs(pool, "\0vol")),
            (Proc.STORAGE_VOL_LOOKUP_BY_PATH, r.VolLookupByPathArgs(f"\0{pool_dir}/vol")),
            (Proc.STORAGE_VOL_LOOKUP_BY_KEY, r.VolLookupByKeyArgs("\0k")),
            (
                Proc.STORAGE_POOL_LOOKUP_BY_TARGET_PATH,
                r.PoolLookupByTargetPathArgs(f"\0{pool_dir}"),
            ),
            (Proc.STORAGE_VOL_GET_PATH, r.VolArgs(r.StorageVol("default", "\0vol", "k"))),
            (Proc.STORAGE_VOL_GET_INFO, r.VolArgs(r.StorageVol("\0default", "vol", "k"))),
            (Proc.STORAGE_POOL_LOOKUP_BY_VOLUME, r.VolArgs(r.StorageVol("\0default", "", ""))),
            (Proc.STORAGE_VOL_DELETE, r.VolFlagsArgs(r.StorageVol("default", "\0vol", "k"), 0)),
        ]
        for procedure, args in calls:
            event = await client.call(procedure, args)
            if isinstance(event, ReplyReceived):
                answers.append(f"{procedure.name}: {event.result!r}")
                continue
            answers.append(f"{procedure.name}: {error_of(event)}")
    return [
        *(
            answer.replace(str(pool_dir), "POOL").replace(repr(pool.uuid), "UUID")
            for answer in answers
        ),
        f"pool: {sorted(os.listdir(pool_dir))}",
        f"above: {sorted(os.listdir(pool_dir.parent))}",
    ]


async def test_names_are_read_up_to_their_first_nul_like_libvirtd(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd
) -> None:
    """libvirtd's C code reads a call's strings up to their first NUL byte: "vol\\0junk"
    finds "vol", a pool "default\\0/.." is "default", a volume "a\\0/../x" in a
    definition cuts the XML short (malformed), and nothing lands outside the pool.
    virtvold kept the whole string: lookups failed, naming the NUL in the message."""
    libvirtd = await _answers_to_names_with_nul(reference_libvirtd)
    ours = await _answers_to_names_with_nul(virtvold)
    assert ours[:-1] == libvirtd[:-1]
    # Each daemon keeps its own files beside the pool; none of them is a volume's.
    assert "x" not in ours[-1]


async def _answers_to_a_call_with_descriptors(
    peer: Virtvold | ReferenceLibvirtd, transport: str, descriptors: bytes
) -> list[str]:
    """Send CONNECT_NUM_OF_STORAGE_POOLS as a CALL_WITH_FDS whose payload is
    ``descriptors`` (the count, if any; no descriptor goes beside it), then the same
    call plainly: what comes back until both are answered or the end, in order of
    serial (libvirtd's workers may answer the second call first)."""
    if transport == "tcp":
        client = await RawClient.connect(peer.port)
    else:
        socket_path = urllib.parse.parse_qs(urllib.parse.urlsplit(peer.unix_uri).query)["socket"]
        client = RawClient(*await asyncio.open_unix_connection(socket_path[0]))
    try:
        await client.open(
            "storage:///system" if isinstance(peer, Virtvold) else "storage:///session"
        )
        with_fds, call = client.rpc.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS)
        header = Header(
            REMOTE_PROGRAM,
            REMOTE_PROTOCOL_VERSION,
            Proc.CONNECT_NUM_OF_STORAGE_POOLS,
            MessageType.CALL_WITH_FDS,
            with_fds,
            MessageStatus.OK,
        )
        plain, call = client.rpc.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS)
        client.send(encode_frame(header, descriptors), call)
        answered: set[int] = set()

        def both_answered(header: Header) -> bool:
            answered.add(header.serial)
            return {with_fds, plain} <= answered

        return sorted(await _frames_until(client, FrameReader(), both_answered))
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("transport", "descriptors"),
    [
        ("tcp", struct.pack(">I", 0)),
        ("unix", struct.pack(">I", 0)),
        ("tcp", struct.pack(">I", 1)),
        ("tcp", struct.pack(">I", 99)),
        ("unix", struct.pack(">I", 99)),  # more than libvirt's 32
        ("tcp", b""),
        ("unix", b"\0\0"),
    ],
)
async def test_a_call_with_descriptors_is_answered_like_libvirtd(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd, transport: str, descriptors: bytes
) -> None:
    """libvirtd serves a CALL_WITH_FDS that passes no descriptor as a call, and closes the
    connection over one that passes some on TCP, more than it takes, or no count at all.
    virtvold ignored them all and left the client waiting. (On a Unix socket libvirtd
    waits for the descriptors announced; virtvold, which receives none, closes.)"""
    libvirtd = await _answers_to_a_call_with_descriptors(reference_libvirtd, transport, descriptors)
    ours = await _answers_to_a_call_with_descriptors(virtvold, transport, descriptors)
    assert ours == libvirtd


async def _answers_to_encoding_declarations(peer: Virtvold | ReferenceLibvirtd) -> list[str]:
    """Define a pool (and create one), a volume and a secret from documents whose
    declaration names an encoding no parser knows, or a known one over bytes that are not
    UTF-8: each answer's code, domain and message (the malformed ones' message only up to
    its first colon past the document's name: libxml's words differ from expat's)."""
    bad = "\udcff"  # the byte 0xff on the wire
    ours = isinstance(peer, Virtvold)
    answers: list[str] = []
    async with raw_client(
        peer.port, open_name="storage:///system" if ours else "storage:///session"
    ) as client:
        pool = await _default_pool(client)
        for encoding, text in (("bogus", ""), ("ebcdic", bad), ("latin1", bad)):
            declaration = f"<?xml version='1.0' encoding='{encoding}'?>"
            pool_xml = (
                f"{declaration}<pool type='dir'><name>p-{encoding}</name>"
                f"<target><path>/nonexistent/{encoding}{text}</path></target></pool>"
            )
            volume_xml = (
                f"{declaration}<volume><name>v-{encoding}</name><capacity>1</capacity>"
                f"<target><path>{text}</path></target></volume>"
            )
            calls = [
                (Proc.STORAGE_POOL_DEFINE_XML, r.PoolXmlArgs(xml=pool_xml, flags=0)),
                (Proc.STORAGE_POOL_CREATE_XML, r.PoolXmlArgs(xml=pool_xml, flags=0)),
                (
                    Proc.STORAGE_VOL_CREATE_XML,
                    r.VolCreateXmlArgs(pool=pool, xml=volume_xml, flags=0),
                ),
            ]
            for procedure, args in calls:
                answer = _xml_answer(await client.call(procedure, args))
                answers.append(f"{procedure.name} {encoding}: {answer}")
    async with raw_client(
        peer.port, open_name="secret:///system" if ours else "secret:///session"
    ) as client:
        for encoding, text in (("bogus", ""), ("ebcdic", bad), ("latin1", bad)):
            secret_xml = (
                f"<?xml version='1.0' encoding='{encoding}'?>"
                f"<secret><description>{text}</description></secret>"
            )
            defined = await client.call(
                Proc.SECRET_DEFINE_XML, r.SecretXmlArgs(xml=secret_xml, flags=0)
            )
            answers.append(f"SECRET_DEFINE_XML {encoding}: {_xml_answer(defined)}")
    return answers


def _xml_answer(event: Event) -> str:
    if isinstance(event, ReplyReceived):
        return "taken"
    code, domain, message = error_of(event)
    assert message is not None
    if "Unsupported encoding" not in message:
        message = ":".join(message.split(":")[:2])
    return f"{code} {domain} {message!r}"


async def test_encoding_declarations_are_read_like_libvirtd(
    virtvold: Virtvold, reference_libvirtd_with_secrets: ReferenceLibvirtd
) -> None:
    """libvirtd reads every definition as UTF-8 and refuses one whose declaration names an
    encoding it does not know, whatever the text, with "Unsupported encoding NAME", an
    excerpt and a pointer, in the domain of the driver that reads it. virtvold read the
    bytes by the declaration: it took such a document when it held only UTF-8, refused a
    secret's in the storage domain, and read bytes that are not UTF-8 as Latin-1 when the
    declaration said so, where libvirtd refuses them as malformed."""
    libvirtd = await _answers_to_encoding_declarations(reference_libvirtd_with_secrets)
    ours = await _answers_to_encoding_declarations(virtvold)
    assert ours == libvirtd
    assert "Traceback" not in virtvold.log_text()


# Declarations libxml reads in ways a regular expression over the text may miss: a byte
# order mark before the declaration, names libxml knows itself rather than through iconv,
# and spellings of the declaration that are still well-formed.
DECLARATIONS = (
    "\ufeff<?xml version='1.0' encoding='bogus'?>",
    "\ufeff<?xml version='1.0' encoding='ISO-8859-1'?>",
    "\ufeff",
    "<?xml version='1.0' encoding='HTML'?>",
    "<?xml version='1.0' encoding='iso-latin-1'?>",
    "<?xml version='1.0' encoding='ISO-10646-UCS-2'?>",
    "<?xml version='1.0' encoding='ISO-10646-UCS-4'?>",
    '<?xml version="1.0" encoding="bogus" standalone="yes"?>',
    "<?xml\n version = '1.0'\r\n\tencoding =\t'bogus' ?>",
    "<?xml version='1.0' encoding='UTF-16'?>",
    "<?xml version='1.0' encoding='utf8'?>",
    "<?xml version='1.0' encoding='US-ASCII'?>",
    "<?xml version='1.0' encoding='" + "a" * 10_000 + "'?>",
    "<?xml version='1.0'?>",
    "",
)


async def _answers_to_declarations(peer: Virtvold | ReferenceLibvirtd) -> list[str]:
    """Create a volume named with a character that is not ASCII from a document opening
    with each of ``DECLARATIONS``: the name it got, or the error's code, domain and
    message (for an unknown encoding; else up to its first colon past the document's
    name: libxml's words differ from expat's)."""
    ours = isinstance(peer, Virtvold)
    answers: list[str] = []
    async with raw_client(
        peer.port, open_name="storage:///system" if ours else "storage:///session"
    ) as client:
        default = await _default_pool(client)
        for number, declaration in enumerate(DECLARATIONS):
            xml = f"{declaration}<volume><name>d{number}-é</name><capacity>1</capacity></volume>"
            created = await client.call(
                Proc.STORAGE_VOL_CREATE_XML,
                r.VolCreateXmlArgs(pool=default, xml=xml, flags=0),
            )
            if isinstance(created, ReplyReceived):
                assert isinstance(created.result, r.VolRet)
                answers.append(f"{number}: named {created.result.vol.name!r}")
            else:
                answers.append(f"{number}: {_xml_answer(created)}")
    return answers


async def test_declarations_libxml_reads_its_own_way_are_answered_like_libvirtd(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd
) -> None:
    """libxml skips a byte order mark before the declaration and then checks the encoding
    it names, and knows some names iconv does not (HTML, ISO-LATIN-1, ISO-10646-UCS-2 and
    -4): virtvold took a document with a byte order mark and an unknown encoding, and
    refused those names."""
    libvirtd = await _answers_to_declarations(reference_libvirtd)
    ours = await _answers_to_declarations(virtvold)
    assert ours == libvirtd


async def _default_pool(client: RawClient) -> r.StoragePool:
    """The pool "default", looked up by name."""
    found = await client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs("default"))
    assert isinstance(found, ReplyReceived)
    assert isinstance(found.result, r.PoolRet)
    return found.result.pool
