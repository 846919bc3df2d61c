"""Hostile load against a running virtvold: memory, descriptors and fairness stay bounded.

Every test runs hostile clients in a thread while an honest client, connected
before they start, keeps making a storage call (served by the worker threads)
and must be answered within ``ANSWER_WITHIN`` seconds each time. The daemon's
memory is read from /proc/PID/status meanwhile and must stay under
``RSS_BOUND_MIB``; a hostile flood stops as soon as it passes the bound, so a
daemon without limits fails the test instead of eating the machine. When the
hostile clients are gone, the daemon's descriptors are back to their baseline.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Virtvold, start_virtvold, stop_virtvold
from tests.daemon.conftest import (
    RawClient,
    error_of,
    in_process_client,
    in_process_daemon,
    raw_client,
    storage_driver_uri,
)
from virtvol.daemon.connection import ClientConnection
from virtvol.daemon.limits import FD_RESERVE_MIN
from virtvol.daemon.session import MAX_POOL_EVENT_CALLBACKS
from virtvol.daemon.storage.model import PoolEvent, PoolRef
from virtvol.protocol import remote as r
from virtvol.protocol.connection import (
    Connection,
    MessageReceived,
    ReplyReceived,
    StreamDataReceived,
    StreamEndReceived,
    StreamFinished,
)
from virtvol.protocol.constants import (
    MESSAGE_MAX,
    REMOTE_PROGRAM,
    REMOTE_PROTOCOL_VERSION,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.protocol.frames import Header, encode_head
from virtvol.protocol.procedures import Proc
from virtvol.protocol.stream import Side

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

# The figure the daemon promises: under 256 MiB resident with 100 hostile connections.
RSS_BOUND_MIB = 256
# The suite runs the daemon under coverage's tracer, which makes its Python two to three
# times slower: the slowest honest answer under the call floods took 0.35-0.5 s without
# it and 0.5-1.25 s with it. A daemon that served a flood's calls before others' would
# keep the honest call waiting for the whole flood (seconds).
ANSWER_WITHIN = 2.0
FLOOD_SECONDS = 3.0


def status_mib(pid: int, field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} missing from /proc/{pid}/status")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_descriptors(pid: int, baseline: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while descriptors(pid) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert descriptors(pid) <= baseline, f"{descriptors(pid)} descriptors open, was {baseline}"


def daemon_with(tmp_path: Path, config: str, **kwargs: Callable[[], None]) -> Virtvold:
    path = tmp_path / "virtvold.toml"
    path.write_text(config)
    return start_virtvold(tmp_path / "d", "--config", str(path), **kwargs)


def unix_path(uri: str) -> str:
    return uri.split("socket=", 1)[1]


def connect(daemon: Virtvold, where: str) -> socket.socket:
    """A plain socket to the daemon's ``tcp``, ``unix`` or ``ro`` listener."""
    if where == "tcp":
        return socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    path = unix_path(daemon.ro_uri if where == "ro" else daemon.unix_uri)
    deadline = time.monotonic() + 5
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(path)
        except BlockingIOError:  # the backlog is full: the daemon has not accepted yet
            sock.close()
            assert time.monotonic() < deadline, f"{path} accepts nothing"
            time.sleep(0.01)
            continue
        return sock


def open_session(sock: socket.socket) -> Connection:
    """AUTH_LIST + CONNECT_OPEN, blocking; the connection core to build more frames with."""
    rpc = Connection(Side.CLIENT)
    for procedure, args in (
        (Proc.AUTH_LIST, None),
        (Proc.CONNECT_OPEN, r.ConnectOpenArgs(name="storage:///system", flags=0)),
    ):
        _, frame = rpc.call(procedure, args)
        sock.sendall(frame)
        while (event := rpc.next_event()) is None:
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            rpc.receive_data(data)
        assert isinstance(event, ReplyReceived), event
    return rpc


def pool_lookup(rpc: Connection) -> bytes:
    _, frame = rpc.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name="default"))
    return frame


def pipelined_calls(rpc: Connection, count: int = 8192) -> bytes:
    """``count`` pool lookups in one write (the serials are the connection's own: one
    blob serves every connection opened the same way)."""
    return b"".join(pool_lookup(rpc) for _ in range(count))


def pings(count: int = 8192) -> bytes:
    return Connection(Side.CLIENT).send_ping() * count


