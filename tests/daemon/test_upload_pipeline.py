"""An upload reads the socket while its worker writes: the disk never waits for the network
to refill a queue that was let run dry.

The handler is driven without a socket: a fake connection that records when reading is
paused and resumed, a real registry, and a writer whose batches go through one at a time
when the test hands out a permit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.daemon.fake_sink import FakeSink
from virtvol.daemon.storage import StorageRegistry, VolumeWriter
from virtvol.daemon.streamio import TransferStats
from virtvol.daemon.upload import BATCH_BYTES, HELD_MAX, Upload
from virtvol.protocol.frames import POOLED_MAX

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable
    from pathlib import Path

MIB = 1 << 20


class SteppedWriter(VolumeWriter):
    """A volume writer whose batches each wait for a permit from the test."""

    permits: threading.Semaphore
    written: int

    def apply(self, items: Iterable[memoryview | bytes | bytearray | int]) -> None:
        batch = list(items)
        assert self.permits.acquire(timeout=30), "the test never let the batch through"
        super().apply(batch)
        self.written += sum(len(item) for item in batch if not isinstance(item, int))


class RecordingSink(FakeSink):
    """A ``FakeSink`` that notes what the writer still had to do at every resume of
    reading."""

    def __init__(self, writer: SteppedWriter, fed: list[int]) -> None:
        super().__init__()
        self.unwritten_at_resume: list[int] = []
        self._writer = writer
        self._fed = fed

    def reading_paused(self) -> bool:
        return bool(self.paused_by)

    def resume_reading(self, owner: object) -> None:
        super().resume_reading(owner)
        self.unwritten_at_resume.append(self._fed[0] - self._writer.written)


@dataclass
class SteppedUpload:
    """An upload of volume "vol" whose writer waits for permits, and its running task."""

    upload: Upload
    writer: SteppedWriter
    sink: RecordingSink
    fed: list[int]  # data bytes handed to the upload so far
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def stepped_upload(tmp_path: Path, *, sparse: bool) -> AsyncIterator[SteppedUpload]:
    """A whole-volume upload through a real registry, with a ``SteppedWriter``; on the
    way out every batch still waiting is let through and the task ended."""
    registry = StorageRegistry(tmp_path / "state", sync_uploads=False)
    registry.ensure_pool("p", tmp_path / "pool")
    (tmp_path / "pool" / "vol").write_bytes(b"old")
    volume = registry.lookup_volume_by_name(registry.lookup_pool_by_name("p"), "vol")
    executor = concurrent.futures.ThreadPoolExecutor(2)
    writer = registry.open_upload(volume, 0, 0)
    writer.__class__ = SteppedWriter
    assert isinstance(writer, SteppedWriter)
    writer.permits = threading.Semaphore(0)
    writer.written = 0
    fed = [0]
    sink = RecordingSink(writer, fed)
    stats = TransferStats("upload", "p/vol", "t", sparse, 0, 0)
    upload = Upload(sink, 1, writer, executor=executor, stats=stats)
    task = asyncio.create_task(upload.run())
    try:
        yield SteppedUpload(upload, writer, sink, fed, task)
    finally:
        writer.permits.release(1 << 20)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        executor.shutdown(wait=True)
        registry.close()


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting until {what}")


def _written_beyond(writer: SteppedWriter, before: int) -> Callable[[], bool]:
    return lambda: writer.written > before


async def test_reading_resumes_while_queued_data_is_still_being_written(tmp_path: Path) -> None:
    frames = [os.urandom(MIB) for _ in range((HELD_MAX + 2 * BATCH_BYTES) // MIB)]
    async with stepped_upload(tmp_path, sparse=False) as stepped:
        upload, writer, sink, fed = stepped.upload, stepped.writer, stepped.sink, stepped.fed
        # The first batch is in the worker before the rest arrives, as on a real socket.
        for frame in frames[: BATCH_BYTES // MIB]:
            upload.data_received(memoryview(frame))
            fed[0] += len(frame)
        await asyncio.sleep(0.05)
        for frame in frames[BATCH_BYTES // MIB :]:
            upload.data_received(memoryview(frame))
            fed[0] += len(frame)
        assert sink.reading_paused(), "more than HELD_MAX held and the socket still read"

        # Batches go through one by one until the socket is read again.
        while sink.reading_paused():
            writer.permits.release()
            await _until(_written_beyond(writer, writer.written), "the batch was written")
            await asyncio.sleep(0.01)  # the task resumes reading after the batch

        # Reading resumed while the worker still had batches queued: the disk is kept
        # busy while the network refills the queue.
        assert sink.unwritten_at_resume[0] >= BATCH_BYTES
        assert sink.unwritten_at_resume[0] <= HELD_MAX - BATCH_BYTES

        upload.client_finished()
        for _ in range(len(frames)):
            writer.permits.release()
        await asyncio.wait_for(stepped.task, 30)
    assert (tmp_path / "pool" / "vol").read_bytes() == b"".join(frames)


async def test_a_flood_of_skips_is_held_to_the_bound_too(tmp_path: Path) -> None:
    """A skip carries no payload, but each one waits in the queue as an object of its
    own: skips that pile up while the worker writes a batch must stop the reading as
    data does, or a client sending skips faster than the disk grows the daemon without
    limit."""
    skips = 0
    async with stepped_upload(tmp_path, sparse=True) as stepped:
        upload, writer, sink, fed = stepped.upload, stepped.writer, stepped.sink, stepped.fed
        upload.data_received(memoryview(os.urandom(MIB)))
        fed[0] += MIB
        await asyncio.sleep(0.05)  # that batch is in the worker, waiting for its permit
        # A million skips: tens of MiB of queued objects, well past HELD_MAX.
        while not sink.reading_paused() and skips < HELD_MAX // 16:
            upload.hole_received(4096)
            skips += 1
        assert sink.reading_paused(), f"{skips} skips held and the socket still read"

        # The skips go through as the worker takes them, and the socket is read again.
        while sink.reading_paused():
            writer.permits.release()
            await asyncio.sleep(0.01)
        upload.client_finished()
        writer.permits.release(1000)
        await asyncio.wait_for(stepped.task, 30)
    assert (tmp_path / "pool" / "vol").stat().st_size == MIB + skips * 4096


def test_eight_uploads_at_once_hold_no_more_than_the_payload_pool_recycles() -> None:
    """What the uploads hold is received into the daemon's shared payload pool; beyond
    the pool each frame is a fresh allocation. With 16 MiB per upload, eight uploads at
    once took the daemon's peak from 96 MiB to 155 MiB and cost a tenth of their time."""
    assert 8 * HELD_MAX <= POOLED_MAX
    assert HELD_MAX >= 2 * BATCH_BYTES, "no batch would be queued while one is written"
