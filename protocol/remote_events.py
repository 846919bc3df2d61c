"""The REMOTE program's structs of pool events (registering for them, and the events).

Part of ``virtvol.protocol.remote``, which hands them out under its own name: this
module is imported when one of them is first used. Declared as ``remote``'s are.
"""

from __future__ import annotations

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Annotated
else:
    from virtvol.protocol.hints import Annotated

from virtvol.protocol.remote import I32, StoragePool
from virtvol.protocol.xdr import Optional, XdrStruct

__all__ = [
    "OptionalStoragePool",
    "PoolEventDeregisterArgs",
    "PoolEventRegisterArgs",
    "PoolEventRegisterRet",
    "PoolLifecycleEventMsg",
    "PoolRefreshEventMsg",
]

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
