"""Calls and streams side by side on one connection of the event-loop client, some
cancelled at points drawn from a seeded generator (a number of turns of the event
loop): every call that completes has its own answer, an upload that completes left
its bytes in the volume, one cancelled left the old bytes or the new ones, never a
mix, and the connection goes on with every volume free for a new upload.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import TYPE_CHECKING

import pytest

from virtvol.client import CallTimeout, Hole, StoragePool, connect
from virtvol.client.testing import memory_daemon

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from tests.conftest import Virtvold

KIB = 1024
# Fails the test instead of hanging it.
BOUND = 30


def _cancel_some(
    tasks: Sequence[asyncio.Future[str]], rnd: random.Random, most_turns: int
) -> list[asyncio.Future[None]]:
    """Cancel about half of ``tasks``, each after a drawn number of loop turns."""

    async def cancel_after(task: asyncio.Future[str], turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()

    return [
        asyncio.ensure_future(cancel_after(task, rnd.randrange(most_turns)))
        for task in tasks
        if rnd.random() < 0.5
    ]


async def _outcomes(works: Sequence[Awaitable[str]], rnd: random.Random, most_turns: int) -> None:
    """Run ``works`` side by side, some cancelled; raise what any other failed with."""
    tasks = [asyncio.ensure_future(work) for work in works]
    cancelling = _cancel_some(tasks, rnd, most_turns)
    async with asyncio.timeout(BOUND):
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*cancelling)
    for outcome in outcomes:
        if not isinstance(outcome, str | asyncio.CancelledError):
            raise outcome


@pytest.mark.parametrize("seed", range(4))
async def test_calls_cancelled_at_random_never_take_each_others_answers(seed: int) -> None:
    rnd = random.Random(seed)
    sizes = {f"v{i}.img": 4 * KIB * (i + 1) for i in range(16)}

    async def look_up(pool: StoragePool, name: str) -> str:
        volume = await pool.lookup_volume(name)
        assert volume.name == name
        assert (await volume.info()).capacity == sizes[name]
        return name

    async with memory_daemon(pools={"default": sizes}) as conn:
        pool = await conn.lookup_pool_by_name("default")
        for _ in range(4):
            await _outcomes([look_up(pool, name) for name in sizes], rnd, 8)
            assert await conn.get_type() == "storage"
        assert conn.is_alive


@pytest.mark.parametrize("seed", range(4))
async def test_calls_timed_out_at_random_never_take_each_others_answers(seed: int) -> None:
    """Each call's ``timeout=`` is drawn (0 falls due in the next turn of the loop, as the
    in-memory daemon's answer may): a call that answers has its own answer, one that
    does not raises ``CallTimeout``, and the connection goes on."""
    rnd = random.Random(seed)
    sizes = {f"v{i}.img": 4 * KIB * (i + 1) for i in range(16)}
    timeouts: list[float | None] = [None, 0, 1e-6, 1e-4, 5]

    async def look_up(pool: StoragePool, name: str) -> str:
        try:
            volume = await pool.lookup_volume(name, timeout=rnd.choice(timeouts))
            assert volume.name == name
            info = await volume.info(timeout=rnd.choice(timeouts))
        except CallTimeout:
            return "timed out"
        assert info.capacity == sizes[name]
        return name

    async with memory_daemon(pools={"default": sizes}) as conn:
        pool = await conn.lookup_pool_by_name("default")
        for _ in range(4):
            async with asyncio.timeout(BOUND):
                outcomes = await asyncio.gather(*(look_up(pool, name) for name in sizes))
            assert set(outcomes) <= {*sizes, "timed out"}
            assert await conn.get_type() == "storage"
        assert conn.is_alive


@pytest.mark.parametrize("seed", range(3))
async def test_transfers_cancelled_at_random_leave_whole_volumes(
    virtvold: Virtvold, seed: int
) -> None:
    rnd = random.Random(seed)
    names = [f"w{i}.img" for i in range(4)]
    old = {name: os.urandom(2 * KIB * KIB) for name in names}
    new = {name: os.urandom(2 * KIB * KIB) for name in names}
    for name in names:
        (virtvold.pool_dir / name).write_bytes(old[name])
    (virtvold.pool_dir / "read.img").write_bytes(os.urandom(12 * KIB * KIB))

    async def upload(pool: StoragePool, name: str) -> str:
        volume = await pool.lookup_volume(name)
        async with volume.upload(sparse=False) as stream:
            for start in range(0, len(new[name]), 256 * KIB):
                await stream.send(new[name][start : start + 256 * KIB])
        assert (virtvold.pool_dir / name).read_bytes() == new[name]
        return name

    async def download(pool: StoragePool) -> str:
        volume = await pool.lookup_volume("read.img")
        content = bytearray()
        async with volume.download() as stream:
            async for item in stream:
                content += bytes(item.length) if isinstance(item, Hole) else item
        assert content == (virtvold.pool_dir / "read.img").read_bytes()
        return "read.img"

    async with connect(virtvold.unix_uri) as conn:
        pool = await conn.lookup_pool_by_name("default")
        await pool.refresh()
        works = [upload(pool, name) for name in names] + [download(pool), download(pool)]
        await _outcomes(works, rnd, 200)
        for name in names:
            assert (virtvold.pool_dir / name).read_bytes() in (old[name], new[name])
        for name in names:  # each volume is free again
            await upload(pool, name)
        assert conn.is_alive