def big_frame_head() -> bytes:
    """A header announcing a 32 MiB call, and a little of its payload."""
    header = Header(
        REMOTE_PROGRAM,
        REMOTE_PROTOCOL_VERSION,
        Proc.STORAGE_POOL_LOOKUP_BY_NAME,
        MessageType.CALL,
        4242,
        MessageStatus.OK,
    )
    return encode_head(header, MESSAGE_MAX - 24) + b"\x00" * 1000


class Flood:
    """Writes each socket's bytes (again and again with ``repeat``), never reading.

    The sockets get small receive buffers, so what the daemon sends backs up in
    the daemon rather than in the kernel."""

    def __init__(self, clients: list[tuple[socket.socket, bytes]], *, repeat: bool) -> None:
        self._clients = clients
        self._repeat = repeat
        self.stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        for sock, _ in self._clients:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(10)
        for sock, _ in self._clients:
            sock.close()

    def _run(self) -> None:
        pending = [memoryview(blob) for _, blob in self._clients]
        while not self.stop.is_set():
            progress = False
            for index, (sock, blob) in enumerate(self._clients):
                if not pending[index] and self._repeat:
                    pending[index] = memoryview(blob)
                if not pending[index]:
                    continue
                try:
                    count = sock.send(pending[index])
                except BlockingIOError:
                    continue
                except OSError:
                    pending[index] = memoryview(b"")  # closed by the daemon
                    continue
                pending[index] = pending[index][count:]
                self.sent += count
                progress = True
            if not progress:
                time.sleep(0.01)


async def honest_client(daemon: Virtvold) -> RawClient:
    client = await RawClient.connect(daemon.port)
    await client.open()
    return client


async def serve_meanwhile(
    daemon: Virtvold, client: RawClient, flood: Flood | None, seconds: float
) -> float:
    """The honest client's calls, each answered in time, while memory stays bounded.

    Returns the slowest answer in seconds."""
    pid = daemon.process.pid
    slowest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        rss = status_mib(pid, "VmRSS")
        if rss > RSS_BOUND_MIB:
            if flood is not None:
                flood.stop.set()
            pytest.fail(f"daemon RSS {rss:.0f} MiB passed {RSS_BOUND_MIB} MiB", pytrace=False)
        started = time.monotonic()
        reply = await asyncio.wait_for(
            client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name="default")),
            timeout=3,
        )
        assert isinstance(reply, ReplyReceived), reply
        slowest = max(slowest, time.monotonic() - started)
        assert slowest < ANSWER_WITHIN, f"honest call took {slowest:.2f} s"
        await asyncio.sleep(0.05)
    return slowest


@contextmanager
def running(daemon: Virtvold) -> Iterator[Virtvold]:
    try:
        yield daemon
    finally:
        stop_virtvold(daemon)


async def test_headers_announcing_32_mib_allocate_nothing_big(tmp_path: Path) -> None:
    # Anonymous clients are let in here, so that the frame reader is what is tested.
    with running(daemon_with(tmp_path, "max_anonymous_clients = 500\n")) as daemon:
        pid = daemon.process.pid
        client = await honest_client(daemon)
        baseline = descriptors(pid)
        rss_before = status_mib(pid, "VmRSS")
        hostile: list[socket.socket] = []
        try:
            for index in range(100):
                # Half on the read-only socket before CONNECT_OPEN, half on TCP after it.
                if index % 2:
                    sock = connect(daemon, "ro")
                else:
                    sock = connect(daemon, "tcp")
                    open_session(sock)
                sock.sendall(big_frame_head())
                hostile.append(sock)
                if index % 10 == 9:
                    await serve_meanwhile(daemon, client, None, 0.05)
            await serve_meanwhile(daemon, client, None, 0.5)
            assert status_mib(pid, "VmHWM") < RSS_BOUND_MIB
            # 64 KiB per announced frame and the connections themselves: a few MiB. The
            # bound above alone would let each connection take 2 MiB unnoticed.
            assert status_mib(pid, "VmRSS") - rss_before < 16
        finally:
            for sock in hostile:
                sock.close()
        wait_for_descriptors(pid, baseline)
        await client.close()


