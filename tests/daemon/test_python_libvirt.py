"""python3-libvirt 9.0 streams against virtvold, over awkward data/hole maps."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_system_python
from tests.daemon.conftest import (
    BLOCK,
    allocated,
    assert_same_content,
    leave_a_hole,
    make_sparse_file,
    run_client,
    shared_volume_file,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import Virtvold

KIB, MIB, TIB = 1 << 10, 1 << 20, 1 << 40

MAPS: dict[str, tuple[int, list[tuple[int, bytes]]]] = {
    "hole-first": (3 * MIB, [(2 * MIB, os.urandom(5000))]),
    "data-first": (2 * MIB, [(0, os.urandom(300_000))]),
    "unaligned-tail": (MIB + 1234, [(0, b"a" * 10), (MIB, os.urandom(1234))]),
    "one-byte": (1, [(0, b"\x7f")]),
    "all-hole": (5 * MIB, []),
    "many-extents": (24 * MIB, [(i * 2 * BLOCK, os.urandom(BLOCK)) for i in range(3000)]),
}


@pytest.mark.parametrize("shape", sorted(MAPS))
def test_sparse_round_trip(virtvold: Virtvold, tmp_path: Path, shape: str) -> None:
    size, pieces = MAPS[shape]
    source = make_sparse_file(tmp_path / "source", size, pieces)
    run_client(virtvold.tcp_uri, shape, "sparse-upload", source)
    volume = virtvold.pool_dir / shape
    assert_same_content(source, volume)
    assert allocated(volume) <= allocated(source) + 64 * KIB
    out = tmp_path / "sparse-out"
    run_client(virtvold.tcp_uri, shape, "sparse-download", out)
    assert out.read_bytes() == source.read_bytes()
    assert allocated(out) <= allocated(source) + 64 * KIB
    stop = tmp_path / "recvflags-out"
    counters = run_client(virtvold.unix_uri, shape, "recvflags", stop)
    assert stop.read_bytes() == source.read_bytes()
    if shape != "one-byte" and shape != "data-first":
        assert counters["holes"] >= 1
    plain = tmp_path / "plain-out"
    run_client(virtvold.unix_uri, shape, "download", plain)
    assert plain.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("shape", ["hole-first", "unaligned-tail", "many-extents"])
def test_plain_upload(virtvold: Virtvold, tmp_path: Path, shape: str) -> None:
    size, pieces = MAPS[shape]
    source = make_sparse_file(tmp_path / "source", size, pieces)
    run_client(virtvold.tcp_uri, shape, "upload", source)
    assert (virtvold.pool_dir / shape).read_bytes() == source.read_bytes()


def test_one_tebibyte_volume(virtvold: Virtvold, tmp_path: Path) -> None:
    data = [(0, os.urandom(3000)), (TIB // 2, os.urandom(4096)), (TIB - 700, os.urandom(700))]
    source = make_sparse_file(tmp_path / "huge", TIB, data)
    run_client(virtvold.tcp_uri, "huge", "sparse-upload", source)
    volume = virtvold.pool_dir / "huge"
    assert volume.stat().st_size == TIB
    assert allocated(volume) <= 64 * KIB
    assert_same_content(source, volume)
    out = tmp_path / "huge-out"
    counters = run_client(virtvold.tcp_uri, "huge", "sparse-download", out)
    assert counters["holes"] == 2
    assert allocated(out) <= 64 * KIB
    assert_same_content(source, out)


def test_upload_over_other_bytes_leaves_real_holes(virtvold: Virtvold, tmp_path: Path) -> None:
    size, pieces = MAPS["many-extents"]
    source = make_sparse_file(tmp_path / "source", size, pieces)
    volume = virtvold.pool_dir / "dense"
    run_client(virtvold.tcp_uri, "dense", "sparse-upload", make_sparse_file(tmp_path / "x", 1, []))
    volume.write_bytes(b"\xee" * (size + MIB))
    leave_a_hole(volume, BLOCK, BLOCK)  # not preallocated, where the source has a hole
    # In place (offset 0, explicit length): skips must punch, not keep the old bytes.
    run_client(virtvold.tcp_uri, "dense", "sparse-upload", source, 0, size)
    content = volume.read_bytes()
    assert content[:size] == source.read_bytes()
    assert content[size:] == b"\xee" * MIB
    assert allocated(volume) <= allocated(source) + MIB + 64 * KIB
    # The whole volume: replaced, keeping its size and its bytes past the stream's end.
    volume.write_bytes(b"\xee" * (size + MIB))
    leave_a_hole(volume, BLOCK, BLOCK)
    run_client(virtvold.tcp_uri, "dense", "sparse-upload", source)
    assert volume.read_bytes() == source.read_bytes() + b"\xee" * MIB
    assert allocated(volume) <= allocated(source) + MIB + 64 * KIB


EMPTY_SEND = r"""
import json, sys, libvirt
libvirt.registerErrorHandler(lambda *args: None, None)
conn = libvirt.open(sys.argv[1])
pool = conn.storagePoolLookupByName("default")
vol = pool.storageVolLookupByName(sys.argv[2])
stream = conn.newStream(0)
vol.upload(stream, 0, 0, 0)
answer = []
try:
    for piece in (b"", b"new ", b"", b"content"):
        answer.append(stream.send(piece))
    stream.finish()
    answer.append("finished")
