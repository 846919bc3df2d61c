"""What the stream handlers need from a volume's reader and writer, whatever the pool type.

A directory pool hands out ``transfer.VolumeReader`` / ``VolumeWriter`` (file
descriptors), an rbd pool ``rbdtransfer.RbdReader`` / ``RbdWriter`` (librbd
images); the handlers see only these interfaces and call them from one worker
thread at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Iterable

    from virtvol.sparse.reader import Chunk


@runtime_checkable
class ChunkReader(Protocol):
    """The volume side of a download."""

    @property
    def position(self) -> int: ...

    @property
    def end(self) -> int: ...

    def next_chunk(self, buffer: memoryview | bytearray) -> Chunk: ...

    def read_pieces(self, buffer: memoryview | bytearray) -> list[Chunk]: ...

    def close(self) -> None: ...


@runtime_checkable
class ChunkWriter(Protocol):
    """The volume side of an upload: ``apply`` (or ``write``/``skip``) in stream
    order, then ``keep_tail`` until it returns True (a whole-volume upload copies
    the replaced volume's bytes past the stream's end, a step per call), then
    ``commit`` or ``abort``, then ``release_replaced`` after the acknowledgement."""

    @property
    def position(self) -> int: ...

    def apply(self, items: Iterable[memoryview | bytes | bytearray | int]) -> None: ...

    def write(self, data: memoryview | bytes | bytearray) -> None: ...

    def skip(self, length: int) -> None: ...

    def keep_tail(self) -> bool: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def release_replaced(self) -> None: ...
