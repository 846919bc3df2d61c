"""Helpers for the daemon tests: sparse test files, whole-file comparison, python3-libvirt runs."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import subprocess
import time
from typing import TYPE_CHECKING, TypeVar

import pytest

from tests.conftest import run_system_python, run_virsh
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    Connection,
    ErrorReplyReceived,
    Event,
    ReplyReceived,
    Side,
)
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence
    from pathlib import Path

    from virtvol.daemon.connection import ClientConnection
    from virtvol.daemon.context import DaemonContext
    from virtvol.protocol.xdr import XdrStruct

BLOCK = 4096

# One python3-libvirt transfer, run with /usr/bin/python3 (the only interpreter with the
# module). argv: URI POOL VOLUME MODE PATH [OFFSET LENGTH]. Prints a JSON report.
CLIENT_SCRIPT = r"""
import json, os, sys, libvirt

uri, pool_name, vol_name, mode, path = sys.argv[1:6]
offset, length = (int(sys.argv[6]), int(sys.argv[7])) if len(sys.argv) > 7 else (0, 0)
libvirt.registerErrorHandler(lambda *args: None, None)
conn = libvirt.open(uri)
pool = conn.storagePoolLookupByName(pool_name)
try:
    vol = pool.storageVolLookupByName(vol_name)
except libvirt.libvirtError:
    vol = pool.createXML(
        "<volume><name>%s</name><capacity>0</capacity><allocation>0</allocation></volume>"
        % vol_name, 0)
report = {"holes": 0, "data_frames": 0}
st = conn.newStream(0)
SPARSE = libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM

def in_data(stream, fd):
    # Like libvirt's virFileInData: look, then put the file position back.
    cur = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        data = os.lseek(fd, cur, os.SEEK_DATA)
    except OSError:
        result = (0, os.fstat(fd).st_size - cur)
    else:
        if data > cur:
            result = (0, data - cur)
        else:
            result = (1, os.lseek(fd, cur, os.SEEK_HOLE) - cur)
    os.lseek(fd, cur, os.SEEK_SET)
    return result

if mode in ("sparse-upload", "upload"):
    fd = os.open(path, os.O_RDONLY)
    vol.upload(st, offset, length, SPARSE if mode == "sparse-upload" else 0)
    if mode == "sparse-upload":
        st.sparseSendAll(lambda s, n, f: os.read(f, n), in_data,
                         lambda s, n, f: os.lseek(f, n, os.SEEK_CUR) and 0, fd)
    else:
        st.sendAll(lambda s, n, f: os.read(f, n), fd)
    st.finish()
