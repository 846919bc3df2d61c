"""Decode one direction of a libvirt connection into one line per frame.

    python -m virtvol.protocol.dump FILE    (or - for standard input)

Each line shows the program, procedure name, message type, serial and status
as libvirt names them, the payload size, and for a skip (STREAM_HOLE) frame
the hole's length.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from virtvol.protocol.constants import (
    KEEPALIVE_PROGRAM,
    PROGRAM_NAMES,
    REMOTE_PROGRAM,
    KeepaliveProcedure,
    MessageStatus,
    MessageType,
)
from virtvol.protocol.exceptions import ProtocolError
from virtvol.protocol.frames import Frame, FrameReader
from virtvol.protocol.procedure_names import REMOTE_PROCEDURE_NAMES
from virtvol.protocol.remote import StreamHole

if TYPE_CHECKING:
    from collections.abc import Iterator


def procedure_name(program: int, procedure: int) -> str:
    if program == REMOTE_PROGRAM:
        return REMOTE_PROCEDURE_NAMES.get(procedure, str(procedure))
    if program == KEEPALIVE_PROGRAM:
        try:
            return KeepaliveProcedure(procedure).name
        except ValueError:
            return str(procedure)
    return str(procedure)


def describe(frame: Frame) -> str:
    """One line for a frame."""
    header = frame.header
    program = PROGRAM_NAMES.get(header.program, f"0x{header.program:08x}")
    kind = _name(MessageType, header.type)
    status = _name(MessageStatus, header.status)
    line = (
        f"{program} {procedure_name(header.program, header.procedure)} {kind} "
        f"serial={header.serial} status={status} payload={len(frame.payload)}"
    )
    if header.type == MessageType.STREAM_HOLE:
        try:
            line += f" hole={StreamHole.decode(frame.payload).length}"
        except ProtocolError:
            line += " hole=<undecodable>"
    return line


def _name(enum_type: type[MessageType] | type[MessageStatus], value: int) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return str(value)


def frames(data: bytes) -> Iterator[Frame]:
    reader = FrameReader()
    reader.feed(data)
    yield from reader
    if not reader.at_frame_boundary():
        raise ProtocolError(f"{reader.buffered} bytes of an incomplete frame at the end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m virtvol.protocol.dump", description=__doc__)
    parser.add_argument("file", help="raw bytes of one direction of a connection, or -")
    options = parser.parse_args(argv)
    if options.file == "-":
        data = sys.stdin.buffer.read()
    else:
        with open(options.file, "rb") as source:
            data = source.read()
    try:
        for frame in frames(data):
            print(describe(frame))
    except ProtocolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
