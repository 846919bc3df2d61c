"""The command line's blocking engine (``direct``) on its own: opening, calls, closing,
whole-file transfers and the sparse fallback against a real virtvold, and the
choice of engine the command line makes.

Everything runs without an event loop: each test drives the coroutines with
``run_blocking``, as the command line does.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import inspect
import logging
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.client.fake_peer import FakePeer
from tests.client.helpers import (
    MIB,
    assert_same_file,
    leftovers,
    open_descriptors,
    write_sparse_image,
)
from tests.conftest import free_port
from virtvol.client import connect, direct
from virtvol.client.direct import DirectRpc, open_direct, run_blocking
from virtvol.client.errors import (
    ConnectionClosed,
    SparseUnsupported,
    TransportError,
)
from virtvol.protocol import procedures
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Virtvold
    from virtvol.client.connection import Connection
    from virtvol.client.objects import StorageVolume
    from virtvol.protocol.connection import CallReceived

FAST_KEEPALIVE = (0.2, 2)


def open_conn(uri: str, **kwargs: Any) -> Connection:
    kwargs.setdefault("keepalive", FAST_KEEPALIVE)
    return run_blocking(open_direct(uri, **kwargs))


def volume(conn: Connection, name: str) -> StorageVolume:
    async def lookup() -> StorageVolume:
        pool = await conn.lookup_pool_by_name("default")
        return await pool.lookup_volume(name)

    return run_blocking(lookup())


def rpc_of(conn: Connection) -> DirectRpc:
    rpc = conn._rpc
    assert isinstance(rpc, DirectRpc)
    return rpc


# -- run_blocking ------------------------------------------------------------------------


def test_run_blocking_returns_the_result_and_raises_the_error() -> None:
    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise ValueError("no")

    assert run_blocking(answer()) == 42
    with pytest.raises(ValueError, match="no"):
        run_blocking(fail())


def test_run_blocking_refuses_a_coroutine_that_suspends_and_closes_it() -> None:
    cleaned_up: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(0)
            cleaned_up.append("resumed")  # never: the coroutine is not resumed
        finally:
            cleaned_up.append("closed")

    coroutine = waits()
    with pytest.raises(RuntimeError, match="waited on an event loop"):
        run_blocking(coroutine)
    assert cleaned_up == ["closed"]
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


# -- opening and closing -------------------------------------------------------------------


def event_loop_connect_error(uri: str) -> str:
    async def attempt() -> None:
        await connect(uri, timeout=5)

    with pytest.raises(TransportError) as caught:
        asyncio.run(attempt())
    return str(caught.value)


def direct_connect_error(uri: str) -> str:
    """What the command line's engine says when it cannot connect to ``uri``."""
    with pytest.raises(TransportError) as caught:
        run_blocking(open_direct(uri, time_limit=5))
    return str(caught.value)


def resolver_refusal(host: bytes, port: int) -> str:
    """The resolver's words for a name it does not know."""
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as failure:
        return str(failure.strerror)
    pytest.fail(f"{host!r} resolved")  # pragma: no cover - a resolver that answers for it


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_unreachable_daemon_reads_as_libvirt_says_it(tmp_path: Path, transport: str) -> None:
    if transport == "unix":
        uri = f"storage+unix:///system?socket={tmp_path / 'missing-sock'}"
        expected = f"Failed to connect socket to '{tmp_path / 'missing-sock'}': "
    else:
        port = free_port()
        uri = f"storage+tcp://127.0.0.1:{port}/system"
        expected = f"unable to connect to server at '127.0.0.1:{port}': "
    message = direct_connect_error(uri)
    assert message.startswith(expected)
    assert message == event_loop_connect_error(uri)


def test_a_host_name_that_does_not_resolve_reads_as_the_resolver_words_it() -> None:
    uri = "storage+tcp://no-such-host.invalid:16599/system"
    reason = resolver_refusal(b"no-such-host.invalid", 16599)
    expected = f"Unable to resolve address 'no-such-host.invalid' service '16599': {reason}"
    assert direct_connect_error(uri) == expected
    assert "Unknown error" not in expected
    assert event_loop_connect_error(uri) == expected


