"""The ``virtvold`` executable as a service: socket activation, sd_notify, SIGTERM, SIGHUP.

Everything here runs the installed ``virtvold`` script (the console entry point next to
the interpreter), the way a unit file would, and talks to it with the real peers:
``systemd-socket-activate`` hands it its listeners, ``virsh`` and python3-libvirt use
it, and a datagram socket bound by the test stands in for systemd's ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import free_port, run_virsh

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NAMES = "virtvold.socket:virtvold-ro.socket:virtvold-tcp.socket"
FORBIDDEN = "operation forbidden: read only access prevents virStorageVolCreateXML"
SYSTEM_PYTHON = "/usr/bin/python3"


def virtvold_executable() -> str:
    """The ``virtvold`` console script of the environment running the tests."""
    candidate = Path(sys.executable).parent / "virtvold"
    if not candidate.is_file():
        found = shutil.which("virtvold")
        assert found is not None, f"virtvold is not installed next to {sys.executable}"
        return found
    return str(candidate)


def _environment(**extra: str) -> dict[str, str]:
    """The test's environment without any systemd variables of its own, plus ``extra``."""
    drop = {
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    }
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env["LC_ALL"] = "C"
    env.update(extra)
    return env


@pytest.fixture
def base() -> Iterator[Path]:
    """A short directory under /tmp: Unix socket paths must stay below 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vvd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _wait(
    condition: Callable[[], bool], what: str, timeout: float, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited ({process.returncode}) while waiting: {what}"
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM and wait; SIGKILL if it hangs (then the test fails on the exit code)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def _refused_tcp(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(("127.0.0.1", port))
        except (ConnectionRefusedError, ConnectionResetError):
            # Reset: the connection was queued just as the listener closed.
            return True
    return False


# --------------------------------------------------------------------------------------------
# a stand-in for systemd's notification socket
# --------------------------------------------------------------------------------------------


@dataclass
class NotifyReceiver:
    """A bound ``AF_UNIX`` datagram socket; ``address`` is the ``NOTIFY_SOCKET`` value."""

    address: str
    sock: socket.socket
    messages: list[dict[str, str]] = field(default_factory=list)

    def receive(self, timeout: float) -> bool:
        """Read one datagram into ``messages``; False when none came within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return False
        lines = data.decode().splitlines()
        assert lines, "empty notification"
        self.messages.append(dict(line.split("=", 1) for line in lines))
        return True

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15.0) -> dict[str, str]:
        """The next message (from now on) carrying ``key`` (with ``value`` if given)."""
        deadline = time.monotonic() + timeout
        while True:
            start = len(self.messages)
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {key}={value or '*'} within {timeout} s: {self.messages}"
            if not self.receive(remaining):
                continue
            for message in self.messages[start:]:
                if key in message and (value is None or message[key] == value):
                    return message

    def drain(self) -> None:
        while self.receive(0.01):
            pass


@pytest.fixture(params=["path", "abstract"])
def notify_receiver(request: pytest.FixtureRequest, base: Path) -> Iterator[NotifyReceiver]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if request.param == "path":
            address = str(base / "notify")
            sock.bind(address)
        else:
            name = f"virtvol-test-{uuid.uuid4().hex}"
            sock.bind(b"\0" + name.encode())
            address = "@" + name
        yield NotifyReceiver(address, sock)


@pytest.fixture
def path_notify_receiver(base: Path) -> Iterator[NotifyReceiver]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        address = str(base / "notify")
        sock.bind(address)
        yield NotifyReceiver(address, sock)


# --------------------------------------------------------------------------------------------
# virtvold started by hand, with its own listeners
# --------------------------------------------------------------------------------------------


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    pool_dir: Path
    log_path: Path

    @property
    def tcp_uri(self) -> str:
        return f"storage+tcp://127.0.0.1:{self.port}/system"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_daemon(
    base: Path,
    notify: NotifyReceiver,
    *extra_args: str,
    env: dict[str, str] | None = None,
    shell_prefix: str | None = None,
) -> Daemon:
    """Start virtvold (TCP on a free port, pool "default") and wait for its READY=1."""
    port = free_port()
    pool_dir = base / "pool"
    log_path = base / "virtvold.log"
    argv = [
        virtvold_executable(),
        "--state-dir",
        str(base / "state"),
        "--pool",
        f"default={pool_dir}",
        "--auth-tcp",
        "none",
        "--listen",
        f"tcp://127.0.0.1:{port}",
        *extra_args,
    ]
    if shell_prefix is not None:
        argv = ["sh", "-c", f'{shell_prefix} exec "$0" "$@"', *argv]
    environment = _environment(NOTIFY_SOCKET=notify.address, **(env or {}))
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            argv, env=environment, stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    daemon = Daemon(process, port, pool_dir, log_path)
    try:
        ready = notify.wait_for("READY", "1")
    except AssertionError:
        _stop(process)
        raise AssertionError("no READY=1 from virtvold:\n" + daemon.log_text()) from None
    # READY=1 comes once the daemon serves: the first connection must work at once.
    assert "STATUS" in ready, ready
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    return daemon


