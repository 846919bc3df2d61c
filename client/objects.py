"""Storage pools and volumes: thin handles that turn method calls into RPC calls.

A handle holds only the identity the wire uses (pool: name and UUID; volume:
pool name, name and key); every property that can change is fetched anew.
"""

from __future__ import annotations

from virtvol.protocol import procedures
from virtvol.protocol import remote as r
from virtvol.protocol.constants import PoolInfo as PoolInfo
from virtvol.protocol.constants import PoolState as PoolState
from virtvol.protocol.constants import PoolXMLFlags, VolInfoFlags, VolResizeFlags
from virtvol.protocol.constants import VolumeInfo as VolumeInfo
from virtvol.protocol.constants import VolumeType as VolumeType
from virtvol.protocol.constants import VolWipeAlgorithm as VolWipeAlgorithm
from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record

if TYPE_CHECKING:
    import enum
    import os
    import uuid as uuidlib
    from collections.abc import Sequence
    from typing import Any

    from virtvol.client.interfaces import ConnectionLike as Connection
    from virtvol.client.streams import Download, Upload
    from virtvol.client.transfer_base import Progress, TransferResult
    from virtvol.protocol.procedures import ArgsT, Procedure, RetT
    from virtvol.protocol.xdr import XdrStruct

__all__ = [
    "PoolInfo",
    "PoolState",
    "StoragePool",
    "StorageVolume",
    "VolWipeAlgorithm",
    "VolumeInfo",
    "VolumeType",
]


def _enum_or_int(kind: type[enum.IntEnum], value: int) -> int:
    try:
        return kind(value)
    except ValueError:
        return value


def _pool_info(ret: r.PoolGetInfoRet) -> PoolInfo:
    return PoolInfo(_enum_or_int(PoolState, ret.state), ret.capacity, ret.allocation, ret.available)


def _volume_info(ret: r.VolGetInfoRet) -> VolumeInfo:
    return VolumeInfo(_enum_or_int(VolumeType, ret.type), ret.capacity, ret.allocation)


# Calls kept in flight when many volumes are described: libvirtd serves at most
# max_client_requests (5 by default) of a client's calls at once; more would only wait
# in its socket.
CALLS_IN_FLIGHT = 5


class PoolSummary(Record):
    """What ``describe_pools`` found of a pool; None for each answer not asked for, or
    that the daemon could not give (a transient pool destroyed since it was listed)."""

    autostart: bool | None
    persistent: bool | None
    info: PoolInfo | None
    active: bool | None


async def describe_pools(pools: Sequence[StoragePool], *, details: bool) -> list[PoolSummary]:
    """Each pool's autostart flag and info, and what virsh's pool-list asks besides:
    whether it is persistent with ``details``, whether it is active without; asked with
    ``CALLS_IN_FLIGHT`` calls out at a time (see ``describe_volumes``), in order.

    Raises:
        TransportError: the connection failed.
    """
    if not pools:
        return []
    besides = (
        procedures.STORAGE_POOL_IS_PERSISTENT if details else procedures.STORAGE_POOL_IS_ACTIVE
    )
    asked = (procedures.STORAGE_POOL_GET_AUTOSTART, besides, procedures.STORAGE_POOL_GET_INFO)
    calls: list[tuple[Procedure[Any, Any], XdrStruct | None]] = [
        (procedure, r.PoolArgs(pool.wire)) for pool in pools for procedure in asked
    ]
    answers = iter(await pools[0].connection._rpc.call_all(calls, window=CALLS_IN_FLIGHT))
    summaries = []
    for _ in pools:
        autostart, persistent_or_active, info = next(answers), next(answers), next(answers)
        persistent = persistent_or_active if details else None
        active = None if details else persistent_or_active
        summaries.append(
            PoolSummary(
                autostart.autostart == 1 if isinstance(autostart, r.AutostartRet) else None,
                persistent.persistent == 1 if isinstance(persistent, r.PersistentRet) else None,
                _pool_info(info) if isinstance(info, r.PoolGetInfoRet) else None,
                active.active == 1 if isinstance(active, r.ActiveRet) else None,
            )
        )
    return summaries