elif mode in ("sparse-download", "download", "recvflags"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    vol.download(st, offset, length, SPARSE if mode != "download" else 0)
    if mode == "sparse-download":
        def hole(s, n, f):
            report["holes"] += 1
            pos = os.lseek(f, n, os.SEEK_CUR)
            os.ftruncate(f, pos)
            return 0
        st.sparseRecvAll(lambda s, b, f: os.write(f, b), hole, fd)
    elif mode == "download":
        st.recvAll(lambda s, b, f: os.write(f, b), fd)
    else:
        while True:
            got = st.recvFlags(1 << 20, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
            if got == -3:
                n = st.recvHole(0)
                report["holes"] += 1
                os.ftruncate(fd, os.lseek(fd, n, os.SEEK_CUR))
                continue
            if not got:
                break
            report["data_frames"] += 1
            os.write(fd, got)
    st.finish()
os.close(fd)
conn.close()
print(json.dumps(report))
"""


def run_client(
    uri: str,
    volume: str,
    mode: str,
    path: Path,
    offset: int = 0,
    length: int = 0,
    *,
    pool: str = "default",
) -> dict[str, int]:
    """One python3-libvirt transfer (see CLIENT_SCRIPT); returns its counters."""
    proc = run_system_python(
        CLIENT_SCRIPT, uri, pool, volume, mode, str(path), str(offset), str(length)
    )
    result: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def make_sparse_file(path: Path, size: int, data: Sequence[tuple[int, bytes]]) -> Path:
    """A file of ``size`` bytes holding ``data`` pieces at their offsets, holes elsewhere."""
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset, piece in data:
            handle.seek(offset)
            handle.write(piece)
    return path


def data_extents(path: Path) -> list[tuple[int, int]]:
    """The (start, end) data extents the file system reports."""
    extents: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return extents


def assert_same_content(expected: Path, actual: Path) -> None:
    """Byte-for-byte equality, cheap for huge sparse files: sizes match, and every range
    that is data in either file holds the same bytes in both (the rest is zeros in both)."""
    size = expected.stat().st_size
    assert actual.stat().st_size == size
    with expected.open("rb") as left, actual.open("rb") as right:
        for start, end in sorted(data_extents(expected) + data_extents(actual)):
            left.seek(start)
            right.seek(start)
            remaining = end - start
            while remaining:
                count = min(remaining, 1 << 20)
                assert left.read(count) == right.read(count), f"differs in [{start}, {end})"
                remaining -= count


def allocated(path: Path) -> int:
    """Bytes the file really uses on disk."""
    return path.stat().st_blocks * 512


def leave_a_hole(path: Path, offset: int, length: int) -> None:
    """Free ``[offset, offset + length)`` of a file just written: a volume that holds data
    but is not preallocated, whose holes an upload may leave unallocated (a fully
    allocated one keeps its space reserved: test_preallocated_upload.py)."""
    from virtvol.sparse import files

    fd = os.open(path, os.O_WRONLY)
    try:
        files.punch_hole(fd, offset, length)
    finally:
        os.close(fd)


class RawClient:
    """A bare libvirt RPC client on the protocol core, for what virsh cannot be made to do."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.rpc = Connection(Side.CLIENT)
        self.events: list[Event] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    def send(self, *parts: bytes | memoryview) -> None:
        for part in parts:
            self.writer.write(part)

    async def next_event(self, wait: float = 10.0) -> Event | None:
        """The next event, or None when the daemon closed the connection."""
        async with asyncio.timeout(wait):
            while True:
                event = self.rpc.next_event()
                if event is not None:
                    return event
                data = await self.reader.read(1 << 20)
                if not data:
                    return None
                self.rpc.receive_data(data)

    async def call(self, procedure: int, args: XdrStruct | None = None) -> Event:
        """Send a call and return its reply (or error reply); other events are kept."""
        serial, frame = self.rpc.call(procedure, args)
        self.send(frame)
        while True:
            event = await self.next_event()
            assert event is not None, "connection closed while waiting for a reply"
            if isinstance(event, ReplyReceived | ErrorReplyReceived) and event.serial == serial:
                return event
            self.events.append(event)

    async def open(self, name: str = "storage:///system") -> None:
        await self.call(Proc.AUTH_LIST)
        reply = await self.call(Proc.CONNECT_OPEN, r.ConnectOpenArgs(name=name, flags=0))
        assert isinstance(reply, ReplyReceived), reply

    async def volume(self, name: str, pool: str = "default") -> r.StorageVol:
        found = await self.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name=pool))
        assert isinstance(found, ReplyReceived), found
        assert isinstance(found.result, r.PoolRet)
        vol = await self.call(
            Proc.STORAGE_VOL_LOOKUP_BY_NAME,
            r.VolLookupByNameArgs(pool=found.result.pool, name=name),
        )
        assert isinstance(vol, ReplyReceived), vol
        assert isinstance(vol.result, r.VolRet)
        return vol.result.vol

    async def refresh_pool(self, pool: str = "default") -> None:
        """Look ``pool`` up and refresh it: a daemon lists files made beside it only then."""
        found = await self.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name=pool))
        assert isinstance(found, ReplyReceived), found
        assert isinstance(found.result, r.PoolRet)
        args = r.PoolFlagsArgs(pool=found.result.pool, flags=0)
        refreshed = await self.call(Proc.STORAGE_POOL_REFRESH, args)
        assert isinstance(refreshed, ReplyReceived), refreshed

    async def open_upload(self, name: str, *, flags: int = 1) -> int:
        """Open a whole-volume upload into volume ``name`` of the default pool (sparse
        unless ``flags`` says otherwise); the stream's serial."""
        vol = await self.volume(name)
        args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=flags)
        reply = await self.call(Proc.STORAGE_VOL_UPLOAD, args)
        assert isinstance(reply, ReplyReceived), reply
        return reply.serial


def storage_driver_uri(daemon: str) -> str:
    """What to open on the ``virtvold`` or ``reference_libvirtd`` fixture: the reference
    libvirtd runs unprivileged, so its storage driver is the session one."""
    return "storage:///session" if daemon == "reference_libvirtd" else "storage:///system"


def shared_volume_file(pool_dir: Path, name: str, content: bytes) -> None:
    """A file in a pool that the reference libvirtd, which runs as nobody, may change."""
    (pool_dir / name).write_bytes(content)
    os.chmod(pool_dir / name, 0o666)


@contextlib.asynccontextmanager
async def raw_client(
    port: int, *, open_name: str | None = "storage:///system"
) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(port)
    try:
        if open_name is not None:
            await client.open(open_name)
        yield client
    finally:
        await client.close()


