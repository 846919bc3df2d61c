"""The client and server state machines, wired back to back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.protocol.conftest import Pair, joined, read_frames
from virtvol.protocol.connection import (
    CallReceived,
    CallRejected,
    Connection,
    ErrorReplyReceived,
    Event,
    FrameIgnored,
    MessageReceived,
    PingReceived,
    PongReceived,
    ReplyReceived,
    StreamAbortedByStatus,
    StreamAbortReceived,
    StreamDataReceived,
    StreamEndReceived,
    StreamFailed,
    StreamFinished,
    StreamFinishReceived,
    StreamHoleReceived,
    StreamItemsReceived,
    StreamSkipRefused,
    StreamWrittenByClient,
    rpc_error,
)
from virtvol.protocol.constants import (
    KEEPALIVE_PROGRAM,
    QEMU_PROGRAM,
    REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION,
    AuthType,
    KeepaliveProcedure,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.protocol.exceptions import LocalProtocolError, RemoteProtocolError, XdrEncodeError
from virtvol.protocol.frames import Header, Payload, encode_frame
from virtvol.protocol.procedures import PROCEDURES, Proc
from virtvol.protocol.remote import (
    AuthListRet,
    ConnectEventConnectionClosedMsg,
    ConnectSupportsFeatureArgs,
    ConnectSupportsFeatureRet,
    LookupByNameArgs,
    PoolLifecycleEventMsg,
    PoolRefreshEventMsg,
    PoolRet,
    RemoteError,
    StoragePool,
    StorageVol,
    StreamHole,
    VolTransferArgs,
)
from virtvol.protocol.stream import _TRANSITIONS, Side, StreamInput, StreamState

if TYPE_CHECKING:
    from collections.abc import Callable

    from virtvol.protocol.xdr import XdrStruct

UPLOAD = Proc.STORAGE_VOL_UPLOAD
DOWNLOAD = Proc.STORAGE_VOL_DOWNLOAD
VOL = StorageVol(pool="default", name="disk.img", key="/srv/pool/disk.img")
POOL = StoragePool(name="default", uuid=bytes(range(16)))
WRITE_ERROR = RemoteError(
    code=ErrorCode.SYSTEM_ERROR, domain=ErrorDomain.RPC, message="cannot write: No space left"
)


def _open_stream(pair: Pair, procedure: Proc, *, sparse: bool) -> int:
    """CALL and REPLY of a stream procedure; returns the stream's serial."""
    args = VolTransferArgs(vol=VOL, offset=0, length=0, flags=1 if sparse else 0)
    serial, call = pair.client.call(procedure, args)
    assert pair.to_server(call) == [CallReceived(serial, PROCEDURES[procedure], args)]
    assert pair.server.streams[serial].sparse is sparse
    assert pair.client.streams[serial].sparse is sparse
    assert pair.to_client(pair.server.reply(serial)) == [ReplyReceived(serial, procedure, None)]
    return serial


def _header(serial: int, procedure: int, kind: int, status: int) -> Header:
    return Header(REMOTE_PROGRAM, 1, procedure, kind, serial, status)


# -- whole transfers -----------------------------------------------------------------


def test_sparse_upload() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    frames = [
        pair.client.send_hole(serial, 16384),
        joined(pair.client.send_data(serial, b"a" * 4096)),
        pair.client.send_hole(serial, 1 << 40),
        joined(pair.client.send_data(serial, memoryview(b"b" * 100000))),
        pair.client.send_hole(serial, 7),
        pair.client.send_finish(serial),
    ]
    assert pair.to_server(*frames) == [
        StreamHoleReceived(serial, 16384),
        StreamDataReceived(serial, b"a" * 4096),
        StreamHoleReceived(serial, 1 << 40),
        StreamDataReceived(serial, b"b" * 100000),
        StreamHoleReceived(serial, 7),
        StreamFinishReceived(serial),
    ]
    assert pair.to_client(pair.server.send_finish_ack(serial)) == [StreamFinished(serial)]
    assert pair.idle()


def test_sparse_download() -> None:
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    frames = [
        pair.server.send_hole(serial, 16384),
        joined(pair.server.send_data(serial, b"x" * 262120)),
        pair.server.send_hole(serial, 45056),
        pair.server.send_hole(serial, 4096),
        joined(pair.server.send_data(serial, b"y")),
        pair.server.send_hole(serial, 126976),
        pair.server.send_eof(serial),
    ]
    assert pair.to_client(*frames) == [
        StreamHoleReceived(serial, 16384),
        StreamDataReceived(serial, b"x" * 262120),
        StreamHoleReceived(serial, 45056),
        StreamHoleReceived(serial, 4096),
        StreamDataReceived(serial, b"y"),
        StreamHoleReceived(serial, 126976),
        StreamEndReceived(serial),
    ]
    assert pair.client.streams[serial].state is StreamState.EOF_SEEN
    assert pair.to_server(pair.client.send_finish(serial)) == [StreamFinishReceived(serial)]
    assert pair.to_client(pair.server.send_finish_ack(serial)) == [StreamFinished(serial)]
    assert pair.idle()


def test_hole_frame_layout() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    frame = pair.client.send_hole(serial, 61440)
    assert frame == bytes.fromhex(
        "00000028 20008086 00000001 000000d0 00000006 00000000 00000002000000000000f000 00000000"
    )
    (decoded,) = read_frames(frame)
    assert StreamHole.decode(decoded.payload) == StreamHole(61440, 0)


def test_a_batch_of_stream_items_is_the_frames_one_by_one() -> None:
    items: list[bytes | memoryview | int] = [
        16384,
        b"a" * 4096,
        1 << 40,
        memoryview(b"b" * 100000),
        7,
        b"c",
    ]
    one_by_one = Pair()
    serial = _open_stream(one_by_one, UPLOAD, sparse=True)
    expected = b"".join(
        one_by_one.client.send_hole(serial, item)
        if isinstance(item, int)
        else joined(one_by_one.client.send_data(serial, item))
        for item in items
    )
    batched = Pair()
    assert _open_stream(batched, UPLOAD, sparse=True) == serial
    parts = batched.client.send_stream_items(serial, items)
    assert parts[2] is items[1]  # data goes out from the caller's buffer, not a copy
    assert b"".join(parts) == expected
    assert batched.to_server(b"".join(parts)) == [
        StreamHoleReceived(serial, item)
        if isinstance(item, int)
        else StreamDataReceived(serial, item)
        for item in items
    ]
    # From the server too, on a download.
    down = _open_stream(batched, DOWNLOAD, sparse=True)
    assert batched.to_client(b"".join(batched.server.send_stream_items(down, [b"x", 5]))) == [
        StreamDataReceived(down, b"x"),
        StreamHoleReceived(down, 5),
    ]


@pytest.mark.parametrize(
    ("sparse", "items", "refusal"),
    [
        (False, [b"data", 4096], "hole on the non-sparse"),
        (True, [b"data", 0], "positive length"),
        (True, [-1], "positive length"),
        (True, [b"data", b""], "at least one byte"),
    ],
)
def test_a_batch_with_a_refused_item_sends_nothing(
    sparse: bool, items: list[bytes | int], refusal: str
) -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=sparse)
    with pytest.raises(LocalProtocolError, match=refusal):
        pair.client.send_stream_items(serial, items)
    assert pair.client.streams[serial].state is StreamState.OPEN
    frames = [joined(pair.client.send_data(serial, b"ok")), pair.client.send_finish(serial)]
    assert pair.to_server(*frames) == [
        StreamDataReceived(serial, b"ok"),
        StreamFinishReceived(serial),
    ]


