"""The XDR structs of the REMOTE program that virtvol speaks, declared from the wire facts.

Names follow libvirt's ``remote_<procedure>_args`` / ``_ret`` in CamelCase.
``char`` members (pool state, volume type) travel as 32-bit ints.

Every field is annotated with a name defined in this module (an ``Annotated``
alias or a struct): the codec looks the name up, which needs no ``typing`` at
run time (``xdr._field_hints``).

The structs of volumes, secrets and pool events are declared in modules of their
own (``remote_volumes``, ``remote_secrets``, ``remote_events``) and handed out here
under this module's name, each family imported when one of its names is first
read: a command that touches none of them (``pool-list``) declares 41 structs of 75.
"""

from __future__ import annotations

import struct

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Annotated, Self
else:
    from virtvol.protocol.hints import Annotated

from virtvol.protocol.constants import (
    MESSAGE_STRING_MAX,
    REMOTE_AUTH_TYPE_LIST_MAX,
    REMOTE_STORAGE_POOL_LIST_MAX,
    REMOTE_STRING_MAX,
    VIR_UUID_BUFLEN,
    AuthType,
)
from virtvol.protocol.xdr import (
    Array,
    Enum,
    FixedOpaque,
    Hyper,
    Int,
    Optional,
    String,
    UHyper,
    UInt,
    XdrStruct,
)

if TYPE_CHECKING:
    from virtvol.protocol.errors import ErrorReport

NonnullString = Annotated[str, String(REMOTE_STRING_MAX)]
OptionalString = Annotated[str | None, Optional(String(REMOTE_STRING_MAX))]
Uuid = Annotated[bytes, FixedOpaque(VIR_UUID_BUFLEN)]
I32 = Annotated[int, Int()]
U32 = Annotated[int, UInt()]
I64 = Annotated[int, Hyper()]
U64 = Annotated[int, UHyper()]


class StoragePool(XdrStruct):
    """``remote_nonnull_storage_pool``."""

    name: NonnullString
    uuid: Uuid


class StorageVol(XdrStruct):
    """``remote_nonnull_storage_vol``; ``key`` is the absolute path for a dir pool."""

    pool: NonnullString
    name: NonnullString
    key: NonnullString


class Domain(XdrStruct):
    """``remote_nonnull_domain`` (only ever absent inside an error)."""

    name: NonnullString
    uuid: Uuid
    id: I32


class Network(XdrStruct):
    """``remote_nonnull_network`` (only ever absent inside an error)."""

    name: NonnullString
    uuid: Uuid


ErrorString = Annotated[str | None, Optional(String(MESSAGE_STRING_MAX))]
OptionalDomain = Annotated[Domain | None, Optional(Domain.codec())]
OptionalNetwork = Annotated[Network | None, Optional(Network.codec())]


class RemoteError(XdrStruct):
    """``remote_error``, the payload of every error reply and server stream error."""

    code: I32
    domain: I32
    message: ErrorString
    level: I32 = 2
    dom: OptionalDomain = None
    str1: ErrorString = None
    str2: ErrorString = None
    str3: ErrorString = None
    int1: I32 = -1
    int2: I32 = -1
    net: OptionalNetwork = None

    @classmethod
    def from_report(cls, report: ErrorReport) -> RemoteError:
        """The wire form of an error raised to be reported to the peer."""
        return cls(
            code=report.code,
            domain=report.domain,
            message=report.message,
            str1=report.str1,
            str2=report.str2,
            str3=report.str3,
            int1=report.int1,
            int2=report.int2,
        )


class StreamHole(XdrStruct):
    """``virNetStreamHole``: the payload of a skip (STREAM_HOLE) frame."""

    length: I64
    flags: U32 = 0

    def encode(self) -> bytes:
        # The same bytes as the generic encoder (a test holds them equal), without its
        # per-field machinery: a fragmented image sends one of these per extent.
        try:
            return _STREAM_HOLE.pack(self.length, self.flags)
        except struct.error:
            return super().encode()  # out of range: the generic encoder names the field

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, *, c_strings: bool = False) -> Self:
        # As ``encode``: one struct for the one well-formed size, the generic decoder
        # (and its error messages) for anything else. It holds no string to cut.
        if len(data) == _STREAM_HOLE.size:
            length, flags = _STREAM_HOLE.unpack(data)
            return cls(length, flags)
        return super().decode(data)


_STREAM_HOLE = struct.Struct(">qI")


# -- connection ---------------------------------------------------------------


class ConnectOpenArgs(XdrStruct):
    name: OptionalString
    flags: U32


class ConnectSupportsFeatureArgs(XdrStruct):
    feature: I32


class ConnectSupportsFeatureRet(XdrStruct):
    supported: I32