def whole_big_frame(kind: int = MessageType.CALL) -> bytes:
    """A 32 MiB frame sent in full: memory a client pays for with its bandwidth, which
    is no cost at all on the same machine."""
    header = Header(
        REMOTE_PROGRAM,
        REMOTE_PROTOCOL_VERSION,
        Proc.STORAGE_VOL_UPLOAD,
        kind,
        4242,
        MessageStatus.CONTINUE if kind == MessageType.STREAM else MessageStatus.OK,
    )
    return encode_head(header, MESSAGE_MAX - 24) + bytes(MESSAGE_MAX - 24)


async def test_big_frames_sent_in_full_by_clients_who_cannot_write_stay_bounded(
    tmp_path: Path,
) -> None:
    """Read-only clients (the socket is every local user's) and clients that have not
    sent CONNECT_OPEN make no call that needs a large frame; a frame over 1 MiB from
    them closes their connection instead of taking up to 32 MiB each for as long as
    the connection lives. A read-write connection still takes 32 MiB frames."""
    with running(daemon_with(tmp_path, "max_anonymous_clients = 500\n")) as daemon:
        pid = daemon.process.pid
        client = await honest_client(daemon)
        baseline = descriptors(pid)
        blob = whole_big_frame(MessageType.STREAM)
        hostile: list[socket.socket] = []
        try:
            for index in range(100):
                # Half before CONNECT_OPEN, half after it, on the read-only socket.
                sock = connect(daemon, "ro")
                if index % 2:
                    open_session(sock)
                with suppress(OSError):  # closed by the daemon meanwhile
                    sock.sendall(blob)
                hostile.append(sock)
                await serve_meanwhile(daemon, client, None, 0.01)
            await serve_meanwhile(daemon, client, None, 0.3)
            assert status_mib(pid, "VmHWM") < RSS_BOUND_MIB
        finally:
            for sock in hostile:
                sock.close()
        wait_for_descriptors(pid, baseline)
        assert "exceeds the maximum of 1048580" in daemon.log_path.read_text()
        # A read-only call of almost 1 MiB is still answered.
        with connect(daemon, "ro") as sock:
            rpc = open_session(sock)
            _, frame = rpc.call(
                Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name="p" * 1_000_000)
            )
            sock.sendall(frame)
            while (event := rpc.next_event()) is None:
                rpc.receive_data(sock.recv(65536))
            assert (
                error_of(event)[2]
                == f"Storage pool not found: no storage pool with matching name '{'p' * 1_000_000}'"
            )
        # A read-write client's 32 MiB frame (stream data for no stream) is taken and
        # dropped; the connection goes on.
        with connect(daemon, "unix") as sock:
            rpc = open_session(sock)
            sock.sendall(blob)
            sock.sendall(pool_lookup(rpc))
            while (event := rpc.next_event()) is None:
                rpc.receive_data(sock.recv(65536))
            assert isinstance(event, ReplyReceived), event
        await client.close()


async def test_connecting_in_a_loop_does_not_flood_the_log(virtvold: Virtvold) -> None:
    """Any local user can connect, send garbage and go, thousands of times a second:
    three log lines each (connected, closing, closed) made megabytes a second."""
    before = virtvold.log_path.stat().st_size
    path = unix_path(virtvold.ro_uri)
    for _ in range(1000):
        with socket.socket(socket.AF_UNIX) as sock, suppress(ConnectionError):
            sock.connect(path)
            sock.send(b"\xff\xff\xff\xff")
    async with raw_client(virtvold.port) as client:  # served, and logged in summary
        assert isinstance(await client.call(Proc.CONNECT_GET_TYPE), ReplyReceived)
    grown = virtvold.log_path.stat().st_size - before
    # The first 200 lines of the period (some 400 bytes each per connection), no more.
    assert grown < 200 * 200, f"the log grew by {grown} bytes"


async def test_unread_replies_and_pongs_stay_bounded_and_others_are_served(
    tmp_path: Path,
) -> None:
    with running(daemon_with(tmp_path, "max_anonymous_clients = 500\n")) as daemon:
        pid = daemon.process.pid
        client = await honest_client(daemon)
        baseline = descriptors(pid)
        clients: list[tuple[socket.socket, bytes]] = []
        calls = b""
        for where in ("unix", "ro", "tcp"):
            for _ in range(25):
                sock = connect(daemon, where)
                rpc = open_session(sock)
                calls = calls or pipelined_calls(rpc)
                clients.append((sock, calls))
        ping_flood = pings()
        for _ in range(25):
            clients.append((connect(daemon, "tcp"), ping_flood))
        # 8192 calls per connection, sent once; PINGs without end.
        calls_flood = Flood(clients[:75], repeat=False)
        with calls_flood, Flood(clients[75:], repeat=True) as flood:
            await serve_meanwhile(daemon, client, flood, FLOOD_SECONDS)
            # The floods went on the whole time: the daemon stopped reading, it did not die.
            assert flood.sent > 4 << 20
            assert calls_flood.sent > 5 << 20
        assert status_mib(pid, "VmHWM") < RSS_BOUND_MIB
        wait_for_descriptors(pid, baseline)
        await client.close()


