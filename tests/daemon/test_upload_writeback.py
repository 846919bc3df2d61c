"""When an upload starts writing its data back to the disk, with and without sync_uploads."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from virtvol.daemon.storage.registry import StorageRegistry
from virtvol.sparse import files

if TYPE_CHECKING:
    from pathlib import Path

DATA = b"\x01" * (8 << 20)


@pytest.mark.parametrize("sync_uploads", [True, False])
@pytest.mark.parametrize(("offset", "length"), [(0, 0), (0, len(DATA)), (4096, 0)])
def test_writeback_starts_early_for_whole_volume_uploads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sync_uploads: bool,
    offset: int,
    length: int,
) -> None:
    # A whole-volume upload's temporary is written back anyway (flushed, or by ext4 at
    # the rename over the volume): its writeback starts while the data arrives. An
    # upload in place leaves the volume's pages to the kernel, as libvirtd does.
    started: list[int] = []
    flushed: list[int] = []
    monkeypatch.setattr(files, "start_writeback", lambda fd, o, n: started.append(o))
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        flushed.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    registry = StorageRegistry(tmp_path / "state", sync_uploads=sync_uploads)
    try:
        registry.ensure_pool("p", tmp_path / "pool")
        (tmp_path / "pool" / "vol").write_bytes(bytes(16 << 20))
        volume = registry.lookup_volume_by_name(registry.lookup_pool_by_name("p"), "vol")
        writer = registry.open_upload(volume, offset, length)
        writer.write(DATA)
        writer.commit()
        writer.release_replaced()
    finally:
        registry.close()
    whole = (offset, length) == (0, 0)
    assert bool(started) == whole
    assert bool(flushed) == (whole and sync_uploads)
    content = (tmp_path / "pool" / "vol").read_bytes()
    assert content[offset : offset + len(DATA)] == DATA
