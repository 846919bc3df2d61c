"""A pool listed while it is refreshed lists every volume, and the refresh clears leftovers.

A refresh looks for the temporaries a crash left through a view of the pool directory,
outside the registry's lock, while listings read the directory under it. Both read the
same directory at once; neither may take entries from the other's reading.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import virtvol.client

if TYPE_CHECKING:
    from tests.conftest import Virtvold

# Enough entries that a scan takes several reads of the directory, and enough rounds:
# the race showed in 1-3% of listings here.
VOLUMES = 3000
REFRESHES = 500
LEFTOVER = ".virtvol-upload-0123456789abcdef"


async def test_a_pool_listed_while_it_is_refreshed_lists_every_volume(
    virtvold: Virtvold,
) -> None:
    names = [f"vol{index:04}" for index in range(VOLUMES)]
    for name in names:
        (virtvold.pool_dir / name).write_bytes(b"")
    leftover = virtvold.pool_dir / LEFTOVER
    wrong: list[str] = []
    kept_leftovers = 0
    listings = 0
    refreshed = asyncio.Event()
    async with (
        virtvol.client.connect(virtvold.unix_uri) as lister,
        virtvol.client.connect(virtvold.unix_uri) as refresher,
    ):

        async def list_volumes() -> None:
            nonlocal listings
            pool = await lister.lookup_pool_by_name(virtvold.pool_name)
            while not refreshed.is_set():
                listed = sorted(volume.name for volume in await pool.list_volumes())
                if listed != names:
                    wrong.append(f"{len(listed)} names, {len(set(listed))} of them different")
                count = await pool.num_of_volumes()
                if count != VOLUMES:
                    wrong.append(f"a count of {count}")
                listings += 1

        async def refresh() -> None:
            nonlocal kept_leftovers
            pool = await refresher.lookup_pool_by_name(virtvold.pool_name)
            for _ in range(REFRESHES):
                leftover.write_bytes(b"left by a crash")
                await pool.refresh()
                kept_leftovers += leftover.exists()
            refreshed.set()

        await asyncio.gather(list_volumes(), refresh())
    assert listings > 50, listings
    assert wrong == [], f"{len(wrong)} wrong answers in {listings} listings: {wrong[:5]}"
    assert kept_leftovers == 0, f"{kept_leftovers} of {REFRESHES} refreshes kept the leftover"
