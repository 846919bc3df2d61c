"""The connection state machine, for the client role and the server role.

Theory of operation: a ``Connection`` owns a ``FrameReader`` and turns frames
into events (``next_event``), and turns the caller's intentions into bytes
(the ``call``, ``reply``, ``send_*`` methods). It performs no I/O: the asyncio
layers in ``virtvol.client`` and ``virtvol.daemon`` move the bytes.

Calls. The client numbers its calls from 0 and keeps each one pending until a
REPLY with the same serial arrives; replies may come in any order, and a reply
to no pending call is a ``RemoteProtocolError``. The server keeps each decoded
CALL pending until it replies to it, in any order. A CALL the server cannot
serve (unknown program, version or procedure, a bad status, arguments that do
not decode) becomes a ``CallRejected`` event carrying the libvirt error to send
back; the connection goes on.

Streams. A call to a stream procedure creates a ``Stream`` (see
``virtvol.protocol.stream``) under the call's serial, sparse when the call's
flags carry bit 1. An error reply removes it, an OK reply lets the client
start. Stream frames are checked against the stream's table; a stream that
reached a terminal state is forgotten, and frames for a stream the server does
not know, or that the client sent after its finish or abort, are dropped
(``FrameIgnored``), as libvirtd does. Where libvirtd lets a client's misuse of
one stream end that stream only (data sent into a download, a status it has no
meaning for), the server is told (``StreamWrittenByClient``,
``StreamAbortedByStatus``) instead of the connection being broken. A skip libvirtd
cannot apply (a length not above zero, flags) ends its stream the same way
(``StreamSkipRefused``), and frames a client sends on a stream before the reply to
the call that opened it are dropped, as libvirtd drops frames for a stream it has
not set up yet.

Keepalive frames (program KEEPALIVE, type MESSAGE) are reported as
``PingReceived``/``PongReceived``; answering and timing them belongs to the
caller (see ``virtvol.protocol.keepalive``).
"""

from __future__ import annotations

import collections
import struct

from virtvol.protocol.constants import (
    FRAME_OVERHEAD,
    KEEPALIVE_PROGRAM,
    KEEPALIVE_PROTOCOL_VERSION,
    MESSAGE_MAX,
    PAYLOAD_MAX,
    REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION,
    KeepaliveProcedure,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.errors import ErrorReport
from virtvol.protocol.exceptions import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    XdrDecodeError,
    XdrEncodeError,
)
from virtvol.protocol.frames import (
    FRAME_HEAD,
    PAYLOAD_FIRST_STEP,
    SCRATCH_SIZE,
    Frame,
    FrameReader,
    Header,
    Payload,
    PayloadBuffers,
    encode_frame,
    encode_head,
)
from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.procedures import PROCEDURES, Procedure, StreamDirection
from virtvol.protocol.record import Record
from virtvol.protocol.remote import RemoteError, StreamHole
from virtvol.protocol.stream import Side, Stream, StreamInput, StreamState
from virtvol.protocol.xdr import XdrStruct

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    # Records read their annotations as text: none is needed at run time.
    from typing import Any  # noqa: TC004

    from virtvol.protocol.error_codes import ErrorCode

_SERIAL_MODULUS = 1 << 32
_ENDED_STREAMS_KEPT = 64

# ---------------------------------------------------------------------------
# Events


class CallReceived(Record):
    """Server: a call to serve. ``args`` is None for procedures without arguments."""

    serial: int
    procedure: Procedure[Any, Any]
    args: XdrStruct | None


class CallRejected(Record):
    """Server: a call that cannot be served; send ``error`` with ``reply_error``."""

    serial: int
    procedure: int
    error: RemoteError


class ReplyReceived(Record):
    """Client: the successful result of a call (None for void results)."""

    serial: int
    procedure: int
    result: XdrStruct | None


class ErrorReplyReceived(Record):
    """Client: a call failed."""

    serial: int
    procedure: int
    error: RemoteError


class StreamDataReceived(Record):
    serial: int
    data: Payload


class StreamHoleReceived(Record):
    serial: int
    length: int


class StreamItemsReceived(Record):
    """Data frames and skips of one stream that arrived in a row, in order: data as its
    payload, a skip as its length (only from a ``Connection`` made with
    ``gather_stream_items``; a lone one still comes as ``StreamDataReceived`` or
    ``StreamHoleReceived``)."""

    serial: int
    items: list[Payload | int]


class StreamEndReceived(Record):
    """Client: the server's EOF frame ended a download."""

    serial: int