def test_a_batch_with_a_hole_too_long_for_the_wire_sends_nothing() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    with pytest.raises(XdrEncodeError, match="out of range for a hyper"):
        pair.client.send_stream_items(serial, [b"data", 1 << 63])
    assert pair.client.send_stream_items(serial, [(1 << 63) - 1]) == [
        pair.client.send_hole(serial, (1 << 63) - 1)
    ]


def test_a_batch_goes_only_where_its_sender_may_send() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    with pytest.raises(LocalProtocolError, match="server may not send data"):
        pair.server.send_stream_items(serial, [b"data"])
    with pytest.raises(LocalProtocolError, match="no open stream"):
        pair.client.send_stream_items(serial + 1, [b"data"])
    assert pair.client.send_stream_items(serial, []) == []


# -- data and skips gathered (gather_stream_items) ---------------------------------------


def _items(events: list[Event]) -> list[bytes | memoryview | int]:
    """The data and skips of ``events``, in order, whichever way they came."""
    items: list[bytes | memoryview | int] = []
    for event in events:
        if isinstance(event, StreamItemsReceived):
            items += event.items
        elif isinstance(event, StreamDataReceived):
            items.append(event.data)
        elif isinstance(event, StreamHoleReceived):
            items.append(event.length)
    return items


def test_data_and_skips_in_a_row_come_as_one_event() -> None:
    pair = Pair(gather_stream_items=True)
    up = _open_stream(pair, UPLOAD, sparse=True)
    frames = [
        joined(pair.client.send_data(up, b"a" * 4096)),
        pair.client.send_hole(up, 61440),
        joined(pair.client.send_data(up, b"b")),
        pair.client.send_hole(up, 7),
        pair.client.send_finish(up),
    ]
    assert pair.to_server(b"".join(frames)) == [
        StreamItemsReceived(up, [b"a" * 4096, 61440, b"b", 7]),
        StreamFinishReceived(up),
    ]
    # A lone frame is its own event, as without gathering; a skip may lead a run.
    down = _open_stream(pair, DOWNLOAD, sparse=True)
    assert pair.to_client(joined(pair.server.send_data(down, b"x"))) == [
        StreamDataReceived(down, b"x")
    ]
    assert pair.to_client(pair.server.send_hole(down, 5)) == [StreamHoleReceived(down, 5)]
    run = [pair.server.send_hole(down, 9), joined(pair.server.send_data(down, b"y"))]
    assert pair.to_client(b"".join(run)) == [StreamItemsReceived(down, [9, b"y"])]


def test_a_run_of_items_ends_where_the_stream_or_the_kind_of_frame_changes() -> None:
    pair = Pair(gather_stream_items=True)
    one = _open_stream(pair, DOWNLOAD, sparse=True)
    two = _open_stream(pair, DOWNLOAD, sparse=True)
    frames = [
        joined(pair.server.send_data(one, b"1")),
        pair.server.send_hole(one, 1),
        joined(pair.server.send_data(two, b"2")),  # another stream
        pair.server.send_hole(two, 2),
        pair.server.send_ping(),  # keepalive in between
        joined(pair.server.send_data(two, b"3")),
        pair.server.send_eof(two),  # the end of the stream
    ]
    assert pair.to_client(b"".join(frames)) == [
        StreamItemsReceived(one, [b"1", 1]),
        StreamItemsReceived(two, [b"2", 2]),
        PingReceived(),
        StreamDataReceived(two, b"3"),
        StreamEndReceived(two),
    ]


@pytest.mark.parametrize("sparse", [False, True])
def test_a_refused_frame_after_a_run_is_refused_after_the_run(sparse: bool) -> None:
    """A skip on a plain stream breaks the connection, a skip of length 0 on a sparse one
    ends the stream: either after the run of data before it."""
    pair = Pair(gather_stream_items=True)
    serial = _open_stream(pair, UPLOAD, sparse=sparse)
    bad_frame = _header(serial, UPLOAD, MessageType.STREAM_HOLE, MessageStatus.CONTINUE)
    payload = StreamHole(4096 if not sparse else 0, 0).encode()
    good = [joined(pair.client.send_data(serial, b"d" * 10)) for _ in range(2)]
    pair.server.receive_data(b"".join(good) + encode_frame(bad_frame, payload))
    assert pair.server.next_event() == StreamItemsReceived(serial, [b"d" * 10] * 2)
    if sparse:
        refused = pair.server.next_event()
        assert isinstance(refused, StreamSkipRefused)
        assert serial not in pair.server.streams
    else:
        with pytest.raises(RemoteProtocolError):
            pair.server.next_event()


def test_gathered_and_single_frames_carry_the_same_items() -> None:
    sizes = [1, 4096, 70000, 3, 262120]
    for gather in (False, True):
        pair = Pair(gather_stream_items=gather)
        serial = _open_stream(pair, UPLOAD, sparse=True)
        frames = b"".join(
            joined(pair.client.send_data(serial, bytes([n]) * size))
            + pair.client.send_hole(serial, size * 2)
            for n, size in enumerate(sizes)
        )
        # Delivered in odd pieces: runs end wherever the received bytes end.
        events: list[Event] = []
        for start in range(0, len(frames), 9999):
            events += pair.to_server(frames[start : start + 9999])
        expected = [x for n, size in enumerate(sizes) for x in (bytes([n]) * size, size * 2)]
        assert [bytes(i) if not isinstance(i, int) else i for i in _items(events)] == expected
        assert any(isinstance(e, StreamItemsReceived) for e in events) is gather


def _outcome(connection: Connection) -> list[object]:
    """What a connection makes of what it received, runs taken apart into their items:
    data, skips, other events, and where a refusal stopped it."""
    outcome: list[object] = []
    while True:
        try:
            event = connection.next_event()
        except RemoteProtocolError as exc:
            return [*outcome, f"refused: {exc}"]
        if event is None:
            return outcome
        if isinstance(event, StreamItemsReceived):
            outcome += [
                ("item", event.serial, bytes(i) if not isinstance(i, int) else i)
                for i in event.items
            ]
        elif isinstance(event, StreamDataReceived):
            outcome.append(("item", event.serial, bytes(event.data)))
        elif isinstance(event, StreamHoleReceived):
            outcome.append(("item", event.serial, event.length))
        else:
            outcome.append(event)


