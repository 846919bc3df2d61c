"""A ``vol-download`` ended by a signal: Ctrl-C's SIGINT, and those ``timeout`` and service
managers send (SIGTERM) or a closed terminal or a dropped ssh session (SIGHUP). The file
named stays as it was and the hidden temporary goes, whichever it is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest

from tests.client.fake_peer import POOL, VOLUME, FakePeer
from tests.client.helpers import leftovers
from tests.client.test_cli_spellings import _COMMAND
from virtvol.protocol import remote as r
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

    from virtvol.protocol.connection import CallReceived

CHUNK = bytes(range(1, 256)) * 16
# The command with the waits it keeps when nothing interrupts it (an abort's confirmation,
# the goodbye) an hour long: only the short waits of an interruption end it in time.
_LONG_WAITS = (
    "import virtvol.client.connection as connection, virtvol.client.direct_transfer as d,"
    " virtvol.client.streams as streams;"
    " connection._GOODBYE_TIMEOUT = d.ABORT_WAIT = streams.ABORT_WAIT = 3600.0;"
)
_WAITING_LONG = [
    sys.executable,
    "-c",
    _LONG_WAITS + " from virtvol.client.cli import main; raise SystemExit(main())",
]


def serve_a_download_that_stalls(peer: FakePeer, sent: threading.Event) -> None:
    """``peer`` holds pool "default" and its volume; a download of it gets its opening
    reply and one frame of data, then nothing: it runs until it is ended."""

    def download(peer: FakePeer, call: CallReceived) -> None:
        with peer.core_lock:
            frame = b"".join(peer.core.send_data(call.serial, CHUNK))
            peer.send(peer.core.reply(call.serial) + frame)
        sent.set()

    peer.handlers.update(
        {
            Proc.STORAGE_POOL_LOOKUP_BY_NAME: lambda peer, call: peer.reply(
                call.serial, r.PoolRet(r.StoragePool(name=POOL, uuid=bytes(16)))
            ),
            Proc.STORAGE_POOL_IS_ACTIVE: lambda peer, call: peer.reply(call.serial, r.ActiveRet(1)),
            Proc.STORAGE_VOL_LOOKUP_BY_NAME: lambda peer, call: peer.reply(
                call.serial, r.VolRet(VOLUME)
            ),
            Proc.STORAGE_VOL_DOWNLOAD: download,
        }
    )


def _hangup_by_default() -> None:
    # As from a terminal: the tests may run under nohup, whose ignored SIGHUP the command
    # keeps ignoring, as it should (``cli._catch_ending_signals``).
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-a-file"])
def test_a_vol_download_ended_by_a_signal_leaves_no_temporary(
    tmp_path: Path, signum: signal.Signals, existing: bool
) -> None:
    """The signal comes while the stream runs. SIGTERM and SIGHUP left the download's
    temporary behind, hidden, as large as what had arrived (a volume's worth after a long
    one); it goes now as for Ctrl-C, and the command ends with the shell's status for the
    signal."""
    work = tmp_path / "work"
    work.mkdir()
    target = work / "copy.img"
    if existing:
        target.write_bytes(b"old")
    sent = threading.Event()
    with FakePeer(tmp_path) as peer:
        serve_a_download_that_stalls(peer, sent)
        argv = [*_COMMAND, "-c", peer.uri, "vol-download", VOLUME.name, str(target)]
        with subprocess.Popen(
            [*argv, "--pool", POOL],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, LC_ALL="C"),
            preexec_fn=_hangup_by_default,
        ) as process:
            try:
                assert sent.wait(30), "the download never opened"
                # Made before the stream is opened.
                assert len(leftovers(work, target.name)) == 1
                process.send_signal(signum)
                _, err = process.communicate(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
    assert os.listdir(work) == (["copy.img"] if existing else [])
    assert (err, process.returncode) == (b"", 128 + signum)
    if existing:
        assert target.read_bytes() == b"old"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_vol_download_ended_by_a_signal_does_not_wait_long_for_a_silent_daemon(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The daemon stopped answering, so the user ends the command; it aborted the stream
    and waited 30 s for a confirmation that never came, silent (a second SIGTERM is
    ignored while the command undoes its work). It now waits a second at most."""
    work = tmp_path / "work"
    work.mkdir()
    target = work / "copy.img"
    sent = threading.Event()
    with FakePeer(tmp_path) as peer:
        serve_a_download_that_stalls(peer, sent)
        peer.on_stream_end = lambda peer, event: None  # the abort is never confirmed
        argv = [*_WAITING_LONG, "-c", peer.uri, "vol-download", VOLUME.name, str(target)]
        with subprocess.Popen(
            [*argv, "--pool", POOL],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, LC_ALL="C"),
        ) as process:
            try:
                assert sent.wait(30), "the download never opened"
                process.send_signal(signum)
                _, err = process.communicate(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
    assert (err, process.returncode) == (b"", 128 + signum)
    assert os.listdir(work) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_command_ended_by_a_signal_does_not_wait_long_for_a_silent_daemons_goodbye(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Any command, not only a transfer: the daemon answers neither the call nor the
    goodbye, and the command waited 5 s for the goodbye's answer, silent, before it
    exited; virsh exits at once. It now waits a second at most."""
    asked = threading.Event()

    def never_answered(peer: FakePeer, call: CallReceived) -> None:
        asked.set()

    with FakePeer(tmp_path) as peer:
        serve_a_download_that_stalls(peer, threading.Event())
        for procedure in (
            Proc.STORAGE_VOL_GET_INFO,
            Proc.CONNECT_UNREGISTER_CLOSE_CALLBACK,
            Proc.CONNECT_CLOSE,
        ):
            peer.handlers[procedure] = never_answered
        with subprocess.Popen(
            [*_WAITING_LONG, "-c", peer.uri, "vol-info", VOLUME.name, "--pool", POOL],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, LC_ALL="C"),
        ) as process:
            try:
                assert asked.wait(30), "the call never came"
                process.send_signal(signum)
                _, err = process.communicate(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
    assert (err, process.returncode) == (b"", 128 + signum)
