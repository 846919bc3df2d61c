"""The client's side of libvirt's TLS exchange against a scripted server, on both
engines: the library's event loop and the command line's blocking socket (``direct``)."""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING, Any

import pytest

import virtvol.client
from tests.tlsca import Pki, write_server_pki
from virtvol.client import connection, direct
from virtvol.client.direct import open_direct, run_blocking
from virtvol.client.errors import LibvirtError, TransportError
from virtvol.protocol.errors import ErrorCode

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from virtvol.client.connection import Connection

ENGINES = ["event-loop", "direct"]


async def _open(engine: str, uri: str, timeout: float | None = None) -> Connection:
    """A connection to ``uri`` on ``engine``; the blocking one in a thread, so that this
    loop goes on serving the scripted server."""
    if engine == "event-loop":
        return await virtvol.client.connect(uri, timeout=timeout)
    return await asyncio.to_thread(run_blocking, open_direct(uri, time_limit=timeout))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


async def _scripted_server(
    pki: Pki, first: bytes, server: Path, hung_up: asyncio.Event | None = None
) -> AsyncIterator[int]:
    """A TLS server with the certificate in ``server`` that sends ``first`` and waits
    (``hung_up`` is set when a client hangs up)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server / "servercert.pem", server / "serverkey.pem")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(first)
        await writer.drain()
        with contextlib.suppress(OSError):  # a client's reset is a hang-up too
            await reader.read()  # until the client hangs up
        if hung_up is not None:
            hung_up.set()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    async with listener:
        yield listener.sockets[0].getsockname()[1]


@pytest.fixture
async def wrong_byte_server(pki: Pki) -> AsyncIterator[int]:
    async for port in _scripted_server(pki, b"\x00", pki.server):
        yield port


@pytest.fixture
async def misnamed_server(pki: Pki, tmp_path: Path) -> AsyncIterator[int]:
    server = write_server_pki(pki.ca, tmp_path / "misnamed", names=("storage.example",))
    async for port in _scripted_server(pki, b"\x00", server):
        yield port


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_server_that_does_not_confirm(
    wrong_byte_server: int, pki: Pki, engine: str
) -> None:
    uri = f"storage+tls://127.0.0.1:{wrong_byte_server}/system?pkipath={pki.client_dir('client')}"
    with pytest.raises(LibvirtError) as caught:
        await _open(engine, uri, timeout=10)
    assert caught.value.code == ErrorCode.RPC
    assert caught.value.message == "server verification (of our certificate or IP address) failed"


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_server_name_must_match(misnamed_server: int, pki: Pki, engine: str) -> None:
    """A certificate for another name than the URI's host fails, unless no_verify=1."""
    client = pki.client_dir("client")
    uri = f"storage+tls://127.0.0.1:{misnamed_server}/system?pkipath={client}"
    with pytest.raises(LibvirtError) as caught:
        await _open(engine, uri, timeout=10)
    assert caught.value.code == ErrorCode.AUTH_FAILED
    assert caught.value.message == "authentication failed: Failed to verify peer's certificate"
    with pytest.raises(LibvirtError) as unverified:
        await _open(engine, uri + "&no_verify=1", timeout=10)
    # Past the certificate check: now the missing confirmation is what fails.
    assert unverified.value.code == ErrorCode.RPC


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_time_limit_during_the_confirmation_hangs_up(pki: Pki, engine: str) -> None:
    # A server that never sends the confirmation byte: the time limit ends the wait and
    # the connection with it (it used to stay open until the event loop closed).
    hung_up = asyncio.Event()
    async for port in _scripted_server(pki, b"", pki.server, hung_up):
        uri = f"storage+tls://127.0.0.1:{port}/system?pkipath={pki.client_dir('client')}"
        with pytest.raises(TimeoutError):
            await _open(engine, uri, timeout=0.5)
        await asyncio.wait_for(hung_up.wait(), 5)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("host", ["127.0.0.1", "no-such-host.invalid"])
async def test_missing_ca_is_reported_before_connecting(
    tmp_path: Path, host: str, engine: str
) -> None:
    # Before the name is even looked up, as libvirt reads its credentials first.
    with pytest.raises(LibvirtError) as caught:
        await _open(engine, f"storage+tls://{host}:1/system?pkipath={tmp_path}")
    assert caught.value.message == (
        f"Cannot read CA certificate '{tmp_path}/cacert.pem': No such file or directory"
    )


@pytest.fixture(params=["at once", "after the hello"])
async def hanging_up_server(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """A TCP server that closes every connection before any TLS (a plain listener in the
    TLS port's place, a daemon at its client limit): at once (the client meets a reset or
    a clean end, whichever its hello races), or once it read the client's hello (a clean
    end in the middle of the handshake)."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if request.param == "after the hello":
            await reader.read(65536)
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with listener:
        yield listener.sockets[0].getsockname()[1]


async def test_a_hang_up_during_the_handshake_reads_alike_on_both_engines(
    hanging_up_server: int, pki: Pki
) -> None:
    uri = f"storage+tls://127.0.0.1:{hanging_up_server}/system?pkipath={pki.client_dir('client')}"
    messages = []
    for engine in ENGINES:
        with pytest.raises(TransportError) as caught:
            await _open(engine, uri, timeout=10)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"unable to connect to server at '127.0.0.1:{hanging_up_server}'")


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_host_name_tls_cannot_check_is_refused_in_one_sentence(
    pki: Pki, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name the IDNA codec refuses (a label over 63 characters) that resolves: with the
    certificate checked, the connection is refused before connecting, said once (it read
    "unable to connect to server at ...: unable to connect to server at ...: ...")."""
    host = "a" * 64 + ".example"

    def loopback(_host: bytes, port: int) -> list[Any]:
        return _socket.getaddrinfo("127.0.0.1", port, 0, _socket.SOCK_STREAM)

    async def loopback_on_a_loop(_loop: object, target: Any) -> list[Any]:
        return [(*found[:3], found[4]) for found in loopback(b"", target.port)]

    monkeypatch.setattr(direct, "_addresses", loopback)
    monkeypatch.setattr(connection, "_addresses", loopback_on_a_loop)
    uri = f"storage+tls://{host}:1/system?pkipath={pki.client_dir('client')}"
    with pytest.raises(TransportError) as caught:
        await _open(engine, uri, timeout=10)
    assert str(caught.value) == (
        f"unable to connect to server at '{host}:1': "
        "the host name cannot be checked against a certificate"
    )
