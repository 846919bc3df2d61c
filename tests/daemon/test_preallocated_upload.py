"""An upload into a fully allocated (preallocated) volume keeps its space reserved, as
libvirtd's in-place write does: a guest disk made thick must not turn thin behind its
owner's back, to fail later for want of space. The allocations expected come from the
real libvirtd doing the same uploads."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.conftest import POOL_NAME, run_virsh
from tests.daemon.conftest import make_sparse_file

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd, Virtvold

MIB = 1 << 20
SIZE = 4 * MIB

# (virsh vol-upload options, the source's layout): zeros as data, a hole, a whole upload.
UPLOADS = {
    "in-place-zeros": (["--offset", "0", "--length", str(SIZE)], "zeros"),
    "in-place-hole": (["--offset", "0", "--length", str(SIZE), "--sparse"], "hole"),
    "whole-zeros": ([], "zeros"),
    "whole-hole": (["--sparse"], "hole"),
}


def _allocation(uri: str, name: str) -> int:
    info = run_virsh(uri, "vol-info", "--pool", POOL_NAME, name, "--bytes").stdout
    line = next(line for line in info.splitlines() if line.startswith("Allocation:"))
    return int(line.split()[1])


@pytest.mark.parametrize("case", sorted(UPLOADS))
def test_an_upload_keeps_a_preallocated_volume_allocated(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd, tmp_path: Path, case: str
) -> None:
    options, layout = UPLOADS[case]
    source = tmp_path / "source.img"
    if layout == "zeros":
        source.write_bytes(bytes(SIZE))
    else:
        make_sparse_file(source, SIZE, [(0, os.urandom(4096))])
    results = []
    for uri, folder in (
        (reference_libvirtd.tcp_uri, reference_libvirtd.pool_dir),
        (virtvold.tcp_uri, virtvold.pool_dir),
    ):
        run_virsh(uri, "vol-create-as", POOL_NAME, "thick", str(SIZE))  # fully allocated
        assert _allocation(uri, "thick") >= SIZE
        run_virsh(uri, "vol-upload", "thick", str(source), POOL_NAME, *options)
        assert (folder / "thick").read_bytes() == source.read_bytes()
        results.append(_allocation(uri, "thick") >= SIZE)
    assert results == [True, True]


def test_an_upload_into_a_thin_volume_keeps_its_holes(virtvold: Virtvold, tmp_path: Path) -> None:
    source = make_sparse_file(tmp_path / "source.img", SIZE, [(0, os.urandom(4096))])
    uri = virtvold.tcp_uri
    run_virsh(uri, "vol-create-as", POOL_NAME, "thin", str(SIZE), "--allocation", "0")
    run_virsh(uri, "vol-upload", "thin", str(source), POOL_NAME, "--sparse")
    assert _allocation(uri, "thin") < MIB


def test_a_shorter_whole_upload_keeps_the_old_end_allocated(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    """The bytes past a shorter stream's end are the preallocated volume's own, blocks
    reserved but never written, which a look for data extents takes for holes: they stay
    allocated, as in libvirtd's volume, where the stream never reached them. (libvirtd
    cuts the volume at a sparse stream's trailing hole, so only virtvold is asked to keep
    it allocated after a sparse upload.)"""
    source = make_sparse_file(tmp_path / "source.img", MIB, [(0, os.urandom(4096))])
    results = []
    for uri, folder, options in (
        (reference_libvirtd.tcp_uri, reference_libvirtd.pool_dir, []),
        (virtvold.tcp_uri, virtvold.pool_dir, []),
        (virtvold.tcp_uri, virtvold.pool_dir, ["--sparse"]),
    ):
        run_virsh(uri, "vol-create-as", POOL_NAME, "thick", str(SIZE))  # fully allocated
        run_virsh(uri, "vol-upload", "thick", str(source), POOL_NAME, *options)
        assert (folder / "thick").read_bytes() == source.read_bytes() + bytes(SIZE - MIB)
        results.append(_allocation(uri, "thick") >= SIZE)
        run_virsh(uri, "vol-delete", "thick", "--pool", POOL_NAME)
    assert results == [True, True, True]
