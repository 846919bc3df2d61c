"""Structural types the client's modules use to refer to each other's objects.

Streams and file helpers need only a few members of a volume, and pools and
volumes only a few of a connection; naming those members here keeps the
modules independent of one another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, overload

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from virtvol.client.errors import TransportError
    from virtvol.client.transfer_base import Progress, TransferResult
    from virtvol.protocol import remote as r
    from virtvol.protocol.procedures import ArgsT, Procedure, RetT
    from virtvol.protocol.xdr import XdrStruct

__all__ = ["CallEngine", "ConnectionLike", "FileTransfers", "VolumeLike"]


class CallEngine(Protocol):
    """What a ``Connection`` needs of the machinery that carries its calls: the
    event loop's ``rpc.RpcProtocol``, or the command line's blocking
    ``direct.DirectRpc``, whose coroutines finish without ever suspending."""

    # Who the calls go to, as errors name it ("the daemon at URI").
    description: str

    @property
    def failure(self) -> TransportError | None: ...

    @overload
    async def call(
        self, procedure: Procedure[None, RetT], *, timeout: float | None = None
    ) -> RetT: ...
    @overload
    async def call(
        self, procedure: Procedure[ArgsT, RetT], args: ArgsT, *, timeout: float | None = None
    ) -> RetT: ...
    async def call(
        self,
        procedure: Procedure[Any, RetT],
        args: XdrStruct | None = None,
        *,
        timeout: float | None = None,
    ) -> RetT: ...

    async def call_all(
        self, calls: Sequence[tuple[Procedure[Any, Any], XdrStruct | None]], *, window: int
    ) -> list[Any]:
        """Make ``calls`` with up to ``window`` of them in flight; each one's result, or
        the ``LibvirtError`` the peer answered it with, in their order."""
        ...

    def start_keepalive(self, interval: float, count: int) -> None: ...

    def close(self, *, drop_unsent: bool = False) -> None: ...

    async def wait_closed(self) -> None: ...

    def file_transfers(self) -> FileTransfers:
        """The module that moves whole files over this engine (imported on first use)."""
        ...


class FileTransfers(Protocol):
    """``upload_file`` and ``download_file`` of one engine: ``transfer`` for the event
    loop's connections, ``direct_transfer`` for the command line's."""

    async def upload_file(
        self,
        volume: VolumeLike,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int = 0,
        sparse: bool | None = None,
        detect_zeroes: bool = True,
        progress: Progress | None = None,
    ) -> TransferResult: ...

    async def download_file(
        self,
        volume: VolumeLike,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int = 0,
        sparse: bool | None = None,
        detect_zeroes: bool = True,
        progress: Progress | None = None,
    ) -> TransferResult: ...


class ConnectionLike(Protocol):
    """What pools, volumes and streams use of a ``Connection``."""

    @property
    def _rpc(self) -> CallEngine: ...

    @property
    def uri(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    # Set once the sparse fallback was reported, so that it is logged once per connection.
    sparse_fallback_reported: bool
    # The daemon's answer to UPLOAD_SKIPS_LEAVE_ZEROS_FEATURE; None until asked.
    upload_skips_leave_zeros: bool | None


class VolumeLike(Protocol):
    """What streams and file helpers use of a ``StorageVolume``."""

    @property
    def connection(self) -> ConnectionLike: ...

    @property
    def name(self) -> str: ...

    @property
    def wire(self) -> r.StorageVol: ...
