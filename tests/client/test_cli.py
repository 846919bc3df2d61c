"""The ``virtvol`` command against a real libvirtd, virtvold and a legacy virtvold, each time
compared with real virsh against the same daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.client.fake_peer import POOL, VOLUME, FakePeer, storage_error
from tests.client.helpers import MIB, allocated, assert_same_file, write_sparse_image
from tests.client.test_direct_faults import send_whole_download
from tests.conftest import ReferenceLibvirtd, run_virsh, start_virtvold, stop_virtvold
from virtvol.protocol import remote as r
from virtvol.protocol.connection import CallReceived, rpc_error
from virtvol.protocol.errors import ErrorCode
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from virtvol.protocol.xdr import XdrStruct

pytestmark = pytest.mark.interop

_COMMAND = [sys.executable, "-c", "from virtvol.client.cli import main; raise SystemExit(main())"]


def virtvol(uri: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the command in a subprocess, as a user would."""
    env = dict(os.environ, LC_ALL="C")
    proc = subprocess.run(
        [*_COMMAND, "-c", uri, *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"virtvol {args}: {proc.stdout}{proc.stderr}"
    return proc


@dataclass(frozen=True)
class Daemon:
    """What these tests need of a daemon: its URI, the pool "default" and a scratch dir."""

    kind: str
    tcp_uri: str
    unix_uri: str
    pool_dir: Path
    state_dir: Path


@pytest.fixture(params=["libvirtd", "virtvold", "virtvold-legacy"])
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    if request.param == "libvirtd":
        reference: ReferenceLibvirtd = request.getfixturevalue("reference_libvirtd")
        yield Daemon(
            "libvirtd",
            reference.tcp_uri,
            reference.unix_uri,
            reference.pool_dir,
            reference.state_dir,
        )
        return
    legacy = ["--protocol", "legacy"] if request.param == "virtvold-legacy" else []
    started = start_virtvold(tmp_path / request.param, *legacy)
    try:
        yield Daemon(request.param, started.tcp_uri, started.unix_uri, started.pool_dir, tmp_path)
    finally:
        stop_virtvold(started)


def _mask_sizes(text: str) -> str:
    """Free-space figures move between two runs; mask only them."""
    text = re.sub(r"(Allocation|Available):( +)\d{7,}", r"\1:\2<bytes>", text)
    return re.sub(r"\d+\.\d\d [KMGT]iB", "<size>", text)


def test_listings_match_virsh(daemon: Daemon) -> None:
    uri = daemon.tcp_uri
    other = daemon.state_dir / "otherpool"
    run_virsh(uri, "pool-define-as", "other", "dir", "--target", str(other))
    run_virsh(uri, "vol-create-as", "default", "vol1", "1M", "--format", "raw")
    run_virsh(uri, "vol-create-as", "default", "sp", "10005", "--allocation", "0")
    for args in (
        ["pool-list"],
        ["pool-list", "--all"],
        ["pool-list", "--inactive"],
        ["pool-list", "--all", "--details"],
        ["pool-info", "default"],
        ["pool-info", "other"],
        ["pool-info", "default", "--bytes"],
        ["pool-dumpxml", "other"],
        ["vol-list", "default"],
        ["vol-list", "default", "--details"],
        ["vol-info", "--pool", "default", "vol1"],
        ["vol-info", "sp", "--pool", "default", "--bytes"],
        ["vol-info", str(daemon.pool_dir / "vol1")],
        ["vol-path", "--pool", "default", "vol1"],
        ["vol-key", "--pool", "default", "vol1"],
    ):
        ours = virtvol(uri, *args)
        theirs = run_virsh(uri, *args)
        assert _mask_sizes(ours.stdout) == _mask_sizes(theirs.stdout), args
        assert ours.stderr == ""


def test_listings_are_in_virshs_case_blind_order(reference_libvirtd: ReferenceLibvirtd) -> None:
    """virsh sorts pools and volumes as strcasecmp orders their names, not by code point."""
    uri = reference_libvirtd.tcp_uri
    for name in ("Zed", "alpha", "_p"):
        run_virsh(uri, "pool-define-as", name, "dir", "--target", f"/nonexistent/{name}")
    for name in ("B", "a", "C", "_x", "10", "9"):
        run_virsh(uri, "vol-create-as", "default", name, "1k")
    for args in (
        ["pool-list", "--all"],
        ["pool-list", "--all", "--name"],
        ["vol-list", "default"],
    ):
        ours = virtvol(uri, *args)
        theirs = run_virsh(uri, *args)
        assert ours.stdout == theirs.stdout, args
    assert virtvol(uri, "-q", "vol-list", "default").stdout.split()[4:12:2] == ["_x", "a", "B", "C"]


def test_errors_match_virsh(daemon: Daemon, tmp_path: Path) -> None:
    uri = daemon.tcp_uri
    other = daemon.state_dir / "otherpool"
    run_virsh(uri, "pool-define-as", "other", "dir", "--target", str(other))
    run_virsh(uri, "vol-create-as", "default", "vol1", "1M", "--format", "raw")
    other_uuid = run_virsh(uri, "pool-uuid", "other").stdout.strip()
    source = tmp_path / "h.txt"
    source.write_text("hello")
    for args in (
        ["vol-info", "--pool", other_uuid, "x"],  # the inactive pool named as given
        ["pool-info", "nope"],
        ["vol-info", "--pool", "default", "nope"],
        ["vol-info", "nope"],
        ["vol-create-as", "default", "vol1", "1M", "--format", "raw"],
        ["vol-create-as", "default", "a/b", "1M", "--format", "raw"],
        ["pool-define-as", "default", "dir", "--target", str(daemon.pool_dir)],
        ["pool-start", "default"],
        ["pool-destroy", "other"],
        ["pool-undefine", "default"],
        ["vol-resize", "--pool", "default", "vol1", "512K"],
        ["vol-upload", "--pool", "default", "nope", str(source)],
        ["vol-upload", "--pool", "nope", "x", str(source)],
        ["vol-upload", "--pool", "other", "x", str(source)],
        ["vol-upload", "--pool", "default", "vol1", "/nonexistent"],
        ["vol-download", "--pool", "default", "vol1", "/nonexistent-dir/x.bin"],
    ):
        ours = virtvol(uri, *args, check=False)
        theirs = run_virsh(uri, *args, check=False)
        assert ours.returncode == theirs.returncode == 1, args
        assert ours.stderr == theirs.stderr, args


def test_pool_and_volume_lifecycle(daemon: Daemon) -> None:
    uri = daemon.tcp_uri
    target = daemon.state_dir / "p2"
    target.mkdir()
    os.chown(target, daemon.pool_dir.stat().st_uid, -1)
    steps = [
        (["pool-define-as", "p2", "dir", "--target", str(target)], "Pool p2 defined\n\n"),
        (["pool-start", "p2"], "Pool p2 started\n\n"),
        (["pool-autostart", "p2"], "Pool p2 marked as autostarted\n\n"),
        (["pool-autostart", "p2", "--disable"], "Pool p2 unmarked as autostarted\n\n"),
        (["pool-refresh", "p2"], "Pool p2 refreshed\n\n"),
        (["vol-create-as", "p2", "v", "1MiB", "--allocation", "0"], "Vol v created\n\n"),
        (
            ["vol-resize", "--pool", "p2", "v", "2M"],
            "Size of volume 'v' successfully changed to 2M\n\n",
        ),
        (["vol-clone", "--pool", "p2", "v", "w"], "Vol w cloned from v\n\n"),
        (["vol-wipe", "--pool", "p2", "w"], "Vol w wiped\n\n"),
        (["vol-delete", "--pool", "p2", "w"], "Vol w deleted\n\n"),
        (["pool-destroy", "p2"], "Pool p2 destroyed\n\n"),
        (["pool-undefine", "p2"], "Pool p2 has been undefined\n\n"),
    ]
    for args, expected in steps:
        assert virtvol(uri, *args).stdout == expected, args
    assert "<capacity unit='bytes'>2097152</capacity>" in (target / "v").read_text() or (
        (target / "v").stat().st_size == 2 * MIB
    )
    xml = virtvol(uri, "pool-dumpxml", "default").stdout
    assert "<name>default</name>" in xml
    assert virtvol(uri, "pool-create-as", "t", "dir", "--target", str(target)).stdout == (
        "Pool t created\n\n"
    )
    assert "t " in run_virsh(uri, "pool-list").stdout


def _run(client: str, uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``args`` run by virsh or by virtvol, failing or not."""
    if client == "virsh":
        return run_virsh(uri, *args, check=False)
    return virtvol(uri, *args, check=False)


def _on_fake_peers(
    tmp_path: Path, serve: Callable[[FakePeer], None], *args: str
) -> dict[str, tuple[str, str, int, list[int]]]:
    """``args`` run by virsh and by virtvol, each against a fake peer that ``serve`` set up:
    by client, what it printed, its exit status and the procedures it called."""
    answers = {}
    for client in ("virsh", "virtvol"):
        folder = tmp_path / client
        folder.mkdir()
        with FakePeer(folder) as peer:
            serve(peer)
            proc = _run(client, peer.uri, *args)
        answers[client] = (proc.stdout, proc.stderr, proc.returncode, peer.calls)
    return answers


@pytest.mark.parametrize(
    "algorithm",
    [
        [],  # virsh's default: the zero algorithm, through the pattern call all the same
        ["--algorithm", "zero"],
        ["--algorithm", "trim"],  # a dir pool cannot discard
        ["--algorithm=dod"],  # libvirtd needs scrub (not installed), virtvold does not run it
        ["--algorithm", "Zero"],  # virsh's names are spelt exactly: its own local refusal
    ],
    ids=["default", "zero", "trim", "dod", "unknown"],
)
def test_wipe_algorithms_match_virsh(daemon: Daemon, algorithm: list[str]) -> None:
    """virsh wipes one volume, virtvol its twin: the same answers, the same bytes left."""
    uri = daemon.tcp_uri
    content = os.urandom(64 * 1024)
    answers = {}
    for client, name in (("virsh", "w-A"), ("virtvol", "w-B")):
        run_virsh(uri, "vol-create-as", "default", name, "64K")
        (daemon.pool_dir / name).write_bytes(content)
        proc = _run(client, uri, "vol-wipe", name, "--pool", "default", *algorithm)
        answers[client] = (
            proc.stdout.replace(name, "w"),
            proc.stderr.replace(name, "w"),
            proc.returncode,
        )
    assert answers["virtvol"] == answers["virsh"]
    ours, theirs = daemon.pool_dir / "w-B", daemon.pool_dir / "w-A"
    assert ours.read_bytes() == theirs.read_bytes()
    assert allocated(ours) == allocated(theirs)
    wiped = answers["virsh"][2] == 0
    assert ours.read_bytes() == (bytes(len(content)) if wiped else content)


DEFAULT_POOL = r.StoragePool(name=POOL, uuid=bytes(16))


def _serve_the_volume(peer: FakePeer) -> None:
    """``peer`` holds pool "default", active, and its volume, found by name."""

    def pool(peer: FakePeer, call: CallReceived) -> None:
        peer.reply(call.serial, r.PoolRet(DEFAULT_POOL))

    peer.handlers.update(
        {
            Proc.STORAGE_POOL_LOOKUP_BY_NAME: pool,
            Proc.STORAGE_POOL_LOOKUP_BY_VOLUME: pool,
            Proc.STORAGE_POOL_IS_ACTIVE: lambda peer, call: peer.reply(call.serial, r.ActiveRet(1)),
            Proc.STORAGE_VOL_LOOKUP_BY_NAME: lambda peer, call: peer.reply(
                call.serial, r.VolRet(VOLUME)
            ),
        }
    )


def _serve_wipes_without_the_pattern_call(peer: FakePeer) -> None:
    """``peer`` holds pool "default" and its volume, and answers the pattern call as a
    daemon from before it does ("unknown procedure"); the plain wipe succeeds."""

    def unknown(peer: FakePeer, call: CallReceived) -> None:
        peer.refuse(call.serial, rpc_error(f"unknown procedure: {call.procedure.number}"))

    _serve_the_volume(peer)
    peer.handlers.update(
        {
            Proc.STORAGE_VOL_WIPE_PATTERN: unknown,
            Proc.STORAGE_VOL_WIPE: lambda peer, call: peer.reply(call.serial),
        }
    )


@pytest.mark.parametrize(
    ("algorithm", "calls"),
    [
        ([], [Proc.STORAGE_VOL_WIPE_PATTERN, Proc.STORAGE_VOL_WIPE]),
        (["--algorithm", "zero"], [Proc.STORAGE_VOL_WIPE_PATTERN, Proc.STORAGE_VOL_WIPE]),
        (["--algorithm", "nnsa"], [Proc.STORAGE_VOL_WIPE_PATTERN]),
    ],
    ids=["default", "zero", "nnsa"],
)
def test_wipe_falls_back_to_the_plain_call_as_virsh_does(
    tmp_path: Path, algorithm: list[str], calls: list[Proc]
) -> None:
    """A daemon without the pattern call: virsh asks again with the plain wipe for the
    zero algorithm only, and fails any other with the daemon's answer; so does virtvol."""
    answers = _on_fake_peers(
        tmp_path, _serve_wipes_without_the_pattern_call, "vol-wipe", VOLUME.name, POOL, *algorithm
    )
    wiping = (Proc.STORAGE_VOL_WIPE, Proc.STORAGE_VOL_WIPE_PATTERN)
    wipes = {client: [n for n in answer[3] if n in wiping] for client, answer in answers.items()}
    assert answers["virtvol"][:3] == answers["virsh"][:3]
    assert wipes["virtvol"] == wipes["virsh"] == calls


def _serve_a_volume_deleted_while_listed(peer: FakePeer) -> None:
    """``peer`` lists two volumes in pool "default"; "gone" was deleted since, and the
    calls that describe it fail as libvirtd fails them."""
    gone = r.StorageVol(pool=POOL, name="gone", key="/pool/gone")

    def vanished(peer: FakePeer, call: CallReceived) -> None:
        assert isinstance(call.args, r.VolArgs)
        if call.args.vol.name != "gone":
            answers = {
                Proc.STORAGE_VOL_GET_PATH: r.VolGetPathRet("/pool/vol"),
                Proc.STORAGE_VOL_GET_INFO: r.VolGetInfoRet(type=0, capacity=1 << 20, allocation=0),
            }
            peer.reply(call.serial, answers[Proc(call.procedure.number)])
            return
        peer.refuse(
            call.serial,
            storage_error(
                ErrorCode.NO_STORAGE_VOL,
                "Storage volume not found: no storage vol with matching name 'gone'",
            ),
        )

    _serve_the_volume(peer)
    peer.handlers.update(
        {
            Proc.STORAGE_POOL_LIST_ALL_VOLUMES: lambda peer, call: peer.reply(
                call.serial, r.PoolListAllVolumesRet(vols=(VOLUME, gone), ret=2)
            ),
            Proc.STORAGE_VOL_GET_PATH: vanished,
            Proc.STORAGE_VOL_GET_INFO: vanished,
        }
    )


@pytest.mark.parametrize("details", [[], ["--details"]], ids=["plain", "details"])
def test_vol_list_shows_a_volume_deleted_meanwhile_as_unknown_as_virsh_does(
    tmp_path: Path, details: list[str]
) -> None:
    """A volume deleted between the listing and the calls that describe it is a row of
    "unknown" in virsh's table, and the command succeeds; virtvol failed the whole
    listing with the error of that one volume."""
    answers = _on_fake_peers(
        tmp_path, _serve_a_volume_deleted_while_listed, "vol-list", POOL, *details
    )
    assert answers["virtvol"][:3] == answers["virsh"][:3]
    assert "unknown" in answers["virsh"][0]


def _serve_a_pool_gone_while_listed(peer: FakePeer) -> None:
    """``peer`` lists pools "default" and "gone"; "gone" (a transient pool) was destroyed
    since, and the calls about it fail as libvirtd fails them."""
    gone = r.StoragePool(name="gone", uuid=bytes(range(16)))

    def about(peer: FakePeer, call: CallReceived) -> None:
        assert isinstance(call.args, r.PoolArgs)
        if call.args.pool.name != "gone":
            answers: dict[int, XdrStruct] = {
                Proc.STORAGE_POOL_GET_INFO: r.PoolGetInfoRet(
                    state=2, capacity=8 << 30, allocation=1 << 30, available=7 << 30
                ),
                Proc.STORAGE_POOL_GET_AUTOSTART: r.AutostartRet(1),
                Proc.STORAGE_POOL_IS_PERSISTENT: r.PersistentRet(1),
                Proc.STORAGE_POOL_IS_ACTIVE: r.ActiveRet(1),
            }
            peer.reply(call.serial, answers[call.procedure.number])
            return
        peer.refuse(
            call.serial,
            storage_error(
                ErrorCode.NO_STORAGE_POOL,
                "Storage pool not found: no storage pool with matching uuid",
            ),
        )

    peer.handlers.update(
        {
            Proc.CONNECT_LIST_ALL_STORAGE_POOLS: lambda peer, call: peer.reply(
                call.serial, r.ListAllPoolsRet(pools=(DEFAULT_POOL, gone), ret=2)
            ),
            Proc.STORAGE_POOL_GET_INFO: about,
            Proc.STORAGE_POOL_GET_AUTOSTART: about,
            Proc.STORAGE_POOL_IS_PERSISTENT: about,
            Proc.STORAGE_POOL_IS_ACTIVE: about,
        }
    )


@pytest.mark.parametrize("details", [[], ["--details"]], ids=["plain", "details"])
def test_pool_list_shows_a_pool_gone_meanwhile_as_virsh_does(
    tmp_path: Path, details: list[str]
) -> None:
    """A pool destroyed between the listing and the calls about it: virsh says it could
    not retrieve its information, shows "no autostart" and "unknown" in its row, and
    succeeds; virtvol failed the whole listing."""
    answers = _on_fake_peers(tmp_path, _serve_a_pool_gone_while_listed, "pool-list", *details)
    assert answers["virtvol"][:3] == answers["virsh"][:3]
    # The same kinds of question about the pools as virsh's: virtvol asks them all at once,
    # so also whether a pool whose info failed is active, which virsh then skips.
    asked = {
        client: {n for n in answer[3] if Proc(n).name.startswith("STORAGE_POOL_")}
        for client, answer in answers.items()
    }
    assert asked["virtvol"] == asked["virsh"]
    assert "unknown" in answers["virsh"][0]


def _serve_names_newer_than_ours(peer: FakePeer) -> None:
    """``peer`` holds pool "default" and its volume, of a type and in a state (9) that
    libvirt 9.0 has no name for."""
    _serve_the_volume(peer)
    peer.handlers.update(
        {
            Proc.STORAGE_POOL_LIST_ALL_VOLUMES: lambda peer, call: peer.reply(
                call.serial, r.PoolListAllVolumesRet(vols=(VOLUME,), ret=1)
            ),
            Proc.STORAGE_VOL_GET_PATH: lambda peer, call: peer.reply(
                call.serial, r.VolGetPathRet("/pool/vol")
            ),
            Proc.STORAGE_VOL_GET_INFO: lambda peer, call: peer.reply(
                call.serial, r.VolGetInfoRet(type=9, capacity=1, allocation=1)
            ),
            Proc.CONNECT_LIST_ALL_STORAGE_POOLS: lambda peer, call: peer.reply(
                call.serial, r.ListAllPoolsRet(pools=(DEFAULT_POOL,), ret=1)
            ),
            Proc.STORAGE_POOL_GET_INFO: lambda peer, call: peer.reply(
                call.serial,
                r.PoolGetInfoRet(state=9, capacity=1, allocation=1, available=1),
            ),
            Proc.STORAGE_POOL_GET_AUTOSTART: lambda peer, call: peer.reply(
                call.serial, r.AutostartRet(0)
            ),
            Proc.STORAGE_POOL_IS_PERSISTENT: lambda peer, call: peer.reply(
                call.serial, r.PersistentRet(1)
            ),
        }
    )


@pytest.mark.parametrize(
    "command",
    [
        ["vol-list", POOL, "--details"],
        ["vol-info", VOLUME.name, "--pool", POOL],
        ["pool-list", "--details"],
        ["pool-info", POOL],
    ],
    ids=["vol-list", "vol-info", "pool-list", "pool-info"],
)
def test_a_type_or_state_newer_than_ours_is_unknown_as_virsh_says(
    tmp_path: Path, command: list[str]
) -> None:
    """A daemon newer than the client may answer a volume type or a pool state the client
    has no name for: virsh prints "unknown"; virtvol failed with a traceback."""
    answers = _on_fake_peers(tmp_path, _serve_names_newer_than_ours, *command)
    assert answers["virtvol"][:3] == answers["virsh"][:3]
    assert answers["virsh"][2] == 0


_VOLUME_GONE = storage_error(
    ErrorCode.NO_STORAGE_VOL, "Storage volume not found: no storage vol with matching name 'vol'"
)
_POOL_GONE = storage_error(
    ErrorCode.NO_STORAGE_POOL, "Storage pool not found: no storage pool with matching uuid"
)
_RUNNING = r.PoolGetInfoRet(state=2, capacity=8 << 30, allocation=1 << 30, available=7 << 30)


def _refusing(error: r.RemoteError) -> Callable[[FakePeer, CallReceived], None]:
    return lambda peer, call: peer.refuse(call.serial, error)


def _answering(ret: XdrStruct) -> Callable[[FakePeer, CallReceived], None]:
    return lambda peer, call: peer.reply(call.serial, ret)


@pytest.mark.parametrize(
    ("answers", "command"),
    [
        # virsh printed the name (and the pool's UUID) before the call that failed.
        (
            {Proc.STORAGE_VOL_GET_INFO: _refusing(_VOLUME_GONE)},
            ["vol-info", VOLUME.name, POOL],
        ),
        (
            {Proc.STORAGE_VOL_GET_INFO_FLAGS: _refusing(_VOLUME_GONE)},
            ["vol-info", VOLUME.name, POOL, "--physical"],
        ),
        ({Proc.STORAGE_POOL_GET_INFO: _refusing(_POOL_GONE)}, ["pool-info", POOL]),
        # What pool-info cannot learn besides is "unknown" or "no autostart", and it succeeds.
        (
            {
                Proc.STORAGE_POOL_GET_INFO: _answering(_RUNNING),
                Proc.STORAGE_POOL_IS_PERSISTENT: _refusing(_POOL_GONE),
                Proc.STORAGE_POOL_GET_AUTOSTART: _answering(r.AutostartRet(1)),
            },
            ["pool-info", POOL],
        ),
        (
            {
                Proc.STORAGE_POOL_GET_INFO: _answering(_RUNNING),
                Proc.STORAGE_POOL_IS_PERSISTENT: _answering(r.PersistentRet(1)),
                Proc.STORAGE_POOL_GET_AUTOSTART: _refusing(_POOL_GONE),
            },
            ["pool-info", POOL],
        ),
        # The daemon's message alone: virsh gives up without a line of its own.
        ({Proc.STORAGE_VOL_GET_PATH: _refusing(_VOLUME_GONE)}, ["vol-path", VOLUME.name, POOL]),
        (
            {Proc.STORAGE_VOL_GET_XML_DESC: _refusing(_VOLUME_GONE)},
            ["vol-dumpxml", VOLUME.name, POOL],
        ),
        ({Proc.STORAGE_POOL_GET_XML_DESC: _refusing(_POOL_GONE)}, ["pool-dumpxml", POOL]),
        (
            {Proc.STORAGE_VOL_GET_XML_DESC: _refusing(_VOLUME_GONE)},
            ["vol-clone", VOLUME.name, "new", POOL],
        ),
        (
            {Proc.STORAGE_VOL_GET_PATH: _refusing(_VOLUME_GONE)},
            ["vol-create-as", POOL, "new", "1M", "--backing-vol", VOLUME.name],
        ),
        # A pool that cannot say it is active is taken for an inactive one.
        (
            {Proc.STORAGE_POOL_IS_ACTIVE: _refusing(_POOL_GONE)},
            ["vol-info", VOLUME.name, POOL],
        ),
        # The pool of a volume: "failed to get parent pool", naming neither.
        (
            {
                Proc.STORAGE_VOL_LOOKUP_BY_KEY: _answering(r.VolRet(VOLUME)),
                Proc.STORAGE_POOL_LOOKUP_BY_VOLUME: _refusing(_POOL_GONE),
            },
            ["vol-pool", VOLUME.key],
        ),
        (
            {Proc.STORAGE_POOL_LOOKUP_BY_VOLUME: _refusing(_POOL_GONE)},
            ["vol-clone", VOLUME.name, "new", POOL],
        ),
    ],
)
def test_a_failure_after_the_lookup_reads_as_virsh_says_it(
    tmp_path: Path,
    answers: dict[int, Callable[[FakePeer, CallReceived], None]],
    command: list[str],
) -> None:
    """A volume or pool gone between its lookup and the next call (another client deleted
    it): the same output, messages and status as virsh's."""

    def serve(peer: FakePeer) -> None:
        _serve_the_volume(peer)
        peer.handlers.update(answers)

    said = _on_fake_peers(tmp_path, serve, *command)
    assert said["virtvol"][:3] == said["virsh"][:3]


def test_each_command_after_the_daemon_went_away_fails_as_virsh_says(tmp_path: Path) -> None:
    """The daemon stops during the first command of a string: virsh goes on, failing to
    reconnect for each command left, each with its blank line, and ends with status 1.
    virtvol connects for each command and so fails the same way, not once for all."""

    def serve(peer: FakePeer) -> None:
        peer.handlers[Proc.STORAGE_POOL_LOOKUP_BY_NAME] = lambda peer, _call: peer.go_away()

    said = _on_fake_peers(tmp_path, serve, "pool-uuid default; pool-list; vol-list default")
    outputs = {}
    for client, (stdout, stderr, status, _calls) in said.items():
        # How the first command's own failure is worded is documented as not yet virsh's.
        reconnecting = stderr[stderr.index("error: Failed to reconnect") :]
        sockets = str(tmp_path / client)
        outputs[client] = (stdout, reconnecting.replace(sockets, "FOLDER"), status)
    assert outputs["virtvol"] == outputs["virsh"]
    assert outputs["virsh"][1].count("error: Failed to reconnect to the hypervisor\n") == 2


def test_a_download_drawing_no_bar_asks_no_volume_info(tmp_path: Path) -> None:
    """The volume's size is the progress bar's length, asked for only when a bar is drawn.
    With none (stderr is not a terminal here) the download makes no call that virsh's does
    not: the round trip and the daemon's look at the volume cost every small
    download a millisecond."""
    with FakePeer(tmp_path) as peer:
        _serve_the_volume(peer)
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(b"x" * 4096, 2)
        proc = virtvol(peer.uri, "vol-download", VOLUME.name, str(tmp_path / "out"), "--pool", POOL)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out").read_bytes() == b"x" * 8192
    assert Proc.STORAGE_VOL_DOWNLOAD in peer.calls
    assert Proc.STORAGE_VOL_GET_INFO not in peer.calls


@pytest.mark.parametrize("mode", ["--sparse", "--no-sparse", None])
def test_upload_and_download(daemon: Daemon, tmp_path: Path, mode: str | None) -> None:
    uri = daemon.tcp_uri
    source = tmp_path / "src.img"
    write_sparse_image(source, 8 * MIB)
    virtvol(uri, "vol-create-as", "default", "img", "8M", "--allocation", "0")
    extra = [mode] if mode else []
    legacy = daemon.kind == "virtvold-legacy"
    if legacy and mode == "--sparse":
        # Sparse required, and this daemon predates sparse streams: a clear refusal.
        refused = virtvol(
            uri, "vol-upload", "--pool", "default", "img", str(source), *extra, check=False
        )
        assert refused.returncode == 1
        assert "unsupported flags (0x1) in function storageVolUpload" in refused.stderr
        return
    up = virtvol(uri, "vol-upload", "--pool", "default", "img", str(source), *extra)
    assert up.stdout == "\n"
    if legacy and mode is None:
        warning, up.stderr = up.stderr.split("\n", 1)
        assert warning.startswith("warning: ")
        assert "unsupported flags (0x1) in function storageVolUpload" in warning
    assert re.fullmatch(
        r"uploaded \S+ \S+ data, \S+ \S+ holes( \(zeros\))?.* in \d+\.\d\d s \(\S+ \S+/s\), "
        r"(sparse|dense|dense \(peer has no sparse streams: fell back\))\n",
        up.stderr,
    ), up.stderr
    assert ("dense" in up.stderr) is (mode == "--no-sparse" or legacy)
    assert ("fell back" in up.stderr) is (legacy and mode is None)
    assert_same_file(source, daemon.pool_dir / "img")
    back = tmp_path / "back.img"
    down = virtvol(uri, "vol-download", "--pool", "default", "img", str(back), *extra)
    assert down.stdout == "\n"
    assert down.stderr.split("\n")[-2].startswith("downloaded ")
    assert down.stderr.startswith("warning: ") is (legacy and mode is None)
    assert_same_file(source, back)
    assert allocated(back) <= MIB
    # Quiet: nothing at all on stderr; a range with size suffixes.
    part = tmp_path / "part.img"
    quiet = virtvol(
        uri,
        "--quiet",
        "vol-download",
        "img",
        str(part),
        "--pool",
        "default",
        "--offset",
        "1M",
        "--length",
        "300KiB",
    )
    # Warnings stay, as virsh keeps its own under --quiet: the fallback is news.
    if legacy:
        assert quiet.stderr.startswith("warning: ")
        assert quiet.stderr.count("\n") == 1
        assert "has no sparse streams" in quiet.stderr
    else:
        assert quiet.stderr == ""
    assert part.read_bytes() == source.read_bytes()[MIB : MIB + 300 * 1024]


def test_connection_failure(tmp_path: Path) -> None:
    proc = virtvol(f"storage+unix:///system?socket={tmp_path}/none", "pool-list", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: failed to connect to the hypervisor\nerror: ")


def test_default_uri_from_environment(daemon: Daemon) -> None:
    env = dict(os.environ, VIRTVOL_DEFAULT_URI=daemon.unix_uri)
    proc = subprocess.run(
        [*_COMMAND, "pool-list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert " default " in proc.stdout
