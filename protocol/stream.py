"""The per-stream state machine of volume upload and download.

Theory of operation: a stream is born when a CALL to a stream procedure
(UPLOAD 208, DOWNLOAD 209) is sent (client) or received (server), and both
ends then move it through the same table. Every frame of the stream, in either
direction, is an input: DATA, HOLE (a skip frame), EOF (the server's empty
data frame ending a download), FINISH (the client's empty STREAM/OK), ABORT
(the client's empty STREAM/ERROR), FINISH_ACK (the server's empty STREAM/OK
answering a finish or an abort) and ERROR (the server's STREAM/ERROR carrying
a ``remote_error``). Each input has one legal sender, fixed by the direction of
the stream; an input from the wrong side, or one the current state does not
allow, is a ``LocalProtocolError`` when we tried to send it and a
``RemoteProtocolError`` when the peer did. HOLE is legal only on a stream
opened with the sparse flag. CLOSED and FAILED are terminal; the connection
forgets the stream there, and late frames for it are dropped as libvirt does.
The reply to the opening call is tracked apart from the data states, since a
server may start sending before the client has read the reply.
"""

from __future__ import annotations

from virtvol.protocol.enums import Enum
from virtvol.protocol.exceptions import LocalProtocolError, RemoteProtocolError
from virtvol.protocol.procedures import StreamDirection


class Side(Enum):
    __hash__ = object.__hash__  # as StreamDirection's

    CLIENT = "client"
    SERVER = "server"


class StreamState(Enum):
    __hash__ = object.__hash__  # as StreamDirection's

    OPEN = "open"
    EOF_SEEN = "eof-seen"  # download: the server has sent its EOF frame
    # download: the client finished before the EOF (it read what it wanted, a header);
    # what the server sent meanwhile crosses the finish on the wire
    FINISHING_EARLY = "finishing-early"
    FINISHING = "finishing"  # the client asked to finish; waiting for the server's answer
    ABORTING = "aborting"  # the client aborted; waiting for the server's answer
    CLOSED = "closed"
    FAILED = "failed"  # the server reported an error; the stream is dead


class StreamInput(Enum):
    __hash__ = object.__hash__  # as StreamDirection's

    DATA = "data"
    HOLE = "hole"
    EOF = "eof"
    FINISH = "finish"
    ABORT = "abort"
    FINISH_ACK = "finish-ack"
    ERROR = "error"


_S = StreamState
_I = StreamInput

# Who may send each input, by direction of the stream.
_SENDER: dict[StreamDirection, dict[StreamInput, Side]] = {
    StreamDirection.UPLOAD: {
        _I.DATA: Side.CLIENT,
        _I.HOLE: Side.CLIENT,
        _I.FINISH: Side.CLIENT,
        _I.ABORT: Side.CLIENT,
        _I.FINISH_ACK: Side.SERVER,
        _I.ERROR: Side.SERVER,
    },
    StreamDirection.DOWNLOAD: {
        _I.DATA: Side.SERVER,
        _I.HOLE: Side.SERVER,
        _I.EOF: Side.SERVER,
        _I.FINISH: Side.CLIENT,
        _I.ABORT: Side.CLIENT,
        _I.FINISH_ACK: Side.SERVER,
        _I.ERROR: Side.SERVER,
    },
}

