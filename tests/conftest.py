"""Shared helpers and fixtures for tests that talk to real libvirt 9.0 peers.

API (keep it small; everything here is importable from ``conftest`` too):

``free_port() -> int``
    A TCP port on 127.0.0.1 that was free a moment ago, from a block of ports that is
    this pytest-xdist worker's alone: no other worker picks it, and the kernel never
    hands it out by itself (it is below the ephemeral range).

``reference_libvirtd`` (fixture, function scope) -> ``ReferenceLibvirtd``
    A fresh real libvirtd (Debian's 9.0, storage driver only, running as
    ``nobody``) started by ``tools/libvirtd_peer.py``, with all its state in a
    new world-traversable folder under /tmp. A persistent dir pool
    ``pool_name`` ("default") at ``pool_dir`` is defined and started. Fields:
    ``tcp_uri`` (``storage+tcp://127.0.0.1:PORT/session``), ``unix_uri``,
    ``pool_name``, ``pool_dir``, ``pid``, ``port``, ``state_dir``. The daemon is
    killed and the folder removed afterwards. Files in ``pool_dir`` are created
    by libvirtd as ``nobody`` (mode 0600); tests running as root can read them.
    Start-up takes well under a second. If libvirtd or its storage driver is
    missing, the fixture fails (it never skips).

``reference_libvirtd_with_secrets`` (fixture) -> ``ReferenceLibvirtd``
    The same with libvirt's secret driver loaded too, which an encrypted volume's XML
    needs.

``wait_until_ready(log_path, log_start, process, deadline) -> bool``
    Until a virtvold logging to ``log_path`` says it is ready (past byte ``log_start``):
    every listener serves and signals are handled. False if it exits or the
    ``time.monotonic()`` ``deadline`` passes first.

``run_virsh(uri, *args, check=True) -> CompletedProcess[str]``
    Runs ``virsh -c URI ARGS...`` (C locale, captured text output). With
    ``check`` a non-zero exit fails the test, showing stdout and stderr.

``run_system_python(code, *args, check=True) -> CompletedProcess[str]``
    Runs a python3-libvirt snippet with /usr/bin/python3 (the only interpreter
    that has the ``libvirt`` module); ``args`` become ``sys.argv[1:]``.

Import the helpers in test modules with ``from tests.conftest import ...``
(pytest's importlib import mode registers this module as ``tests.conftest``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tools import libvirtd_peer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

SYSTEM_PYTHON = "/usr/bin/python3"

# A shell starts a background job (`make test &`, a runner's detached step) with SIGINT
# ignored, and Python then leaves it ignored: the tests of what Ctrl-C does to virtvol
# (in-process and in child processes, which inherit an ignored signal) need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

POOL_NAME = "default"
_COMMAND_TIMEOUT = 60.0


# The ports free_port() hands out: below Linux's default ephemeral range (32768-60999),
# from which the kernel picks the port of every bind() to port 0 and of every outgoing
# connection, so nothing but free_port() lands on them. Each pytest-xdist worker has a
# block of its own: a port picked by one worker is bound by its daemon a moment (or, for
# a fresh `make run`, minutes) later, and the other worker must not pick it meanwhile.
TEST_PORTS = range(20000, 32768)


def _worker_ports() -> range:
    """This worker's block of ``TEST_PORTS`` (all of them without pytest-xdist)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = len(TEST_PORTS) // count
    start = TEST_PORTS.start + int(worker.removeprefix("gw")) * size
    return range(start, start + size)


