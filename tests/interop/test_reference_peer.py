"""The reference-peer fixtures work: a real libvirtd 9.0 driven by virsh and python3-libvirt."""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING

import pytest

from tests.conftest import ReferenceLibvirtd, run_system_python, run_virsh

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

KIB = 1024


def _write_sparse(path: Path) -> bytes:
    """Data at 0, a hole, data at 192 KiB, a hole, data at 320 KiB, trailing hole: 512 KiB."""
    with path.open("wb") as f:
        f.write(bytes(range(256)) * 16)
        f.seek(192 * KIB)
        f.write(b"middle section\n" * 600)
        f.seek(320 * KIB)
        f.write(os.urandom(8 * KIB))
        f.truncate(512 * KIB)
    return path.read_bytes()


def test_virsh_pool_list_shows_the_default_pool(reference_libvirtd: ReferenceLibvirtd) -> None:
    for uri in (reference_libvirtd.tcp_uri, reference_libvirtd.unix_uri):
        out = run_virsh(uri, "pool-list", "--all").stdout
        rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
        assert rows == [[reference_libvirtd.pool_name, "active", "no"]]
    assert reference_libvirtd.pool_dir.is_dir()


def test_sparse_round_trip_through_real_libvirtd(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    uri, pool = reference_libvirtd.tcp_uri, reference_libvirtd.pool_name
    source = tmp_path / "source.img"
    expected = _write_sparse(source)
    run_virsh(uri, "vol-create-as", pool, "rt.img", "512KiB", "--format", "raw")
    run_virsh(uri, "vol-upload", "--pool", pool, "rt.img", str(source), "--sparse")
    back = tmp_path / "back.img"
    run_virsh(uri, "vol-download", "--pool", pool, "rt.img", str(back), "--sparse")
    assert back.read_bytes() == expected

    on_disk = reference_libvirtd.pool_dir / "rt.img"
    assert on_disk.read_bytes() == expected
    assert on_disk.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    # virsh recreates the holes in the downloaded file.
    assert back.stat().st_blocks * 512 < len(expected)


def test_system_python_reaches_the_daemon(reference_libvirtd: ReferenceLibvirtd) -> None:
    code = (
        "import sys, libvirt\n"
        "conn = libvirt.open(sys.argv[1])\n"
        "pool = conn.storagePoolLookupByName(sys.argv[2])\n"
        "print(conn.getType(), pool.isActive(), pool.isPersistent())\n"
        "conn.close()\n"
    )
    out = run_system_python(code, reference_libvirtd.tcp_uri, reference_libvirtd.pool_name)
    assert out.stdout.split() == ["storage", "1", "1"]
