"""What a crash leaves in an rbd pool, and what the next pool start makes of it.

The crashes are real: a subprocess runs the daemon's own upload code against the
session's cluster and dies (``os._exit``) at the chosen rename, with nothing flushed or
undone; the pool is then started by a real virtvold, driven by virsh.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tests.conftest import Virtvold, run_virsh, start_virtvold, stop_virtvold
from tests.rbd.conftest import CEPH_POOL, RBD_POOL, define_rbd_pool, volume_name
from tests.rbd.test_virsh_rbd import exported, images
from virtvol.daemon.storage.rbdvolumes import RbdVolumes
from virtvol.daemon.storage.rbdxml import RbdSource

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tools.ceph_cluster import CephCluster

MIB = 1 << 20

# The daemon's code in a process of its own, on the cluster named by argv[1:3]; librbd's
# renames go through ``CrashingRbd``, which kills the process (no clean-up, no undo) at
# rename number argv[3] and prints each one done as "renamed OLD NEW".
_CRASH_PRELUDE = f"""
import base64, os, sys
from virtvol.daemon.storage.rbdvolumes import RbdVolumes
from virtvol.daemon.storage.rbdxml import RbdSource

port, key, crash_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
volumes = RbdVolumes.connect(
    RbdSource({CEPH_POOL!r}, (("127.0.0.1", int(port)),), "admin"), base64.b64decode(key)
)
binding = volumes._rbd
renames = []

class CrashingRbd:
    def __getattr__(self, name):
        return getattr(binding.RBD(), name)

    def rename(self, ioctx, old, new):
        renames.append(old)
        if len(renames) == crash_at:
            os._exit(1)
        binding.RBD().rename(ioctx, old, new)
        print("renamed", old, new, flush=True)

class Binding:
    RBD = CrashingRbd

    def __getattr__(self, name):
        return getattr(binding, name)

volumes._rbd = Binding()
"""

# A whole-volume upload of the bytes on stdin into volume argv[4], as the daemon does it.
_UPLOAD_SCRIPT = (
    _CRASH_PRELUDE
    + """
from virtvol.daemon.storage.rbdtransfer import RbdWriter