def _odd_frames(serial: int) -> dict[str, bytes]:
    """Frames a run of data and skips of stream ``serial`` (an upload) must stop at."""
    hole = MessageType.STREAM_HOLE
    data = MessageType.STREAM
    more = MessageStatus.CONTINUE
    return {
        "skip of length 0": encode_frame(
            _header(serial, UPLOAD, hole, more), StreamHole(0).encode()
        ),
        "negative skip": encode_frame(_header(serial, UPLOAD, hole, more), StreamHole(-5).encode()),
        "skip with flags": encode_frame(
            _header(serial, UPLOAD, hole, more), StreamHole(5, 1).encode()
        ),
        "short skip payload": encode_frame(_header(serial, UPLOAD, hole, more), b"\0" * 8),
        "long skip payload": encode_frame(
            _header(serial, UPLOAD, hole, more), StreamHole(5).encode() + b"\0" * 4
        ),
        "skip with status OK": encode_frame(
            _header(serial, UPLOAD, hole, MessageStatus.OK), StreamHole(5).encode()
        ),
        "empty data frame": encode_frame(_header(serial, UPLOAD, data, more)),
        "data with status ERROR": encode_frame(
            _header(serial, UPLOAD, data, MessageStatus.ERROR), b"x"
        ),
        "finish": encode_frame(_header(serial, UPLOAD, data, MessageStatus.OK)),
        "finish with a payload": encode_frame(
            _header(serial, UPLOAD, data, MessageStatus.OK), b"x"
        ),
        "abort": encode_frame(_header(serial, UPLOAD, data, MessageStatus.ERROR)),
        "unknown status": encode_frame(_header(serial, UPLOAD, data, 7), b"x"),
        "unknown type": encode_frame(_header(serial, UPLOAD, 9, more), b"x"),
        "call": encode_frame(_header(serial, UPLOAD, MessageType.CALL, MessageStatus.OK)),
        "other procedure": encode_frame(_header(serial, DOWNLOAD, data, more), b"x"),
        "other serial": encode_frame(_header(serial + 7, UPLOAD, data, more), b"x"),
        "other version": encode_frame(Header(REMOTE_PROGRAM, 9, UPLOAD, data, serial, more), b"x"),
        "other program": encode_frame(Header(QEMU_PROGRAM, 1, UPLOAD, data, serial, more), b"x"),
        "keepalive program": encode_frame(
            Header(KEEPALIVE_PROGRAM, 1, UPLOAD, data, serial, more), b"x"
        ),
    }


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("lead", ["data", "skip"])
@pytest.mark.parametrize("odd", list(_odd_frames(0)))
def test_a_gathered_run_takes_and_refuses_what_single_frames_do(
    sparse: bool, lead: str, odd: str
) -> None:
    """The run gathering checks frames by their words, not through ``_handle``: whatever
    follows a run, the items, the events and the refusals are those of the frames one
    by one."""
    outcomes = []
    for gather in (False, True):
        pair = Pair(gather_stream_items=gather)
        serial = _open_stream(pair, UPLOAD, sparse=sparse)
        skip = encode_frame(
            _header(serial, UPLOAD, MessageType.STREAM_HOLE, MessageStatus.CONTINUE),
            StreamHole(4096).encode(),
        )
        data = encode_frame(
            _header(serial, UPLOAD, MessageType.STREAM, MessageStatus.CONTINUE), b"d" * 10
        )
        run = [data, skip] if lead == "data" else [skip, data]
        frames = [*run, *run, _odd_frames(serial)[odd], *run]
        pair.server.receive_data(b"".join(frames))
        outcomes.append(_outcome(pair.server))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]  # the comparison had something to compare


def test_skip_words_are_those_of_the_skip_record() -> None:
    pair = Pair(gather_stream_items=True)
    serial = _open_stream(pair, UPLOAD, sparse=True)
    lengths = [1, 4096, (1 << 63) - 1, 12345678901]
    frames = [pair.client.send_hole(serial, n) for n in lengths]
    items: list[Payload | int] = list(lengths)
    assert pair.to_server(b"".join(frames)) == [StreamItemsReceived(serial, items)]


def test_a_stream_that_takes_a_skip_takes_data() -> None:
    """What gathering relies on: data never needs more than a skip does, and neither
    changes the stream's state."""
    for table in _TRANSITIONS.values():
        for (state, what), after in table.items():
            if what is StreamInput.HOLE:
                assert table[(state, StreamInput.DATA)] is after is state


def test_dense_upload() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=False)
    chunks = [bytes([n]) * 262120 for n in range(3)] + [b"tail"]
    frames = [joined(pair.client.send_data(serial, chunk)) for chunk in chunks]
    assert pair.to_server(*frames) == [StreamDataReceived(serial, chunk) for chunk in chunks]
    with pytest.raises(LocalProtocolError):
        pair.client.send_hole(serial, 4096)
    assert pair.to_server(pair.client.send_finish(serial)) == [StreamFinishReceived(serial)]
    assert pair.to_client(pair.server.send_finish_ack(serial)) == [StreamFinished(serial)]
    assert pair.idle()


def test_dense_download() -> None:
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=False)
    with pytest.raises(LocalProtocolError):
        pair.server.send_hole(serial, 4096)
    frames = [joined(pair.server.send_data(serial, b"d" * size)) for size in (262120, 24, 1)]
    frames.append(pair.server.send_eof(serial))
    assert pair.to_client(*frames) == [
        StreamDataReceived(serial, b"d" * 262120),
        StreamDataReceived(serial, b"d" * 24),
        StreamDataReceived(serial, b"d"),
        StreamEndReceived(serial),
    ]
    assert pair.to_server(pair.client.send_finish(serial)) == [StreamFinishReceived(serial)]
    assert pair.to_client(pair.server.send_finish_ack(serial)) == [StreamFinished(serial)]
    assert pair.idle()


def test_empty_download() -> None:
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    assert pair.to_client(pair.server.send_eof(serial)) == [StreamEndReceived(serial)]
    assert pair.to_server(pair.client.send_finish(serial)) == [StreamFinishReceived(serial)]
    assert pair.to_client(pair.server.send_finish_ack(serial)) == [StreamFinished(serial)]
    assert pair.idle()


def test_data_before_the_reply_reaches_the_client() -> None:
    """libvirtd registers the stream before it queues the REPLY; the client copes."""
    pair = Pair()
    args = VolTransferArgs(vol=VOL, offset=0, length=0, flags=1)
    serial, call = pair.client.call(DOWNLOAD, args)
    pair.to_server(call)
    early = joined(pair.server.send_data(serial, b"early"))
    reply = pair.server.reply(serial)
    assert pair.to_client(early, reply) == [
        StreamDataReceived(serial, b"early"),
        ReplyReceived(serial, DOWNLOAD, None),
    ]


def test_upload_and_download_streams_side_by_side() -> None:
    pair = Pair()
    up = _open_stream(pair, UPLOAD, sparse=True)
    down = _open_stream(pair, DOWNLOAD, sparse=False)
    assert pair.to_server(
        joined(pair.client.send_data(up, b"u")), pair.client.send_hole(up, 10)
    ) == [StreamDataReceived(up, b"u"), StreamHoleReceived(up, 10)]
    assert pair.to_client(
        joined(pair.server.send_data(down, b"d")), pair.server.send_eof(down)
    ) == [
        StreamDataReceived(down, b"d"),
        StreamEndReceived(down),
    ]
    assert pair.to_server(pair.client.send_finish(up), pair.client.send_finish(down)) == [
        StreamFinishReceived(up),
        StreamFinishReceived(down),
    ]
    assert pair.to_client(pair.server.send_finish_ack(down), pair.server.send_finish_ack(up)) == [
        StreamFinished(down),
        StreamFinished(up),
    ]
    assert pair.idle()


