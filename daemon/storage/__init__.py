"""The daemon's storage layer: directory pools and their volumes, without networking.

``StorageRegistry`` is the entry point; the RPC layer maps each storage
procedure to one of its methods and the wire structs to ``PoolRef`` and
``VolumeRef``. Failures are raised as ``ErrorReport`` with libvirt's codes and
texts.
"""

from virtvol.sparse.reader import Chunk

from .flags import (
    ListPoolsFlags,
    PoolCreateFlags,
    PoolDefineFlags,
    PoolXMLFlags,
    VolCreateFlags,
    VolInfoFlags,
    VolResizeFlags,
    VolStreamFlags,
)
from .model import PoolInfo, PoolRef, PoolState, VolumeInfo, VolumeRef, VolumeType
from .registry import StorageRegistry
from .transfer import VolumeReader, VolumeWriter

__all__ = [
    "Chunk",
    "ListPoolsFlags",
    "PoolCreateFlags",
    "PoolDefineFlags",
    "PoolInfo",
    "PoolRef",
    "PoolState",
    "PoolXMLFlags",
    "StorageRegistry",
    "VolCreateFlags",
    "VolInfoFlags",
    "VolResizeFlags",
    "VolStreamFlags",
    "VolumeInfo",
    "VolumeReader",
    "VolumeRef",
    "VolumeType",
    "VolumeWriter",
]
