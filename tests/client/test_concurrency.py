"""Many transfers at once, a responsive event loop, and libvirtd's keepalive window."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

import pytest

from tests.client.helpers import MIB, allocated, assert_same_file, write_sparse_image
from tests.conftest import reference_libvirtd_with
from virtvol.client import Connection, Hole, StorageVolume, connect
from virtvol.client.rpc import RpcProtocol

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd

pytestmark = pytest.mark.interop

SIZE = 8 * MIB


async def _volume(conn: Connection, name: str, size: int = SIZE) -> StorageVolume:
    pool = await conn.lookup_pool_by_name("default")
    xml = (
        f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
        "<allocation unit='bytes'>0</allocation><target><format type='raw'/></target></volume>"
    )
    return await pool.create_volume(xml)


async def _round_trip(conn: Connection, name: str, tmp_path: Path, seed: int) -> None:
    source = tmp_path / f"{name}.src"
    await asyncio.to_thread(write_sparse_image, source, SIZE, seed=seed)
    vol = await _volume(conn, name)
    await vol.upload_file(source)
    back = tmp_path / f"{name}.back"
    await vol.download_file(back)
    await asyncio.to_thread(assert_same_file, source, back)
    assert allocated(back) <= MIB


async def test_eight_transfers_over_one_connection(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    async with connect(reference_libvirtd.tcp_uri) as conn:
        await asyncio.gather(*(_round_trip(conn, f"one{i}", tmp_path, i) for i in range(8)))


async def test_eight_transfers_over_eight_connections(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    async def one(i: int) -> None:
        async with connect(reference_libvirtd.tcp_uri) as conn:
            await _round_trip(conn, f"many{i}", tmp_path, i + 10)

    await asyncio.gather(*(one(i) for i in range(8)))


async def test_event_loop_stays_responsive(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    size = 96 * MIB
    source = tmp_path / "big.src"
    with source.open("wb") as f:  # dense data: every byte goes through the loop
        for _ in range(size // (8 * MIB)):
            f.write(os.urandom(8 * MIB))
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await _volume(conn, "big.img", size)
        task = asyncio.create_task(ticker())
        await vol.upload_file(source)
        back = tmp_path / "big.back"
        await vol.download_file(back)
        stop.set()
        await task
    assert_same_file(source, back)
    assert len(gaps) > 20
    # The ticker ran all along: no stall of the loop by file I/O.
    assert max(gaps) < 0.25, f"longest gap {max(gaps):.3f} s"


# libvirtd pings a client it has heard nothing from for keepalive_interval seconds and
# drops it after keepalive_count unanswered PINGs: after interval * (count + 1) seconds
# of silence. libvirt's default interval of 5 s would make that 30 s; 1 s (with the
# default count, 5) makes it 6 s, with the same 5 s between the first PING and the drop.
LIBVIRTD_KEEPALIVE_INTERVAL = 1
LIBVIRTD_KEEPALIVE_COUNT = 5
LIBVIRTD_KEEPALIVE_TOLERANCE = LIBVIRTD_KEEPALIVE_INTERVAL * (LIBVIRTD_KEEPALIVE_COUNT + 1)


@pytest.fixture
def pinging_libvirtd() -> Iterator[ReferenceLibvirtd]:
    """A reference libvirtd that drops a silent client after
    ``LIBVIRTD_KEEPALIVE_TOLERANCE`` s."""
    yield from reference_libvirtd_with(
        settings=[
            f"keepalive_interval = {LIBVIRTD_KEEPALIVE_INTERVAL}",
            f"keepalive_count = {LIBVIRTD_KEEPALIVE_COUNT}",
        ]
    )


async def test_slow_download_survives_libvirtd_keepalive(
    pinging_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    """The client sends nothing of its own for longer than libvirtd's keepalive
    tolerance; libvirtd pings it and it answers."""
    size = 48 * MIB
    # Bytes per second the consumer takes: the download lasts 10 s, well past the
    # tolerance, and the 10 MiB or so the socket buffers hold ahead of a PING are read
    # in 2 s, well inside the 5 s between libvirtd's first PING and its giving up.
    rate = 4.8 * MIB
    source = tmp_path / "slow.src"
    source.write_bytes(os.urandom(size))
    async with connect(pinging_libvirtd.tcp_uri) as conn:
        vol = await _volume(conn, "slow.img", size)
        await vol.upload_file(source)
    async with connect(pinging_libvirtd.tcp_uri, keepalive=None) as conn:
        vol = await (await conn.lookup_pool_by_name("default")).lookup_volume("slow.img")
        started = time.monotonic()
        received = bytearray()
        async with vol.download(sparse=False) as stream:
            async for item in stream:
                assert not isinstance(item, Hole)
                received += item
                await asyncio.sleep(len(item) / rate)
        elapsed = time.monotonic() - started
        assert isinstance(conn._rpc, RpcProtocol)
        assert conn._rpc.pings_sent == 0
        assert conn._rpc.pings_received >= 1
        assert conn.is_alive
        assert await conn.lib_version() == 9000000
    assert elapsed > 1.5 * LIBVIRTD_KEEPALIVE_TOLERANCE
    assert received == source.read_bytes()
