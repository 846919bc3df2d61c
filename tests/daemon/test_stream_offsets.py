"""Stream offsets at the edges of what the wire and a file can hold.

The wire carries any unsigned 64-bit offset, a file offset ends at 2**63 - 1:
libvirtd refuses such a stream when it opens it ("Unable to seek"), and virtvold
must refuse it the same way instead of failing later with no answer. An offset
past 2**64 cannot even be encoded: virtvol says so and sends nothing.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

import virtvol.client
from tests.conftest import POOL_NAME, run_virsh
from virtvol.protocol.errors import ErrorCode, ErrorDomain

if TYPE_CHECKING:
    from pathlib import Path

PAST_OFF_T = 15 << 60  # 15 EiB: fits the wire, not a file offset


@pytest.fixture(params=["virtvold", "libvirtd"])
def daemon(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """(URI, pool directory) of a daemon whose pool holds a 1 MiB volume "v"."""
    name = "virtvold" if request.param == "virtvold" else "reference_libvirtd"
    running = request.getfixturevalue(name)
    run_virsh(running.tcp_uri, "vol-create-as", POOL_NAME, "v", "1M")
    return running.tcp_uri, running.pool_dir


async def test_an_offset_past_the_largest_file_offset_is_refused_at_open(
    daemon: tuple[str, Path],
) -> None:
    uri, pool_dir = daemon
    expected = f"Unable to seek {pool_dir / 'v'} to {PAST_OFF_T}: Invalid argument"
    async with virtvol.client.connect(uri) as conn:
        pool = await conn.lookup_pool_by_name(POOL_NAME)
        volume = await pool.lookup_volume("v")
        for stream in (volume.upload(offset=PAST_OFF_T), volume.download(offset=PAST_OFF_T)):
            with pytest.raises(virtvol.client.LibvirtError) as refused:
                async with stream:
                    pass
            error = refused.value
            assert (error.code, error.domain, error.message) == (
                ErrorCode.SYSTEM_ERROR,
                ErrorDomain.STREAMS,
                expected,
            )
        info = await volume.info(timeout=30)
        assert info.capacity == 1 << 20


@pytest.mark.parametrize("sparse", [True, False])
async def test_an_empty_upload_past_the_end_leaves_the_volume_as_it_was(
    daemon: tuple[str, Path], sparse: bool
) -> None:
    """An upload that sends nothing, opened past the volume's end, grows it no more than
    libvirtd's does: a stream that covered no byte leaves the size alone."""
    uri, pool_dir = daemon
    async with virtvol.client.connect(uri) as conn:
        pool = await conn.lookup_pool_by_name(POOL_NAME)
        volume = await pool.lookup_volume("v")
        async with volume.upload(offset=1 << 30, sparse=sparse):
            pass
        info = await volume.info(timeout=30)
    assert info.capacity == 1 << 20
    assert (pool_dir / "v").stat().st_size == 1 << 20


def test_an_offset_the_wire_cannot_carry_is_a_clear_error(
    daemon: tuple[str, Path], tmp_path: Path
) -> None:
    uri, _ = daemon
    source = tmp_path / "data"
    source.write_bytes(b"hello")
    command = [sys.executable, "-m", "virtvol.client.cli", "-c", uri, "vol-upload"]
    done = subprocess.run(
        [*command, "--pool", POOL_NAME, "v", str(source), "--offset", "20E"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Refused as it is read, in virsh's words for a number past 64 bits.
    assert done.returncode == 1
    assert done.stderr == (
        "error: Numeric value '20E' for <offset> option is malformed or out of range\n"
    )
