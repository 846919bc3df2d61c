"""A pool listed while it is refreshed lists every volume, and the refresh clears leftovers.

A refresh looks for the temporaries a crash left through a view of the pool directory,
outside the registry's lock, while listings read the directory under it. Both read the
same directory at once; neither may take entries from the other's reading.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import virtvol.client

if TYPE_CHECKING:
    from tests.conftest import Virtvold

VOLUMES = 40
# Long enough for hundreds of each call; the race showed in ~5% of listings.
SECONDS = 2.0
LEFTOVER = ".virtvol-upload-0123456789abcdef"


async def test_a_pool_listed_while_it_is_refreshed_lists_every_volume(
    virtvold: Virtvold,
) -> None:
    names = [f"vol{index:02}" for index in range(VOLUMES)]
    for name in names:
        (virtvold.pool_dir / name).write_bytes(b"")
    leftover = virtvold.pool_dir / LEFTOVER
    wrong: list[str] = []
    kept_leftovers = 0
    counts = {"listings": 0, "refreshes": 0}
    async with (
        virtvol.client.connect(virtvold.unix_uri) as lister,
        virtvol.client.connect(virtvold.unix_uri) as refresher,
    ):
        await (await refresher.lookup_pool_by_name(virtvold.pool_name)).refresh()
        deadline = time.monotonic() + SECONDS

        async def list_volumes() -> None:
            pool = await lister.lookup_pool_by_name(virtvold.pool_name)
            while time.monotonic() < deadline:
                listed = sorted(volume.name for volume in await pool.list_volumes())
                if listed != names:
                    wrong.append(f"{len(listed)} names, {len(set(listed))} of them different")
                count = await pool.num_of_volumes()
                if count != VOLUMES:
                    wrong.append(f"a count of {count}")
                counts["listings"] += 1

        async def refresh() -> None:
            nonlocal kept_leftovers
            pool = await refresher.lookup_pool_by_name(virtvold.pool_name)
            while time.monotonic() < deadline:
                leftover.write_bytes(b"left by a crash")
                await pool.refresh()
                kept_leftovers += leftover.exists()
                counts["refreshes"] += 1

        await asyncio.gather(list_volumes(), refresh())
    assert min(counts.values()) > 50, counts
    assert wrong == [], f"{len(wrong)} wrong answers in {counts}: {wrong[:5]}"
    assert kept_leftovers == 0, f"{kept_leftovers} refreshes of {counts} kept the leftover"
