"""Read a packet capture and put its TCP byte streams back together, by sequence number.

tshark's libvirt dissector reads frames well but counts them badly on large
captures: when its TCP reassembly loses track of a frame boundary it misses the
frames that follow. The interop tests count frames from the byte streams built
here instead, and keep tshark as a second reader of the same capture.

``read_pcap(path)`` yields the TCP segments of a classic pcap file (``tshark -F
pcap``; Ethernet, Linux cooked or raw IP link types, IPv4 and IPv6).
``reassemble(segments)`` returns each direction's bytes, placed by sequence
number: segments may come out of order, retransmitted or overlapping, and the
32-bit sequence numbers may wrap. A byte missing from a stream (the capture
dropped a packet) or a packet cut short by the snapshot length is an error,
never a silently shorter stream.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

_SEQ_SPACE = 1 << 32
_HALF_SEQ_SPACE = 1 << 31

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLAN = 0x8100
_PROTO_TCP = 6

TCP_FIN = 0x01
TCP_SYN = 0x02


class CaptureError(ValueError):
    """The capture cannot be read, or a stream in it has a gap."""


@dataclass(frozen=True)
class Segment:
    """One TCP segment as captured."""

    source: tuple[str, int]
    destination: tuple[str, int]
    seq: int
    flags: int
    payload: bytes


Direction = tuple[tuple[str, int], tuple[str, int]]


def read_pcap(path: Path) -> Iterator[Segment]:
    """The TCP segments of a classic pcap file, in capture order."""
    data = path.read_bytes()
    if len(data) < 24:
        raise CaptureError(f"{path}: too short for a pcap header")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise CaptureError(f"{path}: not a classic pcap file (write it with tshark -F pcap)")
    _, _, _, _, _, linktype = struct.unpack_from(endian + "HHiIII", data, 4)
    record = struct.Struct(endian + "IIII")
    pos = 24
    while pos < len(data):
        if pos + record.size > len(data):
            raise CaptureError(f"{path}: truncated record header at byte {pos}")
        _, _, caplen, length = record.unpack_from(data, pos)
        pos += record.size
        if caplen != length:
            raise CaptureError(f"{path}: a packet of {length} bytes was cut to {caplen}")
        if pos + caplen > len(data):
            raise CaptureError(f"{path}: truncated packet at byte {pos}")
        segment = _decode_packet(data[pos : pos + caplen], linktype & 0xFFFF)
        pos += caplen
        if segment is not None:
            yield segment


def _decode_packet(packet: bytes, linktype: int) -> Segment | None:
    if linktype == LINKTYPE_ETHERNET:
        ethertype, offset = struct.unpack_from(">H", packet, 12)[0], 14
        while ethertype == _ETHERTYPE_VLAN:
            ethertype, offset = struct.unpack_from(">H", packet, offset + 2)[0], offset + 4
    elif linktype == LINKTYPE_LINUX_SLL:
        ethertype, offset = struct.unpack_from(">H", packet, 14)[0], 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        ethertype, offset = struct.unpack_from(">H", packet, 0)[0], 20
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        version = packet[0] >> 4
        ethertype, offset = (_ETHERTYPE_IPV4 if version == 4 else _ETHERTYPE_IPV6), 0
    else:
        raise CaptureError(f"unsupported link type {linktype}")
    if ethertype == _ETHERTYPE_IPV4:
        header_length = (packet[offset] & 0x0F) * 4
        total_length = struct.unpack_from(">H", packet, offset + 2)[0]
        if packet[offset + 9] != _PROTO_TCP:
            return None
        source = str(ipaddress.IPv4Address(packet[offset + 12 : offset + 16]))
        destination = str(ipaddress.IPv4Address(packet[offset + 16 : offset + 20]))
        # Segmentation offload can leave total_length 0 on captured outgoing packets.
        end = offset + total_length if total_length else len(packet)
        tcp = offset + header_length
    elif ethertype == _ETHERTYPE_IPV6:
        payload_length = struct.unpack_from(">H", packet, offset + 4)[0]
        if packet[offset + 6] != _PROTO_TCP:
            return None  # extension headers do not occur on our loopback captures
        source = str(ipaddress.IPv6Address(packet[offset + 8 : offset + 24]))
        destination = str(ipaddress.IPv6Address(packet[offset + 24 : offset + 40]))
        tcp = offset + 40
        end = tcp + payload_length if payload_length else len(packet)
    else:
        return None
    sport, dport, seq = struct.unpack_from(">HHI", packet, tcp)
    data_offset = (packet[tcp + 12] >> 4) * 4
    flags = packet[tcp + 13]
    return Segment(
        (source, sport), (destination, dport), seq, flags, packet[tcp + data_offset : end]
    )


def reassemble(segments: Iterable[Segment]) -> dict[Direction, bytes]:
    """Each direction's byte stream, from the SYN (or the first segment seen) onwards.

    Raises:
        CaptureError: bytes are missing between two captured ones.
    """
    streams: dict[Direction, _Stream] = {}
    for segment in segments:
        key = (segment.source, segment.destination)
        stream = streams.get(key)
        if stream is None:
            stream = streams[key] = _Stream(segment)
        stream.add(segment)
    return {key: stream.joined(key) for key, stream in streams.items()}


class _Stream:
    """The segments of one direction, placed at their offset from the first byte."""

    def __init__(self, first: Segment) -> None:
        # A SYN takes one sequence number; data starts after it.
        self.initial = (first.seq + 1) % _SEQ_SPACE if first.flags & TCP_SYN else first.seq
        self.high = 0  # the furthest offset placed so far, to unwrap sequence numbers
        self.pieces: dict[int, bytes] = {}

    def add(self, segment: Segment) -> None:
        if segment.flags & TCP_SYN:
            if not segment.payload:
                return
            raise CaptureError("data on a SYN segment")
        if not segment.payload:
            return
        relative = (segment.seq - self.initial) % _SEQ_SPACE
        # Of the offsets this 32-bit number may stand for, take the one nearest the
        # stream's front: TCP never has half the sequence space in flight.
        wraps = self.high // _SEQ_SPACE
        offset = wraps * _SEQ_SPACE + relative
        if offset - self.high > _HALF_SEQ_SPACE and offset >= _SEQ_SPACE:
            offset -= _SEQ_SPACE
        elif self.high - offset > _HALF_SEQ_SPACE:
            offset += _SEQ_SPACE
        if offset < 0:
            raise CaptureError("a segment from before the start of the stream")
        self.high = max(self.high, offset + len(segment.payload))
        known = self.pieces.get(offset)
        if known is None or len(known) < len(segment.payload):
            self.pieces[offset] = segment.payload

    def joined(self, key: Direction) -> bytes:
        out = bytearray()
        for offset in sorted(self.pieces):
            piece = self.pieces[offset]
            if offset > len(out):
                raise CaptureError(
                    f"{key[0]} -> {key[1]}: bytes {len(out)} to {offset} were not captured"
                )
            out += piece[len(out) - offset :]
        return bytes(out)