# -- aborts and errors -------------------------------------------------------------


def test_upload_abort() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    data = joined(pair.client.send_data(serial, b"partial"))
    abort = pair.client.send_abort(serial)
    assert pair.client.streams[serial].state is StreamState.ABORTING
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(serial, b"more")
    assert pair.to_server(data, abort) == [
        StreamDataReceived(serial, b"partial"),
        StreamAbortReceived(serial),
    ]
    assert abort == encode_frame(_header(serial, UPLOAD, MessageType.STREAM, MessageStatus.ERROR))
    assert pair.to_client(pair.server.send_finish_ack(serial)) == [StreamFinished(serial)]
    assert pair.idle()


def test_download_abort_crosses_data_in_flight() -> None:
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    abort = pair.client.send_abort(serial)
    # The server keeps sending until it reads the abort.
    in_flight = [
        joined(pair.server.send_data(serial, b"late")),
        pair.server.send_hole(serial, 4096),
        pair.server.send_eof(serial),
    ]
    assert pair.to_server(abort) == [StreamAbortReceived(serial)]
    with pytest.raises(LocalProtocolError):
        pair.server.send_finish_ack(serial + 1)
    ack = pair.server.send_finish_ack(serial)
    assert pair.to_client(*in_flight, ack) == [
        StreamDataReceived(serial, b"late"),
        StreamHoleReceived(serial, 4096),
        StreamEndReceived(serial),
        StreamFinished(serial),
    ]
    assert pair.idle()


def test_download_abort_after_eof() -> None:
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=False)
    pair.to_client(pair.server.send_eof(serial))
    assert pair.to_server(pair.client.send_abort(serial)) == [StreamAbortReceived(serial)]
    assert pair.to_client(pair.server.send_finish_ack(serial)) == [StreamFinished(serial)]
    assert pair.idle()


def test_server_error_mid_upload_drops_later_client_frames() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    assert pair.to_server(joined(pair.client.send_data(serial, b"first"))) == [
        StreamDataReceived(serial, b"first")
    ]
    error = pair.server.send_stream_error(serial, WRITE_ERROR)
    assert serial not in pair.server.streams
    # Frames the client sent before it read the error.
    late = [
        joined(pair.client.send_data(serial, b"second")),
        pair.client.send_hole(serial, 4096),
        pair.client.send_finish(serial),
    ]
    events = pair.to_server(*late)
    assert [type(event) for event in events] == [FrameIgnored] * 3
    assert all(isinstance(e, FrameIgnored) and e.header.serial == serial for e in events)
    assert pair.to_client(error) == [StreamFailed(serial, WRITE_ERROR)]
    assert pair.idle()
    with pytest.raises(LocalProtocolError):
        pair.client.send_finish(serial)


def test_server_error_answers_a_finish() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=False)
    assert pair.to_server(pair.client.send_finish(serial)) == [StreamFinishReceived(serial)]
    error = pair.server.send_stream_error(serial, WRITE_ERROR)
    assert pair.to_client(error) == [StreamFailed(serial, WRITE_ERROR)]
    assert pair.idle()


def test_server_error_mid_download() -> None:
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    frames = [
        joined(pair.server.send_data(serial, b"some")),
        pair.server.send_stream_error(serial, WRITE_ERROR),
    ]
    with pytest.raises(LocalProtocolError):
        pair.server.send_eof(serial)
    assert pair.to_client(*frames) == [
        StreamDataReceived(serial, b"some"),
        StreamFailed(serial, WRITE_ERROR),
    ]
    assert pair.idle()


def test_error_reply_to_a_stream_call_opens_no_stream() -> None:
    pair = Pair()
    args = VolTransferArgs(vol=VOL, offset=0, length=0, flags=1)
    serial, call = pair.client.call(UPLOAD, args)
    pair.to_server(call)
    error = rpc_error("unsupported flags (0x1) in function storageVolUpload", ErrorCode.INVALID_ARG)
    assert pair.to_client(pair.server.reply_error(serial, error)) == [
        ErrorReplyReceived(serial, UPLOAD, error)
    ]
    assert pair.idle()
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(serial, b"x")
    # A stream frame for it is a protocol error on the client, dropped by the server.
    stray = encode_frame(_header(serial, UPLOAD, MessageType.STREAM, MessageStatus.CONTINUE), b"x")
    assert [type(event) for event in pair.to_server(stray)] == [FrameIgnored]
    with pytest.raises(RemoteProtocolError):
        pair.to_client(stray)


# -- calls -------------------------------------------------------------------------


def test_serials_count_from_zero() -> None:
    client = Connection(Side.CLIENT)
    serials = [client.call(Proc.AUTH_LIST)[0] for _ in range(3)]
    assert serials == [0, 1, 2]


def test_replies_out_of_order() -> None:
    pair = Pair()
    calls = [
        pair.client.call(Proc.AUTH_LIST),
        pair.client.call(Proc.CONNECT_SUPPORTS_FEATURE, ConnectSupportsFeatureArgs(10)),
        pair.client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, LookupByNameArgs("default")),
        pair.client.call(Proc.CONNECT_CLOSE),
    ]
    events = pair.to_server(*(frame for _, frame in calls))
    assert [event.serial for event in events if isinstance(event, CallReceived)] == [0, 1, 2, 3]
    assert pair.server.pending_calls() == {0, 1, 2, 3}
    replies = [
        pair.server.reply(2, PoolRet(POOL)),
        pair.server.reply_error(3, rpc_error("closing failed")),
        pair.server.reply(0, AuthListRet((AuthType.NONE,))),
        pair.server.reply(1, ConnectSupportsFeatureRet(1)),
    ]
    assert pair.client.pending_calls() == {0, 1, 2, 3}
    assert pair.to_client(*replies) == [
        ReplyReceived(2, Proc.STORAGE_POOL_LOOKUP_BY_NAME, PoolRet(POOL)),
        ErrorReplyReceived(3, Proc.CONNECT_CLOSE, rpc_error("closing failed")),
        ReplyReceived(0, Proc.AUTH_LIST, AuthListRet((AuthType.NONE,))),
        ReplyReceived(1, Proc.CONNECT_SUPPORTS_FEATURE, ConnectSupportsFeatureRet(1)),
    ]
    assert pair.idle()


def _rejected(pair: Pair, frame: bytes) -> CallRejected:
    (event,) = pair.to_server(frame)
    assert isinstance(event, CallRejected)
    return event


def _check_rejection(pair: Pair, event: CallRejected, call_header: Header) -> None:
    """The error reply mirrors the call's program, version, procedure and serial, and
    the client sees it as the failure of its call; the connection goes on."""
    reply = pair.server.reply_error(event.serial, event.error)
    (frame,) = read_frames(reply)
    assert frame.header == Header(
        call_header.program,
        call_header.version,
        call_header.procedure,
        MessageType.REPLY,
        call_header.serial,
        MessageStatus.ERROR,
    )
    assert RemoteError.decode(frame.payload) == event.error
    assert pair.to_client(reply) == [
        ErrorReplyReceived(call_header.serial, call_header.procedure, event.error)
    ]
    # The connection is still usable.
    serial, call = pair.client.call(Proc.AUTH_LIST)
    assert pair.to_server(call) == [CallReceived(serial, PROCEDURES[Proc.AUTH_LIST], None)]
    reply = pair.server.reply(serial, AuthListRet((AuthType.NONE,)))
    assert pair.to_client(reply) == [
        ReplyReceived(serial, Proc.AUTH_LIST, AuthListRet((AuthType.NONE,)))
    ]
    assert pair.idle()


