"""The connection as the stream handlers see it, without a socket, for their tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from virtvol.protocol.connection import Connection, Side

if TYPE_CHECKING:
    from collections.abc import Sequence

    from virtvol.protocol.frames import Payload


@dataclass
class FakeSink:
    """A ``FrameSink`` that records what it is asked to send and who paused its reading;
    its transport always has room."""

    rpc: Connection = field(default_factory=lambda: Connection(Side.SERVER))
    sent: list[bytes] = field(default_factory=list)
    paused_by: set[object] = field(default_factory=set)

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def send_parts(self, parts: Sequence[Payload]) -> None:
        self.sent.append(b"".join(parts))

    def write_buffer_empty(self) -> bool:
        return True

    async def drained(self) -> None:
        return None

    def pause_reading(self, owner: object) -> None:
        self.paused_by.add(owner)

    def resume_reading(self, owner: object) -> None:
        self.paused_by.discard(owner)
