"""An upload that outlasts a stall of the pool's storage: the file system frozen
(``fsfreeze``, as a backup's snapshot does) for longer than the client's keepalive
tolerates silence.

While the disk takes nothing, virtvold stops reading the client (it holds a bounded
amount of the upload), and the client, blocked on a full socket, hears nothing from
it: virsh (``-k 1 -K 1``: dead after 2 s of silence) and virtvol's engine gave the
connection up. virtvold now sends keepalive PONGs to a client it has stopped reading."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import (
    POOL_NAME,
    run_virsh,
    small_file_system,
    start_virtvold,
    stop_virtvold,
)
from tests.daemon.conftest import raw_client
from virtvol.client.direct import open_direct, run_blocking
from virtvol.daemon.context import CALL_WORKERS, PRIORITY_CALL_WORKERS
from virtvol.protocol import remote as r
from virtvol.protocol.connection import Event, ReplyReceived
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import Virtvold

pytestmark = pytest.mark.interop

MIB = 1 << 20
SIZE = 192 * MIB
FREEZE = 5.0  # seconds: more than twice the clients' 2 s tolerance
FROZEN_AFTER = 32 * MIB  # of the upload's temporary written


@pytest.fixture
def frozen_pool_virtvold(tmp_path: Path) -> Iterator[Virtvold]:
    """virtvold whose pool is a small ext4 of its own, which a test may freeze."""
    base = tmp_path / "virtvold"
    image = tmp_path / "ext4.img"
    with small_file_system(image, base / "pool", 3 * SIZE, "mkfs.ext4", "-q", "-F"):
        try:
            daemon = start_virtvold(base)
            try:
                yield daemon
            finally:
                stop_virtvold(daemon)
        finally:
            subprocess.run(
                ["fsfreeze", "--unfreeze", str(base / "pool")], capture_output=True, check=False
            )


class Freezer:
    """Freezes ``pool`` for ``FREEZE`` seconds once an upload's temporary there holds
    ``FROZEN_AFTER`` bytes; ``froze_for`` tells how long it was frozen."""

    def __init__(self, pool: Path) -> None:
        self.pool = pool
        self.froze_for = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _temporary_size(self) -> int:
        with os.scandir(self.pool) as entries:
            return max(
                (e.stat().st_size for e in entries if e.name.startswith(".virtvol-upload-")),
                default=0,
            )

    def _run(self) -> None:
        give_up = time.monotonic() + 60
        while self._temporary_size() < FROZEN_AFTER:
            if self._done.is_set() or time.monotonic() > give_up:
                return
            time.sleep(0.002)
        subprocess.run(["fsfreeze", "--freeze", str(self.pool)], check=True)
        started = time.monotonic()
        time.sleep(FREEZE)
        subprocess.run(["fsfreeze", "--unfreeze", str(self.pool)], check=True)
        self.froze_for = time.monotonic() - started

    def join(self) -> None:
        self._done.set()
        self._thread.join(timeout=FREEZE + 60)


@pytest.fixture
def source(frozen_pool_virtvold: Virtvold, tmp_path: Path) -> tuple[Path, bytes]:
    """An image to upload, and the empty volume "v" of its size to upload it into."""
    data = os.urandom(SIZE)
    path = tmp_path / "source.img"
    path.write_bytes(data)
    uri = frozen_pool_virtvold.tcp_uri
    run_virsh(uri, "vol-create-as", POOL_NAME, "v", str(SIZE), "--allocation", "0")
    return path, data


def test_virsh_upload_outlasts_frozen_storage(
    frozen_pool_virtvold: Virtvold, source: tuple[Path, bytes]
) -> None:
    path, data = source
    uri = frozen_pool_virtvold.tcp_uri
    freezer = Freezer(frozen_pool_virtvold.pool_dir)
    upload = subprocess.run(
        ["virsh", "-k", "1", "-K", "1", "-c", uri, "vol-upload", "v", str(path), POOL_NAME],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    freezer.join()
    assert freezer.froze_for >= FREEZE
    assert (upload.returncode, upload.stderr) == (0, "")
    assert (frozen_pool_virtvold.pool_dir / "v").read_bytes() == data


def test_an_upload_on_virtvols_engine_outlasts_frozen_storage(
    frozen_pool_virtvold: Virtvold, source: tuple[Path, bytes]
) -> None:
    path, data = source
    uri = frozen_pool_virtvold.tcp_uri

    async def upload() -> None:
        conn = await open_direct(uri, keepalive=(1, 1))
        try:
            pool = await conn.lookup_pool_by_name(POOL_NAME)
            volume = await pool.lookup_volume("v")
            freezer = Freezer(frozen_pool_virtvold.pool_dir)
            try:
                await volume.upload_file(path)
            finally:
                freezer.join()
            assert freezer.froze_for >= FREEZE
            await volume.info()  # the connection is still of use
        finally:
            await conn.close()

    run_blocking(upload())
    assert (frozen_pool_virtvold.pool_dir / "v").read_bytes() == data


# The thaw of a test that does not thaw first; the other pool's listing must end while
# the file system is still frozen, which a listing waiting for it could not.
FROZEN_AT_MOST = 60.0


# A thread asleep uninterruptibly for this long waits for the frozen disk: a read or a
# write of a disk that works is over far sooner.
HELD_FOR = 0.2


def _uninterruptible_threads(pid: int) -> set[str]:
    """The threads of process ``pid`` that sleep uninterruptibly (state D), as one waiting
    for a frozen file system does."""
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
            if stat.rpartition(")")[2].split()[0] == "D":
                found.add(task)
    return found


def _wait_until_held_by_the_freeze(daemon: Virtvold, call: subprocess.Popen[str]) -> None:
    """Until a thread of the daemon has slept uninterruptibly for ``HELD_FOR``: only
    ``call`` touches the frozen file system, so it is that call's, waiting in the daemon."""
    since: dict[str, float] = {}
    give_up = time.monotonic() + FROZEN_AT_MOST / 2
    while True:
        now = time.monotonic()
        since = {t: since.get(t, now) for t in _uninterruptible_threads(daemon.process.pid)}
        if any(now - asleep_at >= HELD_FOR for asleep_at in since.values()):
            return
        assert call.poll() is None, "the call did not wait for the frozen disk"
        assert now < give_up, "the call never reached the frozen disk"
        time.sleep(0.01)


