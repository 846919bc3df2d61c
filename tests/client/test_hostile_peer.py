"""A daemon that means harm, or is broken, met by either engine: the client's memory stays
bounded by what it holds, not by what the peer sends. The peer is ``FakePeer``, scripted
on the protocol core."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.client.fake_peer import FakePeer
from tests.client.helpers import ENGINES, on_engine
from virtvol.client.direct import DirectRpc
from virtvol.client.rpc import RpcProtocol
from virtvol.protocol import remote as r
from virtvol.protocol.connection import CallReceived, PongReceived
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

    from virtvol.client.connection import Connection

# PINGs the flooding peer sends in one go (2.8 MB of them).
FLOOD = 100_000


@pytest.mark.parametrize("engine", ENGINES)
def test_a_flood_of_pings_from_a_peer_that_does_not_read_is_answered_once(
    tmp_path: Path, engine: str
) -> None:
    """The peer sends PINGs and reads nothing. One PONG was queued per PING, in the
    transport's buffer (the event loop's) or in the control frames waiting for a write
    (the blocking engine's): memory grew with everything the peer sent, 112 MB for 112 MB
    of PINGs. One PONG answers every PING before it, so none is queued while another
    still waits to go out."""

    def flood_then_answer(peer: FakePeer, event: CallReceived) -> None:
        # Sent from the peer's reading thread: it reads nothing meanwhile.
        peer.send(peer.core.send_ping() * FLOOD)
        peer.reply(event.serial, r.ConnectGetTypeRet(type="storage"))

    with FakePeer(tmp_path) as peer:  # no keepalive feature: the client sends no PINGs
        peer.handlers[Proc.CONNECT_GET_TYPE] = flood_then_answer

        async def flooded(conn: Connection) -> None:
            assert await conn.get_type() == "storage"
            del peer.handlers[Proc.CONNECT_GET_TYPE]
            # Answered once the peer has read everything the client sent before.
            assert await conn.get_type() == "storage"
            rpc = conn._rpc
            assert isinstance(rpc, DirectRpc | RpcProtocol)
            assert rpc.pings_received == FLOOD

        on_engine(engine, peer.uri, flooded, keepalive=None)
        pongs = sum(isinstance(event, PongReceived) for event in peer.events)
    assert 1 <= pongs < FLOOD // 10
