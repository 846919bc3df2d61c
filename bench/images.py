"""The benchmark's images: the shapes a user moves, written once per run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40


@dataclass(frozen=True)
class Image:
    """An image file: ``name``, virtual ``size`` and the data ``extents`` (offset, length)."""

    name: str
    label: str
    size: int
    extents: tuple[tuple[int, int], ...]

    @property
    def data_bytes(self) -> int:
        return sum(length for _, length in self.extents)

    def write(self, path: Path) -> None:
        """Random (incompressible) data in the extents, holes elsewhere."""
        block = os.urandom(MIB)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, self.size)
            for offset, length in self.extents:
                done = 0
                while done < length:
                    count = min(len(block), length - done)
                    os.pwrite(fd, block[:count], offset + done)
                    done += count
                    # A fresh random block now and then: no dedup or compression luck.
                    if done % (64 * MIB) == 0:
                        block = os.urandom(MIB)
            os.fsync(fd)
        finally:
            os.close(fd)


def dense(size: int) -> Image:
    return Image(f"dense-{size // MIB}M", f"dense {_human(size)}", size, ((0, size),))


def sparse(size: int, data: int, pieces: int = 3) -> Image:
    step = size // pieces
    piece = data // pieces
    extents = tuple((i * step, piece) for i in range(pieces))
    return Image(
        f"sparse-{size // MIB}M", f"sparse {_human(size)} holding {_human(data)}", size, extents
    )


def fragmented(size: int, every: int = 64 * KIB, length: int = 4 * KIB) -> Image:
    extents = tuple((offset, length) for offset in range(0, size, every))
    label = f"fragmented {_human(size)} ({_human(length)} every {_human(every)})"
    return Image(f"frag-{size // MIB}M", label, size, extents)


def _human(size: int) -> str:
    for unit, name in ((TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"
