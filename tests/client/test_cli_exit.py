"""The ``virtvol`` console command: ``main``'s status, with every output flushed, then
an exit that skips the interpreter's teardown."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from virtvol.client import cli

if TYPE_CHECKING:
    from tests.conftest import Virtvold

_VENV_VIRTVOL = Path(sys.executable).with_name("virtvol")


class _Exited(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _fake_exit(status: int) -> None:
    raise _Exited(status)


class _FailingStream(io.StringIO):
    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_run_flushes_then_exits_with_mains_status(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "argv", ["virtvol", "--version"])
    monkeypatch.setattr(os, "_exit", _fake_exit)
    with pytest.raises(_Exited) as exited:
        cli.run()
    assert exited.value.status == 0
    assert out.getvalue().strip()  # the version, written before the exit


def test_run_reports_output_that_could_not_be_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", _FailingStream())
    monkeypatch.setattr(sys, "argv", ["virtvol", "--version"])
    monkeypatch.setattr(os, "_exit", _fake_exit)
    with pytest.raises(_Exited) as exited:
        cli.run()
    assert exited.value.status == 1


def test_run_keeps_an_error_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(sys, "argv", ["virtvol", "no-such-command"])
    monkeypatch.setattr(os, "_exit", _fake_exit)
    with pytest.raises(_Exited) as exited:
        cli.run()
    assert exited.value.status == 1


def test_the_installed_command_prints_all_its_output_through_a_pipe(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Teardown is skipped, flushing is not: the whole help arrives through the pipe.
    assert cli.main(["help"]) == 0
    expected = capsys.readouterr().out
    done = subprocess.run(
        [str(_VENV_VIRTVOL), "help"], capture_output=True, text=True, check=False, timeout=30
    )
    assert (done.returncode, done.stdout) == (0, expected)


def test_output_to_a_closed_pipe_ends_with_status_1_and_no_traceback(
    virtvold: Virtvold, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdout", _FailingStream())
    errors = io.StringIO()
    monkeypatch.setattr(sys, "stderr", errors)
    assert cli.main(["-c", virtvold.unix_uri, "pool-list"]) == 1
    assert "Traceback" not in errors.getvalue()


def test_output_to_a_full_disk_is_an_error_not_a_traceback(virtvold: Virtvold) -> None:
    """stdout on /dev/full: the write fails with ENOSPC, which says so on stderr."""
    with Path("/dev/full").open("w") as full:
        done = subprocess.run(
            [str(_VENV_VIRTVOL), "-c", virtvold.unix_uri, "pool-list"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=30,
        )
    assert done.returncode == 1
    assert done.stderr == "error: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("option", ["--offset", "--length"])
def test_a_range_number_of_thousands_of_digits_is_out_of_range_not_a_traceback(
    virtvold: Virtvold, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    """Python refuses to read an int of more than 4300 digits (ValueError): past 64 bits
    anyway, as virsh says."""
    (virtvold.pool_dir / "vol").write_bytes(b"x")
    digits = "1" * 5000
    command = ["vol-download", "vol", str(tmp_path / "copy"), "--pool", "default"]
    assert cli.main(["-c", virtvold.unix_uri, *command, option, digits]) == 1
    name = option.removeprefix("--")
    expected = f"error: Numeric value '{digits}' for <{name}> option is malformed or out of range\n"
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("closed", [1, 2], ids=["stdout", "stderr"])
@pytest.mark.parametrize("command", ["vol-download", "vol-upload"])
def test_a_transfer_with_an_output_closed_succeeds_as_virshs_does(
    virtvold: Virtvold, tmp_path: Path, closed: int, command: str
) -> None:
    """Started with stdout or stderr closed (``>&-``, ``2>&-``), Python gives the command
    None for that stream: the progress bar's look at stderr failed a transfer before it
    began, and the blank line on stdout failed one after its work was done (a download had
    replaced the file) with a traceback and status 1. virsh succeeds, saying nothing where
    it cannot; so does virtvol, the missing output going to /dev/null."""
    content = os.urandom(100_000)
    (virtvold.pool_dir / "vol").write_bytes(b"old" if command == "vol-upload" else content)
    local = tmp_path / "local.img"
    local.write_bytes(content if command == "vol-upload" else b"old")
    done = subprocess.run(
        [
            str(_VENV_VIRTVOL),
            "-c",
            virtvold.unix_uri,
            command,
            "vol",
            str(local),
            "--pool",
            "default",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        preexec_fn=lambda: os.close(closed),
    )
    assert "Traceback" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert local.read_bytes() == content
    assert (virtvold.pool_dir / "vol").read_bytes() == content
    if closed == 1:
        assert done.stderr.startswith(f"{command.removeprefix('vol-')}ed ")
    else:
        assert done.stdout == "\n"


@pytest.mark.parametrize(
    ("command", "closed", "path"),
    [
        ("vol-download", 1, "/dev/stdout"),
        ("vol-download", 1, "/dev/fd/1"),
        ("vol-download", 2, "/proc/self/fd/2"),
        ("vol-upload", 0, "/dev/stdin"),
    ],
)
def test_a_transfer_through_a_standard_stream_the_command_was_started_without_fails(
    virtvold: Virtvold, command: str, closed: int, path: str
) -> None:
    """Started with stdout closed (``>&-``), ``vol-download VOL /dev/stdout`` sent the
    volume into /dev/null, which the command puts in the closed descriptor's place, and
    said it had downloaded it, status 0: a backup that went nowhere. virsh cannot open
    /dev/stdout then and fails; so does virtvol now, in virsh's words (and an upload from
    a closed /dev/stdin, which read nothing and succeeded)."""
    content = os.urandom(100_000)
    (virtvold.pool_dir / "vol").write_bytes(content)
    done = subprocess.run(
        [str(_VENV_VIRTVOL), "-c", virtvold.unix_uri, command, "vol", path, "--pool", "default"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        preexec_fn=lambda: os.close(closed),
    )
    verb = "create" if command == "vol-download" else "read"
    assert done.returncode == 1
    if closed != 2:
        assert done.stderr == f"error: cannot {verb} {path}\n"
    assert (virtvold.pool_dir / "vol").read_bytes() == content


def test_a_download_to_dev_stdout_given_a_file_after_an_earlier_main_without_it_succeeds(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    """A program calling ``main`` twice: the first time without stdout, which ``main``
    gives /dev/null; then with a file of its own there. ``vol-download VOL /dev/stdout``
    was refused the second time as by a command started without stdout, though stdout
    was the program's file by then."""
    content = os.urandom(100_000)
    (virtvold.pool_dir / "vol").write_bytes(content)
    caught = tmp_path / "caught"
    script = (
        "import os, sys; from virtvol.client.cli import main; os.close(1);"
        " main(['--version']); out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600);"
        " os.dup2(out, 1); os.close(out); raise SystemExit(main(sys.argv[2:]))"
    )
    arguments = ["-q", "-c", virtvold.unix_uri, "vol-download", "vol", "/dev/stdout"]
    done = subprocess.run(
        [sys.executable, "-c", script, str(caught), *arguments, "--pool", "default"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert caught.read_bytes() == content
