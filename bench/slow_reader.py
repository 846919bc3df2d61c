"""A download consumed at a fixed rate, through virtvol's library: its memory must stay flat.

python -m bench.slow_reader URI POOL VOLUME BYTES_PER_SECOND
"""

from __future__ import annotations

import asyncio
import sys
import time

import virtvol.client


async def consume(uri: str, pool_name: str, volume: str, rate: float) -> int:
    received = 0
    started = time.monotonic()
    async with virtvol.client.connect(uri) as conn:
        pool = await conn.lookup_pool_by_name(pool_name)
        vol = await pool.lookup_volume(volume)
        async with vol.download(offset=0, length=0) as stream:
            async for item in stream:
                if isinstance(item, virtvol.client.Hole):
                    continue
                received += len(item)
                ahead = received / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    return received


def main() -> None:
    uri, pool, volume, rate = sys.argv[1:5]
    print(asyncio.run(consume(uri, pool, volume, float(rate))))


if __name__ == "__main__":
    main()