class StreamFinishReceived(Record):
    """Server: the client asked to finish the stream; answer with finish_ack or error."""

    serial: int


class StreamAbortReceived(Record):
    """Server: the client aborted the stream; answer with finish_ack."""

    serial: int


class StreamAbortedByStatus(Record):
    """Server: the client sent a frame of its stream with a status libvirt has no meaning
    for; libvirtd takes it for an abort, answered with an error instead of STREAM/OK."""

    serial: int
    status: int


class StreamSkipRefused(Record):
    """Server: the client sent a well-formed skip that libvirtd refuses to apply (its
    length is not above zero, or it carries flags). libvirtd aborts the stream and
    answers with an error REPLY (not a stream frame) on the stream's serial; the core
    has forgotten the stream: send ``refuse_stream_frame`` and drop the transfer."""

    serial: int
    procedure: int
    error: RemoteError


class StreamWrittenByClient(Record):
    """Server: the client sent data or a skip into a download, where only the server
    sends them (libvirt's client sends what a program gives ``virStreamSend``, whatever
    the stream). libvirtd drops them and goes on, and fails the client's finish."""

    serial: int


class StreamFinished(Record):
    """Client: the server confirmed a finish or an abort."""

    serial: int


class StreamFailed(Record):
    """Client: the server reported an error on the stream, which is now dead."""

    serial: int
    error: RemoteError


class PingReceived(Record):
    pass


class PongReceived(Record):
    pass


class MessageReceived(Record):
    """An asynchronous MESSAGE of the REMOTE program (an event), payload undecoded."""

    procedure: int
    payload: Payload


class FrameIgnored(Record):
    """A frame dropped without an answer, as libvirtd drops it (for logging)."""

    header: Header
    reason: str


Event = (
    CallReceived
    | CallRejected
    | ReplyReceived
    | ErrorReplyReceived
    | StreamDataReceived
    | StreamHoleReceived
    | StreamItemsReceived
    | StreamEndReceived
    | StreamFinishReceived
    | StreamAbortReceived
    | StreamAbortedByStatus
    | StreamSkipRefused
    | StreamWrittenByClient
    | StreamFinished
    | StreamFailed
    | PingReceived
    | PongReceived
    | MessageReceived
    | FrameIgnored
)


def rpc_error(message: str, code: ErrorCode | None = None) -> RemoteError:
    """An RPC-layer error as libvirtd words it (domain RPC, level error; the code
    VIR_ERR_RPC unless given)."""
    # The error numbers are imported when an error is made (virtvol.protocol.errors).
    from virtvol.protocol.error_codes import ErrorCode, ErrorDomain

    return RemoteError(
        code=ErrorCode.RPC if code is None else code, domain=ErrorDomain.RPC, message=message
    )


def _without_descriptors(frame: Frame) -> Frame:
    """A CALL_WITH_FDS as the call it is when it passes no file descriptor.

    Its payload starts with the number of descriptors passed beside the frame.
    libvirtd serves such a call that passes none as any call, and closes the
    connection over a frame too short to hold the number, over more than it takes,
    and over any at all on TCP; descriptors are not received here, on any socket.
    """
    if len(frame.payload) < _DESCRIPTOR_COUNT.size:
        raise RemoteProtocolError(f"a call with descriptors, uncounted: {frame.header.describe()}")
    (count,) = _DESCRIPTOR_COUNT.unpack_from(frame.payload)
    if count:
        raise RemoteProtocolError(
            f"a call passing {count} file descriptors: {frame.header.describe()}"
        )
    return Frame(frame.header, frame.payload[_DESCRIPTOR_COUNT.size :])


def _unapplied_skip() -> RemoteError:
    """libvirtd's answer to a skip its stream refuses: the refusal leaves no error
    behind for the RPC layer, which reports that instead (and zeroes the numbers)."""
    from virtvol.protocol.error_codes import ErrorCode, ErrorDomain

    return RemoteError(
        code=ErrorCode.INTERNAL_ERROR,
        domain=ErrorDomain.RPC,
        message="Library function returned error but did not set virError",
        int1=0,
        int2=0,
    )


def _unsupported(name: str) -> RemoteError:
    """libvirtd's answer to a procedure of a driver it does not run: its API function,
    finding no driver for it, reports VIR_ERR_NO_SUPPORT under its own domain."""
    from virtvol.protocol.error_codes import ErrorCode
    from virtvol.protocol.procedure_names import api_error_domain, api_function

    report = ErrorReport.raised(ErrorCode.NO_SUPPORT, api_error_domain(name), api_function(name))
    return RemoteError.from_report(report)