def _data_volume(daemon: Virtvold, size: int) -> None:
    with (daemon.pool_dir / "big.img").open("wb") as handle:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            handle.write(block)


async def test_unread_downloads_are_bounded_per_connection(tmp_path: Path) -> None:
    config = "max_client_requests = 64\n"  # every download opens at once
    with running(daemon_with(tmp_path, config)) as daemon:
        pid = daemon.process.pid
        _data_volume(daemon, 64 << 20)
        client = await honest_client(daemon)
        await client.call(
            Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(pool=await _pool(client), flags=0)
        )
        before = status_mib(pid, "VmRSS")
        greedy = await honest_client(daemon)
        vol = await greedy.volume("big.img")
        args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
        frames = [greedy.rpc.call(Proc.STORAGE_VOL_DOWNLOAD, args)[1] for _ in range(50)]
        greedy.send(b"".join(frames))  # and never read anything
        await serve_meanwhile(daemon, client, None, 1.5)
        grown = status_mib(pid, "VmRSS") - before
        # Three 4 MiB frame buffers per connection, whatever the number of downloads.
        assert grown < 40, f"RSS grew by {grown:.0f} MiB with 50 unread downloads"
        # Now read: 16 downloads were opened, the other 34 refused with libvirt's error.
        opened = refused = 0
        pending = set(greedy.rpc.pending_calls())
        while pending:
            event = await greedy.next_event()
            assert event is not None
            serial: int | None = getattr(event, "serial", None)
            if serial in pending and isinstance(event, ReplyReceived):
                opened += 1
                pending.discard(serial)
            elif serial in pending:
                code, _, message = error_of(event)
                assert code == ErrorCode.OPERATION_FAILED
                assert message is not None
                assert "max_client_streams" in message
                refused += 1
                pending.discard(serial)
        assert (opened, refused) == (16, 34)
        baseline = descriptors(pid)
        await greedy.close()
        wait_for_descriptors(pid, baseline - 1 - 16)
        await client.close()


async def _pool(client: RawClient) -> r.StoragePool:
    found = await client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name="default"))
    assert isinstance(found, ReplyReceived)
    assert isinstance(found.result, r.PoolRet)
    return found.result.pool


async def test_a_client_that_stops_reading_is_dropped(tmp_path: Path) -> None:
    config = "keepalive_interval = 0.2\nkeepalive_count = 1\n"
    with running(daemon_with(tmp_path, config)) as daemon:
        sock = connect(daemon, "unix")
        rpc = open_session(sock)
        started = time.monotonic()
        with Flood([(sock, pipelined_calls(rpc))], repeat=False):
            for _ in range(100):
                if "read nothing" in daemon.log_text():
                    break
                await asyncio.sleep(0.05)
        assert time.monotonic() - started < 3
        assert "the client read nothing of its replies for 0.4 s" in daemon.log_text()


async def test_handshake_timeout_closes_connections_that_never_open(tmp_path: Path) -> None:
    with running(daemon_with(tmp_path, "handshake_timeout = 0.5\n")) as daemon:
        idle = [connect(daemon, where) for where in ("tcp", "unix", "ro")]
        # They keep nobody out meanwhile.
        client = await honest_client(daemon)
        await serve_meanwhile(daemon, client, None, 0.1)
        await client.close()
        # The idle ones are closed when the handshake timeout passes.
        for sock in idle:
            assert sock.recv(1) == b""
            sock.close()
        assert daemon.log_text().count("no CONNECT_OPEN within handshake_timeout") == 3


