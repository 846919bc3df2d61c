"""The README's first command on a fresh clone, then its next lines as a new user types them.

``git clone`` of the repository's HEAD into a new directory, ``make run`` there (which
builds ``.venv`` from scratch, then starts virtvold with the pool "default" under
``./.virtvol-state``), and once it listens: the README's "First steps" block run verbatim
(only the TCP port differs, so that the test never collides with a daemon on 16509),
then the same round trip with virsh alone and with ``virtvol`` alone.  Each transfer is
a 1 GiB sparse image; the copies must be byte-identical and sparse, and all of it must
be done within a minute of the daemon answering.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 1 << 30
# The README's image: 1 GiB with "hello" at 512 MiB.
PAYLOAD_OFFSET, PAYLOAD = 512 << 20, b"hello"
SETUP_TIMEOUT = 540.0  # a fresh .venv: pip fetches the test and lint tools
USER_STEPS_BUDGET = 60.0
SPARSE_LIMIT = 1 << 20  # a sparse copy of the image uses a few KiB


def _user_environment() -> dict[str, str]:
    """A new user's shell: no virtual environment of the test run, C locale."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "LIBVIRT_DEFAULT_URI"}
        and not key.startswith(("PYTEST_", "LISTEN_", "NOTIFY_", "WATCHDOG_", "MAKE", "COVERAGE_"))
    }
    path = [part for part in env.get("PATH", "").split(os.pathsep) if "/.venv/" not in part + "/"]
    env["PATH"] = os.pathsep.join(path or ["/usr/local/bin", "/usr/bin", "/bin"])
    env["LC_ALL"] = "C"
    # The clone's source may belong to another user than the one running the tests.
    env["GIT_CONFIG_COUNT"] = "1"
    env["GIT_CONFIG_KEY_0"] = "safe.directory"
    env["GIT_CONFIG_VALUE_0"] = "*"
    return env


def _run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{shlex.join(argv)} exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"
    )
    return proc


def _readme_blocks(text: str, heading: str) -> list[str]:
    """The ```sh blocks of the README section under ``heading`` (the first, for None)."""
    section = text
    if heading:
        start = text.index(f"\n{heading}\n")
        end = text.find("\n## ", start + 1)
        section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


@dataclass
class RunningClone:
    root: Path
    port: int
    make: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    up_since: float

    @property
    def tcp_uri(self) -> str:
        return f"storage+tcp://127.0.0.1:{self.port}/system"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM to the daemon (not to make); make's exit code once the daemon is gone."""
        if self.make.poll() is None:
            for pid in _daemon_pids(self.make.pid):
                os.kill(pid, signal.SIGTERM)
        return self.make.wait(20)


def _listening(port: int, unix_path: Path) -> bool:
    if not unix_path.exists():
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _daemon_pids(group: int) -> list[int]:
    """virtvold processes of the process group ``make run`` leads."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ProcessLookupError):
            continue
        if any(part.endswith(b"/virtvold") for part in cmdline[:2]):
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def running_clone() -> Iterator[RunningClone]:
    """A fresh clone of HEAD with ``make run PORT=...`` going in it."""
    top = Path(tempfile.mkdtemp(prefix="virtvol-first-run-", dir="/tmp"))
    env = _user_environment()
    root = top / "virtvol"
    log_path = top / "make-run.log"
    make: subprocess.Popen[bytes] | None = None
    try:
        _run(["git", "clone", "--quiet", str(REPO), str(root)], top, env)
        assert not (root / ".venv").exists()
        port = free_port()
        with log_path.open("wb") as output:
            make = subprocess.Popen(
                ["make", "run", f"PORT={port}"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + SETUP_TIMEOUT
        unix_path = root / ".virtvol-state" / "virtvold-sock"
        while not _listening(port, unix_path):
            assert make.poll() is None, (
                f"make run exited with {make.returncode}:\n{log_path.read_text(errors='replace')}"
            )
            assert time.monotonic() < deadline, (
                "make run did not listen in time:\n" + log_path.read_text(errors="replace")
            )
            time.sleep(0.2)
        yield RunningClone(root, port, make, log_path, env, time.monotonic())
    finally:
        if make is not None and make.poll() is None:
            for pid in _daemon_pids(make.pid):
                os.kill(pid, signal.SIGTERM)
            try:
                make.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()
        shutil.rmtree(top, ignore_errors=True)


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def _assert_image(path: Path) -> None:
    """The README's image: 1 GiB, "hello" at 512 MiB, zeros elsewhere, stored sparse."""
    assert path.stat().st_size == IMAGE_SIZE
    assert _allocated(path) < SPARSE_LIMIT, f"{path.name} is not sparse: {_allocated(path)} bytes"
    with path.open("rb") as handle:
        handle.seek(PAYLOAD_OFFSET - 4096)
        window = handle.read(8192)
    assert window == bytes(4096) + PAYLOAD + bytes(4096 - len(PAYLOAD))


