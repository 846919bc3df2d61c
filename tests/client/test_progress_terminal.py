"""On a terminal, ``virtvol vol-upload``/``vol-download`` draw a progress bar, then the summary."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.client.helpers import MIB, write_sparse_image
from tests.conftest import Virtvold, run_virsh

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.interop

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_VIRTVOL = [sys.executable, "-c", "from virtvol.client.cli import main; raise SystemExit(main())"]


def run_on_terminal(*args: str) -> tuple[int, str]:
    """Run ``virtvol ARGS`` with a pseudo-terminal as stdout and stderr; all it drew, as text."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [*_VIRTVOL, *args],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=dict(os.environ, LC_ALL="C.UTF-8", COLUMNS="120", TERM="xterm"),
    )
    os.close(terminal)
    drawn = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    code = process.wait(60)
    return code, _ANSI.sub(b"", bytes(drawn)).decode(errors="replace")


@pytest.mark.parametrize("verb", ["vol-upload", "vol-download"])
def test_progress_bar_then_summary(virtvold: Virtvold, tmp_path: Path, verb: str) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, 64 * MIB)
    run_virsh(virtvold.tcp_uri, "vol-create-as", "default", "img", "64M", "--allocation", "0")
    if verb == "vol-download":
        run_virsh(virtvold.tcp_uri, "vol-upload", "--pool", "default", "img", str(source))
    local = source if verb == "vol-upload" else tmp_path / "copy.img"
    code, drawn = run_on_terminal(
        "-c", virtvold.tcp_uri, verb, "img", str(local), "--pool", "default"
    )
    assert code == 0, drawn
    direction = "upload" if verb == "vol-upload" else "download"
    # The bar: its description, the bytes covered and the holes skipped.
    assert f"{direction} img" in drawn
    assert "holes " in drawn
    # Binary units with two decimals, as in the summary line (rate included).
    assert re.search(r"\d+\.\d\d (B|KiB|MiB)/64\.00 MiB", drawn), drawn
    assert re.search(r"\d+\.\d\d (B|KiB|MiB|GiB)/s", drawn), drawn
    # Then one summary line.
    assert re.search(rf"{direction}ed \S+ \S+ data, \S+ \S+ holes.* s \(.+/s\), sparse", drawn), (
        drawn
    )


def test_a_name_in_brackets_is_drawn_as_it_is(virtvold: Virtvold, tmp_path: Path) -> None:
    """A volume's name is text, not rich's markup: "x[bold]y" stays as it is written."""
    source = tmp_path / "src.img"
    source.write_bytes(os.urandom(32 * MIB))
    name = "x[bold]y"
    run_virsh(virtvold.tcp_uri, "vol-create-as", "default", name, "32M")
    code, drawn = run_on_terminal(
        "-c", virtvold.tcp_uri, "vol-upload", name, str(source), "--pool", "default"
    )
    assert code == 0, drawn
    assert f"upload {name}" in drawn, drawn
    assert (virtvold.pool_dir / name).read_bytes() == source.read_bytes()


def test_quiet_draws_nothing(virtvold: Virtvold, tmp_path: Path) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, 8 * MIB)
    run_virsh(virtvold.tcp_uri, "vol-create-as", "default", "img", "8M", "--allocation", "0")
    code, drawn = run_on_terminal(
        "-c", virtvold.tcp_uri, "--quiet", "vol-upload", "img", str(source), "--pool", "default"
    )
    assert code == 0
    assert drawn.strip() == ""


def test_dense_transfer_draws_no_holes(virtvold: Virtvold, tmp_path: Path) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, 8 * MIB)
    run_virsh(virtvold.tcp_uri, "vol-create-as", "default", "img", "8M", "--allocation", "0")
    code, drawn = run_on_terminal(
        "-c", virtvold.unix_uri, "vol-upload", "img", str(source), "--pool", "default",
        "--no-sparse",
    )  # fmt: skip
    assert code == 0, drawn
    assert "upload img" in drawn
    assert "holes 0" not in drawn  # no holes column: none can travel
    assert re.search(r"uploaded 8\.00 MiB data, 0\.00 B holes.*, dense", drawn), drawn


@pytest.mark.skipif(os.geteuid() != 0, reason="attaching a loop device takes root")
def test_block_device_upload_bar_knows_the_device_size(virtvold: Virtvold, tmp_path: Path) -> None:
    """A block device's ``stat`` size is 0; the bar takes its size from the device's end."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(3 * MIB))
    attach = ["losetup", "--find", "--show", "--read-only", str(image)]
    device = subprocess.run(attach, check=True, capture_output=True, text=True).stdout.strip()
    try:
        run_virsh(virtvold.tcp_uri, "vol-create-as", "default", "img", "3M")
        code, drawn = run_on_terminal(
            "-c", virtvold.tcp_uri, "vol-upload", "img", device, "--pool", "default"
        )
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    assert code == 0, drawn
    assert re.search(r"\d+\.\d\d (B|KiB|MiB)/3\.00 MiB", drawn), drawn
    assert (virtvold.pool_dir / "img").read_bytes() == image.read_bytes()


@pytest.mark.parametrize(
    "source",
    ["/proc/version", "/sys/devices/system/cpu/online"],
    ids=["procfs", "sysfs"],
)
def test_a_file_read_as_a_stream_has_a_bar_without_a_total(virtvold: Virtvold, source: str) -> None:
    """procfs's files say 0 bytes, sysfs's a page, whatever they hold: read as streams,
    their bar showed that size as its total ("…/0 B"); it now has none, as a pipe's."""
    run_virsh(virtvold.tcp_uri, "vol-create-as", "default", "img", "1M")
    code, drawn = run_on_terminal(
        "-c", virtvold.tcp_uri, "vol-upload", "img", source, "--pool", "default"
    )
    assert code == 0, drawn
    assert "upload img" in drawn
    assert not re.search(r"B/(0\.00 B|4\.00 KiB)", drawn), drawn
