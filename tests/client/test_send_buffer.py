"""The client's Unix sockets get a send buffer of ``UNIX_SEND_BUFFER``: uploads fill it,
and the kernel's default of ~208 KiB held them to two thirds of the socket's rate
(docs/performance.md). TCP keeps the kernel's own sizing."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from tests.conftest import send_buffer_granted
from virtvol.client import connect, direct
from virtvol.client.connection import UNIX_SEND_BUFFER
from virtvol.client.direct import DirectRpc, open_direct, run_blocking

if TYPE_CHECKING:
    import pytest

    from tests.conftest import Virtvold


def _send_buffer(sock: Any) -> int:
    size: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return size


def _direct_send_buffer(uri: str) -> int:
    conn = run_blocking(open_direct(uri))
    try:
        rpc = conn._rpc
        assert isinstance(rpc, DirectRpc)
        return _send_buffer(rpc._sock)
    finally:
        run_blocking(conn.close())


def test_the_command_lines_unix_socket_has_the_wider_send_buffer(
    virtvold: Virtvold, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _direct_send_buffer(virtvold.unix_uri) == send_buffer_granted(UNIX_SEND_BUFFER)
    widened: list[object] = []
    monkeypatch.setattr(direct, "widen_unix_send_buffer", widened.append)
    _direct_send_buffer(virtvold.tcp_uri)
    assert widened == []  # TCP sizes its buffers as the data flows


async def test_the_librarys_unix_socket_has_the_wider_send_buffer(virtvold: Virtvold) -> None:
    async with connect(virtvold.unix_uri) as conn:
        transport = conn._rpc.transport  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        assert _send_buffer(sock) == send_buffer_granted(UNIX_SEND_BUFFER)
