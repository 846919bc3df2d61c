"""``python -m virtvol.protocol.dump``: one line per frame, checked against tshark."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from tests.protocol.conftest import GOLDEN, SESSIONS, TsharkFrame, golden_bytes, tshark_frames
from virtvol.protocol.constants import PROGRAM_NAMES
from virtvol.protocol.dump import main

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def _run(*args: str, stdin: bytes = b"") -> Run:
    # sys.executable is the venv's interpreter running this suite.
    proc = subprocess.run(
        [sys.executable, "-m", "virtvol.protocol.dump", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def _expected_line(line: TsharkFrame) -> str:
    text = (
        f"{PROGRAM_NAMES[line.program]} {line.procedure_name} {line.type_name} "
        f"serial={line.serial} status={line.status_name} payload={line.length - 28}"
    )
    if line.hole is not None:
        text += f" hole={line.hole}"
    return text


@pytest.mark.parametrize("name", SESSIONS)
@pytest.mark.parametrize("direction", ["client", "server"])
def test_dump_of_a_golden_stream(name: str, direction: str) -> None:
    proc = _run(str(GOLDEN / f"{name}.{direction}.bin"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    expected = [
        _expected_line(line)
        for line in tshark_frames(name)
        if line.from_client == (direction == "client")
    ]
    assert proc.stdout.splitlines() == expected


def test_dump_shows_the_virsh_upload_with_its_holes() -> None:
    lines = _run(str(GOLDEN / "virsh-session.client.bin")).stdout.splitlines()
    upload = [line for line in lines if " STORAGE_VOL_UPLOAD " in line]
    assert upload == [
        "REMOTE STORAGE_VOL_UPLOAD CALL serial=19 status=OK payload=100",
        "REMOTE STORAGE_VOL_UPLOAD STREAM serial=19 status=CONTINUE payload=4096",
        "REMOTE STORAGE_VOL_UPLOAD STREAM_HOLE serial=19 status=CONTINUE payload=12 hole=61440",
        "REMOTE STORAGE_VOL_UPLOAD STREAM serial=19 status=CONTINUE payload=4096",
        "REMOTE STORAGE_VOL_UPLOAD STREAM_HOLE serial=19 status=CONTINUE payload=12 hole=61440",
        "REMOTE STORAGE_VOL_UPLOAD STREAM serial=19 status=OK payload=0",
    ]
    assert "KEEPALIVE PING MESSAGE serial=0 status=OK payload=0" in lines
    assert "KEEPALIVE PONG MESSAGE serial=0 status=OK payload=0" in lines


def test_dump_reads_standard_input() -> None:
    data = golden_bytes("python-sparse", "server")
    from_stdin = _run("-", stdin=data)
    from_file = _run(str(GOLDEN / "python-sparse.server.bin"))
    assert from_stdin.returncode == 0
    assert from_stdin.stdout == from_file.stdout


def test_dump_reports_a_truncated_stream() -> None:
    data = golden_bytes("python-sparse", "client")
    proc = _run("-", stdin=data[:-5])
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ")
    assert "incomplete frame" in proc.stderr
    # The complete frames before the cut are still listed.
    assert (
        len(proc.stdout.splitlines())
        == len([line for line in tshark_frames("python-sparse") if line.from_client]) - 1
    )


def test_dump_counts_the_bytes_of_a_cut_large_frame() -> None:
    data = golden_bytes("virsh-session", "server")
    start = data.index(bytes.fromhex("0001101c 20008086"))  # the 69660-byte data frame
    proc = _run("-", stdin=data[: start + 1000])
    assert proc.returncode == 1
    assert proc.stderr == "error: 1000 bytes of an incomplete frame at the end\n"


def test_dump_reports_a_bad_length_word() -> None:
    proc = _run("-", stdin=b"\x00\x00\x00\x10" + bytes(12))
    assert proc.returncode == 1
    assert "below the minimum" in proc.stderr


def test_dump_names_unknown_values(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    frame = bytes.fromhex("0000001c 12345678 00000001 0000abcd 00000009 00000003 00000005")
    path = tmp_path / "odd.bin"
    path.write_bytes(frame)
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == "0x12345678 43981 9 serial=3 status=5 payload=0\n"
