"""A pool directory stays open until the last call working in it is done.

A closed descriptor's number goes to the next file opened: a call that went on
with a closed pool directory would create, rename or remove files in whatever
directory got that number. Each test holds a call at the point where it still has
the pool directory to use, stops the daemon's pools (``StorageRegistry.close``, as a
daemon's stop does), gives a freed number to a decoy directory at once, then lets
the call go on: it must finish in the pool directory and leave the decoy alone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from virtvol.daemon.storage.volumes import VolumeDir

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import pytest

    from tests.daemon.storage.conftest import PoolSetup


def _descriptors_of(directory: Path) -> list[int]:
    """The numbers of this process's descriptors open on ``directory``."""
    found = []
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") == str(directory):
                found.append(int(entry))
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return found


def _is_open(number: int) -> bool:
    try:
        fcntl.fcntl(number, fcntl.F_GETFD)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
        return False
    return True


@contextmanager
def _decoy_on_freed(numbers: list[int], decoy: Path) -> Iterator[list[int]]:
    """Open ``decoy`` under each of ``numbers`` that is closed now, as the next open
    anywhere in the daemon would get it; yields the numbers it took."""
    taken = []
    try:
        for number in numbers:
            if not _is_open(number):
                fd = os.open(decoy, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                if fd != number:
                    os.dup2(fd, number)
                    os.close(fd)
                taken.append(number)
        yield taken
    finally:
        for number in taken:
            os.close(number)


def test_a_delete_under_way_at_the_stop_removes_its_volume_not_the_decoys(
    setup: PoolSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol = setup.file("disk", b"d" * 4096)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "disk").write_bytes(b"keep me")
    marked, go_on = threading.Event(), threading.Event()
    real_check = VolumeDir.check_not_being_replaced

    def held_once_checked(volumes: VolumeDir, *args: Any, **kwargs: Any) -> None:
        real_check(volumes, *args, **kwargs)
        marked.set()
        assert go_on.wait(10)

    # Held once the volume is marked and checked, before its name is removed through the
    # directory.
    monkeypatch.setattr(VolumeDir, "check_not_being_replaced", held_once_checked)
    pool_numbers = _descriptors_of(setup.pool_dir)
    assert pool_numbers
    with ThreadPoolExecutor(1) as worker:
        deleting = worker.submit(setup.registry.delete_volume, vol)
        assert marked.wait(10)
        setup.registry.close()
        with _decoy_on_freed(pool_numbers, decoy):
            go_on.set()
            deleting.result(10)
    assert (decoy / "disk").read_bytes() == b"keep me"
    assert not (setup.pool_dir / "disk").exists()
    assert _descriptors_of(setup.pool_dir) == []  # closed once the delete was done


def test_an_upload_aborted_after_the_stop_removes_its_temporary_not_the_decoys(
    setup: PoolSetup, tmp_path: Path
) -> None:
    vol = setup.file("disk", b"d" * 4096)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    pool_numbers = _descriptors_of(setup.pool_dir)
    writer = setup.registry.open_upload(vol, 0, 0)
    (temp,) = [name for name in os.listdir(setup.pool_dir) if name != "disk"]
    (decoy / temp).write_bytes(b"keep me")
    setup.registry.close()  # the stream's file is let go of after the stop
    with _decoy_on_freed(pool_numbers, decoy):
        writer.abort()
    assert (decoy / temp).read_bytes() == b"keep me"
    assert sorted(os.listdir(setup.pool_dir)) == ["disk"]
    assert (setup.pool_dir / "disk").read_bytes() == b"d" * 4096
    assert _descriptors_of(setup.pool_dir) == []
