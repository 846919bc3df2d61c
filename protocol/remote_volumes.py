"""The REMOTE program's structs of volumes and of listing a pool's volumes.

Part of ``virtvol.protocol.remote``, which hands them out under its own name: this
module is imported when one of them is first used, so that a command that touches
no volume (``pool-list``) does not declare them. Declared as ``remote``'s are.
"""

from __future__ import annotations

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Annotated
else:
    from virtvol.protocol.hints import Annotated

from virtvol.protocol.constants import REMOTE_STORAGE_VOL_LIST_MAX, REMOTE_STRING_MAX
from virtvol.protocol.remote import I32, U32, U64, NonnullString, StoragePool, StorageVol
from virtvol.protocol.xdr import Array, String, XdrStruct

__all__ = [
    "ListVolNamesRet",
    "PoolListAllVolumesArgs",
    "PoolListAllVolumesRet",
    "PoolListVolumesArgs",
    "VolArgs",
    "VolCreateXmlArgs",
    "VolCreateXmlFromArgs",
    "VolFlagsArgs",
    "VolGetInfoRet",
    "VolGetPathRet",
    "VolLookupByKeyArgs",
    "VolLookupByNameArgs",
    "VolLookupByPathArgs",
    "VolNames",
    "VolResizeArgs",
    "VolRet",
    "VolTransferArgs",
    "VolWipePatternArgs",
    "Volumes",
]

VolNames = Annotated[tuple[str, ...], Array(String(REMOTE_STRING_MAX), REMOTE_STORAGE_VOL_LIST_MAX)]


class VolArgs(XdrStruct):
    """``{vol}``: pool lookup by volume, volume info, path."""

    vol: StorageVol


class PoolListVolumesArgs(XdrStruct):
    pool: StoragePool
    maxnames: I32


class ListVolNamesRet(XdrStruct):
    names: VolNames


class PoolListAllVolumesArgs(XdrStruct):
    pool: StoragePool
    need_results: I32
    flags: U32


Volumes = Annotated[tuple[StorageVol, ...], Array(StorageVol.codec(), REMOTE_STORAGE_VOL_LIST_MAX)]


class PoolListAllVolumesRet(XdrStruct):
    vols: Volumes
    ret: U32


class VolCreateXmlArgs(XdrStruct):
    pool: StoragePool
    xml: NonnullString
    flags: U32


class VolCreateXmlFromArgs(XdrStruct):
    pool: StoragePool
    xml: NonnullString
    clonevol: StorageVol
    flags: U32


class VolRet(XdrStruct):
    """``{vol}``: the result of every call that returns a volume."""

    vol: StorageVol


class VolFlagsArgs(XdrStruct):
    """``{vol, flags}``: delete, wipe, XML description, info with flags."""

    vol: StorageVol
    flags: U32


class VolLookupByNameArgs(XdrStruct):
    pool: StoragePool
    name: NonnullString


class VolLookupByKeyArgs(XdrStruct):
    key: NonnullString


class VolLookupByPathArgs(XdrStruct):
    path: NonnullString


class VolGetInfoRet(XdrStruct):
    type: I32
    capacity: U64
    allocation: U64


class VolGetPathRet(XdrStruct):
    """The path of a volume; libvirt names the field ``name``."""

    name: NonnullString


class VolTransferArgs(XdrStruct):
    """Arguments of STORAGE_VOL_UPLOAD and STORAGE_VOL_DOWNLOAD; flag 1 asks for sparse."""

    vol: StorageVol
    offset: U64
    length: U64
    flags: U32


class VolResizeArgs(XdrStruct):
    vol: StorageVol
    capacity: U64
    flags: U32


class VolWipePatternArgs(XdrStruct):
    vol: StorageVol
    algorithm: U32
    flags: U32
