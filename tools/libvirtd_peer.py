"""Start Debian's libvirtd as an unprivileged, storage-only peer for tests and benchmarks.

The daemon runs as ``nobody`` with every piece of its state (configuration, sockets,
pool metadata, logs) inside one folder, listens on a loopback TCP port and a Unix
socket, and loads only libvirt's storage driver: the other drivers (qemu above all)
expect system users and services that a throwaway peer does not have.

    python -m tools.libvirtd_peer DIR PORT
        prints "pid=N tcp=URI unix=URI" once the daemon answers on PORT

From Python: ``peer = start(state_dir, port)``, then ``peer.stop()``. With
``tls=PeerTls(tls_port, pki_dir)`` the daemon also listens for TLS on
``tls_port``: ``pki_dir`` holds ``cacert.pem``, ``servercert.pem``,
``serverkey.pem`` and optionally ``cacrl.pem`` (copied into the state folder
for ``nobody``); ``allowed_dn_list`` becomes ``tls_allowed_dn_list``.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

PEER_USER = "nobody"
STORAGE_DRIVER = "libvirt_driver_storage.so"
# Loaded on request: the storage driver asks it about encrypted volumes' secrets, and an
# encrypted image's XML cannot be read without it.
SECRET_DRIVER = "libvirt_driver_secret.so"
# Where Debian and other distributions install libvirt's loadable drivers.
DRIVER_DIR_PATTERNS = (
    "/usr/lib/*-linux-gnu/libvirt/connection-driver",
    "/usr/lib64/libvirt/connection-driver",
    "/usr/lib/libvirt/connection-driver",
)
INSTALL_HINT = "apt-get install -y --no-install-recommends libvirt-daemon libvirt-clients"


class PeerError(RuntimeError):
    """The reference libvirtd could not be started."""


@dataclass(frozen=True)
class PeerTls:
    """A TLS listener for the reference libvirtd."""

    port: int
    pki_dir: Path
    allowed_dn_list: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LibvirtdPeer:
    """A running reference libvirtd."""

    process: subprocess.Popen[bytes]
    port: int
    state_dir: Path
    tls_port: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, *, grace: float = 5.0) -> None:
        """SIGTERM the daemon, SIGKILL it if it is still there after ``grace`` seconds."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def tcp_uri(self) -> str:
        return f"storage+tcp://127.0.0.1:{self.port}/session"

    def tls_uri(self, pkipath: Path) -> str:
        """``storage+tls://127.0.0.1:PORT/session?pkipath=DIR`` (needs ``tls=`` at start)."""
        if self.tls_port is None:
            raise PeerError("this libvirtd was started without TLS")
        return f"storage+tls://127.0.0.1:{self.tls_port}/session?pkipath={pkipath}"

    @property
    def unix_socket(self) -> Path:
        return self.state_dir / "run" / "libvirt" / "libvirt-sock"

    @property
    def unix_uri(self) -> str:
        return f"storage+unix:///session?socket={self.unix_socket}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "libvirtd.out"


def storage_driver() -> Path:
    """The installed storage driver module of libvirt."""
    for pattern in DRIVER_DIR_PATTERNS:
        for directory in sorted(glob.glob(pattern)):
            candidate = Path(directory) / STORAGE_DRIVER
            if candidate.is_file():
                return candidate
    raise PeerError(f"libvirt's storage driver ({STORAGE_DRIVER}) is missing: {INSTALL_HINT}")


def _libvirtd() -> str:
    found = shutil.which("libvirtd") or shutil.which("libvirtd", path="/usr/sbin:/sbin")
    if found is None:
        raise PeerError(f"libvirtd is missing: {INSTALL_HINT}")
    return found


