"""The XDR structs of the REMOTE program that virtvol speaks, declared from the wire facts.

Names follow libvirt's ``remote_<procedure>_args`` / ``_ret`` in CamelCase.
``char`` members (pool state, volume type) travel as 32-bit ints.

Every field is annotated with a name defined in this module (an ``Annotated``
alias or a struct): the codec looks the name up, which needs no ``typing`` at
run time (``xdr._field_hints``).
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
    REMOTE_SECRET_LIST_MAX,
    REMOTE_SECRET_VALUE_MAX,
    REMOTE_STORAGE_POOL_LIST_MAX,
    REMOTE_STORAGE_VOL_LIST_MAX,
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
    Opaque,
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
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        # As ``encode``: one struct for the one well-formed size, the generic decoder
        # (and its error messages) for anything else.
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
VolNames = Annotated[tuple[str, ...], Array(String(REMOTE_STRING_MAX), REMOTE_STORAGE_VOL_LIST_MAX)]


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


class VolArgs(XdrStruct):
    """``{vol}``: pool lookup by volume, volume info, path."""

    vol: StorageVol


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


class PoolListVolumesArgs(XdrStruct):
    pool: StoragePool
    maxnames: I32


class ListVolNamesRet(XdrStruct):
    names: VolNames


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


OptionalStoragePool = Annotated[StoragePool | None, Optional(StoragePool.codec())]


class PoolEventRegisterArgs(XdrStruct):
    """``{eventID, pool}``: a pool's events, or every pool's (``pool`` absent)."""

    event_id: I32
    pool: OptionalStoragePool


class PoolEventRegisterRet(XdrStruct):
    callback_id: I32


class PoolEventDeregisterArgs(XdrStruct):
    callback_id: I32


class PoolLifecycleEventMsg(XdrStruct):
    callback_id: I32
    pool: StoragePool
    event: I32
    detail: I32


class PoolRefreshEventMsg(XdrStruct):
    callback_id: I32
    pool: StoragePool


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


class PoolListAllVolumesArgs(XdrStruct):
    pool: StoragePool
    need_results: I32
    flags: U32


Volumes = Annotated[tuple[StorageVol, ...], Array(StorageVol.codec(), REMOTE_STORAGE_VOL_LIST_MAX)]


class PoolListAllVolumesRet(XdrStruct):
    vols: Volumes
    ret: U32


# -- volumes --------------------------------------------------------------------


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


# -- secrets --------------------------------------------------------------------


class Secret(XdrStruct):
    """``remote_nonnull_secret``: UUID, usage type and usage ID (e.g. the ceph name)."""

    uuid: Uuid
    usage_type: I32
    usage_id: NonnullString


SecretValue = Annotated[bytes, Opaque(REMOTE_SECRET_VALUE_MAX)]


class ListSecretsArgs(XdrStruct):
    maxuuids: I32


SecretUuids = Annotated[tuple[str, ...], Array(String(REMOTE_STRING_MAX), REMOTE_SECRET_LIST_MAX)]


class ListSecretsRet(XdrStruct):
    uuids: SecretUuids


class SecretXmlArgs(XdrStruct):
    """``{xml, flags}`` of SECRET_DEFINE_XML."""

    xml: NonnullString
    flags: U32


class SecretRet(XdrStruct):
    secret: Secret


class SecretArgs(XdrStruct):
    secret: Secret


class SecretFlagsArgs(XdrStruct):
    """``{secret, flags}``: XML description, get value."""

    secret: Secret
    flags: U32


class SecretSetValueArgs(XdrStruct):
    secret: Secret
    value: SecretValue
    flags: U32

    def __repr__(self) -> str:
        # The value is a credential: never in a log line or a traceback.
        return f"SecretSetValueArgs(secret={self.secret!r}, value=<{len(self.value)} bytes>)"


class SecretGetValueRet(XdrStruct):
    value: SecretValue

    def __repr__(self) -> str:
        return f"SecretGetValueRet(value=<{len(self.value)} bytes>)"


class SecretLookupByUsageArgs(XdrStruct):
    usage_type: I32
    usage_id: NonnullString


class ListAllSecretsArgs(XdrStruct):
    need_results: I32
    flags: U32


Secrets = Annotated[tuple[Secret, ...], Array(Secret.codec(), REMOTE_SECRET_LIST_MAX)]


class ListAllSecretsRet(XdrStruct):
    secrets: Secrets
    ret: U32
