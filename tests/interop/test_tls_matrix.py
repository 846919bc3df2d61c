"""The interop matrix of docs/interop.md over TLS, sparse asked: every client against every
daemon through libvirt's TLS transport, with client certificates from a throwaway CA.

The relay of test_matrix.py cannot read encrypted bytes, so each cell is checked by its
results (identical bytes, a sparse or dense destination, libvirt's refusal) and, where the
daemon is virtvold, by the daemon's own log line for the stream: sparse or not, and how
many holes crossed the connection as skip frames.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import free_port, run_virsh
from tests.interop.peers import (
    POOL,
    ClientUnderTest,
    DaemonUnderTest,
    traversable_tempdir,
    virtvold,
)
from tests.interop.recorder import Endpoint
from tests.interop.test_matrix import Cell, allocated, matrix_from_doc, write_source_image
from tests.tlsca import Pki
from tools import libvirtd_peer

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.interop

MIB = 1 << 20
CELLS = [cell for cell in matrix_from_doc() if cell.sparse_asked and cell.transport == "tcp"]


@dataclass(frozen=True)
class TlsDaemon:
    daemon: DaemonUnderTest
    tls_port: int
    log: Path | None  # virtvold's log (None for libvirtd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_daemons(pki: Pki) -> Iterator[dict[str, TlsDaemon]]:
    config = pki.base / "virtvold.toml"
    config.write_text(
        f'ca_file = "{pki.server / "cacert.pem"}"\n'
        f'cert_file = "{pki.server / "servercert.pem"}"\n'
        f'key_file = "{pki.server / "serverkey.pem"}"\n'
    )
    ports = {"virtvold": free_port(), "virtvold-legacy": free_port(), "libvirtd": free_port()}
    base = traversable_tempdir("virtvol-tls-matrix-ref-")
    peer = libvirtd_peer.start(
        base / "state", free_port(), tls=libvirtd_peer.PeerTls(ports["libvirtd"], pki.server)
    )
    pool_dir = base / "state" / "pool"
    run_virsh(peer.tcp_uri, f"pool-define-as {POOL} dir --target {pool_dir}; pool-start {POOL}")
    try:
        with (
            virtvold(
                legacy=False,
                extra_args=["--config", str(config), "--listen", tls_listen(ports["virtvold"])],
            ) as current,
            virtvold(
                legacy=True,
                extra_args=[
                    "--config",
                    str(config),
                    "--listen",
                    tls_listen(ports["virtvold-legacy"]),
                ],
            ) as legacy,
        ):
            reference = DaemonUnderTest(
                "libvirtd", Endpoint(port=peer.port), Endpoint(path=peer.unix_socket), pool_dir
            )
            yield {
                "virtvold": TlsDaemon(
                    current, ports["virtvold"], current.pool_dir.parent / "virtvold.log"
                ),
                "virtvold-legacy": TlsDaemon(
                    legacy, ports["virtvold-legacy"], legacy.pool_dir.parent / "virtvold.log"
                ),
                "libvirtd": TlsDaemon(reference, ports["libvirtd"], None),
            }
    finally:
        peer.stop()
        shutil.rmtree(base, ignore_errors=True)


def tls_listen(port: int) -> str:
    return f"tls://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def source_image() -> Iterator[Path]:
    workdir = traversable_tempdir("virtvol-tls-matrix-src-")
    image = workdir / "source.img"
    write_source_image(image)
    yield image
    shutil.rmtree(workdir, ignore_errors=True)


def _place_volume(daemon: DaemonUnderTest, name: str, source: Path | None) -> Path:
    target = daemon.pool_dir / name
    if source is None:
        size = str(4 * MIB + 1234)
        run_virsh(daemon.direct_uri, "vol-create-as", POOL, name, size, "--allocation", "0")
    else:
        subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
        target.chmod(0o644)
        run_virsh(daemon.direct_uri, "pool-refresh", POOL)
    return target


def _stream_line(log: Path, direction: str, name: str) -> str:
    """virtvold's log line for the stream (written as the stream ends: wait a little)."""
    pattern = re.compile(rf" {direction} (?:\S+/)?{re.escape(name)}: .*$", re.MULTILINE)
    deadline = time.monotonic() + 10
    while True:
        found = pattern.findall(log.read_text(errors="replace"))
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(found) == 1, log.read_text(errors="replace")
    line: str = found[0]
    return line


@pytest.mark.parametrize("cell", CELLS, ids=[f"{c.client}-{c.daemon}-{c.direction}" for c in CELLS])
def test_tls_matrix_cell(
    cell: Cell,
    tls_daemons: dict[str, TlsDaemon],
    pki: Pki,
    source_image: Path,
    tmp_path: Path,
) -> None:
    target = tls_daemons[cell.daemon]
    name = f"tls-{cell.client}-{cell.direction}.img"
    volume = _place_volume(
        target.daemon, name, None if cell.direction == "upload" else source_image
    )
    before = volume.read_bytes()
    output = tmp_path / "downloaded.img"
    local = source_image if cell.direction == "upload" else output
    path = "session" if cell.daemon == "libvirtd" else "system"
    uri = f"storage+tls://127.0.0.1:{target.tls_port}/{path}?pkipath={pki.client_dir('client')}"
    result = ClientUnderTest(cell.client).run(uri, cell.direction, name, local, sparse_asked=True)
    try:
        if cell.outcome == "refused":
            function = "storageVolUpload" if cell.direction == "upload" else "storageVolDownload"
            assert result.returncode == 1, result.stderr
            assert f"error: unsupported flags (0x1) in function {function}" in result.stderr
            assert volume.read_bytes() == before
            assert not output.exists()
            return
        assert result.returncode == 0, result.stdout + result.stderr
        destination = volume if cell.direction == "upload" else output
        assert destination.read_bytes() == source_image.read_bytes()
        if cell.outcome == "dense":
            assert allocated(destination) >= 4 * MIB
        else:
            assert allocated(destination) < MIB
        if target.log is not None:
            line = _stream_line(target.log, cell.direction, name)
            if cell.outcome == "sparse":
                counted = re.search(
                    r"data bytes and (\d+) holes \(\d+ bytes\) on a sparse stream", line
                )
                assert counted is not None, line
                assert int(counted.group(1)) > 0
            else:  # a dense stream: zeros travelled as data
                assert "on a plain stream (holes travel as zeros)" in line, line
    finally:
        volume.unlink(missing_ok=True)
