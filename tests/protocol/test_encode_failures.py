"""A value that cannot be encoded is our mistake, and it leaves the connection as it was.

Every sending method encodes before it changes any state: a call keeps its serial
free, a reply that fails leaves the call pending (to be answered with an error), a
hole or a stream error that fails leaves the stream where it was.
"""

from __future__ import annotations

import pytest

from tests.protocol.conftest import Pair
from virtvol.protocol.connection import (
    CallReceived,
    ErrorReplyReceived,
    ReplyReceived,
    StreamDataReceived,
    StreamFailed,
    StreamHoleReceived,
    rpc_error,
)
from virtvol.protocol.constants import (
    PAYLOAD_MAX,
    REMOTE_STORAGE_VOL_LIST_MAX,
    REMOTE_STRING_MAX,
)
from virtvol.protocol.errors import ErrorCode
from virtvol.protocol.exceptions import (
    LocalProtocolError,
    RemoteProtocolError,
    XdrDecodeError,
    XdrEncodeError,
    XdrError,
)
from virtvol.protocol.procedures import PROCEDURES, Proc
from virtvol.protocol.remote import (
    ListVolNamesRet,
    LookupByNameArgs,
    PoolListAllVolumesArgs,
    PoolListAllVolumesRet,
    PoolListVolumesArgs,
    RemoteError,
    StoragePool,
    StorageVol,
    VolTransferArgs,
)
from virtvol.protocol.stream import StreamState

POOL = StoragePool(name="default", uuid=bytes(16))
VOL = StorageVol(pool="default", name="disk.img", key="/srv/pool/disk.img")
TOO_LONG = "x" * (REMOTE_STRING_MAX + 1)
# One more volume than a list may carry.
TOO_MANY_VOLS = PoolListAllVolumesRet(
    vols=(VOL,) * (REMOTE_STORAGE_VOL_LIST_MAX + 1), ret=REMOTE_STORAGE_VOL_LIST_MAX + 1
)


def test_encode_errors_are_local_and_decode_errors_remote() -> None:
    with pytest.raises(XdrEncodeError) as encoding:
        LookupByNameArgs(name=TOO_LONG).encode()
    assert isinstance(encoding.value, LocalProtocolError)
    assert not isinstance(encoding.value, RemoteProtocolError)
    assert encoding.value.path == "LookupByNameArgs.name"
    with pytest.raises(XdrDecodeError) as decoding:
        LookupByNameArgs.decode(b"\0\0\0\x09abc")
    assert isinstance(decoding.value, RemoteProtocolError)
    assert not isinstance(decoding.value, LocalProtocolError)
    assert isinstance(encoding.value, XdrError)
    assert isinstance(decoding.value, XdrError)


def test_a_call_that_cannot_be_encoded_uses_no_serial() -> None:
    pair = Pair()
    with pytest.raises(XdrEncodeError, match=r"LookupByNameArgs\.name"):
        pair.client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, LookupByNameArgs(name=TOO_LONG))
    assert pair.client.pending_calls() == frozenset()
    serial, frame = pair.client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, LookupByNameArgs("a"))
    assert serial == 0
    assert pair.to_server(frame) == [
        CallReceived(0, PROCEDURES[Proc.STORAGE_POOL_LOOKUP_BY_NAME], LookupByNameArgs("a"))
    ]


def test_a_stream_call_that_cannot_be_encoded_opens_no_stream() -> None:
    pair = Pair()
    bad = VolTransferArgs(vol=VOL, offset=-1, length=0, flags=1)
    with pytest.raises(XdrEncodeError, match="offset"):
        pair.client.call(Proc.STORAGE_VOL_UPLOAD, bad)
    assert pair.client.streams == {}
    assert pair.client.pending_calls() == frozenset()


