"""Where virtvold listens when not told: virtstoraged's Unix sockets, and no TCP.

libvirt 9.0's client, for ``storage:///system``, checks ``/var/run/libvirt/virtstoraged-sock``
(``-sock-ro`` when read-only) before ``libvirt-sock``, and for ``storage:///session`` (run
by a user other than root) ``$XDG_RUNTIME_DIR/libvirt/virtstoraged-sock``. Real ``virsh``
must reach virtvold through those paths with no ``?socket=``. The system paths are only
ever bound inside a private mount namespace with its own ``/run``, so nothing here touches
the machine's ``/run/libvirt``. Plain TCP opens only with ``auth_tcp = "none"``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import free_port, run_virsh
from virtvol.daemon.config import ConfigError, Overrides, default_listen, resolve
from virtvol.daemon.listeners import bind_all

if TYPE_CHECKING:
    from collections.abc import Iterator

VIRTVOLD = [sys.executable, "-m", "virtvol.daemon"]
REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = "operation forbidden: read only access prevents"


def _listeners(pid: int) -> tuple[set[str], list[str]]:
    """The Unix socket paths and TCP addresses process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    unix = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        # Flags 00010000: a listening socket (__SO_ACCEPTCON).
        if len(fields) >= 8 and fields[6] in inodes and fields[3] == "00010000":
            unix.add(fields[7])
    tcp = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                tcp.append(fields[1])
    return unix, tcp


