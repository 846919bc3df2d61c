"""libvirt 9.0's rules for the new size of a resized volume, for every pool type.

libvirtd works the new size out, then refuses a smaller one below the volume's
allocation, or without the SHRINK flag. What a pool type checks after that (the free
space to preallocate) and how it resizes are its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .reports import invalid_arg

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
) -> int:
    """The size a resize to ``capacity`` asks of a volume of ``current`` bytes, once
    libvirt's checks of it against the volume's allocation and size have passed
    (``allocation`` is called only for a smaller size).
    """
    if delta and shrink:
        new = current - min(capacity, current)
    elif delta:
        # libvirt's unsigned sum: an image claiming a near-2^64 size wraps round.
        new = (current + capacity) % _SIZE_RANGE
    else:
        new = capacity
    if new < current:
        if new < allocation():
            raise invalid_arg("can't shrink capacity below existing allocation")
        if not shrink:
            raise invalid_arg(
                "Can't shrink capacity below current capacity unless shrink flag "
                "explicitly specified"
            )
    return new
