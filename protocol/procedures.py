"""The procedure table: what each procedure number takes, returns and opens.

Every procedure virtvol serves or calls is listed once, here, with its argument
and result structs (``None`` for void; given as functions that return them, so that
the table imports none of them), whether it opens a stream (and in which
direction), whether it changes state, whether a read-only connection refuses it
and libvirtd's scheduling priority. Each entry is a module constant typed by its
argument and result (``STORAGE_POOL_GET_INFO: Procedure[PoolArgs,
PoolGetInfoRet]``), so a typed caller gets the right result type; ``PROCEDURES``
maps every number to its entry. Adding a procedure: its number in ``Proc``, its
entry below, and (if virtvold serves it) its handler in ``daemon/dispatch.py``.
"""

from __future__ import annotations

from virtvol.protocol.enums import Enum, IntEnum
from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    # Records read their annotations as text: none is needed at run time.
    from collections.abc import Callable  # noqa: TC004
    from typing import Any, Generic, TypeVar, overload
else:
    from virtvol.protocol.hints import Generic, TypeVar, overload

from virtvol.protocol import remote as r
from virtvol.protocol.record import Record
from virtvol.protocol.xdr import XdrStruct

ArgsT = TypeVar("ArgsT", bound=XdrStruct | None)
RetT = TypeVar("RetT", bound=XdrStruct | None)


class StreamDirection(Enum):
    """Which way a procedure's stream carries data."""

    # Members are compared by identity, so they may hash by identity too: Enum's own
    # hash is a Python call on the name, and the stream tables are looked up per frame.
    __hash__ = object.__hash__

    UPLOAD = "upload"  # client -> server (libvirt's @writestream)
    DOWNLOAD = "download"  # server -> client (libvirt's @readstream)


class Procedure(Record, Generic[ArgsT, RetT]):
    number: int
    name: str
    # The argument and result structs, as functions that return them: the table names
    # every procedure's structs without importing them (``remote`` declares the
    # volume, secret and event families on first use).
    args_struct: Callable[[], type[ArgsT]] | None
    ret_struct: Callable[[], type[RetT]] | None
    high_priority: bool = True
    stream: StreamDirection | None = None
    mutating: bool = False
    # A message the server sends on its own (an event); a client may not call it.
    event: bool = False
    # A read-only connection gets "read only access prevents <api_name>": libvirt's
    # API checks for it in every call that changes state, and in a few that only
    # read what not every user may see (a volume's content).
    refused_read_only: bool = False

    @property
    def args(self) -> type[ArgsT] | None:
        """The struct of the arguments (None: the procedure takes none)."""
        return None if self.args_struct is None else self.args_struct()

    @property
    def ret(self) -> type[RetT] | None:
        """The struct of the result (None: it returns nothing)."""
        return None if self.ret_struct is None else self.ret_struct()

    @property
    def api_name(self) -> str:
        """The libvirt API function of the procedure (``virStorageVolCreateXML``),
        as libvirt's errors name it."""
        # Only errors name it: the module of every procedure's name is imported then.
        from virtvol.protocol.procedure_names import api_function

        return api_function(self.name)


class Proc(IntEnum):
    """REMOTE procedure numbers used by virtvol."""

    CONNECT_OPEN = 1
    CONNECT_CLOSE = 2
    CONNECT_GET_TYPE = 3
    CONNECT_GET_CAPABILITIES = 7
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
    CONNECT_FIND_STORAGE_POOL_SOURCES = 75
    STORAGE_POOL_BUILD = 79
    STORAGE_POOL_DESTROY = 80
    STORAGE_POOL_DELETE = 81
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
    CONNECT_IS_SECURE = 149
    CONNECT_GET_LIB_VERSION = 157
    STORAGE_VOL_WIPE = 165
    STORAGE_VOL_UPLOAD = 208
    STORAGE_VOL_DOWNLOAD = 209
    STORAGE_VOL_WIPE_PATTERN = 259
    STORAGE_VOL_RESIZE = 260
    CONNECT_LIST_ALL_STORAGE_POOLS = 281
    STORAGE_POOL_LIST_ALL_VOLUMES = 282
    CONNECT_LIST_ALL_SECRETS = 287
    CONNECT_REGISTER_CLOSE_CALLBACK = 360
    CONNECT_UNREGISTER_CLOSE_CALLBACK = 361
    CONNECT_EVENT_CONNECTION_CLOSED = 362
    CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY = 368
    CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY = 369
    STORAGE_POOL_EVENT_LIFECYCLE = 370
    STORAGE_POOL_EVENT_REFRESH = 373
    STORAGE_VOL_GET_INFO_FLAGS = 378
    STORAGE_POOL_LOOKUP_BY_TARGET_PATH = 391
    CONNECT_GET_STORAGE_POOL_CAPABILITIES = 403


