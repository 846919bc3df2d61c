"""Numbers of libvirt's RPC protocol: programs, message types and statuses, sizes, flags.

All values are libvirt's wire ABI (virnetprotocol.x, remote_protocol.x,
virkeepaliveprotocol.x and the public headers).
"""

from __future__ import annotations

from virtvol.protocol.enums import IntEnum, IntFlag
from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record

if TYPE_CHECKING:
    from typing import Literal, TypeAlias

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


class KeepaliveProcedure(IntEnum):
    PING = 1
    PONG = 2


class MessageType(IntEnum):
    """``virNetMessageType``; STREAM_HOLE is the frame virtvol calls a skip."""

    CALL = 0
    REPLY = 1
    MESSAGE = 2
    STREAM = 3
    CALL_WITH_FDS = 4
    REPLY_WITH_FDS = 5
    STREAM_HOLE = 6


class MessageStatus(IntEnum):
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


class AuthType(IntEnum):
    NONE = 0
    SASL = 1
    POLKIT = 2


class DriverFeature(IntEnum):
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


# virtvold's own CONNECT_SUPPORTS_FEATURE number, far above libvirt's (which count up
# from 1; libvirt daemons answer 0 to numbers they do not know): 1 means a skip in an
# upload leaves zeros in the volume. libvirtd seeks over a skip in a file, so the bytes
# the volume held there stay.
UPLOAD_SKIPS_LEAVE_ZEROS_FEATURE = 0x76760001


# Flags (libvirt's public headers). Each flag is defined here once; the client
# and the daemon import it.


class ConnectOpenFlags(IntFlag):
    """``virConnectFlags`` as CONNECT_OPEN carries them."""

    RO = 1


class PoolBuildFlags(IntFlag):
    """``virStoragePoolBuildFlags`` (STORAGE_POOL_BUILD)."""

    NEW = 0
    REPAIR = 1
    RESIZE = 2
    NO_OVERWRITE = 4
    OVERWRITE = 8


class PoolDeleteFlags(IntFlag):
    """``virStoragePoolDeleteFlags`` (STORAGE_POOL_DELETE)."""

    NORMAL = 0
    ZEROED = 1


class PoolCreateFlags(IntFlag):
    """``virStoragePoolCreateFlags`` (STORAGE_POOL_CREATE and _CREATE_XML)."""

    NORMAL = 0
    WITH_BUILD = 1
    WITH_BUILD_OVERWRITE = 2
    WITH_BUILD_NO_OVERWRITE = 4


class PoolDefineFlags(IntFlag):
    """``virStoragePoolDefineFlags``."""

    VALIDATE = 1


class PoolXMLFlags(IntFlag):
    """``virStorageXMLFlags``."""

    INACTIVE = 1


class ListPoolsFlags(IntFlag):
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


class VolCreateFlags(IntFlag):
    """``virStorageVolCreateFlags``."""

    PREALLOC_METADATA = 1
    REFLINK = 2
    VALIDATE = 4


class VolDeleteFlags(IntFlag):
    """``virStorageVolDeleteFlags``."""

    ZEROED = 1
    WITH_SNAPSHOTS = 2


class VolResizeFlags(IntFlag):
    """``virStorageVolResizeFlags``."""

    ALLOCATE = 1
    DELTA = 2
    SHRINK = 4


class VolWipeAlgorithm(IntEnum):
    """``virStorageVolWipeAlgorithm``: zero, then the patterns of the ``scrub`` tool,
    then trim (discard). virsh's ``vol-wipe --algorithm`` names are these, lower case."""

    ZERO = 0
    NNSA = 1
    DOD = 2
    BSI = 3
    GUTMANN = 4
    SCHNEIER = 5
    PFITZNER7 = 6
    PFITZNER33 = 7
    RANDOM = 8
    TRIM = 9


class VolInfoFlags(IntFlag):
    """``virStorageVolInfoFlags``."""

    GET_PHYSICAL = 1


class VolStreamFlags(IntFlag):
    """``VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM`` / ``..._DOWNLOAD_SPARSE_STREAM``."""

    SPARSE = 1


class PoolState(IntEnum):
    """A pool's state (libvirt's ``virStoragePoolState``)."""

    INACTIVE = 0
    BUILDING = 1
    RUNNING = 2
    DEGRADED = 3
    INACCESSIBLE = 4


class VolumeType(IntEnum):
    """A volume's type (libvirt's ``virStorageVolType``)."""

    FILE = 0
    BLOCK = 1
    DIR = 2
    NETWORK = 3
    NETDIR = 4
    PLOOP = 5


class PoolInfo(Record):
    """``virStoragePoolInfo``: a pool's state and the sizes in bytes of what holds it.

    ``state`` is a plain int when a peer reports a state this module does not know.
    """

    state: PoolState | int
    capacity: int
    allocation: int
    available: int


class VolumeInfo(Record):
    """``virStorageVolInfo``: ``allocation`` is the physical size when asked for it."""

    type: VolumeType | int
    capacity: int
    allocation: int


# How a peer plays the protocol: as libvirt 9.0 ("current") or as a libvirt from
# before sparse streams (3.3, "legacy").
if TYPE_CHECKING:
    ProtocolMode: TypeAlias = Literal["current", "legacy"]
else:

    def __getattr__(name: str) -> object:
        # ProtocolMode is made on first use: a command does not import typing for it.
        if name == "ProtocolMode":
            from typing import Literal

            return Literal["current", "legacy"]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