async def describe_volumes(
    volumes: Sequence[StorageVolume], *, info: bool
) -> list[tuple[str | None, VolumeInfo | None]]:
    """Each volume's path and, with ``info``, its type and sizes, or None for each
    the daemon could not give (a volume deleted since it was listed), in order.

    The calls go out ``CALLS_IN_FLIGHT`` at a time instead of one round trip each, as
    virsh makes them: listing a pool of thousands of volumes is bound by the daemon's
    work, not by the wait between calls.

    Raises:
        TransportError: the connection failed.
    """
    if not volumes:
        return []
    calls: list[tuple[Procedure[Any, Any], XdrStruct | None]] = []
    for volume in volumes:
        calls.append((procedures.STORAGE_VOL_GET_PATH, r.VolArgs(volume.wire)))
        if info:
            calls.append((procedures.STORAGE_VOL_GET_INFO, r.VolArgs(volume.wire)))
    answers = await volumes[0].connection._rpc.call_all(calls, window=CALLS_IN_FLIGHT)
    step = 2 if info else 1
    described: list[tuple[str | None, VolumeInfo | None]] = []
    for index in range(0, len(answers), step):
        path = answers[index]
        details = answers[index + 1] if info else None
        described.append(
            (
                path.name if isinstance(path, r.VolGetPathRet) else None,
                _volume_info(details) if isinstance(details, r.VolGetInfoRet) else None,
            )
        )
    return described


