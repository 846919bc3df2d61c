"""``make run`` says what it opens, and a second one says how to run beside the first.

The target runs against this test run's own virtual environment (``-o`` keeps make
from rebuilding it), with a port and state dir of the test's.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def _make_run(port: int, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-o",
            f"{VENV}/bin/virtvold",
            "run",
            f"VENV={VENV}",
            f"PORT={port}",
            f"STATE_DIR={state_dir}",
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_second_make_run_on_a_taken_port_names_port_and_state_dir(tmp_path: Path) -> None:
    with socket.socket() as first:  # the first `make run`'s port
        first.bind(("127.0.0.1", 0))
        first.listen()
        port = first.getsockname()[1]
        done = _make_run(port, tmp_path / "state")
    assert done.returncode != 0
    assert f"plain TCP on 127.0.0.1:{port} without authentication" in done.stdout
    assert f"cannot listen on tcp://127.0.0.1:{port}: Address already in use" in done.stderr
    assert f"make run PORT={port + 1} STATE_DIR={tmp_path / 'state'}-2" in done.stderr


def test_second_make_run_on_a_taken_state_dir_names_port_and_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    with socket.socket(socket.AF_UNIX) as first:  # the first `make run`'s socket
        first.bind(str(state / "virtvold-sock"))
        first.listen()
        done = _make_run(port, state)
    assert done.returncode != 0
    assert f"{state / 'virtvold-sock'} is in use by another daemon" in done.stderr
    assert f"make run PORT={port + 1} STATE_DIR={state}-2" in done.stderr
