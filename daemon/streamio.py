"""What the stream handlers need from a client connection, and the per-stream log line."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.protocol.remote import RemoteError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from virtvol.protocol.connection import Connection, StreamSkipRefused
    from virtvol.protocol.frames import Payload

log = logging.getLogger("virtvol.daemon.stream")


class FrameSink(Protocol):
    """The client connection as the upload and download handlers see it."""

    rpc: Connection

    def send(self, frame: bytes) -> None:
        """Queue a whole frame on the transport (dropped once the connection is closing)."""

    def send_parts(self, parts: Sequence[Payload]) -> None:
        """Queue frames given as parts (heads, payloads) written back to back, unjoined:
        payloads are referenced until the transport drains."""

    def write_buffer_empty(self) -> bool:
        """True when the transport holds no unsent bytes (so no reference to our buffers)."""

    async def drained(self) -> None:
        """Wait until the transport holds no unsent bytes (or the connection is gone)."""

    def pause_reading(self, owner: object) -> None:
        """Stop reading the socket until every owner that paused it resumes it."""

    def resume_reading(self, owner: object) -> None:
        """Withdraw ``owner``'s pause."""


class StreamChannel:
    """One stream's way to the wire: the only thing its handler calls.

    The handlers (``upload``, ``download``) send data, holes, the end, the
    acknowledgement of the client's finish and errors through this adapter;
    it turns them into frames with the protocol core and queues them on the
    connection, so no handler touches the core.
    """

    def __init__(self, sink: FrameSink, serial: int) -> None:
        self._sink = sink
        self.serial = serial

    def send_data(self, payload: Payload) -> None:
        """Queue a data frame; ``payload``'s memory is referenced until the transport drains."""
        self._sink.send_parts(self._sink.rpc.send_data(self.serial, payload))

    def send_items(self, items: list[Payload | int]) -> None:
        """Queue data frames (buffers, referenced until the transport drains) and holes
        (lengths) in order, in one write."""
        if items:
            self._sink.send_parts(self._sink.rpc.send_stream_items(self.serial, items))

    def send_eof(self) -> None:
        """Queue the end of a download."""
        self._send_own(self._sink.rpc.send_eof(self.serial))

    def acknowledge_end(self) -> None:
        """Confirm the client's finish or abort (libvirtd sends an empty STREAM/OK for both)."""
        self._send_own(self._sink.rpc.send_finish_ack(self.serial))

    def refuse(self, refused: StreamSkipRefused) -> None:
        """Answer a frame the core refused on this stream (libvirtd's error REPLY)."""
        self._send_own(self._sink.rpc.refuse_stream_frame(refused))

    def send_error(self, report: ErrorReport) -> None:
        """Report a failure as STREAM/ERROR, unless the stream is already over on the wire."""
        rpc = self._sink.rpc
        if self.serial in rpc.streams:
            self._send_own(rpc.send_stream_error(self.serial, RemoteError.from_report(report)))

    def _send_own(self, frame: bytes) -> None:
        # As parts, like the data: a stream ends once, so its frames cannot pile up as
        # replies to calls can, and ``send`` would stop reading the socket behind a backlog
        # of data. A client whose FIFO reader stalls just after the download's end was
        # queued would then go unheard, keepalive frames and all, and be dropped.
        self._sink.send_parts((frame,))

    def write_buffer_empty(self) -> bool:
        """True when the transport holds no unsent bytes (so no reference to our buffers)."""
        return self._sink.write_buffer_empty()

    async def drained(self) -> None:
        """Wait until the transport holds no unsent bytes (or the connection is gone)."""
        await self._sink.drained()

    def pause_reading(self, owner: object) -> None:
        """Stop reading the socket until ``owner`` resumes it."""
        self._sink.pause_reading(owner)

    def resume_reading(self, owner: object) -> None:
        """Withdraw ``owner``'s pause."""
        self._sink.resume_reading(owner)


def unexpected_status(status: int) -> ErrorReport:
    """What answers a client's stream frame of a status libvirt has no meaning for, which
    aborts the stream (libvirtd's words)."""
    return ErrorReport(
        ErrorCode.RPC, ErrorDomain.STREAMS, f"stream aborted with unexpected status {status}"
    )


def unexpected_failure(what: str, exc: Exception) -> ErrorReport:
    """A stream that broke for a reason nobody foresaw still ends with an error the client
    hears (instead of a client waiting forever); the traceback goes to the log.

    Args:
        what: the transfer, as "upload to POOL/VOLUME" or "download from POOL/VOLUME".
    """
    log.error("%s failed", what, exc_info=exc)
    return ErrorReport.raised(
        ErrorCode.INTERNAL_ERROR, ErrorDomain.STREAMS, f"{what} failed: {exc}"
    )


@dataclass
class TransferStats:
    """Counters for the one log line each stream gets when it ends.

    ``data_bytes`` counts the payload of data frames as they crossed the wire (on a plain
    stream, the zeros that stand for holes too); ``holes`` and ``hole_bytes`` count hole
    frames only, so they stay 0 on a plain stream, whatever the volume holds.
    """

    direction: str  # "upload" or "download"
    volume: str
    peer: str
    sparse: bool
    offset: int
    length: int
    data_bytes: int = 0
    holes: int = 0
    hole_bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    def describe_wire(self) -> str:
        """What crossed the wire, e.g. "4096 data bytes and 2 holes (1048576 bytes)"."""
        text = f"{self.data_bytes} data bytes"
        if self.sparse:
            return f"{text} and {self.holes} holes ({self.hole_bytes} bytes) on a sparse stream"
        return f"{text} on a plain stream (holes travel as zeros)"

    def log_end(self, outcome: str) -> None:
        seconds = time.monotonic() - self.started
        rate = self.data_bytes / seconds / 2**20 if seconds > 0 else 0.0
        log.info(
            "%s %s %s: %s; on the wire: %s; offset=%d length=%d, %.3f s (%.1f MiB/s of data)",
            self.peer,
            self.direction,
            self.volume,
            outcome,
            self.describe_wire(),
            self.offset,
            self.length,
            seconds,
            rate,
        )
