"""Uploads cut mid-stream never write into another volume.

One client uploads 4 MiB frames of alternating 64 KiB data and zero blocks
and resets its connection in the middle, cycle after cycle, while another
keeps STORAGE_VOL_RESIZE calls (to the same size) in flight on other volumes
and more clients open in-place uploads of others and abort them, so the
daemon keeps opening and closing their files. A cleanup that
closed the upload's file while its worker thread was still writing would let
that thread's next pwrite or ftruncate land in a victim that reused the
descriptor number. Every victim is compared byte for byte afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
from typing import TYPE_CHECKING

from tests.daemon.conftest import RawClient, raw_client
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ErrorReplyReceived, ReplyReceived, StreamFinished
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from tests.conftest import Virtvold

MIB = 1 << 20
BLOCK = 64 << 10
VICTIMS = 16  # one resize in flight on each: every call thread keeps opening files
HELD = 8  # victims whose files in-place uploads keep opening, then abort
CYCLES = 80
TIME_BUDGET = 6.0  # seconds for the cycles; most machines run all of them in 3
MIN_CYCLES = 15  # the fewest that make the test mean something


def _frame(fill: int) -> bytes:
    """4 MiB of alternating 64 KiB data and zero blocks."""
    data, zeros = bytes([fill]) * BLOCK, bytes(BLOCK)
    return (data + zeros) * (4 * MIB // (2 * BLOCK))


def _reset(client: RawClient) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), as a crashed peer does."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


async def _cut_uploads(port: int, stop: asyncio.Event, rng: random.Random) -> int:
    cycles = 0
    while not stop.is_set() and cycles < CYCLES:
        client = await RawClient.connect(port)
        await client.open()
        vol = await client.volume("target")
        # Whole-volume uploads write a temporary file, ranged ones the volume in place.
        length = 0 if cycles % 2 == 0 else 1 << 30
        args = r.VolTransferArgs(vol=vol, offset=0, length=length, flags=1)
        for _ in range(500):  # the previous cut upload may still be winding down
            reply = await client.call(Proc.STORAGE_VOL_UPLOAD, args)
            if not isinstance(reply, ErrorReplyReceived) or "in use" not in str(reply.error):
                break
            await asyncio.sleep(0.01)
        assert isinstance(reply, ReplyReceived), reply
        serial = max(client.rpc.streams)
        frame = _frame(0x40 + cycles % 64)
        for _ in range(rng.randint(2, 6)):
            client.send(*client.rpc.send_data(serial, frame))
        await asyncio.sleep(rng.uniform(0, 0.005))
        _reset(client)
        cycles += 1
    return cycles


async def _hammer_resizes(port: int, stop: asyncio.Event, errors: list[str]) -> int:
    """Keep a resize to its current size going on every victim (one call each in flight)."""
    done = 0
    async with raw_client(port) as client:
        victims = [await client.volume(f"victim{i}") for i in range(VICTIMS)]
        in_flight: dict[int, r.StorageVol] = {}
        idle = list(victims)
        while not stop.is_set() or in_flight:
            while idle and not stop.is_set():
                vol = idle.pop()
                args = r.VolResizeArgs(vol=vol, capacity=MIB, flags=0)
                serial, frame = client.rpc.call(Proc.STORAGE_VOL_RESIZE, args)
                client.send(frame)
                in_flight[serial] = vol
            event = await client.next_event()
            assert event is not None, "the daemon closed the resizing connection"
            if isinstance(event, ErrorReplyReceived):
                # A victim that grew refuses the "shrink" to its old size.
                errors.append(f"{in_flight.pop(event.serial).name}: {event.error.message}")
            elif isinstance(event, ReplyReceived):
                idle.append(in_flight.pop(event.serial))
                done += 1
    return done


async def _hold_uploads(port: int, stop: asyncio.Event, name: str, errors: list[str]) -> None:
    """Open an in-place upload of victim ``name`` and abort it, again and again."""
    async with raw_client(port) as client:
        vol = await client.volume(name)
        args = r.VolTransferArgs(vol=vol, offset=0, length=MIB, flags=0)
        while not stop.is_set():
            reply = await client.call(Proc.STORAGE_VOL_UPLOAD, args)
            if not isinstance(reply, ReplyReceived):
                errors.append(f"{name}: {reply}")
                return
            client.send(client.rpc.send_abort(reply.serial))
            while not isinstance(await client.next_event(), StreamFinished):
                pass


async def test_cut_uploads_leave_other_volumes_alone(virtvold: Virtvold) -> None:
    rng = random.Random(8)
    originals = {}
    # Files in the pool directory are its volumes.
    (virtvold.pool_dir / "target").write_bytes(bytes(MIB))
    for name in [f"victim{i}" for i in range(VICTIMS)] + [f"held{i}" for i in range(HELD)]:
        originals[name] = rng.randbytes(MIB)
        (virtvold.pool_dir / name).write_bytes(originals[name])

    stop = asyncio.Event()
    errors: list[str] = []
    hammer = asyncio.create_task(_hammer_resizes(virtvold.port, stop, errors))
    holders = [
        asyncio.create_task(_hold_uploads(virtvold.port, stop, f"held{i}", errors))
        for i in range(HELD)
    ]
    uploads = asyncio.create_task(_cut_uploads(virtvold.port, stop, rng))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(uploads), TIME_BUDGET)
    stop.set()
    cycles = await uploads
    resizes = await hammer
    await asyncio.gather(*holders)
    assert cycles >= MIN_CYCLES, f"only {cycles} upload cycles ran"
    assert resizes > CYCLES

    for name, content in originals.items():
        path = virtvold.pool_dir / name
        assert path.stat().st_size == MIB, f"{name} changed size"
        assert path.read_bytes() == content, f"{name} was written to"
    assert errors == []

    # Every cut upload was cleaned up: no temporary left, the target is free again.
    for _ in range(100):
        leftovers = sorted(n for n in os.listdir(virtvold.pool_dir) if n.startswith("."))
        if not leftovers:
            break
        await asyncio.sleep(0.05)
    assert leftovers == []
    async with raw_client(virtvold.port) as client:
        vol = await client.volume("target")
        resize = r.VolResizeArgs(vol=vol, capacity=MIB, flags=2)  # DELTA: grow by 1 MiB
        assert isinstance(await client.call(Proc.STORAGE_VOL_RESIZE, resize), ReplyReceived)
    assert "Traceback" not in virtvold.log_text()
