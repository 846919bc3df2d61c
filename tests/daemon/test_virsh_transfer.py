"""Real virsh 9.0 moving volumes through virtvold: vol-upload / vol-download, sparse or not."""

from __future__ import annotations

import os
import re
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.conftest import (
    ReferenceLibvirtd,
    Virtvold,
    run_virsh,
    start_virtvold,
    stop_virtvold,
)
from tests.daemon.conftest import (
    allocated,
    assert_no_clone_while_written_in_place,
    assert_same_content,
    leave_a_hole,
    make_sparse_file,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

MIB = 1 << 20


@pytest.fixture(params=["tcp", "unix"])
def uri(request: pytest.FixtureRequest, virtvold: Virtvold) -> str:
    return virtvold.tcp_uri if request.param == "tcp" else virtvold.unix_uri


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """700000 random bytes, then "WORLD" at 2 MiB, 3 MiB in all: holes in between and after."""
    return make_sparse_file(
        tmp_path / "source.img", 3 * MIB, [(0, os.urandom(700_000)), (2 * MIB, b"WORLD")]
    )


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "plain"])
def test_upload_then_download(
    uri: str, virtvold: Virtvold, source: Path, tmp_path: Path, sparse: bool
) -> None:
    flag = ["--sparse"] if sparse else []
    # Not preallocated: a preallocated volume keeps its space (test_preallocated_upload).
    run_virsh(uri, "vol-create-as", "default", "disk", "1M", "--allocation", "0")
    run_virsh(uri, "vol-upload", "--pool", "default", "disk", str(source), *flag)
    volume = virtvold.pool_dir / "disk"
    assert_same_content(source, volume)
    if sparse:
        assert allocated(volume) <= allocated(source) + 64 * 1024
    out = tmp_path / "out.img"
    run_virsh(uri, "vol-download", "--pool", "default", "disk", str(out), *flag)
    assert out.read_bytes() == source.read_bytes()
    if sparse:
        assert allocated(out) <= allocated(source) + 64 * 1024
    info = run_virsh(uri, "vol-info", "--pool", "default", "disk", "--bytes").stdout
    assert f"Capacity:       {3 * MIB} bytes" in info


def test_sparse_upload_over_other_bytes(uri: str, virtvold: Virtvold, source: Path) -> None:
    volume = virtvold.pool_dir / "full"
    run_virsh(uri, "vol-create-as", "default", "full", "4M")
    volume.write_bytes(b"\xab" * 4 * MIB)
    leave_a_hole(volume, MIB, MIB)  # not preallocated, where the source has a hole
    run_virsh(uri, "vol-upload", "--pool", "default", "full", str(source), "--sparse")
    # The stream's holes read as zeros; past its end the volume keeps its bytes.
    assert volume.read_bytes() == source.read_bytes() + b"\xab" * MIB
    assert allocated(volume) <= allocated(source) + MIB + 64 * 1024


def test_offset_and_length(uri: str, virtvold: Virtvold, tmp_path: Path) -> None:
    volume = virtvold.pool_dir / "ranges"
    run_virsh(uri, "vol-create-as", "default", "ranges", "1M")
    original = os.urandom(MIB)
    volume.write_bytes(original)
    patch = make_sparse_file(tmp_path / "patch", 12_288, [(0, b"x" * 4096), (8192, b"y" * 4096)])
    run_virsh(
        uri,
        "vol-upload",
        "--pool",
        "default",
        "ranges",
        str(patch),
        "--offset",
        "100000",
        "--sparse",
    )
    expected = bytearray(original)
    expected[100000 : 100000 + 12288] = patch.read_bytes()
    assert volume.read_bytes() == bytes(expected)
    out = tmp_path / "slice"
    run_virsh(
        uri,
        "vol-download",
        "--pool",
        "default",
        "ranges",
        str(out),
        "--offset",
        "99000",
        "--length",
        "20000",
    )
    assert out.read_bytes() == bytes(expected[99000:119000])
    clipped = tmp_path / "clipped"
    run_virsh(
        uri,
        "vol-download",
        "--pool",
        "default",
        "ranges",
        str(clipped),
        "--offset",
        str(MIB - 100),
        "--length",
        "100000",
        "--sparse",
    )
    assert clipped.read_bytes() == bytes(expected[MIB - 100 :])
    too_long = run_virsh(
        uri, "vol-upload", "--pool", "default", "ranges", str(patch), "--length", "2", check=False
    )
    assert too_long.returncode == 1
    assert "error: cannot write to stream: No space left on device" in too_long.stderr
    assert volume.read_bytes() == bytes(expected)