def _wait_for_socket(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                time.sleep(0.02)
                continue
            return
    raise AssertionError(f"nothing listens on {path}:\n" + log.read_text(errors="replace"))


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temp dir that the user ``nobody`` may use (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="virtvol-defaults-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_system_mode_listens_on_virtstoraged_sockets_and_no_tcp(tmp_path: Path) -> None:
    sock_dir, log = tmp_path / "run-libvirt", tmp_path / "virtvold.log"
    argv = [
        *VIRTVOLD,
        "--system",
        "--unix-sock-dir",
        str(sock_dir),
        "--state-dir",
        str(tmp_path / "state"),
        "--pool",
        f"default={tmp_path / 'pool'}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    try:
        _wait_for_socket(sock_dir / "virtstoraged-sock-ro", process, log)
        unix, tcp = _listeners(process.pid)
        assert unix == {str(sock_dir / "virtstoraged-sock"), str(sock_dir / "virtstoraged-sock-ro")}
        assert tcp == [], log.read_text()
        assert stat.S_IMODE((sock_dir / "virtstoraged-sock").stat().st_mode) == 0o700
        assert stat.S_IMODE((sock_dir / "virtstoraged-sock-ro").stat().st_mode) == 0o777
        rw = f"storage+unix:///system?socket={sock_dir / 'virtstoraged-sock'}"
        ro = f"storage+unix:///system?socket={sock_dir / 'virtstoraged-sock-ro'}"
        assert (
            "Vol a.img created" in run_virsh(rw, "vol-create-as", "default", "a.img", "1M").stdout
        )
        refused = run_virsh(ro, "vol-create-as", "default", "b", "1M", check=False)
        assert FORBIDDEN in refused.stderr
    finally:
        assert _stop(process) == 0, log.read_text()
    assert "without authentication" not in log.read_text()


def test_plain_tcp_is_refused_without_auth_tcp_none(tmp_path: Path) -> None:
    port = free_port()
    base = ["--state-dir", str(tmp_path / "state"), "--pool", f"default={tmp_path / 'pool'}"]
    listen = ["--listen", f"tcp://127.0.0.1:{port}"]
    refused = subprocess.run(
        [*VIRTVOLD, *base, *listen], capture_output=True, text=True, timeout=30, check=False
    )
    assert refused.returncode == 2, refused.stderr
    assert f"tcp://127.0.0.1:{port}: plain TCP is unauthenticated" in refused.stderr
    assert 'auth_tcp = "none"' in refused.stderr
    assert "--auth-tcp none" in refused.stderr
    assert not (tmp_path / "state").exists()  # refused before touching anything

    config = tmp_path / "virtvold.toml"
    config.write_text(f'listen = ["tcp://127.0.0.1:{port}"]\nauth_tcp = "sasl"\n')
    refused = subprocess.run(
        [*VIRTVOLD, *base, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert 'auth_tcp = "none"' in refused.stderr

    config.write_text(f'listen = ["tcp://127.0.0.1:{port}"]\nauth_tcp = "none"\n')
    log = tmp_path / "virtvold.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*VIRTVOLD, *base, "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:
        deadline = time.monotonic() + 15
        while "virtvold ready" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        listing = run_virsh(f"storage+tcp://127.0.0.1:{port}/system", "pool-list").stdout
        assert " default   active   yes" in listing
    finally:
        assert _stop(process) == 0, log.read_text()
    assert (
        f"virtvold WARNING virtvol.daemon: listening on tcp://127.0.0.1:{port} without"
        ' authentication (auth_tcp = "none")'
    ) in log.read_text()


def test_virsh_storage_session_reaches_virtvold_in_session_mode(shared_dir: Path) -> None:
    """``virsh -c storage:///session`` run by a user finds virtvold's session socket.

    libvirt uses the session paths only for users other than root, so virsh runs as
    ``nobody``. The daemon runs in session mode with the same ``XDG_RUNTIME_DIR`` (as
    root: the test's Python lives where ``nobody`` cannot read it), and the test opens
    its socket to ``nobody`` as that user's own daemon would own it.
    """
    nobody = pwd.getpwnam("nobody")
    runtime = shared_dir / "runtime"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, nobody.pw_uid, nobody.pw_gid)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(shared_dir),
        "XDG_RUNTIME_DIR": str(runtime),
        "LC_ALL": "C",
        # Should virtvold be down, virsh would spawn a libvirtd of its own: not here.
        "LIBVIRT_AUTOSTART": "0",
    }
    log = shared_dir / "virtvold.log"
    argv = [
        *VIRTVOLD,
        "--session",
        "--state-dir",
        str(shared_dir / "state"),
        "--pool",
        f"default={shared_dir / 'pool'}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv,
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    socket_path = runtime / "libvirt" / "virtstoraged-sock"
    try:
        _wait_for_socket(socket_path, process, log)
        unix, tcp = _listeners(process.pid)
        assert unix == {str(socket_path)}, unix  # libvirt has no read-only session socket
        assert tcp == []
        # Made by the daemon, as libvirt's $XDG_RUNTIME_DIR/libvirt: its owner's alone.
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        os.chown(socket_path.parent, nobody.pw_uid, nobody.pw_gid)
        socket_path.chmod(0o666)

        def virsh(*command: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["virsh", *flags, "-c", "storage:///session", *command],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                user=nobody.pw_uid,
                group=nobody.pw_gid,
                extra_groups=[],
            )

        listing = virsh("pool-list")
        assert listing.returncode == 0, listing.stderr
        assert " default   active   yes" in listing.stdout
        created = virsh("vol-create-as", "default", "s.img", "1M")
        assert created.returncode == 0, created.stderr
        assert (shared_dir / "pool" / "s.img").stat().st_size == 1 << 20
        # Read-only in session mode: the same socket, the connection opened read-only.
        refused = virsh("vol-create-as", "default", "r.img", "1M", flags=("-r",))
        assert refused.returncode == 1
        assert FORBIDDEN in refused.stderr
        assert not (shared_dir / "pool" / "r.img").exists()
    finally:
        assert _stop(process) == 0, log.read_text()
    assert not socket_path.exists()


# Runs as root inside ``unshare -m``: /run and /var/lib are fresh tmpfs and /etc an
# overlay, so the real paths can be used without touching the machine's.
_IN_PRIVATE_NAMESPACE = r"""
import json, os, socket, subprocess, sys, time
work = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
# Should the config file go unread, the default state dir is private too.
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/var/lib"], check=True)
os.makedirs(f"{work}/upper/virtvol")
os.makedirs(f"{work}/overlay-work")
subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir=/etc,upperdir={work}/upper,workdir={work}/overlay-work", "/etc"],
               check=True)
with open("/etc/virtvol/virtvold.toml", "w") as handle:
    handle.write(f'state_dir = "{work}/state"\n[pools]\ndefault = "{work}/pool"\n')
result = {}
log = open(f"{work}/virtvold.log", "wb")
daemon = subprocess.Popen([sys.executable, "-m", "virtvol.daemon"], stdin=subprocess.DEVNULL,
                          stdout=log, stderr=log)
try:
    deadline = time.monotonic() + 15
    while not os.path.exists("/run/libvirt/virtstoraged-sock-ro"):
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("virtvold did not start")
        time.sleep(0.02)
    result["sockets"] = sorted(os.listdir("/run/libvirt"))
    def virsh(*args):
        done = subprocess.run(["virsh", *args], capture_output=True, text=True, timeout=60)
        return [done.returncode, done.stdout, done.stderr]
    result["pool_list"] = virsh("-c", "storage:///system", "pool-list")
    result["create"] = virsh("-c", "storage:///system", "vol-create-as", "default", "x.img", "1M")
    result["ro_list"] = virsh("-r", "-c", "storage:///system", "vol-list", "default")
    result["ro_create"] = virsh("-r", "-c", "storage:///system", "vol-create-as", "default",
                                "y.img", "1M")
finally:
    daemon.terminate()
    result["exit"] = daemon.wait(15)
print(json.dumps(result))
"""


def test_virsh_storage_system_reaches_virtvold_with_no_arguments(tmp_path: Path) -> None:
    """``virtvold`` alone (config from /etc/virtvol/virtvold.toml) and plain ``virsh``."""
    tmp_path.chmod(0o755)
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            _IN_PRIVATE_NAMESPACE,
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    log = (tmp_path / "virtvold.log").read_text(errors="replace")
    assert done.returncode == 0, done.stderr + log
    result = json.loads(done.stdout)
    assert result["sockets"] == ["virtstoraged-sock", "virtstoraged-sock-ro"]
    code, listing, error = result["pool_list"]
    assert code == 0, error
    assert " default   active   yes" in listing
    assert result["create"][0] == 0, result["create"]
    assert (tmp_path / "pool" / "x.img").stat().st_size == 1 << 20
    assert "x.img" in result["ro_list"][1], result["ro_list"]
    assert result["ro_create"][0] == 1
    assert FORBIDDEN in result["ro_create"][2]
    assert not (tmp_path / "pool" / "y.img").exists()
    assert result["exit"] == 0, log
    assert "listening on unix:///run/libvirt/virtstoraged-sock\n" in log
    assert "listening on unix-ro:///run/libvirt/virtstoraged-sock-ro (read-only)" in log
    assert "tcp" not in log


def test_settings_for_sockets_and_tcp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_listen("session") == ["unix:///run/user/1000/libvirt/virtstoraged-sock"]
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/home/u/.cache")
    assert default_listen("session") == ["unix:///home/u/.cache/libvirt/virtstoraged-sock"]
    assert default_listen("system") == [
        "unix:///run/libvirt/virtstoraged-sock",
        "unix-ro:///run/libvirt/virtstoraged-sock-ro",
    ]
    config = tmp_path / "virtvold.toml"
    config.write_text('auth_tcp = "none"\nunix_sock_dir = "/srv/sock"\n')
    settings = resolve(Overrides(config_file=str(config), mode="system"))
    assert settings.plain_tcp_allowed
    assert settings.effective_listen() == [
        "unix:///srv/sock/virtstoraged-sock",
        "unix-ro:///srv/sock/virtstoraged-sock-ro",
    ]
    assert not resolve(Overrides(config_file=str(config), auth_tcp="sasl")).plain_tcp_allowed
    for bad, message in [
        ('auth_tcp = "None"', "auth_tcp must be one of sasl, none"),
        ('unix_sock_dir = "run"', "unix_sock_dir must be an absolute path"),
    ]:
        config.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=message):
            resolve(Overrides(config_file=str(config)))


@pytest.mark.parametrize(("private", "modes"), [(True, (0o700, 0o700)), (False, (0o755, 0o755))])
def test_socket_directories_are_made_private_for_a_session_daemon(
    tmp_path: Path, private: bool, modes: tuple[int, int]
) -> None:
    """A session daemon makes its socket directories 0700 (libvirt's
    ``$XDG_RUNTIME_DIR/libvirt``), the system daemon 0755, whatever the umask; a
    directory that exists already keeps its mode."""
    runtime = tmp_path / "runtime"
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o750)
    existing.chmod(0o750)
    previous = os.umask(0)
    try:
        bound = bind_all(
            [
                f"unix://{runtime}/libvirt/virtstoraged-sock",
                f"unix-ro://{existing}/virtstoraged-sock-ro",
            ],
            private_dirs=private,
        )
    finally:
        os.umask(previous)
    try:
        assert (
            stat.S_IMODE(runtime.stat().st_mode),
            stat.S_IMODE((runtime / "libvirt").stat().st_mode),
        ) == modes
        assert stat.S_IMODE(existing.stat().st_mode) == 0o750
        assert stat.S_IMODE((runtime / "libvirt" / "virtstoraged-sock").stat().st_mode) == 0o700
        assert stat.S_IMODE((existing / "virtstoraged-sock-ro").stat().st_mode) == 0o777
    finally:
        for item in bound:
            item.close()
