"""The client/daemon pairs of the benchmark, each over TCP and a Unix socket.

* virtvol <-> virtvold (this project; a second virtvold with sync_uploads = false)
* virsh <-> libvirtd 9.0 (Debian's, started by tools/libvirtd_peer.py)
* nbdcopy <-> nbdkit (Debian's libnbd-bin and nbdkit, file plugin): the NBD
  way to move sparse images, one nbdkit per volume and transport.

A peer creates volumes, names the command lines that upload a local file into
one and download one into a local file, and knows where the volume's file
lives (to check the bytes and to warm or drop its page cache). Given a PKI
directory (``bench.pki``), the libvirt-protocol peers also listen for TLS and
their "tcp" transfers go over it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from bench.harness import (
    VENV_BIN,
    free_port,
    stop,
    traversable_tempdir,
    wait_for_port,
)
from tools import libvirtd_peer

if TYPE_CHECKING:
    from pathlib import Path

TRANSPORTS = ("tcp", "unix")


def _virsh(uri: str, *args: str) -> None:
    subprocess.run(["virsh", "-q", "-c", uri, *args], check=True, capture_output=True)


class Peer:
    """A running daemon (or set of daemons) and the client that talks to it."""

    name: str
    client: str
    pool_dir: Path

    def create_volume(self, name: str, size: int) -> None:
        raise NotImplementedError

    def delete_volume(self, name: str) -> None:
        raise NotImplementedError

    def volume_path(self, name: str) -> Path:
        return self.pool_dir / name

    def upload(self, transport: str, name: str, source: Path) -> list[str]:
        raise NotImplementedError

    def download(self, transport: str, name: str, target: Path) -> list[str]:
        raise NotImplementedError

    def daemon_pids(self) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _LibvirtProtocolPeer(Peer):
    """A daemon speaking libvirt's protocol, with one directory pool "bench"."""

    uris: dict[str, str]
    tls_uri: str | None = None
    pool = "bench"

    def transfer_uri(self, transport: str) -> str:
        """Where transfers go: over TLS instead of plain TCP when the peer has it."""
        if transport == "tcp" and self.tls_uri is not None:
            return self.tls_uri
        return self.uris[transport]

    def list_pools(self, transport: str) -> list[str]:
        """The command line of a ``pool-list``: a command's start-up, one call and output."""
        raise NotImplementedError

    def create_volume(self, name: str, size: int) -> None:
        uri = self.uris["tcp"]
        _virsh(uri, "vol-create-as", self.pool, name, str(size), "--allocation", "0")

    def delete_volume(self, name: str) -> None:
        _virsh(self.uris["tcp"], "vol-delete", "--pool", self.pool, name)