def test_delete_after_transfer(uri: str, virtvold: Virtvold, source: Path) -> None:
    run_virsh(uri, "vol-create-as", "default", "gone", "1M")
    run_virsh(uri, "vol-upload", "--pool", "default", "gone", str(source), "--sparse")
    run_virsh(uri, "vol-delete", "--pool", "default", "gone")
    assert not (virtvold.pool_dir / "gone").exists()
    assert sorted(os.listdir(virtvold.pool_dir)) == []


_WIRE = re.compile(
    r"(upload|download) default/(\S+): finished; on the wire: (\d+) data bytes"
    r"(?: and (\d+) holes \((\d+) bytes\) on a sparse stream| on a plain stream \(holes travel"
    r" as zeros\));"
)


def _wire_lines(virtvold: Virtvold) -> list[tuple[str, int, int | None, int | None]]:
    """(direction, data bytes, holes, hole bytes) of each finished stream in the log."""
    return [
        (m[1], int(m[3]), int(m[4]) if m[4] else None, int(m[5]) if m[5] else None)
        for m in _WIRE.finditer(virtvold.log_text())
    ]


def test_log_lines_count_what_crossed_the_wire(
    virtvold: Virtvold, source: Path, tmp_path: Path
) -> None:
    """Holes are counted only when they travel as holes; on a plain stream, zeros are data."""
    uri = virtvold.unix_uri
    run_virsh(uri, "vol-create-as", "default", "disk", "1M")
    run_virsh(uri, "vol-upload", "--pool", "default", "disk", str(source), "--sparse")
    run_virsh(uri, "vol-upload", "--pool", "default", "disk", str(source))
    run_virsh(uri, "vol-download", "--pool", "default", "disk", str(tmp_path / "a"), "--sparse")
    run_virsh(uri, "vol-download", "--pool", "default", "disk", str(tmp_path / "b"))
    lines = _wire_lines(virtvold)
    assert [line[0] for line in lines] == ["upload", "upload", "download", "download"], lines
    for direction, data, holes, hole_bytes in (lines[0], lines[2]):
        assert holes is not None
        assert holes >= 2, (direction, lines)
        assert hole_bytes is not None
        assert data + hole_bytes == 3 * MIB
        assert data < MIB
    for _, data, holes, hole_bytes in (lines[1], lines[3]):
        assert (data, holes, hole_bytes) == (3 * MIB, None, None), lines


@pytest.fixture
def small_disk(reference_libvirtd: ReferenceLibvirtd) -> Iterator[Path]:
    """A 1 MiB file system that anyone may write into, where libvirtd (an unprivileged
    user) reaches it: in its state directory (a tmpfs: mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    mount = reference_libvirtd.state_dir / "small"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_in_libvirtds_words(
    reference_libvirtd: ReferenceLibvirtd, small_disk: Path, tmp_path: Path
) -> None:
    # Far more than the disk takes: libvirtd notices its writer's failure only at a
    # later frame or at the finish, and must have noticed it by the end.
    source = tmp_path / "big.img"
    source.write_bytes(os.urandom(16 * MIB))

    def full_disk_line(uri: str, folder: Path) -> str:
        run_virsh(uri, "vol-create-as", "small", "v", "16M", "--allocation", "0")
        upload = run_virsh(uri, "vol-upload", "v", str(source), "small", check=False)
        assert upload.returncode == 1
        (cause,) = [line for line in upload.stderr.splitlines() if "No space" in line]
        return cause.replace(str(folder), "POOL")

    folders = {name: small_disk / name for name in ("libvirtd", "virtvold")}
    for folder in folders.values():
        folder.mkdir()
        folder.chmod(0o777)
    uri = reference_libvirtd.tcp_uri
    run_virsh(uri, "pool-create-as", "small", "dir", "--target", str(folders["libvirtd"]))
    # libvirtd leaves what it wrote: the disk stays full for virtvold too.
    theirs = full_disk_line(uri, folders["libvirtd"])
    daemon = start_virtvold(tmp_path / "virtvold", "--pool", f"small={folders['virtvold']}")
    try:
        ours = full_disk_line(daemon.tcp_uri, folders["virtvold"])
    finally:
        stop_virtvold(daemon)
    assert ours == theirs == "error: Unable to write POOL/v: No space left on device"


def test_a_volume_uploaded_to_in_place_is_no_clone_source(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    uri = virtvold.unix_uri
    volume = virtvold.pool_dir / "src"
    volume.write_bytes(b"s" * 2 * MIB)
    assert_no_clone_while_written_in_place(
        uri, "default", "src", "copy", tmp_path / "fifo", volume.read_bytes
    )
    assert volume.read_bytes() == b"n" * 2 * MIB
    assert not (virtvold.pool_dir / "copy").exists()
    run_virsh(uri, "vol-clone", "--pool", "default", "src", "copy")  # free once it is done
    assert (virtvold.pool_dir / "copy").read_bytes() == b"n" * 2 * MIB
