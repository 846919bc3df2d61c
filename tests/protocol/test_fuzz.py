"""Hostile and truncated input: the framing and both connection roles only ever ask
for more bytes or raise ``ProtocolError``; oversized length words are refused before
anything is buffered; and whatever one side may send, the other side accepts."""

from __future__ import annotations

import contextlib
import itertools
import tracemalloc
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.protocol.conftest import Pair, joined, struct_strategy
from virtvol.protocol.connection import Connection, ErrorReplyReceived, rpc_error
from virtvol.protocol.constants import (
    KEEPALIVE_PROGRAM,
    MESSAGE_MAX,
    QEMU_PROGRAM,
    REMOTE_PROGRAM,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.exceptions import LocalProtocolError, ProtocolError, RemoteProtocolError
from virtvol.protocol.frames import FrameReader, Header, encode_frame
from virtvol.protocol.procedures import PROCEDURES, Proc
from virtvol.protocol.remote import (
    AuthListRet,
    RemoteError,
    StorageVol,
    StreamHole,
    VolTransferArgs,
)
from virtvol.protocol.stream import Side

if TYPE_CHECKING:
    from collections.abc import Callable

FUZZ = settings(max_examples=150, deadline=None)
LARGEST = 4 + MESSAGE_MAX

INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)
PROGRAMS = st.sampled_from([REMOTE_PROGRAM, KEEPALIVE_PROGRAM, QEMU_PROGRAM]) | UINT32
PROCEDURE_NUMBERS = st.sampled_from([*PROCEDURES, 1, 2, 10, 99999, 0, -1]) | INT32
TYPES = st.sampled_from(list(MessageType)) | INT32
STATUSES = st.sampled_from(list(MessageStatus)) | INT32
SERIALS = st.integers(0, 5) | UINT32


def _payload_of_size(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


def headers(*, plausible: bool = True) -> st.SearchStrategy[Header]:
    if not plausible:
        return st.builds(Header, UINT32, UINT32, INT32, INT32, UINT32, INT32)
    return st.builds(
        Header,
        PROGRAMS,
        st.sampled_from([1, 1, 1, 2]),
        PROCEDURE_NUMBERS,
        TYPES,
        SERIALS,
        STATUSES,
    )


PAYLOADS = st.one_of(
    st.just(b""),
    st.binary(max_size=48),
    st.integers(0, 70000).map(_payload_of_size),
    st.builds(StreamHole, st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 0, 1])).map(
        StreamHole.encode
    ),
    struct_strategy(RemoteError).map(RemoteError.encode),
    st.sampled_from([p.args for p in PROCEDURES.values() if p.args])
    .flatmap(struct_strategy)
    .map(lambda value: value.encode()),
    st.sampled_from([p.ret for p in PROCEDURES.values() if p.ret])
    .flatmap(struct_strategy)
    .map(lambda value: value.encode()),
)

FRAMES = st.builds(encode_frame, headers(), PAYLOADS)
JUNK = st.binary(max_size=64)
STREAMS = st.lists(st.one_of(FRAMES, FRAMES, FRAMES, JUNK), max_size=8).map(b"".join)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


CUTS = st.lists(st.integers(0, 2**20), max_size=6)


# -- framing ------------------------------------------------------------------------


@FUZZ
@given(frame=FRAMES, data=st.data())
def test_strict_prefixes_only_ask_for_more(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame) - 1), label="cut")
    inner = data.draw(st.integers(0, cut), label="inner cut")
    reader = FrameReader()
    reader.feed(frame[:inner])
    reader.feed(frame[inner:cut])
    assert reader.next_frame() is None
    assert reader.buffered == cut
    assert reader.at_frame_boundary() == (cut == 0)
    for side in Side:
        connection = Connection(side)
        connection.receive_data(frame[:cut])
        assert connection.next_event() is None
    reader.feed(frame[cut:])
    (whole,) = list(reader)
    assert encode_frame(whole.header, whole.payload) == frame
    assert reader.at_frame_boundary()


@settings(max_examples=40, deadline=None)
@given(header=headers(), size=st.integers(16000, 70000), data=st.data())
def test_strict_prefixes_of_large_frames(header: Header, size: int, data: st.DataObject) -> None:
    """Frames larger than the scratch buffer take the separate payload-buffer path."""
    frame = encode_frame(header, _payload_of_size(size))
    cut = data.draw(st.integers(0, len(frame) - 1), label="cut")
    reader = FrameReader()
    reader.feed(frame[:cut])
    assert reader.next_frame() is None
    assert reader.buffered == cut
    reader.feed(frame[cut:])
    (whole,) = list(reader)
    assert encode_frame(whole.header, whole.payload) == frame
    assert reader.buffered == 0


def test_every_prefix_of_a_small_frame() -> None:
    frame = encode_frame(Header(REMOTE_PROGRAM, 1, 66, 1, 0, 0), AuthListRet(()).encode())
    for cut in range(len(frame)):
        reader = FrameReader()
        reader.feed(frame[:cut])
        assert reader.next_frame() is None