def test_unknown_procedure_is_rejected() -> None:
    pair = Pair()
    serial, call = pair.client.call(99999)
    event = _rejected(pair, call)
    assert event == CallRejected(serial, 99999, rpc_error("unknown procedure: 99999"))
    assert event.error.code == ErrorCode.RPC
    assert event.error.domain == ErrorDomain.RPC
    assert event.error.level == 2
    _check_rejection(pair, event, read_frames(call)[0].header)


def test_hypervisor_procedure_is_not_supported() -> None:
    pair = Pair()
    serial, call = pair.client.call(10)  # DOMAIN_CREATE_XML: a real procedure, not served
    event = _rejected(pair, call)
    assert event.serial == serial
    assert event.error.code == ErrorCode.NO_SUPPORT
    assert event.error.domain == ErrorDomain.DOMAIN
    assert event.error.message == (
        "this function is not supported by the connection driver: virDomainCreateXML"
    )
    _check_rejection(pair, event, read_frames(call)[0].header)


@pytest.mark.parametrize(("program", "version"), [(QEMU_PROGRAM, 1), (REMOTE_PROGRAM, 2)])
def test_wrong_program_or_version_is_rejected(program: int, version: int) -> None:
    pair = Pair()
    serial, call = pair.client.call(Proc.AUTH_LIST, program=program, version=version)
    event = _rejected(pair, call)
    assert event.serial == serial
    assert event.error == rpc_error(f"Cannot find program {program} version {version}")
    _check_rejection(pair, event, read_frames(call)[0].header)


def test_undecodable_arguments_are_rejected() -> None:
    pair = Pair()
    header = _header(0, Proc.STORAGE_POOL_LOOKUP_BY_NAME, MessageType.CALL, MessageStatus.OK)
    for payload in (b"", b"\x00\x00\x00\x09abc", LookupByNameArgs("x").encode() + b"\0\0\0\0"):
        pair = Pair()
        event = _rejected(pair, encode_frame(header, payload))
        assert event == CallRejected(
            0, Proc.STORAGE_POOL_LOOKUP_BY_NAME, rpc_error("Unable to decode message payload")
        )
    # Arguments to a procedure that takes none.
    pair = Pair()
    header = _header(0, Proc.AUTH_LIST, MessageType.CALL, MessageStatus.OK)
    event = _rejected(pair, encode_frame(header, b"\0\0\0\0"))
    assert event.error == rpc_error("Unable to decode message payload")
    assert pair.server.reply_error(0, event.error)


def test_call_with_a_bad_status_is_rejected() -> None:
    pair = Pair()
    header = _header(0, Proc.AUTH_LIST, MessageType.CALL, MessageStatus.CONTINUE)
    event = _rejected(pair, encode_frame(header))
    assert event.error == rpc_error("Unexpected message status 2")


def test_undecodable_stream_call_opens_no_stream() -> None:
    pair = Pair()
    header = _header(0, UPLOAD, MessageType.CALL, MessageStatus.OK)
    _rejected(pair, encode_frame(header, b"\0\0\0\1"))
    assert not pair.server.streams


def test_odd_frames_on_the_server_are_ignored() -> None:
    pair = Pair()
    odd = [
        _header(0, Proc.AUTH_LIST, MessageType.REPLY, MessageStatus.OK),
        _header(0, 362, MessageType.MESSAGE, MessageStatus.OK),
        _header(5, UPLOAD, MessageType.STREAM, MessageStatus.CONTINUE),
        _header(5, UPLOAD, MessageType.STREAM_HOLE, MessageStatus.CONTINUE),
    ]
    events = pair.to_server(*(encode_frame(header, b"\0" * 12) for header in odd))
    assert [type(event) for event in events] == [FrameIgnored] * 4
    assert [event.header for event in events if isinstance(event, FrameIgnored)] == odd
    assert pair.idle()


@pytest.mark.parametrize(("program", "version"), [(QEMU_PROGRAM, 1), (REMOTE_PROGRAM, 9)])
def test_stream_frames_of_another_program_or_version_belong_to_no_stream(
    program: int, version: int
) -> None:
    """libvirt matches a stream frame by program and version too: the server drops one
    that names an open stream's serial and procedure under others, the client refuses it."""
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    more, ok = MessageStatus.CONTINUE, MessageStatus.OK
    data = MessageType.STREAM, more, b"x"
    skip = MessageType.STREAM_HOLE, more, StreamHole(5).encode()
    finish = MessageType.STREAM, ok, b""
    foreign = [
        encode_frame(Header(program, version, UPLOAD, kind, serial, status), payload)
        for kind, status, payload in (data, skip, finish)
    ]
    events = pair.to_server(*foreign)
    assert [type(event) for event in events] == [FrameIgnored] * 3
    assert pair.server.streams[serial].state is StreamState.OPEN
    download = _open_stream(pair, DOWNLOAD, sparse=True)
    header = Header(program, version, DOWNLOAD, MessageType.STREAM, download, more)
    with pytest.raises(RemoteProtocolError):
        pair.to_client(encode_frame(header, b"x"))


def test_event_message_reaches_the_client() -> None:
    pair = Pair()
    message = pair.server.send_message(
        Proc.CONNECT_EVENT_CONNECTION_CLOSED, ConnectEventConnectionClosedMsg(reason=2)
    )
    (event,) = pair.to_client(message)
    assert isinstance(event, MessageReceived)
    assert event.procedure == Proc.CONNECT_EVENT_CONNECTION_CLOSED
    assert ConnectEventConnectionClosedMsg.decode(event.payload).reason == 2
    with pytest.raises(LocalProtocolError):
        pair.client.send_message(362, ConnectEventConnectionClosedMsg(reason=0))


def test_one_event_for_many_callbacks_is_each_callbacks_own_message() -> None:
    pair = Pair()
    pool = StoragePool(name="p" * 40, uuid=bytes(range(16)))
    numbers = [7, 1, -1, 2**31 - 1, -(2**31)]
    events: list[tuple[Proc, Callable[[int], XdrStruct]]] = [
        (
            Proc.STORAGE_POOL_EVENT_LIFECYCLE,
            lambda number: PoolLifecycleEventMsg(callback_id=number, pool=pool, event=3, detail=0),
        ),
        (
            Proc.STORAGE_POOL_EVENT_REFRESH,
            lambda number: PoolRefreshEventMsg(callback_id=number, pool=pool),
        ),
    ]
    for procedure, message in events:
        frames = pair.server.send_callback_messages(procedure, message(99), numbers)
        assert frames == [pair.server.send_message(procedure, message(n)) for n in numbers]
        received = pair.to_client(b"".join(frames))
        decoded = [
            type(message(0)).decode(e.payload) for e in received if isinstance(e, MessageReceived)
        ]
        assert decoded == [message(n) for n in numbers]
    refresh = PoolRefreshEventMsg(callback_id=1, pool=pool)
    assert pair.server.send_callback_messages(Proc.STORAGE_POOL_EVENT_REFRESH, refresh, []) == []