PROCEDURES: dict[int, Procedure[Any, Any]] = {}


@overload
def _p(
    proc: Proc,
    args: None,
    ret: None,
    *,
    low: bool = ...,
    stream: StreamDirection | None = ...,
    mutating: bool = ...,
    event: bool = ...,
    refused_read_only: bool | None = ...,
) -> Procedure[None, None]: ...
@overload
def _p(
    proc: Proc,
    args: Callable[[], type[ArgsT]],
    ret: None,
    *,
    low: bool = ...,
    stream: StreamDirection | None = ...,
    mutating: bool = ...,
    event: bool = ...,
    refused_read_only: bool | None = ...,
) -> Procedure[ArgsT, None]: ...
@overload
def _p(
    proc: Proc,
    args: None,
    ret: Callable[[], type[RetT]],
    *,
    low: bool = ...,
    stream: StreamDirection | None = ...,
    mutating: bool = ...,
    event: bool = ...,
    refused_read_only: bool | None = ...,
) -> Procedure[None, RetT]: ...
@overload
def _p(
    proc: Proc,
    args: Callable[[], type[ArgsT]],
    ret: Callable[[], type[RetT]],
    *,
    low: bool = ...,
    stream: StreamDirection | None = ...,
    mutating: bool = ...,
    event: bool = ...,
    refused_read_only: bool | None = ...,
) -> Procedure[ArgsT, RetT]: ...
def _p(
    proc: Proc,
    args: Callable[[], type[Any]] | None,
    ret: Callable[[], type[Any]] | None,
    *,
    low: bool = False,
    stream: StreamDirection | None = None,
    mutating: bool = False,
    event: bool = False,
    refused_read_only: bool | None = None,
) -> Procedure[Any, Any]:
    """Enter a procedure in ``PROCEDURES`` (once) and return its typed entry.

    ``args`` and ``ret`` are functions returning the structs (``lambda: r.PoolArgs``),
    called when the entry's ``args`` or ``ret`` is read.

    ``refused_read_only`` defaults to ``mutating``."""
    if proc.value in PROCEDURES:
        raise ValueError(f"{proc.name} entered twice")
    procedure: Procedure[Any, Any] = Procedure(
        proc.value,
        proc.name,
        args,
        ret,
        not low,
        stream,
        mutating,
        event,
        mutating if refused_read_only is None else refused_read_only,
    )
    PROCEDURES[proc.value] = procedure
    return procedure