@FUZZ
@given(stream=st.lists(FRAMES, min_size=1, max_size=5), cuts=CUTS)
def test_any_chunking_gives_the_same_frames(stream: list[bytes], cuts: list[int]) -> None:
    data = b"".join(stream)
    reader = FrameReader()
    for chunk in _chunks(data, cuts):
        reader.feed(chunk)
    assert [encode_frame(frame.header, frame.payload) for frame in reader] == stream


def _only_protocol_errors(feed: Callable[[bytes], object], data: bytes, cuts: list[int]) -> None:
    try:
        for chunk in _chunks(data, cuts):
            feed(chunk)
    except ProtocolError:
        pass


def _drain_reader(reader: FrameReader) -> Callable[[bytes], object]:
    def feed(chunk: bytes) -> object:
        reader.feed(chunk)
        return list(reader)

    return feed


def _drain(connection: Connection) -> Callable[[bytes], object]:
    def feed(chunk: bytes) -> object:
        connection.receive_data(chunk)
        return connection.events()

    return feed


@FUZZ
@given(data=st.binary(max_size=300) | STREAMS, cuts=CUTS)
def test_random_bytes_only_raise_protocol_errors(data: bytes, cuts: list[int]) -> None:
    _only_protocol_errors(_drain_reader(FrameReader()), data, cuts)
    for side in Side:
        _only_protocol_errors(_drain(Connection(side)), data, cuts)


def _client_with_open_calls() -> Connection:
    """A client waiting on two sparse streams, a dense one and a plain call."""
    client = Connection(Side.CLIENT)
    vol = StorageVol("p", "v", "k")
    client.call(Proc.STORAGE_VOL_UPLOAD, VolTransferArgs(vol, 0, 0, 1))
    client.call(Proc.STORAGE_VOL_DOWNLOAD, VolTransferArgs(vol, 0, 0, 1))
    client.call(Proc.STORAGE_VOL_DOWNLOAD, VolTransferArgs(vol, 0, 0, 0))
    client.call(Proc.AUTH_LIST)
    client.call(Proc.CONNECT_LIST_ALL_STORAGE_POOLS)
    return client


def _server_with_open_streams() -> Connection:
    """A server with an answered sparse upload (0), sparse download (1), dense upload (2)."""
    client = Connection(Side.CLIENT)
    server = Connection(Side.SERVER)
    vol = StorageVol("p", "v", "k")
    for procedure, flags in [
        (Proc.STORAGE_VOL_UPLOAD, 1),
        (Proc.STORAGE_VOL_DOWNLOAD, 1),
        (Proc.STORAGE_VOL_UPLOAD, 0),
    ]:
        serial, call = client.call(procedure, VolTransferArgs(vol, 0, 0, flags))
        server.receive_data(call)
        server.events()
        server.reply(serial)
    return server


@FUZZ
@given(frames=st.lists(FRAMES, max_size=10), cuts=CUTS)
def test_frames_into_busy_connections_only_raise_protocol_errors(
    frames: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(frames)
    _only_protocol_errors(_drain(_client_with_open_calls()), data, cuts)
    _only_protocol_errors(_drain(_server_with_open_streams()), data, cuts)


# -- length words -------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 27) | st.integers(LARGEST + 1, 2**32 - 1))
def test_bad_length_words_are_refused_at_once(length: int) -> None:
    word = length.to_bytes(4, "big")
    reader = FrameReader()
    with pytest.raises(RemoteProtocolError, match="frame length"):
        reader.feed(word)
    for side in Side:
        connection = Connection(side)
        with pytest.raises(RemoteProtocolError):
            connection.receive_data(word + bytes(24))


def test_an_oversized_frame_allocates_nothing() -> None:
    reader = FrameReader()
    head = encode_frame(Header(REMOTE_PROGRAM, 1, 208, 3, 0, 2))[4:]
    data = (LARGEST + 1).to_bytes(4, "big") + head
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError, match="exceeds the maximum"):
            reader.feed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_the_largest_frame_is_accepted() -> None:
    reader = FrameReader()
    head = LARGEST.to_bytes(4, "big") + encode_frame(Header(REMOTE_PROGRAM, 1, 208, 3, 0, 2))[4:]
    reader.feed(head)
    assert reader.next_frame() is None
    assert reader.buffered == 28
    tail = b"\x5a" * (LARGEST - 28)
    reader.feed(tail)
    (frame,) = list(reader)
    assert len(frame.payload) == MESSAGE_MAX - 24
    assert reader.at_frame_boundary()


def test_a_smaller_limit_is_enforced() -> None:
    connection = Connection(Side.SERVER, max_message=1024)
    fits = encode_frame(Header(REMOTE_PROGRAM, 1, 60, 0, 0, 0), bytes(1000))
    connection.receive_data(fits)
    assert len(connection.events()) == 1
    with pytest.raises(RemoteProtocolError, match="exceeds the maximum of 1028"):
        connection.receive_data((1029).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="scratch"):
        FrameReader(scratch_size=27)


