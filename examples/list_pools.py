"""List the pools of a daemon and the volumes of each active pool.

.venv/bin/python examples/list_pools.py storage+tcp://127.0.0.1:16509/system
"""

from __future__ import annotations

import asyncio
import sys

import virtvol.client


async def main(uri: str) -> None:
    async with virtvol.client.connect(uri) as conn:
        for pool in await conn.list_pools():
            info = await pool.info()
            print(f"{pool.name} state={int(info.state)} capacity={info.capacity}")
            if await pool.is_active():
                for vol in await pool.list_volumes():
                    vinfo = await vol.info()
                    print(f"  {vol.name} capacity={vinfo.capacity} allocation={vinfo.allocation}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
