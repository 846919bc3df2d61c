"""Written memory goes back to its owner as soon as the transport has sent it on."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from virtvol.client.rpc import RpcProtocol

uvloop = pytest.importorskip("uvloop")

FRAME = 1 << 20
FRAMES = 8


async def _released_while_later_frames_wait() -> None:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, rpc = await loop.create_connection(lambda: RpcProtocol("test"), sock=ours)
    try:
        assert rpc.holds_views()
        payloads = [memoryview(bytearray([n + 1]) * FRAME) for n in range(FRAMES)]
        head = bytes(28)
        released: list[tuple[int, int]] = []  # (frame, unsent bytes when released)
        ends = []
        for n, payload in enumerate(payloads):

            def release(n: int = n) -> None:
                released.append((n, transport.get_write_buffer_size()))

            rpc.write_data(head, payload, release=release)
            ends.append((n + 1) * (FRAME + len(head)))
        total = ends[-1]
        assert transport.get_write_buffer_size() > 0
        received = 0
        for _ in range(2000):
            with contextlib.suppress(BlockingIOError):
                received += len(peer.recv(256 * 1024))
            await asyncio.sleep(0.002)
            if len(released) == FRAMES:
                break
        # In order, each only once its own bytes left the transport.
        assert [n for n, _ in released] == list(range(FRAMES))
        for n, unsent in released:
            assert total - unsent >= ends[n]
        # The first came back while later frames still waited to be sent.
        assert released[0][1] > 0
        while received < total:
            try:
                received += len(peer.recv(1 << 20))
            except BlockingIOError:
                await asyncio.sleep(0.001)
    finally:
        transport.close()
        peer.close()


def test_release_follows_each_frame_out() -> None:
    uvloop.run(_released_while_later_frames_wait())