def test_a_host_name_the_idna_codec_refuses_goes_to_the_resolver_as_it_is() -> None:
    # "a..b" has an empty label: as text, the IDNA codec refused it before any lookup
    # (a UnicodeError traceback); libvirt, and now both engines, ask the resolver.
    uri = "storage+tcp://a..b:16599/system"
    reason = resolver_refusal(b"a..b", 16599)
    expected = f"Unable to resolve address 'a..b' service '16599': {reason}"
    assert direct_connect_error(uri) == expected
    assert event_loop_connect_error(uri) == expected


def test_a_name_the_idna_codec_refuses_but_the_resolver_knows_is_connected_to() -> None:
    # A 71-character label: no IDNA, but inet_aton reads it (127.0.0.1). The event loop
    # is given the address the resolver found, as the direct engine gives it the name.
    host = "127.0.0." + "0" * 70 + "1"
    port = free_port()
    uri = f"storage+tcp://{host}:{port}/system"
    expected = f"unable to connect to server at '{host}:{port}': Connection refused"
    assert direct_connect_error(uri) == expected
    assert event_loop_connect_error(uri) == expected


def test_every_address_of_a_name_is_tried_in_the_resolvers_order(
    virtvold: Virtvold, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A name with several addresses, the first failing (nobody listening there, or a
    # family this host cannot open, as IPv6 where it is disabled): the command connects
    # to the next (virsh too: its resolver leaves out families the host has no address
    # of). When all fail, the failure told is the last one's, as libvirt tells it.
    refused = ("127.0.0.1", free_port())
    served = ("127.0.0.1", virtvold.port)
    no_such_family = 255  # above every family Linux knows: EAFNOSUPPORT
    answers = {
        b"refused-then-served": [(_socket.AF_INET, refused), (_socket.AF_INET, served)],
        b"unopenable-then-served": [(no_such_family, refused), (_socket.AF_INET, served)],
        b"refused-then-unopenable": [(_socket.AF_INET, refused), (no_such_family, refused)],
        b"unopenable-then-refused": [(no_such_family, refused), (_socket.AF_INET, refused)],
    }
    opened = set(open_descriptors())

    def several_addresses(host: bytes, port: object, *args: Any) -> list[Any]:
        return [(family, _socket.SOCK_STREAM, 6, "", where) for family, where in answers[host]]

    monkeypatch.setattr(_socket, "getaddrinfo", several_addresses)
    for host in ("refused-then-served", "unopenable-then-served"):
        conn = run_blocking(open_direct(f"storage+tcp://{host}:1/system", time_limit=5))
        try:
            assert run_blocking(conn.get_type()) == "storage"
        finally:
            run_blocking(conn.close())
    unopenable = os.strerror(errno.EAFNOSUPPORT)
    assert direct_connect_error("storage+tcp://refused-then-unopenable:1/system") == (
        f"unable to connect to server at 'refused-then-unopenable:1': {unopenable}"
    )
    assert direct_connect_error("storage+tcp://unopenable-then-refused:1/system") == (
        "unable to connect to server at 'unopenable-then-refused:1': Connection refused"
    )
    assert set(open_descriptors()) == opened


def test_the_event_loop_engine_tries_each_address_and_tells_the_last_failure(
    virtvold: Virtvold, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the command line's engine: a name whose first address refuses connects to the
    # next; when all refuse, the message is virsh's ("Connection refused"), not the
    # event loop's "Multiple exceptions: ..." of every address.
    refused = ("127.0.0.1", free_port())
    served = ("127.0.0.1", virtvold.port)
    answers = {
        b"refused-then-served": [refused, served],
        b"refused-twice": [refused, ("127.0.0.2", refused[1])],
    }

    async def several_addresses(
        loop: asyncio.AbstractEventLoop, host: bytes, port: object, **kwargs: Any
    ) -> list[Any]:
        return [(_socket.AF_INET, _socket.SOCK_STREAM, 6, "", where) for where in answers[host]]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", several_addresses)

    async def get_type() -> str:
        async with connect("storage+tcp://refused-then-served:1/system", timeout=5) as conn:
            return await conn.get_type()

    assert asyncio.run(get_type()) == "storage"
    assert event_loop_connect_error("storage+tcp://refused-twice:1/system") == (
        "unable to connect to server at 'refused-twice:1': Connection refused"
    )


def test_the_time_limit_covers_all_of_a_names_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three addresses that never answer (a listener whose backlog is full drops the
    # connection requests): the command gives up after its time limit, not three of them.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filling = []
    for _ in range(3):
        waiting = socket.socket()
        waiting.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            waiting.connect(listener.getsockname())
        filling.append(waiting)

    def three_addresses(host: bytes, port: object, *args: Any) -> list[Any]:
        where = listener.getsockname()
        return [(_socket.AF_INET, _socket.SOCK_STREAM, 6, "", where)] * 3

    monkeypatch.setattr(_socket, "getaddrinfo", three_addresses)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            run_blocking(open_direct("storage+tcp://silent:1/system", time_limit=0.6))
    finally:
        for sock in [listener, *filling]:
            sock.close()
    assert 0.5 < time.monotonic() - started < 1.2


def test_a_network_uri_without_a_host_means_localhost() -> None:
    # As libvirt's remote driver reads storage+tcp:///system (it used to fail an assert).
    port = free_port()
    uri = f"storage+tcp://:{port}/system"
    expected = f"unable to connect to server at 'localhost:{port}': Connection refused"
    assert direct_connect_error(uri) == expected
    assert event_loop_connect_error(uri) == expected


def test_calls_work_and_close_says_goodbye(virtvold: Virtvold) -> None:
    conn = open_conn(virtvold.tcp_uri)
    assert conn.keepalive_supported
    assert run_blocking(conn.get_type()) == "storage"
    pools = run_blocking(conn.list_pools())
    assert [p.name for p in pools] == ["default"]
    rpc = rpc_of(conn)
    run_blocking(conn.close())
    assert not conn.is_alive
    assert isinstance(rpc.failure, ConnectionClosed)
    assert rpc._sock.fileno() == -1  # the socket is closed, not left to the collector
    with pytest.raises(ConnectionClosed):
        run_blocking(rpc.call(procedures.CONNECT_GET_TYPE))
    run_blocking(conn.close())  # a second close is harmless


def test_close_unregisters_and_closes_as_virsh_does(tmp_path: Path) -> None:
    with FakePeer(tmp_path) as peer:
        conn = open_conn(peer.uri)
        run_blocking(conn.close())
        assert peer.hung_up.wait(5)  # the client closed its socket after the goodbye
    assert peer.calls[-2:] == [Proc.CONNECT_UNREGISTER_CLOSE_CALLBACK, Proc.CONNECT_CLOSE]
    assert Proc.CONNECT_REGISTER_CLOSE_CALLBACK in peer.calls


def test_open_fails_when_the_peer_hangs_up_during_the_handshake(tmp_path: Path) -> None:
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.CONNECT_OPEN] = lambda p, _event: p.hang_up()
        with pytest.raises(ConnectionClosed, match="disconnected from"):
            open_conn(peer.uri)


def test_open_times_out_when_the_peer_never_answers(tmp_path: Path) -> None:
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.CONNECT_OPEN] = lambda _p, _event: None
        with pytest.raises(TimeoutError, match="no answer from"):
            open_conn(peer.uri, time_limit=0.3)


def test_the_time_limit_covers_connecting_and_the_handshake_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_socket = direct._open_socket

    def slow_open_socket(*args: Any) -> _socket.socket:
        time.sleep(0.4)
        return open_socket(*args)

    def answer_late(peer: FakePeer, event: CallReceived) -> None:
        peer.later(0.35, peer.reply, event.serial)

    monkeypatch.setattr(direct, "_open_socket", slow_open_socket)
    with FakePeer(tmp_path) as peer:
        peer.handlers[Proc.CONNECT_OPEN] = answer_late
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            open_conn(peer.uri, time_limit=0.6)
        assert time.monotonic() - started < 0.75


# -- whole files against virtvold -------------------------------------------------------


def test_upload_and_download_keep_the_image_and_its_holes(
    virtvold: Virtvold, tmp_path: Path
) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, 8 * MIB)
    (virtvold.pool_dir / "vol").write_bytes(b"")
    conn = open_conn(virtvold.unix_uri)
    try:
        vol = volume(conn, "vol")
        seen: list[tuple[int, int]] = []
        up = run_blocking(vol.upload_file(source, progress=lambda d, h: seen.append((d, h))))
        assert up.sparse
        assert not up.fell_back
        assert up.total_bytes == 8 * MIB
        assert up.hole_bytes > 4 * MIB  # the holes and the written zeros travelled as skips
        assert seen[-1] == (up.data_bytes, up.hole_bytes)
        assert_same_file(source, virtvold.pool_dir / "vol")

        target = tmp_path / "down.img"
        downs: list[tuple[int, int]] = []
        down = run_blocking(vol.download_file(target, progress=lambda d, h: downs.append((d, h))))
        assert down.sparse
        assert down.total_bytes == 8 * MIB
        assert downs[-1] == (down.data_bytes, down.hole_bytes)
        assert_same_file(source, target)
        assert leftovers(tmp_path, "down.img") == []
        assert run_blocking(conn.get_type()) == "storage"  # the connection goes on
    finally:
        run_blocking(conn.close())


def test_dense_transfers_carry_holes_as_zeros(virtvold: Virtvold, tmp_path: Path) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, 4 * MIB)
    (virtvold.pool_dir / "vol").write_bytes(b"")
    conn = open_conn(virtvold.tcp_uri)
    try:
        vol = volume(conn, "vol")
        seen: list[tuple[int, int]] = []
        up = run_blocking(
            vol.upload_file(
                source, sparse=False, detect_zeroes=False, progress=lambda d, h: seen.append((d, h))
            )
        )
        assert (up.sparse, up.data_bytes, up.hole_bytes) == (False, 4 * MIB, 0)
        assert seen[-1] == (4 * MIB, 0)
        assert all(holes == 0 for _, holes in seen)  # holes travel, and count, as data
        assert_same_file(source, virtvold.pool_dir / "vol")
        target = tmp_path / "down.img"
        down = run_blocking(vol.download_file(target, sparse=False, offset=MIB, length=MIB))
        assert (down.sparse, down.data_bytes, down.hole_bytes) == (False, MIB, 0)
        assert target.read_bytes() == source.read_bytes()[MIB : 2 * MIB]
    finally:
        run_blocking(conn.close())


