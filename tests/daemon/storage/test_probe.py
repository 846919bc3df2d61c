"""Hostile and truncated image headers: probed within the bytes at hand, never trusted further.

The headers that make libvirtd itself fail (its pool refresh stops the pool) cannot be
compared with it; here virtvold must answer with what could be read, promptly, and keep
the rest of the pool usable.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import struct
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import images
from tests.daemon.storage.conftest import PoolSetup
from virtvol.daemon.storage import StorageRegistry, VolumeType
from virtvol.daemon.storage.probe import FILE_FORMATS, HEADER_LIMIT, ImageHeader, probe_header

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

GIB = 1 << 30


def test_a_qcow2_v3_header_too_short_for_its_features_keeps_size_and_clusters() -> None:
    # libvirtd fails its whole pool refresh on these; the size and cluster bits are there.
    for length in (72, 99):
        header = probe_header(images.qcow2(GIB, compatible=1)[:length])
        assert header == ImageHeader("qcow2", capacity=GIB, cluster_size=65536)


def test_cluster_bits_past_63_name_no_cluster_size() -> None:
    header = images.qcow2(GIB)
    odd = header[:20] + struct.pack(">I", 70) + header[24:]
    assert probe_header(odd).cluster_size is None


def test_a_header_is_read_no_further_than_libvirt_reads() -> None:
    # A backing name placed just past the bytes libvirt reads is not seen.
    name = b"raw.img"
    for offset, seen in ((HEADER_LIMIT - len(name), name), (HEADER_LIMIT - len(name) + 1, None)):
        header = bytearray(images.qcow2(GIB, backing=name))
        header[8:16] = offset.to_bytes(8, "big")
        data = bytes(header[: len(images.qcow2(GIB))]).ljust(offset, b"\0") + name
        assert probe_header(data).backing_name == seen


def test_an_extension_claiming_4_gib_ends_the_walk() -> None:
    base = images.qcow2(GIB)[:104]
    data = base + struct.pack(">II", 0x1234, 0xFFFFFFFF) + b"\0" * 16
    data = data[:8] + struct.pack(">Q", len(data)) + struct.pack(">I", 3) + data[20:] + b"abc"
    header = probe_header(data)
    assert (header.backing_name, header.backing_format) == (b"abc", None)
    assert header.features == ()


@settings(max_examples=400, deadline=None)
@given(
    prefix=st.sampled_from([b"QFI\xfb", b"QED\0", b"KDMV", b"OOOM", b"conectix", b""]),
    body=st.binary(max_size=2048),
)
def test_any_bytes_give_an_answer(prefix: bytes, body: bytes) -> None:
    header = probe_header(prefix + body)
    assert header.format in FILE_FORMATS
    assert header.capacity is None or 0 <= header.capacity < 1 << 64
    assert header.backing_name is None or len(header.backing_name) <= 2048


def test_backing_names_that_are_not_text_or_lead_nowhere(setup: PoolSetup) -> None:
    fifo = setup.pool_dir.parent / "fifo"
    os.mkfifo(fifo)
    cases = {
        "not-text.qcow2": (b"\xff\xfe.img", "    <format type='raw'/>"),
        "fifo.qcow2": (str(fifo).encode(), f"    <path>{fifo}</path>"),
        "too-long.qcow2": (b"b" * 1000, "    <format type='raw'/>"),
        # An empty name (all NULs) names the pool directory itself, as in libvirt.
        "dir.qcow2": (b"\0\0", "    <format type='dir'/>"),
    }
    for name, (backing, _) in cases.items():
        images.place(setup.pool_dir, name, images.qcow2(GIB, backing=backing))
    registry = setup.registry
    for name, (_, expected) in cases.items():
        xml = registry.volume_xml(registry.lookup_volume_by_name(setup.ref, name))
        assert expected in xml.split("<backingStore>")[1], name
    not_text = registry.volume_xml(registry.lookup_volume_by_name(setup.ref, "not-text.qcow2"))
    assert "<path>" not in not_text.split("<backingStore>")[1]
    # A FIFO is looked at, never opened (opening one for reading would wait for a writer).
    fifo_xml = registry.volume_xml(registry.lookup_volume_by_name(setup.ref, "fifo.qcow2"))
    assert "<format type='raw'/>" in fifo_xml.split("<backingStore>")[1]


def test_a_ploop_image_is_a_ploop_volume(setup: PoolSetup) -> None:
    images.place(setup.pool_dir, "disk.hds", images.ploop(GIB // 512), 8192)
    info = setup.registry.volume_info(setup.registry.lookup_volume_by_name(setup.ref, "disk.hds"))
    assert (info.type, info.capacity) == (VolumeType.PLOOP, 8192)


def test_a_slow_backing_file_holds_up_no_other_call(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A header may name a file on a mount that stopped answering: only the call that
    # asked about that volume waits for it.
    slow = b"/slow-mount/base.img"
    images.place(setup.pool_dir, "overlay.qcow2", images.qcow2(GIB, backing=slow))
    entered, release = threading.Event(), threading.Event()
    real_stat = os.stat

    def stat(path: object, *args: Any, **kwargs: Any) -> os.stat_result:
        if path == slow:
            entered.set()
            release.wait(10)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    registry = setup.registry
    overlay = registry.lookup_volume_by_name(setup.ref, "overlay.qcow2")
    describing = threading.Thread(target=registry.volume_xml, args=(overlay,))
    describing.start()
    try:
        assert entered.wait(10)
        listing = threading.Thread(target=registry.list_volume_names, args=(setup.ref, 10))
        listing.start()
        listing.join(5)
        assert not listing.is_alive(), "listing waited for the backing file's stat"
    finally:
        release.set()
        describing.join(10)


@contextmanager
def acting_as_nobody() -> Iterator[None]:
    """Run the block with ``nobody``'s file permissions, as a daemon not run as root has."""
    nobody = pwd.getpwnam("nobody")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def reachable_pool() -> Iterator[PoolSetup]:
    """A running pool in a folder ``nobody`` can reach (pytest's own are root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="virtvol-probe-", dir="/tmp"))
    base.chmod(0o755)
    registry = StorageRegistry(base / "state", sync_uploads=False)
    try:
        ref = registry.ensure_pool("default", base / "pool")
        (base / "pool").chmod(0o755)
        yield PoolSetup(registry, ref, base / "state", base / "pool")
    finally:
        registry.close()
        shutil.rmtree(base, ignore_errors=True)


def test_a_sub_directory_the_daemon_may_not_open_is_still_a_dir_volume(
    reachable_pool: PoolSetup,
) -> None:
    # Its entry says what it is, and what it holds is never counted: a daemon not run as
    # root lists it as libvirt lists sub-directories, not as a 4 KiB raw file.
    locked = reachable_pool.pool_dir / "locked"
    locked.mkdir()
    locked.chmod(0)
    registry = reachable_pool.registry
    volume = registry.lookup_volume_by_name(reachable_pool.ref, "locked")
    with acting_as_nobody():
        info = registry.volume_info(volume)
        xml = registry.volume_xml(volume)
    assert (info.type, info.capacity, info.allocation) == (VolumeType.DIR, 0, 0)
    assert "<volume type='dir'>" in xml
    assert "<format type='dir'/>" in xml


def test_a_backing_file_of_no_size_is_never_read(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files of /proc are regular files of size 0 whose reads may act: reading
    # /proc/kmsg takes the kernel's messages from the system log. A guest may name one in
    # an image header; looking at its volume must not read it, and it holds no image.
    images.place(setup.pool_dir, "overlay.qcow2", images.qcow2(GIB, backing=b"/proc/self/status"))
    read_from: list[str] = []
    real_pread = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        read_from.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    registry = setup.registry
    xml = registry.volume_xml(registry.lookup_volume_by_name(setup.ref, "overlay.qcow2"))
    assert "<format type='raw'/>" in xml.split("<backingStore>")[1]
    assert str(setup.pool_dir / "overlay.qcow2") in read_from  # the volume itself is read
    assert [path for path in read_from if path.startswith("/proc/")] == []


def test_a_sub_directory_that_stopped_answering_holds_up_only_calls_about_it(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sub-directory may be where a network file system is mounted, whose server went
    # away: looking at it (its stat) waits then. virsh's vol-list looks at every volume;
    # the pool's other volumes must still answer meanwhile.
    (setup.pool_dir / "mounted").mkdir()
    setup.volume("disk.img", 4096)
    entered, release = threading.Event(), threading.Event()
    real_stat = os.stat

    def stat(path: object, *args: Any, **kwargs: Any) -> os.stat_result:
        if path == "mounted":
            entered.set()
            release.wait(10)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    registry = setup.registry
    mounted = registry.lookup_volume_by_name(setup.ref, "mounted")
    disk = registry.lookup_volume_by_name(setup.ref, "disk.img")

    def look_at_the_others(answers: list[object]) -> None:
        answers.append(registry.lookup_volume_by_name(setup.ref, "disk.img"))
        answers.append(registry.volume_info(disk))
        answers.append(registry.volume_path(disk))

    looks: list[tuple[Callable[..., object], object]] = [
        (registry.volume_info, mounted),
        (registry.volume_xml, mounted),
        (registry.volume_path, mounted),
        (registry.lookup_volume_by_path, mounted.key),
        (registry.lookup_volume_by_key, mounted.key),
    ]
    monkeypatch.setattr(os, "stat", stat)
    for call, argument in looks:
        entered.clear()
        release.clear()
        looking = threading.Thread(target=call, args=(argument,))
        looking.start()
        answers: list[object] = []
        other = threading.Thread(target=look_at_the_others, args=(answers,))
        try:
            assert entered.wait(10)
            other.start()
            other.join(5)
            assert len(answers) == 3, f"{call.__name__} of 'mounted' held up the others"
        finally:
            release.set()
            looking.join(10)
            if other.ident is not None:
                other.join(10)


def _watch_opens(path: Path) -> int:
    """An inotify descriptor (non-blocking) that hears every open of ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd: int = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    if libc.inotify_add_watch(fd, os.fsencode(path), _IN_OPEN) < 0:
        os.close(fd)
        raise OSError(ctypes.get_errno(), "inotify_add_watch")
    return fd


