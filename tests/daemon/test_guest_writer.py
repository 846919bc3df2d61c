"""A volume a running guest writes: QEMU holds its image with a lock on byte 101 (the
write permission's byte, ``RAW_LOCK_PERM_BASE`` + 1) through an open file description
(an OFD lock). A whole-volume upload renames a new file over the volume, which would
leave the guest writing into the old file, every write after the rename lost; libvirtd
writes the upload into the guest's file in place. The guest here is this test, holding
the volume open and locked as QEMU does."""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import time
from typing import TYPE_CHECKING

from tests.conftest import run_virsh, start_virtvold, stop_virtvold

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.conftest import Virtvold

_WRITE_PERMISSION_BYTE = 101


@contextlib.contextmanager
def guest_disk(path: Path) -> Iterator[int]:
    """``path`` open for reading and writing, locked as QEMU locks an image it writes."""
    fd = os.open(path, os.O_RDWR)
    try:
        lock = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, _WRITE_PERMISSION_BYTE, 1, 0)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
        yield fd
    finally:
        os.close(fd)


def _leftovers(pool: Path) -> list[str]:
    return [name for name in os.listdir(pool) if name.startswith(".virtvol-")]


def test_a_whole_upload_into_a_volume_a_guest_writes_is_refused(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    uri, pool = virtvold.tcp_uri, virtvold.pool_dir
    run_virsh(uri, "vol-create-as", virtvold.pool_name, "disk", "4096", "--allocation", "0")
    source = tmp_path / "new.img"
    source.write_bytes(b"n" * 4096)
    with guest_disk(pool / "disk") as disk:
        refused = run_virsh(uri, "vol-upload", "disk", str(source), virtvold.pool_name, check=False)
        os.pwrite(disk, b"guest", 0)
    assert refused.returncode == 1
    assert "Requested operation is not valid: volume 'disk' is still in use." in refused.stderr
    assert (pool / "disk").read_bytes() == b"guest" + bytes(4091)
    assert _leftovers(pool) == []
    # With a length it goes into the guest's file in place, as libvirtd writes it.
    with guest_disk(pool / "disk"):
        run_virsh(uri, "vol-upload", "disk", str(source), virtvold.pool_name, "--length", "4096")
    assert (pool / "disk").read_bytes() == b"n" * 4096


def test_a_guest_that_opens_the_volume_during_a_whole_upload_keeps_its_writes(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    uri, pool = virtvold.tcp_uri, virtvold.pool_dir
    volume = pool / "disk"
    run_virsh(uri, "vol-create-as", virtvold.pool_name, "disk", "4096", "--allocation", "0")
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    upload = subprocess.Popen(
        ["virsh", "-c", uri, "vol-upload", "disk", str(fifo), virtvold.pool_name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "LC_ALL": "C"},
    )
    try:
        with fifo.open("wb") as feed:
            deadline = time.monotonic() + 20
            while not _leftovers(pool):  # the upload's temporary is there: it runs
                assert time.monotonic() < deadline, "the upload never started"
                time.sleep(0.02)
            with guest_disk(volume) as disk:
                feed.write(b"n" * 4096)
                feed.close()
                output, _ = upload.communicate(timeout=30)
                os.pwrite(disk, b"guest", 0)
    finally:
        if upload.poll() is None:
            upload.kill()
            upload.wait()
    assert upload.returncode == 1, output
    assert "volume 'disk' is still in use." in output
    assert volume.read_bytes() == b"guest" + bytes(4091)
    assert _leftovers(pool) == []


def test_a_whole_upload_through_another_daemon_waits_for_a_write_in_place(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    """Two daemons serve one directory (a system and a session one): while one writes a
    volume in place (an upload with a length, held halfway by its FIFO), the other's
    whole-volume upload would rename a new file over it, and the rest of the first upload,
    reported done, would go into the replaced file."""
    uri, pool, half = virtvold.tcp_uri, virtvold.pool_dir, 1 << 20
    other = start_virtvold(tmp_path / "other", "--pool", f"shared={pool}")
    try:
        run_virsh(uri, "vol-create-as", virtvold.pool_name, "disk", str(2 * half))
        replacement = tmp_path / "replacement.img"
        replacement.write_bytes(b"r" * 2 * half)
        fifo = tmp_path / "feed"
        os.mkfifo(fifo)
        upload = subprocess.Popen(
            [
                "virsh", "-c", uri, "vol-upload", "disk", str(fifo), virtvold.pool_name,
                "--offset", "0", "--length", str(2 * half),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        try:
            with fifo.open("wb") as feed:
                feed.write(b"n" * half)
                feed.flush()
                deadline = time.monotonic() + 20
                while not (pool / "disk").read_bytes().startswith(b"n" * (half // 8)):
                    assert time.monotonic() < deadline, "the new bytes never reached the volume"
                    time.sleep(0.02)
                refused = run_virsh(
                    other.tcp_uri, "vol-upload", "disk", str(replacement), "shared", check=False
                )
                feed.write(b"n" * half)
            output, _ = upload.communicate(timeout=30)
        finally:
            if upload.poll() is None:
                upload.kill()
                upload.wait()
    finally:
        stop_virtvold(other)
    assert upload.returncode == 0, output
    assert refused.returncode == 1
    assert "Requested operation is not valid: volume 'disk' is still in use." in refused.stderr
    assert (pool / "disk").read_bytes() == b"n" * 2 * half
    assert _leftovers(pool) == []
