"""A bounded fuzz of whole client sessions against a running virtvold.

Several clients run random-ish sessions at once for ``FUZZ_SECONDS``: opened
or not, pool and volume calls, uploads and downloads cut at random points
(finish, abort, close, TCP reset, or a disconnect right after the call),
pipelined calls dropped unanswered, garbage frame headers, holes near the
largest file offset. The choices come from seeded generators, so a failing
run can be replayed (the timing between clients differs, the sessions do
not). Afterwards the daemon must be back where it started: no volume left in
use, no upload temporary left in the pool, as many open descriptors as
before, every call on a healthy session answered, and no traceback logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import time
from typing import TYPE_CHECKING

from tests.daemon.conftest import RawClient, raw_client
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    ErrorReplyReceived,
    Event,
    ReplyReceived,
    StreamEndReceived,
    StreamFailed,
    StreamFinished,
)
from virtvol.protocol.exceptions import ProtocolError
from virtvol.protocol.procedures import Proc, StreamDirection

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Virtvold
    from virtvol.protocol.xdr import XdrStruct

SEED = 20261130
CLIENTS = 4
FUZZ_SECONDS = 10.0
VOLUMES = [f"v{i}" for i in range(4)]
MIB = 1 << 20
ANSWER_TIMEOUT = 10.0  # a healthy session's call or finish not answered by then is a hang


class SessionEnded(Exception):
    """The session is over (we cut it, or the daemon closed it after garbage)."""


class Session:
    """One client connection driven by ``rng``."""

    def __init__(
        self, client: RawClient, rng: random.Random, hangs: list[str], pool_dir: str
    ) -> None:
        self.client = client
        self.rng = rng
        self.hangs = hangs
        self.pool_dir = pool_dir
        self.pool: r.StoragePool | None = None

    async def event(self, what: str) -> Event:
        try:
            event = await self.client.next_event(wait=ANSWER_TIMEOUT)
        except TimeoutError:
            self.hangs.append(what)
            raise SessionEnded from None
        if event is None:
            raise SessionEnded
        return event

    async def call(self, procedure: int, args: XdrStruct | None = None) -> Event:
        serial, frame = self.client.rpc.call(procedure, args)
        self.client.send(frame)
        while True:
            event = await self.event(f"reply to procedure {procedure}")
            if isinstance(event, ReplyReceived | ErrorReplyReceived) and event.serial == serial:
                return event

    def reset(self) -> None:
        sock = self.client.writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.writer.transport.abort()
        raise SessionEnded

    async def volume(self) -> r.StorageVol:
        if self.pool is None:
            found = await self.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs("default"))
            if not isinstance(found, ReplyReceived):
                raise SessionEnded  # not opened: nothing else to do here
            assert isinstance(found.result, r.PoolRet)
            self.pool = found.result.pool
        name = self.rng.choice(VOLUMES)
        return r.StorageVol(pool="default", name=name, key=f"{self.pool_dir}/{name}")

    # -- actions ----------------------------------------------------------------------

    async def plain_call(self) -> None:
        vol = await self.volume()
        assert self.pool is not None
        choice = self.rng.randrange(5)
        if choice == 0:
            await self.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS)
        elif choice == 1:
            await self.call(
                Proc.STORAGE_POOL_LIST_ALL_VOLUMES, r.PoolListAllVolumesArgs(self.pool, 1, 0)
            )
        elif choice == 2:
            await self.call(Proc.STORAGE_VOL_GET_INFO, r.VolArgs(vol))
        elif choice == 3:
            await self.call(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(self.pool, 0))
        else:  # grow by nothing: opens the file, changes nothing
            await self.call(Proc.STORAGE_VOL_RESIZE, r.VolResizeArgs(vol, 0, 2))

    async def upload(self) -> None:
        vol = await self.volume()
        ranged = self.rng.random() < 0.3
        args = r.VolTransferArgs(vol=vol, offset=0, length=MIB if ranged else 0, flags=1)
        serial, frame = self.client.rpc.call(Proc.STORAGE_VOL_UPLOAD, args)
        self.client.send(frame)
        if self.rng.random() < 0.2:
            self.reset()  # gone while the daemon opens the file
        reply = await self.event("reply to an upload")
        while not (
            isinstance(reply, ReplyReceived | ErrorReplyReceived) and reply.serial == serial
        ):
            reply = await self.event("reply to an upload")
        if not isinstance(reply, ReplyReceived):
            return  # in use by another session, most likely
        for _ in range(self.rng.randrange(8)):
            if self.rng.random() < 0.6:
                size = self.rng.randrange(1, 256 << 10)
                self.client.send(*self.client.rpc.send_data(serial, self.rng.randbytes(size)))
            elif self.rng.random() < 0.05:
                self.client.send(
                    self.client.rpc.send_hole(serial, (1 << 63) - self.rng.randrange(1, 4096))
                )
            else:
                self.client.send(self.client.rpc.send_hole(serial, self.rng.randrange(1, MIB)))
            await asyncio.sleep(0)
        await self.end_stream(serial)

    async def download(self) -> None:
        vol = await self.volume()
        args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=self.rng.randrange(2))
        serial, frame = self.client.rpc.call(Proc.STORAGE_VOL_DOWNLOAD, args)
        self.client.send(frame)
        if self.rng.random() < 0.2:
            self.reset()
        for _ in range(self.rng.randrange(1, 4)):
            event = await self.event("download frames")
            if isinstance(event, ErrorReplyReceived | StreamFailed | StreamFinished):
                return
            if isinstance(event, StreamEndReceived):
                break  # all sent: the daemon waits for our finish or abort
        await self.end_stream(serial)

    async def end_stream(self, serial: int) -> None:
        ending = self.rng.choice(["finish", "abort", "reset", "close", "leave"])
        if ending == "reset":
            self.reset()
        if ending == "close":
            raise SessionEnded
        if ending == "leave" or serial not in self.client.rpc.streams:
            return  # left open (or already failed): the session goes on, the stream with it
        stream = self.client.rpc.streams[serial]
        if stream.direction is StreamDirection.DOWNLOAD and ending == "finish":
            ending = "abort"  # a download is only finished after its end; abort it
        end = self.client.rpc.send_finish if ending == "finish" else self.client.rpc.send_abort
        try:
            self.client.send(end(serial))
        except ProtocolError:
            return  # the stream failed meanwhile
        while not isinstance(
            await self.event(f"{ending} of a stream"), StreamFinished | StreamFailed
        ):
            pass

    async def pipeline_and_leave(self) -> None:
        for _ in range(self.rng.randrange(1, 16)):
            self.client.send(self.client.rpc.call(Proc.CONNECT_GET_TYPE)[1])
        if self.rng.random() < 0.5:
            self.reset()
        raise SessionEnded

    async def garbage(self) -> None:
        length = self.rng.choice([0, 4, 27, 28, 100, 1 << 20, 0xFFFFFFFF, self.rng.getrandbits(32)])
        head = struct.pack(">I", length) + self.rng.randbytes(24)
        self.client.send(head + self.rng.randbytes(self.rng.randrange(64)))
        raise SessionEnded

    async def run(self) -> None:
        actions = [self.plain_call] * 4 + [self.upload] * 4 + [self.download] * 2
        actions += [self.pipeline_and_leave, self.garbage]
        if self.rng.random() < 0.9:
            await self.call(Proc.CONNECT_OPEN, r.ConnectOpenArgs(name="storage:///system", flags=0))
        for _ in range(self.rng.randrange(1, 10)):
            await self.rng.choice(actions)()


async def fuzz_client(daemon: Virtvold, seed: int, deadline: float, hangs: list[str]) -> int:
    rng = random.Random(seed)
    sessions = 0
    while time.monotonic() < deadline:
        client = await RawClient.connect(daemon.port)
        session = Session(client, rng, hangs, str(daemon.pool_dir))
        with contextlib.suppress(SessionEnded, ProtocolError, ConnectionError):
            await session.run()
        with contextlib.suppress(Exception):
            await client.close()
        sessions += 1
    return sessions


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def settled(check: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for the daemon to finish releasing what the last sessions left (it is polled:
    the daemon is another process)."""
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)