class StoragePool:
    """A storage pool on the daemon.

    Every method that calls the daemon takes a keyword-only ``timeout`` (seconds;
    None waits as long as the connection lives) and raises ``CallTimeout`` then.

    Attributes:
        connection: the connection it was found on.
        name: the pool's name.
        uuid: the pool's UUID.
    """

    def __init__(self, connection: Connection, name: str, uuid: bytes) -> None:
        self.connection = connection
        self.name = name
        self._uuid = uuid

    @property
    def uuid(self) -> uuidlib.UUID:
        """The pool's UUID."""
        import uuid as uuidlib  # here: it costs every command ~2 ms to import

        return uuidlib.UUID(bytes=self._uuid)

    @property
    def uuid_string(self) -> str:
        """The pool's UUID as text (libvirt's ``UUIDString``), without importing uuid."""
        text = self._uuid.hex()
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"

    def __repr__(self) -> str:
        return f"StoragePool(name={self.name!r}, uuid='{self.uuid_string}')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoragePool) and (self.name, self._uuid) == (
            other.name,
            other._uuid,
        )

    def __hash__(self) -> int:
        return hash((self.name, self._uuid))

    @property
    def wire(self) -> r.StoragePool:
        """The pool as the wire names it."""
        return r.StoragePool(self.name, self._uuid)

    async def _call(
        self, procedure: Procedure[ArgsT, RetT], args: ArgsT, *, timeout: float | None = None
    ) -> RetT:
        return await self.connection._rpc.call(procedure, args, timeout=timeout)

    async def info(self, *, timeout: float | None = None) -> PoolInfo:
        """State, capacity, allocation and available bytes (zeros while inactive)."""
        ret = await self._call(
            procedures.STORAGE_POOL_GET_INFO, r.PoolArgs(self.wire), timeout=timeout
        )
        return _pool_info(ret)

    async def xml_desc(self, *, inactive: bool = False, timeout: float | None = None) -> str:
        """The pool's XML (``inactive``: the persistent definition)."""
        flags = PoolXMLFlags.INACTIVE if inactive else 0
        ret = await self._call(
            procedures.STORAGE_POOL_GET_XML_DESC, r.PoolFlagsArgs(self.wire, flags), timeout=timeout
        )
        return ret.xml

    async def is_active(self, *, timeout: float | None = None) -> bool:
        """Whether the pool is running."""
        ret = await self._call(
            procedures.STORAGE_POOL_IS_ACTIVE, r.PoolArgs(self.wire), timeout=timeout
        )
        return ret.active == 1

    async def is_persistent(self, *, timeout: float | None = None) -> bool:
        """Whether the pool has a persistent definition."""
        ret = await self._call(
            procedures.STORAGE_POOL_IS_PERSISTENT, r.PoolArgs(self.wire), timeout=timeout
        )
        return ret.persistent == 1

    async def autostart(self, *, timeout: float | None = None) -> bool:
        """Whether the pool starts with the daemon."""
        ret = await self._call(
            procedures.STORAGE_POOL_GET_AUTOSTART, r.PoolArgs(self.wire), timeout=timeout
        )
        return ret.autostart == 1

    async def set_autostart(self, autostart: bool, *, timeout: float | None = None) -> None:
        """Mark (or unmark) the pool to start with the daemon."""
        await self._call(
            procedures.STORAGE_POOL_SET_AUTOSTART,
            r.PoolSetAutostartArgs(self.wire, int(autostart)),
            timeout=timeout,
        )

    async def start(self, *, flags: int = 0, timeout: float | None = None) -> None:
        """Start (activate) a defined pool (``flags``: libvirt's build flags)."""
        await self._call(
            procedures.STORAGE_POOL_CREATE, r.PoolFlagsArgs(self.wire, flags), timeout=timeout
        )

    async def build(self, *, flags: int = 0, timeout: float | None = None) -> None:
        """Build the pool's storage on the host (a dir pool: its folder) while it is
        inactive (``flags``: libvirt's ``PoolBuildFlags``, e.g. NO_OVERWRITE)."""
        await self._call(
            procedures.STORAGE_POOL_BUILD, r.PoolFlagsArgs(self.wire, flags), timeout=timeout
        )

    async def destroy(self, *, timeout: float | None = None) -> None:
        """Stop the pool (its volumes are kept)."""
        await self._call(procedures.STORAGE_POOL_DESTROY, r.PoolArgs(self.wire), timeout=timeout)

    async def delete(self, *, flags: int = 0, timeout: float | None = None) -> None:
        """Remove the pool's storage from the host (a dir pool: its empty folder) while
        it is inactive; the definition stays. The opposite of ``build``."""
        await self._call(
            procedures.STORAGE_POOL_DELETE, r.PoolFlagsArgs(self.wire, flags), timeout=timeout
        )

    async def undefine(self, *, timeout: float | None = None) -> None:
        """Remove the pool's persistent definition."""
        await self._call(procedures.STORAGE_POOL_UNDEFINE, r.PoolArgs(self.wire), timeout=timeout)

    async def refresh(self, *, timeout: float | None = None) -> None:
        """Rescan the pool's volumes."""
        await self._call(
            procedures.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(self.wire, 0), timeout=timeout
        )

    async def num_of_volumes(self, *, timeout: float | None = None) -> int:
        """How many volumes the pool holds."""
        ret = await self._call(
            procedures.STORAGE_POOL_NUM_OF_VOLUMES, r.PoolArgs(self.wire), timeout=timeout
        )
        return ret.num

    async def list_volumes(self, *, timeout: float | None = None) -> list[StorageVolume]:
        """The pool's volumes, sorted by name."""
        ret = await self._call(
            procedures.STORAGE_POOL_LIST_ALL_VOLUMES,
            r.PoolListAllVolumesArgs(self.wire, need_results=1, flags=0),
            timeout=timeout,
        )
        vols = (StorageVolume.from_wire(self.connection, v) for v in ret.vols)
        return sorted(vols, key=lambda v: v.name)

    async def lookup_volume(self, name: str, *, timeout: float | None = None) -> StorageVolume:
        """The volume called ``name`` in this (active) pool.

        Raises:
            NoStorageVolume: no such volume.
            OperationInvalid: the pool is not active.
        """
        ret = await self._call(
            procedures.STORAGE_VOL_LOOKUP_BY_NAME,
            r.VolLookupByNameArgs(self.wire, name),
            timeout=timeout,
        )
        return StorageVolume.from_wire(self.connection, ret.vol)

    async def create_volume(
        self, xml: str, *, flags: int = 0, timeout: float | None = None
    ) -> StorageVolume:
        """Create a volume from its XML description."""
        ret = await self._call(
            procedures.STORAGE_VOL_CREATE_XML,
            r.VolCreateXmlArgs(self.wire, xml, flags),
            timeout=timeout,
        )
        return StorageVolume.from_wire(self.connection, ret.vol)

    async def create_volume_from(
        self, xml: str, source: StorageVolume, *, flags: int = 0, timeout: float | None = None
    ) -> StorageVolume:
        """Create a volume from XML, filled with a copy of ``source`` (a clone)."""
        ret = await self._call(
            procedures.STORAGE_VOL_CREATE_XML_FROM,
            r.VolCreateXmlFromArgs(self.wire, xml, source.wire, flags),
            timeout=timeout,
        )
        return StorageVolume.from_wire(self.connection, ret.vol)


