"""The old/new interop matrix of docs/interop.md, asserted cell by cell from the wire."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_virsh, start_reference_libvirtd
from tests.interop.pcap import read_pcap, reassemble
from tests.interop.peers import (
    POOL,
    ClientUnderTest,
    DaemonUnderTest,
    libvirtd_under_test,
    traversable_tempdir,
    virtvold,
)
from tests.interop.recorder import Conversation, Endpoint, Recorder, WireSummary, summarize

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.interop

DOC = Path(__file__).resolve().parents[2] / "docs" / "interop.md"
MIB = 1 << 20
IMAGE_SIZE = 4 * MIB + 1234


@dataclass(frozen=True)
class Cell:
    client: str
    daemon: str
    sparse_asked: bool
    direction: str
    outcome: str
    transport: str

    @property
    def id(self) -> str:
        asked = "sparse" if self.sparse_asked else "nosparse"
        return f"{self.client}-{self.daemon}-{asked}-{self.direction}-{self.transport}"


def matrix_from_doc() -> list[Cell]:
    """The cells of the table under the ``matrix`` marker in docs/interop.md."""
    text = DOC.read_text()
    table = text.split("<!-- matrix:", 1)[1].split("\n\n", 1)[0]
    cells = []
    for line in table.splitlines()[3:]:
        client, daemon, asked, upload, download = (
            part.strip() for part in line.strip().strip("|").split("|")
        )
        for (direction, outcome), transport in itertools.product(
            (("upload", upload), ("download", download)), ("tcp", "unix")
        ):
            cells.append(Cell(client, daemon, asked == "yes", direction, outcome, transport))
    return cells


CELLS = matrix_from_doc()


def test_the_matrix_covers_every_pair() -> None:
    pairs = {(cell.client, cell.daemon, cell.sparse_asked) for cell in CELLS}
    clients = {"virtvol", "virtvol-legacy", "virsh", "python3-libvirt"}
    daemons = {"virtvold", "virtvold-legacy", "libvirtd"}
    assert pairs == set(itertools.product(clients, daemons, (True, False)))
    assert len(CELLS) == 4 * 3 * 2 * 2 * 2


def write_source_image(path: Path) -> None:
    """Leading hole, 300000 bytes of data at 1 MiB, 5000 bytes at 3 MiB, trailing hole."""
    with path.open("wb") as image:
        image.seek(MIB)
        image.write(os.urandom(300000))
        image.seek(3 * MIB)
        image.write(os.urandom(5000))
        image.truncate(IMAGE_SIZE)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@pytest.fixture(scope="module")
def daemons() -> Iterator[dict[str, DaemonUnderTest]]:
    base = traversable_tempdir("virtvol-matrix-ref-")
    reference = start_reference_libvirtd(base / "state")
    try:
        with virtvold(legacy=False) as current, virtvold(legacy=True) as legacy:
            yield {
                "virtvold": current,
                "virtvold-legacy": legacy,
                "libvirtd": libvirtd_under_test(reference),
            }
    finally:
        reference.peer.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def source_image() -> Iterator[Path]:
    workdir = traversable_tempdir("virtvol-matrix-src-")
    image = workdir / "source.img"
    write_source_image(image)
    yield image
    shutil.rmtree(workdir, ignore_errors=True)


_names = itertools.count()


def _client_uri(transport: str, recorder: Recorder, socket_path: Path) -> str:
    if transport == "tcp":
        return f"storage+tcp://127.0.0.1:{recorder.port}/session"
    return f"storage+unix:///session?socket={socket_path}"


def _place_volume(daemon: DaemonUnderTest, name: str, source: Path | None) -> Path:
    """A volume holding ``source`` (or an empty sparse one), known to the daemon."""
    target = daemon.pool_dir / name
    if source is None:
        run_virsh(
            daemon.direct_uri, "vol-create-as", POOL, name, str(IMAGE_SIZE), "--allocation", "0"
        )
    else:
        subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
        target.chmod(0o644)
        run_virsh(daemon.direct_uri, "pool-refresh", POOL)
    return target


def _expected_calls(cell: Cell) -> list[tuple[int, bool]]:
    return {
        "sparse": [(1, True)],
        "fallback": [(1, False), (0, True)],
        "refused": [(1, False)],
        "dense": [(0, True)],
        "dense-zero-detect": [(0, True)],
    }[cell.outcome]


def _check_wire(cell: Cell, wire: WireSummary) -> None:
    function = "storageVolUpload" if cell.direction == "upload" else "storageVolDownload"
    assert [(call.flags, call.accepted) for call in wire.transfer_calls] == _expected_calls(cell)
    for call in wire.transfer_calls:
        if not call.accepted:
            assert call.error_message == f"unsupported flags (0x1) in function {function}"
    if cell.outcome == "sparse":
        senders_skips = (
            wire.skips_from_client if cell.direction == "upload" else wire.skips_from_server
        )
        other_skips = (
            wire.skips_from_server if cell.direction == "upload" else wire.skips_from_client
        )
        assert senders_skips > 0
        assert other_skips == 0
    else:
        assert wire.skips_from_client == 0
        assert wire.skips_from_server == 0


@pytest.mark.parametrize("cell", CELLS, ids=[cell.id for cell in CELLS])
def test_matrix_cell(
    cell: Cell, daemons: dict[str, DaemonUnderTest], source_image: Path, tmp_path: Path
) -> None:
    daemon = daemons[cell.daemon]
    name = f"m{next(_names)}-{cell.direction}.img"
    relay_socket = tmp_path / "relay-sock"
    listen = Endpoint(port=0) if cell.transport == "tcp" else Endpoint(path=relay_socket)
    upstream = daemon.tcp if cell.transport == "tcp" else daemon.unix
    volume = _place_volume(daemon, name, None if cell.direction == "upload" else source_image)
    before = volume.read_bytes()
    output = tmp_path / "downloaded.img"
    local = source_image if cell.direction == "upload" else output
    with Recorder(upstream, listen) as recorder:
        uri = _client_uri(cell.transport, recorder, relay_socket)
        result = ClientUnderTest(cell.client).run(
            uri, cell.direction, name, local, sparse_asked=cell.sparse_asked
        )
    wire = summarize(recorder.conversations)
    try:
        _check_wire(cell, wire)
        destination = volume if cell.direction == "upload" else output
        if cell.outcome == "refused":
            assert result.returncode == 1, result.stderr
            function = "storageVolUpload" if cell.direction == "upload" else "storageVolDownload"
            assert f"error: unsupported flags (0x1) in function {function}" in result.stderr
            assert volume.read_bytes() == before
            assert not output.exists()
            return
        assert result.returncode == 0, result.stdout + result.stderr
        assert destination.read_bytes() == source_image.read_bytes()
        if cell.outcome == "dense":
            assert allocated(destination) >= 4 * MIB
        else:
            assert allocated(destination) < MIB
    finally:
        volume.unlink(missing_ok=True)


def test_the_capture_holds_the_same_skip_frames(
    daemons: dict[str, DaemonUnderTest], source_image: Path, tmp_path: Path
) -> None:
    """What went over the loopback, captured by tshark, holds the skip frames the relay
    counted: counted from our own TCP reassembly of the capture (by sequence number),
    and read by libvirt's own Wireshark dissector, which must decode them as
    STREAM_HOLE frames (it may miss some on a large capture, never invent one)."""
    daemon = daemons["virtvold"]
    port = daemon.tcp.port
    assert port is not None
    capture = tmp_path / "capture.pcap"
    tshark = subprocess.Popen(
        ["tshark", "-q", "-i", "lo", "-f", f"tcp port {port}", "-F", "pcap", "-w", str(capture)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_capture(tshark)
        summaries = []
        for direction in ("upload", "download"):
            name = f"tshark-{direction}.img"
            volume = _place_volume(daemon, name, None if direction == "upload" else source_image)
            local = source_image if direction == "upload" else tmp_path / "out.img"
            with Recorder(daemon.tcp, Endpoint(port=0)) as recorder:
                uri = f"storage+tcp://127.0.0.1:{recorder.port}/session"
                result = ClientUnderTest("virtvol").run(
                    uri, direction, name, local, sparse_asked=True
                )
            assert result.returncode == 0, result.stderr
            summaries.append(summarize(recorder.conversations))
            volume.unlink()
        time.sleep(1.0)  # let tshark write the last packets
    finally:
        tshark.terminate()
        tshark.wait(20)
        assert tshark.stderr is not None
        tshark.stderr.close()

    captured = summarize(_conversations(capture, port))
    assert captured.skips_from_client == summaries[0].skips_from_client > 0
    assert captured.skips_from_server == summaries[1].skips_from_server > 0
    assert captured.hole_bytes == summaries[0].hole_bytes + summaries[1].hole_bytes

    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(capture),
            "-d",
            f"tcp.port=={port},libvirt",
            "-Y",
            "libvirt.type == 6",
            "-T",
            "fields",
            "-e",
            "tcp.srcport",
            "-e",
            "libvirt.type",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    packets = [line.split("\t") for line in fields if line.strip()]
    # One TCP segment can carry several frames: tshark lists each frame's type.
    to_daemon = sum(types.split(",").count("6") for src, types in packets if src != str(port))
    from_daemon = sum(types.split(",").count("6") for src, types in packets if src == str(port))
    assert 0 < to_daemon <= captured.skips_from_client
    assert 0 < from_daemon <= captured.skips_from_server


def _conversations(capture: Path, port: int) -> list[Conversation]:
    """Every connection to ``port`` in the capture, each direction reassembled."""
    streams = reassemble(read_pcap(capture))
    return [
        Conversation(bytearray(data), bytearray(streams.get((server, client), b"")))
        for (client, server), data in sorted(streams.items())
        if server[1] == port
    ]


def _wait_for_capture(tshark: subprocess.Popen[str]) -> None:
    assert tshark.stderr is not None
    deadline = time.monotonic() + 30
    seen = ""
    while time.monotonic() < deadline:
        line = tshark.stderr.readline()
        seen += line
        if "Capturing on" in line:
            return
        if tshark.poll() is not None:
            break
    raise RuntimeError(f"tshark did not start capturing: {seen}")