@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
async def test_connections_that_never_open_keep_nobody_out(
    request: pytest.FixtureRequest, daemon: str
) -> None:
    """With no authentication to wait for (auth none), libvirtd counts no connection among
    max_anonymous_clients: 25 idle ones (any local user can make them, on the read-only
    socket too) kept every new client out of virtvold, root's on the read-write socket
    included, for as long as their owner made them again."""
    peer = request.getfixturevalue(daemon)
    name = storage_driver_uri(daemon)
    idle = [socket.create_connection(("127.0.0.1", peer.port), timeout=5) for _ in range(25)]
    try:
        for sock in idle:  # each one accepted and served as far as it goes
            sock.sendall(Connection(Side.CLIENT).call(Proc.AUTH_LIST)[1])
            assert sock.recv(65536)
        async with raw_client(peer.port, open_name=name) as client:
            reply = await client.call(Proc.CONNECT_NUM_OF_STORAGE_POOLS)
            assert isinstance(reply, ReplyReceived), reply
    finally:
        for sock in idle:
            sock.close()


async def test_max_clients(tmp_path: Path) -> None:
    with running(daemon_with(tmp_path, "max_clients = 2\n")) as daemon:
        first, second = await honest_client(daemon), await honest_client(daemon)
        with connect(daemon, "unix") as third:
            assert third.recv(1) == b""
        assert "max_clients (2) connections are open" in daemon.log_text()
        await first.close()
        await asyncio.sleep(0.1)
        again = await honest_client(daemon)
        await serve_meanwhile(daemon, again, None, 0.1)
        await again.close()
        await second.close()


def _soft_limit_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


async def test_descriptors_run_short_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    # Idle connections are let in by every other limit: the descriptor budget must act.
    config = "max_anonymous_clients = 5000\nhandshake_timeout = 120\n"
    daemon = daemon_with(tmp_path, config, preexec_fn=_soft_limit_1024)
    with running(daemon):
        pid = daemon.process.pid
        client = await honest_client(daemon)
        baseline = descriptors(pid)
        idle: list[socket.socket] = []
        refused = 0
        try:
            for index in range(1100):
                sock = connect(daemon, ("tcp", "unix", "ro")[index % 3])
                idle.append(sock)
            await serve_meanwhile(daemon, client, None, 0.5)
            # The reserve is untouched by connections: volumes can still be opened. (A
            # connection being refused holds its descriptor for a moment: on a busy
            # machine the last few may still be closing.)
            wait_for_descriptors(pid, 1024 - FD_RESERVE_MIN)
            (daemon.pool_dir / "small.img").write_bytes(b"x" * 4096)
            pool = await _pool(client)
            await client.call(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(pool=pool, flags=0))
            assert (
                await _download(client, await client.volume("small.img"), abort_after=None) == 4096
            )
            for sock in idle:
                sock.setblocking(False)
                with suppress(BlockingIOError):
                    refused += sock.recv(1) == b""
            assert refused > 0
            log = daemon.log_text()
            assert log.count("out of file descriptors") == 1, log[-2000:]
        finally:
            for sock in idle:
                sock.close()
        wait_for_descriptors(pid, baseline)
        late = await honest_client(daemon)
        await serve_meanwhile(daemon, late, None, 0.1)
        await late.close()
        await client.close()


def _soft_limit_200() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))


async def test_streams_leave_descriptors_for_the_calls(tmp_path: Path) -> None:
    """A client that opens stream after stream (each holds a volume file) is refused
    before the daemon runs out of descriptors: calls that open files still work."""
    config = "max_client_streams = 1000\nmax_client_requests = 1000\n"
    daemon = daemon_with(tmp_path, config, preexec_fn=_soft_limit_200)
    with running(daemon):
        (daemon.pool_dir / "empty.img").write_bytes(b"")
        (daemon.pool_dir / "small.img").write_bytes(b"x" * 4096)
        client = await honest_client(daemon)
        pool = await _pool(client)
        await client.call(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(pool=pool, flags=0))
        greedy = await honest_client(daemon)
        args = r.VolTransferArgs(vol=await greedy.volume("empty.img"), offset=0, length=0, flags=0)
        greedy.send(
            b"".join(greedy.rpc.call(Proc.STORAGE_VOL_DOWNLOAD, args)[1] for _ in range(250))
        )
        opened, refusals = 0, set()
        pending = set(greedy.rpc.pending_calls())
        while pending:
            event = await greedy.next_event()
            assert event is not None
            serial = getattr(event, "serial", None)
            if serial in pending:
                pending.discard(serial)
                if isinstance(event, ReplyReceived):
                    opened += 1
                else:
                    refusals.add(error_of(event))
        assert opened > 16
        assert refusals == {
            (
                ErrorCode.OPERATION_FAILED,
                38,
                f"operation failed: too many streams open in the daemon ({opened})"
                " for its open-files limit (200)",
            )
        }
        # With every stream the daemon allows open, calls still open files (the pool
        # directory, the volume being created).
        await client.call(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(pool=pool, flags=0))
        xml = "<volume><name>new.img</name><capacity>4096</capacity></volume>"
        created = await client.call(
            Proc.STORAGE_VOL_CREATE_XML, r.VolCreateXmlArgs(pool=pool, xml=xml, flags=0)
        )
        assert isinstance(created, ReplyReceived), created
        await greedy.close()
        # The greedy client's streams are released: another can download again.
        assert await _download(client, await client.volume("small.img"), abort_after=None) == 4096
        await client.close()


