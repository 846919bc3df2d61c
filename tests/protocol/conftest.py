"""Helpers shared by the protocol core's tests.

Import them with ``from tests.protocol.conftest import ...`` (pytest's importlib
mode registers this module under that name).

``GOLDEN``: the folder of real libvirt 9.0 captures. ``SESSIONS``: their names.

``TsharkFrame`` / ``tshark_frames(name)``: the dissector's decode of a capture,
one record per frame in wire order (both directions).

``read_frames(data)``: every frame of a byte stream, checking that nothing is
left over.

``raw_frame(frame)``: the bytes of a frame as it went on the wire.

``strategy_for(codec)`` / ``struct_strategy(cls)``: hypothesis strategies built
from the compiled XDR fields alone.

``Pair``: a client and a server ``Connection`` wired back to back; ``to_server``
and ``to_client`` deliver bytes and return the events they produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from virtvol.protocol.connection import Connection, Event
from virtvol.protocol.frames import Frame, FrameReader, Payload, encode_head
from virtvol.protocol.stream import Side
from virtvol.protocol.xdr import (
    Array,
    Bool,
    Codec,
    Enum,
    FixedOpaque,
    Hyper,
    Int,
    Opaque,
    Optional,
    String,
    Struct,
    UHyper,
    UInt,
    XdrStruct,
)

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

    def __init__(self, *, gather_stream_items: bool = False) -> None:
        self.client = Connection(Side.CLIENT, gather_stream_items=gather_stream_items)
        self.server = Connection(Side.SERVER, gather_stream_items=gather_stream_items)

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


TEXT = st.text(st.characters(codec="utf-8"), max_size=24)


def strategy_for(codec: Codec) -> st.SearchStrategy[Any]:
    """Values of the Python type a codec carries, built from the codec alone."""
    if isinstance(codec, Int):
        return st.integers(-(2**31), 2**31 - 1)
    if isinstance(codec, UInt):
        return st.integers(0, 2**32 - 1)
    if isinstance(codec, Hyper):
        return st.integers(-(2**63), 2**63 - 1)
    if isinstance(codec, UHyper):
        return st.integers(0, 2**64 - 1)
    if isinstance(codec, Bool):
        return st.booleans()
    if isinstance(codec, Enum):
        return st.sampled_from(list(codec.enum_type))
    if isinstance(codec, String):
        return TEXT
    if isinstance(codec, Opaque):
        return st.binary(max_size=min(codec.maximum, 32))
    if isinstance(codec, FixedOpaque):
        return st.binary(min_size=codec.size, max_size=codec.size)
    if isinstance(codec, Optional):
        return st.none() | strategy_for(codec.inner)
    if isinstance(codec, Array):
        return st.lists(strategy_for(codec.inner), max_size=min(codec.maximum, 3)).map(tuple)
    if isinstance(codec, Struct):
        return struct_strategy(codec.struct_type)
    raise TypeError(f"no strategy for {codec!r}")


def struct_strategy(cls: type[XdrStruct]) -> st.SearchStrategy[XdrStruct]:
    return st.builds(cls, **{name: strategy_for(codec) for name, codec in cls.fields()})