# (state, input) -> next state. Pairs missing here are illegal.
_TRANSITIONS: dict[StreamDirection, dict[tuple[StreamState, StreamInput], StreamState]] = {
    StreamDirection.UPLOAD: {
        (_S.OPEN, _I.DATA): _S.OPEN,
        (_S.OPEN, _I.HOLE): _S.OPEN,
        (_S.OPEN, _I.FINISH): _S.FINISHING,
        (_S.OPEN, _I.ABORT): _S.ABORTING,
        (_S.OPEN, _I.ERROR): _S.FAILED,
        (_S.FINISHING, _I.FINISH_ACK): _S.CLOSED,
        (_S.FINISHING, _I.ERROR): _S.FAILED,
        (_S.ABORTING, _I.FINISH_ACK): _S.CLOSED,
        (_S.ABORTING, _I.ERROR): _S.FAILED,
    },
    StreamDirection.DOWNLOAD: {
        (_S.OPEN, _I.DATA): _S.OPEN,
        (_S.OPEN, _I.HOLE): _S.OPEN,
        (_S.OPEN, _I.EOF): _S.EOF_SEEN,
        (_S.OPEN, _I.FINISH): _S.FINISHING_EARLY,
        (_S.OPEN, _I.ABORT): _S.ABORTING,
        (_S.OPEN, _I.ERROR): _S.FAILED,
        (_S.EOF_SEEN, _I.FINISH): _S.FINISHING,
        (_S.EOF_SEEN, _I.ABORT): _S.ABORTING,
        (_S.EOF_SEEN, _I.ERROR): _S.FAILED,
        (_S.FINISHING, _I.FINISH_ACK): _S.CLOSED,
        (_S.FINISHING, _I.ERROR): _S.FAILED,
        # Data the server sent before it saw the finish crosses it on the wire, as libvirtd
        # lets a client finish a download before its end.
        (_S.FINISHING_EARLY, _I.DATA): _S.FINISHING_EARLY,
        (_S.FINISHING_EARLY, _I.HOLE): _S.FINISHING_EARLY,
        (_S.FINISHING_EARLY, _I.EOF): _S.FINISHING_EARLY,
        (_S.FINISHING_EARLY, _I.FINISH_ACK): _S.CLOSED,
        (_S.FINISHING_EARLY, _I.ERROR): _S.FAILED,
        # Data the server sent before it saw the abort crosses it on the wire.
        (_S.ABORTING, _I.DATA): _S.ABORTING,
        (_S.ABORTING, _I.HOLE): _S.ABORTING,
        (_S.ABORTING, _I.EOF): _S.ABORTING,
        (_S.ABORTING, _I.FINISH_ACK): _S.CLOSED,
        (_S.ABORTING, _I.ERROR): _S.FAILED,
    },
}

TERMINAL_STATES = frozenset({StreamState.CLOSED, StreamState.FAILED})


class Stream:
    """One stream, as seen from ``side``.

    Args:
        side: which end of the connection this machine runs on.
        direction: upload (client sends data) or download (server sends data).
        sparse: whether the opening call carried the sparse flag (holes allowed).
        serial: the serial of the opening call, carried by every frame of the stream.
        procedure: the opening procedure number, likewise carried by every frame.
    """

    __slots__ = ("direction", "procedure", "replied", "serial", "side", "sparse", "state")

    def __init__(
        self, side: Side, direction: StreamDirection, *, sparse: bool, serial: int, procedure: int
    ) -> None:
        self.side = side
        self.direction = direction
        self.sparse = sparse
        self.serial = serial
        self.procedure = procedure
        self.state = StreamState.OPEN
        self.replied = False

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    def send(self, what: StreamInput) -> None:
        """Record that we send ``what``; raise ``LocalProtocolError`` if we may not."""
        self._advance(what, sender=self.side, error=LocalProtocolError)

    def receive(self, what: StreamInput) -> None:
        """Record that the peer sent ``what``; raise ``RemoteProtocolError`` if it may not."""
        peer = Side.SERVER if self.side is Side.CLIENT else Side.CLIENT
        self._advance(what, sender=peer, error=RemoteProtocolError)

    def _advance(
        self,
        what: StreamInput,
        *,
        sender: Side,
        error: type[LocalProtocolError] | type[RemoteProtocolError],
    ) -> None:
        # Runs for every frame: the checks first, the words only for a refusal.
        if _SENDER[self.direction].get(what) is not sender:
            raise error(f"{sender.value} may not send {what.value} on a {self._label()}")
        if what is StreamInput.HOLE and not self.sparse:
            raise error(f"hole on the non-sparse {self._label()}")
        if sender is Side.CLIENT and not self.replied:
            raise error(f"{what.value} on {self._label()} before the call was answered")
        next_state = _TRANSITIONS[self.direction].get((self.state, what))
        if next_state is None:
            raise error(f"{what.value} not allowed on {self._label()} in state {self.state.value}")
        self.state = next_state

    def _label(self) -> str:
        return f"{self.direction.value} stream {self.serial}"
