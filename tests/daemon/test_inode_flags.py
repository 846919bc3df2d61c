"""A volume's or a downloaded file's attribute flags (``chattr``'s) survive an atomic
replacement as they survive libvirtd's and virsh's writes in place.

What must survive comes from the real peers doing the same: libvirtd 9.0 receiving the
same upload into its pool, virsh 9.0 downloading over an existing file. On btrfs a
volume without copy on write (libvirt's ``<nocow/>``) stays so: btrfs takes that flag
only while a file is empty, so the replacement must have it before its first byte.
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.client.test_cli_spellings import run_virtvol
from tests.conftest import (
    POOL_NAME,
    run_virsh,
    small_file_system,
    start_virtvold,
    stop_virtvold,
)
from tests.daemon.test_extended_attributes import upload_by_each_client
from virtvol.sparse import files

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd, Virtvold

# chattr's S, d and A (synchronous writes, no dump, no access times): ext4 keeps them.
GIVEN = "SdA"


def flags_of(path: Path) -> int:
    """``path``'s attribute flags that a replacement keeps (``files.KEPT_INODE_FLAGS``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return files.inode_flags(fd) & files.KEPT_INODE_FLAGS
    finally:
        os.close(fd)


def chattr(path: Path, change: str) -> None:
    subprocess.run(["chattr", change, str(path)], check=True)


def test_a_whole_upload_keeps_the_flags_libvirtds_keeps(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    image = tmp_path / "image"
    image.write_bytes(os.urandom(200_000))
    run_virsh(reference_libvirtd.tcp_uri, "vol-create-as", POOL_NAME, "v", "1M")
    chattr(reference_libvirtd.pool_dir / "v", "+" + GIVEN)
    for name in ("by-virsh", "by-virtvol"):
        run_virsh(virtvold.tcp_uri, "vol-create-as", POOL_NAME, name, "1M")
        chattr(virtvold.pool_dir / name, "+" + GIVEN)

    upload_by_each_client(virtvold, reference_libvirtd, image)

    expected = flags_of(reference_libvirtd.pool_dir / "v")
    assert expected == 0x08 | 0x40 | 0x80  # what libvirtd's write in place kept: S, d, A
    for name in ("by-virsh", "by-virtvol"):
        volume = virtvold.pool_dir / name
        assert volume.read_bytes()[: len(image.read_bytes())] == image.read_bytes()
        assert flags_of(volume) == expected, name
    assert sorted(os.listdir(virtvold.pool_dir)) == ["by-virsh", "by-virtvol"]


def test_a_download_over_a_file_keeps_the_flags_virshs_keeps(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    (virtvold.pool_dir / "v").write_bytes(os.urandom(200_000))
    # A folder whose new files get d (ext4 passes it on): the file replaced has it taken
    # off, and its replacement must not have it either.
    folder = tmp_path / "downloads"
    folder.mkdir()
    chattr(folder, "+d")
    fresh = folder / "fresh"
    fresh.write_bytes(b"")
    assert flags_of(fresh) == 0x40
    theirs, ours = folder / "by-virsh", folder / "by-virtvol"
    for path in (theirs, ours):
        path.write_bytes(b"old content")
        chattr(path, "+SA")
        chattr(path, "-d")

    run_virsh(virtvold.tcp_uri, "vol-download", "--pool", POOL_NAME, "v", str(theirs))
    downloaded = run_virtvol(
        "-c", virtvold.tcp_uri, "vol-download", "--pool", POOL_NAME, "v", str(ours)
    )
    assert downloaded.returncode == 0, downloaded.stderr

    assert ours.read_bytes() == theirs.read_bytes() == (virtvold.pool_dir / "v").read_bytes()
    assert flags_of(theirs) == 0x08 | 0x80  # what virsh's write in place kept: S, A
    assert flags_of(ours) == flags_of(theirs)


@pytest.fixture
def btrfs_virtvold(tmp_path: Path) -> Iterator[Virtvold]:
    """virtvold whose pool is a small btrfs of its own (the only file system with a
    switch for copy on write)."""
    base = tmp_path / "virtvold"
    image = tmp_path / "btrfs.img"
    with small_file_system(image, base / "pool", 256 << 20, "mkfs.btrfs", "-q", "-f"):
        daemon = start_virtvold(base)
        try:
            yield daemon
        finally:
            stop_virtvold(daemon)


NOCOW_VOLUME = """<volume><name>{name}</name><capacity>1048576</capacity>
<target><format type='raw'/><nocow/></target></volume>"""


def test_a_volume_without_copy_on_write_stays_so_after_a_whole_upload(
    btrfs_virtvold: Virtvold, tmp_path: Path
) -> None:
    daemon = btrfs_virtvold
    image = tmp_path / "image"
    image.write_bytes(os.urandom(200_000))
    definition = tmp_path / "nocow.xml"
    definition.write_text(NOCOW_VOLUME.format(name="disk"))
    run_virsh(daemon.tcp_uri, "vol-create", POOL_NAME, str(definition))
    volume = daemon.pool_dir / "disk"
    assert flags_of(volume) == files.FS_NOCOW_FL

    run_virsh(daemon.tcp_uri, "vol-upload", "--pool", POOL_NAME, "disk", str(image))
    assert volume.read_bytes()[: len(image.read_bytes())] == image.read_bytes()
    assert flags_of(volume) == files.FS_NOCOW_FL

    # The command line's download over such a file keeps it too.
    copy = daemon.pool_dir / "copy"
    copy.write_bytes(b"")
    chattr(copy, "+C")
    downloaded = run_virtvol(
        "-c", daemon.tcp_uri, "vol-download", "--pool", POOL_NAME, "disk", str(copy)
    )
    assert downloaded.returncode == 0, downloaded.stderr
    assert copy.read_bytes() == volume.read_bytes()
    assert flags_of(copy) == files.FS_NOCOW_FL
