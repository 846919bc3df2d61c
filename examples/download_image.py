"""Download a volume into a local sparse file, printing progress.

.venv/bin/python examples/download_image.py URI POOL VOLUME FILE
"""

from __future__ import annotations

import asyncio
import sys

import virtvol.client


def progress(data_bytes: int, hole_bytes: int) -> None:
    print(f"\r{data_bytes} data, {hole_bytes} holes", end="", file=sys.stderr)


async def main(uri: str, pool_name: str, volume: str, path: str) -> None:
    async with virtvol.client.connect(uri) as conn:
        pool = await conn.lookup_pool_by_name(pool_name)
        vol = await pool.lookup_volume(volume)
        result = await vol.download_file(path, progress=progress)
        print(file=sys.stderr)
        print(f"received {result.data_bytes} data bytes and {result.hole_bytes} hole bytes")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