WORKER_PORTS = _worker_ports()
# Ports go round the block, so a test never gets a port the worker handed out just
# before (which a daemon may be about to bind); a random start keeps a restarted
# worker off the ports its predecessor's daemons may still hold.
_next_ports = itertools.islice(
    itertools.cycle(WORKER_PORTS), random.randrange(len(WORKER_PORTS)), None
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 of this worker's block that was free a moment ago."""
    for _ in WORKER_PORTS:
        port = next(_next_ports)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, by this worker's daemons or by anything else
            return port
    raise RuntimeError(f"no free port in {WORKER_PORTS}")


def send_buffer_granted(requested: int) -> int:
    """What ``SO_SNDBUF`` reads back on a Unix socket after ``requested`` was set (Linux
    caps the request at ``net.core.wmem_max`` and books twice it): asked of a new socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, requested)
        granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        return granted


def default_send_buffer() -> int:
    """``SO_SNDBUF`` of a new Unix socket (``net.core.wmem_default``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        size: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        return size


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    env.pop("LANGUAGE", None)
    env.pop("LIBVIRT_DEFAULT_URI", None)
    return env


def _check(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        pytest.fail(
            f"{what} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )


def run_virsh(uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``virsh -c uri *args`` and return the completed process (text output)."""
    virsh = shutil.which("virsh")
    if virsh is None:
        pytest.fail("virsh missing: apt-get install -y libvirt-clients", pytrace=False)
    proc = subprocess.run(
        [virsh, "-c", uri, *args],
        capture_output=True,
        text=True,
        env=_env(),
        stdin=subprocess.DEVNULL,
        timeout=_COMMAND_TIMEOUT,
        check=False,
    )
    if check:
        _check(proc, "virsh " + " ".join(args))
    return proc


def run_system_python(
    code: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a python3-libvirt snippet with /usr/bin/python3; ``args`` are its argv[1:]."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} missing", pytrace=False)
    proc = subprocess.run(
        [SYSTEM_PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        env=_env(),
        stdin=subprocess.DEVNULL,
        timeout=_COMMAND_TIMEOUT,
        check=False,
    )
    if check:
        _check(proc, f"{SYSTEM_PYTHON} snippet")
    return proc


@dataclass(frozen=True)
class ReferenceLibvirtd:
    """A running reference libvirtd with an active dir pool."""

    tcp_uri: str
    unix_uri: str
    pool_name: str
    pool_dir: Path
    port: int
    state_dir: Path
    peer: libvirtd_peer.LibvirtdPeer

    @property
    def pid(self) -> int:
        return self.peer.pid


def start_reference_libvirtd(
    state_dir: Path, *, secret_driver: bool = False, settings: Sequence[str] = ()
) -> ReferenceLibvirtd:
    """Start libvirtd in ``state_dir`` (``settings``: more libvirtd.conf lines) and make
    the pool; raise RuntimeError on failure."""
    try:
        peer = libvirtd_peer.start(
            state_dir, free_port(), secret_driver=secret_driver, settings=settings
        )
    except libvirtd_peer.PeerError as exc:
        raise RuntimeError(str(exc)) from exc
    daemon = ReferenceLibvirtd(
        tcp_uri=peer.tcp_uri,
        unix_uri=peer.unix_uri,
        pool_name=POOL_NAME,
        pool_dir=state_dir / "pool",
        port=peer.port,
        state_dir=state_dir,
        peer=peer,
    )
    pool = run_virsh(
        daemon.tcp_uri,
        f"pool-define-as {POOL_NAME} dir --target {daemon.pool_dir}; pool-start {POOL_NAME}",
        check=False,
    )
    if pool.returncode != 0:
        peer.stop()
        raise RuntimeError(
            f"pool set-up on {daemon.tcp_uri} failed:\n{pool.stdout}{pool.stderr}"
            + peer.log_path.read_text(errors="replace")
        )
    return daemon


@pytest.fixture
def reference_libvirtd() -> Iterator[ReferenceLibvirtd]:
    """A fresh real libvirtd 9.0 with an active dir pool "default" (see module doc)."""
    yield from reference_libvirtd_with()


@pytest.fixture
def reference_libvirtd_with_secrets() -> Iterator[ReferenceLibvirtd]:
    """``reference_libvirtd`` with libvirt's secret driver loaded too."""
    yield from reference_libvirtd_with(secret_driver=True)


def reference_libvirtd_with(
    *, secret_driver: bool = False, settings: Sequence[str] = ()
) -> Iterator[ReferenceLibvirtd]:
    """A fixture's body: a fresh reference libvirtd (``start_reference_libvirtd``'s
    arguments) for the test, stopped and removed after it."""
    if shutil.which("libvirtd") is None and not Path("/usr/sbin/libvirtd").exists():
        pytest.fail(
            "libvirtd missing: apt-get install -y --no-install-recommends "
            "libvirt-daemon libvirt-clients",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("reference_libvirtd needs root (it runs libvirtd as nobody)", pytrace=False)
    errors: list[str] = []
    for _attempt in range(3):  # a port picked by free_port() can be taken meanwhile
        base = Path(tempfile.mkdtemp(prefix="virtvol-ref-", dir="/tmp"))
        base.chmod(0o755)
        try:
            daemon = start_reference_libvirtd(
                base / "state", secret_driver=secret_driver, settings=settings
            )
        except RuntimeError as exc:
            errors.append(str(exc))
            shutil.rmtree(base, ignore_errors=True)
            continue
        try:
            yield daemon
        finally:
            daemon.peer.stop()
            shutil.rmtree(base, ignore_errors=True)
        return
    pytest.fail("reference libvirtd did not start:\n" + "\n".join(errors), pytrace=False)


# -- virtvold (the daemon under test) ---------------------------------------------------
#
# ``virtvold`` (fixture, function scope) -> ``Virtvold``: a fresh daemon in a
# subprocess, with a TCP listener on a free port, a read-write and a read-only Unix
# socket, and an active persistent pool ``pool_name`` ("default") at ``pool_dir``, all
# under pytest's tmp_path. Fields: ``tcp_uri`` (storage+tcp://127.0.0.1:PORT/system),
# ``unix_uri``, ``ro_uri`` (the read-only socket), ``pool_name``, ``pool_dir``,
# ``state_dir``, ``port``, ``log_path``, ``process``. ``legacy_virtvold``: the same with
# ``--protocol legacy``. ``start_virtvold(base, *extra_args, preexec_fn=None)`` /
# ``stop_virtvold(d)``
# do it by hand (stop sends SIGTERM and waits; returns the exit code).


@dataclass(frozen=True)
class Virtvold:
    tcp_uri: str
    unix_uri: str
    ro_uri: str
    pool_name: str
    pool_dir: Path
    state_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


# What virtvold logs once every listener serves and its signal handlers are in place.
# Its sockets answer earlier: the first ones while it still binds the next (an extra
# --listen given last), and a SIGTERM or SIGHUP sent then ends it with no handler.
READY_LINE = b"virtvold ready"


def wait_until_ready(
    log_path: Path, log_start: int, process: subprocess.Popen[bytes], deadline: float
) -> bool:
    """Until the daemon logs ``READY_LINE`` past ``log_start`` (the log may hold earlier
    runs'); False if it exits or ``deadline`` passes first."""
    while time.monotonic() < deadline and process.poll() is None:
        with log_path.open("rb") as log:
            log.seek(log_start)
            if READY_LINE in log.read():
                return True
        time.sleep(0.02)
    return False


def start_virtvold(
    base: Path, *extra_args: str, preexec_fn: Callable[[], None] | None = None
) -> Virtvold:
    """Start virtvold with everything under ``base``; fails the test if it does not come up.

    ``preexec_fn`` runs in the child before the daemon starts (e.g. to lower a limit).
    """
    base.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        port = free_port()
        sock, ro_sock = base / "virtvold-sock", base / "virtvold-sock-ro"
        log_path = base / "virtvold.log"
        args = [
            sys.executable,
            "-m",
            "virtvol.daemon",
            "--state-dir",
            str(base / "state"),
            "--pool",
            f"{POOL_NAME}={base / 'pool'}",
            "--auth-tcp",
            "none",
            "--listen",
            f"tcp://127.0.0.1:{port}",
            "--listen",
            f"unix://{sock}",
            "--listen",
            f"unix-ro://{ro_sock}",
            *extra_args,
        ]
        with log_path.open("ab") as log:
            log_start = log.tell()
            process = subprocess.Popen(
                args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn
            )
        if wait_until_ready(log_path, log_start, process, time.monotonic() + 15.0):
            return Virtvold(
                tcp_uri=f"storage+tcp://127.0.0.1:{port}/system",
                unix_uri=f"storage+unix:///system?socket={sock}",
                ro_uri=f"storage+unix:///system?socket={ro_sock}",
                pool_name=POOL_NAME,
                pool_dir=base / "pool",
                state_dir=base / "state",
                port=port,
                log_path=log_path,
                process=process,
            )
        process.kill()
        process.wait()
    pytest.fail("virtvold did not start:\n" + log_path.read_text(errors="replace"), pytrace=False)


def stop_virtvold(daemon: Virtvold, timeout: float = 10.0) -> int:
    """SIGTERM, wait (SIGKILL after ``timeout``); returns the exit code."""
    if daemon.process.poll() is None:
        daemon.process.send_signal(signal.SIGTERM)
        try:
            return daemon.process.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
    return daemon.process.wait()


# The uid and gid of ``nobody``: a user without privileges, for what only root may do.
NOBODY = 65534


@contextlib.contextmanager
def small_file_system(image: Path, mount: Path, size: int, *mkfs: str) -> Iterator[Path]:
    """A file system made by the command ``mkfs`` (the image's path put last) in a file
    of ``size`` bytes at ``image``, mounted at ``mount`` (made if missing) from a loop
    device for the block's time. Mounting takes root."""
    if os.geteuid() != 0:
        pytest.fail("mounting a file system takes root", pytrace=False)
    with image.open("wb") as created:
        created.truncate(size)
    subprocess.run([*mkfs, str(image)], check=True)
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@contextlib.contextmanager
def small_tmpfs(mount: Path) -> Iterator[Path]:
    """A tmpfs of 1 MiB mounted at ``mount`` (made) for the block's time. Takes root."""
    if os.geteuid() != 0:
        pytest.fail("mounting a file system takes root", pytrace=False)
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def nobodys_folder() -> Iterator[Path]:
    """A folder of ``nobody``'s that ``nobody`` can reach (pytest's own are root's alone).
    Making it takes root."""
    if os.geteuid() != 0:
        pytest.fail("a folder of nobody's takes root to make", pytrace=False)
    folder = Path(tempfile.mkdtemp(prefix="virtvol-nobody-", dir="/tmp"))
    folder.chmod(0o755)
    os.chown(folder, NOBODY, NOBODY)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def virtvold(tmp_path: Path) -> Iterator[Virtvold]:
    """A fresh virtvold with an active pool "default" (see the section comment above)."""
    daemon = start_virtvold(tmp_path / "virtvold")
    try:
        yield daemon
    finally:
        stop_virtvold(daemon)


@pytest.fixture
def legacy_virtvold(tmp_path: Path) -> Iterator[Virtvold]:
    """Like ``virtvold``, started with ``--protocol legacy`` (no sparse streams)."""
    daemon = start_virtvold(tmp_path / "virtvold-legacy", "--protocol", "legacy")
    try:
        yield daemon
    finally:
        stop_virtvold(daemon)
