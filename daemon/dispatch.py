"""The daemon's handler of every procedure it serves, one entry per procedure.

``HANDLERS`` maps each procedure number to one handler and says where it runs:
connection-level procedures on the event loop with the connection's ``Session``;
storage procedures (wire structs in, one StorageRegistry method, wire structs
out) in a worker thread, since they may touch the disk (the registry is
thread-safe), except those whose work touches no file and no Ceph cluster
(``memory``: lookups of pools, their lists and flags, secrets, the capability
documents), which the event loop answers itself whenever it can take the
registry's lock without waiting (a hop to a worker and back costs more than
their work); stream procedures open an ``Upload`` or ``Download``; CONNECT_CLOSE
closes the connection. What a procedure takes and returns, whether a read-only
connection may call it and its priority come from the procedure table
(``protocol/procedures.py``), not from here; handlers are type-checked against
the table's argument and result types. Serving a new procedure: one line below.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtvol.daemon.session import Session
from virtvol.daemon.storage import PoolRef, StorageRegistry, VolumeRef
from virtvol.daemon.storage.poolcaps import pool_capabilities_xml
from virtvol.daemon.storage.poolxml import capabilities_xml, find_pool_sources
from virtvol.daemon.storage.reports import uuid_text
from virtvol.protocol import procedures as p
from virtvol.protocol import remote as r
from virtvol.protocol.constants import (
    REMOTE_SECRET_LIST_MAX,
    REMOTE_STORAGE_POOL_LIST_MAX,
    REMOTE_STORAGE_VOL_LIST_MAX,
)
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport, check_flags
from virtvol.protocol.procedures import ArgsT, Procedure, RetT
from virtvol.protocol.xdr import XdrStruct

if TYPE_CHECKING:
    from virtvol.daemon.storage.secrets import SecretDefinition


class Runs(enum.Enum):
    """Where and how a procedure is served."""

    SESSION = "session"  # on the event loop, with the connection's Session
    STORAGE = "storage"  # in the connection's worker queue, with the StorageRegistry
    # On the event loop with the StorageRegistry, its lock taken without waiting, or else
    # as STORAGE: the function may touch no file and no Ceph cluster, even under the lock
    # (the secret store's lock, which secrets' calls wait for, is never held over files).
    MEMORY = "memory"
    STREAM = "stream"  # opens an upload or a download (daemon/upload.py, download.py)
    CLOSE = "close"  # answered, then the connection closes


@dataclass(frozen=True, slots=True)
class Handler:
    procedure: Procedure[Any, Any]
    runs: Runs
    # (Session or StorageRegistry, args) -> result; None for STREAM and CLOSE.
    function: Callable[[Any, Any], XdrStruct | None] | None = None


def session(
    procedure: Procedure[ArgsT, RetT], function: Callable[[Session, ArgsT], RetT]
) -> Handler:
    return Handler(procedure, Runs.SESSION, function)


def storage(
    procedure: Procedure[ArgsT, RetT], function: Callable[[StorageRegistry, ArgsT], RetT]
) -> Handler:
    return Handler(procedure, Runs.STORAGE, function)


def memory(
    procedure: Procedure[ArgsT, RetT], function: Callable[[StorageRegistry, ArgsT], RetT]
) -> Handler:
    """A storage procedure whose work is in memory only (see ``Runs.MEMORY``)."""
    return Handler(procedure, Runs.MEMORY, function)


def stream(procedure: Procedure[Any, Any]) -> Handler:
    if procedure.stream is None:
        raise ValueError(f"{procedure.name} opens no stream")
    return Handler(procedure, Runs.STREAM)


def handler_table(*handlers: Handler) -> dict[int, Handler]:
    """The handlers by procedure number; a procedure handled twice is an error."""
    table: dict[int, Handler] = {}
    for handler in handlers:
        procedure = handler.procedure
        if procedure.number in table:
            raise ValueError(f"{procedure.name} has two handlers")
        if procedure.event:
            raise ValueError(f"{procedure.name} is an event, not a call")
        if (procedure.stream is not None) != (handler.runs is Runs.STREAM):
            raise ValueError(f"{procedure.name}: a stream procedure needs a stream handler")
        table[procedure.number] = handler
    return table


def pool_ref(pool: r.StoragePool) -> PoolRef:
    return PoolRef(pool.name, pool.uuid)


def vol_ref(vol: r.StorageVol) -> VolumeRef:
    return VolumeRef(vol.pool, vol.name, vol.key)


def _wire_pool(ref: PoolRef) -> r.StoragePool:
    return r.StoragePool(name=ref.name, uuid=ref.uuid)


def _wire_vol(ref: VolumeRef) -> r.StorageVol:
    return r.StorageVol(pool=ref.pool, name=ref.name, key=ref.key)


def _pool_ret(ref: PoolRef) -> r.PoolRet:
    return r.PoolRet(pool=_wire_pool(ref))


def _vol_ret(ref: VolumeRef) -> r.VolRet:
    return r.VolRet(vol=_wire_vol(ref))


def _check_count(count: int, limit: int, what: str, argument: str = "maxnames") -> None:
    # libvirtd's generated dispatcher refuses a count above the protocol's maximum, and a
    # negative one, naming the argument, before anything is looked up.
    if count > limit:
        raise ErrorReport(ErrorCode.RPC, ErrorDomain.RPC, f"{argument} > {what}")
    if count < 0:
        raise ErrorReport(ErrorCode.RPC, ErrorDomain.RPC, f"{argument} must be non-negative")


def _check_list_length(count: int, limit: int, what: str) -> None:
    # libvirtd's generated dispatcher refuses to answer a list-all call whose
    # result the protocol cannot carry, whether or not the objects were asked for.
    if count > limit:
        raise ErrorReport.raised(
            ErrorCode.INTERNAL_ERROR,
            ErrorDomain.RPC,
            f"Too many {what} '{count}' for limit '{limit}'",
        )


def _list_pools(reg: StorageRegistry, a: r.ListNamesArgs) -> r.ListPoolNamesRet:
    _check_count(a.maxnames, REMOTE_STORAGE_POOL_LIST_MAX, "REMOTE_STORAGE_POOL_LIST_MAX")
    return r.ListPoolNamesRet(names=tuple(reg.list_active_pool_names(a.maxnames)))


def _list_defined_pools(reg: StorageRegistry, a: r.ListNamesArgs) -> r.ListPoolNamesRet:
    _check_count(a.maxnames, REMOTE_STORAGE_POOL_LIST_MAX, "REMOTE_STORAGE_POOL_LIST_MAX")
    return r.ListPoolNamesRet(names=tuple(reg.list_defined_pool_names(a.maxnames)))


def _list_volumes(reg: StorageRegistry, a: r.PoolListVolumesArgs) -> r.ListVolNamesRet:
    _check_count(a.maxnames, REMOTE_STORAGE_VOL_LIST_MAX, "REMOTE_STORAGE_VOL_LIST_MAX")
    return r.ListVolNamesRet(names=tuple(reg.list_volume_names(pool_ref(a.pool), a.maxnames)))


def _list_all_pools(reg: StorageRegistry, a: r.ListAllPoolsArgs) -> r.ListAllPoolsRet:
    pools = reg.list_all_pools(a.flags)
    _check_list_length(len(pools), REMOTE_STORAGE_POOL_LIST_MAX, "storage_pools")
    wire = tuple(_wire_pool(p) for p in pools) if a.need_results else ()
    return r.ListAllPoolsRet(pools=wire, ret=len(pools))


def _list_all_volumes(reg: StorageRegistry, a: r.PoolListAllVolumesArgs) -> r.PoolListAllVolumesRet:
    vols = reg.list_all_volumes(pool_ref(a.pool), a.flags)
    _check_list_length(len(vols), REMOTE_STORAGE_VOL_LIST_MAX, "storage_vols")
    wire = tuple(_wire_vol(v) for v in vols) if a.need_results else ()
    return r.PoolListAllVolumesRet(vols=wire, ret=len(vols))


def _pool_info(reg: StorageRegistry, a: r.PoolArgs) -> r.PoolGetInfoRet:
    info = reg.pool_info(pool_ref(a.pool))
    return r.PoolGetInfoRet(
        state=int(info.state),
        capacity=info.capacity,
        allocation=info.allocation,
        available=info.available,
    )


def _vol_info(reg: StorageRegistry, a: r.VolArgs | r.VolFlagsArgs) -> r.VolGetInfoRet:
    flags = a.flags if isinstance(a, r.VolFlagsArgs) else 0
    info = reg.volume_info(vol_ref(a.vol), flags)
    return r.VolGetInfoRet(type=int(info.type), capacity=info.capacity, allocation=info.allocation)


def _start_pool(reg: StorageRegistry, a: r.PoolFlagsArgs) -> None:
    reg.start_pool(pool_ref(a.pool), a.flags)


def _pool_capabilities(
    reg: StorageRegistry, a: r.StoragePoolCapabilitiesArgs
) -> r.StoragePoolCapabilitiesRet:
    check_flags(a.flags, 0, "storageConnectGetStoragePoolCapabilities", ErrorDomain.STORAGE)
    return r.StoragePoolCapabilitiesRet(capabilities=pool_capabilities_xml())


def _build_pool(reg: StorageRegistry, a: r.PoolFlagsArgs) -> None:
    reg.build_pool(pool_ref(a.pool), a.flags)


def _delete_pool(reg: StorageRegistry, a: r.PoolFlagsArgs) -> None:
    reg.delete_pool(pool_ref(a.pool), a.flags)


def _destroy_pool(reg: StorageRegistry, a: r.PoolArgs) -> None:
    reg.destroy_pool(pool_ref(a.pool))


def _undefine_pool(reg: StorageRegistry, a: r.PoolArgs) -> None:
    reg.undefine_pool(pool_ref(a.pool))


def _refresh_pool(reg: StorageRegistry, a: r.PoolFlagsArgs) -> None:
    reg.refresh_pool(pool_ref(a.pool), a.flags)


def _set_autostart(reg: StorageRegistry, a: r.PoolSetAutostartArgs) -> None:
    reg.set_pool_autostart(pool_ref(a.pool), bool(a.autostart))


def _delete_volume(reg: StorageRegistry, a: r.VolFlagsArgs) -> None:
    reg.delete_volume(vol_ref(a.vol), a.flags)


def _wipe_volume(reg: StorageRegistry, a: r.VolFlagsArgs) -> None:
    reg.wipe_volume(vol_ref(a.vol), a.flags)


def _wipe_volume_pattern(reg: StorageRegistry, a: r.VolWipePatternArgs) -> None:
    reg.wipe_volume_pattern(vol_ref(a.vol), a.algorithm, a.flags)


def _resize_volume(reg: StorageRegistry, a: r.VolResizeArgs) -> None:
    reg.resize_volume(vol_ref(a.vol), a.capacity, a.flags)


def _wire_secret(definition: SecretDefinition) -> r.Secret:
    return r.Secret(
        uuid=definition.uuid, usage_type=int(definition.usage_type), usage_id=definition.usage_id
    )


def _secret_ret(definition: SecretDefinition) -> r.SecretRet:
    return r.SecretRet(secret=_wire_secret(definition))


def _list_secrets(reg: StorageRegistry, a: r.ListSecretsArgs) -> r.ListSecretsRet:
    _check_count(a.maxuuids, REMOTE_SECRET_LIST_MAX, "REMOTE_SECRET_LIST_MAX", "maxuuids")
    found = reg.secrets.list_all()[: a.maxuuids]
    return r.ListSecretsRet(uuids=tuple(uuid_text(d.uuid) for d in found))


def _list_all_secrets(reg: StorageRegistry, a: r.ListAllSecretsArgs) -> r.ListAllSecretsRet:
    found = reg.secrets.list_all(a.flags)
    wire = tuple(_wire_secret(d) for d in found) if a.need_results else ()
    return r.ListAllSecretsRet(secrets=wire, ret=len(found))


def _set_secret_value(reg: StorageRegistry, a: r.SecretSetValueArgs) -> None:
    reg.secrets.set_value(a.secret.uuid, a.value, a.flags)


def _undefine_secret(reg: StorageRegistry, a: r.SecretArgs) -> None:
    reg.secrets.undefine(a.secret.uuid)


HANDLERS = handler_table(
    session(p.AUTH_LIST, Session.auth_list),
    session(p.CONNECT_OPEN, Session.open),
    session(p.CONNECT_SUPPORTS_FEATURE, Session.supports_feature),
    session(p.CONNECT_GET_TYPE, Session.get_type),
    session(p.CONNECT_GET_VERSION, Session.get_version),
    session(p.CONNECT_GET_LIB_VERSION, Session.get_lib_version),
    session(p.CONNECT_GET_HOSTNAME, Session.get_hostname),
    session(p.CONNECT_GET_URI, Session.get_uri),
    session(p.CONNECT_REGISTER_CLOSE_CALLBACK, Session.register_close_callback),
    session(p.CONNECT_UNREGISTER_CLOSE_CALLBACK, Session.unregister_close_callback),
    Handler(p.CONNECT_CLOSE, Runs.CLOSE),
    stream(p.STORAGE_VOL_UPLOAD),
    stream(p.STORAGE_VOL_DOWNLOAD),
    session(p.CONNECT_IS_SECURE, Session.is_secure),
    session(p.CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY, Session.register_pool_events),
    session(p.CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY, Session.deregister_pool_events),
    memory(
        p.CONNECT_GET_CAPABILITIES,
        lambda reg, a: r.ConnectGetCapabilitiesRet(capabilities=capabilities_xml()),
    ),
    memory(p.CONNECT_GET_STORAGE_POOL_CAPABILITIES, _pool_capabilities),
    memory(
        p.CONNECT_FIND_STORAGE_POOL_SOURCES,
        lambda reg, a: r.FindPoolSourcesRet(xml=find_pool_sources(a.type)),
    ),
    memory(
        p.STORAGE_POOL_LOOKUP_BY_TARGET_PATH,
        lambda reg, a: _pool_ret(reg.lookup_pool_by_target_path(a.path)),
    ),
    memory(p.CONNECT_NUM_OF_STORAGE_POOLS, lambda reg, a: r.NumRet(num=reg.num_active_pools())),
    memory(p.CONNECT_LIST_STORAGE_POOLS, _list_pools),
    memory(
        p.CONNECT_NUM_OF_DEFINED_STORAGE_POOLS, lambda reg, a: r.NumRet(num=reg.num_defined_pools())
    ),
    memory(p.CONNECT_LIST_DEFINED_STORAGE_POOLS, _list_defined_pools),
    memory(p.CONNECT_LIST_ALL_STORAGE_POOLS, _list_all_pools),
    storage(
        p.STORAGE_POOL_CREATE_XML, lambda reg, a: _pool_ret(reg.create_pool_xml(a.xml, a.flags))
    ),
    storage(
        p.STORAGE_POOL_DEFINE_XML, lambda reg, a: _pool_ret(reg.define_pool_xml(a.xml, a.flags))
    ),
    storage(p.STORAGE_POOL_CREATE, _start_pool),
    storage(p.STORAGE_POOL_BUILD, _build_pool),
    storage(p.STORAGE_POOL_DESTROY, _destroy_pool),
    storage(p.STORAGE_POOL_DELETE, _delete_pool),
    storage(p.STORAGE_POOL_UNDEFINE, _undefine_pool),
    storage(p.STORAGE_POOL_REFRESH, _refresh_pool),
    memory(
        p.STORAGE_POOL_LOOKUP_BY_NAME, lambda reg, a: _pool_ret(reg.lookup_pool_by_name(a.name))
    ),
    memory(
        p.STORAGE_POOL_LOOKUP_BY_UUID, lambda reg, a: _pool_ret(reg.lookup_pool_by_uuid(a.uuid))
    ),
    memory(
        p.STORAGE_POOL_LOOKUP_BY_VOLUME,
        lambda reg, a: _pool_ret(reg.lookup_pool_by_volume(vol_ref(a.vol))),
    ),
    storage(p.STORAGE_POOL_GET_INFO, _pool_info),
    storage(
        p.STORAGE_POOL_GET_XML_DESC,
        lambda reg, a: r.XmlRet(xml=reg.pool_xml(pool_ref(a.pool), a.flags)),
    ),
    memory(
        p.STORAGE_POOL_GET_AUTOSTART,
        lambda reg, a: r.AutostartRet(autostart=int(reg.pool_autostart(pool_ref(a.pool)))),
    ),
    storage(p.STORAGE_POOL_SET_AUTOSTART, _set_autostart),
    memory(
        p.STORAGE_POOL_IS_ACTIVE,
        lambda reg, a: r.ActiveRet(active=int(reg.pool_is_active(pool_ref(a.pool)))),
    ),
    memory(
        p.STORAGE_POOL_IS_PERSISTENT,
        lambda reg, a: r.PersistentRet(persistent=int(reg.pool_is_persistent(pool_ref(a.pool)))),
    ),
    storage(
        p.STORAGE_POOL_NUM_OF_VOLUMES,
        lambda reg, a: r.NumRet(num=reg.num_volumes(pool_ref(a.pool))),
    ),
    storage(p.STORAGE_POOL_LIST_VOLUMES, _list_volumes),
    storage(p.STORAGE_POOL_LIST_ALL_VOLUMES, _list_all_volumes),
    storage(
        p.STORAGE_VOL_CREATE_XML,
        lambda reg, a: _vol_ret(reg.create_volume_xml(pool_ref(a.pool), a.xml, a.flags)),
    ),
    storage(
        p.STORAGE_VOL_CREATE_XML_FROM,
        lambda reg, a: _vol_ret(
            reg.create_volume_xml_from(pool_ref(a.pool), a.xml, vol_ref(a.clonevol), a.flags)
        ),
    ),
    storage(p.STORAGE_VOL_DELETE, _delete_volume),
    storage(p.STORAGE_VOL_WIPE, _wipe_volume),
    storage(p.STORAGE_VOL_WIPE_PATTERN, _wipe_volume_pattern),
    storage(p.STORAGE_VOL_RESIZE, _resize_volume),
    storage(
        p.STORAGE_VOL_LOOKUP_BY_NAME,
        lambda reg, a: _vol_ret(reg.lookup_volume_by_name(pool_ref(a.pool), a.name)),
    ),
    storage(p.STORAGE_VOL_LOOKUP_BY_KEY, lambda reg, a: _vol_ret(reg.lookup_volume_by_key(a.key))),
    storage(
        p.STORAGE_VOL_LOOKUP_BY_PATH, lambda reg, a: _vol_ret(reg.lookup_volume_by_path(a.path))
    ),
    storage(p.STORAGE_VOL_GET_INFO, _vol_info),
    storage(p.STORAGE_VOL_GET_INFO_FLAGS, _vol_info),
    storage(
        p.STORAGE_VOL_GET_XML_DESC,
        lambda reg, a: r.XmlRet(xml=reg.volume_xml(vol_ref(a.vol), a.flags)),
    ),
    storage(
        p.STORAGE_VOL_GET_PATH, lambda reg, a: r.VolGetPathRet(name=reg.volume_path(vol_ref(a.vol)))
    ),
    memory(p.CONNECT_NUM_OF_SECRETS, lambda reg, a: r.NumRet(num=len(reg.secrets.list_all()))),
    memory(p.CONNECT_LIST_SECRETS, _list_secrets),
    memory(p.CONNECT_LIST_ALL_SECRETS, _list_all_secrets),
    memory(p.SECRET_LOOKUP_BY_UUID, lambda reg, a: _secret_ret(reg.secrets.lookup_by_uuid(a.uuid))),
    memory(
        p.SECRET_LOOKUP_BY_USAGE,
        lambda reg, a: _secret_ret(reg.secrets.lookup_by_usage(a.usage_type, a.usage_id)),
    ),
    storage(
        p.SECRET_DEFINE_XML, lambda reg, a: _secret_ret(reg.secrets.define_xml(a.xml, a.flags))
    ),
    memory(
        p.SECRET_GET_XML_DESC,
        lambda reg, a: r.XmlRet(xml=reg.secrets.xml(a.secret.uuid, a.flags)),
    ),
    storage(p.SECRET_SET_VALUE, _set_secret_value),
    memory(
        p.SECRET_GET_VALUE,
        lambda reg, a: r.SecretGetValueRet(value=reg.secrets.get_value(a.secret.uuid, a.flags)),
    ),
    storage(p.SECRET_UNDEFINE, _undefine_secret),
)