# The payload of a well-formed skip frame, and its words (length, flags) without a record:
# a fragmented image has a skip per extent (a test holds this to ``StreamHole``).
_HOLE = struct.Struct(">qI")
_HOLE_SIZE = _HOLE.size
# The states of a stream the client has finished or aborted.
_ENDED_BY_CLIENT = frozenset(
    {StreamState.FINISHING, StreamState.FINISHING_EARLY, StreamState.ABORTING}
)
# The first word of a CALL_WITH_FDS payload: how many descriptors come with it.
_DESCRIPTOR_COUNT = struct.Struct(">I")
# The first field of libvirt's event messages: the number of the callback told.
_CALLBACK_ID = struct.Struct(">i")
# Plain ints for the per-frame comparisons of a run of stream frames.
_CONTINUE = int(MessageStatus.CONTINUE)
_STREAM = int(MessageType.STREAM)
_STREAM_HOLE = int(MessageType.STREAM_HOLE)


# ---------------------------------------------------------------------------


class Connection:
    """One end of a libvirt RPC connection.

    Args:
        side: ``Side.CLIENT`` or ``Side.SERVER``.
        max_message: the largest frame accepted from the peer (header + payload).
        payload_buffers: the recycled memory of large payloads, shared by a server's
            connections (``FrameReader``); None: the connection's own.
        gather_stream_items: report data frames and skips of one stream that were
            received in a row as one ``StreamItemsReceived`` (a fragmented image is two
            small frames per extent), for consumers that handle it.
        scratch_size: the receive buffer of small frames (``FrameReader``): each read
            of the socket fills at most this much of it.
        payload_first_step: the first allocation for a large payload (``FrameReader``).
    """

    def __init__(
        self,
        side: Side,
        *,
        max_message: int = MESSAGE_MAX,
        payload_buffers: PayloadBuffers | None = None,
        gather_stream_items: bool = False,
        scratch_size: int = SCRATCH_SIZE,
        payload_first_step: int = PAYLOAD_FIRST_STEP,
    ) -> None:
        self.side = side
        self._gather_stream_items = gather_stream_items
        self.reader = FrameReader(
            max_message=max_message,
            scratch_size=scratch_size,
            payload_buffers=payload_buffers,
            payload_first_step=payload_first_step,
        )
        self._next_serial = 0
        self._pending: dict[int, int] = {}  # serial -> procedure
        # Server: (program, version) of rejected calls; the error reply must carry them,
        # since libvirt's client matches a reply on program, version and serial.
        self._rejected: dict[int, tuple[int, int]] = {}
        # Client: the program of each pending call, which its reply must carry.
        self._call_programs: dict[int, int] = {}
        self.streams: dict[int, Stream] = {}
        # (serial, procedure) of the last streams that ended, whose late frames are dropped.
        self._ended_streams: collections.OrderedDict[tuple[int, int], None] = (
            collections.OrderedDict()
        )

    # -- receiving ------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        return self.reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.reader.buffer_updated(nbytes)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self.reader.feed(data)

    def next_event(self) -> Event | None:
        """The next event, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: the peer broke the protocol; close the connection.
        """
        frame = self.reader.next_frame()
        if frame is None:
            return None
        event = self._handle(frame)
        if self._gather_stream_items and (
            type(event) is StreamDataReceived or type(event) is StreamHoleReceived
        ):
            return self._gather(event)
        return event

    def events(self) -> list[Event]:
        """Every event the received bytes make up so far."""
        result: list[Event] = []
        while (event := self.next_event()) is not None:
            result.append(event)
        return result

    def _handle(self, frame: Frame) -> Event:
        header = frame.header
        if header.program == KEEPALIVE_PROGRAM:
            return self._handle_keepalive(frame)
        kind = header.type
        if kind in (MessageType.STREAM, MessageType.STREAM_HOLE):
            return self._handle_stream(frame)
        if self.side is Side.SERVER:
            if kind == MessageType.CALL:
                return self._handle_call(frame)
            if kind == MessageType.CALL_WITH_FDS:
                return self._handle_call(_without_descriptors(frame))
            return FrameIgnored(header, f"unexpected message type {kind}")
        if kind == MessageType.REPLY:
            return self._handle_reply(frame)
        if kind == MessageType.MESSAGE and header.program == REMOTE_PROGRAM:
            return MessageReceived(header.procedure, frame.payload)
        raise RemoteProtocolError(f"unexpected frame from the server: {header.describe()}")

    def _handle_keepalive(self, frame: Frame) -> Event:
        header = frame.header
        if header.type == MessageType.MESSAGE and header.version == KEEPALIVE_PROTOCOL_VERSION:
            if header.procedure == KeepaliveProcedure.PING:
                return PingReceived()
            if header.procedure == KeepaliveProcedure.PONG:
                return PongReceived()
        if self.side is Side.SERVER and header.type == MessageType.CALL:
            return self._reject(header, rpc_error(f"unknown procedure: {header.procedure}"))
        return FrameIgnored(header, "unexpected keepalive frame")

    def _check_serial_free(self, serial: int) -> None:
        """A call's serial must name no pending call and no open stream: a stream keeps
        its call's serial after the reply, and a second call under it would hide it."""
        if serial in self._pending or serial in self.streams:
            raise RemoteProtocolError(f"serial {serial} is already in use")

    def _reject(self, header: Header, error: RemoteError) -> CallRejected:
        self._check_serial_free(header.serial)
        self._pending[header.serial] = header.procedure
        self._rejected[header.serial] = (header.program, header.version)
        return CallRejected(header.serial, header.procedure, error)

    def _handle_call(self, frame: Frame) -> Event:
        header = frame.header
        if header.program != REMOTE_PROGRAM or header.version != REMOTE_PROTOCOL_VERSION:
            message = f"Cannot find program {header.program} version {header.version}"
            return self._reject(header, rpc_error(message))
        if header.status != MessageStatus.OK:
            return self._reject(header, rpc_error(f"Unexpected message status {header.status}"))
        self._check_serial_free(header.serial)
        procedure = PROCEDURES.get(header.procedure)
        if procedure is not None and procedure.event:
            # libvirtd has no handler for what only a server sends.
            return self._reject(header, rpc_error(f"unknown procedure: {header.procedure}"))
        if procedure is None:
            # libvirt's ~450 names are read only for such a call (not on a client's path).
            from virtvol.protocol.procedure_names import REMOTE_PROCEDURE_NAMES

            name = REMOTE_PROCEDURE_NAMES.get(header.procedure)
            if name is None:
                return self._reject(header, rpc_error(f"unknown procedure: {header.procedure}"))
            return self._reject(header, _unsupported(name))
        try:
            # libvirtd reads a call's strings as C strings, up to their first NUL.
            args = procedure.args.decode(frame.payload, c_strings=True) if procedure.args else None
            if procedure.args is None and frame.payload:
                raise XdrDecodeError(
                    procedure.name, "arguments given to a procedure that takes none"
                )
        except XdrDecodeError:
            return self._reject(header, rpc_error("Unable to decode message payload"))
        self._pending[header.serial] = header.procedure
        if procedure.stream is not None:
            sparse = bool(getattr(args, "flags", 0) & 1)
            self.streams[header.serial] = Stream(
                Side.SERVER,
                procedure.stream,
                sparse=sparse,
                serial=header.serial,
                procedure=header.procedure,
            )
        return CallReceived(header.serial, procedure, args)

    def _handle_reply(self, frame: Frame) -> Event:
        header = frame.header
        procedure = self._pending.pop(header.serial, None)
        program = self._call_programs.pop(header.serial, None)
        if procedure is None or procedure != header.procedure or program != header.program:
            raise RemoteProtocolError(f"reply to no pending call: {header.describe()}")
        stream = self.streams.get(header.serial)
        if header.status == MessageStatus.OK:
            ret = PROCEDURES[procedure].ret if procedure in PROCEDURES else None
            result = ret.decode(frame.payload) if ret is not None else None
            if ret is None and frame.payload:
                raise RemoteProtocolError(f"unexpected result payload: {header.describe()}")
            if stream is not None:
                stream.replied = True
            return ReplyReceived(header.serial, procedure, result)
        if header.status == MessageStatus.ERROR:
            if stream is not None:
                del self.streams[header.serial]
            return ErrorReplyReceived(header.serial, procedure, RemoteError.decode(frame.payload))
        raise RemoteProtocolError(f"reply with status {header.status}")

    def _handle_stream(self, frame: Frame) -> Event:
        header = frame.header
        stream = self.streams.get(header.serial)
        # A stream is its call's program, version, procedure and serial, as libvirt
        # matches it: a frame that differs in any belongs to no stream.
        if (
            stream is None
            or stream.procedure != header.procedure
            or header.program != REMOTE_PROGRAM
            or header.version != REMOTE_PROTOCOL_VERSION
        ):
            if self.side is Side.SERVER:
                return FrameIgnored(header, "stream frame for no open stream")
            # Late frames for a stream that already ended are dropped, as libvirt's
            # client does: libvirtd answers a finish that crossed its stream error
            # with STREAM/OK, and follows a failed sparse download with more frames.
            if (header.serial, header.procedure) in self._ended_streams:
                return FrameIgnored(header, "stream frame after the stream ended")
            raise RemoteProtocolError(f"stream frame for no open stream: {header.describe()}")
        if self.side is Side.SERVER:
            if stream.state in _ENDED_BY_CLIENT:
                # As libvirtd: the client's finish or abort is answered, what follows
                # dropped.
                return FrameIgnored(header, "stream frame after the client's finish or abort")
            if not stream.replied:
                # libvirtd sets a stream up while it serves the call: what comes before
                # finds no stream and is dropped.
                return FrameIgnored(header, "stream frame before the call was answered")
        what, event = self._classify_stream_frame(frame)
        if self._written_by_client(stream, what):
            return StreamWrittenByClient(stream.serial)
        stream.receive(what)
        if stream.finished or type(event) is StreamSkipRefused:
            self._forget_stream(stream)
        return event

    def _written_by_client(self, stream: Stream, what: StreamInput) -> bool:
        """Whether a server's download got data or a skip from the client while both
        could still come from the server (the stream replied to, not finishing)."""
        return (
            self.side is Side.SERVER
            and stream.direction is StreamDirection.DOWNLOAD
            and (what is StreamInput.DATA or what is StreamInput.HOLE)
            and stream.replied
            and (stream.state is StreamState.OPEN or stream.state is StreamState.EOF_SEEN)
        )

    def _gather(self, first: StreamDataReceived | StreamHoleReceived) -> Event:
        """``first`` and the data frames and skips of its stream that follow it among the
        frames already received, as one event.

        Sending data or a skip never changes a stream's state, so once the state
        machine took one of a kind the rest of that kind only need to be well formed;
        and a stream that takes a skip takes data (skips only add the sparse flag to
        what data needs: a test holds the table to it), so only a skip after data is
        checked. The first frame that is anything else (or malformed, or refused) stays
        for the next ``next_event``, which handles it, or refuses it, as it would have.
        """
        ready = self.reader.ready
        if not ready:
            return first
        serial = first.serial
        stream = self.streams[serial]  # data and skips never end a stream
        if type(first) is StreamDataReceived:
            items: list[Payload | int] = [first.data]
            hole_checked = False
        else:
            assert type(first) is StreamHoleReceived
            items = [first.length]
            hole_checked = True
        procedure = stream.procedure
        # The checks of ``_handle`` for a frame of this stream that carries data or a
        # skip, on the frame's words as received (no records for the frames of a run).
        while ready:
            (_, program, version, frame_procedure, kind, frame_serial, status), payload = ready[0]
            if (
                frame_serial != serial
                or frame_procedure != procedure
                or status != _CONTINUE
                or program != REMOTE_PROGRAM
                or version != REMOTE_PROTOCOL_VERSION
            ):
                break
            if kind == _STREAM and payload:
                items.append(payload)
            elif kind == _STREAM_HOLE and len(payload) == _HOLE_SIZE:
                length, flags = _HOLE.unpack(payload)
                if length <= 0 or flags != 0:
                    break
                if not hole_checked:
                    try:
                        stream.receive(StreamInput.HOLE)
                    except RemoteProtocolError:
                        break
                    hole_checked = True
                items.append(length)
            else:
                break
            ready.popleft()
        if len(items) == 1:
            return first
        return StreamItemsReceived(serial, items)

    def _forget_stream(self, stream: Stream) -> None:
        del self.streams[stream.serial]
        self._ended_streams[(stream.serial, stream.procedure)] = None
        if len(self._ended_streams) > _ENDED_STREAMS_KEPT:
            self._ended_streams.popitem(last=False)

    def _classify_stream_frame(self, frame: Frame) -> tuple[StreamInput, Event]:
        header, payload, serial = frame.header, frame.payload, frame.header.serial
        if header.type == MessageType.STREAM_HOLE:
            # libvirtd reads a client's skip by its type and length, whatever its status.
            if self.side is Side.SERVER:
                # libvirtd decodes the skip's two words, whatever follows them; it closes
                # the connection over fewer bytes, and refuses a skip it cannot apply.
                if len(payload) < _HOLE_SIZE:
                    raise RemoteProtocolError(f"skip frame of {len(payload)} bytes")
                length, flags = _HOLE.unpack_from(payload)
                if length <= 0 or flags != 0:
                    refused = StreamSkipRefused(serial, header.procedure, _unapplied_skip())
                    return StreamInput.HOLE, refused
                return StreamInput.HOLE, StreamHoleReceived(serial, length)
            if header.status != MessageStatus.CONTINUE:
                raise RemoteProtocolError(f"skip frame with status {header.status}")
            hole = StreamHole.decode(payload)
            if hole.length <= 0 or hole.flags != 0:
                raise RemoteProtocolError(f"invalid skip: length {hole.length} flags {hole.flags}")
            return StreamInput.HOLE, StreamHoleReceived(serial, hole.length)
        if header.status == MessageStatus.CONTINUE:
            if payload:
                return StreamInput.DATA, StreamDataReceived(serial, payload)
            if self.side is Side.CLIENT:
                return StreamInput.EOF, StreamEndReceived(serial)
            # No bytes to write, where data may come: libvirt's client sends one for
            # ``virStreamSend`` of nothing, and the upload goes on after it.
            return StreamInput.DATA, FrameIgnored(header, "a data frame without bytes")
        # libvirtd reads a client's finish and abort by their status, whatever bytes they
        # carry; libvirt's client takes no bytes with the server's acknowledgement.
        if header.status == MessageStatus.OK:
            if self.side is Side.SERVER:
                return StreamInput.FINISH, StreamFinishReceived(serial)
            if payload:
                raise RemoteProtocolError("stream finish frame with a payload")
            return StreamInput.FINISH_ACK, StreamFinished(serial)
        if header.status == MessageStatus.ERROR:
            if self.side is Side.SERVER:
                return StreamInput.ABORT, StreamAbortReceived(serial)
            return StreamInput.ERROR, StreamFailed(serial, RemoteError.decode(payload))
        if self.side is Side.SERVER:
            return StreamInput.ABORT, StreamAbortedByStatus(serial, header.status)
        raise RemoteProtocolError(f"stream frame with status {header.status}")

    # -- sending: calls and replies -------------------------------------------

    def call(
        self,
        procedure: int,
        args: XdrStruct | None = None,
        *,
        program: int = REMOTE_PROGRAM,
        version: int = REMOTE_PROTOCOL_VERSION,
    ) -> tuple[int, bytes]:
        """Client: start a call; returns its serial and the frame to send.

        Raises:
            XdrEncodeError: ``args`` cannot be encoded; no serial was used and
                nothing is pending.
        """
        self._require(Side.CLIENT, "call")
        # Encode first: a value that cannot go on the wire must leave no trace.
        payload = _encode(args)
        serial = self._next_serial
        self._next_serial = (serial + 1) % _SERIAL_MODULUS
        self._pending[serial] = procedure
        self._call_programs[serial] = program
        spec = PROCEDURES.get(procedure) if program == REMOTE_PROGRAM else None
        if spec is not None and spec.stream is not None:
            sparse = bool(getattr(args, "flags", 0) & 1)
            self.streams[serial] = Stream(
                Side.CLIENT, spec.stream, sparse=sparse, serial=serial, procedure=procedure
            )
        header = Header(program, version, procedure, MessageType.CALL, serial, MessageStatus.OK)
        return serial, encode_frame(header, payload)

    def forget_call(self, serial: int) -> None:
        """Client: stop waiting for a call's reply (its waiter gave up); a late reply is
        then a protocol error, so use this only when the connection is being dropped."""
        self._pending.pop(serial, None)
        self._call_programs.pop(serial, None)
        self.streams.pop(serial, None)

    def reply(self, serial: int, result: XdrStruct | None = None) -> bytes:
        """Server: the successful answer to a pending call.

        Raises:
            XdrEncodeError: ``result`` cannot be encoded; the call stays pending,
                to be answered with ``reply_error``.
        """
        procedure = self._pending_procedure(serial)
        # Encode before the call stops being pending: a result that cannot go on
        # the wire must leave the call to be answered with an error.
        payload = _encode(result)
        del self._pending[serial]
        self._rejected.pop(serial, None)
        stream = self.streams.get(serial)
        if stream is not None:
            stream.replied = True
        header = Header(
            REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, procedure, MessageType.REPLY, serial, 0
        )
        return encode_frame(header, payload)

    def reply_error(self, serial: int, error: RemoteError) -> bytes:
        """Server: the error answer to a pending call (a stream it opened is dropped).

        Raises:
            XdrEncodeError: ``error`` cannot be encoded; the call stays pending.
        """
        procedure = self._pending_procedure(serial)
        payload = _encode(error)
        del self._pending[serial]
        self.streams.pop(serial, None)
        program, version = self._rejected.pop(serial, (REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION))
        header = Header(
            program,
            version,
            procedure,
            MessageType.REPLY,
            serial,
            MessageStatus.ERROR,
        )
        return encode_frame(header, payload)

    def refuse_stream_frame(self, refused: StreamSkipRefused) -> bytes:
        """Server: libvirtd's answer to a refused stream frame, an error REPLY on the
        stream's serial (its stream errors go as STREAM frames, this one does not)."""
        self._require(Side.SERVER, "reply")
        payload = _encode(refused.error)
        header = Header(
            REMOTE_PROGRAM,
            REMOTE_PROTOCOL_VERSION,
            refused.procedure,
            MessageType.REPLY,
            refused.serial,
            MessageStatus.ERROR,
        )
        return encode_frame(header, payload)

    def pending_calls(self) -> frozenset[int]:
        return frozenset(self._pending)

    def _pending_procedure(self, serial: int) -> int:
        self._require(Side.SERVER, "reply")
        try:
            return self._pending[serial]
        except KeyError:
            raise LocalProtocolError(f"no pending call with serial {serial}") from None

    def _require(self, side: Side, action: str) -> None:
        if self.side is not side:
            raise LocalProtocolError(f"a {self.side.value} cannot {action}")

    # -- sending: streams -------------------------------------------------------

    def _stream_frame(
        self, serial: int, what: StreamInput, kind: MessageType, status: MessageStatus
    ) -> Header:
        stream = self.streams.get(serial)
        if stream is None:
            raise LocalProtocolError(f"no open stream with serial {serial}")
        stream.send(what)
        if stream.finished:
            self._forget_stream(stream)
        return Header(
            REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, stream.procedure, kind, serial, status
        )

    def send_data(self, serial: int, data: Payload) -> tuple[bytes, Payload]:
        """A data frame: returns (head, data) to write back to back, without joining."""
        if not data:
            raise LocalProtocolError("a data frame needs at least one byte")
        header = self._stream_frame(
            serial, StreamInput.DATA, MessageType.STREAM, MessageStatus.CONTINUE
        )
        return encode_head(header, len(data)), data

    def send_hole(self, serial: int, length: int) -> bytes:
        """A skip frame (STREAM_HOLE): ``length`` bytes that read as zeros."""
        if length <= 0:
            raise LocalProtocolError(f"a hole needs a positive length, not {length}")
        payload = StreamHole(length, 0).encode()
        header = self._stream_frame(
            serial, StreamInput.HOLE, MessageType.STREAM_HOLE, MessageStatus.CONTINUE
        )
        return encode_frame(header, payload)

    def send_stream_items(self, serial: int, items: Iterable[Payload | int]) -> list[Payload]:
        """Frames for data (buffers) and holes (lengths) in order, as parts to write back
        to back without joining: a head and the buffer itself for data, one bytes for a
        hole. Nothing is sent (or recorded) if any item is refused.

        Sending data or a hole never moves a stream to another state, so the checks
        that pass for a batch's first data and first hole pass for all of it: a
        fragmented image's two frames per extent cost a struct each, not a trip through
        the state machine.
        """
        stream = self.streams.get(serial)
        if stream is None:
            raise LocalProtocolError(f"no open stream with serial {serial}")
        procedure = stream.procedure
        pack_head = FRAME_HEAD.pack  # a data frame's head, without a Header record
        hole_head = b""  # made, and holes checked, with the first hole
        data_checked = False
        parts: list[Payload] = []
        for item in items:
            if isinstance(item, int):
                if item <= 0:
                    raise LocalProtocolError(f"a hole needs a positive length, not {item}")
                try:
                    payload = _HOLE.pack(item, 0)
                except struct.error:
                    payload = StreamHole(item, 0).encode()  # raises, naming the field
                if not hole_head:
                    stream.send(StreamInput.HOLE)
                    header = Header(
                        REMOTE_PROGRAM,
                        REMOTE_PROTOCOL_VERSION,
                        procedure,
                        MessageType.STREAM_HOLE,
                        serial,
                        MessageStatus.CONTINUE,
                    )
                    hole_head = encode_head(header, _HOLE_SIZE)
                parts.append(hole_head + payload)
                continue
            if not item:
                raise LocalProtocolError("a data frame needs at least one byte")
            if not data_checked:
                stream.send(StreamInput.DATA)
                data_checked = True
            parts.append(
                pack_head(
                    FRAME_OVERHEAD + len(item),
                    REMOTE_PROGRAM,
                    REMOTE_PROTOCOL_VERSION,
                    procedure,
                    _STREAM,
                    serial,
                    _CONTINUE,
                )
            )
            parts.append(item)
        return parts

    def send_eof(self, serial: int) -> bytes:
        """Server: the empty data frame that ends a download."""
        header = self._stream_frame(
            serial, StreamInput.EOF, MessageType.STREAM, MessageStatus.CONTINUE
        )
        return encode_frame(header)

    def send_finish(self, serial: int) -> bytes:
        """Client: ask the server to finish the stream."""
        header = self._stream_frame(
            serial, StreamInput.FINISH, MessageType.STREAM, MessageStatus.OK
        )
        return encode_frame(header)

    def send_abort(self, serial: int) -> bytes:
        """Client: abort the stream."""
        header = self._stream_frame(
            serial, StreamInput.ABORT, MessageType.STREAM, MessageStatus.ERROR
        )
        return encode_frame(header)

    def send_finish_ack(self, serial: int) -> bytes:
        """Server: confirm a finish or an abort."""
        header = self._stream_frame(
            serial, StreamInput.FINISH_ACK, MessageType.STREAM, MessageStatus.OK
        )
        return encode_frame(header)

    def send_stream_error(self, serial: int, error: RemoteError) -> bytes:
        """Server: report that the stream failed; it is dead afterwards."""
        payload = _encode(error)
        header = self._stream_frame(
            serial, StreamInput.ERROR, MessageType.STREAM, MessageStatus.ERROR
        )
        return encode_frame(header, payload)

    # -- sending: messages --------------------------------------------------------

    def send_ping(self) -> bytes:
        return _keepalive(KeepaliveProcedure.PING)

    def send_pong(self) -> bytes:
        return _keepalive(KeepaliveProcedure.PONG)

    def send_message(self, procedure: int, body: XdrStruct) -> bytes:
        """Server: an asynchronous event (e.g. CONNECT_EVENT_CONNECTION_CLOSED)."""
        self._require(Side.SERVER, "send events")
        header = Header(
            REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION, procedure, MessageType.MESSAGE, 0, 0
        )
        return encode_frame(header, body.encode())

    def send_callback_messages(
        self, procedure: int, body: XdrStruct, callback_ids: Sequence[int]
    ) -> list[bytes]:
        """Server: event ``body`` once for each of ``callback_ids``, whatever ``body``'s own.

        libvirt's event messages (``remote_*_event_msg``) start with the number of the
        callback told (``callbackID``); the rest is the same for every callback, so it is
        encoded once: a client may hold hundreds of callbacks, each told of every event.
        """
        frame = self.send_message(procedure, body)
        head, tail = frame[:FRAME_OVERHEAD], frame[FRAME_OVERHEAD + _CALLBACK_ID.size :]
        return [b"".join((head, _CALLBACK_ID.pack(number), tail)) for number in callback_ids]


