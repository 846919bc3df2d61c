"""virtvol.client: asyncio client library and the virsh-compatible ``virtvol`` command.

async with virtvol.client.connect("storage+tcp://host/system") as conn:
    pool = await conn.lookup_pool_by_name("default")
    vol = await pool.lookup_volume("disk.img")
    await vol.upload_file("disk.img")

The names in ``__all__`` are the public API: connecting (``connect``,
``PendingConnection``, ``Connection``, ``default_uri``), pools and volumes
(``StoragePool``, ``StorageVolume``, ``PoolInfo``, ``VolumeInfo``, ``PoolState``,
``VolumeType``, ``VolWipeAlgorithm``, ``volume_xml``), transfers (``Upload``,
``Download``, ``Hole``, ``upload_file``, ``download_file``, ``TransferResult``) and the
errors (rooted at ``VirtvolError``). ``virtvol.client.testing`` offers an in-memory
daemon for tests. Other modules and names are internal: they may change in any release.
"""

from virtvol.client.connection import Connection, PendingConnection, connect
from virtvol.client.errors import (
    CallTimeout,
    ConnectionClosed,
    InvalidArgument,
    InvalidURI,
    LibvirtError,
    NoStoragePool,
    NoStorageVolume,
    NoSupport,
    OperationDenied,
    OperationFailed,
    OperationInvalid,
    ProtocolViolation,
    SparseUnsupported,
    StorageVolumeExists,
    StreamError,
    TransportError,
    UnsendableValue,
    UnsupportedTransport,
    VirtvolError,
)
from virtvol.client.objects import (
    PoolInfo,
    PoolState,
    StoragePool,
    StorageVolume,
    VolumeInfo,
    VolumeType,
    VolWipeAlgorithm,
)
from virtvol.client.uri import default_uri
from virtvol.client.xmldesc import volume_xml
from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from virtvol.client.streams import Download, Hole, Upload
    from virtvol.client.transfer import download_file, upload_file
    from virtvol.client.transfer_base import TransferResult

# Streams need asyncio, whole-file transfers the sparse engine (ctypes, threads):
# the command line's short commands import neither.
_LAZY = {
    "Download": "virtvol.client.streams",
    "Hole": "virtvol.client.streams",
    "Upload": "virtvol.client.streams",
    "TransferResult": "virtvol.client.transfer_base",
    "download_file": "virtvol.client.transfer",
    "upload_file": "virtvol.client.transfer",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CallTimeout",
    "Connection",
    "ConnectionClosed",
    "Download",
    "Hole",
    "InvalidArgument",
    "InvalidURI",
    "LibvirtError",
    "NoStoragePool",
    "NoStorageVolume",
    "NoSupport",
    "OperationDenied",
    "OperationFailed",
    "OperationInvalid",
    "PendingConnection",
    "PoolInfo",
    "PoolState",
    "ProtocolViolation",
    "SparseUnsupported",
    "StoragePool",
    "StorageVolume",
    "StorageVolumeExists",
    "StreamError",
    "TransferResult",
    "TransportError",
    "UnsendableValue",
    "UnsupportedTransport",
    "Upload",
    "VirtvolError",
    "VolWipeAlgorithm",
    "VolumeInfo",
    "VolumeType",
    "connect",
    "default_uri",
    "download_file",
    "upload_file",
    "volume_xml",
]
