"""systemd glue: sd_notify datagrams, socket activation and the unit files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from virtvol.daemon import systemd as sd

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
UNITS_DIR = REPO / "systemd"
UNIT_NAMES = ("virtvold.service", "virtvold.socket", "virtvold-ro.socket", "virtvold-tcp.socket")
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


# --------------------------------------------------------------------------------------------
# sd_notify
# --------------------------------------------------------------------------------------------


@pytest.fixture
def path_receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(5)
        yield address, sock


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[str, socket.socket]]:
    name = f"virtvol-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        yield "@" + name, sock


def _receive(sock: socket.socket) -> list[str]:
    data = sock.recv(65536)
    assert data.endswith(b"\n")
    return data.decode().splitlines()


@pytest.mark.parametrize("receiver", ["path_receiver", "abstract_receiver"])
def test_notifier_sends_state_changes(receiver: str, request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(receiver)
    with sd.Notifier(address, watchdog_usec="30000000") as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert _receive(sock) == ["READY=1"]
        assert notifier.ready("serving 2 pools")
        assert _receive(sock) == ["READY=1", "STATUS=serving 2 pools"]
        assert notifier.status("pool default:\nrefreshing")
        assert _receive(sock) == ["STATUS=pool default: refreshing"]
        assert notifier.watchdog()
        assert _receive(sock) == ["WATCHDOG=1"]
        assert notifier.stopping()
        assert _receive(sock) == ["STOPPING=1"]


def test_reloading_carries_monotonic_timestamp(path_receiver: tuple[str, socket.socket]) -> None:
    address, sock = path_receiver
    with sd.Notifier(address) as notifier:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, stamp = _receive(sock)
    assert reloading == "RELOADING=1"
    key, value = stamp.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_extend_timeout(path_receiver: tuple[str, socket.socket]) -> None:
    address, sock = path_receiver
    with sd.Notifier(address) as notifier:
        assert notifier.extend_timeout(2.5)
    assert _receive(sock) == ["EXTEND_TIMEOUT_USEC=2500000"]


@pytest.mark.parametrize("value", [None, "", "@", "relative/path", "vsock:2:1234"])
def test_notifier_is_a_noop_without_usable_socket(value: str | None) -> None:
    notifier = sd.Notifier(value, watchdog_usec="1000000")
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.stopping()
    assert not notifier.reloading()
    assert not notifier.watchdog()
    notifier.close()


def test_notifier_swallows_send_errors(tmp_path: Path) -> None:
    with sd.Notifier(str(tmp_path / "nobody-listens")) as notifier:
        assert notifier.enabled
        assert not notifier.ready()


def test_from_environment_reads_and_unsets(path_receiver: tuple[str, socket.socket]) -> None:
    address, sock = path_receiver
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000", "OTHER": "kept"}
    with sd.Notifier.from_environment(env) as notifier:
        assert env == {"OTHER": "kept"}
        assert notifier.watchdog_interval() == 4.0
        assert notifier.ready()
    assert _receive(sock) == ["READY=1"]

    env = {"NOTIFY_SOCKET": address}
    with sd.Notifier.from_environment(env, unset=False) as notifier:
        assert notifier.enabled
        assert env == {"NOTIFY_SOCKET": address}


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("1500", None, 0.0015),
        ("30000000", "1", None),
        ("30000000", "not-a-pid", None),
        ("0", None, None),
        ("-5", None, None),
        ("30s", None, None),
        ("", None, None),
        (None, None, None),
        (None, "self", None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    if pid == "self":
        pid = str(os.getpid())
    notifier = sd.Notifier("/run/unused", watchdog_usec=usec, watchdog_pid=pid)
    assert notifier.watchdog_interval() == expected
    expected_ping = None if expected is None else expected / 2
    assert notifier.watchdog_ping_interval() == expected_ping
    if expected is None:
        assert not notifier.watchdog()


async def test_watchdog_loop_pings_until_cancelled(
    path_receiver: tuple[str, socket.socket],
) -> None:
    address, sock = path_receiver
    sock.setblocking(False)
    pings: list[bytes] = []
    with sd.Notifier(address, watchdog_usec="20000") as notifier:  # ping every 10 ms
        task = asyncio.create_task(notifier.watchdog_loop())
        deadline = time.monotonic() + 30
        while len(pings) < 3:
            assert time.monotonic() < deadline
            assert not task.done()
            await asyncio.sleep(0.005)
            with contextlib.suppress(BlockingIOError):
                pings.append(sock.recv(100))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert set(pings) == {b"WATCHDOG=1\n"}


async def test_watchdog_loop_returns_without_watchdog(
    path_receiver: tuple[str, socket.socket],
) -> None:
    address, _ = path_receiver
    with sd.Notifier(address) as notifier:
        await asyncio.wait_for(notifier.watchdog_loop(), timeout=5)


# --------------------------------------------------------------------------------------------
# socket activation: environment rules checked in this process (no descriptors touched)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "virtvold.socket"},
        {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "virtvold.socket"},
        {"LISTEN_PID": "x", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "virtvold.socket"},
        {"LISTEN_PID": "self"},
    ],
)
def test_not_activated(env: dict[str, str]) -> None:
    env = {k: str(os.getpid()) if v == "self" else v for k, v in env.items()}
    original = dict(env)
    assert sd.listeners_from_environment(env) == {}
    assert env == original  # not ours: left alone
    assert sd.activated_listeners(env) is None


def test_zero_descriptors_is_not_activation_but_unsets() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0", "PATH": "/bin"}
    assert sd.listeners_from_environment(env) == {}
    assert env == {"PATH": "/bin"}


@pytest.mark.parametrize("count", ["", "two", "-1", "1x"])
def test_malformed_count_is_an_error(count: str) -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": count}
    with pytest.raises(sd.ActivationError, match="Malformed LISTEN_FDS"):
        sd.listeners_from_environment(env)
    assert env == {}


# --------------------------------------------------------------------------------------------
# claim(): in process, on sockets of our own
# --------------------------------------------------------------------------------------------


def test_claim_hands_out_named_listeners() -> None:
    a, b = socket.socketpair()
    with a, b:
        claimed = sd.claim({"virtvold.socket": [a], "virtvold-ro.socket": [b]}, *_ALL_NAMES)
        assert claimed == {"virtvold.socket": [a], "virtvold-ro.socket": [b], _TCP: []}
        assert a.fileno() >= 0
        assert b.fileno() >= 0


def test_claim_refuses_unclaimed_and_closes_everything() -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(sd.ActivationError, match=r"unclaimed: virtproxyd\.socket \(1\)"):
            sd.claim({"virtvold.socket": [a], "virtproxyd.socket": [b]}, *_ALL_NAMES)
        assert a.fileno() == -1
        assert b.fileno() == -1


def test_claim_ignores_empty_unknown_entries() -> None:
    assert sd.claim({"other": []}, "virtvold.socket") == {"virtvold.socket": []}


_TCP = "virtvold-tcp.socket"
_ALL_NAMES = ("virtvold.socket", "virtvold-ro.socket", _TCP)


def test_policy_names_match_unit_files() -> None:
    assert (sd.READ_WRITE_SOCKET, sd.READ_ONLY_SOCKET, sd.TCP_SOCKET) == _ALL_NAMES
    for name in _ALL_NAMES:
        unit = _parse_unit(UNITS_DIR / name)
        assert unit["Socket"]["FileDescriptorName"] == [name]


# --------------------------------------------------------------------------------------------
# socket activation with real inherited descriptors, in a child process
# --------------------------------------------------------------------------------------------

# Moves the descriptors named in argv[1] to 3, 4, ... (as systemd lays them out), then runs
# the probe through sh so that LISTEN_PID is the pid of the process that finally reads it.
_LAUNCHER = r"""
import fcntl, os, sys
sources = [int(fd) for fd in sys.argv[1].split(",") if fd]
spare = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in sources]
for fd in sources:
    os.close(fd)
