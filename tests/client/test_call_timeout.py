"""A call the daemon never answers ends with ``CallTimeout`` after its ``timeout``;
an argument the protocol cannot carry is refused before anything is sent. Either
way the connection stays usable.

The peer is a small server on the protocol core that answers the handshake and
holds back the answer to every pool lookup until the test releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import pytest

import virtvol.client
from tests.client.helpers import until
from tests.conftest import free_port
from virtvol.client.rpc import RpcProtocol
from virtvol.protocol import procedures
from virtvol.protocol import remote as r
from virtvol.protocol.connection import CallReceived, Connection, Side
from virtvol.protocol.constants import REMOTE_STRING_MAX, AuthType
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from virtvol.protocol.xdr import XdrStruct

POOL = r.StoragePool(name="default", uuid=bytes(16))
ANSWERS: dict[int, XdrStruct | None] = {
    Proc.AUTH_LIST: r.AuthListRet(types=(AuthType.NONE,)),
    Proc.CONNECT_SUPPORTS_FEATURE: r.ConnectSupportsFeatureRet(supported=0),
    Proc.CONNECT_OPEN: None,
    Proc.CONNECT_CLOSE: None,
    Proc.CONNECT_GET_TYPE: r.ConnectGetTypeRet(type="storage"),
}


class SlowServer:
    """Answers ANSWERS at once; pool lookups wait for ``release``."""

    def __init__(self) -> None:
        self.held: list[int] = []
        self.calls: list[int] = []
        self.release = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        core = Connection(Side.SERVER)
        late: set[asyncio.Task[None]] = set()
        try:
            while data := await reader.read(65536):
                core.receive_data(data)
                for event in core.events():
                    assert isinstance(event, CallReceived), event
                    self.calls.append(event.procedure.number)
                    if event.procedure.number == Proc.STORAGE_POOL_LOOKUP_BY_NAME:
                        self.held.append(event.serial)
                        task = asyncio.create_task(self._answer_late(core, writer, event.serial))
                        late.add(task)
                    else:
                        writer.write(core.reply(event.serial, ANSWERS[event.procedure.number]))
        finally:
            for task in late:
                task.cancel()
            writer.close()

    async def _answer_late(
        self, core: Connection, writer: asyncio.StreamWriter, serial: int
    ) -> None:
        await self.release.wait()
        writer.write(core.reply(serial, r.PoolRet(pool=POOL)))


@contextlib.asynccontextmanager
async def slow_server() -> AsyncIterator[tuple[SlowServer, str]]:
    peer = SlowServer()
    port = free_port()
    server = await asyncio.start_server(peer.serve, "127.0.0.1", port)
    try:
        yield peer, f"storage+tcp://127.0.0.1:{port}/system"
    finally:
        server.close()
        await server.wait_closed()


async def test_an_unanswered_call_times_out_and_the_connection_goes_on() -> None:
    async with slow_server() as (peer, uri), virtvol.client.connect(uri) as conn:
        started = asyncio.get_running_loop().time()
        with pytest.raises(virtvol.client.CallTimeout) as info:
            await conn.lookup_pool_by_name("default", timeout=0.3)
        waited = asyncio.get_running_loop().time() - started
        assert 0.3 <= waited < 5
        assert isinstance(info.value, TimeoutError)
        assert str(info.value) == (
            f"no answer to STORAGE_POOL_LOOKUP_BY_NAME from {uri} within 0.3 s"
        )
        assert len(peer.held) == 1
        # The late answer is dropped quietly; the connection keeps working.
        peer.release.set()
        assert await conn.get_type(timeout=5) == "storage"
        pool = await conn.lookup_pool_by_name("default", timeout=5)
        assert pool.name == "default"
        assert conn.is_alive


async def test_a_cancelled_call_leaves_the_connection_usable() -> None:
    async with slow_server() as (peer, uri), virtvol.client.connect(uri) as conn:
        lookup = asyncio.create_task(conn.lookup_pool_by_name("default"))
        await until(lambda: len(peer.held) == 1)
        lookup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lookup
        # The answer to the cancelled call comes late, and is dropped.
        peer.release.set()
        assert await conn.get_type(timeout=5) == "storage"
        assert (await conn.lookup_pool_by_name("default", timeout=5)).name == "default"
        assert len(peer.held) == 2
        assert conn.is_alive


async def test_an_argument_too_long_for_the_wire_is_refused_before_sending() -> None:
    async with slow_server() as (peer, uri), virtvol.client.connect(uri) as conn:
        sent = len(peer.calls)
        with pytest.raises(virtvol.client.UnsendableValue, match=r"LookupByNameArgs\.name"):
            await conn.lookup_pool_by_name("x" * (REMOTE_STRING_MAX + 1), timeout=5)
        assert await conn.get_type(timeout=5) == "storage"
        assert peer.calls[sent:] == [Proc.CONNECT_GET_TYPE]
        assert conn.is_alive


class AnsweringNextTurn(asyncio.Transport):
    """A peer on the protocol core that answers each call on the next turn of the loop,
    ahead of any timer that falls due in that turn: as a reply read from the socket in
    the same turn as the deadline's timer, when the loop was busy for a while."""

    def __init__(self, client: RpcProtocol) -> None:
        super().__init__()
        self.client = client
        self.server = Connection(Side.SERVER)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        asyncio.get_running_loop().call_soon(self._answer, bytes(data))

    def _answer(self, data: bytes) -> None:
        self.server.receive_data(data)
        for event in self.server.events():
            assert isinstance(event, CallReceived), event
            reply = memoryview(self.server.reply(event.serial, ANSWERS[event.procedure.number]))
            while reply:
                buffer = self.client.get_buffer(-1)
                count = min(len(buffer), len(reply))
                buffer[:count] = reply[:count]
                self.client.buffer_updated(count)
                reply = reply[count:]

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False


async def test_an_answer_that_comes_as_the_deadline_passes_is_the_calls_result() -> None:
    """The answer and the deadline reach the waiting call in the same turn of the loop
    (a timeout of 0 falls due in the very next turn): the call has its answer, which the
    peer gave; it is neither lost nor turned into a bare ``TimeoutError``."""
    rpc = RpcProtocol("storage+tcp://peer/system")
    rpc.connection_made(AnsweringNextTurn(rpc))
    assert (await rpc.call(procedures.CONNECT_GET_TYPE, timeout=0)).type == "storage"
    assert (await rpc.call(procedures.CONNECT_GET_TYPE, timeout=5)).type == "storage"