def _config(port: int, tls: PeerTls | None, pki: Path, settings: Sequence[str]) -> str:
    # Loopback TCP without authentication: this peer exists for local tests only.
    lines = [
        "listen_tcp = 1",
        f'tcp_port = "{port}"',
        'listen_addr = "127.0.0.1"',
        'auth_tcp = "none"',
        'auth_unix_rw = "none"',
    ]
    if tls is None:
        lines.append("listen_tls = 0")
    else:
        lines += [
            "listen_tls = 1",
            f'tls_port = "{tls.port}"',
            f'ca_file = "{pki / "cacert.pem"}"',
            f'cert_file = "{pki / "servercert.pem"}"',
            f'key_file = "{pki / "serverkey.pem"}"',
        ]
        if (pki / "cacrl.pem").exists():
            lines.append(f'crl_file = "{pki / "cacrl.pem"}"')
        if tls.allowed_dn_list is not None:
            patterns = ", ".join(f'"{pattern}"' for pattern in tls.allowed_dn_list)
            lines.append(f"tls_allowed_dn_list = [{patterns}]")
    return "\n".join([*lines, *settings, ""])


def _copy_pki(tls: PeerTls, pki: Path) -> None:
    pki.mkdir(exist_ok=True)
    for name in ("cacert.pem", "servercert.pem", "serverkey.pem", "cacrl.pem"):
        if (tls.pki_dir / name).exists():
            shutil.copyfile(tls.pki_dir / name, pki / name)


def _check_reachable(path: Path) -> None:
    """``nobody`` must be able to walk down to the state folder."""
    for parent in path.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise PeerError(
                f"{PEER_USER} cannot enter {parent}: make the folders above {path} "
                "traversable (chmod o+x)"
            )


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def start(
    state_dir: Path,
    port: int,
    *,
    timeout: float = 10.0,
    tls: PeerTls | None = None,
    secret_driver: bool = False,
    settings: Sequence[str] = (),
) -> LibvirtdPeer:
    """Start libvirtd with its state in ``state_dir``; return once it answers on ``port``
    (and on ``tls.port`` when given). ``secret_driver`` loads libvirt's secret driver too;
    ``settings`` are more libvirtd.conf lines (``keepalive_interval = 1``).

    Raises:
        PeerError: libvirtd or its storage driver is missing, or the daemon did not come up.
    """
    if os.geteuid() != 0:
        raise PeerError("starting the reference libvirtd needs root (it runs as nobody)")
    binary = _libvirtd()
    driver = storage_driver()
    state_dir = state_dir.absolute()
    for sub in ("run", "pool", "drivers", "home"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    _check_reachable(state_dir)
    modules = [driver]
    if secret_driver:
        modules.append(driver.parent / SECRET_DRIVER)
    for module in modules:
        link = state_dir / "drivers" / module.name
        if not link.is_symlink():
            link.symlink_to(module)
    pki = state_dir / "pki"
    if tls is not None:
        _copy_pki(tls, pki)
    config = state_dir / "libvirtd.conf"
    config.write_text(_config(port, tls, pki, settings))
    user = pwd.getpwnam(PEER_USER)
    group = grp.getgrgid(user.pw_gid)
    _chown_tree(state_dir, user.pw_uid, user.pw_gid)
    (state_dir / "run").chmod(0o700)
    environment = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(state_dir / "home"),
        "XDG_RUNTIME_DIR": str(state_dir / "run"),
        "XDG_CONFIG_HOME": str(state_dir / "config"),
        "XDG_CACHE_HOME": str(state_dir / "cache"),
        "LIBVIRT_DRIVER_DIR": str(state_dir / "drivers"),
    }
    log_path = state_dir / "libvirtd.out"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, "--listen", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=environment,
            user=user.pw_uid,
            group=group.gr_gid,
            extra_groups=[],
            start_new_session=True,
            cwd=state_dir,
        )
    peer = LibvirtdPeer(process, port, state_dir, tls.port if tls is not None else None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(port) and (tls is None or _answers(tls.port)):
            return peer
        if process.poll() is not None:
            break
        time.sleep(0.05)
    peer.stop()
    raise PeerError(
        f"libvirtd did not answer on 127.0.0.1:{port}; its log says:\n"
        + log_path.read_text(errors="replace")
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m tools.libvirtd_peer DIR PORT", file=sys.stderr)
        return 2
    try:
        peer = start(Path(args[0]), int(args[1]))
    except PeerError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"pid={peer.pid} tcp={peer.tcp_uri} unix={peer.unix_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
