"""libvirt's rules for a resized volume's new size, shared by every pool type."""

from __future__ import annotations

import pytest

from virtvol.daemon.storage.resizerules import new_capacity
from virtvol.protocol.errors import ErrorCode, ErrorReport

BELOW_ALLOCATION = "invalid argument: can't shrink capacity below existing allocation"
WITHOUT_SHRINK = (
    "invalid argument: Can't shrink capacity below current capacity unless shrink flag "
    "explicitly specified"
)


def _unmeasured() -> int:
    raise AssertionError("the allocation was measured")


def _refusal(
    current: int,
    capacity: int,
    allocation: int,
    *,
    delta: bool,
    shrink: bool,
    allocation_within_capacity: bool = False,
) -> str:
    with pytest.raises(ErrorReport) as info:
        new_capacity(
            current,
            capacity,
            lambda: allocation,
            delta=delta,
            shrink=shrink,
            allocation_within_capacity=allocation_within_capacity,
        )
    assert info.value.code == ErrorCode.INVALID_ARG
    return info.value.message


def test_the_new_size() -> None:
    assert new_capacity(1000, 5000, lambda: 0, delta=False, shrink=False) == 5000
    assert new_capacity(1000, 5000, lambda: 0, delta=True, shrink=False) == 6000
    assert new_capacity(1000, 300, lambda: 0, delta=True, shrink=True) == 700
    assert new_capacity(1000, 5000, lambda: 0, delta=True, shrink=True) == 0  # stops at zero
    assert new_capacity(1000, 5000, lambda: 0, delta=False, shrink=True) == 5000


def test_a_size_below_the_allocation_is_refused_even_growing() -> None:
    assert _refusal(1000, 2000, 4096, delta=False, shrink=False) == BELOW_ALLOCATION
    assert _refusal(1000, 500, 4096, delta=True, shrink=False) == BELOW_ALLOCATION
    # Below the allocation is said before the missing SHRINK flag.
    assert _refusal(8192, 1000, 4096, delta=False, shrink=False) == BELOW_ALLOCATION
    assert _refusal(8192, 5000, 4096, delta=False, shrink=False) == WITHOUT_SHRINK
    assert new_capacity(1000, 4096, lambda: 4096, delta=False, shrink=False) == 4096


def test_an_allocation_within_the_size_is_measured_only_for_a_smaller_size() -> None:
    grown = new_capacity(
        1000, 2000, _unmeasured, delta=False, shrink=False, allocation_within_capacity=True
    )
    assert grown == 2000
    refused = _refusal(8192, 1000, 4096, delta=False, shrink=True, allocation_within_capacity=True)
    assert refused == BELOW_ALLOCATION


def test_a_delta_sum_wraps_round_as_libvirt_s_unsigned_one() -> None:
    huge = (1 << 64) - 1
    # A header claiming a near-2^64 size, grown by 1: the sum wraps round to 0.
    assert _refusal(huge, 1, 4096, delta=True, shrink=False) == BELOW_ALLOCATION
    assert new_capacity(huge, 1, lambda: 0, delta=True, shrink=True) == huge - 1
    # 4 MiB grown by 2^64 - 1 is 4 MiB - 1: a shrink without the flag.
    assert _refusal(4 << 20, huge, 0, delta=True, shrink=False) == WITHOUT_SHRINK


def test_preallocating_needs_room_for_the_growth_after_the_other_checks() -> None:
    assert (
        new_capacity(1000, 5000, lambda: 1000, delta=False, shrink=False, available=lambda: 4000)
        == 5000
    )
    with pytest.raises(ErrorReport) as info:
        new_capacity(1000, 5001, lambda: 1000, delta=False, shrink=False, available=lambda: 4000)
    assert (info.value.code, info.value.message) == (
        ErrorCode.OPERATION_FAILED,
        "operation failed: Not enough space left in storage pool",
    )
    # The shrink flag is asked for before the room.
    with pytest.raises(ErrorReport) as info:
        new_capacity(9000, 5000, lambda: 1000, delta=False, shrink=False, available=lambda: 0)
    assert info.value.message == WITHOUT_SHRINK