# -- whatever one side may send, the other accepts ------------------------------------


class BackToBack(RuleBasedStateMachine):
    """Both sides act at random; frames cross on the two pipes in any interleaving.

    A move our side refuses (LocalProtocolError) puts nothing on the wire; every
    frame it does produce must be taken by the peer without an exception.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair()
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.procedures: dict[int, Proc] = {}

    @staticmethod
    def _pick(choices: list[int], index: int) -> int:
        return choices[index % len(choices)] if choices else 1 << 30

    @precondition(
        lambda self: len(self.pair.client.pending_calls() | set(self.pair.client.streams)) < 3
    )
    @rule(
        procedure=st.sampled_from(
            [Proc.STORAGE_VOL_UPLOAD, Proc.STORAGE_VOL_DOWNLOAD, Proc.AUTH_LIST]
        ),
        sparse=st.booleans(),
    )
    def call(self, procedure: Proc, sparse: bool) -> None:
        args = None
        if procedure != Proc.AUTH_LIST:
            args = VolTransferArgs(StorageVol("p", "v", "k"), 0, 0, int(sparse))
        serial, frame = self.pair.client.call(procedure, args)
        self.procedures[serial] = procedure
        self.to_server.append(frame)

    @rule(
        index=st.integers(0, 9),
        action=st.sampled_from(
            ["data", "hole", "data", "hole", "finish", "abort", "eof", "ack", "error", "ping"]
        ),
    )
    def client_moves(self, index: int, action: str) -> None:
        client = self.pair.client
        serial = self._pick(sorted(client.streams), index)
        moves: dict[str, Callable[[], bytes]] = {
            "data": lambda: joined(client.send_data(serial, b"c" * (index + 1))),
            "hole": lambda: client.send_hole(serial, index + 1),
            "finish": lambda: client.send_finish(serial),
            "abort": lambda: client.send_abort(serial),
            "eof": lambda: client.send_eof(serial),
            "ack": lambda: client.send_finish_ack(serial),
            "error": lambda: client.send_stream_error(serial, rpc_error("x")),
            "ping": client.send_ping if index % 2 else client.send_pong,
        }
        with contextlib.suppress(LocalProtocolError):
            self.to_server.append(moves[action]())

    @rule(
        index=st.integers(0, 9),
        action=st.sampled_from(
            [
                *["reply", "reply", "reply_error", "data", "hole", "data", "hole"],
                *["eof", "ack", "ack", "error", "finish", "abort", "ping"],
            ]
        ),
    )
    def server_moves(self, index: int, action: str) -> None:
        server = self.pair.server
        pending = self._pick(sorted(server.pending_calls()), index)
        serial = self._pick(sorted(server.streams), index)
        result = AuthListRet(()) if self.procedures.get(pending) == Proc.AUTH_LIST else None
        moves: dict[str, Callable[[], bytes]] = {
            "reply": lambda: server.reply(pending, result),
            "reply_error": lambda: server.reply_error(pending, rpc_error("no")),
            "data": lambda: joined(server.send_data(serial, b"s" * (index + 1))),
            "hole": lambda: server.send_hole(serial, index + 1),
            "eof": lambda: server.send_eof(serial),
            "ack": lambda: server.send_finish_ack(serial),
            "error": lambda: server.send_stream_error(serial, rpc_error("failed")),
            "finish": lambda: server.send_finish(serial),
            "abort": lambda: server.send_abort(serial),
            "ping": server.send_ping if index % 2 else server.send_pong,
        }
        with contextlib.suppress(LocalProtocolError):
            self.to_client.append(moves[action]())

    @precondition(lambda self: bool(self.to_server))
    @rule(count=st.integers(1, 4))
    def deliver_to_server(self, count: int) -> None:
        frames, self.to_server[:count] = self.to_server[:count], []
        events = self.pair.to_server(*frames)
        assert len(events) == len(frames)

    @precondition(lambda self: bool(self.to_client))
    @rule(count=st.integers(1, 4))
    def deliver_to_client(self, count: int) -> None:
        frames, self.to_client[:count] = self.to_client[:count], []
        events = self.pair.to_client(*frames)
        assert len(events) == len(frames)
        for event in events:
            if isinstance(event, ErrorReplyReceived):
                assert event.serial not in self.pair.client.streams

    @invariant()
    def streams_are_consistent(self) -> None:
        for connection in (self.pair.client, self.pair.server):
            for serial, stream in connection.streams.items():
                assert stream.serial == serial
                assert stream.procedure == self.procedures[serial]
                assert not stream.finished
            assert connection.pending_calls() <= set(self.procedures)


BackToBack.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
test_back_to_back = BackToBack.TestCase