# --------------------------------------------------------------------------------------------
# socket activation
# --------------------------------------------------------------------------------------------


def _socket_activate() -> str:
    program = shutil.which("systemd-socket-activate")
    assert program is not None, (
        "systemd-socket-activate missing: install the Debian package systemd"
    )
    return program


def _listening_lines(log_path: Path) -> int:
    return log_path.read_text(errors="replace").count("Listening on ")


def test_virsh_through_each_activated_socket(base: Path) -> None:
    rw, ro, port = base / "rw", base / "ro", free_port()
    log_path = base / "activate.log"
    argv = [
        _socket_activate(),
        f"--listen={rw}",
        f"--listen={ro}",
        f"--listen=127.0.0.1:{port}",
        f"--fdname={NAMES}",
        virtvold_executable(),
        "--state-dir",
        str(base / "state"),
        "--pool",
        f"default={base / 'pool'}",
        "--auth-tcp",
        "none",
    ]
    # Without --accept, the first connection on any socket starts one daemon and it gets
    # all three listening descriptors at once.
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            argv, env=_environment(), stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    try:
        _wait(lambda: _listening_lines(log_path) == 3, "three activated sockets", 15, process)
        rw_uri = f"storage+unix:///system?socket={rw}"
        ro_uri = f"storage+unix:///system?socket={ro}"
        tcp_uri = f"storage+tcp://127.0.0.1:{port}/system"

        assert " default   active   yes" in run_virsh(rw_uri, "pool-list").stdout
        created = run_virsh(rw_uri, "vol-create-as", "default", "rw.img", "1M")
        assert "Vol rw.img created" in created.stdout

        listing = run_virsh(ro_uri, "pool-list").stdout
        assert " default   active   yes" in listing
        refused = run_virsh(ro_uri, "vol-create-as", "default", "ro.img", "1M", check=False)
        assert refused.returncode == 1
        assert FORBIDDEN in refused.stderr
        assert not (base / "pool" / "ro.img").exists()

        assert " default   active   yes" in run_virsh(tcp_uri, "pool-list").stdout
        assert "rw.img" in run_virsh(tcp_uri, "vol-list", "default").stdout
    finally:
        code = _stop(process)
    log = log_path.read_text(errors="replace")
    assert code == 0, log
    assert log.count("Execing ") == 1, log
    for label in (f"systemd:{rw}", f"systemd-ro:{ro} (read-only)", "systemd-tcp:('127.0.0.1'"):
        assert f"listening on {label}" in log, log
    assert 'without authentication (auth_tcp = "none")' in log, log
    # The daemon serves only what it was handed: no listener of its own.
    assert log.count("virtvold INFO virtvol.daemon: listening on ") == 3, log
    # The socket files belong to the activator: the daemon leaves them alone.
    assert rw.exists()
    assert ro.exists()


@pytest.mark.parametrize(
    ("fdnames", "extra", "message"),
    [
        (
            ["--fdname=virtvold.socket:virtvold-admin.socket"],
            [],
            "Some activation file descriptors are unclaimed: virtvold-admin.socket (1)",
        ),
        # systemd-socket-activate without --fdname passes no LISTEN_FDNAMES at all.
        ([], [], "Missing LISTEN_FDNAMES env from systemd socket activation"),
        (
            ["--fdname=virtvold.socket:virtvold-ro.socket"],
            ["--listen", "unix:///nonexistent/virtvold-sock"],
            "listen addresses (--listen or the config file's listen) cannot be combined"
            " with systemd socket activation",
        ),
    ],
    ids=["unclaimed", "unnamed", "with-listen"],
)
def test_activation_the_daemon_cannot_use_stops_the_start(
    base: Path, fdnames: list[str], extra: list[str], message: str
) -> None:
    first, second = base / "first", base / "second"
    log_path = base / "activate.log"
    argv = [
        _socket_activate(),
        f"--listen={first}",
        f"--listen={second}",
        *fdnames,
        virtvold_executable(),
        "--state-dir",
        str(base / "state"),
        *extra,
    ]
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            argv, env=_environment(), stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    try:
        _wait(lambda: _listening_lines(log_path) == 2, "two activated sockets", 15, process)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(15)
            client.connect(str(first))
            code = process.wait(15)
            # The daemon went away without serving: the queued connection just ends.
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(100) == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text(errors="replace")
    assert code == 1, log
    assert f"virtvold ERROR virtvol.daemon: {message}" in log, log
    assert "ready" not in log, log


