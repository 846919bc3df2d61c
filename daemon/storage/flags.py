"""libvirt flag values accepted by the storage procedures (libvirt's public ABI)."""

from __future__ import annotations

import enum


class PoolCreateFlags(enum.IntFlag):
    """``virStoragePoolCreateFlags`` (STORAGE_POOL_CREATE and _CREATE_XML)."""

    NORMAL = 0
    WITH_BUILD = 1
    WITH_BUILD_OVERWRITE = 2
    WITH_BUILD_NO_OVERWRITE = 4


class PoolDefineFlags(enum.IntFlag):
    """``virStoragePoolDefineFlags``."""

    VALIDATE = 1


class PoolXMLFlags(enum.IntFlag):
    """``virStorageXMLFlags``."""

    INACTIVE = 1


class ListPoolsFlags(enum.IntFlag):
    """``virConnectListAllStoragePoolsFlags``: filter groups for list_all_pools."""

    INACTIVE = 1 << 0
    ACTIVE = 1 << 1
    PERSISTENT = 1 << 2
    TRANSIENT = 1 << 3
    AUTOSTART = 1 << 4
    NO_AUTOSTART = 1 << 5
    DIR = 1 << 6
    FS = 1 << 7
    NETFS = 1 << 8
    LOGICAL = 1 << 9
    DISK = 1 << 10
    ISCSI = 1 << 11
    SCSI = 1 << 12
    MPATH = 1 << 13
    RBD = 1 << 14
    SHEEPDOG = 1 << 15
    GLUSTER = 1 << 16
    ZFS = 1 << 17
    VSTORAGE = 1 << 18
    ISCSI_DIRECT = 1 << 19


LIST_POOLS_ACTIVITY = ListPoolsFlags.ACTIVE | ListPoolsFlags.INACTIVE
LIST_POOLS_PERSISTENCE = ListPoolsFlags.PERSISTENT | ListPoolsFlags.TRANSIENT
LIST_POOLS_AUTOSTART = ListPoolsFlags.AUTOSTART | ListPoolsFlags.NO_AUTOSTART
LIST_POOLS_TYPES = ListPoolsFlags(((1 << 20) - 1) & ~((1 << 6) - 1))
LIST_POOLS_ALL = (
    LIST_POOLS_ACTIVITY | LIST_POOLS_PERSISTENCE | LIST_POOLS_AUTOSTART | LIST_POOLS_TYPES
)


class VolCreateFlags(enum.IntFlag):
    """``virStorageVolCreateFlags``."""

    PREALLOC_METADATA = 1
    REFLINK = 2
    VALIDATE = 4


class VolResizeFlags(enum.IntFlag):
    """``virStorageVolResizeFlags``."""

    ALLOCATE = 1
    DELTA = 2
    SHRINK = 4


class VolInfoFlags(enum.IntFlag):
    """``virStorageVolInfoFlags``."""

    GET_PHYSICAL = 1


class VolStreamFlags(enum.IntFlag):
    """``VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM`` / ``..._DOWNLOAD_SPARSE_STREAM``."""

    SPARSE = 1