def test_a_result_that_cannot_be_encoded_leaves_the_call_pending() -> None:
    pair = Pair()
    args = PoolListAllVolumesArgs(pool=POOL, need_results=1, flags=0)
    serial, frame = pair.client.call(Proc.STORAGE_POOL_LIST_ALL_VOLUMES, args)
    pair.to_server(frame)
    with pytest.raises(XdrEncodeError, match="exceeds the maximum 16384"):
        pair.server.reply(serial, TOO_MANY_VOLS)
    assert pair.server.pending_calls() == frozenset({serial})
    error = rpc_error("Unable to encode message payload")
    assert pair.to_client(pair.server.reply_error(serial, error)) == [
        ErrorReplyReceived(serial, Proc.STORAGE_POOL_LIST_ALL_VOLUMES, error)
    ]
    assert pair.server.pending_calls() == frozenset()
    assert pair.client.pending_calls() == frozenset()


def test_a_result_larger_than_a_message_is_refused() -> None:
    pair = Pair()
    serial, frame = pair.client.call(
        Proc.STORAGE_POOL_LIST_VOLUMES, PoolListVolumesArgs(pool=POOL, maxnames=16)
    )
    pair.to_server(frame)
    # Nine strings of the largest size: each is legal, together they exceed a message.
    names = ("n" * REMOTE_STRING_MAX,) * (PAYLOAD_MAX // REMOTE_STRING_MAX + 1)
    with pytest.raises(XdrEncodeError, match="exceed the largest message payload"):
        pair.server.reply(serial, ListVolNamesRet(names=names))
    assert pair.server.pending_calls() == frozenset({serial})
    assert pair.to_client(pair.server.reply(serial, ListVolNamesRet(names=("a",)))) == [
        ReplyReceived(serial, Proc.STORAGE_POOL_LIST_VOLUMES, ListVolNamesRet(names=("a",)))
    ]


def test_an_error_that_cannot_be_encoded_leaves_the_call_pending() -> None:
    pair = Pair()
    serial, frame = pair.client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, LookupByNameArgs("a"))
    pair.to_server(frame)
    unsendable = RemoteError(code=ErrorCode.INTERNAL_ERROR, domain=7, message="\ud800")
    with pytest.raises(XdrEncodeError, match=r"RemoteError\.message"):
        pair.server.reply_error(serial, unsendable)
    assert pair.server.pending_calls() == frozenset({serial})
    error = rpc_error("plain")
    assert pair.to_client(pair.server.reply_error(serial, error)) == [
        ErrorReplyReceived(serial, Proc.STORAGE_POOL_LOOKUP_BY_NAME, error)
    ]


def _upload(pair: Pair) -> int:
    args = VolTransferArgs(vol=VOL, offset=0, length=0, flags=1)
    serial, frame = pair.client.call(Proc.STORAGE_VOL_UPLOAD, args)
    pair.to_server(frame)
    pair.to_client(pair.server.reply(serial))
    return serial


def test_a_hole_that_cannot_be_encoded_leaves_the_stream_as_it_was() -> None:
    pair = Pair()
    serial = _upload(pair)
    with pytest.raises(XdrEncodeError, match="out of range for a hyper"):
        pair.client.send_hole(serial, 1 << 63)
    assert pair.client.streams[serial].state is StreamState.OPEN
    assert pair.to_server(pair.client.send_hole(serial, 4096)) == [StreamHoleReceived(serial, 4096)]
    head, data = pair.client.send_data(serial, b"data")
    assert pair.to_server(head + data) == [StreamDataReceived(serial, b"data")]


def test_a_stream_error_that_cannot_be_encoded_leaves_the_stream_open() -> None:
    pair = Pair()
    serial = _upload(pair)
    unsendable = RemoteError(code=ErrorCode.SYSTEM_ERROR, domain=7, message=TOO_LONG)
    with pytest.raises(XdrEncodeError):
        pair.server.send_stream_error(serial, unsendable)
    assert serial in pair.server.streams
    error = rpc_error("cannot write")
    assert pair.to_client(pair.server.send_stream_error(serial, error)) == [
        StreamFailed(serial, error)
    ]