def test_activated_tcp_socket_without_auth_tcp_none_stops_the_start(base: Path) -> None:
    """virtvold-tcp.socket enabled but auth_tcp left at its default: no plain TCP served."""
    rw, port = base / "rw", free_port()
    log_path = base / "activate.log"
    argv = [
        _socket_activate(),
        f"--listen={rw}",
        f"--listen=127.0.0.1:{port}",
        "--fdname=virtvold.socket:virtvold-tcp.socket",
        virtvold_executable(),
        "--state-dir",
        str(base / "state"),
    ]
    with log_path.open("ab") as output:
        process = subprocess.Popen(
            argv, env=_environment(), stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    try:
        _wait(lambda: _listening_lines(log_path) == 2, "two activated sockets", 15, process)
        with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
            code = process.wait(15)
            with contextlib.suppress(ConnectionResetError):
                assert client.recv(100) == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = log_path.read_text(errors="replace")
    assert code == 1, log
    assert "the TCP socket from systemd: plain TCP is unauthenticated" in log, log
    assert 'auth_tcp = "none"' in log, log
    assert "ready" not in log, log


# --------------------------------------------------------------------------------------------
# sd_notify: READY, STATUS, STOPPING, watchdog
# --------------------------------------------------------------------------------------------


def test_ready_then_stopping(base: Path, notify_receiver: NotifyReceiver) -> None:
    daemon = start_daemon(base, notify_receiver)
    ready = notify_receiver.messages[-1]
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("0 connections, 0 streams, "), ready
    assert "WATCHDOG" not in {key for message in notify_receiver.messages for key in message}
    run_virsh(daemon.tcp_uri, "pool-list")
    daemon.process.send_signal(signal.SIGTERM)
    stopping = notify_receiver.wait_for("STOPPING", "1")
    assert stopping == {"STOPPING": "1"}
    assert daemon.process.wait(15) == 0
    assert "READY" not in notify_receiver.messages[-1]


def test_watchdog_pings_and_status_updates(
    base: Path, path_notify_receiver: NotifyReceiver
) -> None:
    receiver = path_notify_receiver
    # WatchdogSec=0.4s; systemd sets WATCHDOG_PID to the main pid, here the exec'd daemon's.
    daemon = start_daemon(
        base, receiver, env={"WATCHDOG_USEC": "400000"}, shell_prefix="WATCHDOG_PID=$$"
    )
    try:
        first = time.monotonic()
        for _ in range(4):
            receiver.wait_for("WATCHDOG", "1", timeout=2.0)
        # Pings come every half interval (0.2 s): four take well under the 0.4 s timeout each.
        assert time.monotonic() - first < 2.0
        run_virsh(daemon.tcp_uri, "vol-create-as", "default", "v", "1M")
        # The status line is refreshed on its own (every few seconds) with the counters.
        status = receiver.wait_for("STATUS", timeout=10.0)
        assert status["STATUS"].startswith("0 connections, 0 streams, "), status
        assert status["STATUS"].endswith(" connections served"), status
        served = int(status["STATUS"].rsplit(", ", 1)[1].split()[0])
        assert served >= 2, status  # the readiness probe and virsh
    finally:
        assert _stop(daemon.process) == 0, daemon.log_text()
    receiver.drain()
    assert any(message.get("STOPPING") == "1" for message in receiver.messages)


def test_watchdog_meant_for_another_process_is_ignored(
    base: Path, path_notify_receiver: NotifyReceiver
) -> None:
    receiver = path_notify_receiver
    daemon = start_daemon(base, receiver, env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    try:
        receiver.drain()
        time.sleep(0.5)
        receiver.drain()
        assert all("WATCHDOG" not in message for message in receiver.messages)
    finally:
        assert _stop(daemon.process) == 0, daemon.log_text()


# --------------------------------------------------------------------------------------------
# SIGHUP: reload the configuration
# --------------------------------------------------------------------------------------------


def test_sighup_reloads_the_config_file(base: Path, path_notify_receiver: NotifyReceiver) -> None:
    receiver = path_notify_receiver
    config = base / "virtvold.toml"
    config.write_text('log_level = "info"\n')
    daemon = start_daemon(base, receiver, "--config", str(config))
    try:
        assert "extra" not in run_virsh(daemon.tcp_uri, "pool-list", "--all").stdout
        config.write_text(f'log_level = "info"\n[pools]\nextra = "{base / "extra"}"\n')
        daemon.process.send_signal(signal.SIGHUP)
        reloading = receiver.wait_for("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        ready = receiver.wait_for("READY", "1")
        assert "STATUS" in ready
        listing = run_virsh(daemon.tcp_uri, "pool-list").stdout
        assert " extra     active   yes" in listing, listing
        assert " default   active   yes" in listing, listing
        assert (base / "extra").is_dir()
        run_virsh(daemon.tcp_uri, "vol-create-as", "extra", "x.img", "1M")
        assert (base / "extra" / "x.img").exists()

        # A broken file is reported and the running configuration stays.
        config.write_text("[pools\n")
        daemon.process.send_signal(signal.SIGHUP)
        receiver.wait_for("READY", "1")
        assert daemon.process.poll() is None
        assert "reload failed, keeping the running configuration" in daemon.log_text()
        assert " extra     active   yes" in run_virsh(daemon.tcp_uri, "pool-list").stdout
    finally:
        assert _stop(daemon.process) == 0, daemon.log_text()


# Run by the daemon's interpreter at its start (a ``sitecustomize`` on its PYTHONPATH):
# half a second between the daemon's start and its serving loop.
_LATE_SERVING_LOOP = """
import time
from virtvol.daemon import service

_serve = service.Daemon.run_until_stopped


async def _late(self):
    time.sleep(0.5)
    await _serve(self)


service.Daemon.run_until_stopped = _late
"""


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["reload", "stop"])
def test_a_signal_sent_as_soon_as_the_daemon_is_ready_finds_it_handling_signals(
    base: Path, path_notify_receiver: NotifyReceiver, sig: signal.Signals
) -> None:
    """systemd sends a reload (SIGHUP) or a stop (SIGTERM) the moment it hears READY=1,
    and a signal that finds no handler yet ends the process: READY=1 must come only once
    the daemon handles them. The daemon is slowed between its start and its serving
    loop, where that moment used to be."""
    hooks = base / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_LATE_SERVING_LOOP)
    daemon = start_daemon(base, path_notify_receiver, env={"PYTHONPATH": str(hooks)})
    daemon.process.send_signal(sig)
    if sig == signal.SIGHUP:
        path_notify_receiver.wait_for("READY", "1")  # reloaded
        assert daemon.process.poll() is None, daemon.log_text()
        assert _stop(daemon.process) == 0, daemon.log_text()
    else:
        assert daemon.process.wait(15) == 0, daemon.log_text()


def test_a_pool_that_cannot_be_set_up_holds_up_no_other_part_of_a_reload(
    base: Path, path_notify_receiver: NotifyReceiver
) -> None:
    """A reload sets up each pool of the settings in turn: one whose folder cannot be made
    (a file where a parent folder should be, a mount that is not there) is reported, and
    the pools after it, the log level and the TLS settings are still taken up."""
    receiver = path_notify_receiver
    config = base / "virtvold.toml"
    config.write_text('log_level = "info"\n')
    daemon = start_daemon(base, receiver, "--config", str(config))
    try:
        (base / "a-file").write_bytes(b"")
        config.write_text(
            'log_level = "debug"\n[pools]\n'
            f'blocked = "{base / "a-file" / "pool"}"\nextra = "{base / "extra"}"\n'
        )
        daemon.process.send_signal(signal.SIGHUP)
        receiver.wait_for("READY", "1")
        listing = run_virsh(daemon.tcp_uri, "pool-list").stdout
        assert " extra     active   yes" in listing, listing
        log = daemon.log_text()
        assert "cannot set up storage pool 'blocked'" in log, log
        assert "configuration reloaded" in log, log
    finally:
        assert _stop(daemon.process) == 0, daemon.log_text()


# --------------------------------------------------------------------------------------------
# SIGTERM: drain, never a half-written volume
# --------------------------------------------------------------------------------------------

# A slow python3-libvirt producer: a whole-volume upload in CHUNK-byte pieces, DELAY seconds
# apart. Prints "started" after the first piece, then "finished" or "failed: ...".
# argv: URI VOLUME SOURCE CHUNK DELAY
_SLOW_UPLOAD = r"""
import sys, time, libvirt

uri, volume, source, chunk, delay = sys.argv[1:6]
chunk, delay = int(chunk), float(delay)
libvirt.registerErrorHandler(lambda *args: None, None)
data = open(source, "rb").read()
conn = libvirt.open(uri)
vol = conn.storagePoolLookupByName("default").storageVolLookupByName(volume)
stream = conn.newStream(0)
try:
    vol.upload(stream, 0, 0, 0)
    for offset in range(0, len(data), chunk):
        piece = data[offset:offset + chunk]
        while piece:
            piece = piece[stream.send(piece):]
        if offset == 0:
            print("started", flush=True)
        time.sleep(delay)
    stream.finish()
except libvirt.libvirtError as exc:
    print("failed:", exc.get_error_message(), flush=True)
    sys.exit(3)
print("finished", flush=True)
try:
    conn.close()
except libvirt.libvirtError:
    pass
"""

VOLUME_SIZE = 2 << 20


def _start_slow_upload(
    daemon: Daemon, base: Path, chunk: int, delay: float
) -> tuple[subprocess.Popen[str], bytes, bytes]:
    """Create volume "v" holding old content; start the upload of new content into it."""
    run_virsh(daemon.tcp_uri, "vol-create-as", "default", "v", str(VOLUME_SIZE))
    old, new = os.urandom(VOLUME_SIZE), os.urandom(VOLUME_SIZE)
    (daemon.pool_dir / "v").write_bytes(old)
    source = base / "new.img"
    source.write_bytes(new)
    client = subprocess.Popen(
        [
            SYSTEM_PYTHON,
            "-c",
            _SLOW_UPLOAD,
            daemon.tcp_uri,
            "v",
            str(source),
            str(chunk),
            str(delay),
        ],
        env=_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    line = client.stdout.readline()
    if line != "started\n":
        client.kill()
        _, err = client.communicate()
        raise AssertionError(f"upload did not start: {line!r}\n{err}\n{daemon.log_text()}")
    return client, old, new


def _assert_new_connections_refused(daemon: Daemon, client: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 5
    while not _refused_tcp(daemon.port):
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.02)
    # Refused while the upload is still on its way.
    assert client.poll() is None
    refused = run_virsh(daemon.tcp_uri, "pool-list", check=False)
    assert refused.returncode != 0
    assert "Connection refused" in refused.stderr, refused.stderr


def test_sigterm_lets_a_running_upload_finish(
    base: Path, path_notify_receiver: NotifyReceiver
) -> None:
    config = base / "virtvold.toml"
    config.write_text("shutdown_timeout = 30\n")
    daemon = start_daemon(base, path_notify_receiver, "--config", str(config))
    client: subprocess.Popen[str] | None = None
    try:
        # 32 pieces of 64 KiB, 0.05 s apart: about 1.6 s, well inside the drain timeout.
        client, _old, new = _start_slow_upload(daemon, base, 64 << 10, 0.05)
        signalled = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        path_notify_receiver.wait_for("STOPPING", "1")
        _assert_new_connections_refused(daemon, client)
        out, err = client.communicate(timeout=30)
        assert client.returncode == 0, out + err
        assert out.endswith("finished\n"), out
        assert daemon.process.wait(15) == 0, daemon.log_text()
        assert time.monotonic() - signalled < 15
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        _stop(daemon.process)
    assert (daemon.pool_dir / "v").read_bytes() == new
    assert sorted(os.listdir(daemon.pool_dir)) == ["v"]
    log = daemon.log_text()
    assert "upload default/v" in log, log
    assert "aborting streams" not in log, log
    assert log.rstrip().endswith("stopped"), log


def test_sigterm_aborts_an_upload_past_the_drain_timeout(
    base: Path, path_notify_receiver: NotifyReceiver
) -> None:
    config = base / "virtvold.toml"
    config.write_text("shutdown_timeout = 1\n")
    daemon = start_daemon(base, path_notify_receiver, "--config", str(config))
    client: subprocess.Popen[str] | None = None
    try:
        # 512 pieces of 4 KiB, 0.02 s apart: about 10 s, far beyond the 1 s drain timeout.
        client, old, _new = _start_slow_upload(daemon, base, 4 << 10, 0.02)
        signalled = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        _assert_new_connections_refused(daemon, client)
        assert daemon.process.wait(15) == 0, daemon.log_text()
        stopped_after = time.monotonic() - signalled
        out, err = client.communicate(timeout=30)
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        _stop(daemon.process)
    # The timeout, plus a little for the clean-up: not the 10 s the upload would need.
    assert 0.9 < stopped_after < 5, stopped_after
    assert client.returncode == 3, out + err
    assert out.startswith("failed:"), out
    # The old content, untouched; no partial file left beside it.
    assert (daemon.pool_dir / "v").read_bytes() == old
    assert sorted(os.listdir(daemon.pool_dir)) == ["v"]
    log = daemon.log_text()
    assert "stopping: aborting streams still running after the timeout" in log, log
    assert log.rstrip().endswith("stopped"), log
