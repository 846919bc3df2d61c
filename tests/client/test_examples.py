"""The scripts in examples/ work against a real libvirtd."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.client.helpers import MIB, allocated, assert_same_file, write_sparse_image

if TYPE_CHECKING:
    from tests.conftest import ReferenceLibvirtd

pytestmark = pytest.mark.interop

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_examples(reference_libvirtd: ReferenceLibvirtd, tmp_path: Path) -> None:
    uri = reference_libvirtd.tcp_uri
    source = tmp_path / "disk.img"
    write_sparse_image(source, 8 * MIB)
    out = _run("upload_image.py", uri, "default", "disk.img", str(source))
    assert out.startswith("sent ")
    listing = _run("list_pools.py", uri)
    assert listing.startswith("default state=2")
    assert "  disk.img capacity=8388608" in listing
    back = tmp_path / "back.img"
    out = _run("download_image.py", uri, "default", "disk.img", str(back))
    assert out.startswith("received ")
    assert_same_file(source, back)
    assert allocated(back) <= MIB
