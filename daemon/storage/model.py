"""Plain values the storage layer hands to the RPC layer."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from virtvol.protocol.constants import PoolInfo as PoolInfo
from virtvol.protocol.constants import PoolState as PoolState
from virtvol.protocol.constants import VolumeInfo as VolumeInfo
from virtvol.protocol.constants import VolumeType as VolumeType


@dataclass(frozen=True, slots=True)
class PoolRef:
    """A pool as the wire names it (``remote_nonnull_storage_pool``): name and 16 raw UUID bytes."""

    name: str
    uuid: bytes


@dataclass(frozen=True, slots=True)
class VolumeRef:
    """A volume as the wire names it (``remote_nonnull_storage_vol``).

    ``key`` is the volume's absolute path. Operations find the volume by
    ``pool`` and ``name`` only, as libvirt does; ``key`` is informative.
    """

    pool: str
    name: str
    key: str


class PoolEvent(enum.IntEnum):
    """What happened to a pool, as libvirt's storage pool events tell it.

    The lifecycle values are ``virStoragePoolEventLifecycleType``'s; ``REFRESHED`` is
    the separate refresh event (its own event ID, no lifecycle number).
    """

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    STOPPED = 3
    CREATED = 4  # built
    DELETED = 5
    REFRESHED = -1
