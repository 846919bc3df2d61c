"""An in-memory storage daemon for the tests of code that uses ``virtvol.client``.

    async with virtvol.client.testing.memory_daemon(pools={"default": {"a.img": b"data"}}) as conn:
        vol = await (await conn.lookup_pool_by_name("default")).lookup_volume("a.img")
        await vol.download_file(tmp_path / "a.img")

``conn`` is a real ``Connection``: every call is encoded, framed and decoded by
the same protocol core that speaks to virtvold and libvirtd, and answered by a
server role of that core in the same event loop. No socket, thread or file is
involved; bytes cross an in-memory transport, one event-loop turn each way.

The daemon models what the client sees of libvirt's storage driver: pools
(active or not, with autostart), volumes holding bytes and holes, upload and
download streams (sparse when asked, with holes for what was never written or
was skipped), and libvirt's error codes and messages for missing pools and
volumes, inactive pools, existing names and refused flags. ``MemoryDaemon``
keeps that state between connections and lets a test look at it.

Volumes live in memory: this is for tests, with volumes of a few megabytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib
from typing import TYPE_CHECKING

from virtvol.client.connection import Connection, ProtocolMode, handshake
from virtvol.client.memory_server import MemoryServer
from virtvol.client.memory_storage import MemoryPool, MemoryVolume
from virtvol.client.memory_transport import MemoryTransport
from virtvol.client.rpc import RpcProtocol
from virtvol.client.uri import Target

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

__all__ = ["MemoryDaemon", "MemoryPool", "MemoryVolume", "memory_daemon"]

URI = "storage:///memory"


def _volume_from_spec(name: str, spec: bytes | int) -> MemoryVolume:
    if isinstance(spec, int):
        return MemoryVolume.empty(name, spec)
    return MemoryVolume.filled(name, bytes(spec))


class MemoryDaemon:
    """The daemon's state, shared by every connection made with ``connect``.

    Args:
        pools: pool name to its volumes; a volume is its bytes (all allocated)
            or its capacity in bytes (one hole).
        sparse_streams: False plays a daemon from before sparse streams (libvirt
            < 3.4): the sparse flag is refused as such a daemon refuses it.

    Attributes:
        pools: the ``MemoryPool`` objects by name, to arrange or inspect state.
    """

    def __init__(
        self,
        *,
        pools: Mapping[str, Mapping[str, bytes | int]] | None = None,
        sparse_streams: bool = True,
    ) -> None:
        self.sparse_streams = sparse_streams
        self.pools: dict[str, MemoryPool] = {}
        for pool_name, volumes in (pools or {}).items():
            pool = MemoryPool(
                name=pool_name, uuid=uuidlib.uuid5(uuidlib.NAMESPACE_URL, URI + pool_name)
            )
            for vol_name, spec in volumes.items():
                pool.volumes[vol_name] = _volume_from_spec(vol_name, spec)
            self.pools[pool_name] = pool

    def volume(self, pool: str, name: str) -> MemoryVolume:
        """The volume ``name`` of pool ``pool`` (``KeyError`` if either is missing)."""
        return self.pools[pool].volumes[name]

    @contextlib.asynccontextmanager
    async def connect(self, *, protocol: ProtocolMode = "current") -> AsyncIterator[Connection]:
        """A ``Connection`` to this daemon, closed when the block ends.

        Args:
            protocol: as for ``virtvol.client.connect``.
        """
        loop = asyncio.get_running_loop()
        rpc = RpcProtocol(URI)
        client_side = MemoryTransport(loop, rpc)
        server = MemoryServer(self.pools, sparse_streams=self.sparse_streams, client=client_side)
        client_side.peer = server
        rpc.connection_made(client_side)
        target = Target(URI, "memory", None, None, None, URI, 0)
        conn = await handshake(rpc, target, protocol=protocol, keepalive=None)
        try:
            yield conn
        finally:
            await conn.close()
            server.stop()


@contextlib.asynccontextmanager
async def memory_daemon(
    *,
    pools: Mapping[str, Mapping[str, bytes | int]] | None = None,
    sparse_streams: bool = True,
    protocol: ProtocolMode = "current",
) -> AsyncIterator[Connection]:
    """A ``Connection`` to a new in-memory daemon: ``async with memory_daemon(...) as conn``.

    Args:
        pools: as for ``MemoryDaemon``, e.g. ``{"default": {"a.img": b"data", "b.img": 4096}}``.
        sparse_streams: as for ``MemoryDaemon``.
        protocol: as for ``virtvol.client.connect``.
    """
    daemon = MemoryDaemon(pools=pools, sparse_streams=sparse_streams)
    async with daemon.connect(protocol=protocol) as conn:
        yield conn