_IN_OPEN = 0x20


def test_a_backing_file_swapped_for_a_fifo_after_its_stat_is_not_opened(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The backing name comes from the volume's header (a guest writes it) and may lead
    # to a place its writer controls: looked at, it is a regular file; swapped for a
    # link to a FIFO or a device (/dev/watchdog starts its countdown when opened) before
    # the daemon opens it, it must not be opened.
    outside = setup.pool_dir.parent
    base, fifo = outside / "base.img", outside / "fifo"
    base.write_bytes(bytes(4096))
    os.mkfifo(fifo)
    images.place(setup.pool_dir, "overlay.qcow2", images.qcow2(GIB, backing=os.fsencode(base)))
    real_stat = os.stat

    def stat(path: object, *args: Any, **kwargs: Any) -> os.stat_result:
        found = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if path == os.fsencode(base):
            swapped = outside / "swapped"
            swapped.symlink_to(fifo)
            swapped.replace(base)
        return found

    watch = _watch_opens(fifo)
    try:
        monkeypatch.setattr(os, "stat", stat)
        registry = setup.registry
        xml = registry.volume_xml(registry.lookup_volume_by_name(setup.ref, "overlay.qcow2"))
        monkeypatch.undo()
        assert "<format type='raw'/>" in xml.split("<backingStore>")[1]
        with pytest.raises(BlockingIOError):
            os.read(watch, 4096)  # no open of the FIFO was heard
    finally:
        os.close(watch)
