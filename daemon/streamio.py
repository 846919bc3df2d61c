"""What the stream handlers need from a client connection, and the per-stream log line."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from virtvol.protocol.connection import Connection
from virtvol.protocol.errors import ErrorReport
from virtvol.protocol.frames import Payload
from virtvol.protocol.remote import RemoteError

log = logging.getLogger("virtvol.daemon.stream")


class FrameSink(Protocol):
    """The client connection as the upload and download handlers see it."""

    rpc: Connection

    def send(self, frame: bytes) -> None:
        """Queue a whole frame on the transport (dropped once the connection is closing)."""

    def send_data(self, head: bytes, data: Payload) -> None:
        """Queue a data frame as two writes: the 28-byte head, then the payload itself."""

    def write_buffer_empty(self) -> bool:
        """True when the transport holds no unsent bytes (so no reference to our buffers)."""

    async def drained(self) -> None:
        """Wait until the transport holds no unsent bytes (or the connection is gone)."""

    def pause_reading(self, owner: object) -> None:
        """Stop reading the socket until every owner that paused it resumes it."""

    def resume_reading(self, owner: object) -> None:
        """Withdraw ``owner``'s pause."""


async def release_off_loop(
    executor: concurrent.futures.Executor, release: Callable[[], None]
) -> None:
    """Close a stream's volume in a worker: for an rbd image that is a cluster round trip.

    Shielded, so a cancelled handler still lets it finish; run here when the
    workers are already shut down (the daemon is stopping).
    """
    try:
        future = asyncio.get_running_loop().run_in_executor(executor, release)
    except RuntimeError:
        release()
        return
    await asyncio.shield(future)


def remote_error(report: ErrorReport) -> RemoteError:
    """The wire form of an error raised by the storage layer or the session."""
    return RemoteError(
        code=report.code,
        domain=report.domain,
        message=report.message,
        str1=report.str1,
        str2=report.str2,
        str3=report.str3,
        int1=report.int1,
        int2=report.int2,
    )


@dataclass
class TransferStats:
    """Counters for the one log line each stream gets when it ends."""

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

    def log_end(self, outcome: str) -> None:
        seconds = time.monotonic() - self.started
        rate = self.data_bytes / seconds / 2**20 if seconds > 0 else 0.0
        log.info(
            "%s %s %s: %s; %d data bytes, %d holes (%d bytes), sparse=%s offset=%d "
            "length=%d, %.3f s (%.1f MiB/s)",
            self.peer,
            self.direction,
            self.volume,
            outcome,
            self.data_bytes,
            self.holes,
            self.hole_bytes,
            "yes" if self.sparse else "no",
            self.offset,
            self.length,
            seconds,
            rate,
        )