async def test_a_slow_reader_is_not_dropped(tmp_path: Path) -> None:
    # The reader takes 2.5 MB/s: 8 MiB of volume (and some 4 MB that the kernel's send
    # buffer holds) leaves the transport's buffer non-empty for ~5 s, far longer than the
    # 1 s allowed for taking nothing at all. (A window much shorter than that would fail
    # the test whenever this process stalls for it on a loaded machine.)
    config = "keepalive_interval = 0.5\nkeepalive_count = 1\n"
    with running(daemon_with(tmp_path, config)) as daemon:
        _data_volume(daemon, 8 << 20)
        client = await honest_client(daemon)
        try:
            sock = client.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            pool = await _pool(client)
            await client.call(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(pool=pool, flags=0))
            vol = await client.volume("big.img")
            args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
            reply = await client.call(Proc.STORAGE_VOL_DOWNLOAD, args)
            assert isinstance(reply, ReplyReceived), reply
            received = 0
            while received < 8 << 20:
                data = await asyncio.wait_for(client.reader.read(256 << 10), 10)
                assert data, "the daemon dropped a client that was reading"
                received += len(data)
                await asyncio.sleep(0.1)
            assert "read nothing" not in daemon.log_text()
        finally:
            # Closed on a failure too: a socket left to the garbage collector warns in
            # whatever test runs next on this worker, and fails that one as well.
            await client.close()


async def _download(client: RawClient, vol: r.StorageVol, *, abort_after: int | None) -> int:
    """Download ``vol``; abort after ``abort_after`` data bytes (None: to the end)."""
    args = r.VolTransferArgs(vol=vol, offset=0, length=0, flags=0)
    reply = await client.call(Proc.STORAGE_VOL_DOWNLOAD, args)
    assert isinstance(reply, ReplyReceived), reply
    serial = reply.serial
    received = 0
    while True:
        event = await client.next_event()
        assert event is not None
        if isinstance(event, StreamDataReceived) and event.serial == serial:
            received += len(event.data)
            if abort_after is not None and received >= abort_after:
                client.send(client.rpc.send_abort(serial))
                abort_after = None
        elif isinstance(event, StreamEndReceived) and event.serial == serial:
            client.send(client.rpc.send_finish(serial))
        elif isinstance(event, StreamFinished) and event.serial == serial:
            return received


async def test_aborted_downloads_give_their_buffers_back(tmp_path: Path) -> None:
    # A connection's downloads share three buffers: one lost by an aborted (or failed)
    # download would leave the connection's later downloads waiting for ever.
    with running(daemon_with(tmp_path, "")) as daemon:
        _data_volume(daemon, 32 << 20)
        client = await honest_client(daemon)
        pool = await _pool(client)
        await client.call(Proc.STORAGE_POOL_REFRESH, r.PoolFlagsArgs(pool=pool, flags=0))
        vol = await client.volume("big.img")
        for _ in range(6):
            got = await asyncio.wait_for(_download(client, vol, abort_after=1), 10)
            assert 0 < got <= 32 << 20
        assert await asyncio.wait_for(_download(client, vol, abort_after=None), 20) == 32 << 20
        await client.close()
        assert daemon.log_text().count("download default/big.img: aborted") == 6