AuthTypes = Annotated[tuple[AuthType, ...], Array(Enum(AuthType), REMOTE_AUTH_TYPE_LIST_MAX)]


class AuthListRet(XdrStruct):
    types: AuthTypes


class ConnectGetTypeRet(XdrStruct):
    type: NonnullString


class ConnectGetVersionRet(XdrStruct):
    hv_ver: U64


class ConnectGetLibVersionRet(XdrStruct):
    lib_ver: U64


class ConnectGetHostnameRet(XdrStruct):
    hostname: NonnullString


class ConnectGetUriRet(XdrStruct):
    uri: NonnullString


class ConnectEventConnectionClosedMsg(XdrStruct):
    reason: I32


# -- pools ----------------------------------------------------------------------

PoolNames = Annotated[
    tuple[str, ...], Array(String(REMOTE_STRING_MAX), REMOTE_STORAGE_POOL_LIST_MAX)
]


class NumRet(XdrStruct):
    """The ``{int num}`` result of the CONNECT_NUM_OF_* and *_NUM_OF_* procedures."""

    num: I32


class ListNamesArgs(XdrStruct):
    """``{int maxnames}`` of CONNECT_LIST_(DEFINED_)STORAGE_POOLS."""

    maxnames: I32


class ListPoolNamesRet(XdrStruct):
    names: PoolNames


class PoolXmlArgs(XdrStruct):
    """``{xml, flags}`` of STORAGE_POOL_CREATE_XML and STORAGE_POOL_DEFINE_XML."""

    xml: NonnullString
    flags: U32


class StoragePoolCapabilitiesArgs(XdrStruct):
    flags: U32


class StoragePoolCapabilitiesRet(XdrStruct):
    """``{capabilities}``: the ``<storagepoolCapabilities>`` document."""

    capabilities: NonnullString


class PoolRet(XdrStruct):
    """``{pool}``: the result of every call that returns a pool."""

    pool: StoragePool


class PoolArgs(XdrStruct):
    """``{pool}``: destroy, undefine, info, autostart get, volume count, is-active/persistent."""

    pool: StoragePool


class PoolFlagsArgs(XdrStruct):
    """``{pool, flags}``: create (start), build, delete, refresh, XML description."""

    pool: StoragePool
    flags: U32


class LookupByNameArgs(XdrStruct):
    name: NonnullString


class LookupByUuidArgs(XdrStruct):
    uuid: Uuid


class PoolGetInfoRet(XdrStruct):
    state: I32
    capacity: U64
    allocation: U64
    available: U64


class XmlRet(XdrStruct):
    """``{xml}``: pool and volume XML descriptions."""

    xml: NonnullString


class AutostartRet(XdrStruct):
    autostart: I32


class PoolSetAutostartArgs(XdrStruct):
    pool: StoragePool
    autostart: I32


class FindPoolSourcesArgs(XdrStruct):
    type: NonnullString
    src_spec: OptionalString
    flags: U32


class FindPoolSourcesRet(XdrStruct):
    xml: NonnullString


class FlagsArgs(XdrStruct):
    flags: U32


class PoolLookupByTargetPathArgs(XdrStruct):
    path: NonnullString


class ConnectIsSecureRet(XdrStruct):
    secure: I32


class ConnectGetCapabilitiesRet(XdrStruct):
    capabilities: NonnullString


class ActiveRet(XdrStruct):
    active: I32


class PersistentRet(XdrStruct):
    persistent: I32


class ListAllPoolsArgs(XdrStruct):
    need_results: I32
    flags: U32


Pools = Annotated[tuple[StoragePool, ...], Array(StoragePool.codec(), REMOTE_STORAGE_POOL_LIST_MAX)]


class ListAllPoolsRet(XdrStruct):
    pools: Pools
    ret: U32


# -- the families declared in their own modules -------------------------------

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

    from virtvol.protocol.remote_events import *  # noqa: F403
    from virtvol.protocol.remote_secrets import *  # noqa: F403
    from virtvol.protocol.remote_volumes import *  # noqa: F403
else:

    def __getattr__(name: str) -> object:
        """A struct or alias of one of the families, imported on first use (PEP 562)."""
        # The import system asks modules for dunders (``__path__``): no family has any.
        if not name.startswith("__"):
            for family in _families():
                if name in family.__all__:
                    value = getattr(family, name)
                    globals()[name] = value  # read as a plain attribute from now on
                    return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _families() -> Iterator[ModuleType]:
    """The family modules, each imported only when the search reaches it."""
    from virtvol.protocol import remote_volumes

    yield remote_volumes
    from virtvol.protocol import remote_secrets

    yield remote_secrets
    from virtvol.protocol import remote_events

    yield remote_events
