"""The capture reader and TCP reassembly the interop tests count frames with.

Synthetic captures: the bytes of two libvirt streams cut into segments and
written as a tshark capture would hold them, then shuffled, retransmitted,
overlapped and wrapped around the 32-bit sequence space.
"""

from __future__ import annotations

import random
import struct
from typing import TYPE_CHECKING

import pytest

from tests.interop.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    TCP_SYN,
    CaptureError,
    Segment,
    read_pcap,
    reassemble,
)
from tests.interop.recorder import Conversation, summarize
from virtvol.protocol.connection import Connection, Side
from virtvol.protocol.procedures import Proc
from virtvol.protocol.remote import StorageVol, VolTransferArgs

if TYPE_CHECKING:
    from pathlib import Path

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 16509)
CLIENT6 = ("::1", 40001)
SERVER6 = ("::1", 16509)


def _tcp(segment: Segment) -> bytes:
    header = struct.pack(
        ">HHIIBBHHH",
        segment.source[1],
        segment.destination[1],
        segment.seq,
        0,
        5 << 4,
        segment.flags,
        65535,
        0,
        0,
    )
    return header + segment.payload


def _ip(segment: Segment) -> tuple[int, bytes]:
    tcp = _tcp(segment)
    if ":" in segment.source[0]:
        header = struct.pack(">IHBB", 6 << 28, len(tcp), 6, 64)
        addresses = _v6(segment.source[0]) + _v6(segment.destination[0])
        return 0x86DD, header + addresses + tcp
    header = struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0)
    addresses = bytes(map(int, segment.source[0].split("."))) + bytes(
        map(int, segment.destination[0].split("."))
    )
    return 0x0800, header + addresses + tcp


def _v6(address: str) -> bytes:
    assert address == "::1"
    return bytes(15) + b"\x01"


def write_pcap(path: Path, segments: list[Segment], *, linktype: int = LINKTYPE_ETHERNET) -> None:
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
    for number, segment in enumerate(segments):
        ethertype, packet = _ip(segment)
        if linktype == LINKTYPE_ETHERNET:
            frame = bytes(12) + struct.pack(">H", ethertype) + packet
        else:
            frame = struct.pack(">HHH8sH", 0, 772, 6, bytes(8), ethertype) + packet
        out += struct.pack("<IIII", number, 0, len(frame), len(frame)) + frame
    path.write_bytes(bytes(out))


def _cut(
    source: tuple[str, int],
    destination: tuple[str, int],
    initial: int,
    data: bytes,
    rnd: random.Random,
    *,
    largest: int = 3000,
) -> list[Segment]:
    """A SYN, then ``data`` in segments of random sizes up to ``largest``."""
    segments = [Segment(source, destination, initial, TCP_SYN, b"")]
    offset = 0
    while offset < len(data):
        size = rnd.randint(1, largest)
        seq = (initial + 1 + offset) % (1 << 32)
        segments.append(Segment(source, destination, seq, 0x18, data[offset : offset + size]))
        offset += size
    return segments


def _upload_bytes() -> tuple[bytes, bytes, int]:
    """Client and server bytes of a sparse upload, and how many skips the client sent."""
    client, server = Connection(Side.CLIENT), Connection(Side.SERVER)
    vol = StorageVol(pool="default", name="disk.img", key="/srv/disk.img")
    serial, call = client.call(Proc.STORAGE_VOL_UPLOAD, VolTransferArgs(vol, 0, 0, 1))
    server.receive_data(call)
    server.events()
    received = server.reply(serial)
    client.receive_data(received)
    client.events()
    sent = bytearray(call)
    skips = 0
    for index in range(40):
        if index % 3 == 0:
            sent += client.send_hole(serial, 1 << 20)
            skips += 1
        else:
            head, data = client.send_data(serial, bytes([index]) * (700 + index))
            sent += head + data
    sent += client.send_finish(serial)
    server.receive_data(bytes(sent[len(call) :]))
    server.events()
    received += server.send_finish_ack(serial)
    return bytes(sent), received, skips


def _shuffled(segments: list[Segment], rnd: random.Random) -> list[Segment]:
    """Out of order, with retransmissions and a segment overlapping its neighbours."""
    syn, data = segments[0], segments[1:]
    extra = rnd.sample(data, k=len(data) // 4)
    first, second = data[3], data[4]
    overlap = Segment(
        first.source,
        first.destination,
        (first.seq + len(first.payload) // 2) % (1 << 32),
        first.flags,
        first.payload[len(first.payload) // 2 :] + second.payload,
    )
    mixed = data + extra + [overlap]
    rnd.shuffle(mixed)
    return [syn, *mixed]


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL])
@pytest.mark.parametrize("initial", [1000, (1 << 32) - 5000])
def test_streams_come_back_whole_from_a_disordered_capture(
    tmp_path: Path, linktype: int, initial: int
) -> None:
    rnd = random.Random(initial + linktype)
    to_server, to_client, skips = _upload_bytes()
    segments = _shuffled(_cut(CLIENT, SERVER, initial, to_server, rnd), rnd)
    segments += _shuffled(
        _cut(SERVER, CLIENT, initial ^ 0x5A5A5A5A, to_client, rnd, largest=8), rnd
    )
    segments += _cut(CLIENT6, SERVER6, 7, b"over IPv6", rnd)
    capture = tmp_path / "capture.pcap"
    write_pcap(capture, segments, linktype=linktype)

    streams = reassemble(read_pcap(capture))

    assert streams[(CLIENT, SERVER)] == to_server
    assert streams[(SERVER, CLIENT)] == to_client
    assert streams[(CLIENT6, SERVER6)] == b"over IPv6"
    wire = summarize(
        [Conversation(bytearray(streams[(CLIENT, SERVER)]), bytearray(streams[(SERVER, CLIENT)]))]
    )
    assert wire.skips_from_client == skips == 14
    assert wire.hole_bytes == skips << 20


def test_a_stream_that_wraps_the_sequence_space_keeps_its_order(tmp_path: Path) -> None:
    rnd = random.Random(3)
    data = bytes(rnd.randrange(256) for _ in range(50_000))
    segments = _cut(CLIENT, SERVER, (1 << 32) - 20_000, data, rnd)
    capture = tmp_path / "wrap.pcap"
    write_pcap(capture, segments[:1] + segments[1:][::-1])
    assert reassemble(read_pcap(capture))[(CLIENT, SERVER)] == data


def test_a_missing_segment_is_an_error(tmp_path: Path) -> None:
    rnd = random.Random(4)
    segments = _cut(CLIENT, SERVER, 1, bytes(20_000), rnd)
    del segments[3]
    capture = tmp_path / "gap.pcap"
    write_pcap(capture, segments)
    with pytest.raises(CaptureError, match="were not captured"):
        reassemble(read_pcap(capture))


def test_a_truncated_packet_is_an_error(tmp_path: Path) -> None:
    capture = tmp_path / "short.pcap"
    write_pcap(capture, _cut(CLIENT, SERVER, 1, b"x" * 100, random.Random(5)))
    data = bytearray(capture.read_bytes())
    # Claim the first packet was longer on the wire than what was kept.
    struct.pack_into("<I", data, 24 + 12, struct.unpack_from("<I", data, 24 + 8)[0] + 10)
    capture.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match="was cut to"):
        list(read_pcap(capture))


def test_pcapng_is_refused_with_a_hint(tmp_path: Path) -> None:
    capture = tmp_path / "next.pcapng"
    capture.write_bytes(b"\x0a\x0d\x0d\x0a" + bytes(40))
    with pytest.raises(CaptureError, match="tshark -F pcap"):
        list(read_pcap(capture))