def test_refusals_before_the_stream_opens(virtvold: Virtvold, tmp_path: Path) -> None:
    (virtvold.pool_dir / "vol").write_bytes(b"x" * 4096)
    work = tmp_path / "work"
    (work / "folder").mkdir(parents=True)
    conn = open_conn(virtvold.unix_uri)
    try:
        vol = volume(conn, "vol")
        with pytest.raises(IsADirectoryError):
            run_blocking(vol.download_file(work / "folder"))
        with pytest.raises(ValueError, match="negative"):
            run_blocking(vol.download_file(work / "out", offset=-1))
        with pytest.raises(FileNotFoundError):
            run_blocking(vol.upload_file(work / "missing"))
        assert os.listdir(work) == ["folder"]
        assert run_blocking(conn.get_type()) == "storage"
    finally:
        run_blocking(conn.close())


# -- the sparse fallback -------------------------------------------------------------------


def test_legacy_peer_falls_back_to_dense_with_one_warning(
    legacy_virtvold: Virtvold, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, 4 * MIB)
    (legacy_virtvold.pool_dir / "vol").write_bytes(b"")
    caplog.set_level(logging.DEBUG, logger="virtvol.client")
    conn = open_conn(legacy_virtvold.tcp_uri)
    try:
        vol = volume(conn, "vol")
        up = run_blocking(vol.upload_file(source))
        assert (up.sparse, up.fell_back, up.hole_bytes) == (False, True, 0)
        assert up.data_bytes == 4 * MIB
        assert_same_file(source, legacy_virtvold.pool_dir / "vol")
        target = tmp_path / "down.img"
        down = run_blocking(vol.download_file(target))
        assert (down.sparse, down.fell_back) == (False, True)
        assert_same_file(source, target)
    finally:
        run_blocking(conn.close())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "has no sparse streams" in warnings[0].getMessage()


