"""libvirt 9.0's rules for the new size of a resized volume, for every pool type.

libvirtd works the new size out, then refuses one below the volume's allocation (even
one that grows the volume: a file's allocation can exceed its size), then a smaller one
without the SHRINK flag, then, to preallocate, one whose growth the pool has no room
for. Whether a pool type can preallocate at all, and how it resizes, are its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtvol.protocol.errors import ErrorCode

from .reports import invalid_arg, storage_error

if TYPE_CHECKING:
    from collections.abc import Callable

# Sizes are 64-bit unsigned numbers in libvirt.
_SIZE_RANGE = 1 << 64


def new_capacity(
    current: int,
    capacity: int,
    allocation: Callable[[], int],
    *,
    delta: bool,
    shrink: bool,
    allocation_within_capacity: bool = False,
    available: Callable[[], int] | None = None,
) -> int:
    """The size a resize to ``capacity`` asks of a volume of ``current`` bytes, once
    libvirt's checks of it against the volume's allocation and size have passed.

    ``allocation_within_capacity``: the volume's allocation never exceeds its size, so
    only a smaller size can fall below it and ``allocation`` is called only for one.
    ``available``: the pool's free bytes, given to preallocate (the ALLOCATE flag).
    """
    if delta and shrink:
        new = current - min(capacity, current)
    elif delta:
        # libvirt's unsigned sum: an image claiming a near-2^64 size wraps round.
        new = (current + capacity) % _SIZE_RANGE
    else:
        new = capacity
    if (new < current or not allocation_within_capacity) and new < allocation():
        raise invalid_arg("can't shrink capacity below existing allocation")
    if new < current and not shrink:
        raise invalid_arg(
            "Can't shrink capacity below current capacity unless shrink flag explicitly specified"
        )
    if available is not None and new - allocation() > available():
        raise storage_error(ErrorCode.OPERATION_FAILED, "Not enough space left in storage pool")
    return new
