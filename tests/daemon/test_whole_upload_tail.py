"""A whole-volume upload (no offset, no length) shorter than the volume keeps the volume's
size and its bytes past the stream's end, as libvirtd's in-place write does, and stays
atomic: whatever cuts it short (a lost connection, a failure while the old end is
copied) leaves the old volume byte for byte.

What the volume must hold comes from the real libvirtd doing the same uploads.
"""

from __future__ import annotations

import asyncio
import os
import resource
import threading
from typing import TYPE_CHECKING

import pytest

from tests.conftest import POOL_NAME, run_virsh, start_virtvold, stop_virtvold
from tests.daemon.conftest import (
    allocated,
    assert_same_content,
    in_process_client,
    in_process_daemon,
    make_sparse_file,
)
from virtvol.daemon.storage import VolumeWriter, transfer
from virtvol.protocol.connection import StreamFinished

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd, Virtvold
    from tests.daemon.conftest import RawClient

KIB, MIB = 1 << 10, 1 << 20
OLD_SIZE = 8 * MIB
# Zero detection works in 64 KiB blocks: a data piece may take up to two more of them.
SLACK = 256 * KIB

IMAGES: dict[str, tuple[int, list[tuple[int, bytes]]]] = {
    # A hole of nearly a mebibyte in the middle, an unaligned end.
    "shorter": (
        2 * MIB + 123,
        [(0, os.urandom(100_000)), (MIB + 12 * KIB, os.urandom(5000)), (2 * MIB + 113, b"x" * 10)],
    ),
    "longer": (OLD_SIZE + 3 * MIB + 5, [(0, os.urandom(5000)), (OLD_SIZE, os.urandom(MIB + 5))]),
}


def _capacity(uri: str, name: str) -> str:
    info = run_virsh(uri, "vol-info", "--pool", POOL_NAME, name, "--bytes").stdout
    return next(line for line in info.splitlines() if line.startswith("Capacity:"))


@pytest.mark.parametrize("sparse", [False, True], ids=["plain", "sparse"])
@pytest.mark.parametrize("shape", sorted(IMAGES))
def test_whole_upload_leaves_what_libvirtd_leaves(
    virtvold: Virtvold,
    reference_libvirtd: ReferenceLibvirtd,
    tmp_path: Path,
    shape: str,
    sparse: bool,
) -> None:
    old = tmp_path / "old"
    old.write_bytes(os.urandom(OLD_SIZE))
    size, pieces = IMAGES[shape]
    image = make_sparse_file(tmp_path / "image", size, pieces)
    for daemon in (reference_libvirtd, virtvold):
        run_virsh(daemon.tcp_uri, "vol-create-as", POOL_NAME, "v", str(OLD_SIZE))
        run_virsh(daemon.tcp_uri, "vol-upload", "--pool", POOL_NAME, "v", str(old))
    # libvirtd keeps the old bytes under a sparse stream's holes, which is not what the
    # sender meant: its plain upload is the expectation for both of virtvold's.
    run_virsh(reference_libvirtd.tcp_uri, "vol-upload", "--pool", POOL_NAME, "v", str(image))
    extra = ["--sparse"] if sparse else []
    run_virsh(virtvold.tcp_uri, "vol-upload", "--pool", POOL_NAME, "v", str(image), *extra)

    expected = (reference_libvirtd.pool_dir / "v").read_bytes()
    volume = virtvold.pool_dir / "v"
    assert len(expected) == max(size, OLD_SIZE)  # what libvirtd did, as this test reads it
    assert volume.read_bytes() == expected
    assert _capacity(virtvold.tcp_uri, "v") == _capacity(reference_libvirtd.tcp_uri, "v")
    # The old volume was fully allocated (its data filled it): its space stays
    # reserved, as libvirtd's does; past it, the image's holes stay holes.
    theirs = allocated(reference_libvirtd.pool_dir / "v")
    assert OLD_SIZE <= allocated(volume) <= max(theirs, OLD_SIZE + allocated(image)) + SLACK
    assert [p.name for p in virtvold.pool_dir.iterdir()] == ["v"]


def test_an_empty_old_end_costs_nothing(virtvold: Virtvold, tmp_path: Path) -> None:
    """A volume whose end is one big hole: its size is kept and nothing is copied."""
    old_data = os.urandom(MIB)
    volume = make_sparse_file(virtvold.pool_dir / "big", 1 << 30, [(0, old_data)])
    image = tmp_path / "image"
    image.write_bytes(os.urandom(512 * KIB))
    run_virsh(virtvold.tcp_uri, "vol-upload", "--pool", POOL_NAME, "big", str(image))
    expected = make_sparse_file(
        tmp_path / "expected", 1 << 30, [(0, image.read_bytes() + old_data[512 * KIB :])]
    )
    assert_same_content(expected, volume)
    assert allocated(volume) <= MIB + SLACK


FILE_SIZE_LIMIT = 4 * MIB


