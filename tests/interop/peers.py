"""The peers of the interop matrix: daemons to start and clients to run.

Daemons: virtvold (current and legacy) and the real libvirtd 9.0. Clients:
the ``virtvol`` command (current and legacy), real ``virsh`` 9.0, and a
python3-libvirt 9.0 script run by Debian's own Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import SYSTEM_PYTHON, ReferenceLibvirtd, free_port, wait_until_ready
from tests.interop.recorder import Endpoint

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

VENV_BIN = Path(sys.executable).parent
POOL = "default"
COMMAND_TIMEOUT = 60


@dataclass(frozen=True)
class DaemonUnderTest:
    kind: str  # "virtvold", "virtvold-legacy" or "libvirtd"
    tcp: Endpoint
    unix: Endpoint
    pool_dir: Path

    @property
    def direct_uri(self) -> str:
        return f"storage+tcp://127.0.0.1:{self.tcp.port}/session"


def traversable_tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@contextmanager
def virtvold(*, legacy: bool, extra_args: Sequence[str] = ()) -> Iterator[DaemonUnderTest]:
    """A virtvold subprocess with pool "default", on a free TCP port and a Unix socket
    (and ``extra_args``, such as more listeners)."""
    workdir = traversable_tempdir("virtvol-interop-")
    pool_dir = workdir / "pool"
    pool_dir.mkdir()
    socket_path = workdir / "virtvold-sock"
    port = free_port()
    argv = [
        str(VENV_BIN / "virtvold"),
        "--state-dir",
        str(workdir / "state"),
        "--pool",
        f"{POOL}={pool_dir}",
        "--auth-tcp",
        "none",
        "--listen",
        f"tcp://127.0.0.1:{port}",
        "--listen",
        f"unix://{socket_path}",
        "--protocol",
        "legacy" if legacy else "current",
        *extra_args,
    ]
    log_path = workdir / "virtvold.log"
    log = log_path.open("wb")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        if not wait_until_ready(log_path, 0, process, time.monotonic() + 20):
            raise RuntimeError("virtvold did not start: " + log_path.read_text(errors="replace"))
        yield DaemonUnderTest(
            "virtvold-legacy" if legacy else "virtvold",
            Endpoint(port=port),
            Endpoint(path=socket_path),
            pool_dir,
        )
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def libvirtd_under_test(reference: ReferenceLibvirtd) -> DaemonUnderTest:
    socket_path = Path(reference.unix_uri.split("socket=", 1)[1])
    return DaemonUnderTest(
        "libvirtd", Endpoint(port=reference.port), Endpoint(path=socket_path), reference.pool_dir
    )


# -- clients -------------------------------------------------------------------

_PYTHON_TRANSFER = r"""
import errno, os, sys
import libvirt

uri, pool, name, path, direction, sparse = sys.argv[1:7]
sparse = sparse == "1"
libvirt.registerErrorHandler(lambda *args: None, None)


def in_data(stream, fd):
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        data = os.lseek(fd, here, os.SEEK_DATA)
    except OSError as error:
        if error.errno != errno.ENXIO:
            raise
        end = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, here, os.SEEK_SET)
        return [False, end - here]
    if data > here:
        os.lseek(fd, here, os.SEEK_SET)
        return [False, data - here]
    hole = os.lseek(fd, here, os.SEEK_HOLE)
    os.lseek(fd, here, os.SEEK_SET)
    return [True, hole - here]


def skip_source(stream, length, fd):
    return os.lseek(fd, length, os.SEEK_CUR)


def make_hole(stream, length, fd):
    end = os.lseek(fd, length, os.SEEK_CUR)
    os.ftruncate(fd, end)
    return 0


try:
    conn = libvirt.open(uri)
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    stream = conn.newStream(0)
    if direction == "upload":
        fd = os.open(path, os.O_RDONLY)
        vol.upload(stream, 0, 0, 1 if sparse else 0)
        if sparse:
            stream.sparseSendAll(lambda s, n, fd: os.read(fd, n), in_data, skip_source, fd)
        else:
            stream.sendAll(lambda s, n, fd: os.read(fd, n), fd)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        vol.download(stream, 0, 0, 1 if sparse else 0)
        if sparse:
            stream.sparseRecvAll(lambda s, buf, fd: os.write(fd, buf), make_hole, fd)
        else:
            stream.recvAll(lambda s, buf, fd: os.write(fd, buf), fd)
    stream.finish()
    conn.close()
except libvirt.libvirtError as error:
    if direction == "download":
        os.unlink(path)
    print("error:", error.get_error_message(), file=sys.stderr)
    sys.exit(1)
"""


@dataclass(frozen=True)
class ClientUnderTest:
    kind: str  # "virtvol", "virtvol-legacy", "virsh" or "python3-libvirt"

    def command(
        self, uri: str, direction: str, volume: str, path: Path, *, sparse_asked: bool
    ) -> list[str]:
        verb = "vol-upload" if direction == "upload" else "vol-download"
        if self.kind in ("virtvol", "virtvol-legacy"):
            protocol = "legacy" if self.kind == "virtvol-legacy" else "current"
            # Sparse asked: the default, which negotiates. Not asked: --no-sparse.
            choice = [] if sparse_asked else ["--no-sparse"]
            return [
                str(VENV_BIN / "virtvol"),
                "-c",
                uri,
                "--protocol",
                protocol,
                verb,
                volume,
                str(path),
                "--pool",
                POOL,
                "--quiet",
                *choice,
            ]
        if self.kind == "virsh":
            choice = ["--sparse"] if sparse_asked else []
            return ["virsh", "-c", uri, verb, "--pool", POOL, volume, str(path), *choice]
        return [
            SYSTEM_PYTHON,
            "-c",
            _PYTHON_TRANSFER,
            uri,
            POOL,
            volume,
            str(path),
            direction,
            "1" if sparse_asked else "0",
        ]

    def run(
        self, uri: str, direction: str, volume: str, path: Path, *, sparse_asked: bool
    ) -> subprocess.CompletedProcess[str]:
        argv = self.command(uri, direction, volume, path, sparse_asked=sparse_asked)
        env = dict(os.environ, LC_ALL="C")
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=COMMAND_TIMEOUT,
            env=env,
            check=False,
        )
