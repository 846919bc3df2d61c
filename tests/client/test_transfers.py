"""Uploads and downloads against a real libvirtd 9.0: contents, holes, allocation."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from tests.client.helpers import MIB, allocated, assert_same_file, leftovers, write_sparse_image
from tests.conftest import ReferenceLibvirtd, run_virsh
from virtvol.client import (
    Connection,
    Hole,
    LibvirtError,
    NoSupport,
    SparseUnsupported,
    StorageVolume,
    connect,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

SIZE = 8 * MIB


async def _new_volume(conn: Connection, name: str, size: int = SIZE) -> StorageVolume:
    pool = await conn.lookup_pool_by_name("default")
    xml = (
        f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
        "<allocation unit='bytes'>0</allocation><target><format type='raw'/></target></volume>"
    )
    return await pool.create_volume(xml)


@pytest.mark.parametrize("sparse", [None, True, False])
async def test_upload_file_round_trip(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path, sparse: bool | None
) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, SIZE)
    seen: list[tuple[int, int]] = []
    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await _new_volume(conn, "up.img")
        result = await vol.upload_file(
            source, sparse=sparse, progress=lambda d, h: seen.append((d, h))
        )
        assert result.sparse is (sparse is not False)
        assert not result.fell_back
        assert result.total_bytes == SIZE
        assert seen[-1] == (result.data_bytes, result.hole_bytes)
        on_disk = reference_libvirtd.pool_dir / "up.img"
        assert_same_file(source, on_disk)
        if result.sparse:
            # Holes and the written-zero block stay unallocated on the daemon's side.
            assert result.hole_bytes >= 6 * MIB
            assert allocated(on_disk) <= allocated(source) - 512 * 1024
        else:
            assert result.hole_bytes == 0

        back = tmp_path / "back.img"
        down = await vol.download_file(back, sparse=sparse)
        assert down.sparse is (sparse is not False)
        assert_same_file(source, back)
        # Sparse or dense stream, zero detection leaves a sparse file of the right size.
        assert back.stat().st_size == SIZE
        assert allocated(back) <= 1 * MIB
        assert not leftovers(tmp_path, "back.img")


async def test_download_without_zero_detection_is_dense(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, SIZE)
    run_virsh(reference_libvirtd.tcp_uri, "vol-create-as", "default", "v.img", "8M")
    run_virsh(reference_libvirtd.tcp_uri, "vol-upload", "--pool", "default", "v.img", str(source))
    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await (await conn.lookup_pool_by_name("default")).lookup_volume("v.img")
        back = tmp_path / "dense.img"
        result = await vol.download_file(back, sparse=False, detect_zeroes=False)
        assert result.data_bytes == SIZE
        assert_same_file(source, back)
        assert allocated(back) >= SIZE


async def test_stream_api_send_skip_and_iterate(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await _new_volume(conn, "s.img", 4 * MIB)
        async with vol.upload() as up:
            assert up.sparse
            await up.send(b"HELLO")
            await up.skip(2 * MIB - 5)
            await up.send(bytearray(b"WORLD" * 1000))
            await up.skip(4 * MIB - 2 * MIB - 5000)
        expected = bytearray(4 * MIB)
        expected[0:5] = b"HELLO"
        expected[2 * MIB : 2 * MIB + 5000] = b"WORLD" * 1000
        assert (reference_libvirtd.pool_dir / "s.img").read_bytes() == expected

        got = bytearray()
        holes = 0
        async with vol.download() as down:
            async for item in down:
                if isinstance(item, Hole):
                    holes += item.length
                    got += bytes(item.length)
                else:
                    got += item
        assert got == expected
        assert holes >= 3 * MIB

        # The same with async for alone and a range.
        got.clear()
        async for item in vol.download(offset=2 * MIB, length=5000, sparse=False):
            assert not isinstance(item, Hole)
            got += item
        assert got == b"WORLD" * 1000


async def test_abort_on_exception_and_connection_stays_usable(
    reference_libvirtd: ReferenceLibvirtd,
) -> None:
    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await _new_volume(conn, "ab.img")

        async def failing_upload() -> None:
            async with vol.upload() as up:
                await up.send(b"x" * MIB)
                raise RuntimeError("stop")

        with pytest.raises(RuntimeError, match="stop"):
            await failing_upload()
        # Leave a download early: the stream is aborted.
        async with vol.download(sparse=False) as down:
            async for _item in down:
                break
        assert (await vol.info()).capacity == SIZE


async def test_upload_error_from_the_daemon(reference_libvirtd: ReferenceLibvirtd) -> None:
    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await _new_volume(conn, "small.img", 4096)
        with pytest.raises(Exception, match="No space left on device"):
            async with vol.upload(length=2) as up:
                await up.send(b"HELLO")
        assert await conn.lib_version() == 9000000


async def test_sparse_refusal_falls_back_or_fails(
    reference_libvirtd: ReferenceLibvirtd, caplog: pytest.LogCaptureFixture
) -> None:
    """libvirtd accepts flag 1; a legacy-mode client never sends it."""
    async with connect(reference_libvirtd.tcp_uri, protocol="legacy") as conn:
        vol = await _new_volume(conn, "lg.img", MIB)
        with pytest.raises(SparseUnsupported):
            async with vol.upload(sparse=True):
                pass
        with caplog.at_level(logging.WARNING, logger="virtvol.client"):
            async with vol.upload() as up:
                assert not up.sparse
                await up.send(b"abc")
                await up.skip(MIB - 3)  # zeros on a dense stream
        assert not caplog.records
    assert isinstance(NoSupport, type)


async def test_sparse_download_past_the_end_fails_cleanly(
    reference_libvirtd: ReferenceLibvirtd,
) -> None:
    """libvirtd answers with a stream error, an EOF and a second error; the
    client reports the first and the connection stays usable."""
    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await _new_volume(conn, "short.img", 10005)

        async def read_all() -> None:
            async for _item in vol.download(offset=20000, sparse=True):
                pass

        with pytest.raises(LibvirtError):
            await read_all()
        await asyncio.sleep(0.2)
        assert conn.is_alive
        assert (await vol.info()).capacity == 10005


async def test_download_past_the_end_is_empty_as_virshs_dense_one(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    # libvirtd fails a sparse download that starts past the volume's end, and serves a
    # dense one as empty: virtvol's default asks for the one that works.
    run_virsh(reference_libvirtd.tcp_uri, "vol-create-as", "default", "e.img", "10005")
    theirs = tmp_path / "theirs"
    run_virsh(
        reference_libvirtd.tcp_uri,
        "vol-download",
        "e.img",
        str(theirs),
        "default",
        "--offset",
        "20000",
    )
    ours = tmp_path / "ours"
    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await (await conn.lookup_pool_by_name("default")).lookup_volume("e.img")
        result = await vol.download_file(ours, offset=20000)
        at_the_end = await vol.download_file(tmp_path / "end", offset=10005)
    assert ours.read_bytes() == theirs.read_bytes() == b""
    assert result.total_bytes == 0
    assert at_the_end.sparse  # from the end itself, sparse works


async def test_sparse_image_over_old_bytes_reads_back_exactly(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    # libvirtd seeks over a hole it receives, so the old bytes there stay: an upload to it
    # must still leave exactly the image's bytes, zeros where the image has holes.
    old = tmp_path / "old.img"
    old.write_bytes(b"\xa5" * SIZE)
    source = tmp_path / "src.img"
    write_sparse_image(source, SIZE)
    async with connect(reference_libvirtd.tcp_uri) as conn:
        vol = await _new_volume(conn, "over.img")
        await vol.upload_file(old, sparse=False)
        up = await vol.upload_file(source)
        # A volume holding no data takes skips: its holes read as zeros.
        empty = await _new_volume(conn, "empty.img")
        fresh = await empty.upload_file(source)
    assert not up.sparse
    assert not up.fell_back
    assert_same_file(source, reference_libvirtd.pool_dir / "over.img")
    assert fresh.sparse
    assert_same_file(source, reference_libvirtd.pool_dir / "empty.img")


@pytest.mark.parametrize("client", ["library", "command-line"])
async def test_an_upload_into_a_larger_empty_libvirtd_volume_keeps_its_size(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path, client: str
) -> None:
    """libvirtd ends a sparse upload's file where its stream ends (its skips truncate):
    into an empty volume larger than the image that would cut the volume, where virsh's
    upload, dense, keeps its size. virtvol then sends every byte, as virsh does."""
    from tests.client.test_cli_spellings import run_virtvol

    source = tmp_path / "src.img"
    write_sparse_image(source, SIZE)
    uri = reference_libvirtd.tcp_uri
    run_virsh(uri, "vol-create-as", "default", "big.img", str(4 * SIZE), "--allocation", "0")
    if client == "library":
        async with connect(uri) as conn:
            pool = await conn.lookup_pool_by_name("default")
            result = await (await pool.lookup_volume("big.img")).upload_file(source)
        assert not result.sparse
    else:
        uploaded = run_virtvol("-c", uri, "vol-upload", "--pool", "default", "big.img", str(source))
        assert uploaded.returncode == 0, uploaded.stderr
    on_disk = reference_libvirtd.pool_dir / "big.img"
    assert on_disk.stat().st_size == 4 * SIZE
    assert on_disk.read_bytes()[:SIZE] == source.read_bytes()
