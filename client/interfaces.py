"""Structural types the client's modules use to refer to each other's objects.

Streams and file helpers need only a few members of a volume, and pools and
volumes only a few of a connection; naming those members here keeps the
modules independent of one another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from virtvol.client.rpc import RpcProtocol
    from virtvol.protocol import remote as r

__all__ = ["ConnectionLike", "VolumeLike"]


class ConnectionLike(Protocol):
    """What pools, volumes and streams use of a ``Connection``."""

    @property
    def _rpc(self) -> RpcProtocol: ...

    @property
    def uri(self) -> str: ...

    @property
    def protocol(self) -> str: ...

    # Set once the sparse fallback was reported, so that it is logged once per connection.
    sparse_fallback_reported: bool


class VolumeLike(Protocol):
    """What streams and file helpers use of a ``StorageVolume``."""

    @property
    def connection(self) -> ConnectionLike: ...

    @property
    def name(self) -> str: ...

    @property
    def wire(self) -> r.StorageVol: ...
