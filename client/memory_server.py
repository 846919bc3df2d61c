"""The in-memory daemon's server: libvirt's storage procedures over the storage model,
through the protocol core's server role."""

from __future__ import annotations

import asyncio
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, TypeVar

from virtvol.client.memory_storage import MemoryPool, MemoryVolume
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    CallReceived,
    CallRejected,
    Event,
    PingReceived,
    Side,
    StreamAbortedByStatus,
    StreamAbortReceived,
    StreamDataReceived,
    StreamFinishReceived,
    StreamHoleReceived,
    StreamSkipRefused,
    StreamWrittenByClient,
)
from virtvol.protocol.connection import (
    Connection as ProtocolConnection,
)
from virtvol.protocol.constants import (
    LEGACY_PAYLOAD_MAX,
    AuthType,
    PoolState,
    VolStreamFlags,
    VolumeType,
    VolWipeAlgorithm,
)
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport, unsupported_flags
from virtvol.protocol.exceptions import ProtocolError
from virtvol.protocol.procedures import Proc
from virtvol.protocol.xdr import XdrStruct

if TYPE_CHECKING:
    from collections.abc import Callable

    from virtvol.client.memory_transport import MemoryTransport

__all__ = ["MemoryServer"]

LIB_VERSION = 9_000_000  # answers as libvirt 9.0 does
POOL_CAPACITY = 1 << 40
_RESIZE_DELTA, _RESIZE_SHRINK = 2, 4  # libvirt's VIR_STORAGE_VOL_RESIZE_* flags
_FEATURES = {10, 14, 15}  # keepalive, event callbacks, close callback
_UNITS = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}

T = TypeVar("T", bound=XdrStruct)


def _args(args: XdrStruct | None, kind: type[T]) -> T:
    assert isinstance(args, kind), (kind, args)
    return args


def _storage_error(code: ErrorCode, detail: str) -> ErrorReport:
    return ErrorReport.raised(code, ErrorDomain.STORAGE, detail)


def _volume_definition(xml: str) -> ET.Element:
    """The root of a volume definition, read as virtvold reads one: as UTF-8 whatever its
    declaration says (a byte that was not UTF-8 on the wire, kept as a surrogate, goes to
    the parser as that byte, to be refused), malformed XML refused with VIR_ERR_XML_DETAIL,
    the document's name and line, and another root element with VIR_ERR_XML_ERROR. The
    encoding a declaration names is not checked: virtvold asks the C library's iconv,
    and this module stays free of the daemon's code."""
    parser = ET.XMLParser(encoding="utf-8")
    try:
        parser.feed(xml.encode("utf-8", "surrogateescape"))
        root = parser.close()
    except ET.ParseError as exc:
        message = f"(storage_volume_definition):{exc.position[0]}: {exc.msg}"
        raise ErrorReport(ErrorCode.XML_DETAIL, ErrorDomain.STORAGE, message) from None
    if root.tag != "volume":
        raise ErrorReport.raised(
            ErrorCode.XML_ERROR,
            ErrorDomain.XML,
            f"expecting root element of 'volume', not '{root.tag}'",
        )
    return root


def _size(element: ET.Element | None) -> int:
    if element is None or element.text is None:
        return 0
    unit = (element.get("unit") or "bytes").lower()
    if unit not in _UNITS:
        raise _storage_error(ErrorCode.INVALID_ARG, f"unknown storage size unit '{unit}'")
    text = element.text.strip()
    if not text.isascii() or not text.removeprefix("+").isdigit():
        raise ErrorReport.raised(
            ErrorCode.XML_ERROR, ErrorDomain.STORAGE, "malformed capacity element"
        )
    return int(text) * _UNITS[unit]


class _Transfer:
    """One open stream on the server side."""

    def __init__(self, volume: MemoryVolume, *, offset: int, length: int, sparse: bool) -> None:
        self.volume = volume
        self.position = offset
        self.end = offset + length if length else None
        self.sparse = sparse
        self.task: asyncio.Task[None] | None = None
        # The client sent data or a skip into this download: its finish is refused.
        self.client_wrote = False