for index, fd in enumerate(spare):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.execvp("sh", ["sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', sys.executable, *sys.argv[2:]])
"""

# Runs in the activated process; prints what it found as JSON.
_PROBE = r"""
import fcntl, json, os, socket, sys
from virtvol.daemon import systemd as sd

count = int(os.environ.get("LISTEN_FDS", "0"))

def cloexec():
    flags = []
    for fd in range(3, 3 + count):
        try:
            flags.append(bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
        except OSError:
            flags.append(None)
    return flags

def describe(sock):
    name = sock.getsockname()
    return [sock.family.name, sock.type.name, name if isinstance(name, str) else list(name[:2])]

result = {
    "pid_matches": os.environ.get("LISTEN_PID") == str(os.getpid()),
    "cloexec_before": cloexec(),
}
try:
    if sys.argv[1] == "raw":
        found = sd.listeners_from_environment()
        result["listeners"] = {k: [describe(s) for s in v] for k, v in found.items()}
    else:
        activated = sd.activated_listeners()
        assert activated is not None
        roles = {"read_write": activated.read_write, "read_only": activated.read_only,
                 "tcp": activated.tcp}
        result["listeners"] = {k: [describe(s) for s in v] for k, v in roles.items()}
        # The parent queued one connection per listener: answer it with the role.
        for role, socks in roles.items():
            for sock in socks:
                sock.settimeout(10)
                conn, _ = sock.accept()
                with conn:
                    conn.sendall(role.encode())
        activated.close()
except sd.ActivationError as exc:
    result["error"] = str(exc)
result["cloexec_after"] = cloexec()
result["env"] = {name: os.environ.get(name) for name in ("LISTEN_PID", "LISTEN_FDS",
                                                        "LISTEN_FDNAMES")}
print(json.dumps(result))
"""


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*LISTEN_VARS, "NOTIFY_SOCKET")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _activate(fds: list[int], names: str | None, mode: str) -> dict[str, Any]:
    env = _clean_env()
    env["LISTEN_FDS"] = str(len(fds))
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    argv = [sys.executable, "-c", _LAUNCHER, ",".join(map(str, fds)), "-c", _PROBE, mode]
    proc = subprocess.run(
        argv, env=env, pass_fds=fds, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["pid_matches"]
    assert result["env"] == dict.fromkeys(LISTEN_VARS)
    return result


def _unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def _tcp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _tcp_desc(sock: socket.socket) -> list[Any]:
    return ["AF_INET", "SOCK_STREAM", list(sock.getsockname())]


def test_activation_files_descriptors_by_name(tmp_path: Path) -> None:
    rw = _unix_listener(tmp_path / "rw")
    rw2 = _unix_listener(tmp_path / "rw2")
    ro = _unix_listener(tmp_path / "ro")
    tcp = _tcp_listener()
    with rw, rw2, ro, tcp:
        tcp_desc = _tcp_desc(tcp)
        result = _activate(
            [rw.fileno(), ro.fileno(), tcp.fileno(), rw2.fileno()],
            "virtvold.socket:virtvold-ro.socket:virtvold-tcp.socket:virtvold.socket",
            "raw",
        )
    assert "error" not in result
    assert result["cloexec_before"] == [False] * 4
    assert result["cloexec_after"] == [True] * 4
    assert result["listeners"] == {
        "virtvold.socket": [
            ["AF_UNIX", "SOCK_STREAM", str(tmp_path / "rw")],
            ["AF_UNIX", "SOCK_STREAM", str(tmp_path / "rw2")],
        ],
        "virtvold-ro.socket": [["AF_UNIX", "SOCK_STREAM", str(tmp_path / "ro")]],
        "virtvold-tcp.socket": [tcp_desc],
    }


def test_activated_listeners_serve_the_right_roles(tmp_path: Path) -> None:
    rw = _unix_listener(tmp_path / "rw")
    ro = _unix_listener(tmp_path / "ro")
    tcp = _tcp_listener()
    clients = {
        "read_write": socket.socket(socket.AF_UNIX),
        "read_only": socket.socket(socket.AF_UNIX),
        "tcp": socket.socket(socket.AF_INET),
    }
    with rw, ro, tcp, clients["read_write"], clients["read_only"], clients["tcp"]:
        clients["read_write"].connect(str(tmp_path / "rw"))
        clients["read_only"].connect(str(tmp_path / "ro"))
        clients["tcp"].connect(tcp.getsockname())
        result = _activate(
            [tcp.fileno(), ro.fileno(), rw.fileno()],
            "virtvold-tcp.socket:virtvold-ro.socket:virtvold.socket",
            "policy",
        )
        assert "error" not in result
        assert result["listeners"] == {
            "read_write": [["AF_UNIX", "SOCK_STREAM", str(tmp_path / "rw")]],
            "read_only": [["AF_UNIX", "SOCK_STREAM", str(tmp_path / "ro")]],
            "tcp": [_tcp_desc(tcp)],
        }
        for role, client in clients.items():
            client.settimeout(10)
            assert client.recv(100) == role.encode()


def test_activation_without_optional_sockets(tmp_path: Path) -> None:
    rw = _unix_listener(tmp_path / "rw")
    with rw, socket.socket(socket.AF_UNIX) as client:
        client.connect(str(tmp_path / "rw"))
        result = _activate([rw.fileno()], "virtvold.socket", "policy")
        assert result["listeners"] == {
            "read_write": [["AF_UNIX", "SOCK_STREAM", str(tmp_path / "rw")]],
            "read_only": [],
            "tcp": [],
        }


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (None, "Missing LISTEN_FDNAMES env from systemd socket activation"),
        ("virtvold.socket", "Expecting 2 FD names but got 1"),
        ("virtvold.socket:virtvold-ro.socket:x", "Expecting 2 FD names but got 3"),
    ],
)
def test_activation_name_errors(tmp_path: Path, names: str | None, message: str) -> None:
    rw = _unix_listener(tmp_path / "rw")
    ro = _unix_listener(tmp_path / "ro")
    with rw, ro:
        result = _activate([rw.fileno(), ro.fileno()], names, "raw")
    assert result["error"] == message
    assert result["cloexec_after"] == [True, True]


def test_unclaimed_descriptor_is_a_startup_error(tmp_path: Path) -> None:
    rw = _unix_listener(tmp_path / "rw")
    admin = _unix_listener(tmp_path / "admin")
    with rw, admin:
        result = _activate(
            [rw.fileno(), admin.fileno()], "virtvold.socket:virtvold-admin.socket", "policy"
        )
    assert result["error"].startswith(
        "Some activation file descriptors are unclaimed: virtvold-admin.socket (1)"
    )


def test_wrong_family_for_role_is_a_startup_error(tmp_path: Path) -> None:
    tcp = _tcp_listener()
    with tcp:
        result = _activate([tcp.fileno()], "virtvold.socket", "policy")
    assert "virtvold.socket" in result["error"]
    assert "is not a UNIX stream socket" in result["error"]


def test_unix_socket_on_tcp_role_is_a_startup_error(tmp_path: Path) -> None:
    rw = _unix_listener(tmp_path / "rw")
    other = _unix_listener(tmp_path / "other")
    with rw, other:
        result = _activate([rw.fileno(), other.fileno()], "virtvold.socket:" + _TCP, "policy")
    assert "virtvold-tcp.socket" in result["error"]
    assert "is not a TCP stream socket" in result["error"]


def test_non_listening_socket_is_a_startup_error() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.bind(("127.0.0.1", 0))
        result = _activate([sock.fileno()], _TCP, "policy")
    assert "is not listening" in result["error"]


def test_non_socket_descriptor_is_an_error() -> None:
    read_end, write_end = os.pipe()
    try:
        result = _activate([read_end], "virtvold.socket", "raw")
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result["error"] == "Activation file descriptor 3 ('virtvold.socket') is not a socket"


def test_under_systemd_socket_activate(tmp_path: Path) -> None:
    """The real activation helper shipped with systemd hands the probe its listeners."""
    program = shutil.which("systemd-socket-activate")
    assert program is not None, (
        "systemd-socket-activate missing: install the Debian package systemd"
    )
    rw_path, ro_path = tmp_path / "rw", tmp_path / "ro"
    argv = [
        program,
        f"--listen={rw_path}",
        f"--listen={ro_path}",
        "--fdname=virtvold.socket:virtvold-ro.socket",
        sys.executable,
        "-c",
        _PROBE,
        "policy",
    ]
    proc = subprocess.Popen(
        argv, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not (rw_path.exists() and ro_path.exists()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        answers = {}
        for role, path in (("read_write", rw_path), ("read_only", ro_path)):
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(30)
                client.connect(str(path))
                answers[role] = client.recv(100)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert "error" not in result
    assert result["pid_matches"]
    assert result["listeners"] == {
        "read_write": [["AF_UNIX", "SOCK_STREAM", str(rw_path)]],
        "read_only": [["AF_UNIX", "SOCK_STREAM", str(ro_path)]],
        "tcp": [],
    }
    assert answers == {"read_write": b"read_write", "read_only": b"read_only"}


# --------------------------------------------------------------------------------------------
# unit files
# --------------------------------------------------------------------------------------------


def _parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path.name}: assignment outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_service_unit_settings() -> None:
    service = _parse_unit(UNITS_DIR / "virtvold.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30"]
    assert service["Restart"] == ["on-failure"]
    # Where `make install` puts it (and rewrites it for another PREFIX).
    assert service["ExecStart"] == ["/opt/virtvol/bin/virtvold $VIRTVOLD_ARGS"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["StateDirectory"] == ["virtvol"]
    # /run/libvirt is shared with libvirt's other daemons: never a RuntimeDirectory.
    assert "RuntimeDirectory" not in service
    assert service["ProtectSystem"] == ["strict"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    # systemd's default soft limit of 1024 descriptors is too few for max_clients.
    assert service["LimitNOFILE"] == ["8192"]
    unit = _parse_unit(UNITS_DIR / "virtvold.service")["Unit"]
    assert "virtvold.socket" in unit["Requires"]
    assert "virtvold-tcp.socket" not in " ".join(unit["Requires"] + unit["Wants"])
    # A drop-in for virtstoraged: one or the other. Its admin socket would start it.
    assert unit["Conflicts"] == ["virtstoraged.service virtstoraged-admin.socket"]
    assert unit["Documentation"][0] == "file:///opt/virtvol/share/doc/virtvol/systemd.md"


@pytest.mark.parametrize(
    ("name", "listen", "mode"),
    [
        ("virtvold.socket", "/run/libvirt/virtstoraged-sock", "0600"),
        ("virtvold-ro.socket", "/run/libvirt/virtstoraged-sock-ro", "0666"),
        ("virtvold-tcp.socket", "127.0.0.1:16509", None),
    ],
)
def test_socket_unit_settings(name: str, listen: str, mode: str | None) -> None:
    """virtstoraged's socket paths, which libvirt's client tries first (see
    tests/daemon/test_default_listeners.py), and virtstoraged's unit for the same path
    is a conflict."""
    unit = _parse_unit(UNITS_DIR / name)
    assert unit["Socket"]["ListenStream"] == [listen]
    if listen.startswith("/run/libvirt/"):
        theirs = listen.rsplit("/", 1)[1].replace("-sock", "") + ".socket"
        assert unit["Unit"]["Conflicts"] == [theirs]
        assert unit["Unit"]["Before"] == [theirs]
    else:
        assert "Conflicts" not in unit["Unit"]
    assert unit["Socket"].get("SocketMode") == (None if mode is None else [mode])
    assert unit["Socket"]["Service"] == ["virtvold.service"]
    assert unit["Install"]["WantedBy"] == ["sockets.target"]
    if name != "virtvold.socket":
        assert unit["Unit"]["BindsTo"] == ["virtvold.socket"]
        assert unit["Unit"]["After"] == ["virtvold.socket"]


def _verify(directory: Path) -> subprocess.CompletedProcess[str]:
    program = shutil.which("systemd-analyze")
    assert program is not None, "systemd-analyze missing: install the Debian package systemd"
    return subprocess.run(
        [
            program,
            "verify",
            "--man=no",
            "--generators=no",
            *(str(directory / name) for name in UNIT_NAMES),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy_units(tmp_path: Path) -> Path:
    """The units in a temporary folder, ExecStart pointing at an executable that exists."""
    units = tmp_path / "units"
    units.mkdir()
    fake = tmp_path / "virtvold"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    for name in UNIT_NAMES:
        text = (UNITS_DIR / name).read_text()
        (units / name).write_text(text.replace("/opt/virtvol/bin/virtvold", str(fake)))
    return units


def test_systemd_analyze_verify_accepts_units(tmp_path: Path) -> None:
    units = _copy_units(tmp_path)
    proc = _verify(units)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == ""


def test_systemd_analyze_verify_really_checks(tmp_path: Path) -> None:
    """Control: the same check flags a broken copy, so a pass above means something."""
    units = _copy_units(tmp_path)
    service = units / "virtvold.service"
    service.write_text(service.read_text().replace("Type=notify\n", "Type=notify-bogus\n"))
    proc = _verify(units)
    assert "notify-bogus" in proc.stdout + proc.stderr
