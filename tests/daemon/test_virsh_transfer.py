"""Real virsh 9.0 moving volumes through virtvold: vol-upload / vol-download, sparse or not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import Virtvold, run_virsh
from tests.daemon.conftest import allocated, assert_same_content, make_sparse_file

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
    run_virsh(uri, "vol-create-as", "default", "disk", "1M")
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
    run_virsh(uri, "vol-upload", "--pool", "default", "full", str(source), "--sparse")
    assert volume.read_bytes() == source.read_bytes()
    assert allocated(volume) <= allocated(source) + 64 * 1024


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
