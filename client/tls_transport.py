"""The event loop's side of libvirt's TLS transport: the handshake and the server's
confirmation byte over an asyncio transport, then the RPC protocol on it (see ``tls``
for the exchange, the credentials and the wording of failures)."""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from virtvol.client.errors import LibvirtError
from virtvol.client.tls import check_confirmation, handshake_failure, unconfirmed

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

__all__ = ["open_tls"]


class _Confirmation(asyncio.Protocol):
    """Waits for the server's confirmation byte, then hands the transport over."""

    def __init__(self) -> None:
        self.result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.result.done():
            self.result.set_result(data)

    def eof_received(self) -> bool | None:
        # Not every event loop tells a clean TLS close from a dropped connection here,
        # and libvirtd refuses by dropping: both read as "Unable to read TLS confirmation".
        self.connection_lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_exception(ConnectionResetError("connection closed"))


async def open_tls(
    sock: socket.socket,
    server_name: str,
    context: ssl.SSLContext,
    make_protocol: Callable[[], asyncio.BaseProtocol],
) -> asyncio.BaseProtocol:
    """Over the connected ``sock``, shake hands with ``server_name`` (checked against
    its certificate if ``context`` says so), wait for the confirmation byte and return
    the RPC protocol.

    Raises:
        LibvirtError: the handshake failed, the server's certificate did not pass,
            or the server refused ours (libvirt's messages).
        OSError: the connection broke.
    """
    loop = asyncio.get_running_loop()
    try:
        transport, gate = await loop.create_connection(
            _Confirmation, sock=sock, ssl=context, server_hostname=server_name
        )
    except ssl.SSLError as exc:
        raise handshake_failure(exc) from None
    try:
        first = await gate.result
    except OSError:  # ssl.SSLError included
        transport.abort()
        raise unconfirmed() from None
    except BaseException:  # a time limit, a cancelled task: the connection goes too
        transport.abort()
        raise
    try:
        check_confirmation(first)
    except LibvirtError:
        transport.abort()
        raise
    protocol = make_protocol()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return protocol
