"""The command line's warnings: once per run, never failing the command, and never saying
again what its error says."""

from __future__ import annotations

import struct
import subprocess
import sys
from typing import TYPE_CHECKING

from tests.client.fake_peer import FakePeer
from tests.client.helpers import MIB, write_sparse_image
from virtvol.client.cli import main
from virtvol.protocol import remote as r
from virtvol.protocol.constants import MessageType
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from tests.conftest import Virtvold
    from virtvol.protocol.connection import CallReceived

PROBE = """
import io, logging, sys
from virtvol.client.cli import main
uri, source, configure = sys.argv[1], sys.argv[2], sys.argv[3]
if configure == "app":
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="APP %(name)s %(message)s")
for run in range(3):
    err = io.StringIO()
    sys.stderr, real = err, sys.stderr
    try:
        status = main(["-c", uri, "vol-upload", "--pool", "default", "img", source])
    finally:
        sys.stderr = real
    warnings = [line for line in err.getvalue().splitlines() if line.startswith("warning: ")]
    print("run", run, "status", status, "warnings", len(warnings))
"""


def test_main_run_three_times_warns_once_each(legacy_virtvold: Virtvold, tmp_path: Path) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, MIB)
    (legacy_virtvold.pool_dir / "img").write_bytes(b"")
    for configure in ("none", "app"):
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, legacy_virtvold.tcp_uri, str(source), configure],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = probe.stdout.splitlines()
        assert [line for line in lines if line.startswith("run")] == [
            f"run {n} status 0 warnings 1" for n in range(3)
        ], probe.stdout + probe.stderr
        app = [line for line in lines if line.startswith("APP")]
        assert len(app) == (3 if configure == "app" else 0), probe.stdout


def test_a_warning_stderr_cannot_take_does_not_fail_the_upload(
    legacy_virtvold: Virtvold, tmp_path: Path
) -> None:
    """--quiet, stderr on a full disk: the fallback warning cannot be written. The upload
    itself must not fail for it (logging's own handlers report and go on)."""
    source = tmp_path / "src.img"
    write_sparse_image(source, MIB)
    (legacy_virtvold.pool_dir / "img").write_bytes(b"")
    argv = ["-q", "-c", legacy_virtvold.tcp_uri, "vol-upload", "--pool", "default", "img"]
    probe = (
        "import sys; from virtvol.client.cli import main; rc = main(sys.argv[1:]);"
        " sys.stdout.write(f'status {rc}\\n')"
    )
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv, str(source)],
            stdout=subprocess.PIPE,
            stderr=full,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.stdout.endswith("status 0\n"), done.stdout


def _reply_from_another_program(peer: FakePeer, event: CallReceived) -> None:
    """Answer with a frame of a program the client never called: a protocol error."""
    head = (28, 0x11111111, 1, event.procedure.number, MessageType.REPLY, event.serial, 0)
    peer.send(struct.pack(">7I", *head))


def test_a_failure_the_command_reports_is_not_also_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """virsh says a broken connection once, as the command's error."""
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.CONNECT_LIST_ALL_STORAGE_POOLS] = _reply_from_another_program
        status = main(["-c", peer.uri, "pool-list"])
    err = capsys.readouterr().err
    assert status == 1
    assert "warning" not in err
    said = [line for line in err.splitlines() if "protocol error" in line]
    assert len(said) == 1, err
    assert said[0].startswith(f"error: protocol error from {peer.uri}: reply to no pending"), err


def test_a_failure_after_the_command_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A connection that breaks while saying goodbye: the command's output stands, and
    the failure, which no error reports, is a warning."""
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.CONNECT_LIST_ALL_STORAGE_POOLS] = lambda peer, event: peer.reply(
            event.serial, r.ListAllPoolsRet(pools=(), ret=0)
        )
        peer.handlers[Proc.CONNECT_CLOSE] = _reply_from_another_program
        status = main(["-c", peer.uri, "pool-list"])
    out, err = capsys.readouterr()
    assert status == 0
    assert out.startswith(" Name   State   Autostart"), out
    assert err.startswith(f"warning: protocol error from {peer.uri}: reply to no pending call"), err
    assert err.count("\n") == 1, err
