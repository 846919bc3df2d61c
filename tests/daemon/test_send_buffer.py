"""virtvold widens a Unix connection's send buffer when a download opens on it (the
kernel's default of ~208 KiB held a local download to two thirds of the socket's rate:
docs/performance.md), and leaves it alone otherwise."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import termios
from typing import TYPE_CHECKING

from tests.client.helpers import until
from tests.conftest import default_send_buffer, send_buffer_granted
from tests.daemon.conftest import RawClient, in_process_client, served_connection
from virtvol.daemon.connection import DOWNLOAD_UNIX_SEND_BUFFER
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from tests.conftest import Virtvold
    from virtvol.daemon.context import DaemonContext

MIB = 1 << 20


def _send_buffer(context: DaemonContext) -> int:
    served = served_connection(context)
    assert served._transport is not None
    sock = served._transport.get_extra_info("socket")
    assert sock.family == socket.AF_UNIX
    size: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return size


async def _open_stream(client: RawClient, procedure: Proc) -> None:
    vol = await client.volume("disk.img")
    opened = await client.call(procedure, r.VolTransferArgs(vol, 0, 0, 0))
    assert isinstance(opened, ReplyReceived), opened


async def test_only_a_download_widens_the_send_buffer(context: DaemonContext) -> None:
    async with in_process_client(context) as client:
        default = _send_buffer(context)
        assert default < send_buffer_granted(DOWNLOAD_UNIX_SEND_BUFFER)
        await _open_stream(client, Proc.STORAGE_VOL_UPLOAD)
        assert _send_buffer(context) == default
    async with in_process_client(context) as client:
        await _open_stream(client, Proc.STORAGE_VOL_DOWNLOAD)
        assert _send_buffer(context) == send_buffer_granted(DOWNLOAD_UNIX_SEND_BUFFER)


def _unread(sock: socket.socket) -> int:
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4)
    return int.from_bytes(raw, "little", signed=True)


async def test_a_download_left_unread_fills_more_than_the_default_buffer(
    virtvold: Virtvold,
) -> None:
    """Seen from the client: what waits unread in the kernel is bounded by the daemon's
    send buffer, and goes past what the default lets wait (~208 KiB) halfway to what the
    wider one does (2 MiB where ``net.core.wmem_max`` allows 1 MiB, ~416 KiB on a stock
    kernel)."""
    default, widened = default_send_buffer(), send_buffer_granted(DOWNLOAD_UNIX_SEND_BUFFER)
    assert widened > default
    beyond_the_default = (default + widened) // 2
    (virtvold.pool_dir / "big.img").write_bytes(bytes(range(1, 256)) * (16 * MIB // 255))
    path = virtvold.unix_uri.split("socket=", 1)[1]
    client = RawClient(*await asyncio.open_unix_connection(path))
    try:
        await client.open()
        vol = await client.volume("big.img", pool=virtvold.pool_name)
        opened = await client.call(Proc.STORAGE_VOL_DOWNLOAD, r.VolTransferArgs(vol, 0, 0, 0))
        assert isinstance(opened, ReplyReceived), opened
        # The stream reader pauses at a small limit; the rest stays in the kernel.
        sock = client.writer.get_extra_info("socket")
        await until(lambda: _unread(sock) > beyond_the_default)
    finally:
        await client.close()