def test_legacy_peer_refuses_required_sparse_at_open(
    legacy_virtvold: Virtvold, tmp_path: Path
) -> None:
    source = tmp_path / "src.img"
    write_sparse_image(source, MIB)
    (legacy_virtvold.pool_dir / "vol").write_bytes(b"old")
    conn = open_conn(legacy_virtvold.unix_uri)
    try:
        vol = volume(conn, "vol")
        with pytest.raises(SparseUnsupported) as up:
            run_blocking(vol.upload_file(source, sparse=True))
        assert up.value.stage == "open"
        with pytest.raises(SparseUnsupported) as down:
            run_blocking(vol.download_file(tmp_path / "down.img", sparse=True))
        assert down.value.stage == "open"
        assert leftovers(tmp_path, "down.img") == []
        assert not (tmp_path / "down.img").exists()
        assert (legacy_virtvold.pool_dir / "vol").read_bytes() == b"old"
        assert run_blocking(conn.get_type()) == "storage"
    finally:
        run_blocking(conn.close())


# -- the command line's choice -------------------------------------------------------------

CLI_PROBE = (
    "import sys\n"
    "from virtvol.client.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "print('asyncio imported:', 'asyncio' in sys.modules, 'status:', status)\n"
    "print('logging imported:', 'logging' in sys.modules)\n"
    "print('typing, urllib.parse, re imported:', "
    "[name in sys.modules for name in ('typing', 'urllib.parse', 're')])\n"
    "print('socket imported:', 'socket' in sys.modules)\n"
    "print('signal imported:', 'signal' in sys.modules)\n"
    "print('procedure names imported:', 'virtvol.protocol.procedure_names' in sys.modules)\n"
    "print('contextlib imported:', 'contextlib' in sys.modules)\n"
    "print('threading imported:', 'threading' in sys.modules)\n"
    "errors = vars(sys.modules['virtvol.protocol.errors'])\n"
    "print('error numbers made:', [n for n in ('ErrorCode', 'ErrorDomain') if n in errors])\n"
    "print('error numbers imported:', 'virtvol.protocol.error_codes' in sys.modules)\n"
    "download_side = ('virtvol.client.download_output', 'virtvol.sparse.writer',\n"
    "                 'virtvol.sparse.sequential')\n"
    "print('download side imported:', [n for n in download_side if n in sys.modules])\n"
    "print('upload side imported:', 'virtvol.sparse.reader' in sys.modules)\n"
    "from virtvol.protocol.xdr import XdrStruct\n"
    "print('structs declared:', sorted(c.__name__ for c in XdrStruct.__subclasses__()))\n"
)


