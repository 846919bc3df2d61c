"""The procedure table: what each procedure number takes, returns and opens.

Every procedure virtvol serves or calls is listed with its argument and result
structs (``None`` for void), whether it opens a stream (and in which direction),
and libvirtd's scheduling priority.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from virtvol.protocol import remote as r
from virtvol.protocol.xdr import XdrStruct


class StreamDirection(enum.Enum):
    """Which way a procedure's stream carries data."""

    UPLOAD = "upload"  # client -> server (libvirt's @writestream)
    DOWNLOAD = "download"  # server -> client (libvirt's @readstream)


@dataclass(frozen=True, slots=True)
class Procedure:
    number: int
    name: str
    args: type[XdrStruct] | None
    ret: type[XdrStruct] | None
    high_priority: bool = True
    stream: StreamDirection | None = None
    mutating: bool = False
    # A message the server sends on its own (an event); a client may not call it.
    event: bool = False


class Proc(enum.IntEnum):
    """REMOTE procedure numbers used by virtvol."""

    CONNECT_OPEN = 1
    CONNECT_CLOSE = 2
    CONNECT_GET_TYPE = 3
    CONNECT_GET_VERSION = 4
    CONNECT_GET_HOSTNAME = 59
    CONNECT_SUPPORTS_FEATURE = 60
    AUTH_LIST = 66
    CONNECT_NUM_OF_STORAGE_POOLS = 71
    CONNECT_LIST_STORAGE_POOLS = 72
    CONNECT_NUM_OF_DEFINED_STORAGE_POOLS = 73
    CONNECT_LIST_DEFINED_STORAGE_POOLS = 74
    STORAGE_POOL_CREATE_XML = 76
    STORAGE_POOL_DEFINE_XML = 77
    STORAGE_POOL_CREATE = 78
    STORAGE_POOL_DESTROY = 80
    STORAGE_POOL_UNDEFINE = 82
    STORAGE_POOL_REFRESH = 83
    STORAGE_POOL_LOOKUP_BY_NAME = 84
    STORAGE_POOL_LOOKUP_BY_UUID = 85
    STORAGE_POOL_LOOKUP_BY_VOLUME = 86
    STORAGE_POOL_GET_INFO = 87
    STORAGE_POOL_GET_XML_DESC = 88
    STORAGE_POOL_GET_AUTOSTART = 89
    STORAGE_POOL_SET_AUTOSTART = 90
    STORAGE_POOL_NUM_OF_VOLUMES = 91
    STORAGE_POOL_LIST_VOLUMES = 92
    STORAGE_VOL_CREATE_XML = 93
    STORAGE_VOL_DELETE = 94
    STORAGE_VOL_LOOKUP_BY_NAME = 95
    STORAGE_VOL_LOOKUP_BY_KEY = 96
    STORAGE_VOL_LOOKUP_BY_PATH = 97
    STORAGE_VOL_GET_INFO = 98
    STORAGE_VOL_GET_XML_DESC = 99
    STORAGE_VOL_GET_PATH = 100
    CONNECT_GET_URI = 110
    STORAGE_VOL_CREATE_XML_FROM = 125
    CONNECT_NUM_OF_SECRETS = 139
    CONNECT_LIST_SECRETS = 140
    SECRET_LOOKUP_BY_UUID = 141
    SECRET_DEFINE_XML = 142
    SECRET_GET_XML_DESC = 143
    SECRET_SET_VALUE = 144
    SECRET_GET_VALUE = 145
    SECRET_UNDEFINE = 146
    SECRET_LOOKUP_BY_USAGE = 147
    STORAGE_POOL_IS_ACTIVE = 154
    STORAGE_POOL_IS_PERSISTENT = 155
    CONNECT_GET_LIB_VERSION = 157
    STORAGE_VOL_WIPE = 165
    STORAGE_VOL_UPLOAD = 208
    STORAGE_VOL_DOWNLOAD = 209
    STORAGE_VOL_RESIZE = 260
    CONNECT_LIST_ALL_STORAGE_POOLS = 281
    STORAGE_POOL_LIST_ALL_VOLUMES = 282
    CONNECT_LIST_ALL_SECRETS = 287
    CONNECT_REGISTER_CLOSE_CALLBACK = 360
    CONNECT_UNREGISTER_CLOSE_CALLBACK = 361
    CONNECT_EVENT_CONNECTION_CLOSED = 362
    STORAGE_VOL_GET_INFO_FLAGS = 378


