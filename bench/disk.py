"""The disk's write limit: bytes written to a new file with O_DIRECT, then fdatasync.

A durable upload cannot end before its data is on the disk, so this rate, measured
where the benchmark keeps its volumes, is the physical reference for the durable
rows, as the raw loopback rate is for the network: no page cache on the way (its
cost on this kind of VM swings from run to run), nothing to flush at the end.

    python -m bench.disk BYTES [DIRECTORY]   -> prints the seconds taken
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
import tempfile
import time

# O_DIRECT wants the buffer, the offset and the length aligned; a mapping is page-aligned.
BLOCK = 4 << 20


def measure(total: int, directory: str | os.PathLike[str] | None = None) -> float | None:
    """Seconds to write ``total`` bytes (rounded up to whole blocks) to a new file in
    ``directory`` with direct I/O and make them durable; None where the file system
    takes no direct I/O (tmpfs on older kernels)."""
    buffer = mmap.mmap(-1, BLOCK)
    buffer.write(os.urandom(BLOCK))
    handle, path = tempfile.mkstemp(prefix="virtvol-bench-disk-", dir=directory)
    os.close(handle)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        os.unlink(path)
        buffer.close()
        if exc.errno == errno.EINVAL:
            return None
        raise
    try:
        started = time.perf_counter()
        for offset in range(0, total, BLOCK):
            os.pwrite(fd, buffer, offset)
        os.fdatasync(fd)
        return time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
        buffer.close()


if __name__ == "__main__":
    seconds = measure(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
    print("no direct I/O here" if seconds is None else f"{seconds:.3f}")
