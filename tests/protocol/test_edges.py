"""The protocol core's less travelled paths: every branch of ``protocol/`` is tested."""

from __future__ import annotations

from typing import Annotated

import pytest

from tests.protocol.conftest import Pair
from virtvol.protocol.connection import (
    _ENDED_STREAMS_KEPT,
    FrameIgnored,
    ReplyReceived,
    StreamFailed,
    rpc_error,
)
from virtvol.protocol.constants import (
    KEEPALIVE_PROGRAM,
    REMOTE_PROGRAM,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.dump import describe, procedure_name
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport, check_flags
from virtvol.protocol.exceptions import RemoteProtocolError
from virtvol.protocol.frames import Frame, Header, PayloadBuffers, encode_frame
from virtvol.protocol.procedures import Proc
from virtvol.protocol.remote import (
    ConnectOpenArgs,
    Secret,
    SecretGetValueRet,
    SecretSetValueArgs,
    StorageVol,
    VolTransferArgs,
)
from virtvol.protocol.xdr import (
    Array,
    Bool,
    Hyper,
    UHyper,
    XdrStruct,
    decode_value,
    encode_value,
)

VOL = StorageVol(pool="default", name="disk.img", key="/srv/pool/disk.img")


def _reply(serial: int, procedure: int, status: int, payload: bytes = b"") -> bytes:
    header = Header(REMOTE_PROGRAM, 1, procedure, MessageType.REPLY, serial, status)
    return encode_frame(header, payload)


# -- connection ------------------------------------------------------------------------


def test_bytes_written_into_the_core_buffer_make_the_same_events() -> None:
    pair = Pair()
    serial, call = pair.client.call(Proc.CONNECT_OPEN, ConnectOpenArgs(name="", flags=0))
    pair.to_server(call)
    reply = pair.server.reply(serial)
    for start in range(0, len(reply), 5):  # a few bytes at a time, as a socket may
        piece = reply[start : start + 5]
        buffer = pair.client.get_buffer()
        buffer[: len(piece)] = piece
        pair.client.buffer_updated(len(piece))
    assert pair.client.events() == [ReplyReceived(serial, Proc.CONNECT_OPEN, None)]


def test_a_void_reply_with_a_payload_breaks_the_protocol() -> None:
    pair = Pair()
    serial, _ = pair.client.call(Proc.CONNECT_OPEN, ConnectOpenArgs(name="", flags=0))
    with pytest.raises(RemoteProtocolError, match="unexpected result payload"):
        pair.to_client(_reply(serial, Proc.CONNECT_OPEN, MessageStatus.OK, b"\0\0\0\0"))


def test_a_reply_with_status_continue_breaks_the_protocol() -> None:
    pair = Pair()
    serial, _ = pair.client.call(Proc.CONNECT_OPEN, ConnectOpenArgs(name="", flags=0))
    with pytest.raises(RemoteProtocolError, match="reply with status 2"):
        pair.to_client(_reply(serial, Proc.CONNECT_OPEN, MessageStatus.CONTINUE))


def _download(pair: Pair) -> int:
    args = VolTransferArgs(vol=VOL, offset=0, length=0, flags=1)
    serial, call = pair.client.call(Proc.STORAGE_VOL_DOWNLOAD, args)
    pair.to_server(call)
    pair.to_client(pair.server.reply(serial))
    return serial


def _late_data(serial: int) -> bytes:
    header = Header(
        REMOTE_PROGRAM,
        1,
        Proc.STORAGE_VOL_DOWNLOAD,
        MessageType.STREAM,
        serial,
        MessageStatus.CONTINUE,
    )
    return encode_frame(header, b"late")


def test_frames_after_a_failed_download_are_dropped() -> None:
    pair = Pair()
    serial = _download(pair)
    error = rpc_error("cannot read")
    assert pair.to_client(pair.server.send_stream_error(serial, error)) == [
        StreamFailed(serial, error)
    ]
    (ignored,) = pair.to_client(_late_data(serial))
    assert isinstance(ignored, FrameIgnored)
    assert ignored.reason == "stream frame after the stream ended"


def test_only_the_last_ended_streams_are_remembered() -> None:
    pair = Pair()
    first = _download(pair)
    pair.to_client(pair.server.send_stream_error(first, rpc_error("gone")))
    for _ in range(_ENDED_STREAMS_KEPT):
        serial = _download(pair)
        pair.to_client(pair.server.send_stream_error(serial, rpc_error("gone")))
    # The oldest was forgotten: a frame for it is now a frame for no stream at all.
    with pytest.raises(RemoteProtocolError, match="no open stream"):
        pair.to_client(_late_data(first))


# -- frames ------------------------------------------------------------------------------


def test_a_full_payload_pool_hands_out_plain_buffers() -> None:
    size = PayloadBuffers.MIN_POOLED
    buffers = PayloadBuffers(max_bytes=size + size // 2)
    kept = buffers.take(size)
    extra = buffers.take(size)  # above the pool's limit: not pooled
    assert len(kept) == len(extra) == size
    pooled = id(kept.obj)
    del kept, extra
    again = buffers.take(size * 3 // 4)  # the pooled buffer is free again and large enough
    assert len(again) == size * 3 // 4
    assert id(again.obj) == pooled


# -- xdr --------------------------------------------------------------------------------


class _Flags(XdrStruct):
    enabled: Annotated[bool, Bool()]
    sizes: Annotated[tuple[int, ...], Array(Hyper(), 4)]
    offsets: Annotated[tuple[int, ...], Array(UHyper(), 4)]


def test_bools_and_hyper_arrays_round_trip() -> None:
    value = _Flags(enabled=True, sizes=(-1, 2), offsets=(1 << 63,))
    data = value.encode()
    assert len(data) == 4 + 4 + 16 + 4 + 8
    assert _Flags.decode(data) == value
    assert _Flags.decode(_Flags(False, (), ()).encode()) == _Flags(False, (), ())
    assert decode_value(Bool(), encode_value(Bool(), 1)) is True


def test_a_hyper_array_count_larger_than_its_bytes_is_refused() -> None:
    # Three hypers claimed, room for one: refused before anything is read.
    data = b"\0\0\0\1" + b"\0\0\0\3" + bytes(8) + b"\0\0\0\0"
    with pytest.raises(RemoteProtocolError, match="does not fit"):
        _Flags.decode(data)
    data = b"\0\0\0\1" + b"\0\0\0\0" + b"\0\0\0\3" + bytes(8)
    with pytest.raises(RemoteProtocolError, match="does not fit"):
        _Flags.decode(data)


def test_a_struct_field_needs_an_xdr_type() -> None:
    class NoCodec(XdrStruct):
        name: Annotated[str, "just a note"]

    with pytest.raises(TypeError, match="no XDR type for <class 'str'>"):
        NoCodec.fields()


# -- errors ------------------------------------------------------------------------------


def test_error_reports_carry_libvirts_fields() -> None:
    report = ErrorReport.raised(ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, "boom")
    assert (report.code, report.domain, report.message) == (1, 7, "internal error: boom")
    assert (report.str1, report.str2) == ("internal error: %s", "boom")
    assert repr(report) == "ErrorReport(code=1, domain=7, message='internal error: boom')"
    plain = ErrorReport.raised(ErrorCode.RPC, ErrorDomain.RPC, "no prefix")
    assert (plain.message, plain.str1) == ("no prefix", "%s")
    check_flags(0x3, 0x3, "storageVolUpload", ErrorDomain.STORAGE)
    with pytest.raises(ErrorReport) as refused:
        check_flags(0x5, 0x1, "storageVolUpload", ErrorDomain.STORAGE)
    assert refused.value.message == "unsupported flags (0x4) in function storageVolUpload"
    assert (refused.value.code, refused.value.int1) == (ErrorCode.INVALID_ARG, 0)


# -- dump --------------------------------------------------------------------------------


def test_dump_names_what_it_does_not_know() -> None:
    assert procedure_name(KEEPALIVE_PROGRAM, 1) == "PING"
    assert procedure_name(KEEPALIVE_PROGRAM, 99) == "99"
    assert procedure_name(0x12345678, 3) == "3"
    header = Header(REMOTE_PROGRAM, 1, 209, MessageType.STREAM_HOLE, 4, MessageStatus.CONTINUE)
    assert describe(Frame(header, b"\0\0")).endswith("hole=<undecodable>")


def test_secret_values_never_show_in_reprs() -> None:
    secret = Secret(uuid=bytes(16), usage_type=5, usage_id="client.admin")
    value = b"AQBz-a-ceph-key"
    args = SecretSetValueArgs(secret=secret, value=value, flags=0)
    ret = SecretGetValueRet(value=value)
    for text in (repr(args), repr(ret)):
        assert "AQBz" not in text
        assert f"<{len(value)} bytes>" in text
    assert "client.admin" in repr(args)
