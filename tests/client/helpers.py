"""Helpers shared by the client tests: sparse test images, file comparisons, and work
run on either of the client's engines."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from virtvol.client import connect
from virtvol.client.direct import open_direct, run_blocking

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path
    from typing import TypeVar

    from virtvol.client import Connection
    from virtvol.protocol.constants import ProtocolMode

    T = TypeVar("T")

KIB = 1024
MIB = 1024 * KIB

# The command line's blocking engine, and the library's event loop.
ENGINES = ["direct", "event-loop"]


def on_engine(
    engine: str,
    uri: str,
    work: Callable[[Connection], Awaitable[T]],
    *,
    keepalive: tuple[float, int] | None = (5, 5),
    protocol: ProtocolMode = "current",
) -> T:
    """``work`` on a connection to ``uri`` made by ``engine`` (one of ``ENGINES``), which
    is closed after it, whatever the outcome."""

    async def closing(conn: Connection) -> T:
        try:
            return await work(conn)
        finally:
            await conn.close()

    if engine == "direct":
        opening = open_direct(uri, keepalive=keepalive, protocol=protocol)
        return run_blocking(closing(run_blocking(opening)))

    async def on_a_loop() -> T:
        return await closing(await connect(uri, keepalive=keepalive, protocol=protocol))

    return asyncio.run(on_a_loop())


def write_sparse_image(path: Path, size: int = 8 * MIB, *, seed: int = 1) -> bytes:
    """A file with data islands, real holes, a written-zero block and a trailing hole."""
    rnd = bytes((seed * 37 + i * 11) % 251 for i in range(64 * KIB))
    with path.open("wb") as f:
        f.write(rnd * 2)  # 128 KiB of data at 0
        f.seek(1 * MIB)
        f.write(os.urandom(300 * KIB + 7))  # an unaligned island
        f.seek(3 * MIB)
        f.write(bytes(512 * KIB))  # written zeros: allocated, but all zero
        f.seek(5 * MIB)
        f.write(rnd)
        f.truncate(size)  # trailing hole
    return path.read_bytes()


def allocated(path: Path) -> int:
    """Bytes allocated on disk."""
    return path.stat().st_blocks * 512


def assert_same_file(a: Path, b: Path) -> None:
    """Byte-for-byte equality with a readable failure."""
    da, db = a.read_bytes(), b.read_bytes()
    assert len(da) == len(db), f"sizes differ: {len(da)} != {len(db)}"
    if da != db:
        first = next(i for i, (x, y) in enumerate(zip(da, db, strict=True)) if x != y)
        raise AssertionError(f"{a} and {b} differ first at byte {first}")


def open_descriptors() -> list[str]:
    """This process's open file descriptors."""
    return sorted(os.listdir("/proc/self/fd"))


def leftovers(folder: Path, name: str) -> list[Path]:
    """Temporary files a download into ``folder/name`` left behind."""
    return list(folder.glob(f".{name}.*"))


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Return once ``condition()`` holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.01)
