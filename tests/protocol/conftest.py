"""Helpers shared by the protocol core's tests.

Import them with ``from tests.protocol.conftest import ...`` (pytest's importlib
mode registers this module under that name).

``GOLDEN``: the folder of real libvirt 9.0 captures. ``SESSIONS``: their names.

``TsharkFrame`` / ``tshark_frames(name)``: the dissector's decode of a capture,
one record per frame in wire order (both directions).

``read_frames(data)``: every frame of a byte stream, checking that nothing is
left over.

``raw_frame(frame)``: the bytes of a frame as it went on the wire.

``Pair``: a client and a server ``Connection`` wired back to back; ``to_server``
and ``to_client`` deliver bytes and return the events they produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from virtvol.protocol.connection import Connection, Event
from virtvol.protocol.frames import Frame, FrameReader, Payload, encode_head
from virtvol.protocol.stream import Side

GOLDEN = Path(__file__).resolve().parent / "golden"
SESSIONS = ("virsh-session", "python-sparse")


@dataclass(frozen=True)
class TsharkFrame:
    """One line of a ``*.frames.txt`` decode."""

    from_client: bool
    length: int
    program: int
    version: int
    procedure: int
    type: int
    serial: int
    status: int
    hole: int | None
    procedure_name: str
    type_name: str
    status_name: str


def tshark_frames(name: str) -> list[TsharkFrame]:
    """The tshark decode of capture ``name``, in wire order."""
    result = []
    for line in (GOLDEN / f"{name}.frames.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        assert len(cells) == 12, line
        direction, length, program, version, procedure, kind, serial, status, hole = cells[:9]
        assert direction in ("C>S", "S>C"), line
        result.append(
            TsharkFrame(
                from_client=direction == "C>S",
                length=int(length),
                program=int(program, 16),
                version=int(version),
                procedure=int(procedure),
                type=int(kind),
                serial=int(serial),
                status=int(status),
                hole=None if hole == "-" else int(hole),
                procedure_name=cells[9],
                type_name=cells[10],
                status_name=cells[11],
            )
        )
    return result


def golden_bytes(name: str, direction: str) -> bytes:
    """``direction`` is ``client`` (client to server) or ``server``."""
    return (GOLDEN / f"{name}.{direction}.bin").read_bytes()


def read_frames(data: bytes) -> list[Frame]:
    """All frames in ``data``, fed in one piece; fails if a partial frame remains."""
    reader = FrameReader()
    reader.feed(data)
    frames = list(reader)
    assert reader.at_frame_boundary(), f"{reader.buffered} bytes left over"
    return frames


def raw_frame(frame: Frame) -> bytes:
    """The frame re-encoded: the head built from its header, then its payload."""
    return encode_head(frame.header, len(frame.payload)) + bytes(frame.payload)


def joined(parts: tuple[bytes, Payload]) -> bytes:
    """A data frame returned as (head, data) by ``send_data``, in one piece."""
    head, data = parts
    return head + bytes(data)


class Pair:
    """A client and a server connection joined by two in-memory pipes."""

    def __init__(self) -> None:
        self.client = Connection(Side.CLIENT)
        self.server = Connection(Side.SERVER)

    def to_server(self, *chunks: bytes) -> list[Event]:
        for chunk in chunks:
            self.server.receive_data(chunk)
        return self.server.events()

    def to_client(self, *chunks: bytes) -> list[Event]:
        for chunk in chunks:
            self.client.receive_data(chunk)
        return self.client.events()

    def idle(self) -> bool:
        """No call pending and no stream open on either side."""
        return not (
            self.client.pending_calls()
            or self.server.pending_calls()
            or self.client.streams
            or self.server.streams
        )
