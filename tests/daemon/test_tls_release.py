"""A finished TLS connection lets go of its memory at once, on both ends, under uvloop.

uvloop's TLS transport keeps bound methods of its protocol after the connection is
lost; a protocol that keeps its transport then lives in a reference cycle, and with it
the stream buffers (megabytes per download), until the garbage collector happens to run.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
import uvloop

import virtvol.client
from tests.conftest import free_port
from tests.tlsca import Pki
from virtvol.daemon.config import Overrides, Settings
from virtvol.daemon.connection import ClientConnection
from virtvol.daemon.service import Daemon
from virtvol.daemon.systemd import Notifier

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


async def _download_and_watch(pki: Pki, tmp_path: Path) -> tuple[bool, bool]:
    port = free_port()
    settings = replace(
        Settings(),
        listen=(f"tls://127.0.0.1:{port}",),
        pools={"default": str(tmp_path / "pool")},
        state_dir=str(tmp_path / "state"),
        ca_file=str(pki.server / "cacert.pem"),
        cert_file=str(pki.server / "servercert.pem"),
        key_file=str(pki.server / "serverkey.pem"),
    )
    daemon = Daemon(settings, Overrides(), Notifier.from_environment())
    await daemon.start()
    try:
        (tmp_path / "pool" / "disk").write_bytes(b"x" * (3 << 20))
        uri = f"storage+tls://127.0.0.1:{port}/system?pkipath={pki.client_dir('client')}"
        conn = await virtvol.client.connect(uri)
        pool = await conn.lookup_pool_by_name("default")
        await pool.refresh()
        vol = await pool.lookup_volume("disk")
        await vol.download_file(tmp_path / "out")
        served = next(iter(daemon.context.connections))
        assert isinstance(served, ClientConnection)
        server_side = weakref.ref(served)
        served_closed = served.closed
        client_side = weakref.ref(conn._rpc)
        del served, pool, vol
        await conn.close()
        del conn
        await asyncio.wait_for(served_closed, 10)
        await asyncio.sleep(0.1)  # let the loop run the last callbacks of both ends
        return server_side() is None, client_side() is None
    finally:
        daemon.request_stop()
        await daemon.stop()


def test_connections_are_freed_without_the_garbage_collector(pki: Pki, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        # What earlier tests left for the collector is theirs to answer for, not this test's.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    gc.disable()
    try:
        server_freed, client_freed = uvloop.run(_download_and_watch(pki, tmp_path))
    finally:
        gc.enable()
    assert server_freed
    assert client_freed
