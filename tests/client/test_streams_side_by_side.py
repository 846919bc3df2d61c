"""Streams and calls side by side on one connection of the event-loop client, against
virtvold: a download whose consumer does not read holds the socket back only while
nothing else on the connection waits for the daemon. Another download, a call, an
upload's finish all get their answers, as python3-libvirt's do, while the unread
download queues its items (up to ``READ_HOLD_LIMIT``, then others wait for it).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from tests.client.helpers import MIB, until
from virtvol.client import Connection, Download, Hole, StorageVolume, connect, streams

if TYPE_CHECKING:
    from tests.conftest import Virtvold

# Above what one download queues before it holds the socket back (8 MiB), within what it
# may queue while the connection is read for another (16 MiB, READ_HOLD_LIMIT).
SIZE = 12 * MIB
# Fails the test instead of hanging it; the work takes well under a second.
BOUND = 10


async def _read(stream: Download) -> bytes:
    content = bytearray()
    async for item in stream:
        content += bytes(item.length) if isinstance(item, Hole) else item
    return bytes(content)


async def _volumes(virtvold: Virtvold, *names: str, size: int = SIZE) -> dict[str, bytes]:
    contents = {name: os.urandom(size) for name in names}
    for name, content in contents.items():
        (virtvold.pool_dir / name).write_bytes(content)
    return contents


async def _looked_up(conn: Connection, *names: str) -> list[StorageVolume]:
    """The default pool's volumes ``names``, after a refresh that finds the files
    ``_volumes`` wrote."""
    pool = await conn.lookup_pool_by_name("default")
    await pool.refresh()
    return [await pool.lookup_volume(name) for name in names]


async def test_a_download_is_read_while_another_waits_unread(virtvold: Virtvold) -> None:
    contents = await _volumes(virtvold, "a.img", "b.img")
    async with connect(virtvold.unix_uri) as conn:
        first, second = await _looked_up(conn, "a.img", "b.img")
        async with asyncio.timeout(BOUND):
            async with first.download() as unread, second.download() as read:
                assert await _read(read) == contents["b.img"]
                assert await _read(unread) == contents["a.img"]
            assert await conn.get_type() == "storage"


async def test_a_call_is_answered_while_a_download_waits_unread(virtvold: Virtvold) -> None:
    await _volumes(virtvold, "a.img")
    async with connect(virtvold.unix_uri) as conn:
        (volume,) = await _looked_up(conn, "a.img")
        async with asyncio.timeout(BOUND):
            async with volume.download() as unread:
                await until(lambda: unread._paused)  # it holds the socket back
                assert (await volume.info()).capacity == SIZE
                await unread.abort()
            assert await conn.get_type() == "storage"


async def test_an_upload_is_confirmed_while_a_download_waits_unread(virtvold: Virtvold) -> None:
    contents = await _volumes(virtvold, "a.img", "b.img")
    new = os.urandom(MIB)
    async with connect(virtvold.unix_uri) as conn:
        source, target = await _looked_up(conn, "a.img", "b.img")
        async with asyncio.timeout(BOUND):
            async with source.download() as unread:
                async with target.upload(sparse=False) as upload:
                    await upload.send(new)
                # The volume's bytes past the upload's end stay, as libvirtd's do.
                assert (virtvold.pool_dir / "b.img").read_bytes() == new + contents["b.img"][MIB:]
                assert await _read(unread) == contents["a.img"]


async def test_two_tasks_reading_one_download_share_its_items(virtvold: Virtvold) -> None:
    """Each item goes to one of the tasks, in the stream's order; neither waits forever
    for an item the other took, and the stream finishes once."""
    contents = await _volumes(virtvold, "a.img")
    async with connect(virtvold.unix_uri) as conn:
        (volume,) = await _looked_up(conn, "a.img")
        taken: list[bytes] = []
        takers: list[int] = []

        async def take(stream: Download, taker: int) -> None:
            async for item in stream:
                taken.append(bytes(item.length) if isinstance(item, Hole) else bytes(item))
                takers.append(taker)
                await asyncio.sleep(0)  # the other task's turn

        async with asyncio.timeout(BOUND):
            async with volume.download() as stream:
                await asyncio.gather(take(stream, 0), take(stream, 1))
            assert b"".join(taken) == contents["a.img"]
            assert set(takers) == {0, 1}
            assert await conn.get_type() == "storage"


async def test_a_download_read_meanwhile_waits_for_a_far_behind_one(virtvold: Virtvold) -> None:
    """One task reads a download while another's consumer lags: the socket is read for
    the first until the lagging one has queued ``READ_HOLD_LIMIT``, then the first waits
    for the lagging consumer, as a paused socket makes it; both end whole, neither
    failed, and no more than the bound (and one read of the socket) queued."""
    contents = await _volumes(virtvold, "a.img", "b.img", size=2 * streams.READ_HOLD_LIMIT)
    async with connect(virtvold.unix_uri) as conn:
        first, second = await _looked_up(conn, "a.img", "b.img")
        async with asyncio.timeout(BOUND):
            async with first.download() as read, second.download() as lagging:
                most = 0

                def watch() -> bool:
                    nonlocal most
                    most = max(most, lagging._queued)
                    return lagging._held or reading.done()

                reading = asyncio.create_task(_read(read))
                await until(watch)  # the lagging consumer starts once it holds the socket
                assert await _read(lagging) == contents["b.img"]
                assert await reading == contents["a.img"]
                # Twice what pauses the socket, and the rest of the read that crossed it:
                # with the process's own, within the 64 MiB a transfer may take.
                assert most <= 3 * streams.READ_HIGH_WATER
            assert await conn.get_type() == "storage"


async def test_a_call_made_while_a_download_holds_the_socket_leaves_it_whole(
    virtvold: Virtvold,
) -> None:
    """A download far behind (past ``READ_HOLD_LIMIT``) holds the socket back from
    another download's reader; a call made then is answered (the socket read for it, the
    lagging download queueing on meanwhile) and the lagging download goes on, whole.

    The lagging download opens first, past the hold and short of the hard limit, and the
    other is larger: its reader still waits for the socket when the lagging one passes
    the hold, whichever stream the daemon sends more of first."""
    lagging_size = streams.READ_HOLD_LIMIT + streams.READ_HIGH_WATER
    contents = await _volumes(virtvold, "b.img", size=lagging_size)
    contents |= await _volumes(virtvold, "a.img", size=3 * streams.READ_HOLD_LIMIT)
    async with connect(virtvold.unix_uri) as conn:
        first, second = await _looked_up(conn, "a.img", "b.img")
        async with asyncio.timeout(BOUND):
            async with second.download() as lagging, first.download() as read:
                reading = asyncio.create_task(_read(read))
                await until(lambda: lagging._held)
                assert await conn.get_type() == "storage"
                assert await _read(lagging) == contents["b.img"]
                assert await reading == contents["a.img"]