name, data = sys.argv[4], sys.stdin.buffer.read()
temp = volumes.create_upload_temp(name)
print("upload", temp, flush=True)
writer = RbdWriter(
    volumes, temp, 0, 0, fresh=True, finish=lambda ok: volumes.replace(temp, name), keep=name
)
writer.write(data)
writer.commit()
writer.release_replaced()
print("done", flush=True)
"""
)


def _crash_in_upload(ceph: CephCluster, crash_at: int, name: str, data: bytes) -> tuple[str, str]:
    """A whole-volume upload into ``name`` killed at rename ``crash_at`` (1: hiding the
    volume, 2: putting the upload in its place): (upload image, name the volume was to get)."""
    proc = subprocess.run(
        [sys.executable, "-c", _UPLOAD_SCRIPT, str(ceph.port), ceph.admin_key, str(crash_at), name],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr.decode(errors="replace")
    lines = proc.stdout.decode().splitlines()
    upload = next(line.split()[1] for line in lines if line.startswith("upload "))
    hidden = [line.split()[2] for line in lines if line.startswith(f"renamed {name} ")]
    return upload, hidden[0] if hidden else ""


def _restart_pool(daemon: Virtvold) -> None:
    run_virsh(daemon.tcp_uri, "pool-destroy", RBD_POOL)
    run_virsh(daemon.tcp_uri, "pool-start", RBD_POOL)


def _new_volume(daemon: Virtvold, folder: Path, prefix: str, data: bytes) -> str:
    name = volume_name(prefix)
    content = folder / f"{name}.img"
    content.write_bytes(data)
    run_virsh(daemon.tcp_uri, "vol-create-as", RBD_POOL, name, str(len(data)))
    run_virsh(daemon.tcp_uri, "vol-upload", "--pool", RBD_POOL, name, str(content))
    return name


def _hidden(ceph: CephCluster) -> set[str]:
    return {name for name in images(ceph) if name.startswith(".virtvol-")}


def _image_meta(ceph: CephCluster, name: str) -> dict[str, str]:
    listed = ceph.rbd("image-meta", "list", "--format", "json", f"{CEPH_POOL}/{name}")
    meta: dict[str, str] = json.loads(listed) if listed.strip() else {}
    return meta


def _wait_for_log(daemon: Virtvold, text: str, timeout: float = 10) -> str:
    """The daemon's log once it holds ``text`` (log lines may trail the reply a little)."""
    deadline = time.monotonic() + timeout
    while text not in (log := daemon.log_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


@contextmanager
def _other_host(ceph: CephCluster) -> Iterator[RbdVolumes]:
    """The pool as another daemon on another host serves it: a connection of its own."""
    volumes = RbdVolumes.connect(
        RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin"),
        base64.b64decode(ceph.admin_key),
    )
    try:
        yield volumes
    finally:
        volumes.close()


def test_a_crash_between_the_swap_renames_is_undone_at_pool_start(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    old = os.urandom(3 * MIB)
    name = _new_volume(rbd_virtvold, tmp_path, "swapcrash", old)
    upload, hidden_as = _crash_in_upload(ceph, 2, name, os.urandom(2 * MIB))
    # What the crash leaves: the volume is gone, its bytes under a hidden name.
    assert name not in images(ceph)
    assert {upload, hidden_as} <= _hidden(ceph)

    _restart_pool(rbd_virtvold)
    assert name in run_virsh(rbd_virtvold.tcp_uri, "vol-list", RBD_POOL).stdout
    assert exported(ceph, name, tmp_path) == old
    log = _wait_for_log(rbd_virtvold, f"removed {upload}")
    assert not {upload, hidden_as} & _hidden(ceph)
    assert f"restored volume '{name}' from {hidden_as}" in log
    assert _image_meta(ceph, name) == {}  # nor the record of the swap
    # The volume takes whole-volume uploads again.
    new = tmp_path / "new"
    new.write_bytes(os.urandom(MIB))
    run_virsh(rbd_virtvold.tcp_uri, "vol-upload", "--pool", RBD_POOL, name, str(new))
    assert exported(ceph, name, tmp_path) == new.read_bytes() + old[MIB:]
    assert _image_meta(ceph, name) == {}


def test_a_crash_after_the_swap_keeps_the_new_content(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """Killed once the upload took the volume's name, before the old image went (the
    second rename is done by hand, as the daemon would have done it): the upload was
    done, so the old image is a leftover, even once the volume is deleted."""
    uri = rbd_virtvold.tcp_uri
    kept = _new_volume(rbd_virtvold, tmp_path, "swapdone", os.urandom(MIB))
    deleted = _new_volume(rbd_virtvold, tmp_path, "swapdel", os.urandom(MIB))
    new = os.urandom(MIB)
    leftovers = set()
    for name in (kept, deleted):
        upload, hidden_as = _crash_in_upload(ceph, 2, name, new)
        ceph.rbd("mv", f"{CEPH_POOL}/{upload}", f"{CEPH_POOL}/{name}")
        leftovers.add(hidden_as)
    run_virsh(uri, "vol-delete", "--pool", RBD_POOL, deleted)
    _restart_pool(rbd_virtvold)
    for leftover in leftovers:
        _wait_for_log(rbd_virtvold, f"removed {leftover}")
    assert exported(ceph, kept, tmp_path) == new
    assert deleted not in images(ceph)
    assert not leftovers & _hidden(ceph)


def test_a_record_left_by_a_crash_resurrects_nothing(ceph: CephCluster, tmp_path: Path) -> None:
    """A crash before the first rename leaves the swap's record on the live volume: it
    stays as it was. Deleted later while read (so hidden by the delete, under another
    name) and left so by another crash, it is no swap to undo: the next daemon start (an
    autostarted pool) removes it, and the volume stays deleted."""
    base = tmp_path / "daemon"
    daemon = start_virtvold(base)
    try:
        define_rbd_pool(daemon.tcp_uri, ceph, tmp_path)
        run_virsh(daemon.tcp_uri, "pool-autostart", RBD_POOL)
        old = os.urandom(2 * MIB)
        name = _new_volume(daemon, tmp_path, "record", old)
        upload, _ = _crash_in_upload(ceph, 1, name, os.urandom(MIB))
        assert "virtvol.swap" in _image_meta(ceph, name)
        _restart_pool(daemon)
        assert exported(ceph, name, tmp_path) == old
        _wait_for_log(daemon, f"removed {upload}")
        assert upload not in _hidden(ceph)
        upload, _ = _crash_in_upload(ceph, 1, name, os.urandom(MIB))
    finally:
        stop_virtvold(daemon)
    # The delete's hiding rename: a delete done while a download read the volume.
    deleted_as = f".virtvol-old-{os.urandom(8).hex()}"
    ceph.rbd("mv", f"{CEPH_POOL}/{name}", f"{CEPH_POOL}/{deleted_as}")
    again = start_virtvold(base)
    try:
        assert name not in run_virsh(again.tcp_uri, "vol-list", RBD_POOL).stdout
        assert name not in images(ceph)
        log = _wait_for_log(again, f"removed {deleted_as}")
        assert f"removed {upload}" in _wait_for_log(again, f"removed {upload}")
        assert not {deleted_as, upload} & _hidden(ceph)
        assert "restored" not in log
    finally:
        stop_virtvold(again)


def test_leftovers_open_elsewhere_are_kept(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """Another daemon's running upload (its image open for writing) and the image another
    daemon still reads (a volume deleted or replaced under a download there) are kept by
    a pool start; what nobody has open goes (at a start, not at a refresh)."""
    running = f".virtvol-upload-{os.urandom(8).hex()}"
    stale = f".virtvol-upload-{os.urandom(8).hex()}"
    for leftover in (running, stale):
        ceph.rbd("create", "--size", "1M", f"{CEPH_POOL}/{leftover}")
    data = os.urandom(2 * MIB)
    read = _new_volume(rbd_virtvold, tmp_path, "readthere", data)
    with _other_host(ceph) as other:
        writer = other.open_image(running, hidden=True)
        try:
            with other.image(read, read_only=True) as reader:
                before = _hidden(ceph)
                other.delete(read)
                [read_as] = _hidden(ceph) - before
                run_virsh(rbd_virtvold.tcp_uri, "pool-refresh", RBD_POOL)
                assert stale in _hidden(ceph)  # only a start looks for leftovers
                _restart_pool(rbd_virtvold)
                _wait_for_log(rbd_virtvold, f"removed {stale}")
                assert reader.read(0, len(data)) == data
                left = _hidden(ceph)
                assert {running, read_as} <= left
                assert stale not in left
        finally:
            other.close_image(writer)
            other.remove_temp(running)  # the other daemon's upload ends
        # The other daemon's reader is done: it removes the image it kept.
        assert read_as not in _hidden(ceph)
    log = _wait_for_log(rbd_virtvold, f"removed {stale}")
    assert f"kept {running}: open elsewhere" in log
    assert f"kept {read_as}: open elsewhere" in log


def test_an_image_replaced_under_a_reader_carries_no_swap_record(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """The image a whole-volume upload replaced stays (hidden) until its reader is done,
    and carries the volume's image-meta but not the swap's record, which would make it
    look like a swap a crash cut short; nor does the volume."""
    name = _new_volume(rbd_virtvold, tmp_path, "replaced", os.urandom(MIB))
    ceph.rbd("image-meta", "set", f"{CEPH_POOL}/{name}", "owner", "team blue")
    meta = {"owner": "team blue"}
    with _other_host(ceph) as other, other.image(name, read_only=True):
        before = _hidden(ceph)
        release = other.replace(other.create_upload_temp(name), name)
        [replaced_as] = _hidden(ceph) - before
        assert _image_meta(ceph, replaced_as) == meta
        assert _image_meta(ceph, name) == meta
        release()
    assert replaced_as not in _hidden(ceph)


def _large_leftover(ceph: CephCluster, size: str) -> str:
    """A hidden upload image without an object map, which librbd removes object by object,
    each by name: 256 GiB (65536 objects) take seconds on the test cluster."""
    leftover = f".virtvol-upload-{os.urandom(8).hex()}"
    ceph.rbd("create", "--size", size, "--image-feature", "layering", f"{CEPH_POOL}/{leftover}")
    return leftover


def test_a_pool_start_does_not_wait_for_the_removal_of_a_large_leftover(
    rbd_virtvold: Virtvold, ceph: CephCluster
) -> None:
    """A start (here virsh's pool-start; a daemon's start with an autostarted pool is the
    same call, before it tells systemd it is ready) answers at once; the removal follows."""
    leftover = _large_leftover(ceph, "384G")
    uri = rbd_virtvold.tcp_uri
    run_virsh(uri, "pool-destroy", RBD_POOL)
    started = time.monotonic()
    run_virsh(uri, "pool-start", RBD_POOL)
    assert time.monotonic() - started < 4
    assert leftover in images(ceph)  # still being removed
    assert f"removed {leftover}" in _wait_for_log(rbd_virtvold, f"removed {leftover}", 90)
    assert leftover not in images(ceph)


def test_a_stop_cancels_the_removal_of_a_leftover_and_the_next_start_finishes_it(
    ceph: CephCluster, tmp_path: Path
) -> None:
    """pool-destroy and the daemon's stop end the removal at its next object: the image is
    kept (logged), nothing waits for the whole removal, and a later start removes it."""
    leftover = _large_leftover(ceph, "256G")
    daemon = start_virtvold(tmp_path / "daemon")
    try:
        define_rbd_pool(daemon.tcp_uri, ceph, tmp_path)  # starts the removal
        stopping = time.monotonic()
        run_virsh(daemon.tcp_uri, "pool-destroy", RBD_POOL)
        kept = f"kept {leftover}: the pool stopped"
        assert kept in _wait_for_log(daemon, kept, 5)
        assert time.monotonic() - stopping < 5
        assert leftover in images(ceph)
        run_virsh(daemon.tcp_uri, "pool-start", RBD_POOL)
        stopping = time.monotonic()
    finally:
        assert stop_virtvold(daemon) == 0
    assert time.monotonic() - stopping < 8
    assert daemon.log_text().count(kept) == 2
    assert leftover in images(ceph)
    again = start_virtvold(tmp_path / "again")
    try:
        define_rbd_pool(again.tcp_uri, ceph, tmp_path)
        assert f"removed {leftover}" in _wait_for_log(again, f"removed {leftover}", 90)
    finally:
        stop_virtvold(again)