class StorageVolume:
    """A storage volume on the daemon.

    Every method that makes one call takes a keyword-only ``timeout``, as on
    ``StoragePool``; transfers end when their stream does.

    Attributes:
        connection: the connection it was found on.
        pool_name: the name of the pool holding it.
        name: the volume's name.
        key: the volume's key (for dir pools, its path).
    """

    def __init__(self, connection: Connection, pool_name: str, name: str, key: str) -> None:
        self.connection = connection
        self.pool_name = pool_name
        self.name = name
        self.key = key

    @classmethod
    def from_wire(cls, connection: Connection, vol: r.StorageVol) -> StorageVolume:
        """Build a handle from the wire struct."""
        return cls(connection, vol.pool, vol.name, vol.key)

    def __repr__(self) -> str:
        return f"StorageVolume(pool={self.pool_name!r}, name={self.name!r}, key={self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorageVolume) and (self.pool_name, self.name, self.key) == (
            other.pool_name,
            other.name,
            other.key,
        )

    def __hash__(self) -> int:
        return hash((self.pool_name, self.name, self.key))

    @property
    def wire(self) -> r.StorageVol:
        """The volume as the wire names it."""
        return r.StorageVol(self.pool_name, self.name, self.key)

    async def _call(
        self, procedure: Procedure[ArgsT, RetT], args: ArgsT, *, timeout: float | None = None
    ) -> RetT:
        return await self.connection._rpc.call(procedure, args, timeout=timeout)

    async def info(self, *, physical: bool = False, timeout: float | None = None) -> VolumeInfo:
        """Type, capacity and allocation.

        Args:
            physical: report the volume's physical size as its allocation
                (libvirt's VIR_STORAGE_VOL_GET_PHYSICAL, sent with GET_INFO_FLAGS).
            timeout: seconds to wait for the answer.
        """
        if physical:
            ret = await self._call(
                procedures.STORAGE_VOL_GET_INFO_FLAGS,
                r.VolFlagsArgs(self.wire, VolInfoFlags.GET_PHYSICAL),
                timeout=timeout,
            )
        else:
            ret = await self._call(
                procedures.STORAGE_VOL_GET_INFO, r.VolArgs(self.wire), timeout=timeout
            )
        return _volume_info(ret)

    async def xml_desc(self, *, timeout: float | None = None) -> str:
        """The volume's XML description."""
        ret = await self._call(
            procedures.STORAGE_VOL_GET_XML_DESC, r.VolFlagsArgs(self.wire, 0), timeout=timeout
        )
        return ret.xml

    async def path(self, *, timeout: float | None = None) -> str:
        """The volume's path on the daemon's host."""
        ret = await self._call(
            procedures.STORAGE_VOL_GET_PATH, r.VolArgs(self.wire), timeout=timeout
        )
        return ret.name

    async def pool(self, *, timeout: float | None = None) -> StoragePool:
        """The pool that holds the volume."""
        ret = await self._call(
            procedures.STORAGE_POOL_LOOKUP_BY_VOLUME, r.VolArgs(self.wire), timeout=timeout
        )
        pool = ret.pool
        return StoragePool(self.connection, pool.name, pool.uuid)

    async def delete(self, *, flags: int = 0, timeout: float | None = None) -> None:
        """Delete the volume."""
        await self._call(
            procedures.STORAGE_VOL_DELETE, r.VolFlagsArgs(self.wire, flags), timeout=timeout
        )

    async def wipe(self, *, timeout: float | None = None) -> None:
        """Overwrite the volume's contents with zeros."""
        await self._call(procedures.STORAGE_VOL_WIPE, r.VolFlagsArgs(self.wire, 0), timeout=timeout)

    async def wipe_pattern(
        self, algorithm: VolWipeAlgorithm, *, timeout: float | None = None
    ) -> None:
        """Overwrite the volume's contents by ``algorithm``: zeros (``ZERO``), one of the
        ``scrub`` tool's patterns, or a discard (``TRIM``); the daemon refuses what its
        pool or host cannot do. A daemon without this call raises ``NoSupport``: ``wipe``
        is the zero algorithm there."""
        await self._call(
            procedures.STORAGE_VOL_WIPE_PATTERN,
            r.VolWipePatternArgs(self.wire, algorithm, 0),
            timeout=timeout,
        )

    async def resize(
        self,
        capacity: int,
        *,
        allocate: bool = False,
        delta: bool = False,
        shrink: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Change the volume's capacity.

        Args:
            capacity: the new capacity in bytes (with ``delta``: the change).
            allocate: allocate the new space.
            delta: ``capacity`` is relative to the current one.
            shrink: allow a smaller capacity.
        """
        flags = (
            (VolResizeFlags.ALLOCATE if allocate else 0)
            | (VolResizeFlags.DELTA if delta else 0)
            | (VolResizeFlags.SHRINK if shrink else 0)
        )
        await self._call(
            procedures.STORAGE_VOL_RESIZE,
            r.VolResizeArgs(self.wire, capacity, flags),
            timeout=timeout,
        )

    def upload(self, *, offset: int = 0, length: int = 0, sparse: bool | None = None) -> Upload:
        """A stream writing into the volume: ``async with vol.upload() as stream``.

        Args:
            offset: where in the volume writing starts.
            length: the most bytes to write (0: no limit).
            sparse: None negotiates (sparse if the peer can, dense otherwise),
                True requires sparse, False never asks.
        """
        from virtvol.client.streams import Upload

        return Upload(self, offset=offset, length=length, sparse=sparse)

    def download(self, *, offset: int = 0, length: int = 0, sparse: bool | None = None) -> Download:
        """A stream reading the volume: ``async with vol.download() as stream: async for ...``.

        Yields data chunks (``bytes`` or ``memoryview``) and ``Hole`` items.

        Args:
            offset: where in the volume reading starts.
            length: the most bytes to read (0: to the end).
            sparse: as for ``upload``.
        """
        from virtvol.client.streams import Download

        return Download(self, offset=offset, length=length, sparse=sparse)

    async def upload_file(
        self,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int = 0,
        sparse: bool | None = None,
        detect_zeroes: bool = True,
        progress: Progress | None = None,
    ) -> TransferResult:
        """Upload a local file, sending its holes (and, with ``detect_zeroes``, its
        all-zero blocks) as holes. See ``virtvol.client.transfer.upload_file``."""
        return await self.connection._rpc.file_transfers().upload_file(
            self,
            path,
            offset=offset,
            length=length,
            sparse=sparse,
            detect_zeroes=detect_zeroes,
            progress=progress,
        )

    async def download_file(
        self,
        path: str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int = 0,
        sparse: bool | None = None,
        detect_zeroes: bool = True,
        progress: Progress | None = None,
    ) -> TransferResult:
        """Download into a local sparse file that appears atomically.
        See ``virtvol.client.transfer.download_file``."""
        return await self.connection._rpc.file_transfers().download_file(
            self,
            path,
            offset=offset,
            length=length,
            sparse=sparse,
            detect_zeroes=detect_zeroes,
            progress=progress,
        )
