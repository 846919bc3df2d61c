"""The one rule for which data travels or is stored as a hole.

A block of ``ZERO_BLOCK`` bytes, aligned to file offsets, that holds only
zeros is a hole: a sender skips it, a receiver punches or skips it instead of
writing zeros. Aligning to file offsets (not to buffer starts) means sender
and receiver cut the same blocks whatever their buffer sizes, so a volume
copied either way ends with the same holes.
"""

from __future__ import annotations

__all__ = ["ZEROS", "ZERO_BLOCK", "Bytes", "is_zero", "zero_runs", "zero_view"]

Bytes = bytes | bytearray | memoryview

# Small enough to find the zero blocks inside partly used image regions, large
# enough that the per-block Python work is noise next to the memcmp.
ZERO_BLOCK = 64 * 1024

# A shared immutable zero buffer: the reference for ``is_zero`` and the payload
# of zero data sent or written where a hole cannot be (1 MiB: a frame's worth).
ZEROS = bytes(1 << 20)
_ZERO_VIEW = memoryview(ZEROS)


def is_zero(buf: Bytes) -> bool:
    """Return True when every byte of ``buf`` is zero.

    ``bytes.startswith`` with a buffer argument is one memcmp against the
    preallocated zero block, with no copy, and it stops at the first non-zero
    byte, so dense data pays almost nothing.
    """
    view = memoryview(buf).cast("B")  # byte-addressed slices, no copy
    step = len(ZEROS)
    return all(ZEROS.startswith(view[pos : pos + step]) for pos in range(0, len(view), step))


def zero_runs(buf: Bytes, position: int = 0) -> list[tuple[bool, int, int]]:
    """Split ``buf`` (which sits at file offset ``position``) into maximal runs.

    Returns ``(zero, start, stop)`` tuples with offsets into ``buf``, covering
    it in order: ``zero`` runs are whole aligned ``ZERO_BLOCK`` blocks of zeros
    (or the zero ends of ``buf`` where it starts or stops inside a block).
    """
    view = memoryview(buf).cast("B")
    size = len(view)
    if position % ZERO_BLOCK + size <= ZERO_BLOCK:
        # Within one block (a fragmented image's every extent): one run, one memcmp.
        return [(ZEROS.startswith(view), 0, size)] if size else []
    runs: list[tuple[bool, int, int]] = []
    run_zero = False
    run_start = cursor = 0
    zeros = ZEROS
    while cursor < size:
        stop = min(size, cursor + ZERO_BLOCK - (position + cursor) % ZERO_BLOCK)
        zero = zeros.startswith(view[cursor:stop])
        if zero is not run_zero and cursor > run_start:
            runs.append((run_zero, run_start, cursor))
            run_start = cursor
        run_zero = zero
        cursor = stop
    if cursor > run_start:
        runs.append((run_zero, run_start, cursor))
    return runs


def zero_view(length: int) -> memoryview:
    """A read-only view of ``length`` zeros (at most ``len(ZEROS)``), without allocating."""
    return _ZERO_VIEW[:length]
