"""Upload a (sparse) disk image into a new volume; holes travel as holes.

.venv/bin/python examples/upload_image.py URI POOL VOLUME FILE
"""

from __future__ import annotations

import asyncio
import os
import sys

import virtvol.client


async def main(uri: str, pool_name: str, volume: str, path: str) -> None:
    size = os.stat(path).st_size
    async with virtvol.client.connect(uri) as conn:
        pool = await conn.lookup_pool_by_name(pool_name)
        # A sparse raw volume as large as the file (virsh vol-create-as ... --allocation 0).
        xml = virtvol.client.volume_xml(volume, size, allocation=0, format="raw")
        vol = await pool.create_volume(xml)
        result = await vol.upload_file(path)
        print(f"sent {result.data_bytes} data bytes and {result.hole_bytes} hole bytes")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