class Virtvold(_LibvirtProtocolPeer):
    client = "virtvol"

    def __init__(self, *, sync_uploads: bool = True, pki: Path | None = None) -> None:
        self.name = "virtvold" if sync_uploads else "virtvold (sync_uploads = false)"
        self.workdir = traversable_tempdir("virtvol-bench-virtvold-")
        self.pool_dir = self.workdir / "pool"
        self.pool_dir.mkdir()
        port = free_port()
        unix_path = self.workdir / "sock"
        config = self.workdir / "virtvold.toml"
        settings = f"sync_uploads = {'true' if sync_uploads else 'false'}\n"
        tls_listen: list[str] = []
        if pki is not None:
            settings += (
                f'ca_file = "{pki / "cacert.pem"}"\n'
                f'cert_file = "{pki / "servercert.pem"}"\n'
                f'key_file = "{pki / "serverkey.pem"}"\n'
            )
            tls_port = free_port()
            tls_listen = ["--listen", f"tls://127.0.0.1:{tls_port}"]
            self.tls_uri = f"storage+tls://127.0.0.1:{tls_port}/system?pkipath={pki}"
        config.write_text(settings)
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "virtvold"),
                "--config",
                str(config),
                "--state-dir",
                str(self.workdir / "state"),
                "--pool",
                f"{self.pool}={self.pool_dir}",
                "--auth-tcp",
                "none",
                "--listen",
                f"tcp://127.0.0.1:{port}",
                "--listen",
                f"unix://{unix_path}",
                *tls_listen,
                "--log-level",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, self.process)
        self.uris = {
            "tcp": f"storage+tcp://127.0.0.1:{port}/system",
            "unix": f"storage+unix:///system?socket={unix_path}",
        }

    def _command(self, verb: str, transport: str, name: str, path: Path) -> list[str]:
        uri = self.transfer_uri(transport)
        program = str(VENV_BIN / "virtvol")
        return [program, "-q", "-c", uri, verb, name, str(path), "--pool", self.pool, "--sparse"]

    def upload(self, transport: str, name: str, source: Path) -> list[str]:
        return self._command("vol-upload", transport, name, source)

    def download(self, transport: str, name: str, target: Path) -> list[str]:
        return self._command("vol-download", transport, name, target)

    def list_pools(self, transport: str) -> list[str]:
        return [str(VENV_BIN / "virtvol"), "-c", self.transfer_uri(transport), "pool-list"]

    def daemon_pids(self) -> list[int]:
        return [self.process.pid]

    def close(self) -> None:
        stop(self.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        _rmtree(self.workdir)


class Libvirtd(_LibvirtProtocolPeer):
    name = "libvirtd 9.0"
    client = "virsh"

    def __init__(self, *, pki: Path | None = None) -> None:
        self.workdir = traversable_tempdir("virtvol-bench-libvirtd-")
        tls = libvirtd_peer.PeerTls(free_port(), pki) if pki is not None else None
        self.peer = libvirtd_peer.start(self.workdir / "state", free_port(), tls=tls)
        if pki is not None:
            self.tls_uri = self.peer.tls_uri(pki)
        self.pool_dir = self.workdir / "state" / "pool"
        self.uris = {"tcp": self.peer.tcp_uri, "unix": self.peer.unix_uri}
        _virsh(self.uris["tcp"], f"pool-define-as {self.pool} dir --target {self.pool_dir}")
        _virsh(self.uris["tcp"], f"pool-start {self.pool}")

    def _command(self, verb: str, transport: str, name: str, path: Path) -> list[str]:
        uri = self.transfer_uri(transport)
        return ["virsh", "-q", "-c", uri, verb, "--pool", self.pool, name, str(path), "--sparse"]

    def upload(self, transport: str, name: str, source: Path) -> list[str]:
        return self._command("vol-upload", transport, name, source)

    def download(self, transport: str, name: str, target: Path) -> list[str]:
        return self._command("vol-download", transport, name, target)

    def list_pools(self, transport: str) -> list[str]:
        return ["virsh", "-c", self.transfer_uri(transport), "pool-list"]

    def daemon_pids(self) -> list[int]:
        return [self.peer.pid]

    def close(self) -> None:
        self.peer.stop()
        _rmtree(self.workdir)


class Nbdkit(Peer):
    """nbdkit's file plugin serving each volume, once on TCP and once on a Unix socket."""

    name = "nbdkit"
    client = "nbdcopy"

    def __init__(self) -> None:
        self.workdir = traversable_tempdir("virtvol-bench-nbdkit-")
        self.pool_dir = self.workdir / "pool"
        self.pool_dir.mkdir()
        self.servers: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.addresses: dict[tuple[str, str], str] = {}

    def create_volume(self, name: str, size: int) -> None:
        path = self.volume_path(name)
        with path.open("wb") as f:
            f.truncate(size)
        port = free_port()
        unix_path = self.workdir / f"{name}.sock"
        unix_path.unlink(missing_ok=True)  # nbdkit refuses to bind over a stale one
        common = ["nbdkit", "--foreground", "--exit-with-parent", "--newstyle"]
        tcp = subprocess.Popen(
            [*common, "--ipaddr", "127.0.0.1", "--port", str(port), "file", str(path)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        unix = subprocess.Popen(
            [*common, "--unix", str(unix_path), "file", str(path)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.servers[name] = [tcp, unix]
        wait_for_port(port, tcp)
        _wait_for_unix(unix_path, unix)
        self.addresses[(name, "tcp")] = f"nbd://127.0.0.1:{port}"
        self.addresses[(name, "unix")] = f"nbd+unix:///?socket={unix_path}"

    def delete_volume(self, name: str) -> None:
        for server in self.servers.pop(name, []):
            server.terminate()
            server.wait()
        self.volume_path(name).unlink(missing_ok=True)

    def upload(self, transport: str, name: str, source: Path) -> list[str]:
        return ["nbdcopy", str(source), self.addresses[(name, transport)]]

    def download(self, transport: str, name: str, target: Path) -> list[str]:
        return ["nbdcopy", self.addresses[(name, transport)], str(target)]

    def daemon_pids(self) -> list[int]:
        return [server.pid for servers in self.servers.values() for server in servers]

    def close(self) -> None:
        for name in list(self.servers):
            self.delete_volume(name)
        _rmtree(self.workdir)


def _wait_for_unix(path: Path, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until something accepts connections on the Unix socket ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {path}")


def _rmtree(path: Path) -> None:
    subprocess.run(["rm", "-rf", str(path)], check=False)
