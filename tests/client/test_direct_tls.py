"""The command line's blocking engine over TLS against a scripted peer: writes the socket
cannot take at once (retried with the same bytes), a PING read while a frame is half
written, frames decrypted a record at a time, a frame left decrypted in the TLS socket,
small parts joined into one write, and the bytes that arrive each way."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.client.fake_peer import FakePeer
from tests.client.helpers import MIB
from tests.client.test_direct_faults import (
    close,
    data_file,
    fake_volume,
    open_conn,
    ping_while_full,
    rpc_of,
    send_whole_download,
    stop_reading_after_reply,
)
from tests.tlsca import Pki
from virtvol.client import direct
from virtvol.client.direct import RECEIVE_BUFFER, run_blocking
from virtvol.protocol.connection import (
    PongReceived,
    StreamDataReceived,
    StreamHoleReceived,
)
from virtvol.protocol.constants import FRAME_OVERHEAD
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

    from virtvol.protocol.connection import CallReceived


# The most plaintext one TLS record carries.
TLS_RECORD = 16 << 10


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _recording(peer: FakePeer) -> dict[int, bytes]:
    """The upload's data as it arrives, by the index of its event (payloads are views)."""
    data: dict[int, bytes] = {}

    def keep(peer: FakePeer, event: StreamDataReceived) -> None:
        data[len(peer.events) - 1] = bytes(event.data)

    peer.on_data = keep
    return data


def _uploaded(peer: FakePeer, data: dict[int, bytes]) -> bytes:
    """What the peer received, its skips as zeros."""
    parts = []
    for index, event in enumerate(peer.events):
        if isinstance(event, StreamDataReceived):
            parts.append(data[index])
        elif isinstance(event, StreamHoleReceived):
            parts.append(bytes(event.length))
    return b"".join(parts)


def test_a_ping_while_a_tls_write_waits_is_answered_after_the_frame(
    tmp_path: Path, pki: Pki
) -> None:
    source = data_file(tmp_path / "src.img", 16 * MIB + 12345)
    with FakePeer(tmp_path, tls=pki) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = ping_while_full
        data = _recording(peer)
        conn = open_conn(peer.uri)
        result = run_blocking(fake_volume(conn).upload_file(source, sparse=False))
        assert result.data_bytes == source.stat().st_size
        assert rpc_of(conn).pings_received == 1
        assert peer.protocol_error is None  # the PONG did not land inside a data frame
        assert sum(isinstance(e, PongReceived) for e in peer.events) == 1
        close(conn)
    assert _uploaded(peer, data) == source.read_bytes()


def test_a_fragmented_upload_over_tls_arrives_as_it_was(tmp_path: Path, pki: Pki) -> None:
    """4 KiB of data every 64 KiB: a frame's head, its data and a skip are small parts,
    joined into writes; the peer stops reading for a while, so writes wait."""
    source = tmp_path / "frag.img"
    with source.open("wb") as f:
        for index in range(256):
            f.seek(index * 65536)
            f.write(bytes([index % 255 + 1]) * 4096)
        f.truncate(256 * 65536)

    def slow_reader(peer: FakePeer, event: CallReceived) -> None:
        stop_reading_after_reply(peer, event)
        peer.later(0.3, peer.resume_reading)

    with FakePeer(tmp_path, tls=pki) as peer:
        peer.handlers[Proc.STORAGE_VOL_UPLOAD] = slow_reader
        data = _recording(peer)
        conn = open_conn(peer.uri)
        result = run_blocking(fake_volume(conn).upload_file(source, sparse=True))
        close(conn)
    assert result.sparse
    assert result.hole_bytes > 0
    assert peer.protocol_error is None
    assert _uploaded(peer, data) == source.read_bytes()


@pytest.mark.parametrize(("chunk", "frames"), [(256 * 1024, 40), (4096, 2000)])
def test_a_download_over_tls_arrives_whole(
    tmp_path: Path, pki: Pki, chunk: int, frames: int
) -> None:
    """Frames larger than a TLS record and many frames to a record, all sent at once with
    the reply: every record the socket holds is read and every frame handed on."""
    content = bytes(range(1, 256)) * (chunk // 255 + 1)
    content = content[:chunk]
    with FakePeer(tmp_path, tls=pki) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(content, frames)
        conn = open_conn(peer.uri)
        target = tmp_path / "down.img"
        result = run_blocking(fake_volume(conn).download_file(target))
        close(conn)
    assert result.data_bytes == chunk * frames
    assert target.read_bytes() == content * frames


@pytest.mark.timeout(20)
def test_a_frame_left_decrypted_in_the_tls_socket_is_read_without_a_wake_up(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply, a data frame larger than the core's buffer for small frames, and the
    end, sent at once: the last TLS record holds the data frame's tail and the whole end
    frame. The core asks for the large frame's remaining bytes only, so the end stays
    decrypted inside the TLS socket, where no poll of the raw socket sees it, and the
    peer sends nothing more until the client speaks. With one record taken per read
    (a tiny read round) nothing drains it by chance: the engine must look for such bytes
    (after a read, and before it polls), or the download hangs; either look finds them
    here. No keepalive: its PINGs' answers would wake the poll and hide the hang."""
    chunk = bytes(range(1, 256)) * (RECEIVE_BUFFER // 255 + 200)  # one large frame
    # Behind the reply, the data frame ends inside a record, with room there for the end.
    tail = (FRAME_OVERHEAD + FRAME_OVERHEAD + len(chunk)) % TLS_RECORD
    assert 0 < tail <= TLS_RECORD - FRAME_OVERHEAD
    monkeypatch.setattr(direct, "TLS_READ_ROUND", 1)
    with FakePeer(tmp_path, tls=pki) as peer:
        peer.handlers[Proc.STORAGE_VOL_DOWNLOAD] = send_whole_download(chunk, 1)
        conn = open_conn(peer.uri, keepalive=None)
        rpc = rpc_of(conn)
        waiting = rpc._waiting
        seen: list[int] = []  # the decrypted bytes the engine found waiting, each look

        def watched() -> int:
            count = waiting()
            seen.append(count)
            return count

        monkeypatch.setattr(rpc, "_waiting", watched)
        target = tmp_path / "down.img"
        result = run_blocking(fake_volume(conn).download_file(target))
        close(conn)
    assert FRAME_OVERHEAD in seen  # the end frame did wait in the TLS socket
    assert result.data_bytes == len(chunk)
    assert target.read_bytes() == chunk