async def _refresh_listener(
    daemon: Virtvold,
) -> tuple[socket.socket, Connection, RawClient, r.PoolFlagsArgs]:
    """A blocking Unix client with a small receive buffer, registered for every pool's
    refresh events; an honest client; and the arguments that refresh pool "default"."""
    listener = connect(daemon, "unix")
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rpc = open_session(listener)
    _, frame = rpc.call(
        Proc.CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY,
        r.PoolEventRegisterArgs(event_id=1, pool=None),  # refresh events of every pool
    )
    listener.sendall(frame)
    client = await honest_client(daemon)
    found = await client.call(Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name="default"))
    assert isinstance(found, ReplyReceived)
    assert isinstance(found.result, r.PoolRet)
    return listener, rpc, client, r.PoolFlagsArgs(pool=found.result.pool, flags=0)


async def test_pool_events_left_unread_are_bounded(tmp_path: Path) -> None:
    # Events come from other clients' calls, so a listener that reads nothing is not held
    # back by its own calls: past a bound of unread events it is dropped, also where the
    # daemon never pings (keepalive_interval = -1, no stall timer).
    with running(daemon_with(tmp_path, "keepalive_interval = -1\n")) as daemon:
        listener, _, client, refresh = await _refresh_listener(daemon)
        started = time.monotonic()
        dropped = False
        while not dropped and time.monotonic() - started < 60:
            for _ in range(100):
                await client.call(Proc.STORAGE_POOL_REFRESH, refresh)
            dropped = "pool events unread" in daemon.log_text()
        assert dropped, "a listener that reads nothing was never dropped"
        assert status_mib(daemon.process.pid, "VmHWM") < RSS_BOUND_MIB
        listener.close()
        await client.close()


async def test_pool_events_held_for_a_backed_up_client_all_arrive(tmp_path: Path) -> None:
    # Enough events to back the listener's output up past the reply limit (256 KiB of
    # ~60-byte events, plus what the kernel holds), fewer than the 1024 more that drop
    # it: the held ones are sent as it reads, none lost.
    refreshes = 5100
    with running(daemon_with(tmp_path, "")) as daemon:
        listener, rpc, client, refresh = await _refresh_listener(daemon)
        for _ in range(refreshes):
            await client.call(Proc.STORAGE_POOL_REFRESH, refresh)
        received = 0
        listener.settimeout(2)
        with suppress(TimeoutError):
            while data := listener.recv(1 << 20):
                rpc.receive_data(data)
                while (event := rpc.next_event()) is not None:
                    if isinstance(event, MessageReceived):
                        received += 1
        assert received == refreshes
        assert "pool events unread" not in daemon.log_text()
        listener.close()
        await client.close()


async def test_pool_event_callbacks_per_connection_are_bounded(virtvold: Virtvold) -> None:
    # Registering is allowed on the read-only socket, every local user's: each
    # registration held memory for as long as the connection lived, however many were
    # made, and each pool event went out once per registration.
    reader, writer = await asyncio.open_unix_connection(unix_path(virtvold.ro_uri))
    client = RawClient(reader, writer)
    try:
        await client.open()
        register = r.PoolEventRegisterArgs(event_id=1, pool=None)
        ids = []
        for _ in range(MAX_POOL_EVENT_CALLBACKS):
            reply = await client.call(Proc.CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY, register)
            assert isinstance(reply, ReplyReceived), reply
            assert isinstance(reply.result, r.PoolEventRegisterRet)
            ids.append(reply.result.callback_id)
        refused = await client.call(Proc.CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY, register)
        assert error_of(refused) == (
            ErrorCode.OPERATION_FAILED,
            ErrorDomain.RPC,
            "operation failed: too many storage pool event callbacks registered on this"
            f" connection ({MAX_POOL_EVENT_CALLBACKS})",
        )
        # A deregistration makes room for one more.
        deregister = r.PoolEventDeregisterArgs(callback_id=ids[0])
        reply = await client.call(Proc.CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY, deregister)
        assert isinstance(reply, ReplyReceived), reply
        reply = await client.call(Proc.CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY, register)
        assert isinstance(reply, ReplyReceived), reply
    finally:
        await client.close()