def run_cli_probe(*args: str) -> subprocess.CompletedProcess[str]:
    # Without coverage's start-up hook, which imports what the probe looks for.
    env = {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_")}
    env.pop("LIBVIRT_DEFAULT_URI", None)
    env.pop("VIRTVOL_DEFAULT_URI", None)
    return subprocess.run(
        [sys.executable, "-c", CLI_PROBE, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_cli_runs_tcp_and_unix_commands_without_an_event_loop(
    virtvold: Virtvold, transport: str
) -> None:
    uri = virtvold.tcp_uri if transport == "tcp" else virtvold.unix_uri
    probe = run_cli_probe("-c", uri, "pool-list")
    assert "default" in probe.stdout, probe.stderr
    assert "asyncio imported: False status: 0" in probe.stdout
    # Nothing was logged, so logging was not imported (~7 ms of each command's CPU).
    assert "logging imported: False" in probe.stdout
    # Nor typing and urllib.parse with the re they bring (~10 ms; virtvol.protocol.hints).
    assert "typing, urllib.parse, re imported: [False, False, False]" in probe.stdout
    # Nor socket.py, whose enums of the C module's constants cost ~3 ms.
    assert "socket imported: False" in probe.stdout
    # Nor signal.py, which does the same to the signals (the C module catches SIGTERM).
    assert "signal imported: False" in probe.stdout
    # Nor the names of libvirt's ~450 procedures, which only a server's answer to an
    # unknown call and the dumps need (~0.7 ms).
    assert "procedure names imported: False" in probe.stdout
    # Nor contextlib (~0.5 ms), for two context managers written as classes instead.
    assert "contextlib imported: False" in probe.stdout
    # Nor libvirt's error numbers and domains (~180 enum members) when no error came.
    assert "error numbers made: []" in probe.stdout
    # Nor the REMOTE structs of volumes, secrets and pool events (virtvol.protocol.remote).
    declared = probe.stdout.split("structs declared: ")[1]
    assert "'StoragePool'" in declared
    assert "'ListAllPoolsRet'" in declared
    for family_struct in ("VolRet", "Secret", "PoolLifecycleEventMsg"):
        assert f"'{family_struct}'" not in declared


def test_cli_transfers_import_only_their_own_side(virtvold: Virtvold, tmp_path: Path) -> None:
    # An upload read libvirt's error numbers (~0.5 ms) and imported the download's
    # writers (~1.2 ms) before its first byte; a download read the error numbers too,
    # and imported the upload's reader (~0.7 ms).
    source = tmp_path / "src.img"
    source.write_bytes(os.urandom(64 * 1024))
    (virtvold.pool_dir / "vol").write_bytes(b"")
    up = run_cli_probe(
        "-c", virtvold.unix_uri, "vol-upload", "--pool", "default", "vol", str(source)
    )
    assert "asyncio imported: False status: 0" in up.stdout, up.stderr
    assert (virtvold.pool_dir / "vol").read_bytes() == source.read_bytes()
    assert "error numbers imported: False" in up.stdout
    # Nor contextlib (~0.4 ms) or threading (~1 ms), which only a download into a FIFO or
    # a device needs; the same for the download below.
    assert "contextlib imported: False" in up.stdout
    assert "threading imported: False" in up.stdout
    assert "download side imported: []" in up.stdout
    assert "upload side imported: True" in up.stdout

    target = tmp_path / "down.img"
    down = run_cli_probe(
        "-c", virtvold.unix_uri, "vol-download", "--pool", "default", "vol", str(target)
    )
    assert "asyncio imported: False status: 0" in down.stdout, down.stderr
    assert target.read_bytes() == source.read_bytes()
    assert "error numbers imported: False" in down.stdout
    assert "contextlib imported: False" in down.stdout
    assert "threading imported: False" in down.stdout
    assert "upload side imported: False" in down.stdout
    downloads = (
        "'virtvol.client.download_output', 'virtvol.sparse.writer', 'virtvol.sparse.sequential'"
    )
    assert f"download side imported: [{downloads}]" in down.stdout


def test_cli_takes_the_blocking_socket_for_tls_too() -> None:
    # The same probe: a TLS URI goes through the blocking socket as well (here to a port
    # nothing listens on, which fails as the other transports do).
    probe = run_cli_probe("-c", f"storage+tls://127.0.0.1:{free_port()}/system", "pool-list")
    assert "asyncio imported: False status: 1" in probe.stdout, probe.stderr