async def test_bounded_session_fuzz_leaves_nothing_behind(virtvold: Virtvold) -> None:
    for name in VOLUMES:
        (virtvold.pool_dir / name).write_bytes(random.Random(name).randbytes(MIB))
    pid = virtvold.process.pid
    async with raw_client(virtvold.port) as warm_up:  # first-use allocations are not leaks
        await warm_up.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS)
    await asyncio.sleep(0.2)
    baseline = open_fds(pid)

    hangs: list[str] = []
    deadline = time.monotonic() + FUZZ_SECONDS
    sessions = await asyncio.gather(
        *(fuzz_client(virtvold, SEED + n, deadline, hangs) for n in range(CLIENTS))
    )
    assert sum(sessions) > 50, f"only {sessions} sessions ran"
    assert hangs == [], f"seed {SEED}: the daemon left these unanswered: {hangs[:5]}"

    def temporaries() -> list[str]:
        return sorted(name for name in os.listdir(virtvold.pool_dir) if name.startswith("."))

    await settled(lambda: open_fds(pid) == baseline and not temporaries())
    assert temporaries() == [], f"seed {SEED}: upload temporaries left in the pool"
    assert open_fds(pid) == baseline, f"seed {SEED}: descriptors not back to the baseline"
    async with raw_client(virtvold.port) as client:
        for name in VOLUMES:
            vol = await client.volume(name)
            args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
            reply = await client.call(Proc.STORAGE_VOL_UPLOAD, args)
            assert isinstance(reply, ReplyReceived), f"seed {SEED}: {name} still in use: {reply}"
            client.send(client.rpc.send_abort(reply.serial))
            while not isinstance(await client.next_event(), StreamFinished):
                pass
        # Refreshing the pool keeps only volumes: no hidden temporary shows up or stays.
        found = await client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs("default"))
        assert isinstance(found, ReplyReceived)
        assert isinstance(found.result, r.PoolRet)
        pool = found.result.pool
        refreshed = await client.call(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(pool, 0))
        assert isinstance(refreshed, ReplyReceived)
        listed = await client.call(
            Proc.STORAGE_POOL_LIST_ALL_VOLUMES, r.PoolListAllVolumesArgs(pool, 1, 0)
        )
        assert isinstance(listed, ReplyReceived)
        assert isinstance(listed.result, r.PoolListAllVolumesRet)
        assert sorted(v.name for v in listed.result.vols) == VOLUMES
    assert temporaries() == []
    assert "Traceback" not in virtvold.log_text(), f"seed {SEED}: a traceback was logged"
