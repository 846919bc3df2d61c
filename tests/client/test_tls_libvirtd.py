"""virtvol (library and command) against a real libvirtd 9.0 listening for TLS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import virtvol.client
from tests.client.helpers import MIB, allocated, write_sparse_image
from tests.conftest import free_port, run_virsh
from tests.tlsca import Pki
from tools import libvirtd_peer
from virtvol.client.errors import LibvirtError

if TYPE_CHECKING:
    from collections.abc import Iterator

REFUSED = "Unable to read TLS confirmation: Input/output error"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_libvirtd(pki: Pki) -> Iterator[libvirtd_peer.LibvirtdPeer]:
    """libvirtd with TLS (allow-list: libvirt's example DN) and an active pool "default"."""
    base = Path(tempfile.mkdtemp(prefix="virtvol-tls-ref-", dir="/tmp"))
    base.chmod(0o755)
    tls = libvirtd_peer.PeerTls(
        free_port(), pki.server, ("C=GB,ST=London,L=London,O=Red Hat,CN=*",)
    )
    peer = libvirtd_peer.start(base / "state", free_port(), tls=tls)
    try:
        pool_dir = base / "state" / "pool"
        run_virsh(
            peer.tcp_uri, f"pool-define-as default dir --target {pool_dir}; pool-start default"
        )
        yield peer
    finally:
        peer.stop()
        shutil.rmtree(base, ignore_errors=True)


async def test_sparse_round_trip(
    tls_libvirtd: libvirtd_peer.LibvirtdPeer, pki: Pki, tmp_path: Path
) -> None:
    source = tmp_path / "source.img"
    data = write_sparse_image(source, 24 * MIB)
    out = tmp_path / "out.img"
    async with virtvol.client.connect(tls_libvirtd.tls_uri(pki.client_dir("client"))) as conn:
        pool = await conn.lookup_pool_by_name("default")
        vol = await pool.create_volume(
            f"<volume><name>disk</name><capacity unit='bytes'>{24 * MIB}</capacity>"
            "<allocation>0</allocation></volume>"
        )
        sent = await vol.upload_file(source)
        received = await vol.download_file(out)
    assert out.read_bytes() == data
    assert sent.sparse
    assert received.sparse
    assert received.hole_bytes > 0
    assert allocated(out) <= allocated(source) + 64 * 1024


async def test_refused_as_virsh_is(tls_libvirtd: libvirtd_peer.LibvirtdPeer, pki: Pki) -> None:
    uri = tls_libvirtd.tls_uri(pki.client_dir("other"))
    with pytest.raises(LibvirtError) as caught:
        await virtvol.client.connect(uri)
    virsh = run_virsh(uri, "uri", check=False)
    assert virsh.returncode == 1
    assert f"error: {caught.value.message}" in virsh.stderr
    assert caught.value.message == REFUSED
    log = tls_libvirtd.log_path.read_text(errors="replace")
    assert "not on the list of allowed clients" in log


def test_cli_lists_pools(tls_libvirtd: libvirtd_peer.LibvirtdPeer, pki: Pki) -> None:
    cli = Path(sys.executable).parent / "virtvol"
    proc = subprocess.run(
        [str(cli), "-c", tls_libvirtd.tls_uri(pki.client_dir("client")), "pool-list"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert proc.returncode == 0, proc.stderr
    assert " default   active   no" in proc.stdout


def _virtvol(*args: str) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "virtvol"
    return subprocess.run(
        [str(cli), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "LC_ALL": "C"},
    )


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_cli_moves_exact_bytes_over_its_blocking_tls_socket(
    tls_libvirtd: libvirtd_peer.LibvirtdPeer, pki: Pki, tmp_path: Path, *, sparse: bool
) -> None:
    """The command line's own TLS socket (no event loop): data in many TLS records each
    way, a sparse image's holes as skips or a dense file's bytes."""
    source = tmp_path / "source.img"
    if sparse:
        data = write_sparse_image(source, 24 * MIB)
    else:
        data = os.urandom(8 * MIB + 12345)
        source.write_bytes(data)
    connection = ["-c", tls_libvirtd.tls_uri(pki.client_dir("client"))]
    run_virsh(tls_libvirtd.tcp_uri, f"vol-create-as default disk {len(data)} --allocation 0")
    flags = ["--sparse"] if sparse else []
    up = _virtvol(*connection, "vol-upload", "disk", str(source), "--pool", "default", *flags)
    assert up.returncode == 0, up.stderr
    out = tmp_path / "out.img"
    down = _virtvol(*connection, "vol-download", "disk", str(out), "--pool", "default", *flags)
    assert down.returncode == 0, down.stderr
    assert out.read_bytes() == data
    if sparse:
        assert allocated(out) <= allocated(source) + 64 * 1024


def test_cli_refused_as_virsh_is(tls_libvirtd: libvirtd_peer.LibvirtdPeer, pki: Pki) -> None:
    uri = tls_libvirtd.tls_uri(pki.client_dir("other"))
    ours = _virtvol("-c", uri, "pool-list")
    virsh = run_virsh(uri, "pool-list", check=False)
    assert (ours.returncode, virsh.returncode) == (1, 1)
    assert f"error: {REFUSED}" in ours.stderr
    assert f"error: {REFUSED}" in virsh.stderr