except libvirt.libvirtError as exc:
    answer.append(exc.get_error_message())
answer.append(pool.numOfVolumes())
print(json.dumps(answer))
"""


def test_an_empty_send_in_an_upload_writes_nothing_and_ends_nothing(virtvold: Virtvold) -> None:
    """``stream.send(b"")`` goes out as a data frame without bytes: nothing to write. The
    upload goes on with what follows (libvirtd loses it: its writer takes the empty frame
    for the end), and the connection stays up."""
    (virtvold.pool_dir / "disk").write_bytes(b"old")
    proc = run_system_python(EMPTY_SEND, virtvold.tcp_uri, "disk")
    assert json.loads(proc.stdout) == [0, 4, 0, 7, "finished", 1]
    assert (virtvold.pool_dir / "disk").read_bytes() == b"new content"


EARLY_FINISH = r"""
import json, sys, libvirt
libvirt.registerErrorHandler(lambda *args: None, None)
conn = libvirt.open(sys.argv[1])
pool = conn.storagePoolLookupByName("default")
vol = pool.storageVolLookupByName(sys.argv[2])
answer = []
for flags in (0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM):
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, flags)
    try:
        answer.append(stream.recv(65536)[:4].decode())
        stream.finish()
        answer.append("finished")
    except libvirt.libvirtError as exc:
        answer.append(exc.get_error_message())
answer.append(pool.numOfVolumes())
print(json.dumps(answer))
"""


def test_a_download_finished_before_its_end_ends_there(virtvold: Virtvold) -> None:
    """A program that reads a volume's first bytes (a header) and then finishes the
    stream, as libvirtd lets it: the download ends, and the connection serves on."""
    make_sparse_file(virtvold.pool_dir / "disk", 64 * MIB, [(0, b"head" * 100_000)])
    proc = run_system_python(EARLY_FINISH, virtvold.tcp_uri, "disk")
    assert json.loads(proc.stdout) == ["head", "finished", "head", "finished", 1]
    assert "Traceback" not in virtvold.log_text()


WRITE_TO_DOWNLOAD = r"""
import json, sys, libvirt
libvirt.registerErrorHandler(lambda *args: None, None)
conn = libvirt.open(sys.argv[1])
pool = conn.storagePoolLookupByName("default")
pool.refresh(0)
vol = pool.storageVolLookupByName(sys.argv[2])
answer = []
for hole in (False, True):
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    try:
        if hole:
            stream.sendHole(4096, 0)
        else:
            answer.append(stream.send(b"xyz"))
        got = 0
        while True:
            data = stream.recv(1 << 20)
            if data == -3:
                got += stream.recvHole(0)
                continue
            if not data:
                break
            got += len(data)
        answer.append(got)
        stream.finish()
        answer.append("finished")
    except libvirt.libvirtError as exc:
        answer.append([exc.get_error_code(), exc.get_error_domain(), exc.get_error_message()])
answer.append(pool.numOfVolumes())
print(json.dumps(answer))
"""


@pytest.mark.parametrize("daemon", ["virtvold", "reference_libvirtd"])
def test_data_sent_into_a_download_fails_its_finish_not_the_connection(
    request: pytest.FixtureRequest, daemon: str
) -> None:
    """A program that sends into a download stream (``stream.send``, ``sendHole``): the
    download goes on to its end, its finish fails as libvirtd fails it, and the
    connection serves on (virtvold dropped it, and every other stream on it)."""
    peer = request.getfixturevalue(daemon)
    shared_volume_file(peer.pool_dir, "disk", b"d" * 300_000)
    proc = run_system_python(WRITE_TO_DOWNLOAD, peer.tcp_uri, "disk")
    refused = [39, 38, "stream had unexpected termination"]
    assert json.loads(proc.stdout) == [3, 300_000, refused, 300_000, refused, 1]
