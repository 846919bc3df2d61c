"""A cancelled upload_file never closes its source under the thread that reads it."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING

import pytest

from tests.client.helpers import MIB, write_sparse_image
from virtvol.client import connect, transfer

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Virtvold


async def test_upload_cancelled_twice_keeps_the_source_open_for_the_reader(
    virtvold: Virtvold, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, 4 * MIB)
    inode = source.stat().st_ino
    entered, release = threading.Event(), threading.Event()
    seen_by_reader: list[bool] = []
    walk = transfer._Reader._walk

    def held_walk(reader: transfer._Reader) -> None:
        entered.set()
        assert release.wait(30)
        # Where the next read would go: the source itself, or a closed (or reused) number.
        try:
            seen_by_reader.append(os.fstat(reader.fd).st_ino == inode)
        except OSError:
            seen_by_reader.append(False)
        walk(reader)

    monkeypatch.setattr(transfer._Reader, "_walk", held_walk)
    (virtvold.pool_dir / "vol").write_bytes(b"")
    async with connect(virtvold.tcp_uri) as conn:
        pool = await conn.lookup_pool_by_name("default")
        vol = await pool.lookup_volume("vol")
        task = asyncio.create_task(vol.upload_file(source))
        try:
            assert await asyncio.to_thread(entered.wait, 30)
            # The first cancel ends the sending, the second one the wait for the thread.
            task.cancel()
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.sleep(0.05)
        finally:
            release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(100):
        if seen_by_reader:
            break
        await asyncio.sleep(0.01)
    assert seen_by_reader == [True]
