"""rbd pool transfers through virtvold against Ceph's own ``rbd import`` / ``rbd export``.

    python -m bench.rbd [--size 256M] [--repeat 3]

Starts a throwaway cluster (``tools/ceph_cluster.py``: one monitor, one memstore
OSD, so the data sits in RAM, about twice over) and a virtvold serving it as an rbd
pool, then moves one sparse image (half data, half holes, in alternating 4 MiB
runs) in and out: virsh 9.0 and virtvol through virtvold, and ``rbd import`` /
``rbd export`` straight to the cluster (both sparse-aware). Each row is the median
of the runs, with the image size divided by it; every download is compared with
the image. Keep the size well below the free memory.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tools import ceph_cluster

if TYPE_CHECKING:
    from collections.abc import Callable

MIB = 1 << 20
POOL = "ceph"
RUN = 4 * MIB  # data and holes alternate in runs of this size


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].isalpha() else int(text)


def _image(path: Path, size: int) -> None:
    with path.open("wb") as out:
        out.truncate(size)
        for offset in range(0, size, 2 * RUN):
            out.seek(offset)
            out.write(os.urandom(min(RUN, size - offset)))


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace')}")


def _timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


_DAEMON = (sys.executable, "-m", "virtvol.daemon")
_TCP = ("--auth-tcp", "none", "--listen")  # loopback only: no authentication needed


def _start_virtvold(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = (folder / "virtvold.log").open("wb")
    process = subprocess.Popen(
        [*_DAEMON, "--state-dir", str(folder / "state"), *_TCP, f"tcp://127.0.0.1:{port}"],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"storage+tcp://127.0.0.1:{port}/system"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("virtvold did not start")


def _define_pool(uri: str, cluster: ceph_cluster.CephCluster, folder: Path) -> None:
    secret = folder / "secret.xml"
    secret.write_text(
        "<secret private='yes'><uuid>0c6a4e8f-2b1d-4c3e-9f5a-7b8c9d0e1f2a</uuid>"
        "<usage type='ceph'><name>bench</name></usage></secret>"
    )
    key_file = folder / "key"
    key_file.write_text(cluster.admin_key)
    pool = folder / "pool.xml"
    pool.write_text(
        f"<pool type='rbd'><name>{POOL}</name><source><name>rbd</name>"
        f"<host name='127.0.0.1' port='{cluster.port}'/><auth type='ceph' username='admin'>"
        "<secret usage='bench'/></auth></source></pool>"
    )
    _run("virsh", "-c", uri, "secret-define", str(secret))
    uuid = "0c6a4e8f-2b1d-4c3e-9f5a-7b8c9d0e1f2a"
    _run("virsh", "-c", uri, "secret-set-value", uuid, "--file", str(key_file))
    _run("virsh", "-c", uri, "pool-define", str(pool))
    _run("virsh", "-c", uri, "pool-start", POOL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = _size(args.size)
    folder = Path(tempfile.mkdtemp(prefix="virtvol-bench-rbd-"))
    cluster = ceph_cluster.start(folder / "ceph", _free_port())
    daemon = None
    try:
        cluster.create_pool("rbd")
        daemon, uri = _start_virtvold(folder)
        _define_pool(uri, cluster, folder)
        image = folder / "image.raw"
        _image(image, size)
        virtvol = [str(Path(sys.executable).parent / "virtvol"), "-c", uri, "--quiet"]
        rbd = ["rbd", "--conf", str(cluster.conf)]
        out = folder / "out.raw"
        rows: dict[str, list[float]] = {}

        def row(label: str, work: Callable[[], None], check: bool = False) -> None:
            out.unlink(missing_ok=True)
            rows.setdefault(label, []).append(_timed(work))
            if check and not filecmp.cmp(image, out, shallow=False):
                raise RuntimeError(f"{label}: the download differs from the image")

        _run("virsh", "-c", uri, "vol-create-as", POOL, "vol", str(size))
        for _ in range(args.repeat):
            row(
                "virsh vol-upload --sparse",
                lambda: _run("virsh", "-c", uri, "vol-upload", "--pool", POOL, "vol", str(image),
                             "--sparse"),
            )  # fmt: skip
            row(
                "virsh vol-download --sparse",
                lambda: _run("virsh", "-c", uri, "vol-download", "--pool", POOL, "vol", str(out),
                             "--sparse"),
                check=True,
            )  # fmt: skip
            row(
                "virtvol vol-upload",
                lambda: _run(*virtvol, "vol-upload", "vol", str(image), "--pool", POOL),
            )
            row(
                "virtvol vol-download",
                lambda: _run(*virtvol, "vol-download", "vol", str(out), "--pool", POOL),
                check=True,
            )
            if _exists(rbd, "direct"):
                _run(*rbd, "rm", "rbd/direct")
            row(
                "rbd import",
                lambda: _run(*rbd, "import", "--no-progress", str(image), "rbd/direct"),
            )
            row(
                "rbd export",
                lambda: _run(*rbd, "export", "--no-progress", "rbd/direct", str(out)),
                check=True,
            )
        print(f"rbd pool, {size // MIB} MiB image (half data), median of {args.repeat}:")
        for label, seconds in rows.items():
            median = statistics.median(seconds)
            print(f"  {label:30s} {median:7.3f} s  {size / median / MIB:8.1f} MiB/s")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _exists(rbd: list[str], name: str) -> bool:
    listing = subprocess.run([*rbd, "ls", "rbd"], capture_output=True, text=True, check=True)
    return name in listing.stdout.split()


if __name__ == "__main__":
    main()