@pytest.mark.timeout(SETUP_TIMEOUT + 60)
def test_make_run_then_first_steps(running_clone: RunningClone) -> None:
    clone = running_clone
    readme = (clone.root / "README.md").read_text()
    # The README opens with the two commands, `make run` first.
    first = _readme_blocks(readme, "")[0].splitlines()
    assert first[0].startswith("make run "), first
    assert first[1].startswith("make test "), first
    assert "127.0.0.1:16509" in first[0]

    # The first steps, as written; only the port is ours.
    steps = _readme_blocks(readme, "## First steps")[0]
    readme_uri = "storage+tcp://127.0.0.1/system"
    assert steps.count(readme_uri) >= 3, steps
    script = steps.replace(readme_uri, clone.tcp_uri)
    run = _run(["sh", "-e", "-c", script], clone.root, clone.env)
    pool = clone.root / ".virtvol-state" / "pools" / "default"
    _assert_image(clone.root / "disk.img")
    _assert_image(pool / "disk.img")
    _assert_image(clone.root / "copy.img")
    # `du -h copy.img` at the end: a few KiB.
    du = run.stdout.strip().splitlines()[-1].split()
    assert du[1] == "copy.img", run.stdout
    assert du[0].endswith("K") or du[0] == "0", run.stdout

    # virsh alone: download with --sparse.
    virsh = ["virsh", "-c", clone.tcp_uri]
    _run(
        [*virsh, "vol-download", "--pool", "default", "disk.img", "virsh-copy.img", "--sparse"],
        clone.root,
        clone.env,
    )
    _assert_image(clone.root / "virsh-copy.img")
    _run(["cmp", "disk.img", "virsh-copy.img"], clone.root, clone.env)

    # virtvol alone, the same commands as virsh.
    virtvol = [str(clone.root / ".venv" / "bin" / "virtvol"), "-c", clone.tcp_uri]
    _run(
        [*virtvol, "vol-create-as", "default", "v.img", "1G", "--allocation", "0"],
        clone.root,
        clone.env,
    )
    _run(
        [*virtvol, "vol-upload", "--pool", "default", "v.img", "disk.img", "--sparse"],
        clone.root,
        clone.env,
    )
    _run(
        [*virtvol, "vol-download", "--pool", "default", "v.img", "virtvol-copy.img", "--sparse"],
        clone.root,
        clone.env,
    )
    _assert_image(pool / "v.img")
    _assert_image(clone.root / "virtvol-copy.img")
    _run(["cmp", "disk.img", "virtvol-copy.img"], clone.root, clone.env)
    listing = _run([*virsh, "vol-list", "default"], clone.root, clone.env).stdout
    assert "disk.img" in listing
    assert "v.img" in listing

    took = time.monotonic() - clone.up_since
    assert took < USER_STEPS_BUDGET, f"the first steps took {took:.1f} s"
    assert clone.make.poll() is None, clone.log_text()
    assert clone.stop() == 0, clone.log_text()
    assert clone.log_text().rstrip().endswith("stopped"), clone.log_text()
