"""The client against virtvold, current and ``--protocol legacy`` (sparse fallback)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest

from tests.client.helpers import MIB, allocated, assert_same_file, leftovers, write_sparse_image
from virtvol.client import Connection, SparseUnsupported, StorageVolume, connect

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Virtvold

SIZE = 8 * MIB


async def _volume(conn: Connection, name: str) -> StorageVolume:
    pool = await conn.lookup_pool_by_name("default")
    xml = (
        f"<volume><name>{name}</name><capacity unit='bytes'>{SIZE}</capacity>"
        "<allocation unit='bytes'>0</allocation><target><format type='raw'/></target></volume>"
    )
    return await pool.create_volume(xml)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_round_trip_with_virtvold(virtvold: Virtvold, tmp_path: Path, transport: str) -> None:
    uri = virtvold.tcp_uri if transport == "tcp" else virtvold.unix_uri
    source = tmp_path / "src.img"
    write_sparse_image(source, SIZE)
    async with connect(uri) as conn:
        assert [p.name for p in await conn.list_pools()] == ["default"]
        vol = await _volume(conn, "rt.img")
        up = await vol.upload_file(source)
        assert up.sparse
        assert not up.fell_back
        assert up.hole_bytes >= 6 * MIB
        on_disk = virtvold.pool_dir / "rt.img"
        assert_same_file(source, on_disk)
        assert allocated(on_disk) <= allocated(source)
        back = tmp_path / "back.img"
        down = await vol.download_file(back)
        assert down.sparse
        assert_same_file(source, back)
        assert allocated(back) <= MIB


async def test_negotiation_falls_back_against_legacy_virtvold(
    legacy_virtvold: Virtvold, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, SIZE)
    async with connect(legacy_virtvold.tcp_uri) as conn:
        vol = await _volume(conn, "old.img")
        progress: list[tuple[int, int]] = []
        with caplog.at_level(logging.WARNING, logger="virtvol.client"):
            up = await vol.upload_file(source, progress=lambda d, h: progress.append((d, h)))
            again = await vol.upload_file(source)
            back = tmp_path / "back.img"
            down = await vol.download_file(back)
        assert not up.sparse
        assert up.fell_back
        assert again.fell_back
        assert up.hole_bytes == 0
        # A dense stream sends holes as zeros: progress counts them as data, never as holes.
        assert progress[-1] == (SIZE, 0)
        assert all(hole == 0 for _, hole in progress)
        # One warning for the connection, not one per transfer.
        warnings = [r for r in caplog.records if "has no sparse streams" in r.getMessage()]
        assert len(warnings) == 1
        assert "unsupported flags (0x1) in function storageVolUpload" in warnings[0].getMessage()
        on_disk = legacy_virtvold.pool_dir / "old.img"
        assert_same_file(source, on_disk)

        assert down.fell_back
        assert down.data_bytes == SIZE
        assert_same_file(source, back)
        # Still sparse: zero detection turned the dense stream's zeros into holes.
        assert allocated(back) <= MIB

        with pytest.raises(SparseUnsupported, match="storageVolDownload"):
            await vol.download_file(tmp_path / "never.img", sparse=True)
        assert not (tmp_path / "never.img").exists()
        assert not leftovers(tmp_path, "never.img")


async def test_legacy_client_against_current_virtvold(virtvold: Virtvold, tmp_path: Path) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, SIZE)
    async with connect(virtvold.tcp_uri, protocol="legacy") as conn:
        vol = await _volume(conn, "lc.img")
        up = await vol.upload_file(source)
        assert not up.sparse
        assert not up.fell_back
        back = tmp_path / "back.img"
        await vol.download_file(back)
        assert_same_file(source, back)


async def test_download_onto_a_directory_fails_before_transferring(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    folder = tmp_path / "adir"
    folder.mkdir()
    progress: list[tuple[int, int]] = []
    async with connect(virtvold.unix_uri) as conn:
        vol = await _volume(conn, "dir.img")
        with pytest.raises(IsADirectoryError):
            await vol.download_file(folder, progress=lambda d, h: progress.append((d, h)))
        assert progress == []  # no stream was opened
        assert list(folder.iterdir()) == []
        assert not leftovers(tmp_path, "adir")
        assert conn.is_alive


@pytest.mark.parametrize("length", [0, SIZE])
async def test_sparse_upload_over_old_bytes_is_exact(
    virtvold: Virtvold, tmp_path: Path, length: int
) -> None:
    # virtvold leaves zeros where a skip goes, so a volume holding data still gets a
    # sparse stream, written whole (length 0) or in place (a length).
    old = tmp_path / "old.img"
    old.write_bytes(b"\xa5" * SIZE)
    source = tmp_path / "src.img"
    write_sparse_image(source, SIZE)
    async with connect(virtvold.tcp_uri) as conn:
        vol = await _volume(conn, "over.img")
        await vol.upload_file(old, sparse=False)
        up = await vol.upload_file(source, length=length)
    assert up.sparse
    assert up.hole_bytes >= 6 * MIB
    assert_same_file(source, virtvold.pool_dir / "over.img")
