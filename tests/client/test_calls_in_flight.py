"""Several calls in flight (``call_all``, used by the listings), on both engines, against
a peer that holds its answers back and gives them in an order of its own."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

import pytest

from tests.client.fake_peer import POOL, FakePeer, storage_error
from tests.client.helpers import ENGINES, on_engine
from virtvol.client.direct import DirectRpc
from virtvol.client.errors import ConnectionClosed, NoStorageVolume
from virtvol.client.objects import CALLS_IN_FLIGHT, StorageVolume, describe_volumes
from virtvol.client.rpc import RpcProtocol
from virtvol.protocol import procedures
from virtvol.protocol import remote as r
from virtvol.protocol.error_codes import ErrorCode
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

    from virtvol.client.connection import Connection
    from virtvol.protocol.connection import CallReceived

VOLUMES = [
    r.StorageVol(pool=POOL, name=f"v{index:02}", key=f"/pool/v{index:02}") for index in range(13)
]


class HoldingPeer:
    """Answers STORAGE_VOL_GET_PATH only once ``hold`` calls are waiting (or no more can
    come), the newest first; "v05" is answered with an error."""

    def __init__(self, peer: FakePeer, hold: int) -> None:
        self.peer = peer
        self.hold = hold
        self.waiting: list[CallReceived] = []
        self.most_waiting = 0
        self.lock = threading.Lock()
        peer.handlers[Proc.STORAGE_VOL_GET_PATH] = self.arrived

    def arrived(self, peer: FakePeer, call: CallReceived) -> None:
        with self.lock:
            self.waiting.append(call)
            self.most_waiting = max(self.most_waiting, len(self.waiting))
            if len(self.waiting) < self.hold:
                # Fewer may be all there is: answer them if no more come.
                peer.later(0.3, self.answer_if_still, len(self.waiting))
                return
        self.answer()

    def answer_if_still(self, count: int) -> None:
        with self.lock:
            if len(self.waiting) != count:
                return
        self.answer()

    def answer(self) -> None:
        with self.lock:
            calls, self.waiting = self.waiting, []
        for call in reversed(calls):
            assert isinstance(call.args, r.VolArgs)
            name = call.args.vol.name
            if name == "v05":
                message = f"Storage volume not found: no storage vol with matching name '{name}'"
                self.peer.refuse(call.serial, storage_error(ErrorCode.NO_STORAGE_VOL, message))
            else:
                self.peer.reply(call.serial, r.VolGetPathRet(f"/pool/{name}"))


@pytest.mark.parametrize("engine", ENGINES)
def test_calls_go_out_a_window_at_a_time_and_answers_find_their_calls(
    tmp_path: Path, engine: str
) -> None:
    """The peer answers nothing until CALLS_IN_FLIGHT calls wait, then the newest first:
    exactly that many are ever out, each answer goes to its own volume, and a failed one
    is None in its place."""
    with FakePeer(tmp_path) as peer:
        holding = HoldingPeer(peer, CALLS_IN_FLIGHT)

        async def describe(conn: Connection) -> list[tuple[str | None, object]]:
            volumes = [StorageVolume.from_wire(conn, vol) for vol in VOLUMES]
            return list(await describe_volumes(volumes, info=False))

        described = on_engine(engine, peer.uri, describe, keepalive=None)
    assert holding.most_waiting == CALLS_IN_FLIGHT
    expected = [None if vol.name == "v05" else f"/pool/{vol.name}" for vol in VOLUMES]
    assert [path for path, _ in described] == expected


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("window", [0, -1])
def test_a_window_below_one_is_refused(tmp_path: Path, engine: str, window: int) -> None:
    with FakePeer(tmp_path) as peer:

        async def call(conn: Connection) -> None:
            with pytest.raises(ValueError, match="window must be at least 1"):
                await conn._rpc.call_all([(procedures.CONNECT_GET_TYPE, None)], window=window)

        on_engine(engine, peer.uri, call, keepalive=None)


def test_cancelled_with_calls_out_forgets_them_at_once(tmp_path: Path) -> None:
    """Cancelled while the peer holds every answer: the calls still out are forgotten at
    once, not when (or if) their answers come, and the connection goes on."""
    with FakePeer(tmp_path) as peer:
        HoldingPeer(peer, len(VOLUMES) + 1)  # holds them all, answers after 0.3 s

        async def cancel_then_call(conn: Connection) -> None:
            volumes = [StorageVolume.from_wire(conn, vol) for vol in VOLUMES]
            describing = asyncio.ensure_future(describe_volumes(volumes, info=False))
            await asyncio.sleep(0.05)
            describing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await describing
            rpc = conn._rpc
            assert isinstance(rpc, RpcProtocol)
            assert not rpc._waiters  # before any answer came
            assert await conn.get_type() == "storage"

        on_engine("event-loop", peer.uri, cancel_then_call, keepalive=None)


def test_a_connection_lost_with_calls_out_fails_and_forgets_them(tmp_path: Path) -> None:
    """The peer hangs up while calls wait: the command line's engine raises the loss (a
    listing fails, it does not show "unknown" rows) and keeps nothing of those calls."""
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.STORAGE_VOL_GET_PATH] = lambda peer, call: peer.hang_up()

        async def describe(conn: Connection) -> None:
            volumes = [StorageVolume.from_wire(conn, vol) for vol in VOLUMES]
            with pytest.raises(ConnectionClosed):
                await describe_volumes(volumes, info=False)
            rpc = conn._rpc
            assert isinstance(rpc, DirectRpc)
            assert not rpc._awaited
            assert not rpc._replies

        on_engine("direct", peer.uri, describe, keepalive=None)


def test_no_storage_volume_stays_a_libvirt_error_for_single_calls(tmp_path: Path) -> None:
    # call_all turns refusals into values; a lone call still raises them.
    with FakePeer(tmp_path) as peer:
        HoldingPeer(peer, 1)

        async def lone(conn: Connection) -> None:
            with pytest.raises(NoStorageVolume):
                await StorageVolume.from_wire(conn, VOLUMES[5]).path()

        on_engine("direct", peer.uri, lone, keepalive=None)