# -- keepalive ----------------------------------------------------------------------


def test_keepalive_ping_pong_both_ways() -> None:
    pair = Pair()
    ping = pair.client.send_ping()
    assert ping == bytes.fromhex("0000001c 6b656570 00000001 00000001 00000002 00000000 00000000")
    assert pair.to_server(ping) == [PingReceived()]
    pong = pair.server.send_pong()
    assert pong == bytes.fromhex("0000001c 6b656570 00000001 00000002 00000002 00000000 00000000")
    assert pair.to_client(pong) == [PongReceived()]
    assert pair.to_client(pair.server.send_ping()) == [PingReceived()]
    assert pair.to_server(pair.client.send_pong()) == [PongReceived()]


def test_keepalive_interleaves_with_a_stream() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    frames = [
        joined(pair.client.send_data(serial, b"1")),
        pair.client.send_ping(),
        pair.client.send_hole(serial, 9),
    ]
    assert pair.to_server(*frames) == [
        StreamDataReceived(serial, b"1"),
        PingReceived(),
        StreamHoleReceived(serial, 9),
    ]


def test_odd_keepalive_frames() -> None:
    pair = Pair()
    unknown = Header(KEEPALIVE_PROGRAM, 1, 7, MessageType.MESSAGE, 0, 0)
    wrong_version = Header(KEEPALIVE_PROGRAM, 2, KeepaliveProcedure.PING, MessageType.MESSAGE, 0, 0)
    events = pair.to_server(encode_frame(unknown), encode_frame(wrong_version))
    assert [type(event) for event in events] == [FrameIgnored, FrameIgnored]
    assert [type(event) for event in pair.to_client(encode_frame(unknown))] == [FrameIgnored]
    call = Header(KEEPALIVE_PROGRAM, 1, KeepaliveProcedure.PING, MessageType.CALL, 4, 0)
    (event,) = pair.to_server(encode_frame(call))
    assert event == CallRejected(4, 1, rpc_error("unknown procedure: 1"))


# -- illegal moves -------------------------------------------------------------------


def test_hole_on_a_non_sparse_upload() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=False)
    with pytest.raises(LocalProtocolError, match="non-sparse"):
        pair.client.send_hole(serial, 4096)
    hole = encode_frame(
        _header(serial, UPLOAD, MessageType.STREAM_HOLE, MessageStatus.CONTINUE),
        StreamHole(4096).encode(),
    )
    with pytest.raises(RemoteProtocolError, match="non-sparse"):
        pair.to_server(hole)


def test_hole_on_a_non_sparse_download() -> None:
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=False)
    with pytest.raises(LocalProtocolError, match="non-sparse"):
        pair.server.send_hole(serial, 4096)
    hole = encode_frame(
        _header(serial, DOWNLOAD, MessageType.STREAM_HOLE, MessageStatus.CONTINUE),
        StreamHole(4096).encode(),
    )
    with pytest.raises(RemoteProtocolError, match="non-sparse"):
        pair.to_client(hole)


@pytest.mark.parametrize(("length", "flags"), [(0, 0), (-1, 0), (4096, 1)])
def test_invalid_hole_is_refused(length: int, flags: int) -> None:
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    if flags == 0:
        with pytest.raises(LocalProtocolError):
            pair.server.send_hole(serial, length)
    hole = encode_frame(
        _header(serial, DOWNLOAD, MessageType.STREAM_HOLE, MessageStatus.CONTINUE),
        StreamHole(length, flags).encode(),
    )
    with pytest.raises(RemoteProtocolError):
        pair.to_client(hole)


def test_data_after_finish() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    finish = pair.client.send_finish(serial)
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(serial, b"late")
    with pytest.raises(LocalProtocolError):
        pair.client.send_hole(serial, 1)
    with pytest.raises(LocalProtocolError):
        pair.client.send_finish(serial)
    late = encode_frame(
        _header(serial, UPLOAD, MessageType.STREAM, MessageStatus.CONTINUE), b"late"
    )
    assert pair.to_server(finish) == [StreamFinishReceived(serial)]
    # libvirtd answers the client's finish and drops whatever the client sends after it:
    # data, skips, a second finish, an abort, a frame it could not read.
    for frame in (
        late,
        finish,
        encode_frame(_header(serial, UPLOAD, MessageType.STREAM, MessageStatus.ERROR)),
        encode_frame(_header(serial, UPLOAD, MessageType.STREAM_HOLE, 7), b"x"),
    ):
        [dropped] = pair.to_server(frame)
        assert isinstance(dropped, FrameIgnored)
    assert pair.to_client(pair.server.send_finish_ack(serial)) == [StreamFinished(serial)]
    assert serial not in pair.server.streams


def test_download_data_after_eof() -> None:
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    eof = pair.server.send_eof(serial)
    with pytest.raises(LocalProtocolError):
        pair.server.send_data(serial, b"late")
    late = encode_frame(
        _header(serial, DOWNLOAD, MessageType.STREAM, MessageStatus.CONTINUE), b"late"
    )
    assert pair.to_client(eof) == [StreamEndReceived(serial)]
    with pytest.raises(RemoteProtocolError):
        pair.to_client(late)


def test_finish_before_eof_on_a_download() -> None:
    """A client that read what it wanted finishes a download early, as libvirtd lets it:
    what the server sent meanwhile crosses the finish, then the server acknowledges it."""
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    finish = pair.client.send_finish(serial)
    crossing = joined(pair.server.send_data(serial, b"more")) + pair.server.send_hole(serial, 9)
    assert pair.to_server(finish) == [StreamFinishReceived(serial)]
    crossing += joined(pair.server.send_data(serial, b"late")) + pair.server.send_eof(serial)
    ack = pair.server.send_finish_ack(serial)
    with pytest.raises(LocalProtocolError):  # the stream is over on the server
        pair.server.send_data(serial, b"after")
    events = pair.to_client(crossing + ack)
    assert events[-1] == StreamFinished(serial)
    assert serial not in pair.client.streams
    # A finish is still the client's only, and only once.
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    pair.to_server(pair.client.send_finish(serial))
    with pytest.raises(LocalProtocolError):
        pair.client.send_finish(serial)
    with pytest.raises(LocalProtocolError):
        pair.client.send_abort(serial)
    second = encode_frame(_header(serial, DOWNLOAD, MessageType.STREAM, MessageStatus.OK))
    [dropped] = pair.to_server(second)
    assert isinstance(dropped, FrameIgnored)


def test_unsolicited_finish_ack_from_the_server() -> None:
    """libvirt's client drops the connection on a STREAM/OK used as EOF."""
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    with pytest.raises(LocalProtocolError):
        pair.server.send_finish_ack(serial)
    ack = encode_frame(_header(serial, DOWNLOAD, MessageType.STREAM, MessageStatus.OK))
    with pytest.raises(RemoteProtocolError):
        pair.to_client(ack)


