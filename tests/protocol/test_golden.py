"""Golden bytes: real virsh 9.0 and python3-libvirt sessions against libvirtd 9.0.

Every captured frame must split, decode and re-encode to the very same bytes, agree
with tshark's libvirt dissector, and drive both connection roles through the
session with exactly the events the frames stand for.
"""

from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING

import pytest

from tests.protocol.conftest import (
    SESSIONS,
    TsharkFrame,
    golden_bytes,
    joined,
    raw_frame,
    read_frames,
    tshark_frames,
)
from virtvol.protocol.connection import (
    CallReceived,
    Connection,
    ErrorReplyReceived,
    Event,
    PingReceived,
    PongReceived,
    ReplyReceived,
    StreamAbortReceived,
    StreamDataReceived,
    StreamEndReceived,
    StreamFailed,
    StreamFinished,
    StreamFinishReceived,
    StreamHoleReceived,
)
from virtvol.protocol.constants import (
    KEEPALIVE_PROGRAM,
    REMOTE_PROGRAM,
    KeepaliveProcedure,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.frames import Frame, FrameReader
from virtvol.protocol.procedure_names import REMOTE_PROCEDURE_NAMES
from virtvol.protocol.procedures import PROCEDURES
from virtvol.protocol.remote import RemoteError, StreamHole
from virtvol.protocol.stream import Side

if TYPE_CHECKING:
    from collections.abc import Callable

    from virtvol.protocol.xdr import XdrStruct

DIRECTIONS = ("client", "server")

Summary = tuple[int, int, int, int, int, int, int, int | None]


def _summary(frame: Frame) -> Summary:
    header = frame.header
    hole = None
    if header.type == MessageType.STREAM_HOLE:
        hole = StreamHole.decode(frame.payload).length
    return (
        28 + len(frame.payload),
        header.program,
        header.version,
        header.procedure,
        header.type,
        header.serial,
        header.status,
        hole,
    )


def _tshark_summary(line: TsharkFrame) -> Summary:
    return (
        line.length,
        line.program,
        line.version,
        line.procedure,
        line.type,
        line.serial,
        line.status,
        line.hole,
    )


def _payload_struct(frame: Frame, from_client: bool) -> type[XdrStruct] | None:
    """The struct the payload must hold; None where it is empty or raw stream data."""
    header = frame.header
    if header.program != REMOTE_PROGRAM:
        return None
    kind, status = header.type, header.status
    if kind == MessageType.STREAM_HOLE:
        return StreamHole
    if kind == MessageType.STREAM:
        if status == MessageStatus.ERROR and not from_client:
            return RemoteError
        return None
    procedure = PROCEDURES[header.procedure]
    if kind == MessageType.CALL:
        return procedure.args
    if kind == MessageType.REPLY and status == MessageStatus.ERROR:
        return RemoteError
    if kind == MessageType.REPLY:
        return procedure.ret
    raise AssertionError(f"unexpected frame in a capture: {header.describe()}")


@pytest.mark.parametrize("name", SESSIONS)
def test_captured_procedures_are_all_in_the_table(name: str) -> None:
    for line in tshark_frames(name):
        if line.program == REMOTE_PROGRAM:
            assert line.procedure in PROCEDURES, f"{line.procedure_name} missing from PROCEDURES"
            assert PROCEDURES[line.procedure].name == line.procedure_name
            assert REMOTE_PROCEDURE_NAMES[line.procedure] == line.procedure_name
        else:
            assert line.program == KEEPALIVE_PROGRAM
            assert KeepaliveProcedure(line.procedure).name == line.procedure_name
        assert MessageType(line.type).name == line.type_name
        assert MessageStatus(line.status).name == line.status_name


@pytest.mark.parametrize("name", SESSIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_frames_agree_with_tshark(name: str, direction: str) -> None:
    frames = read_frames(golden_bytes(name, direction))
    expected = [
        _tshark_summary(line)
        for line in tshark_frames(name)
        if line.from_client == (direction == "client")
    ]
    assert [_summary(frame) for frame in frames] == expected


@pytest.mark.parametrize("name", SESSIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_frame_heads_reencode_identically(name: str, direction: str) -> None:
    data = golden_bytes(name, direction)
    frames = read_frames(data)
    assert b"".join(raw_frame(frame) for frame in frames) == data


@pytest.mark.parametrize("name", SESSIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_payloads_decode_and_reencode_identically(name: str, direction: str) -> None:
    from_client = direction == "client"
    decoded: set[str] = set()
    for frame in read_frames(golden_bytes(name, direction)):
        payload = bytes(frame.payload)
        struct = _payload_struct(frame, from_client)
        if struct is None:
            is_data = (
                frame.header.type == MessageType.STREAM
                and frame.header.status == MessageStatus.CONTINUE
            )
            if not is_data:
                assert payload == b"", frame.header.describe()
            continue
        value = struct.decode(payload)
        assert type(value) is struct
        assert value.encode() == payload, frame.header.describe()
        decoded.add(struct.__name__)
    # Both captures hold arguments or results of several kinds, and holes.
    assert "StreamHole" in decoded
    assert len(decoded) >= 4


def _feed_in_chunks(data: bytes, sizes: Callable[[], int]) -> list[tuple[object, bytes]]:
    reader = FrameReader()
    view = memoryview(data)
    result: list[tuple[object, bytes]] = []
    while view:
        size = sizes()
        reader.feed(view[:size])
        view = view[size:]
        result.extend((frame.header, bytes(frame.payload)) for frame in reader)
    assert reader.at_frame_boundary()
    return result


def _receive_like_a_transport(data: bytes, rng: random.Random) -> list[tuple[object, bytes]]:
    """get_buffer / buffer_updated as asyncio's BufferedProtocol uses them, partial fills."""
    reader = FrameReader(scratch_size=rng.choice([28, 64, 4096, 16384]))
    result: list[tuple[object, bytes]] = []
    position = 0
    while position < len(data):
        target = reader.get_buffer()
        assert len(target) > 0
        count = min(len(target), len(data) - position, rng.randint(1, 20000))
        target[:count] = data[position : position + count]
        position += count
        reader.buffer_updated(count)
        result.extend((frame.header, bytes(frame.payload)) for frame in reader)
    assert reader.at_frame_boundary()
    return result


@pytest.mark.parametrize("name", SESSIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_chunking_does_not_change_the_frames(name: str, direction: str) -> None:
    data = golden_bytes(name, direction)
    whole = [(frame.header, bytes(frame.payload)) for frame in read_frames(data)]
    assert _feed_in_chunks(data, lambda: 1) == whole
    for seed in range(5):
        rng = random.Random(seed)
        assert _feed_in_chunks(data, functools.partial(rng.randint, 1, 70000)) == whole
        assert _receive_like_a_transport(data, rng) == whole


# -- replaying the sessions through both connection roles ---------------------------


def _keepalive_event(frame: Frame) -> Event:
    procedure = KeepaliveProcedure(frame.header.procedure)
    return PingReceived() if procedure is KeepaliveProcedure.PING else PongReceived()


def _client_event(frame: Frame) -> Event:
    """What a client connection must report for this frame from the server."""
    header = frame.header
    serial, procedure = header.serial, header.procedure
    if header.program == KEEPALIVE_PROGRAM:
        return _keepalive_event(frame)
    if header.type == MessageType.REPLY:
        if header.status == MessageStatus.ERROR:
            return ErrorReplyReceived(serial, procedure, RemoteError.decode(frame.payload))
        ret = PROCEDURES[procedure].ret
        return ReplyReceived(serial, procedure, ret.decode(frame.payload) if ret else None)
    if header.type == MessageType.STREAM_HOLE:
        return StreamHoleReceived(serial, StreamHole.decode(frame.payload).length)
    assert header.type == MessageType.STREAM
    if header.status == MessageStatus.CONTINUE:
        if frame.payload:
            return StreamDataReceived(serial, bytes(frame.payload))
        return StreamEndReceived(serial)
    if header.status == MessageStatus.OK:
        return StreamFinished(serial)
    return StreamFailed(serial, RemoteError.decode(frame.payload))


def _server_event(frame: Frame) -> Event:
    """What a server connection must report for this frame from the client."""
    header = frame.header
    serial = header.serial
    if header.program == KEEPALIVE_PROGRAM:
        return _keepalive_event(frame)
    if header.type == MessageType.CALL:
        procedure = PROCEDURES[header.procedure]
        args = procedure.args.decode(frame.payload) if procedure.args else None
        return CallReceived(serial, procedure, args)
    if header.type == MessageType.STREAM_HOLE:
        return StreamHoleReceived(serial, StreamHole.decode(frame.payload).length)
    assert header.type == MessageType.STREAM
    if header.status == MessageStatus.CONTINUE:
        return StreamDataReceived(serial, bytes(frame.payload))
    if header.status == MessageStatus.OK:
        return StreamFinishReceived(serial)
    return StreamAbortReceived(serial)


def _keepalive_bytes(connection: Connection, frame: Frame) -> bytes:
    if frame.header.procedure == KeepaliveProcedure.PING:
        return connection.send_ping()
    return connection.send_pong()


def _client_sends(client: Connection, frame: Frame) -> bytes:
    """Make the client produce the captured frame through its public API."""
    header = frame.header
    serial = header.serial
    if header.program == KEEPALIVE_PROGRAM:
        return _keepalive_bytes(client, frame)
    if header.type == MessageType.CALL:
        procedure = PROCEDURES[header.procedure]
        args = procedure.args.decode(frame.payload) if procedure.args else None
        new_serial, data = client.call(header.procedure, args)
        assert new_serial == serial
        return data
    if header.type == MessageType.STREAM_HOLE:
        return client.send_hole(serial, StreamHole.decode(frame.payload).length)
    assert header.type == MessageType.STREAM
    if header.status == MessageStatus.CONTINUE:
        return joined(client.send_data(serial, frame.payload))
    if header.status == MessageStatus.OK:
        return client.send_finish(serial)
    return client.send_abort(serial)


def _server_sends(server: Connection, frame: Frame) -> bytes:
    """Make the server produce the captured frame through its public API."""
    header = frame.header
    serial = header.serial
    if header.program == KEEPALIVE_PROGRAM:
        return _keepalive_bytes(server, frame)
    if header.type == MessageType.REPLY:
        if header.status == MessageStatus.ERROR:
            return server.reply_error(serial, RemoteError.decode(frame.payload))
        ret = PROCEDURES[header.procedure].ret
        return server.reply(serial, ret.decode(frame.payload) if ret else None)
    if header.type == MessageType.STREAM_HOLE:
        return server.send_hole(serial, StreamHole.decode(frame.payload).length)
    assert header.type == MessageType.STREAM
    if header.status == MessageStatus.CONTINUE:
        if frame.payload:
            return joined(server.send_data(serial, frame.payload))
        return server.send_eof(serial)
    if header.status == MessageStatus.OK:
        return server.send_finish_ack(serial)
    return server.send_stream_error(serial, RemoteError.decode(frame.payload))


@pytest.mark.parametrize("name", SESSIONS)
@pytest.mark.parametrize("side", [Side.CLIENT, Side.SERVER])
def test_session_replays_through_a_connection(name: str, side: Side) -> None:
    """Our side re-creates its own frames byte for byte; the peer's frames give the
    events they stand for, in order, and the session ends with nothing open."""
    ours = side is Side.CLIENT
    frames = {
        True: iter(read_frames(golden_bytes(name, "client"))),
        False: iter(read_frames(golden_bytes(name, "server"))),
    }
    connection = Connection(side)
    received: list[type[Event]] = []
    for line in tshark_frames(name):
        frame = next(frames[line.from_client])
        if line.from_client == ours:
            make = _client_sends if ours else _server_sends
            assert make(connection, frame) == raw_frame(frame), frame.header.describe()
            continue
        connection.receive_data(raw_frame(frame))
        expected = _client_event(frame) if ours else _server_event(frame)
        assert connection.events() == [expected], frame.header.describe()
        received.append(type(expected))
    assert next(frames[True], None) is None
    assert next(frames[False], None) is None
    assert not connection.pending_calls()
    assert not connection.streams
    if ours:
        assert {StreamHoleReceived, StreamDataReceived, StreamEndReceived, StreamFinished} <= set(
            received
        )
    else:
        assert {StreamHoleReceived, StreamDataReceived, StreamFinishReceived} <= set(received)
    if name == "virsh-session":
        assert {PingReceived, PongReceived} <= set(received)