async def test_a_pool_event_is_encoded_once_and_written_at_once_per_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pool event is told to every callback of every connection, on the event loop:
    100 read-only connections (any local user's) holding 256 callbacks each made each
    event 25600 encodings and writes, every other client held up meanwhile. Each
    connection's frames are now made from one encoding and written at once; each
    callback is still told, under its own number. Counted, not timed: the connections
    are served in this process and the event told to them as the daemon tells it."""
    register = r.PoolEventRegisterArgs(event_id=1, pool=None)  # refresh events
    with in_process_daemon(tmp_path) as context:
        async with in_process_client(context) as first, in_process_client(context) as second:
            watchers = (first, second)
            ids: list[list[int]] = []
            for watcher in watchers:
                calls = [
                    watcher.rpc.call(Proc.CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY, register)
                    for _ in range(MAX_POOL_EVENT_CALLBACKS)
                ]
                watcher.send(b"".join(frame for _, frame in calls))
                registered = []
                for _ in calls:
                    reply = await watcher.next_event()
                    assert isinstance(reply, ReplyReceived), reply
                    assert isinstance(reply.result, r.PoolEventRegisterRet)
                    registered.append(reply.result.callback_id)
                ids.append(registered)
            encodings = 0
            encode = r.PoolRefreshEventMsg.encode

            def counted_encode(message: r.PoolRefreshEventMsg) -> bytes:
                nonlocal encodings
                encodings += 1
                return encode(message)

            monkeypatch.setattr(r.PoolRefreshEventMsg, "encode", counted_encode)
            served = list(context.connections)
            assert len(served) == len(watchers)
            writes = {id(connection): 0 for connection in served}
            writing: set[int] = set()  # a transport's writelines may call its write
            for connection in served:
                assert isinstance(connection, ClientConnection)
                transport = connection._transport
                assert transport is not None

                def counted(write: Callable[[Any], None], key: int) -> Callable[[Any], None]:
                    def write_counted(data: Any) -> None:
                        if key in writing:
                            write(data)
                            return
                        writes[key] += 1
                        writing.add(key)
                        try:
                            write(data)
                        finally:
                            writing.discard(key)

                    return write_counted

                key = id(connection)
                monkeypatch.setattr(transport, "write", counted(transport.write, key))
                monkeypatch.setattr(transport, "writelines", counted(transport.writelines, key))
            pool = PoolRef(name="default", uuid=bytes(range(16)))
            for connection in served:  # as the daemon tells its connections
                connection.pool_event(pool, PoolEvent.REFRESHED)
            assert encodings == len(served)
            assert list(writes.values()) == [1] * len(served)
            for watcher, registered in zip(watchers, ids, strict=True):
                told = []
                for _ in registered:
                    message = await watcher.next_event()
                    assert isinstance(message, MessageReceived), message
                    assert message.procedure == Proc.STORAGE_POOL_EVENT_REFRESH
                    event = r.PoolRefreshEventMsg.decode(message.payload)
                    assert event.pool == r.StoragePool(name=pool.name, uuid=pool.uuid)
                    told.append(event.callback_id)
                assert told == registered


async def test_a_client_that_never_opens_nor_reads_loses_its_place(tmp_path: Path) -> None:
    # The handshake timeout closed such a client gracefully, after the replies it never
    # read: with keepalive_interval = -1 (no stall timer) the close never came, and the
    # client kept its descriptor and its place among max_clients for good.
    config = "keepalive_interval = -1\nhandshake_timeout = 0.5\n"
    # AUTH_LIST is served before CONNECT_OPEN: far more answers than the daemon and the
    # kernel hold for a client that reads none. Encoded before connecting: under coverage
    # that takes most of the handshake timeout, and beside other work all of it, while the
    # flood must be in before the timeout closes the connection.
    rpc = Connection(Side.CLIENT)
    flood = b"".join(rpc.call(Proc.AUTH_LIST)[1] for _ in range(40_000))
    with running(daemon_with(tmp_path, config)) as daemon:
        hostile = connect(daemon, "unix")
        hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hostile.setblocking(False)
        with suppress(BlockingIOError):
            while flood:
                flood = flood[hostile.send(flood) :]
        try:
            reason = "closing: no CONNECT_OPEN within handshake_timeout (0.5 s)"
            deadline = time.monotonic() + 10
            while reason not in daemon.log_text():
                assert time.monotonic() < deadline, "the hostile client kept its place"
                await asyncio.sleep(0.05)
            # Dropped, not waited for: what it left unread is gone with the connection.
            hostile.setblocking(True)
            hostile.settimeout(5)
            with suppress(ConnectionResetError):
                while hostile.recv(1 << 20):
                    pass
        finally:
            hostile.close()
