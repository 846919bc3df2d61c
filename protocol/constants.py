"""Numbers of libvirt's RPC protocol: programs, message types and statuses, sizes, flags.

All values are libvirt's wire ABI (virnetprotocol.x, remote_protocol.x,
virkeepaliveprotocol.x and the public headers).
"""

from __future__ import annotations

import enum

# Programs and their versions.
REMOTE_PROGRAM = 0x20008086
REMOTE_PROTOCOL_VERSION = 1
KEEPALIVE_PROGRAM = 0x6B656570  # ASCII "keep"
KEEPALIVE_PROTOCOL_VERSION = 1
QEMU_PROGRAM = 0x20008087
LXC_PROGRAM = 0x00068000

PROGRAM_NAMES = {
    REMOTE_PROGRAM: "REMOTE",
    KEEPALIVE_PROGRAM: "KEEPALIVE",
    QEMU_PROGRAM: "QEMU",
    LXC_PROGRAM: "LXC",
}


class KeepaliveProcedure(enum.IntEnum):
    PING = 1
    PONG = 2


class MessageType(enum.IntEnum):
    """``virNetMessageType``; STREAM_HOLE is the frame virtvol calls a skip."""

    CALL = 0
    REPLY = 1
    MESSAGE = 2
    STREAM = 3
    CALL_WITH_FDS = 4
    REPLY_WITH_FDS = 5
    STREAM_HOLE = 6


# The sparse-stream hole frame, by the name this project uses for it.
VIR_NET_STREAM_SKIP = MessageType.STREAM_HOLE


class MessageStatus(enum.IntEnum):
    """``virNetMessageStatus``."""

    OK = 0
    ERROR = 1
    CONTINUE = 2


# Sizes (virnetprotocol.x). The length word counts itself but not toward MESSAGE_MAX.
LENGTH_WORD_SIZE = 4
HEADER_SIZE = 24
FRAME_OVERHEAD = LENGTH_WORD_SIZE + HEADER_SIZE
MESSAGE_MAX = 32 * 1024 * 1024
PAYLOAD_MAX = MESSAGE_MAX - HEADER_SIZE
LEGACY_PAYLOAD_MAX = 262120
MESSAGE_STRING_MAX = 4194304

# remote_protocol.x maxima.
REMOTE_STRING_MAX = 4194304
REMOTE_STORAGE_POOL_LIST_MAX = 16384
REMOTE_STORAGE_VOL_LIST_MAX = 16384
REMOTE_AUTH_TYPE_LIST_MAX = 20
REMOTE_SECRET_VALUE_MAX = 65536
REMOTE_SECRET_LIST_MAX = 16384
VIR_UUID_BUFLEN = 16


class AuthType(enum.IntEnum):
    NONE = 0
    SASL = 1
    POLKIT = 2


class DriverFeature(enum.IntEnum):
    """``VIR_DRV_FEATURE_*`` numbers asked with CONNECT_SUPPORTS_FEATURE."""

    MIGRATION_V1 = 1
    REMOTE = 2
    MIGRATION_V2 = 3
    MIGRATION_P2P = 4
    MIGRATION_DIRECT = 5
    MIGRATION_V3 = 6
    MIGRATE_CHANGE_PROTECTION = 7
    FD_PASSING = 8
    TYPED_PARAM_STRING = 9
    PROGRAM_KEEPALIVE = 10
    XML_MIGRATABLE = 11
    MIGRATION_OFFLINE = 12
    MIGRATION_PARAMS = 13
    REMOTE_EVENT_CALLBACK = 14
    REMOTE_CLOSE_CALLBACK = 15
    NETWORK_UPDATE_HAS_CORRECT_ORDER = 16


# Flags of the storage volume stream calls (since libvirt 3.4).
VOL_UPLOAD_SPARSE_STREAM = 1
VOL_DOWNLOAD_SPARSE_STREAM = 1

# CONNECT_OPEN flags as the remote driver sends them.
CONNECT_RO = 1


class ListPoolsFlag(enum.IntFlag):
    """``VIR_CONNECT_LIST_STORAGE_POOLS_*``."""

    INACTIVE = 1
    ACTIVE = 2
    PERSISTENT = 4
    TRANSIENT = 8
    AUTOSTART = 16
    NO_AUTOSTART = 32
    DIR = 64
    FS = 128
    NETFS = 256
    LOGICAL = 512
    DISK = 1024
    ISCSI = 2048
    SCSI = 4096
    MPATH = 8192
    RBD = 16384
    SHEEPDOG = 32768
    GLUSTER = 65536
    ZFS = 131072
    VSTORAGE = 262144
    ISCSI_DIRECT = 524288


class PoolState(enum.IntEnum):
    """A pool's state (libvirt's ``virStoragePoolState``)."""

    INACTIVE = 0
    BUILDING = 1
    RUNNING = 2
    DEGRADED = 3
    INACCESSIBLE = 4


class VolumeType(enum.IntEnum):
    """A volume's type (libvirt's ``virStorageVolType``)."""

    FILE = 0
    BLOCK = 1
    DIR = 2
    NETWORK = 3
    NETDIR = 4
    PLOOP = 5


POOL_CREATE_WITH_BUILD = 1
POOL_CREATE_WITH_BUILD_OVERWRITE = 2
POOL_CREATE_WITH_BUILD_NO_OVERWRITE = 4
POOL_DEFINE_VALIDATE = 1
STORAGE_XML_INACTIVE = 1
VOL_CREATE_PREALLOC_METADATA = 1
VOL_CREATE_REFLINK = 2
VOL_CREATE_VALIDATE = 4
VOL_DELETE_ZEROED = 1
VOL_DELETE_WITH_SNAPSHOTS = 2
VOL_RESIZE_ALLOCATE = 1
VOL_RESIZE_DELTA = 2
VOL_RESIZE_SHRINK = 4
VOL_GET_PHYSICAL = 1
