"""Uploads from what cannot seek: a pipe (a FIFO, the command's standard input) or a
character device. virsh reads such a source to its end (``xz -dc disk.xz | virsh
vol-upload disk /dev/stdin``); so must both engines, as data, and stop at ``length``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import pytest

from tests.client.helpers import MIB
from tests.client.test_cli_spellings import _COMMAND
from tests.conftest import start_virtvold, stop_virtvold
from virtvol.client import connect
from virtvol.client.direct import open_direct, run_blocking
from virtvol.client.errors import TransportError

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Virtvold
    from virtvol.client.connection import Connection
    from virtvol.client.transfer_base import TransferResult

ENGINES = ["direct", "event-loop"]
# Zero blocks among the data: they may travel as holes, and must read back as zeros.
CONTENT = (os.urandom(MIB) + bytes(2 * MIB)) * 2 + os.urandom(12345)


def upload(engine: str, uri: str, path: Path | str, *, length: int = 0) -> TransferResult:
    """Upload ``path`` into the volume "vol" of pool "default" over ``engine``."""

    async def move(conn: Connection) -> TransferResult:
        try:
            pool = await conn.lookup_pool_by_name("default")
            volume = await pool.lookup_volume("vol")
            return await volume.upload_file(path, length=length)
        finally:
            await conn.close()

    if engine == "direct":
        return run_blocking(move(run_blocking(open_direct(uri))))

    async def on_a_loop() -> TransferResult:
        return await move(await connect(uri))

    return asyncio.run(on_a_loop())


def feed(fifo: Path, data: bytes, *, stall: float = 0.0) -> threading.Thread:
    """A thread that writes ``data`` into ``fifo`` a piece at a time, then closes it;
    with ``stall``, it waits that many seconds half-way."""
    halves = (data[: len(data) // 2], data[len(data) // 2 :])

    def write() -> None:
        # A reader that gave up (the test fails) closes the pipe: that is not news here.
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as pipe:
            for number, half in enumerate(halves):
                if number and stall:
                    pipe.flush()
                    time.sleep(stall)
                for start in range(0, len(half), 100_000):
                    pipe.write(half[start : start + 100_000])

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("engine", ENGINES)
def test_an_upload_from_a_fifo_sends_all_it_carries(
    virtvold: Virtvold, tmp_path: Path, engine: str
) -> None:
    (virtvold.pool_dir / "vol").write_bytes(b"old" * 1000)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = feed(fifo, CONTENT)
    upload(engine, virtvold.unix_uri, fifo)
    writer.join(10)
    assert (virtvold.pool_dir / "vol").read_bytes() == CONTENT


@pytest.mark.parametrize("engine", ENGINES)
def test_an_upload_from_a_character_device_stops_at_the_length(
    virtvold: Virtvold, engine: str
) -> None:
    """/dev/zero has no end and seeks to 0: it is read as a stream, up to ``length``
    (a ranged upload writes the range in place: the rest stays)."""
    (virtvold.pool_dir / "vol").write_bytes(b"\xff" * (3 * MIB))
    result = upload(engine, virtvold.unix_uri, "/dev/zero", length=2 * MIB + 5)
    assert result.total_bytes == 2 * MIB + 5
    expected = bytes(2 * MIB + 5) + b"\xff" * (MIB - 5)
    assert (virtvold.pool_dir / "vol").read_bytes() == expected


def test_vol_upload_reads_its_standard_input(virtvold: Virtvold) -> None:
    (virtvold.pool_dir / "vol").write_bytes(b"old")
    done = subprocess.run(
        [
            *_COMMAND,
            "-c",
            virtvold.unix_uri,
            "vol-upload",
            "vol",
            "/dev/stdin",
            "--pool",
            "default",
        ],
        input=CONTENT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (virtvold.pool_dir / "vol").read_bytes() == CONTENT


@pytest.mark.parametrize("engine", ENGINES)
def test_an_upload_waiting_for_a_stalled_pipe_still_answers_the_daemons_keepalive(
    tmp_path: Path, engine: str
) -> None:
    """A pipe's producer may stall (a download feeding it, a decompressor): the daemon's
    keepalive PINGs are answered meanwhile, or it drops the connection as dead (here
    after 0.6 s of silence; libvirtd's default is 30 s), as virsh answers them."""
    config = tmp_path / "virtvold.toml"
    config.write_text("keepalive_interval = 0.2\nkeepalive_count = 2\n")
    daemon = start_virtvold(tmp_path / "d", "--config", str(config))
    try:
        (daemon.pool_dir / "vol").write_bytes(b"old")
        fifo = tmp_path / "pipe"
        os.mkfifo(fifo)
        writer = feed(fifo, CONTENT, stall=2.0)
        upload(engine, daemon.unix_uri, fifo)
        writer.join(10)
        assert (daemon.pool_dir / "vol").read_bytes() == CONTENT
    finally:
        stop_virtvold(daemon)


def test_a_library_upload_from_a_stalled_pipe_fails_when_its_connection_does(
    tmp_path: Path,
) -> None:
    """The reading thread waits for the pipe a step at a time: when the connection goes
    while the pipe's producer stalls, the upload fails at once instead of waiting for the
    producer (which here would be for as long as the test lets it)."""
    daemon = start_virtvold(tmp_path / "d")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    release = threading.Event()

    def stalling_producer() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(CONTENT[:MIB])
            pipe.flush()
            release.wait(60)

    producer = threading.Thread(target=stalling_producer, daemon=True)
    producer.start()

    async def upload_then_lose_the_daemon() -> BaseException:
        conn = await connect(daemon.unix_uri)
        volume = await (await conn.lookup_pool_by_name("default")).lookup_volume("vol")
        moving = asyncio.create_task(volume.upload_file(fifo))
        await asyncio.sleep(0.5)  # the first MiB went; the pipe is empty now
        daemon.process.kill()
        try:
            await asyncio.wait_for(moving, 10)
        except Exception as exc:  # the failure is what the test looks at
            return exc
        finally:
            await conn.close()
        raise AssertionError("the upload succeeded without its daemon")

    try:
        (daemon.pool_dir / "vol").write_bytes(b"old")
        failure = asyncio.run(upload_then_lose_the_daemon())
    finally:
        release.set()
        stop_virtvold(daemon)
        producer.join(10)
    assert not isinstance(failure, TimeoutError), "the upload waited for the stalled pipe"
    assert isinstance(failure, TransportError), failure


@pytest.mark.parametrize("engine", ENGINES)
def test_an_upload_of_a_length_ends_there_while_the_pipe_stays_open(
    virtvold: Virtvold, tmp_path: Path, engine: str
) -> None:
    """Once ``length`` bytes came the upload is complete: it does not wait for whatever the
    producer does next (a terminal left open, a producer that goes on later)."""
    (virtvold.pool_dir / "vol").write_bytes(b"\xff" * 10)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    release = threading.Event()

    def producer_that_stays() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(b"abcd")
            pipe.flush()
            release.wait(20)

    producer = threading.Thread(target=producer_that_stays, daemon=True)
    producer.start()
    started = time.monotonic()
    try:
        result = upload(engine, virtvold.unix_uri, fifo, length=4)
    finally:
        release.set()
        producer.join(10)
    assert time.monotonic() - started < 10, "the upload waited for the pipe past its length"
    assert result.total_bytes == 4
    assert (virtvold.pool_dir / "vol").read_bytes() == b"abcd" + b"\xff" * 6


def test_a_library_upload_from_a_fifo_without_its_writer_yet_leaves_the_loop_running(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    """Opening a FIFO to read waits for its writer: done so on the event loop, it held up
    every other task of the program (its connections' keepalives too) until then."""
    (virtvold.pool_dir / "vol").write_bytes(b"old")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def late_writer() -> None:
        time.sleep(2.0)
        feed(fifo, CONTENT).join(20)

    writer = threading.Thread(target=late_writer, daemon=True)
    writer.start()

    async def upload_and_tick() -> float:
        conn = await connect(virtvold.unix_uri)
        try:
            volume = await (await conn.lookup_pool_by_name("default")).lookup_volume("vol")
            moving = asyncio.create_task(volume.upload_file(fifo))
            before = time.monotonic()
            await asyncio.sleep(0.05)  # the upload opens the FIFO meanwhile
            tick = time.monotonic() - before
            await asyncio.wait_for(moving, 30)
            return tick
        finally:
            await conn.close()

    try:
        tick = asyncio.run(upload_and_tick())
    finally:
        writer.join(30)
    assert tick < 1.0, f"the event loop stood still for {tick:.1f} s"
    assert (virtvold.pool_dir / "vol").read_bytes() == CONTENT
