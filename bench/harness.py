"""Processes, timing and memory readings for the transfer benchmarks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tools import libvirtd_peer

if TYPE_CHECKING:
    from collections.abc import Sequence

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def traversable_tempdir(prefix: str) -> Path:
    """A temp dir that an unprivileged daemon (libvirtd as nobody) can enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_kib: int


def timed(argv: Sequence[str]) -> Run:
    """Run a command to completion; its wall time and peak resident memory."""
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({process.returncode}): {stderr}")
    return Run(seconds, int(usage.ru_maxrss))


def peak_rss_kib(pid: int) -> int:
    """The high-water mark of a running process's resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM so the next reading covers only what follows (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class Daemon:
    name: str
    pid: int
    uri: str
    pool: str
    pool_dir: Path
    workdir: Path

    def close(self) -> None:
        stop(self.pid)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_libvirtd(pki: Path | None = None) -> Daemon:
    """libvirtd with pool "bench"; with ``pki`` (see bench.pki) clients use TLS."""
    workdir = traversable_tempdir("virtvol-bench-libvirtd-")
    port = free_port()
    tls = libvirtd_peer.PeerTls(free_port(), pki) if pki is not None else None
    peer = libvirtd_peer.start(workdir / "state", port, tls=tls)
    pool_dir = workdir / "state" / "pool"
    uri = peer.tcp_uri
    subprocess.run(
        ["virsh", "-q", "-c", uri, f"pool-define-as bench dir --target {pool_dir}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["virsh", "-q", "-c", uri, "pool-start bench"], check=True, capture_output=True)
    if pki is not None:
        uri = peer.tls_uri(pki)
    return Daemon("libvirtd 9.0", peer.pid, uri, "bench", pool_dir, workdir)


def start_virtvold(pki: Path | None = None) -> Daemon:
    """virtvold with pool "bench"; with ``pki`` (see bench.pki) clients use TLS."""
    workdir = traversable_tempdir("virtvol-bench-virtvold-")
    port = free_port()
    pool_dir = workdir / "pool"
    pool_dir.mkdir()
    listen = ["--auth-tcp", "none", "--listen", f"tcp://127.0.0.1:{port}"]
    uri = f"storage+tcp://127.0.0.1:{port}/system"
    if pki is not None:
        config = workdir / "virtvold.toml"
        config.write_text(
            f'ca_file = "{pki / "cacert.pem"}"\n'
            f'cert_file = "{pki / "servercert.pem"}"\n'
            f'key_file = "{pki / "serverkey.pem"}"\n'
        )
        port = free_port()
        listen = ["--config", str(config), "--listen", f"tls://127.0.0.1:{port}"]
        uri = f"storage+tls://127.0.0.1:{port}/system?pkipath={pki}"
    process = subprocess.Popen(
        [
            str(VENV_BIN / "virtvold"),
            "--state-dir",
            str(workdir / "state"),
            "--pool",
            f"bench={pool_dir}",
            *listen,
            "--log-level",
            "warning",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return Daemon("virtvold", process.pid, uri, "bench", pool_dir, workdir)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
