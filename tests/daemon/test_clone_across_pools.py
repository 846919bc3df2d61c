"""A volume cloned from another directory pool (``virsh vol-create-from --inputpool``),
made as libvirtd 9.0 makes it: its directory backend copies the source file from
wherever its path is."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tests.conftest import POOL_NAME, run_virsh

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd, Virtvold

MIB = 1 << 20
# Data, a run of zeros, data: the copy keeps the bytes, whatever it does with the zeros.
CONTENT = os.urandom(300_000) + bytes(MIB) + os.urandom(1000)
COPY = "<volume><name>copy</name><capacity unit='MiB'>2</capacity></volume>"


def _clone_from_another_pool(uri: str, images: Path, definition: Path) -> None:
    images.mkdir()
    images.chmod(0o777)  # the reference libvirtd runs as nobody
    base = images / "base.img"
    base.write_bytes(CONTENT)
    base.chmod(0o644)
    run_virsh(uri, "pool-define-as", "images", "dir", "--target", str(images))
    run_virsh(uri, "pool-start", "images")
    run_virsh(
        uri, "vol-create-from", POOL_NAME, str(definition), "base.img", "--inputpool", "images"
    )


def test_a_clone_from_another_directory_pool_is_made_as_libvirtds(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    definition = tmp_path / "copy.xml"
    definition.write_text(COPY)
    _clone_from_another_pool(virtvold.tcp_uri, virtvold.state_dir.parent / "images", definition)
    _clone_from_another_pool(
        reference_libvirtd.tcp_uri, reference_libvirtd.state_dir / "images", definition
    )
    ours, theirs = virtvold.pool_dir / "copy", reference_libvirtd.pool_dir / "copy"
    assert theirs.read_bytes()[: len(CONTENT)] == CONTENT
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.stat().st_size == theirs.stat().st_size == 2 * MIB
    # The source is as it was, and free again: it can be deleted.
    assert (virtvold.state_dir.parent / "images" / "base.img").read_bytes() == CONTENT
    run_virsh(virtvold.tcp_uri, "vol-delete", "--pool", "images", "base.img")
    assert not (virtvold.state_dir.parent / "images" / "base.img").exists()