def _p(
    proc: Proc,
    args: type[XdrStruct] | None,
    ret: type[XdrStruct] | None,
    *,
    low: bool = False,
    stream: StreamDirection | None = None,
    mutating: bool = False,
    event: bool = False,
) -> Procedure:
    return Procedure(proc.value, proc.name, args, ret, not low, stream, mutating, event)


PROCEDURES: dict[int, Procedure] = {
    p.number: p
    for p in (
        _p(Proc.CONNECT_OPEN, r.ConnectOpenArgs, None),
        _p(Proc.CONNECT_CLOSE, None, None),
        _p(Proc.CONNECT_GET_TYPE, None, r.ConnectGetTypeRet),
        _p(Proc.CONNECT_GET_VERSION, None, r.ConnectGetVersionRet),
        _p(Proc.CONNECT_GET_HOSTNAME, None, r.ConnectGetHostnameRet),
        _p(
            Proc.CONNECT_SUPPORTS_FEATURE, r.ConnectSupportsFeatureArgs, r.ConnectSupportsFeatureRet
        ),
        _p(Proc.AUTH_LIST, None, r.AuthListRet),
        _p(Proc.CONNECT_NUM_OF_STORAGE_POOLS, None, r.NumRet),
        _p(Proc.CONNECT_LIST_STORAGE_POOLS, r.ListNamesArgs, r.ListPoolNamesRet),
        _p(Proc.CONNECT_NUM_OF_DEFINED_STORAGE_POOLS, None, r.NumRet),
        _p(Proc.CONNECT_LIST_DEFINED_STORAGE_POOLS, r.ListNamesArgs, r.ListPoolNamesRet),
        _p(Proc.STORAGE_POOL_CREATE_XML, r.PoolXmlArgs, r.PoolRet, low=True, mutating=True),
        _p(Proc.STORAGE_POOL_DEFINE_XML, r.PoolXmlArgs, r.PoolRet, mutating=True),
        _p(Proc.STORAGE_POOL_CREATE, r.PoolFlagsArgs, None, low=True, mutating=True),
        _p(Proc.STORAGE_POOL_DESTROY, r.PoolArgs, None, mutating=True),
        _p(Proc.STORAGE_POOL_UNDEFINE, r.PoolArgs, None, mutating=True),
        _p(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs, None, low=True, mutating=True),
        _p(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs, r.PoolRet),
        _p(Proc.STORAGE_POOL_LOOKUP_BY_UUID, r.LookupByUuidArgs, r.PoolRet),
        _p(Proc.STORAGE_POOL_LOOKUP_BY_VOLUME, r.VolArgs, r.PoolRet),
        _p(Proc.STORAGE_POOL_GET_INFO, r.PoolArgs, r.PoolGetInfoRet),
        _p(Proc.STORAGE_POOL_GET_XML_DESC, r.PoolFlagsArgs, r.XmlRet),
        _p(Proc.STORAGE_POOL_GET_AUTOSTART, r.PoolArgs, r.AutostartRet),
        _p(Proc.STORAGE_POOL_SET_AUTOSTART, r.PoolSetAutostartArgs, None, mutating=True),
        _p(Proc.STORAGE_POOL_NUM_OF_VOLUMES, r.PoolArgs, r.NumRet),
        _p(Proc.STORAGE_POOL_LIST_VOLUMES, r.PoolListVolumesArgs, r.ListVolNamesRet),
        _p(Proc.STORAGE_VOL_CREATE_XML, r.VolCreateXmlArgs, r.VolRet, low=True, mutating=True),
        _p(Proc.STORAGE_VOL_DELETE, r.VolFlagsArgs, None, low=True, mutating=True),
        _p(Proc.STORAGE_VOL_LOOKUP_BY_NAME, r.VolLookupByNameArgs, r.VolRet),
        _p(Proc.STORAGE_VOL_LOOKUP_BY_KEY, r.VolLookupByKeyArgs, r.VolRet),
        _p(Proc.STORAGE_VOL_LOOKUP_BY_PATH, r.VolLookupByPathArgs, r.VolRet),
        _p(Proc.STORAGE_VOL_GET_INFO, r.VolArgs, r.VolGetInfoRet),
        _p(Proc.STORAGE_VOL_GET_XML_DESC, r.VolFlagsArgs, r.XmlRet),
        _p(Proc.STORAGE_VOL_GET_PATH, r.VolArgs, r.VolGetPathRet),
        _p(Proc.CONNECT_GET_URI, None, r.ConnectGetUriRet),
        _p(
            Proc.STORAGE_VOL_CREATE_XML_FROM,
            r.VolCreateXmlFromArgs,
            r.VolRet,
            low=True,
            mutating=True,
        ),
        _p(Proc.CONNECT_NUM_OF_SECRETS, None, r.NumRet),
        _p(Proc.CONNECT_LIST_SECRETS, r.ListSecretsArgs, r.ListSecretsRet),
        _p(Proc.SECRET_LOOKUP_BY_UUID, r.LookupByUuidArgs, r.SecretRet),
        _p(Proc.SECRET_DEFINE_XML, r.SecretXmlArgs, r.SecretRet, mutating=True),
        _p(Proc.SECRET_GET_XML_DESC, r.SecretFlagsArgs, r.XmlRet),
        _p(Proc.SECRET_SET_VALUE, r.SecretSetValueArgs, None, mutating=True),
        _p(Proc.SECRET_GET_VALUE, r.SecretFlagsArgs, r.SecretGetValueRet),
        _p(Proc.SECRET_UNDEFINE, r.SecretArgs, None, mutating=True),
        _p(Proc.SECRET_LOOKUP_BY_USAGE, r.SecretLookupByUsageArgs, r.SecretRet),
        _p(Proc.STORAGE_POOL_IS_ACTIVE, r.PoolArgs, r.ActiveRet),
        _p(Proc.STORAGE_POOL_IS_PERSISTENT, r.PoolArgs, r.PersistentRet),
        _p(Proc.CONNECT_GET_LIB_VERSION, None, r.ConnectGetLibVersionRet),
        _p(Proc.STORAGE_VOL_WIPE, r.VolFlagsArgs, None, low=True, mutating=True),
        _p(
            Proc.STORAGE_VOL_UPLOAD,
            r.VolTransferArgs,
            None,
            low=True,
            stream=StreamDirection.UPLOAD,
            mutating=True,
        ),
        _p(
            Proc.STORAGE_VOL_DOWNLOAD,
            r.VolTransferArgs,
            None,
            low=True,
            stream=StreamDirection.DOWNLOAD,
        ),
        _p(Proc.STORAGE_VOL_RESIZE, r.VolResizeArgs, None, low=True, mutating=True),
        _p(Proc.CONNECT_LIST_ALL_STORAGE_POOLS, r.ListAllPoolsArgs, r.ListAllPoolsRet),
        _p(Proc.STORAGE_POOL_LIST_ALL_VOLUMES, r.PoolListAllVolumesArgs, r.PoolListAllVolumesRet),
        _p(Proc.CONNECT_LIST_ALL_SECRETS, r.ListAllSecretsArgs, r.ListAllSecretsRet),
        _p(Proc.CONNECT_REGISTER_CLOSE_CALLBACK, None, None),
        _p(Proc.CONNECT_UNREGISTER_CLOSE_CALLBACK, None, None),
        _p(
            Proc.CONNECT_EVENT_CONNECTION_CLOSED,
            r.ConnectEventConnectionClosedMsg,
            None,
            event=True,
        ),
        _p(Proc.STORAGE_VOL_GET_INFO_FLAGS, r.VolFlagsArgs, r.VolGetInfoRet),
    )
}