CONNECT_OPEN = _p(Proc.CONNECT_OPEN, lambda: r.ConnectOpenArgs, None)
CONNECT_CLOSE = _p(Proc.CONNECT_CLOSE, None, None)
CONNECT_GET_TYPE = _p(Proc.CONNECT_GET_TYPE, None, lambda: r.ConnectGetTypeRet)
CONNECT_GET_CAPABILITIES = _p(
    Proc.CONNECT_GET_CAPABILITIES, None, lambda: r.ConnectGetCapabilitiesRet
)
CONNECT_IS_SECURE = _p(Proc.CONNECT_IS_SECURE, None, lambda: r.ConnectIsSecureRet)
CONNECT_GET_VERSION = _p(Proc.CONNECT_GET_VERSION, None, lambda: r.ConnectGetVersionRet)
CONNECT_GET_HOSTNAME = _p(Proc.CONNECT_GET_HOSTNAME, None, lambda: r.ConnectGetHostnameRet)
CONNECT_SUPPORTS_FEATURE = _p(
    Proc.CONNECT_SUPPORTS_FEATURE,
    lambda: r.ConnectSupportsFeatureArgs,
    lambda: r.ConnectSupportsFeatureRet,
)
AUTH_LIST = _p(Proc.AUTH_LIST, None, lambda: r.AuthListRet)
CONNECT_NUM_OF_STORAGE_POOLS = _p(Proc.CONNECT_NUM_OF_STORAGE_POOLS, None, lambda: r.NumRet)
CONNECT_LIST_STORAGE_POOLS = _p(
    Proc.CONNECT_LIST_STORAGE_POOLS, lambda: r.ListNamesArgs, lambda: r.ListPoolNamesRet
)
CONNECT_NUM_OF_DEFINED_STORAGE_POOLS = _p(
    Proc.CONNECT_NUM_OF_DEFINED_STORAGE_POOLS, None, lambda: r.NumRet
)
CONNECT_LIST_DEFINED_STORAGE_POOLS = _p(
    Proc.CONNECT_LIST_DEFINED_STORAGE_POOLS, lambda: r.ListNamesArgs, lambda: r.ListPoolNamesRet
)
STORAGE_POOL_CREATE_XML = _p(
    Proc.STORAGE_POOL_CREATE_XML, lambda: r.PoolXmlArgs, lambda: r.PoolRet, low=True, mutating=True
)
STORAGE_POOL_DEFINE_XML = _p(
    Proc.STORAGE_POOL_DEFINE_XML, lambda: r.PoolXmlArgs, lambda: r.PoolRet, mutating=True
)
STORAGE_POOL_CREATE = _p(
    Proc.STORAGE_POOL_CREATE, lambda: r.PoolFlagsArgs, None, low=True, mutating=True
)
CONNECT_FIND_STORAGE_POOL_SOURCES = _p(
    Proc.CONNECT_FIND_STORAGE_POOL_SOURCES,
    lambda: r.FindPoolSourcesArgs,
    lambda: r.FindPoolSourcesRet,
    refused_read_only=True,
)
STORAGE_POOL_BUILD = _p(
    Proc.STORAGE_POOL_BUILD, lambda: r.PoolFlagsArgs, None, low=True, mutating=True
)
STORAGE_POOL_DESTROY = _p(Proc.STORAGE_POOL_DESTROY, lambda: r.PoolArgs, None, mutating=True)
STORAGE_POOL_DELETE = _p(
    Proc.STORAGE_POOL_DELETE, lambda: r.PoolFlagsArgs, None, low=True, mutating=True
)
STORAGE_POOL_UNDEFINE = _p(Proc.STORAGE_POOL_UNDEFINE, lambda: r.PoolArgs, None, mutating=True)
STORAGE_POOL_REFRESH = _p(
    Proc.STORAGE_POOL_REFRESH, lambda: r.PoolFlagsArgs, None, low=True, mutating=True
)
STORAGE_POOL_LOOKUP_BY_NAME = _p(
    Proc.STORAGE_POOL_LOOKUP_BY_NAME, lambda: r.LookupByNameArgs, lambda: r.PoolRet
)
STORAGE_POOL_LOOKUP_BY_UUID = _p(
    Proc.STORAGE_POOL_LOOKUP_BY_UUID, lambda: r.LookupByUuidArgs, lambda: r.PoolRet
)
STORAGE_POOL_LOOKUP_BY_VOLUME = _p(
    Proc.STORAGE_POOL_LOOKUP_BY_VOLUME, lambda: r.VolArgs, lambda: r.PoolRet
)
STORAGE_POOL_GET_INFO = _p(Proc.STORAGE_POOL_GET_INFO, lambda: r.PoolArgs, lambda: r.PoolGetInfoRet)
STORAGE_POOL_GET_XML_DESC = _p(
    Proc.STORAGE_POOL_GET_XML_DESC, lambda: r.PoolFlagsArgs, lambda: r.XmlRet
)
STORAGE_POOL_GET_AUTOSTART = _p(
    Proc.STORAGE_POOL_GET_AUTOSTART, lambda: r.PoolArgs, lambda: r.AutostartRet
)
STORAGE_POOL_SET_AUTOSTART = _p(
    Proc.STORAGE_POOL_SET_AUTOSTART, lambda: r.PoolSetAutostartArgs, None, mutating=True
)
STORAGE_POOL_NUM_OF_VOLUMES = _p(
    Proc.STORAGE_POOL_NUM_OF_VOLUMES, lambda: r.PoolArgs, lambda: r.NumRet
)
STORAGE_POOL_LIST_VOLUMES = _p(
    Proc.STORAGE_POOL_LIST_VOLUMES, lambda: r.PoolListVolumesArgs, lambda: r.ListVolNamesRet
)
STORAGE_VOL_CREATE_XML = _p(
    Proc.STORAGE_VOL_CREATE_XML,
    lambda: r.VolCreateXmlArgs,
    lambda: r.VolRet,
    low=True,
    mutating=True,
)
STORAGE_VOL_DELETE = _p(
    Proc.STORAGE_VOL_DELETE, lambda: r.VolFlagsArgs, None, low=True, mutating=True
)
STORAGE_VOL_LOOKUP_BY_NAME = _p(
    Proc.STORAGE_VOL_LOOKUP_BY_NAME, lambda: r.VolLookupByNameArgs, lambda: r.VolRet
)
STORAGE_VOL_LOOKUP_BY_KEY = _p(
    Proc.STORAGE_VOL_LOOKUP_BY_KEY, lambda: r.VolLookupByKeyArgs, lambda: r.VolRet
)
STORAGE_VOL_LOOKUP_BY_PATH = _p(
    Proc.STORAGE_VOL_LOOKUP_BY_PATH, lambda: r.VolLookupByPathArgs, lambda: r.VolRet
)
STORAGE_VOL_GET_INFO = _p(Proc.STORAGE_VOL_GET_INFO, lambda: r.VolArgs, lambda: r.VolGetInfoRet)
STORAGE_VOL_GET_XML_DESC = _p(
    Proc.STORAGE_VOL_GET_XML_DESC, lambda: r.VolFlagsArgs, lambda: r.XmlRet
)
STORAGE_VOL_GET_PATH = _p(Proc.STORAGE_VOL_GET_PATH, lambda: r.VolArgs, lambda: r.VolGetPathRet)
CONNECT_GET_URI = _p(Proc.CONNECT_GET_URI, None, lambda: r.ConnectGetUriRet)
STORAGE_VOL_CREATE_XML_FROM = _p(
    Proc.STORAGE_VOL_CREATE_XML_FROM,
    lambda: r.VolCreateXmlFromArgs,
    lambda: r.VolRet,
    low=True,
    mutating=True,
)
CONNECT_NUM_OF_SECRETS = _p(Proc.CONNECT_NUM_OF_SECRETS, None, lambda: r.NumRet)
CONNECT_LIST_SECRETS = _p(
    Proc.CONNECT_LIST_SECRETS, lambda: r.ListSecretsArgs, lambda: r.ListSecretsRet
)
SECRET_LOOKUP_BY_UUID = _p(
    Proc.SECRET_LOOKUP_BY_UUID, lambda: r.LookupByUuidArgs, lambda: r.SecretRet
)
SECRET_DEFINE_XML = _p(
    Proc.SECRET_DEFINE_XML, lambda: r.SecretXmlArgs, lambda: r.SecretRet, mutating=True
)
SECRET_GET_XML_DESC = _p(Proc.SECRET_GET_XML_DESC, lambda: r.SecretFlagsArgs, lambda: r.XmlRet)
SECRET_SET_VALUE = _p(Proc.SECRET_SET_VALUE, lambda: r.SecretSetValueArgs, None, mutating=True)
SECRET_GET_VALUE = _p(
    Proc.SECRET_GET_VALUE,
    lambda: r.SecretFlagsArgs,
    lambda: r.SecretGetValueRet,
    refused_read_only=True,
)
SECRET_UNDEFINE = _p(Proc.SECRET_UNDEFINE, lambda: r.SecretArgs, None, mutating=True)
SECRET_LOOKUP_BY_USAGE = _p(
    Proc.SECRET_LOOKUP_BY_USAGE, lambda: r.SecretLookupByUsageArgs, lambda: r.SecretRet
)
STORAGE_POOL_IS_ACTIVE = _p(Proc.STORAGE_POOL_IS_ACTIVE, lambda: r.PoolArgs, lambda: r.ActiveRet)
STORAGE_POOL_IS_PERSISTENT = _p(
    Proc.STORAGE_POOL_IS_PERSISTENT, lambda: r.PoolArgs, lambda: r.PersistentRet
)
CONNECT_GET_LIB_VERSION = _p(Proc.CONNECT_GET_LIB_VERSION, None, lambda: r.ConnectGetLibVersionRet)
STORAGE_VOL_WIPE = _p(Proc.STORAGE_VOL_WIPE, lambda: r.VolFlagsArgs, None, low=True, mutating=True)
STORAGE_VOL_UPLOAD = _p(
    Proc.STORAGE_VOL_UPLOAD,
    lambda: r.VolTransferArgs,
    None,
    low=True,
    stream=StreamDirection.UPLOAD,
    mutating=True,
)
STORAGE_VOL_DOWNLOAD = _p(
    Proc.STORAGE_VOL_DOWNLOAD,
    lambda: r.VolTransferArgs,
    None,
    low=True,
    stream=StreamDirection.DOWNLOAD,
    refused_read_only=True,
)
STORAGE_VOL_WIPE_PATTERN = _p(
    Proc.STORAGE_VOL_WIPE_PATTERN, lambda: r.VolWipePatternArgs, None, low=True, mutating=True
)
STORAGE_VOL_RESIZE = _p(
    Proc.STORAGE_VOL_RESIZE, lambda: r.VolResizeArgs, None, low=True, mutating=True
)
CONNECT_LIST_ALL_STORAGE_POOLS = _p(
    Proc.CONNECT_LIST_ALL_STORAGE_POOLS, lambda: r.ListAllPoolsArgs, lambda: r.ListAllPoolsRet
)
STORAGE_POOL_LIST_ALL_VOLUMES = _p(
    Proc.STORAGE_POOL_LIST_ALL_VOLUMES,
    lambda: r.PoolListAllVolumesArgs,
    lambda: r.PoolListAllVolumesRet,
)
CONNECT_LIST_ALL_SECRETS = _p(
    Proc.CONNECT_LIST_ALL_SECRETS, lambda: r.ListAllSecretsArgs, lambda: r.ListAllSecretsRet
)
CONNECT_REGISTER_CLOSE_CALLBACK = _p(Proc.CONNECT_REGISTER_CLOSE_CALLBACK, None, None)
CONNECT_UNREGISTER_CLOSE_CALLBACK = _p(Proc.CONNECT_UNREGISTER_CLOSE_CALLBACK, None, None)
CONNECT_EVENT_CONNECTION_CLOSED = _p(
    Proc.CONNECT_EVENT_CONNECTION_CLOSED,
    lambda: r.ConnectEventConnectionClosedMsg,
    None,
    event=True,
)
STORAGE_VOL_GET_INFO_FLAGS = _p(
    Proc.STORAGE_VOL_GET_INFO_FLAGS, lambda: r.VolFlagsArgs, lambda: r.VolGetInfoRet
)
CONNECT_GET_STORAGE_POOL_CAPABILITIES = _p(
    Proc.CONNECT_GET_STORAGE_POOL_CAPABILITIES,
    lambda: r.StoragePoolCapabilitiesArgs,
    lambda: r.StoragePoolCapabilitiesRet,
)
STORAGE_POOL_LOOKUP_BY_TARGET_PATH = _p(
    Proc.STORAGE_POOL_LOOKUP_BY_TARGET_PATH, lambda: r.PoolLookupByTargetPathArgs, lambda: r.PoolRet
)
CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY = _p(
    Proc.CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY,
    lambda: r.PoolEventRegisterArgs,
    lambda: r.PoolEventRegisterRet,
)
CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY = _p(
    Proc.CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY, lambda: r.PoolEventDeregisterArgs, None
)
STORAGE_POOL_EVENT_LIFECYCLE = _p(
    Proc.STORAGE_POOL_EVENT_LIFECYCLE, lambda: r.PoolLifecycleEventMsg, None, event=True
)
STORAGE_POOL_EVENT_REFRESH = _p(
    Proc.STORAGE_POOL_EVENT_REFRESH, lambda: r.PoolRefreshEventMsg, None, event=True
)