def _encode(value: XdrStruct | None) -> bytes:
    """The payload of a call, reply or error, refused when no peer would accept the frame."""
    if value is None:
        return b""
    payload = value.encode()
    if len(payload) > PAYLOAD_MAX:
        raise XdrEncodeError(
            type(value).__name__,
            f"{len(payload)} bytes exceed the largest message payload ({PAYLOAD_MAX})",
        )
    return payload


def _keepalive(procedure: KeepaliveProcedure) -> bytes:
    header = Header(
        KEEPALIVE_PROGRAM, KEEPALIVE_PROTOCOL_VERSION, procedure, MessageType.MESSAGE, 0, 0
    )
    return encode_frame(header)


__all__ = [
    "CallReceived",
    "CallRejected",
    "Connection",
    "ErrorReplyReceived",
    "Event",
    "FrameIgnored",
    "MessageReceived",
    "PingReceived",
    "PongReceived",
    "ProtocolError",
    "ReplyReceived",
    "Side",
    "StreamAbortReceived",
    "StreamAbortedByStatus",
    "StreamDataReceived",
    "StreamEndReceived",
    "StreamFailed",
    "StreamFinishReceived",
    "StreamFinished",
    "StreamHoleReceived",
    "StreamItemsReceived",
    "StreamSkipRefused",
    "StreamWrittenByClient",
    "rpc_error",
]