def _refused_end(
    event: StreamFinishReceived | StreamAbortReceived | StreamAbortedByStatus,
    transfer: _Transfer | None,
) -> str | None:
    """What the end of a stream is refused with, as libvirtd refuses it (the client waits
    for that answer instead of the end's STREAM/OK); None when it is acknowledged."""
    if isinstance(event, StreamAbortedByStatus):  # an abort by a status of no meaning
        return f"stream aborted with unexpected status {event.status}"
    if isinstance(event, StreamFinishReceived) and transfer is not None and transfer.client_wrote:
        return "stream had unexpected termination"
    return None


class MemoryServer:
    """libvirt's storage procedures over a daemon's pools, for one connection."""

    def __init__(
        self, pools: dict[str, MemoryPool], *, sparse_streams: bool, client: MemoryTransport
    ) -> None:
        self.pools = pools
        self.sparse_streams = sparse_streams
        self.client = client
        self.core = ProtocolConnection(Side.SERVER)
        self.transfers: dict[int, _Transfer] = {}
        self.stopped = False
        self.handlers: dict[int, Callable[[XdrStruct | None], XdrStruct | None]] = {
            Proc.AUTH_LIST: lambda _: r.AuthListRet(types=(AuthType.NONE,)),
            Proc.CONNECT_SUPPORTS_FEATURE: self._supports_feature,
            Proc.CONNECT_OPEN: lambda _: None,
            Proc.CONNECT_CLOSE: lambda _: None,
            Proc.CONNECT_REGISTER_CLOSE_CALLBACK: lambda _: None,
            Proc.CONNECT_UNREGISTER_CLOSE_CALLBACK: lambda _: None,
            Proc.CONNECT_GET_TYPE: lambda _: r.ConnectGetTypeRet("storage"),
            Proc.CONNECT_GET_LIB_VERSION: lambda _: r.ConnectGetLibVersionRet(LIB_VERSION),
            Proc.CONNECT_LIST_ALL_STORAGE_POOLS: self._list_pools,
            Proc.STORAGE_POOL_LOOKUP_BY_NAME: self._pool_by_name,
            Proc.STORAGE_POOL_LOOKUP_BY_UUID: self._pool_by_uuid,
            Proc.STORAGE_POOL_LOOKUP_BY_VOLUME: self._pool_by_volume,
            Proc.STORAGE_POOL_GET_INFO: self._pool_info,
            Proc.STORAGE_POOL_GET_XML_DESC: self._pool_xml,
            Proc.STORAGE_POOL_IS_ACTIVE: self._pool_is_active,
            Proc.STORAGE_POOL_IS_PERSISTENT: lambda _: r.PersistentRet(1),
            Proc.STORAGE_POOL_GET_AUTOSTART: self._pool_autostart,
            Proc.STORAGE_POOL_SET_AUTOSTART: self._pool_set_autostart,
            Proc.STORAGE_POOL_CREATE: self._pool_start,
            Proc.STORAGE_POOL_DESTROY: self._pool_destroy,
            Proc.STORAGE_POOL_REFRESH: self._pool_refresh,
            Proc.STORAGE_POOL_NUM_OF_VOLUMES: self._pool_num_volumes,
            Proc.STORAGE_POOL_LIST_ALL_VOLUMES: self._pool_list_volumes,
            Proc.STORAGE_VOL_LOOKUP_BY_NAME: self._vol_by_name,
            Proc.STORAGE_VOL_LOOKUP_BY_KEY: self._vol_by_key,
            Proc.STORAGE_VOL_LOOKUP_BY_PATH: self._vol_by_key,
            Proc.STORAGE_VOL_CREATE_XML: self._vol_create,
            Proc.STORAGE_VOL_GET_INFO: self._vol_info,
            Proc.STORAGE_VOL_GET_INFO_FLAGS: self._vol_info,
            Proc.STORAGE_VOL_GET_XML_DESC: self._vol_xml,
            Proc.STORAGE_VOL_GET_PATH: self._vol_path,
            Proc.STORAGE_VOL_DELETE: self._vol_delete,
            Proc.STORAGE_VOL_WIPE: self._vol_wipe,
            Proc.STORAGE_VOL_WIPE_PATTERN: self._vol_wipe_pattern,
            Proc.STORAGE_VOL_RESIZE: self._vol_resize,
        }

    # -- bytes in, events, bytes out ---------------------------------------------

    def receive(self, data: bytes) -> None:
        if self.stopped:
            return
        try:
            self.core.receive_data(data)
            while (event := self.core.next_event()) is not None:
                self._dispatch(event)
        except ProtocolError as exc:
            self.client.drop(ConnectionResetError(f"the memory daemon dropped the client: {exc}"))

    def send(self, frame: bytes) -> None:
        self.client.deliver(frame)

    def stop(self) -> None:
        self.stopped = True
        for transfer in self.transfers.values():
            if transfer.task is not None:
                transfer.task.cancel()
        self.transfers.clear()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, CallReceived):
            self._serve(event)
        elif isinstance(event, CallRejected):
            self.send(self.core.reply_error(event.serial, event.error))
        elif isinstance(event, StreamDataReceived | StreamHoleReceived):
            transfer = self.transfers.get(event.serial)
            if transfer is None:
                return
            if isinstance(event, StreamDataReceived):
                transfer.volume.write(transfer.position, event.data)
                transfer.position += len(event.data)
            else:
                transfer.volume.punch(transfer.position, event.length)
                transfer.position += event.length
        elif isinstance(event, StreamWrittenByClient):
            # As libvirtd: dropped, the download goes on, and the finish is refused.
            transfer = self.transfers.get(event.serial)
            if transfer is not None:
                transfer.client_wrote = True
        elif isinstance(event, StreamFinishReceived | StreamAbortReceived | StreamAbortedByStatus):
            transfer = self.transfers.pop(event.serial, None)
            if transfer is not None and transfer.task is not None:
                transfer.task.cancel()
            refusal = _refused_end(event, transfer)
            if refusal is None:
                self.send(self.core.send_finish_ack(event.serial))
            else:
                failure = ErrorReport(ErrorCode.RPC, ErrorDomain.STREAMS, refusal)
                self.send(
                    self.core.send_stream_error(event.serial, r.RemoteError.from_report(failure))
                )
        elif isinstance(event, StreamSkipRefused):
            # As libvirtd: the stream is aborted (what it wrote stays, written in place)
            # and the refusal is an error REPLY on its serial; the core forgot the stream,
            # so the client's finish after it goes unanswered, as libvirtd leaves it.
            self.transfers.pop(event.serial, None)
            self.send(self.core.refuse_stream_frame(event))
        elif isinstance(event, PingReceived):
            self.send(self.core.send_pong())

    def _serve(self, call: CallReceived) -> None:
        number = call.procedure.number
        try:
            if number in (Proc.STORAGE_VOL_UPLOAD, Proc.STORAGE_VOL_DOWNLOAD):
                self._open_transfer(call)
                return
            handler = self.handlers.get(number)
            if handler is None:
                raise _storage_error(ErrorCode.NO_SUPPORT, call.procedure.name)
            result = handler(call.args)
        except ErrorReport as report:
            self.send(self.core.reply_error(call.serial, r.RemoteError.from_report(report)))
            return
        except Exception as exc:
            # A fault of this daemon's own: answered as virtvold answers one, since a
            # call left unanswered keeps the client waiting forever.
            failure = ErrorReport.raised(
                ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, f"{call.procedure.name} failed: {exc}"
            )
            self.send(self.core.reply_error(call.serial, r.RemoteError.from_report(failure)))
            return
        self.send(self.core.reply(call.serial, result))

    # -- lookups -----------------------------------------------------------------

    def _pool(self, name: str, *, active: bool = False) -> MemoryPool:
        pool = self.pools.get(name)
        if pool is None:
            raise _storage_error(
                ErrorCode.NO_STORAGE_POOL, f"no storage pool with matching name '{name}'"
            )
        if active and not pool.active:
            raise _storage_error(
                ErrorCode.OPERATION_INVALID, f"storage pool '{name}' is not active"
            )
        return pool

    def _volume(self, wire: r.StorageVol) -> tuple[MemoryPool, MemoryVolume]:
        pool = self.pools.get(wire.pool)
        volume = pool.volumes.get(wire.name) if pool is not None and pool.active else None
        if pool is None or volume is None:
            raise _storage_error(
                ErrorCode.NO_STORAGE_VOL, f"no storage vol with matching name '{wire.name}'"
            )
        return pool, volume

    @staticmethod
    def _wire_pool(pool: MemoryPool) -> r.StoragePool:
        return r.StoragePool(pool.name, pool.uuid.bytes)

    @staticmethod
    def _wire_vol(pool: MemoryPool, volume: MemoryVolume) -> r.StorageVol:
        return r.StorageVol(pool.name, volume.name, pool.key(volume.name))

    # -- connection --------------------------------------------------------------

    def _supports_feature(self, args: XdrStruct | None) -> XdrStruct:
        feature = _args(args, r.ConnectSupportsFeatureArgs).feature
        return r.ConnectSupportsFeatureRet(int(feature in _FEATURES))

    def _list_pools(self, args: XdrStruct | None) -> XdrStruct:
        pools = tuple(self._wire_pool(p) for p in self.pools.values())
        return r.ListAllPoolsRet(pools, len(pools))

    # -- pools -------------------------------------------------------------------

    def _pool_by_name(self, args: XdrStruct | None) -> XdrStruct:
        return r.PoolRet(self._wire_pool(self._pool(_args(args, r.LookupByNameArgs).name)))

    def _pool_by_uuid(self, args: XdrStruct | None) -> XdrStruct:
        raw = _args(args, r.LookupByUuidArgs).uuid
        for pool in self.pools.values():
            if pool.uuid.bytes == raw:
                return r.PoolRet(self._wire_pool(pool))
        text = str(uuidlib.UUID(bytes=raw)) if len(raw) == 16 else raw.hex()
        raise _storage_error(
            ErrorCode.NO_STORAGE_POOL, f"no storage pool with matching uuid '{text}'"
        )

    def _pool_by_volume(self, args: XdrStruct | None) -> XdrStruct:
        pool, _ = self._volume(_args(args, r.VolArgs).vol)
        return r.PoolRet(self._wire_pool(pool))

    def _pool_of(self, args: XdrStruct | None) -> MemoryPool:
        assert isinstance(args, r.PoolArgs | r.PoolFlagsArgs), args
        return self._pool(args.pool.name)

    def _pool_info(self, args: XdrStruct | None) -> r.PoolGetInfoRet:
        pool = self._pool_of(args)
        if not pool.active:
            return r.PoolGetInfoRet(PoolState.INACTIVE, 0, 0, 0)
        used = sum(v.allocation for v in pool.volumes.values())
        return r.PoolGetInfoRet(PoolState.RUNNING, POOL_CAPACITY, used, POOL_CAPACITY - used)

    def _pool_xml(self, args: XdrStruct | None) -> XdrStruct:
        pool = self._pool_of(args)
        info = self._pool_info(args)
        xml = (
            f"<pool type='dir'>\n  <name>{pool.name}</name>\n  <uuid>{pool.uuid}</uuid>\n"
            f"  <capacity unit='bytes'>{info.capacity}</capacity>\n"
            f"  <allocation unit='bytes'>{info.allocation}</allocation>\n"
            f"  <available unit='bytes'>{info.available}</available>\n"
            f"  <target>\n    <path>/{pool.name}</path>\n  </target>\n</pool>\n"
        )
        return r.XmlRet(xml)

    def _pool_is_active(self, args: XdrStruct | None) -> XdrStruct:
        return r.ActiveRet(int(self._pool_of(args).active))

    def _pool_autostart(self, args: XdrStruct | None) -> XdrStruct:
        return r.AutostartRet(int(self._pool_of(args).autostart))

    def _pool_set_autostart(self, args: XdrStruct | None) -> None:
        wanted = _args(args, r.PoolSetAutostartArgs)
        self._pool(wanted.pool.name).autostart = bool(wanted.autostart)

    def _pool_start(self, args: XdrStruct | None) -> None:
        pool = self._pool_of(args)
        if pool.active:
            raise _storage_error(
                ErrorCode.OPERATION_INVALID, f"storage pool '{pool.name}' is already active"
            )
        pool.active = True

    def _pool_destroy(self, args: XdrStruct | None) -> None:
        self._pool(self._pool_of(args).name, active=True).active = False

    def _pool_refresh(self, args: XdrStruct | None) -> None:
        self._pool(self._pool_of(args).name, active=True)

    def _pool_num_volumes(self, args: XdrStruct | None) -> XdrStruct:
        return r.NumRet(len(self._pool(self._pool_of(args).name, active=True).volumes))

    def _pool_list_volumes(self, args: XdrStruct | None) -> XdrStruct:
        pool = self._pool(_args(args, r.PoolListAllVolumesArgs).pool.name, active=True)
        vols = tuple(self._wire_vol(pool, v) for v in pool.volumes.values())
        return r.PoolListAllVolumesRet(vols, len(vols))

    # -- volumes -----------------------------------------------------------------

    def _vol_by_name(self, args: XdrStruct | None) -> XdrStruct:
        wanted = _args(args, r.VolLookupByNameArgs)
        pool = self._pool(wanted.pool.name, active=True)
        volume = pool.volumes.get(wanted.name)
        if volume is None:
            raise _storage_error(
                ErrorCode.NO_STORAGE_VOL, f"no storage vol with matching name '{wanted.name}'"
            )
        return r.VolRet(self._wire_vol(pool, volume))

    def _vol_by_key(self, args: XdrStruct | None) -> XdrStruct:
        assert isinstance(args, r.VolLookupByKeyArgs | r.VolLookupByPathArgs), args
        key = args.key if isinstance(args, r.VolLookupByKeyArgs) else args.path
        for pool in self.pools.values():
            for volume in pool.volumes.values() if pool.active else ():
                if pool.key(volume.name) == key:
                    return r.VolRet(self._wire_vol(pool, volume))
        # libvirt quotes a path but not a key.
        detail = f"path '{key}'" if isinstance(args, r.VolLookupByPathArgs) else f"key {key}"
        raise _storage_error(ErrorCode.NO_STORAGE_VOL, f"no storage vol with matching {detail}")

    def _vol_create(self, args: XdrStruct | None) -> XdrStruct:
        wanted = _args(args, r.VolCreateXmlArgs)
        pool = self._pool(wanted.pool.name, active=True)
        root = _volume_definition(wanted.xml)
        name = (root.findtext("name") or "").strip()
        if not name:
            raise ErrorReport.raised(
                ErrorCode.XML_ERROR, ErrorDomain.STORAGE, "missing volume name element"
            )
        if name in pool.volumes:
            raise ErrorReport(
                ErrorCode.STORAGE_VOL_EXIST,
                ErrorDomain.STORAGE,
                f"storage volume '{name}' exists already",
            )
        pool.volumes[name] = MemoryVolume.empty(name, _size(root.find("capacity")))
        return r.VolRet(self._wire_vol(pool, pool.volumes[name]))

    def _vol_info(self, args: XdrStruct | None) -> XdrStruct:
        assert isinstance(args, r.VolArgs | r.VolFlagsArgs), args
        _, volume = self._volume(args.vol)
        return r.VolGetInfoRet(VolumeType.FILE, volume.capacity, volume.allocation)

    def _vol_xml(self, args: XdrStruct | None) -> XdrStruct:
        pool, volume = self._volume(_args(args, r.VolFlagsArgs).vol)
        key = pool.key(volume.name)
        xml = (
            f"<volume type='file'>\n  <name>{volume.name}</name>\n  <key>{key}</key>\n"
            f"  <capacity unit='bytes'>{volume.capacity}</capacity>\n"
            f"  <allocation unit='bytes'>{volume.allocation}</allocation>\n"
            f"  <target>\n    <path>{key}</path>\n    <format type='raw'/>\n"
            "  </target>\n</volume>\n"
        )
        return r.XmlRet(xml)

    def _vol_path(self, args: XdrStruct | None) -> XdrStruct:
        pool, volume = self._volume(_args(args, r.VolArgs).vol)
        return r.VolGetPathRet(pool.key(volume.name))

    def _vol_delete(self, args: XdrStruct | None) -> None:
        pool, volume = self._volume(_args(args, r.VolFlagsArgs).vol)
        del pool.volumes[volume.name]

    def _vol_wipe(self, args: XdrStruct | None) -> None:
        _, volume = self._volume(_args(args, r.VolFlagsArgs).vol)
        volume.write(0, bytes(volume.capacity))

    def _vol_wipe_pattern(self, args: XdrStruct | None) -> None:
        """Zeroes, as libvirt's wipe is this call with the zero algorithm; the others are
        refused as virtvold refuses them in a directory pool, after the same checks in
        the same order (flags, the algorithm's range, the volume)."""
        wanted = _args(args, r.VolWipePatternArgs)
        if wanted.flags:
            raise unsupported_flags(wanted.flags, "storageVolWipePattern", ErrorDomain.STORAGE)
        if wanted.algorithm >= len(VolWipeAlgorithm):
            raise _storage_error(
                ErrorCode.INVALID_ARG, f"wiping algorithm {wanted.algorithm} not supported"
            )
        _, volume = self._volume(wanted.vol)
        if wanted.algorithm == VolWipeAlgorithm.TRIM:
            raise _storage_error(ErrorCode.ARGUMENT_UNSUPPORTED, "'trim' algorithm not supported")
        if wanted.algorithm != VolWipeAlgorithm.ZERO:
            raise _storage_error(
                ErrorCode.ARGUMENT_UNSUPPORTED,
                f"wiping algorithm {wanted.algorithm} needs scrub, which virtvold does not run",
            )
        volume.write(0, bytes(volume.capacity))

    def _vol_resize(self, args: XdrStruct | None) -> None:
        wanted = _args(args, r.VolResizeArgs)
        _, volume = self._volume(wanted.vol)
        if wanted.flags & _RESIZE_DELTA:
            change = wanted.capacity
            capacity = (
                volume.capacity - change
                if wanted.flags & _RESIZE_SHRINK
                else volume.capacity + change
            )
        else:
            capacity = wanted.capacity
        if capacity < volume.capacity and not wanted.flags & _RESIZE_SHRINK:
            raise _storage_error(
                ErrorCode.INVALID_ARG,
                "Can't shrink capacity below current capacity unless shrink flag "
                "explicitly specified",
            )
        if capacity < 0:
            raise _storage_error(ErrorCode.INVALID_ARG, "can't shrink capacity below zero")
        volume.resize(capacity)

    # -- streams -----------------------------------------------------------------

    def _open_transfer(self, call: CallReceived) -> None:
        wanted = _args(call.args, r.VolTransferArgs)
        upload = call.procedure.number == Proc.STORAGE_VOL_UPLOAD
        function = "storageVolUpload" if upload else "storageVolDownload"
        supported = VolStreamFlags.SPARSE if self.sparse_streams else 0
        if wanted.flags & ~supported:
            raise unsupported_flags(wanted.flags & ~supported, function, ErrorDomain.STORAGE)
        _, volume = self._volume(wanted.vol)
        if wanted.offset > volume.capacity:
            raise _storage_error(
                ErrorCode.INVALID_ARG,
                f"offset {wanted.offset} is past the end of volume '{volume.name}'",
            )
        transfer = _Transfer(
            volume,
            offset=wanted.offset,
            length=wanted.length,
            sparse=bool(wanted.flags & VolStreamFlags.SPARSE),
        )
        self.transfers[call.serial] = transfer
        self.send(self.core.reply(call.serial))
        if not upload:
            task = asyncio.get_running_loop().create_task(self._send_volume(call.serial, transfer))
            transfer.task = task

    async def _send_volume(self, serial: int, transfer: _Transfer) -> None:
        """A download: data and holes (holes as zeros on a dense stream), then the end."""
        volume = transfer.volume
        first = transfer.position
        end = volume.capacity if transfer.end is None else min(transfer.end, volume.capacity)
        # What the volume holds as the stream opens: calls made meanwhile (a resize,
        # a delete) cannot cut the stream short.
        content = bytes(volume.content[first:end])
        for is_data, start, stop in volume.extents(first, end):
            if not is_data and transfer.sparse:
                self.send(self.core.send_hole(serial, stop - start))
                continue
            for piece in range(start, stop, LEGACY_PAYLOAD_MAX):
                data = content[piece - first : min(stop, piece + LEGACY_PAYLOAD_MAX) - first]
                head, payload = self.core.send_data(serial, data)
                self.send(head + bytes(payload))
                await self.client.room()
        self.send(self.core.send_eof(serial))
