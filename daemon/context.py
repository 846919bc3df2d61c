"""What every client connection shares: the registry, the worker threads, the settings."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from virtvol.daemon.fairqueue import FairExecutor
from virtvol.daemon.limits import (
    Admission,
    ConnectionLimits,
    LineBudget,
    nofile_soft_limit,
    open_descriptor_count,
)
from virtvol.daemon.storage import PoolRef, StorageRegistry
from virtvol.protocol.frames import PayloadBuffers

if TYPE_CHECKING:
    from virtvol.daemon.storage.model import PoolEvent

# Worker threads. Calls and stream I/O get separate pools so that many busy
# streams cannot make a pool-list wait, nor a slow wipe hold up a stream.
CALL_WORKERS = 8
# Calls' workers that take only high-priority calls (libvirtd's prio_workers):
# those calls are quick, so two keep them moving while slow calls fill the rest.
PRIORITY_CALL_WORKERS = 2
IO_WORKERS = 32


class TrackedConnection(Protocol):
    """What the daemon does with a client connection (see ``connection.ClientConnection``)."""

    def stream_count(self) -> int: ...

    def close(self, reason: str) -> None: ...

    def abort(self, reason: str) -> None: ...

    async def wait_streams(self) -> None: ...

    async def wait_closed(self) -> None: ...

    def pool_event(self, pool: PoolRef, event: PoolEvent) -> None: ...


@dataclass
class DaemonContext:
    registry: StorageRegistry
    legacy: bool
    keepalive_interval: float | None  # None: no PINGs from the daemon (Settings)
    keepalive_count: int
    calls: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
            CALL_WORKERS + PRIORITY_CALL_WORKERS, thread_name_prefix="virtvold-call"
        )
    )
    io: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
            IO_WORKERS, thread_name_prefix="virtvold-io"
        )
    )
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # Received payload memory, recycled across connections: a new client's first big
    # frames reuse what earlier ones left free instead of growing fresh buffers.
    payload_buffers: PayloadBuffers = field(default_factory=PayloadBuffers)
    connections: set[TrackedConnection] = field(default_factory=set)
    # The TLS handshakes in progress on every tls:// listener: not connections yet, but
    # counted as such by admission.
    tls_handshakes: set[asyncio.Task[None]] = field(default_factory=set)
    accepting: bool = True
    total_connections: int = 0
    # The per-connection log lines, which any local user can cause at will.
    connection_lines: LineBudget = field(default_factory=lambda: LineBudget("connection"))
    call_queue: FairExecutor = field(init=False)
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        self.call_queue = FairExecutor(self.calls, CALL_WORKERS, PRIORITY_CALL_WORKERS)
        self.measure_descriptors(nofile_soft_limit())

    def measure_descriptors(self, fd_limit: int) -> None:
        """Size the descriptor budget from ``fd_limit`` and what is open now."""
        self.admission = Admission(
            self.limits, fd_limit=fd_limit, fds_at_start=open_descriptor_count()
        )

    def active_streams(self) -> int:
        return sum(conn.stream_count() for conn in self.connections)

    def connection_refusal(self) -> str | None:
        """Why one more connection, or TLS handshake, cannot be taken now (None: it can);
        every listener asks it, so that none admits past what the others hold."""
        return self.admission.refusal(
            len(self.connections), self.active_streams(), handshakes=len(self.tls_handshakes)
        )

    def stream_refusal(self) -> str | None:
        """Why one more stream cannot be opened now (None: it can)."""
        return self.admission.stream_refusal(
            len(self.connections), self.active_streams(), handshakes=len(self.tls_handshakes)
        )

    def shutdown_executors(self) -> None:
        self.calls.shutdown(wait=True, cancel_futures=True)
        self.io.shutdown(wait=True, cancel_futures=True)