def test_reply_to_an_unknown_serial() -> None:
    pair = Pair()
    serial, call = pair.client.call(Proc.AUTH_LIST)
    pair.to_server(call)
    with pytest.raises(LocalProtocolError):
        pair.server.reply(serial + 1)
    stray = encode_frame(_header(serial + 1, Proc.AUTH_LIST, MessageType.REPLY, MessageStatus.OK))
    with pytest.raises(RemoteProtocolError, match="no pending call"):
        pair.to_client(stray)


def test_reply_with_the_wrong_procedure() -> None:
    pair = Pair()
    serial, _ = pair.client.call(Proc.CONNECT_CLOSE)
    stray = encode_frame(_header(serial, Proc.AUTH_LIST, MessageType.REPLY, MessageStatus.OK))
    with pytest.raises(RemoteProtocolError):
        pair.to_client(stray)


def test_reply_from_another_program() -> None:
    pair = Pair()
    serial, _ = pair.client.call(Proc.CONNECT_CLOSE)
    header = Header(QEMU_PROGRAM, 1, Proc.CONNECT_CLOSE, MessageType.REPLY, serial, 0)
    with pytest.raises(RemoteProtocolError, match="no pending call"):
        pair.to_client(encode_frame(header))


def test_second_reply_to_the_same_call() -> None:
    pair = Pair()
    serial, call = pair.client.call(Proc.CONNECT_CLOSE)
    pair.to_server(call)
    reply = pair.server.reply(serial)
    with pytest.raises(LocalProtocolError):
        pair.server.reply(serial)
    assert pair.to_client(reply) == [ReplyReceived(serial, Proc.CONNECT_CLOSE, None)]
    with pytest.raises(RemoteProtocolError):
        pair.to_client(reply)


def test_a_data_frame_without_bytes_from_the_client_is_dropped_where_data_may_come() -> None:
    """libvirt's client sends one for ``virStreamSend`` of nothing: no bytes to write, and
    no end (only the server ends a stream with one, a download's). Where the client may
    send no data it is taken as data is: dropped after an upload's finish, told on a
    download."""
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    with pytest.raises(LocalProtocolError):
        pair.client.send_eof(serial)
    empty = encode_frame(_header(serial, UPLOAD, MessageType.STREAM, MessageStatus.CONTINUE))
    [dropped] = pair.to_server(empty)
    assert isinstance(dropped, FrameIgnored)
    assert dropped.header.serial == serial
    data = joined(pair.client.send_data(serial, b"x"))
    assert pair.to_server(data) == [StreamDataReceived(serial, b"x")]
    assert pair.to_server(pair.client.send_finish(serial)) == [StreamFinishReceived(serial)]
    [dropped] = pair.to_server(empty)  # after the finish, as anything else
    assert isinstance(dropped, FrameIgnored)
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=True)
    empty = encode_frame(_header(serial, DOWNLOAD, MessageType.STREAM, MessageStatus.CONTINUE))
    assert pair.to_server(empty) == [StreamWrittenByClient(serial)]


def test_a_stream_frame_of_an_unknown_status() -> None:
    """From the client, an abort that libvirtd answers with an error; from the server, a
    protocol error."""
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=False)
    odd = encode_frame(_header(serial, UPLOAD, MessageType.STREAM, 7), b"x")
    assert pair.to_server(odd) == [StreamAbortedByStatus(serial, 7)]
    assert pair.server.streams[serial].state is StreamState.ABORTING
    answer = pair.server.send_stream_error(serial, WRITE_ERROR)
    assert serial not in pair.server.streams
    assert pair.to_client(answer) == [StreamFailed(serial, WRITE_ERROR)]
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=False)
    with pytest.raises(RemoteProtocolError, match="stream frame with status 7"):
        pair.to_client(encode_frame(_header(serial, DOWNLOAD, MessageType.STREAM, 7), b"x"))


def test_client_data_before_the_reply() -> None:
    pair = Pair()
    args = VolTransferArgs(vol=VOL, offset=0, length=0, flags=1)
    serial, call = pair.client.call(UPLOAD, args)
    with pytest.raises(LocalProtocolError, match="before the call was answered"):
        pair.client.send_data(serial, b"eager")
    assert [type(event) for event in pair.to_server(call)] == [CallReceived]
    eager = encode_frame(_header(serial, UPLOAD, MessageType.STREAM, MessageStatus.CONTINUE), b"x")
    # libvirtd has no stream for them yet: dropped, and the stream goes on.
    (ignored,) = pair.to_server(eager)
    assert isinstance(ignored, FrameIgnored)
    assert ignored.reason == "stream frame before the call was answered"
    pair.to_client(pair.server.reply(serial))
    assert pair.to_server(joined(pair.client.send_data(serial, b"y"))) == [
        StreamDataReceived(serial, b"y")
    ]


@pytest.mark.parametrize("words", [(0, 0), (-1, 0), (5, 1)])
def test_a_skip_the_server_cannot_apply_ends_its_stream_with_an_error_reply(
    words: tuple[int, int],
) -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    skip = _header(serial, UPLOAD, MessageType.STREAM_HOLE, MessageStatus.CONTINUE)
    (refused,) = pair.to_server(encode_frame(skip, StreamHole(*words).encode()))
    assert isinstance(refused, StreamSkipRefused)
    assert (refused.serial, refused.procedure) == (serial, UPLOAD)
    assert (refused.error.code, refused.error.domain) == (1, 7)
    assert serial not in pair.server.streams
    (answer,) = read_frames(pair.server.refuse_stream_frame(refused))
    assert answer.header == _header(serial, UPLOAD, MessageType.REPLY, MessageStatus.ERROR)
    assert RemoteError.decode(answer.payload) == refused.error
    # What the client sends on the stream afterwards is dropped.
    finish = encode_frame(_header(serial, UPLOAD, MessageType.STREAM, MessageStatus.OK))
    assert [type(event) for event in pair.to_server(finish)] == [FrameIgnored]


def test_the_server_reads_a_skips_two_words_and_needs_them() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    skip = _header(serial, UPLOAD, MessageType.STREAM_HOLE, MessageStatus.CONTINUE)
    longer = encode_frame(skip, StreamHole(5).encode() + b"more")
    assert pair.to_server(longer) == [StreamHoleReceived(serial, 5)]
    with pytest.raises(RemoteProtocolError, match="skip frame of 8 bytes"):
        pair.to_server(encode_frame(skip, StreamHole(5).encode()[:8]))


def test_the_server_reads_a_calls_strings_up_to_their_first_nul() -> None:
    pair = Pair()
    _, call = pair.client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, LookupByNameArgs("a\0/../x"))
    (received,) = pair.to_server(call)
    assert isinstance(received, CallReceived)
    assert received.args == LookupByNameArgs("a")


def test_a_call_with_descriptors_is_a_call_while_it_passes_none() -> None:
    pair = Pair()
    serial = 0
    with_fds = Header(
        REMOTE_PROGRAM,
        REMOTE_PROTOCOL_VERSION,
        Proc.STORAGE_POOL_LOOKUP_BY_NAME,
        MessageType.CALL_WITH_FDS,
        serial,
        MessageStatus.OK,
    )
    payload = LookupByNameArgs("x").encode()
    (received,) = pair.to_server(encode_frame(with_fds, b"\0\0\0\0" + payload))
    assert received == CallReceived(
        serial, PROCEDURES[Proc.STORAGE_POOL_LOOKUP_BY_NAME], LookupByNameArgs("x")
    )
    for odd, message in (
        (b"\0\0\0\1" + payload, "passing 1 file descriptors"),
        (b"\0", "uncounted"),
    ):
        with pytest.raises(RemoteProtocolError, match=message):
            Pair().to_server(encode_frame(with_fds, odd))