def _limit_file_size() -> None:
    # Writes past it fail with EFBIG (Python ignores SIGXFSZ): the old end, past it,
    # cannot be copied, while the stream itself fits.
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, resource.RLIM_INFINITY))


def test_a_failure_copying_the_old_end_leaves_the_volume(tmp_path: Path) -> None:
    daemon = start_virtvold(tmp_path / "virtvold", preexec_fn=_limit_file_size)
    try:
        old = os.urandom(OLD_SIZE)
        volume = daemon.pool_dir / "vol"
        volume.write_bytes(old)  # by this process, which has no limit
        image = tmp_path / "image"
        image.write_bytes(os.urandom(MIB))
        failed = run_virsh(
            daemon.tcp_uri, "vol-upload", "--pool", POOL_NAME, "vol", str(image), check=False
        )
        assert failed.returncode == 1
        assert "File too large" in failed.stderr
        assert volume.read_bytes() == old
        assert [p.name for p in daemon.pool_dir.iterdir()] == ["vol"]
        # Free again: an in-place upload inside the limit goes through.
        run_virsh(
            daemon.tcp_uri, "vol-upload", "--pool", POOL_NAME, "vol", str(image),
            "--offset", "0", "--length", str(MIB),
        )  # fmt: skip
        assert volume.read_bytes() == image.read_bytes() + old[MIB:]
    finally:
        stop_virtvold(daemon)


# -- in process: the copy of the old end goes in steps, each a worker job ------------------


class HeldSteps:
    """``VolumeWriter.keep_tail`` made to report each step and wait for the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold: bool) -> None:
        self.results: list[bool] = []
        self.entered = threading.Event()
        self.go_on = threading.Event()
        if not hold:
            self.go_on.set()
        original = VolumeWriter.keep_tail

        def keep_tail(writer: VolumeWriter) -> bool:
            done = original(writer)
            self.results.append(done)
            self.entered.set()
            assert self.go_on.wait(30), "the test never let the step go on"
            return done

        monkeypatch.setattr(VolumeWriter, "keep_tail", keep_tail)
        monkeypatch.setattr(transfer, "TAIL_STEP", MIB)


async def _send_and_finish(client: RawClient, data: bytes) -> int:
    serial = await client.open_upload("disk.img", flags=0)
    client.send(*client.rpc.send_data(serial, data))
    client.send(client.rpc.send_finish(serial))
    return serial


async def _until_alone(pool: Path, name: str) -> None:
    """Wait until ``name`` is the pool's only file (the upload's temporary is gone)."""
    for _ in range(3000):
        if os.listdir(pool) == [name]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"files left in {pool}: {sorted(os.listdir(pool))}")


async def test_the_old_end_is_copied_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = HeldSteps(monkeypatch, hold=False)
    old = os.urandom(OLD_SIZE)
    new = os.urandom(MIB + 5)
    with in_process_daemon(tmp_path) as context:
        volume = tmp_path / "pool" / "disk.img"
        volume.write_bytes(old)
        async with in_process_client(context) as client:
            await _send_and_finish(client, new)
            event = await client.next_event()
            assert isinstance(event, StreamFinished), event
        assert volume.read_bytes() == new + old[len(new) :]
    # Seven mebibytes less five bytes, a mebibyte a step.
    assert steps.results == [False] * 6 + [True]


async def test_a_connection_cut_while_the_old_end_is_copied_leaves_the_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = HeldSteps(monkeypatch, hold=True)
    old = os.urandom(OLD_SIZE)
    with in_process_daemon(tmp_path) as context:
        pool = tmp_path / "pool"
        volume = pool / "disk.img"
        volume.write_bytes(old)
        async with in_process_client(context) as client:
            await _send_and_finish(client, os.urandom(MIB))
            assert await asyncio.to_thread(steps.entered.wait, 30)
            client.writer.transport.abort()  # gone while the first step runs
            await asyncio.sleep(0.05)
            steps.go_on.set()
            await _until_alone(pool, "disk.img")
        assert volume.read_bytes() == old
        assert steps.results == [False]  # no step after the cut
        # The volume is free: another whole upload replaces it.
        async with in_process_client(context) as client:
            new = os.urandom(MIB)
            await _send_and_finish(client, new)
            event = await client.next_event()
            assert isinstance(event, StreamFinished), event
        assert volume.read_bytes() == new + old[MIB:]


async def test_a_connection_cut_mid_stream_leaves_the_volume(tmp_path: Path) -> None:
    old = os.urandom(OLD_SIZE)
    with in_process_daemon(tmp_path) as context:
        pool = tmp_path / "pool"
        volume = pool / "disk.img"
        volume.write_bytes(old)
        async with in_process_client(context) as client:
            serial = await client.open_upload("disk.img", flags=0)
            client.send(*client.rpc.send_data(serial, os.urandom(MIB)))
            await client.writer.drain()
            client.writer.transport.abort()
            await _until_alone(pool, "disk.img")
        assert volume.read_bytes() == old
