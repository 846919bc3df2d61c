"""The storage model of the in-memory daemon (``virtvol.client.testing``): pools, and
volumes of bytes with holes."""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass, field

__all__ = ["MemoryPool", "MemoryVolume"]


@dataclass(eq=False)
class MemoryVolume:
    """A volume: its bytes, and which of them are allocated (the rest are holes).

    Attributes:
        name: the volume's name in its pool.
        content: the bytes (``capacity`` of them; holes read as zeros).
        allocated: one byte per content byte, 1 where data was written, 0 in a hole.
    """

    name: str
    content: bytearray
    allocated: bytearray

    @classmethod
    def filled(cls, name: str, data: bytes) -> MemoryVolume:
        """A volume holding ``data``, every byte allocated."""
        return cls(name, bytearray(data), bytearray(b"\x01") * len(data))

    @classmethod
    def empty(cls, name: str, capacity: int) -> MemoryVolume:
        """A volume of ``capacity`` bytes that is one hole."""
        return cls(name, bytearray(capacity), bytearray(capacity))

    @property
    def capacity(self) -> int:
        """Its size in bytes."""
        return len(self.content)

    @property
    def allocation(self) -> int:
        """Bytes not in holes."""
        return self.allocated.count(1)

    def extents(self, start: int, end: int) -> list[tuple[bool, int, int]]:
        """``(is_data, start, end)`` runs covering ``start..end``."""
        runs = []
        for match in re.finditer(rb"\x01+|\x00+", self.allocated[start:end]):
            runs.append((match.group()[0] == 1, start + match.start(), start + match.end()))
        return runs

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write data at ``offset``, growing the volume as a file grows."""
        self._grow(offset + len(data))
        self.content[offset : offset + len(data)] = data
        self.allocated[offset : offset + len(data)] = b"\x01" * len(data)

    def punch(self, offset: int, length: int) -> None:
        """Make ``offset..offset+length`` a hole."""
        self._grow(offset + length)
        self.content[offset : offset + length] = bytes(length)
        self.allocated[offset : offset + length] = bytes(length)

    def resize(self, capacity: int) -> None:
        """Change the size: new bytes are a hole, bytes past the new end are gone."""
        del self.content[capacity:]
        del self.allocated[capacity:]
        self._grow(capacity)

    def _grow(self, end: int) -> None:
        if end > len(self.content):
            self.content.extend(bytes(end - len(self.content)))
            self.allocated.extend(bytes(end - len(self.allocated)))


@dataclass(eq=False, kw_only=True)
class MemoryPool:
    """A pool and its volumes.

    Attributes:
        name: the pool's name.
        uuid: its UUID (derived from the name, so that tests can predict it).
        active: whether it runs (volumes of an inactive pool cannot be reached).
        autostart: whether it would start with the daemon.
        volumes: its volumes by name.
    """

    name: str
    uuid: uuidlib.UUID
    active: bool = True
    autostart: bool = False
    volumes: dict[str, MemoryVolume] = field(default_factory=dict)

    def key(self, volume: str) -> str:
        """The key (and path) of a volume of this pool."""
        return f"/{self.name}/{volume}"