def test_upload_data_from_the_server() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    with pytest.raises(LocalProtocolError):
        pair.server.send_data(serial, b"wrong way")
    with pytest.raises(LocalProtocolError):
        pair.server.send_eof(serial)
    wrong = encode_frame(_header(serial, UPLOAD, MessageType.STREAM, MessageStatus.CONTINUE), b"w")
    with pytest.raises(RemoteProtocolError):
        pair.to_client(wrong)


@pytest.mark.parametrize("sparse", [True, False])
def test_download_data_from_the_client(sparse: bool) -> None:
    """Ours refuses to send it; libvirt's client sends what a program gives it, and the
    server is told (libvirtd drops it and fails the finish) while the download may still
    send, dropped once the client finished and before it was answered."""
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=sparse)
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(serial, b"wrong way")
    with pytest.raises(LocalProtocolError):
        pair.client.send_hole(serial, 5)
    data = encode_frame(_header(serial, DOWNLOAD, MessageType.STREAM, MessageStatus.CONTINUE), b"w")
    skip = encode_frame(
        _header(serial, DOWNLOAD, MessageType.STREAM_HOLE, MessageStatus.CONTINUE),
        StreamHole(5).encode(),
    )
    written = [StreamWrittenByClient(serial)]
    assert pair.to_server(data) == written
    assert pair.to_server(skip) == written
    pair.to_client(pair.server.send_eof(serial))
    assert pair.to_server(data) == written  # crossing the EOF
    pair.to_server(pair.client.send_finish(serial))
    [dropped] = pair.to_server(data)  # after the finish, as anything else
    assert isinstance(dropped, FrameIgnored)
    # Before the answer to the call, dropped as any frame of the client's.
    pair = Pair()
    args = VolTransferArgs(vol=VOL, offset=0, length=0, flags=0)
    serial, call = pair.client.call(DOWNLOAD, args)
    pair.to_server(call)
    early = encode_frame(
        _header(serial, DOWNLOAD, MessageType.STREAM, MessageStatus.CONTINUE), b"w"
    )
    [dropped] = pair.to_server(early)
    assert isinstance(dropped, FrameIgnored)


def test_empty_data_frame_cannot_be_sent() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    with pytest.raises(LocalProtocolError):
        pair.client.send_data(serial, b"")
    with pytest.raises(LocalProtocolError):
        pair.client.send_hole(serial, 0)


def test_stream_frames_with_bad_payloads() -> None:
    # The client's finish and abort are read by their status, as libvirtd reads them.
    for end, event in (
        (MessageStatus.OK, StreamFinishReceived),
        (MessageStatus.ERROR, StreamAbortReceived),
    ):
        pair = Pair()
        up = _open_stream(pair, UPLOAD, sparse=True)
        with_payload = encode_frame(_header(up, UPLOAD, MessageType.STREAM, end), b"\0\0\0\0")
        assert pair.to_server(with_payload) == [event(up)]
    # The server's are not.
    bad = [
        (MessageType.STREAM, MessageStatus.OK, b"x"),
        (MessageType.STREAM, MessageStatus.ERROR, b"\0"),
        (MessageType.STREAM, 7, b""),
        (MessageType.STREAM_HOLE, MessageStatus.OK, StreamHole(1).encode()),
        (MessageType.STREAM_HOLE, MessageStatus.CONTINUE, b""),
        (MessageType.STREAM_HOLE, MessageStatus.CONTINUE, StreamHole(1).encode() + b"\0"),
    ]
    for kind, status, payload in bad:
        pair = Pair()
        down = _open_stream(pair, DOWNLOAD, sparse=True)
        with pytest.raises(RemoteProtocolError):
            pair.to_client(encode_frame(_header(down, DOWNLOAD, kind, status), payload))


def test_wrong_roles() -> None:
    client = Connection(Side.CLIENT)
    server = Connection(Side.SERVER)
    with pytest.raises(LocalProtocolError):
        server.call(Proc.AUTH_LIST)
    with pytest.raises(LocalProtocolError):
        client.reply(0)
    with pytest.raises(LocalProtocolError):
        client.reply_error(0, rpc_error("x"))
    with pytest.raises(LocalProtocolError):
        client.send_finish(0)
    client.receive_data(encode_frame(_header(0, Proc.AUTH_LIST, MessageType.CALL, 0)))
    with pytest.raises(RemoteProtocolError):
        client.events()


def test_duplicate_serial_from_the_client() -> None:
    pair = Pair()
    _, call = pair.client.call(Proc.CONNECT_CLOSE)
    pair.to_server(call)
    with pytest.raises(RemoteProtocolError):
        pair.to_server(call)


def test_duplicate_serial_of_a_rejected_call() -> None:
    """A call that will be rejected may not reuse the serial of a call still pending."""
    pair = Pair()
    serial, call = pair.client.call(Proc.CONNECT_CLOSE)
    pair.to_server(call)
    clash = Header(QEMU_PROGRAM, 1, 1, MessageType.CALL, serial, MessageStatus.OK)
    with pytest.raises(RemoteProtocolError, match="already in use"):
        pair.to_server(encode_frame(clash))


@pytest.mark.parametrize("procedure", [UPLOAD, DOWNLOAD, Proc.AUTH_LIST])
def test_a_call_may_not_reuse_the_serial_of_an_open_stream(procedure: Proc) -> None:
    """A stream stays under its call's serial after the reply: a second call under it
    would hide the first stream from whoever tracks streams by serial (and from the
    per-connection stream limit), so it is a protocol error like any serial in use."""
    pair = Pair()
    serial = _open_stream(pair, DOWNLOAD, sparse=False)
    args = VolTransferArgs(vol=VOL, offset=0, length=0, flags=0)
    payload = args.encode() if procedure != Proc.AUTH_LIST else b""
    clash = Header(REMOTE_PROGRAM, 1, procedure, MessageType.CALL, serial, MessageStatus.OK)
    with pytest.raises(RemoteProtocolError, match="already in use"):
        pair.to_server(encode_frame(clash, payload))


def test_the_serial_of_an_ended_stream_is_free_again() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=False)
    pair.to_server(pair.client.send_finish(serial))
    pair.to_client(pair.server.send_finish_ack(serial))
    assert serial not in pair.server.streams
    args = VolTransferArgs(vol=VOL, offset=0, length=0, flags=0)
    again = Header(REMOTE_PROGRAM, 1, UPLOAD, MessageType.CALL, serial, MessageStatus.OK)
    assert pair.to_server(encode_frame(again, args.encode())) == [
        CallReceived(serial, PROCEDURES[UPLOAD], args)
    ]


def test_forget_call() -> None:
    pair = Pair()
    serial = _open_stream(pair, UPLOAD, sparse=True)
    other, _ = pair.client.call(Proc.AUTH_LIST)
    pair.client.forget_call(other)
    pair.client.forget_call(serial)
    assert not pair.client.pending_calls()
    assert not pair.client.streams
