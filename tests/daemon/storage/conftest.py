"""Fixtures for the storage layer: a registry over a temporary state dir with one running pool."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from virtvol.daemon.storage import PoolRef, StorageRegistry, VolumeRef
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport

if TYPE_CHECKING:
    from collections.abc import Iterator

BLOCK = 4096
NOT_VALID = "Requested operation is not valid: "
NO_POOL = "Storage pool not found: no storage pool with matching "
NO_VOL = "Storage volume not found: no storage vol with matching "


@contextmanager
def fails(
    code: ErrorCode, message: str, domain: ErrorDomain = ErrorDomain.STORAGE
) -> Iterator[None]:
    """Expect an ErrorReport with exactly this code, domain and message."""
    with pytest.raises(ErrorReport) as info:
        yield
    report = info.value
    assert (report.code, report.domain, report.message) == (code, domain, message)


@dataclass
class PoolSetup:
    """A registry with a started pool "default" at ``pool_dir``."""

    registry: StorageRegistry
    ref: PoolRef
    state_dir: Path
    pool_dir: Path

    def volume(self, name: str, capacity: int = 0, allocation: int | None = 0) -> VolumeRef:
        """Create a raw volume (sparse by default)."""
        alloc = "" if allocation is None else f"<allocation>{allocation}</allocation>"
        xml = f"<volume><name>{name}</name><capacity>{capacity}</capacity>{alloc}</volume>"
        return self.registry.create_volume_xml(self.ref, xml)

    def file(self, name: str, content: bytes) -> VolumeRef:
        """Create a volume whose file holds ``content`` (written directly)."""
        (self.pool_dir / name).write_bytes(content)
        return self.registry.lookup_volume_by_name(self.ref, name)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[PoolSetup]:
    state = tmp_path / "state"
    pool_dir = tmp_path / "pool"
    registry = StorageRegistry(state, sync_uploads=False)
    ref = registry.ensure_pool("default", pool_dir)
    yield PoolSetup(registry, ref, state, pool_dir)
    registry.close()


def allocated(path: Path | str) -> int:
    """Bytes of disk a file uses."""
    return os.stat(path).st_blocks * 512