@contextlib.contextmanager
def in_process_daemon(tmp_path: Path, *, sync_uploads: bool = True) -> Iterator[DaemonContext]:
    """A daemon's context in this process: pool ``default`` in ``tmp_path / "pool"``
    holding ``disk.img`` ("old content"); its workers and registry closed at the end."""
    # Imported here: most tests of this folder run virtvold as a subprocess.
    from virtvol.daemon.context import DaemonContext
    from virtvol.daemon.storage import StorageRegistry

    registry = StorageRegistry(tmp_path / "state", sync_uploads=sync_uploads)
    registry.load()
    registry.ensure_pool("default", tmp_path / "pool")
    (tmp_path / "pool" / "disk.img").write_bytes(b"old content")
    ctx = DaemonContext(registry=registry, legacy=False, keepalive_interval=5, keepalive_count=5)
    try:
        yield ctx
    finally:
        ctx.shutdown_executors()
        registry.close()


@pytest.fixture
def context(tmp_path: Path) -> Iterator[DaemonContext]:
    """An ``in_process_daemon`` with ``sync_uploads = false`` (a test module may define a
    ``context`` of its own)."""
    with in_process_daemon(tmp_path, sync_uploads=False) as ctx:
        yield ctx


def served_connection(context: DaemonContext) -> ClientConnection:
    """The one connection ``context`` serves (an ``in_process_client``'s)."""
    from virtvol.daemon.connection import ClientConnection

    (served,) = context.connections
    assert isinstance(served, ClientConnection)
    return served


@contextlib.asynccontextmanager
async def in_process_client(context: DaemonContext) -> AsyncIterator[RawClient]:
    """An opened raw client of a ``ClientConnection`` served in this event loop (over a
    socket pair), for tests that look inside the daemon."""
    # Imported here: most tests of this folder run virtvold as a subprocess.
    from virtvol.daemon.connection import ClientConnection

    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    _, served = await loop.connect_accepted_socket(
        lambda: ClientConnection(context, "test", read_only=False), theirs
    )
    reader, writer = await asyncio.open_connection(sock=ours)
    raw = RawClient(reader, writer)
    try:
        await raw.open()
        yield raw
    finally:
        await raw.close()
        await served.wait_closed()


def error_of(event: Event) -> tuple[int, int, str | None]:
    assert isinstance(event, ErrorReplyReceived), event
    return event.error.code, event.error.domain, event.error.message


T = TypeVar("T")


def while_written_in_place(
    uri: str,
    pool: str,
    name: str,
    fifo: Path,
    written: Callable[[], bytes],
    meanwhile: Callable[[], T],
) -> T:
    """virsh uploads 2 MiB into volume ``name`` of ``pool`` with a length, so in place,
    from ``fifo``, which is fed 1 MiB and held there while ``meanwhile`` runs; then the
    upload ends, and must succeed. ``written``: the volume's bytes as they are now, to see
    the first ones arrive. Returns what ``meanwhile`` returned."""
    half = 1 << 20
    os.mkfifo(fifo)
    upload = subprocess.Popen(
        [
            "virsh", "-c", uri, "vol-upload", "--pool", pool, name, str(fifo),
            "--offset", "0", "--length", str(2 * half),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "LC_ALL": "C"},
        text=True,
    )  # fmt: skip
    try:
        with fifo.open("wb") as feed:
            feed.write(b"n" * half)
            feed.flush()
            deadline = time.monotonic() + 20
            # virsh sends what it read in frames of 262120 bytes: the first is written.
            while not written().startswith(b"n" * (half // 8)):
                assert time.monotonic() < deadline, "the new bytes never reached the volume"
                time.sleep(0.02)
            result = meanwhile()
            feed.write(b"n" * half)
        output, _ = upload.communicate(timeout=30)
    finally:
        if upload.poll() is None:
            upload.kill()
            upload.wait()
    assert upload.returncode == 0, output
    return result


def assert_no_clone_while_written_in_place(
    uri: str, pool: str, name: str, clone: str, fifo: Path, written: Callable[[], bytes]
) -> None:
    """A vol-clone of ``name`` as ``clone`` while an upload writes it in place
    (``while_written_in_place``) is refused as still in use: the copy would be half new."""
    refused = while_written_in_place(
        uri,
        pool,
        name,
        fifo,
        written,
        lambda: run_virsh(uri, "vol-clone", "--pool", pool, name, clone, check=False),
    )
    assert refused.returncode == 1
    assert f"Requested operation is not valid: volume '{name}' is still in use." in refused.stderr