def _listed_while_frozen(daemon: Virtvold, frozen: Path, call: list[str]) -> str:
    """Freeze ``frozen``, run virsh ``call``, and once the daemon waits in it for the
    frozen disk, list the volumes of pool "other" (on another file system) and see the
    call still waiting: the listing did not wait for the thaw. Returns the listing, once
    the thaw let the call finish."""
    subprocess.run(["fsfreeze", "--freeze", str(frozen)], check=True)
    thaw = threading.Timer(
        FROZEN_AT_MOST,
        subprocess.run,
        (["fsfreeze", "--unfreeze", str(frozen)],),
        {"check": False},
    )
    thaw.start()
    frozen_at = time.monotonic()
    blocked = subprocess.Popen(
        ["virsh", "-c", daemon.tcp_uri, *call],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_until_held_by_the_freeze(daemon, blocked)
        listed = run_virsh(daemon.tcp_uri, "vol-list", "other")
        listed_after = time.monotonic() - frozen_at
        call_still_waits = blocked.poll() is None
    finally:
        thaw.cancel()
        subprocess.run(["fsfreeze", "--unfreeze", str(frozen)], check=False)
        output, _ = blocked.communicate(timeout=30)
    assert listed_after < FROZEN_AT_MOST, "listing another pool waited for the frozen one's thaw"
    assert call_still_waits, "the call was done before the listing: the listing waited for it"
    assert blocked.returncode == 0, output
    return listed.stdout


def _other_pool(uri: str, tmp_path: Path) -> None:
    """Pool "other", with volume "o", in a folder on another file system."""
    other = tmp_path / "other"
    other.mkdir()
    run_virsh(uri, "pool-create-as", "other", "dir", "--target", str(other))
    (other / "o").write_bytes(b"o")


def test_an_upload_opened_on_frozen_storage_holds_up_no_other_pool(
    frozen_pool_virtvold: Virtvold, tmp_path: Path
) -> None:
    """A whole-volume upload makes its hidden temporary as it opens, which waits while the
    pool's file system is frozen; meanwhile a pool on another file system is listed."""
    uri, pool = frozen_pool_virtvold.tcp_uri, frozen_pool_virtvold.pool_dir
    run_virsh(uri, "vol-create-as", POOL_NAME, "v", "4096", "--allocation", "0")
    _other_pool(uri, tmp_path)
    source = tmp_path / "source.img"
    source.write_bytes(b"n" * 4096)
    call = ["vol-upload", "v", str(source), POOL_NAME]
    listed = _listed_while_frozen(frozen_pool_virtvold, pool, call)
    assert " o " in listed
    assert (pool / "v").read_bytes() == b"n" * 4096


def test_a_refresh_on_frozen_storage_holds_up_no_other_pool(
    frozen_pool_virtvold: Virtvold, tmp_path: Path
) -> None:
    """A refresh removes the upload temporaries a crash left, which waits while the pool's
    file system is frozen; meanwhile a pool on another file system is listed."""
    uri, pool = frozen_pool_virtvold.tcp_uri, frozen_pool_virtvold.pool_dir
    leftover = pool / ".virtvol-upload-0123456789abcdef"
    leftover.write_bytes(b"left by a crash")
    _other_pool(uri, tmp_path)
    listed = _listed_while_frozen(frozen_pool_virtvold, pool, ["pool-refresh", POOL_NAME])
    assert " o " in listed
    assert not leftover.exists()


def test_a_build_on_frozen_storage_holds_up_no_other_pool(
    frozen_pool_virtvold: Virtvold, tmp_path: Path
) -> None:
    """pool-build makes its folder, which waits while the file system it goes on is
    frozen; meanwhile a pool on another file system is listed."""
    uri, frozen = frozen_pool_virtvold.tcp_uri, frozen_pool_virtvold.pool_dir
    run_virsh(uri, "pool-define-as", "fresh", "dir", "--target", str(frozen / "fresh"))
    _other_pool(uri, tmp_path)
    listed = _listed_while_frozen(frozen_pool_virtvold, frozen, ["pool-build", "fresh"])
    assert " o " in listed
    assert (frozen / "fresh").is_dir()


def test_a_start_on_frozen_storage_holds_up_no_other_pool(
    frozen_pool_virtvold: Virtvold, tmp_path: Path
) -> None:
    """A pool's start removes the upload temporaries a crash left, which waits while the
    pool's file system is frozen; meanwhile a pool on another file system is listed."""
    uri, pool = frozen_pool_virtvold.tcp_uri, frozen_pool_virtvold.pool_dir
    _other_pool(uri, tmp_path)
    run_virsh(uri, "pool-destroy", POOL_NAME)
    leftover = pool / ".virtvol-upload-0123456789abcdef"
    leftover.write_bytes(b"left by a crash")
    listed = _listed_while_frozen(frozen_pool_virtvold, pool, ["pool-start", POOL_NAME])
    assert " o " in listed
    assert not leftover.exists()


@pytest.fixture
def frozen_state_virtvold(tmp_path: Path) -> Iterator[Virtvold]:
    """virtvold whose state directory (pool definitions, secrets) is a small ext4 of its
    own, which a test may freeze; its pool is elsewhere. A connection may have 16 calls
    in flight."""
    if os.geteuid() != 0:
        pytest.fail("mounting and freezing a file system takes root", pytrace=False)
    image, base = tmp_path / "state.img", tmp_path / "virtvold"
    with image.open("wb") as created:
        created.truncate(64 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    (base / "state").mkdir(parents=True)
    config = tmp_path / "virtvold.toml"
    config.write_text("max_client_requests = 16\n")
    subprocess.run(["mount", "-o", "loop", str(image), str(base / "state")], check=True)
    try:
        daemon = start_virtvold(base, "--config", str(config))
        try:
            yield daemon
        finally:
            stop_virtvold(daemon)
    finally:
        subprocess.run(
            ["fsfreeze", "--unfreeze", str(base / "state")], capture_output=True, check=False
        )
        subprocess.run(["umount", str(base / "state")], check=True)


@contextlib.contextmanager
def _frozen(path: Path) -> Iterator[None]:
    """``path``'s file system frozen, thawed at the end or after ``FROZEN_AT_MOST``."""
    subprocess.run(["fsfreeze", "--freeze", str(path)], check=True)
    thaw = threading.Timer(
        FROZEN_AT_MOST, subprocess.run, (["fsfreeze", "--unfreeze", str(path)],), {"check": False}
    )
    thaw.start()
    try:
        yield
    finally:
        thaw.cancel()
        subprocess.run(["fsfreeze", "--unfreeze", str(path)], check=False)


def _reply_to(event: Event | None, serial: int) -> ReplyReceived:
    assert isinstance(event, ReplyReceived), event
    assert event.serial == serial, f"the reply to call {event.serial} came first"
    return event


def _pool_named(reply: ReplyReceived) -> str:
    assert isinstance(reply.result, r.PoolRet)
    return reply.result.pool.name


def _thaw(path: Path) -> None:
    subprocess.run(["fsfreeze", "--unfreeze", str(path)], check=True)


async def _lookup_waits_and_the_loop_answers(
    daemon: Virtvold, define: subprocess.Popen[str]
) -> None:
    """A pool lookup, then a call served on the event loop, on one connection: the second
    is answered while ``define`` holds the registry's lock, then the first once thawed."""
    async with raw_client(daemon.port) as client:
        lookup, lookup_frame = client.rpc.call(
            Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name=POOL_NAME)
        )
        get_type, get_type_frame = client.rpc.call(Proc.CONNECT_GET_TYPE)
        client.send(lookup_frame, get_type_frame)
        _reply_to(await client.next_event(wait=FROZEN_AT_MOST / 2), get_type)
        assert define.poll() is None, "the definition was written before the lookup's answer"
        await asyncio.to_thread(_thaw, daemon.state_dir)
        assert _pool_named(_reply_to(await client.next_event(), lookup)) == POOL_NAME


def test_the_loop_answers_while_a_pool_lookup_waits_for_a_definition_on_frozen_storage(
    frozen_state_virtvold: Virtvold, tmp_path: Path
) -> None:
    """pool-define-as writes the definition holding the registry's lock, which waits while
    the state directory is frozen. A pool lookup, which the event loop answers itself
    when it can take that lock at once, goes to a worker to wait for it instead: the
    call after it on the same connection, served on the loop, is answered meanwhile."""
    daemon = frozen_state_virtvold
    target = str(tmp_path / "fresh")
    with _frozen(daemon.state_dir):
        define = subprocess.Popen(
            ["virsh", "-c", daemon.tcp_uri, "pool-define-as", "fresh", "dir", "--target", target],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_until_held_by_the_freeze(daemon, define)
            asyncio.run(_lookup_waits_and_the_loop_answers(daemon, define))
        finally:
            output, _ = define.communicate(timeout=30)
    assert define.returncode == 0, output


def _secret_xml(index: int) -> str:
    return f"<secret ephemeral='no' private='no'><uuid>{index:032x}</uuid></secret>"


async def test_a_pool_lookup_is_answered_while_every_worker_waits_for_frozen_storage(
    frozen_state_virtvold: Virtvold,
) -> None:
    """Secrets are written outside the registry's lock, one at a time: while the state
    directory is frozen, the first waits for the disk and the others for it, one worker
    each, every worker taken. A pool lookup sent after them does not wait for a worker:
    the event loop answers it."""
    daemon = frozen_state_virtvold
    workers = CALL_WORKERS + PRIORITY_CALL_WORKERS
    async with raw_client(daemon.port) as client:
        with _frozen(daemon.state_dir):
            defines = [
                client.rpc.call(
                    Proc.SECRET_DEFINE_XML, r.SecretXmlArgs(xml=_secret_xml(i), flags=0)
                )
                for i in range(workers)
            ]
            lookup, lookup_frame = client.rpc.call(
                Proc.STORAGE_POOL_LOOKUP_BY_NAME, r.LookupByNameArgs(name=POOL_NAME)
            )
            client.send(*(frame for _, frame in defines), lookup_frame)
            reply = _reply_to(await client.next_event(wait=FROZEN_AT_MOST / 2), lookup)
            assert _pool_named(reply) == POOL_NAME
        defined = {serial for serial, _ in defines}
        while defined:
            event = await client.next_event()
            assert isinstance(event, ReplyReceived), event
            defined.remove(event.serial)
    assert len(list((daemon.state_dir / "secrets").glob("*.xml"))) == workers


def test_a_stop_lets_a_call_waiting_for_frozen_storage_finish_in_its_pool(
    frozen_pool_virtvold: Virtvold,
) -> None:
    """SIGTERM while a volume is being made on a frozen pool: the stop closes the
    connections, then waits for the call before it stops the pools (closing the pool's
    directory under the call would let it make its file wherever the number went next);
    once thawed, the volume is made whole and the daemon exits cleanly."""
    daemon = frozen_pool_virtvold
    pool = daemon.pool_dir
    subprocess.run(["fsfreeze", "--freeze", str(pool)], check=True)
    create = subprocess.Popen(
        ["virsh", "-c", daemon.tcp_uri, "vol-create-as", POOL_NAME, "made", "1M"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_until_held_by_the_freeze(daemon, create)
        daemon.process.send_signal(signal.SIGTERM)
        give_up = time.monotonic() + FROZEN_AT_MOST / 2
        while "the daemon is stopping after" not in daemon.log_text():
            assert time.monotonic() < give_up, "the stop never closed the connection"
            time.sleep(0.01)
        # The call's thread sleeps on the frozen disk, so the stop cannot be past it.
        assert daemon.process.poll() is None
        assert "stopped" not in daemon.log_text().rpartition("stopping:")[2]
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(pool)], check=False)
        create.communicate(timeout=30)
    assert daemon.process.wait(FROZEN_AT_MOST / 2) == 0
    assert (pool / "made").stat().st_size == 1 << 20
    assert "virtvold INFO virtvol.daemon: stopped" in daemon.log_text()
