"""The rbd reader and writer on their own, against the session's Ceph cluster."""

from __future__ import annotations

import base64
import errno
import gc
import os
import weakref
from typing import TYPE_CHECKING, Any

import pytest

from tests.rbd.conftest import CEPH_POOL, volume_name
from tests.rbd.test_virsh_rbd import exported
from virtvol.daemon.storage import rbdtransfer, rbdvolumes
from virtvol.daemon.storage.rbdtransfer import RbdReader, RbdWriter
from virtvol.daemon.storage.rbdvolumes import RbdVolumes, zero_range
from virtvol.daemon.storage.rbdxml import RbdSource
from virtvol.daemon.storage.volxml import VolumeRequest
from virtvol.protocol.errors import ErrorReport
from virtvol.sparse.reader import Chunk

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tools.ceph_cluster import CephCluster

MIB = 1 << 20


@pytest.fixture
def images(ceph: CephCluster) -> Iterator[RbdVolumes]:
    source = RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin")
    volumes = RbdVolumes.connect(source, base64.b64decode(ceph.admin_key))
    try:
        yield volumes
    finally:
        volumes.close()
    # Every reader and writer let go of the connection (a writer whose commit failed is
    # aborted, as the daemon aborts it): else it was never shut down, and librados'
    # threads, left running, can abort the process as it exits.
    assert volumes._users == 0, "an image or a writer still holds the pool's connection"


def _read_all(volumes: RbdVolumes, name: str, offset: int = 0, length: int = 0) -> list[Chunk]:
    reader = RbdReader(volumes, name, offset, length)
    buffer = bytearray(MIB)
    chunks: list[Chunk] = []
    try:
        while True:
            chunk = reader.next_chunk(buffer)
            if chunk.eof:
                return chunks
            chunks.append(chunk)
    finally:
        reader.close()


def _content(volumes: RbdVolumes, name: str) -> bytes:
    with volumes.image(name, read_only=True) as image:
        data: bytes = image.read(0, image.size())
        return data


def _upload(volumes: RbdVolumes, name: str, items: list[bytes | int], *, fresh: bool) -> None:
    outcome: list[bool] = []
    target = name
    if fresh:
        target = volumes.create_upload_temp(name)

    def finish(success: bool) -> None:
        outcome.append(success)
        if fresh:
            if success:
                volumes.replace(target, name)()
            else:
                volumes.remove_temp(target)

    writer = RbdWriter(volumes, target, 0, 0, fresh=fresh, finish=finish)
    for item in items:
        if isinstance(item, int):
            writer.skip(item)
        else:
            writer.write(item)
    writer.commit()
    writer.release_replaced()
    assert outcome == [True]


def test_reader_merges_holes_and_finds_zeros_inside_objects(images: RbdVolumes) -> None:
    name = volume_name("reader")
    images.create(VolumeRequest(name, 16 * MIB, None))
    island = os.urandom(5000)
    with images.image(name) as image:
        image.write(island, 100)
        image.write(bytes(2 * MIB), 2 * MIB)  # written zeros: an allocated object, all zero
        image.write(island, 9 * MIB + 3)
    chunks = _read_all(images, name)
    assert [c.data for c in chunks] == [True, False, True, False]
    assert sum(c.length for c in chunks) == 16 * MIB
    assert chunks[0].length == 64 * 1024  # the island's zero-padded block
    expected = bytearray(16 * MIB)
    expected[100 : 100 + 5000] = island
    expected[9 * MIB + 3 : 9 * MIB + 5003] = island
    assert _content(images, name) == bytes(expected)
    part = _read_all(images, name, 9 * MIB, 10)
    assert part == [Chunk(data=True, length=10)]


def _counted_queries(monkeypatch: pytest.MonkeyPatch, walker: Any) -> list[int]:
    """The length of each object-map query (``data_extents``) the module ``walker`` makes
    from now on, in order."""
    queries: list[int] = []
    walk = rbdvolumes.data_extents

    def counted(image: object, offset: int, length: int) -> list[tuple[int, int]]:
        queries.append(length)
        return walk(image, offset, length)

    monkeypatch.setattr(walker, "data_extents", counted)
    return queries


def test_a_large_sparse_image_is_walked_in_few_object_map_queries(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librbd (16.2) loads an image's whole object map for every query, whatever range it
    asks about: 64 MiB for the largest image an object map allows. Walking a thin 2 TiB
    image a GiB at a time took 2048 loads to read and as many to keep its end in a
    whole-volume upload (a thin 1 PiB volume: a million, days of work for the cluster).
    Empty windows grow, so the walk takes a few dozen; where data is, they shrink back."""
    name = volume_name("thin")
    size = 2 << 40
    images.create(VolumeRequest(name, size, None))
    island = os.urandom(5000)
    with images.image(name) as image:
        image.write(island, size // 2)
    queries = _counted_queries(monkeypatch, rbdtransfer)
    chunks = _read_all(images, name)
    assert sum(c.length for c in chunks) == size
    assert [c for c in chunks if c.data] == [Chunk(data=True, length=64 * 1024)]
    assert len(queries) < 100
    assert max(queries) <= 256 << 30  # the extents of one query stay few
    queries.clear()
    writer, _outcome = _whole_upload(images, name)
    writer.write(b"head")
    while not writer.keep_tail():
        pass
    assert len(queries) < 100
    writer.commit()
    writer.release_replaced()
    with images.image(name, read_only=True) as image:
        assert image.read(0, 4) == b"head"
        assert image.read(size // 2, len(island)) == island
    images.delete(name)


class _ObjectMapQueries:
    """A daemon's Ceph binding that records how many bytes each object-map query
    (``diff_iterate``) of the images it opens asks about."""

    def __init__(self, binding: Any) -> None:
        self._binding = binding
        self.lengths: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._binding, name)

    def Image(self, *args: Any, **kwargs: Any) -> Any:
        image, lengths = self._binding.Image(*args, **kwargs), self.lengths

        class Recording:
            def __getattr__(self, name: str) -> Any:
                return getattr(image, name)

            def diff_iterate(self, offset: int, length: int, *args: Any, **kwargs: Any) -> Any:
                lengths.append(length)
                return image.diff_iterate(offset, length, *args, **kwargs)

        return Recording()


def test_the_info_of_a_huge_thin_volume_walks_a_bounded_object_map(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librbd goes through an image's whole object map for any query: the allocation of a
    thin 1 PiB volume took about a minute and 64 MiB of a high-priority worker, on every
    vol-info. Past ``INFO_WALK_OBJECTS`` objects (an image twice that size shows it, and
    is removed in moments) vol-info walks nothing and reports the capacity, as libvirt
    does for an image whose object map cannot tell; a smaller image still reports what
    its object map says is written (whole objects)."""
    huge, small = volume_name("huge"), volume_name("small")
    size = 2 * rbdvolumes.INFO_WALK_OBJECTS * 4 * MIB
    images.create(VolumeRequest(huge, size, None))
    images.create(VolumeRequest(small, 16 * MIB, None))
    queries = _ObjectMapQueries(images._rbd)
    try:
        with images.image(small) as image:
            image.write(os.urandom(5000), 9 * MIB + 3)
        monkeypatch.setattr(images, "_rbd", queries)
        assert images.info(small) == (16 * MIB, 4 * MIB)
        assert queries.lengths == [16 * MIB]
        queries.lengths.clear()
        assert images.info(huge) == (size, size)
        assert sum(queries.lengths) <= rbdvolumes.INFO_WALK_OBJECTS * 4 * MIB
    finally:
        images.delete(huge)
        images.delete(small)


def test_a_download_walked_in_growing_windows_reads_what_rbd_export_reads(
    images: RbdVolumes, ceph: CephCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Windows of the object-map walk that grow while they find nothing, and shrink back
    where data is, miss no byte and invent none: data on either side of each window's
    edge, in the image's last byte, comes out as Ceph's own export reads it. The windows
    are made small (objects of 4 KiB) so that a small image has many edges."""
    monkeypatch.setattr(rbdvolumes, "EXTENT_WINDOW", 16 << 10)
    monkeypatch.setattr(rbdtransfer, "EXTENT_WINDOW", 16 << 10)
    monkeypatch.setattr(rbdvolumes, "MAX_WINDOW_OBJECTS", 64)
    name = volume_name("edges")
    size = 3 * MIB + 4097
    ceph.rbd("create", "--object-size", "4K", "--size", f"{size}B", f"{CEPH_POOL}/{name}")
    # The edges of windows walked from 0 through empty space: 16, 48, 112, 240, 496 KiB,
    # then every 256 KiB; and some anywhere, which reset the windows at random places.
    edges = [16 << 10, 48 << 10, 112 << 10, 240 << 10, 496 << 10]
    edges += [edges[-1] + k * (256 << 10) for k in range(1, 10)]
    spots = {at for edge in edges for at in (edge - 1, edge) if at < size}
    spots |= {int.from_bytes(os.urandom(4), "little") % size for _ in range(8)}
    spots.add(size - 1)
    with images.image(name) as image:
        for at in spots:
            image.write(b"\xff", at)
    queries = _counted_queries(monkeypatch, rbdtransfer)
    read = bytearray()
    reader = RbdReader(images, name, 0, 0)
    buffer = bytearray(MIB)
    try:
        while not (chunk := reader.next_chunk(buffer)).eof:
            read += buffer[: chunk.length] if chunk.data else bytes(chunk.length)
    finally:
        reader.close()
    assert max(queries) > 16 << 10  # the windows did grow
    assert bytes(read) == exported(ceph, name, tmp_path)
    images.delete(name)


def test_whole_upload_replaces_exactly(images: RbdVolumes) -> None:
    name = volume_name("whole")
    images.create(VolumeRequest(name, 4 * MIB, None))
    with images.image(name) as image:
        image.write(os.urandom(4 * MIB), 0)
    head = os.urandom(3000)
    _upload(images, name, [head, 6 * MIB, b"tail", bytes(200_000)], fresh=True)
    content = _content(images, name)
    assert len(content) == 3000 + 6 * MIB + 4 + 200_000
    assert content == head + bytes(6 * MIB) + b"tail" + bytes(200_000)
    assert images.names().count(name) == 1
    assert not [n for n in images._all_names() if n.startswith(".virtvol-")]


def test_whole_upload_keeps_the_old_end_in_steps(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rbdtransfer, "TAIL_STEP", MIB)
    name = volume_name("keep")
    images.create(VolumeRequest(name, 12 * MIB, None))
    first, last = os.urandom(2 * MIB), os.urandom(2 * MIB + 3)
    with images.image(name) as image:
        image.write(first, 0)
        image.write(last, 12 * MIB - len(last))
    temp = images.create_upload_temp(name)

    def finish(success: bool) -> Callable[[], None]:
        assert success
        return images.replace(temp, name)  # what removes the old image

    writer = RbdWriter(images, temp, 0, 0, fresh=True, finish=finish, keep=name)
    head = os.urandom(MIB + 7)
    writer.write(head)
    steps: list[bool] = []
    while not steps or not steps[-1]:
        steps.append(writer.keep_tail())
    # A mebibyte of extents a step (whole 4 MiB objects, clipped): the two objects past
    # the stream take several steps, the hole between them none.
    assert len(steps) >= 3
    writer.commit()
    writer.release_replaced()
    middle = bytes(12 * MIB - len(last) - 2 * MIB)
    assert _content(images, name) == head + first[len(head) :] + middle + last
    assert images.names().count(name) == 1
    assert not [n for n in images._all_names() if n.startswith(".virtvol-")]


def test_a_failure_copying_the_old_end_leaves_the_image(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = volume_name("keepfail")
    images.create(VolumeRequest(name, 8 * MIB, None))
    old = os.urandom(8 * MIB)
    with images.image(name) as image:
        image.write(old, 0)
    temp = images.create_upload_temp(name)

    def finish(success: bool) -> None:
        assert not success
        images.remove_temp(temp)

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "the cluster went away")

    monkeypatch.setattr(rbdtransfer, "copy_range", broken)
    writer = RbdWriter(images, temp, 0, 0, fresh=True, finish=finish, keep=name)
    writer.write(os.urandom(MIB))
    with pytest.raises(ErrorReport) as failed:
        writer.keep_tail()
    assert failed.value.message == "cannot write to stream: Input/output error"
    writer.abort()
    assert _content(images, name) == old
    assert not [n for n in images._all_names() if n.startswith(".virtvol-")]


def test_in_place_holes_zero_old_content(images: RbdVolumes) -> None:
    name = volume_name("inplace")
    images.create(VolumeRequest(name, 8 * MIB, None))
    with images.image(name) as image:
        image.write(b"\xaa" * (8 * MIB), 0)
    _upload(images, name, [b"new", 5 * MIB, bytes(MIB)], fresh=False)
    content = _content(images, name)
    assert content == b"new" + bytes(6 * MIB) + b"\xaa" * (2 * MIB - 3)


def test_an_in_place_hole_past_the_largest_size_zeroes_nothing(images: RbdVolumes) -> None:
    """A hole frame can say up to 2^63 - 1 bytes: one that would take the image past the
    largest size (``MAX_IMAGE_SIZE``) is refused before it zeroes the old content it
    covers, not after."""
    name = volume_name("farhole")
    old = os.urandom(8 * MIB)
    images.create(VolumeRequest(name, len(old), None))
    with images.image(name) as image:
        image.write(old, 0)
    writer = RbdWriter(images, name, 0, 0, fresh=False, finish=lambda ok: None)
    try:
        writer.write(b"new")
        with pytest.raises(ErrorReport) as refused:
            writer.skip((1 << 63) - 1)
        assert refused.value.message == "cannot write to stream: File too large"
    finally:
        writer.abort()
    assert _content(images, name) == b"new" + old[3:]


def test_in_place_upload_never_shrinks_what_another_daemon_grew(
    images: RbdVolumes, ceph: CephCluster
) -> None:
    # Several daemons may serve one Ceph pool. One's upload writes past the image's end,
    # which it grows the image to; meanwhile the other grew the image and wrote further
    # on: the growth must not cut the image back and lose those bytes.
    name = volume_name("grown")
    images.create(VolumeRequest(name, MIB, None))
    writer = RbdWriter(images, name, MIB, 0, fresh=False, finish=lambda success: None)
    source = RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin")
    other = RbdVolumes.connect(source, base64.b64decode(ceph.admin_key))
    try:
        with other.image(name) as image:
            image.resize(8 * MIB)
            image.write(b"kept", 6 * MIB)
    finally:
        other.close()
    writer.write(b"new")
    writer.skip(10)
    writer.commit()
    writer.release_replaced()
    content = _content(images, name)
    assert len(content) == 8 * MIB
    assert content[MIB : MIB + 3] == b"new"
    assert content[6 * MIB : 6 * MIB + 4] == b"kept"


def test_aborted_whole_upload_keeps_the_volume(images: RbdVolumes) -> None:
    name = volume_name("abort")
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name) as image:
        image.write(b"old", 0)
    temp = images.create_upload_temp(name)
    writer = RbdWriter(images, temp, 0, 0, fresh=True, finish=lambda ok: images.remove_temp(temp))
    writer.write(b"new" * 1000)
    writer.abort()
    assert _content(images, name)[:3] == b"old"
    assert temp not in images._all_names()


def test_a_whole_upload_lands_in_no_image_made_again_under_its_name(
    images: RbdVolumes, ceph: CephCluster
) -> None:
    """Another client of the Ceph pool moves the volume a whole-volume upload replaces
    aside (``rbd rename``: Ceph refuses to remove it while the upload watches it) and
    makes a new image of that name: the swap would hide the new image (and remove it)
    and put the upload in its place. It is refused as a volume changed meanwhile is, both
    images as they were."""
    name = volume_name("remade")
    images.create(VolumeRequest(name, MIB, None))
    temp = images.create_upload_temp(name)
    aside = volume_name("aside")
    ceph.rbd("rename", f"{CEPH_POOL}/{name}", f"{CEPH_POOL}/{aside}")
    source = RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin")
    other = RbdVolumes.connect(source, base64.b64decode(ceph.admin_key))
    try:
        other.create(VolumeRequest(name, MIB, None))
        with other.image(name) as image:
            image.write(b"new volume", 0)
    finally:
        other.close()
    with pytest.raises(ErrorReport, match=rf"volume '{name}' is still in use\."):
        images.replace(temp, name)
    assert _content(images, name)[:10] == b"new volume"
    assert _content(images, aside) == bytes(MIB)
    assert not [n for n in images._all_names() if n.startswith(".virtvol-")]
    with images.image(aside, read_only=True) as image:
        assert list(image.watchers_list()) == []  # the upload's watch is gone


def test_zeroing_more_than_two_gib(images: RbdVolumes) -> None:
    name = volume_name("big")
    images.create(VolumeRequest(name, 3 << 30, None))
    with images.image(name) as image:
        image.write(b"x", (3 << 30) - 1)
        zero_range(image, 0, 3 << 30)  # librbd refuses one call of 2 GiB or more
        assert image.read((3 << 30) - 1, 1) == b"\0"


def test_an_image_open_here_is_hidden_not_removed(images: RbdVolumes) -> None:
    """Deleting a volume this daemon reads (a clone's source) keeps its data readable by
    the open handle, frees the name at once, and removes the image at the last close."""
    name = volume_name("held")
    data = os.urandom(6 * MIB)
    images.create(VolumeRequest(name, len(data), None))
    with images.image(name) as image:
        image.write(data, 0)
    with images.image(name, read_only=True) as reader:
        images.delete(name)
        assert name not in images.names()
        assert not images.exists(name)
        assert reader.read(0, len(data)) == data
        images.create(VolumeRequest(name, MIB, None))  # the name is free again
    assert [n for n in images._all_names() if n.startswith(".virtvol-")] == []
    images.delete(name)
    assert name not in images._all_names()


def test_deleting_an_open_image_with_snapshots_is_refused(
    images: RbdVolumes, ceph: CephCluster
) -> None:
    """As when nobody reads it: Ceph refuses, and the volume stays (not hidden for good)."""
    name = volume_name("heldsnap")
    images.create(VolumeRequest(name, MIB, None))
    ceph.rbd("snap", "create", f"{CEPH_POOL}/{name}@keep")
    with images.image(name, read_only=True), pytest.raises(ErrorReport) as refused:
        images.delete(name)
    assert refused.value.message.startswith(f"failed to remove volume '{CEPH_POOL}/{name}'")
    assert name in images.names()
    assert [n for n in images._all_names() if n.startswith(".virtvol-")] == []


def test_an_image_opened_as_it_is_deleted_is_refused(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The delete runs whole between the open of a read handle and its counting: the
    # handle must not go on reading the removed image (which reads as zeros).
    name = volume_name("opened-while-deleted")
    images.create(VolumeRequest(name, MIB, None))
    real_id_of = rbdvolumes._id_of
    deleted: list[bool] = []

    def delete_first(image: object) -> str:
        if not deleted:
            deleted.append(True)
            images.delete(name)
        return real_id_of(image)

    monkeypatch.setattr(rbdvolumes, "_id_of", delete_first)
    with pytest.raises(ErrorReport, match="no storage vol with matching name"):
        images.close_image(images.open_image(name, read_only=True))
    assert deleted


def test_a_swap_the_cluster_stops_halfway_is_finished_by_the_next_start(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload's rename fails, and so does the undo of the volume's: the client gets
    the daemon's error, and the next pool start gives the volume its image back."""
    name = volume_name("halfway")
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name) as image:
        image.write(b"old", 0)
    temp = images.create_upload_temp(name)
    binding = images._rbd

    class RenamesOnlyTheVolume:
        def __getattr__(self, attribute: str) -> object:
            return getattr(binding.RBD(), attribute)

        def rename(self, ioctx: object, old: str, new: str) -> None:
            if old != name:
                raise OSError(errno.EIO, "the cluster went away")
            binding.RBD().rename(ioctx, old, new)

    class Binding:
        RBD = RenamesOnlyTheVolume

        def __getattr__(self, attribute: str) -> object:
            return getattr(binding, attribute)

    monkeypatch.setattr(images, "_rbd", Binding())
    with pytest.raises(ErrorReport) as failed:
        images.replace(temp, name)
    assert failed.value.message == f"cannot replace volume '{name}': Input/output error"
    monkeypatch.undo()
    assert name not in images.names()
    images.recover_after_crash()
    assert _content(images, name)[:3] == b"old"  # restored before the start returns
    assert images._sweeper is not None
    images._sweeper.join(60)  # the upload's image is removed beside the running pool
    assert not [n for n in images._all_names() if n.startswith(".virtvol-")]


def test_a_whole_upload_is_refused_once_the_volume_was_opened_for_writing_meanwhile(
    images: RbdVolumes, ceph: CephCluster
) -> None:
    """A guest (here another client) opens the volume for writing while a whole-volume
    upload runs: the swap would leave it writing into the hidden old image, every write
    after it lost. So the upload ends with libvirt's "in use" error, the volume keeps its
    content and the guest's writes, and no hidden image stays."""
    name = volume_name("guest")
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name) as image:
        image.write(b"old", 0)
    temp = images.create_upload_temp(name)
    outcome: list[bool] = []

    def finish(success: bool) -> Callable[[], None] | None:
        outcome.append(success)
        try:
            return images.replace(temp, name)
        except BaseException:
            images.remove_temp(temp)
            raise

    writer = RbdWriter(images, temp, 0, 0, fresh=True, finish=finish, keep=name)
    writer.write(b"new")
    source = RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin")
    guest = RbdVolumes.connect(source, base64.b64decode(ceph.admin_key))
    try:
        with guest.image(name) as disk:
            disk.write(b"guest", 3)
            with pytest.raises(ErrorReport) as refused:
                writer.commit()
            writer.abort()
            disk.write(b"later", 8)
    finally:
        guest.close()
    in_use = f"Requested operation is not valid: volume '{name}' is still in use."
    assert refused.value.message == in_use
    assert outcome == [True]
    assert _content(images, name)[:13] == b"oldguestlater"
    assert not [n for n in images._all_names() if n.startswith(".virtvol-")]
    with images.image(name, read_only=True) as image:
        assert "virtvol.swap" not in dict(image.metadata_list())


def _told(watch: rbdvolumes.ChangeWatch) -> None:
    """Wait until librbd's notification of a change has reached ``watch``: it is sent as
    the change is made, and heard a moment later."""
    assert watch._notified.wait(10)


def _uploads_told(images: RbdVolumes) -> None:
    """Wait until the watch of every running whole-volume upload has heard of a change."""
    for watch in list(images._change_watches.values()):
        _told(watch)


def _watches_made(monkeypatch: pytest.MonkeyPatch) -> list[rbdvolumes.ChangeWatch]:
    """The ``ChangeWatch`` objects made from here on, in order."""
    made: list[rbdvolumes.ChangeWatch] = []

    class Recorded(rbdvolumes.ChangeWatch):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(rbdvolumes, "ChangeWatch", Recorded)
    return made


def _whole_upload(images: RbdVolumes, name: str) -> tuple[RbdWriter, list[bool]]:
    """A whole-volume upload of ``name`` opened as the daemon opens one."""
    temp = images.create_upload_temp(name)
    outcome: list[bool] = []

    def finish(success: bool) -> Callable[[], None] | None:
        outcome.append(success)
        if success:
            return images.replace(temp, name)
        images.remove_temp(temp)
        return None

    return RbdWriter(images, temp, 0, 0, fresh=True, finish=finish, keep=name), outcome


@pytest.mark.parametrize("change", ["write", "resize"])
def test_a_whole_upload_is_refused_once_the_volume_was_changed_meanwhile(
    images: RbdVolumes, ceph: CephCluster, change: str
) -> None:
    """Another client of the Ceph pool (a guest gone since, another daemon's write in
    place) writes the volume or resizes it and closes it while a whole-volume upload
    runs: swapped in, the upload would drop that change without a word. It ends with
    libvirt's "in use" error, as a directory pool's does, and the volume keeps the
    change. Reading it meanwhile (a download) changes nothing."""
    name = volume_name("changed")
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name) as image:
        image.write(b"old", 0)
    writer, outcome = _whole_upload(images, name)
    writer.write(b"new")
    source = RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin")
    other = RbdVolumes.connect(source, base64.b64decode(ceph.admin_key))
    try:
        assert _read_all(other, name)  # a reader elsewhere
        with other.image(name) as disk:
            if change == "write":
                disk.write(b"guest", 3)
            else:
                disk.resize(2 * MIB)
    finally:
        other.close()
    _uploads_told(images)
    with pytest.raises(ErrorReport) as refused:
        writer.commit()
    writer.abort()
    in_use = f"Requested operation is not valid: volume '{name}' is still in use."
    assert refused.value.message == in_use
    assert outcome == [True]
    kept = _content(images, name)
    assert kept[:8] == b"oldguest" if change == "write" else len(kept) == 2 * MIB
    assert not [n for n in images._all_names() if n.startswith(".virtvol-")]


def test_a_clone_through_another_daemon_ends_a_whole_upload_as_in_use(
    images: RbdVolumes, ceph: CephCluster
) -> None:
    """A clone through another host takes a snapshot of its source, a change a
    whole-volume upload of it here hears of: swapped in, the upload would leave the
    snapshot with the old image. It ends as in use, the volume and the copy as they were,
    and no snapshot left."""
    name, copy = volume_name("cloned"), volume_name("copy")
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name) as image:
        image.write(b"old", 0)
    writer, outcome = _whole_upload(images, name)
    writer.write(b"new")
    other = _other_daemon(ceph)
    try:
        other.create_from(VolumeRequest(copy, None, None), name)
    finally:
        other.close()
    _uploads_told(images)
    with pytest.raises(ErrorReport) as refused:
        writer.commit()
    writer.abort()
    in_use = f"Requested operation is not valid: volume '{name}' is still in use."
    assert refused.value.message == in_use
    assert outcome == [True]
    assert _content(images, name)[:3] == b"old"
    assert _content(images, copy)[:3] == b"old"
    assert _snapshots(images, name) == []
    assert not [n for n in images._all_names() if n.startswith(".virtvol-")]
    images.delete(copy)
    images.delete(name)


def test_a_swap_that_cannot_tell_whether_the_volume_changed_lets_go_of_its_watch(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing look at the volume (the cluster went away) ends the upload and its watch:
    left behind, the watch would keep every daemon from removing or replacing the volume."""
    name = volume_name("lookfail")
    images.create(VolumeRequest(name, MIB, None))
    writer, _outcome = _whole_upload(images, name)
    writer.write(b"new")

    def broken(self: object, image: object) -> bool:
        raise OSError(errno.EIO, "the cluster went away")

    monkeypatch.setattr(rbdvolumes.ChangeWatch, "changed", broken)
    with pytest.raises(ErrorReport) as failed:
        writer.commit()
    writer.abort()
    assert failed.value.message == f"cannot replace volume '{name}': Input/output error"
    with images.image(name, read_only=True) as image:
        assert list(image.watchers_list()) == []
    assert _content(images, name) == bytes(MIB)


def test_only_this_daemons_own_watch_is_no_writer(images: RbdVolumes) -> None:
    """A watch's cookie is a number its client picks: another client's handle, a running
    guest's, may carry the cookie of one of this daemon's watches. Only the watch of
    this daemon's own connection is passed over; the other is a writer."""
    name = volume_name("cookie")
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name, read_only=True) as image:
        watch = rbdvolumes.ChangeWatch(images, image, name)
        try:
            assert images._writers_elsewhere(image) == 0
            (own,) = image.watchers_list()
            assert own["id"] == images.client_id

            class GuestAlike:
                def watchers_list(self) -> list[dict[str, Any]]:
                    return [own, {**own, "id": images.client_id + 1, "addr": "elsewhere"}]

            assert images._writers_elsewhere(GuestAlike()) == 1
        finally:
            watch.close()
    images.delete(name)


def test_a_watch_that_fails_to_close_outlives_what_may_call_it(
    ceph: CephCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librados stops a watch whose unwatch fails (a cluster that stops answering), but
    the binding then skips the wait for callbacks under way: the watch, which they call,
    is kept until the connection is shut down, and let go of then."""
    source = RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin")
    volumes = RbdVolumes.connect(source, base64.b64decode(ceph.admin_key))
    made: list[weakref.ref[Any]] = []

    class FailingToClose:
        def __init__(self, watch: Any) -> None:
            self._watch = watch

        def get_id(self) -> int:
            cookie: int = self._watch.get_id()
            return cookie

        def close(self) -> None:
            self._watch.close()
            raise OSError(errno.ETIMEDOUT, "unwatch error")

    class Pool:
        def __init__(self, ioctx: Any) -> None:
            self._ioctx = ioctx

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ioctx, name)

        def watch(self, *args: Any) -> FailingToClose:
            watch = FailingToClose(self._ioctx.watch(*args))
            made.append(weakref.ref(watch))
            return watch

    # The log's captured records would keep the watch (their error's traceback has it).
    monkeypatch.setattr(rbdvolumes.log, "propagate", False)
    name = volume_name("unwatch")
    volumes.create(VolumeRequest(name, MIB, None))
    ioctx = volumes._ioctx
    try:
        with volumes.image(name, read_only=True) as image:
            volumes._ioctx = Pool(ioctx)  # only what ChangeWatch asks of it
            watch = rbdvolumes.ChangeWatch(volumes, image, name)
            volumes._ioctx = ioctx
            watch.close()
        gc.collect()
        assert made[0]() is not None
        volumes.delete(name)
    finally:
        volumes.close()
    gc.collect()
    assert made[0]() is None


def test_a_whole_upload_read_meanwhile_is_swapped_in(images: RbdVolumes, ceph: CephCluster) -> None:
    """Readers elsewhere (downloads, another daemon's look at the volume) are no change."""
    name = volume_name("read")
    images.create(VolumeRequest(name, MIB, None))
    writer, outcome = _whole_upload(images, name)
    writer.write(b"new")
    source = RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin")
    other = RbdVolumes.connect(source, base64.b64decode(ceph.admin_key))
    try:
        assert _read_all(other, name)
        assert other.info(name)[0] == MIB
    finally:
        other.close()
    writer.commit()
    writer.release_replaced()
    assert outcome == [True]
    assert _content(images, name)[:3] == b"new"
    assert not [n for n in images._all_names() if n.startswith(".virtvol-")]


class _RemovalsAsked:
    """A daemon's Ceph binding that records the image removals it asks Ceph for."""

    def __init__(self, binding: Any) -> None:
        self._binding = binding
        self.asked: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._binding, name)

    def RBD(self) -> Any:
        rbd, asked = self._binding.RBD(), self.asked

        class Recording:
            def __getattr__(self, name: str) -> Any:
                return getattr(rbd, name)

            def remove(self, ioctx: Any, name: str, *args: Any, **kwargs: Any) -> None:
                asked.append(name)
                rbd.remove(ioctx, name, *args, **kwargs)

        return Recording()


def test_a_whole_upload_keeps_other_daemons_from_replacing_or_removing_its_volume(
    images: RbdVolumes, ceph: CephCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload's watch on its volume is a watcher every daemon of the Ceph pool sees.
    Ceph refuses to remove a watched image, but takes the image's exclusive lock to try,
    which ends the upload as in use: so the other daemon refuses the delete itself,
    without asking Ceph, and the upload goes on."""
    name = volume_name("watched")
    images.create(VolumeRequest(name, MIB, None))
    writer, outcome = _whole_upload(images, name)
    other = _other_daemon(ceph)
    binding = _RemovalsAsked(other._rbd)
    monkeypatch.setattr(other, "_rbd", binding)
    try:
        in_use = f"Requested operation is not valid: volume '{name}' is still in use."
        with pytest.raises(ErrorReport) as second:
            other.create_upload_temp(name)
        assert second.value.message == in_use
        with pytest.raises(ErrorReport) as removal:
            other.delete(name)
        assert removal.value.message == (
            f"failed to remove volume '{CEPH_POOL}/{name}': Device or resource busy"
        )
        assert binding.asked == []
    finally:
        other.close()
    writer.write(b"new")
    writer.commit()
    writer.release_replaced()
    assert outcome == [True]
    assert _content(images, name)[:3] == b"new"
    images.delete(name)


def _other_daemon(ceph: CephCluster) -> RbdVolumes:
    """The same Ceph pool as another daemon (another host) serves it."""
    source = RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin")
    return RbdVolumes.connect(source, base64.b64decode(ceph.admin_key))


def test_a_download_of_an_image_another_daemon_removed_meanwhile_fails(
    images: RbdVolumes, ceph: CephCluster
) -> None:
    """librbd reads zeros, without an error, from an image removed under an open handle;
    a daemon keeps the images it reads itself, but not those another daemon reads. So a
    download through one host of a volume deleted through another would end as if all
    were well, with zeros for the data: it fails at its end instead."""
    name = volume_name("gone")
    data = os.urandom(8 * MIB)
    images.create(VolumeRequest(name, len(data), None))
    with images.image(name) as image:
        image.write(data, 0)
    reader = RbdReader(images, name, 0, 0)
    buffer = bytearray(MIB)
    try:
        first = reader.next_chunk(buffer)
        assert first == Chunk(data=True, length=MIB)
        assert bytes(buffer) == data[:MIB]
        other = _other_daemon(ceph)
        try:
            other.delete(name)
        finally:
            other.close()
        with pytest.raises(ErrorReport) as failed:
            reader.read_pieces(bytearray(16 * MIB))  # the rest, and the end
    finally:
        reader.close()
    assert failed.value.message == (
        f"cannot read from stream: RBD image '{name}' was removed while it was read: "
        "No such file or directory"
    )


def test_a_clone_source_is_not_removed_by_another_daemon_meanwhile(
    images: RbdVolumes, ceph: CephCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clone watches its source while it copies it: another daemon refuses to remove
    it (Ceph would too, after taking the image's lock, which would end the clone as in
    use), so the copy is never left with zeros for the source's data, and goes on."""
    name, copy = volume_name("source"), volume_name("copy")
    images.create(VolumeRequest(name, 12 * MIB, None))
    data = os.urandom(MIB)
    with images.image(name) as image:  # two extents, 4 MiB objects: one copied before
        image.write(data, 0)
        image.write(data, 8 * MIB)
    copied = rbdvolumes.copy_range
    refusals: list[str] = []

    def copy_then_try_to_remove_the_source(
        source: object, target: object, start: int, end: int
    ) -> None:
        copied(source, target, start, end)
        if not refusals:
            other = _other_daemon(ceph)
            try:
                other.delete(name)
            except ErrorReport as exc:
                refusals.append(exc.message)
            finally:
                other.close()

    monkeypatch.setattr(rbdvolumes, "copy_range", copy_then_try_to_remove_the_source)
    images.create_from(VolumeRequest(copy, None, None), name)
    # Watched by the clone and with its snapshot: Ceph looks at the snapshots first.
    assert refusals == [f"failed to remove volume '{CEPH_POOL}/{name}': Directory not empty"]
    assert _content(images, copy) == _content(images, name)
    assert _snapshots(images, name) == []
    assert _content(images, name)[8 * MIB : 9 * MIB] == data
    images.delete(copy)
    images.delete(name)


def test_a_whole_upload_is_refused_for_an_image_in_a_group_or_mirrored(
    images: RbdVolumes,
) -> None:
    """A group (consistency-group snapshots) and mirroring hold the image by its id: the
    swap would leave them with the old image (which Ceph then cannot remove, while in a
    group) and the volume outside them. Written in place, the image keeps both."""
    binding, ioctx = images._rbd, images._ioctx
    rbd = binding.RBD()
    grouped, group = volume_name("grouped"), volume_name("group")
    images.create(VolumeRequest(grouped, MIB, None))
    rbd.group_create(ioctx, group)
    members = binding.Group(ioctx, group)
    members.add_image(ioctx, grouped)
    mirrored = volume_name("mirrored")
    features = binding.RBD_FEATURE_EXCLUSIVE_LOCK | binding.RBD_FEATURE_JOURNALING
    rbd.create(ioctx, mirrored, MIB, old_format=False, features=features)
    rbd.mirror_mode_set(ioctx, binding.RBD_MIRROR_MODE_IMAGE)
    try:
        with images.image(mirrored) as image:
            image.mirror_image_enable(binding.RBD_MIRROR_IMAGE_MODE_JOURNAL)
        with pytest.raises(ErrorReport) as in_group:
            images.create_upload_temp(grouped)
        assert in_group.value.message == (
            f"Requested operation is not valid: volume '{grouped}' is in the RBD group "
            f"'{group}', which a whole-volume upload would leave with the old image: "
            "upload with an offset or a length to write into it in place"
        )
        with pytest.raises(ErrorReport) as is_mirrored:
            images.create_upload_temp(mirrored)
        assert is_mirrored.value.message == (
            f"Requested operation is not valid: volume '{mirrored}' is mirrored, which a "
            "whole-volume upload would leave to the old image: upload with an offset or a "
            "length to write into it in place"
        )
        assert not [n for n in images._all_names() if n.startswith(".virtvol-upload-")]
    finally:
        with images.image(mirrored) as image:
            image.mirror_image_disable(True)
        rbd.mirror_mode_set(ioctx, binding.RBD_MIRROR_MODE_DISABLED)
        members.remove_image(ioctx, grouped)
        rbd.group_remove(ioctx, group)
    images.delete(grouped)
    images.delete(mirrored)


def test_the_clean_up_removes_only_names_the_daemon_makes(images: RbdVolumes) -> None:
    """Another client's image whose name merely starts like the daemon's hidden ones
    (``rbd create .virtvol-old-backup``) is no leftover: only the names the daemon
    makes, the prefix and 16 hex digits, are removed at a pool start."""
    rbd = images._rbd.RBD()
    theirs = [".virtvol-old-backup", ".virtvol-upload-" + "0" * 15, ".virtvol-old-" + "A" * 16]
    ours = ".virtvol-old-" + os.urandom(8).hex()
    for name in [*theirs, ours]:
        rbd.create(images._ioctx, name, MIB, old_format=False)
    try:
        images.recover_after_crash()
        assert images._sweeper is not None
        images._sweeper.join(60)
        left = images._all_names()
        assert ours not in left
        assert set(theirs) <= set(left)
    finally:
        for name in theirs:
            rbd.remove(images._ioctx, name)


def test_deleting_an_image_read_here_and_open_elsewhere_is_refused(
    images: RbdVolumes, ceph: CephCluster
) -> None:
    """Ceph refuses to remove an image a guest has open (or one in a group): the delete of
    one this daemon also reads may not hide it instead, to remove it behind the guest's
    back once both are done. It fails as Ceph's removal does, the volume untouched."""
    name = volume_name("guestdisk")
    images.create(VolumeRequest(name, MIB, None))
    other = _other_daemon(ceph)
    try:
        with images.image(name, read_only=True), other.image(name) as guest:
            guest.write(b"guest", 0)
            with pytest.raises(ErrorReport) as refused:
                images.delete(name)
            assert refused.value.message == (
                f"failed to remove volume '{CEPH_POOL}/{name}': Device or resource busy"
            )
    finally:
        other.close()
    assert name in images.names()
    assert _content(images, name)[:5] == b"guest"
    images.delete(name)


@pytest.mark.parametrize("holder", ["guest", "group"])
def test_a_delete_with_snapshots_ceph_refuses_keeps_the_snapshots(
    images: RbdVolumes, ceph: CephCluster, holder: str
) -> None:
    """A volume a guest has open for writing, or in an RBD group, is not removed by Ceph,
    snapshots or not: removing its snapshots first would lose them for a delete that then
    fails. It fails before, as Ceph's removal does, the snapshots kept."""
    name = volume_name("snapheld")
    images.create(VolumeRequest(name, MIB, None))
    ceph.rbd("snap", "create", f"{CEPH_POOL}/{name}@keep")
    ceph.rbd("snap", "protect", f"{CEPH_POOL}/{name}@keep")
    binding, ioctx = images._rbd, images._ioctx
    group = volume_name("snapgroup")
    other = _other_daemon(ceph)
    try:
        if holder == "guest":
            guest = other.open_image(name)
            guest.write(b"guest", 0)
            busy = "Device or resource busy"
        else:
            binding.RBD().group_create(ioctx, group)
            binding.Group(ioctx, group).add_image(ioctx, name)
            busy = "Too many links"
        try:
            with pytest.raises(ErrorReport) as refused:
                images.delete(name, with_snapshots=True)
            assert refused.value.message == (
                f"failed to remove volume '{CEPH_POOL}/{name}': {busy}"
            )
            with images.image(name, read_only=True) as image:
                assert [s["name"] for s in image.list_snaps()] == ["keep"]
                assert image.is_protected_snap("keep")
        finally:
            if holder == "guest":
                other.close_image(guest)
            else:
                binding.Group(ioctx, group).remove_image(ioctx, name)
                binding.RBD().group_remove(ioctx, group)
    finally:
        other.close()
    images.delete(name, with_snapshots=True)
    assert name not in images._all_names()


def test_an_image_name_that_is_no_text_hides_nothing(images: RbdVolumes) -> None:
    """Another Ceph client may name an image with bytes that are no UTF-8 (Ceph's binding
    then fails the whole listing): it is no volume, and every other image is still
    listed, and still cleaned up after a crash."""
    rbd = images._rbd.RBD()
    not_text = volume_name("bad").encode() + b"\xff"
    entry = rbdvolumes._ceph_string(not_text) + rbdvolumes._ceph_string(b"0bad")
    volume = volume_name("good")
    leftover = ".virtvol-upload-" + os.urandom(8).hex()
    images.create(VolumeRequest(volume, MIB, None))
    rbd.create(images._ioctx, leftover, MIB, old_format=False)
    # The binding takes str names, encoded as UTF-8: the one Ceph's CLI makes is bytes.
    images._ioctx.execute("rbd_directory", "rbd", "dir_add_image", entry)
    try:
        assert volume in images.names()
        images.recover_after_crash()
        assert images._sweeper is not None
        images._sweeper.join(60)
        assert leftover not in images._all_names()
    finally:
        images._ioctx.execute("rbd_directory", "rbd", "dir_remove_image", entry)
    images.delete(volume)


def test_a_snapshot_name_that_is_no_text_is_kept_unless_asked_for(images: RbdVolumes) -> None:
    """Another Ceph client may name a snapshot with bytes that are no UTF-8 (Ceph's binding
    then fails the whole listing of the image's snapshots): the clean-up at pool start
    still removes a clone's snapshot a crash left beside it and keeps it, a delete is
    refused as for any volume with snapshots, and a delete with its snapshots removes it,
    protected, with the rest."""
    name = volume_name("snapped")
    not_text = b"daily-\xff"
    ours = ".virtvol-clone-" + os.urandom(8).hex()
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name) as image:
        # The binding takes str names, encoded as UTF-8, or bytes as they are.
        for snapshot in (not_text, ours, "weekly"):  # listed in this order
            image.create_snap(snapshot)
        image.protect_snap(not_text)
    images.recover_after_crash()
    assert images._sweeper is not None
    images._sweeper.join(60)
    with images.image(name, read_only=True) as image:
        kept = [image.snap_exists(snapshot) for snapshot in (not_text, ours, "weekly")]
    assert kept == [True, False, True]
    with pytest.raises(ErrorReport) as refused:
        images.delete(name)
    assert refused.value.message == (
        f"failed to remove volume '{CEPH_POOL}/{name}': Directory not empty"
    )
    images.delete(name, with_snapshots=True)
    assert name not in images._all_names()


class _ListingFails:
    """An image whose snapshot listing fails as Ceph's binding fails it over a name that
    is no UTF-8; all else is the image's."""

    def __init__(self, image: Any) -> None:
        self._image = image

    def list_snaps(self) -> Any:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._image, name)


def test_snapshots_read_from_the_header_are_those_the_binding_lists(
    images: RbdVolumes,
) -> None:
    """Read from the image's header object, the snapshots are those the binding lists, in
    its order, each with its own namespace: a removed one a clone still depends on (in
    Ceph's trash) among those of users, with ids out of the order they were made in."""
    name = volume_name("listed")
    clone = volume_name("listed-clone")
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name) as image:
        for snapshot in ("one", "two", "three", "four"):
            image.create_snap(snapshot)
        image.protect_snap("one")
    images._cluster.conf_set("rbd_default_clone_format", "2")  # clones of any snapshot
    images._rbd.RBD().clone(images._ioctx, name, "three", images._ioctx, clone)
    with images.image(name) as image:
        for snapshot in ("three", "two"):  # "three" goes to the trash: a clone has it
            image.remove_snap(snapshot)
        image.create_snap("five")
        listed = rbdvolumes._snapshots(images._ioctx, image)
        read = rbdvolumes._snapshots(images._ioctx, _ListingFails(image))
    user, trash = (
        images._rbd.RBD_SNAP_NAMESPACE_TYPE_USER,
        images._rbd.RBD_SNAP_NAMESPACE_TYPE_TRASH,
    )
    assert [namespace for _, namespace in listed] == [user, trash, user, user]
    assert [snapshot for snapshot, namespace in listed if namespace == user] == [
        b"one",
        b"four",
        b"five",
    ]
    assert read == listed
    images.delete(clone)
    images.delete(name, with_snapshots=True)


def _snapshots(volumes: RbdVolumes, name: str) -> list[str]:
    with volumes.image(name, read_only=True) as image:
        return [snapshot["name"] for snapshot in image.list_snaps()]


@pytest.mark.parametrize("writer", ["open", "done"])
def test_a_clone_of_an_image_written_elsewhere_meanwhile_copies_it_as_of_a_snapshot(
    images: RbdVolumes, ceph: CephCluster, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    """A clone copies the source's bytes one extent after another, which a guest (or any
    other client) may write meanwhile: it reads a snapshot taken as it starts, as
    libvirt's rbd backend clones from one. A source open for writing elsewhere (a guest
    holding the image's exclusive lock, which the snapshot asks it for) or written while
    it is copied is copied as it was at the snapshot, which is removed afterwards."""
    name, copy = volume_name("source"), volume_name("copy")
    images.create(VolumeRequest(name, 12 * MIB, None))
    before = os.urandom(MIB)
    with images.image(name) as image:
        image.write(os.urandom(MIB), 0)
        image.write(before, 8 * MIB)
    other = _other_daemon(ceph)
    guest = other.open_image(name) if writer == "open" else None
    if guest is not None:
        guest.write(b"early", 4 * MIB)  # the guest takes the image's exclusive lock
    start_content = _content(images, name)
    copied = rbdvolumes.copy_range

    def copy_while_the_guest_writes(source: object, target: object, start: int, end: int) -> None:
        copied(source, target, start, end)
        if start == 0:
            if guest is not None:
                guest.write(b"guest", 8 * MIB)
            else:
                with other.image(name) as disk:
                    disk.write(b"guest", 8 * MIB)

    monkeypatch.setattr(rbdvolumes, "copy_range", copy_while_the_guest_writes)
    try:
        images.create_from(VolumeRequest(copy, None, None), name)
    finally:
        if guest is not None:
            other.close_image(guest)
        other.close()
    assert _content(images, copy) == start_content
    assert _content(images, name)[8 * MIB : 8 * MIB + 5] == b"guest"
    assert _snapshots(images, name) == []
    images.delete(copy)
    images.delete(name)


def test_a_clone_that_fails_removes_its_snapshot_and_its_copy(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy reads a snapshot of the source made for it alone; a copy that fails
    leaves neither that snapshot (Ceph would then refuse to remove the volume) nor a
    half-made copy."""
    name, copy = volume_name("source"), volume_name("copy")
    images.create(VolumeRequest(name, 8 * MIB, None))
    with images.image(name) as image:
        image.write(os.urandom(MIB), 0)
    seen: list[list[str]] = []

    def broken(source: object, target: object, start: int, end: int) -> None:
        seen.append(_snapshots(images, name))
        raise OSError(errno.EIO, "broken")

    monkeypatch.setattr(rbdvolumes, "copy_range", broken)
    with pytest.raises(OSError, match="broken"):
        images.create_from(VolumeRequest(copy, None, None), name)
    assert len(seen) == 1
    assert [rbdvolumes._is_hidden_name(s, ".virtvol-clone-") for s in seen[0]] == [True]
    assert _snapshots(images, name) == []
    assert copy not in images._all_names()
    images.delete(name)


def test_a_clone_whose_snapshot_another_client_removed_meanwhile_fails(
    images: RbdVolumes, ceph: CephCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot removed under the copy (``rbd snap rm`` by hand) may read as zeros
    from then on: the clone fails, its copy removed, rather than end with a copy that
    lacks data."""
    name, copy = volume_name("source"), volume_name("copy")
    images.create(VolumeRequest(name, 12 * MIB, None))
    with images.image(name) as image:  # two extents, 4 MiB objects
        image.write(os.urandom(MIB), 0)
        image.write(os.urandom(MIB), 8 * MIB)
    removed: list[str] = []
    copied = rbdvolumes.copy_range

    def copy_as_the_snapshot_goes(source: object, target: object, start: int, end: int) -> None:
        if not removed:
            removed.extend(_snapshots(images, name))
            for snapshot in removed:
                ceph.rbd("snap", "rm", f"{CEPH_POOL}/{name}@{snapshot}")
        copied(source, target, start, end)

    monkeypatch.setattr(rbdvolumes, "copy_range", copy_as_the_snapshot_goes)
    with pytest.raises(ErrorReport):
        images.create_from(VolumeRequest(copy, None, None), name)
    assert len(removed) == 1
    assert copy not in images._all_names()
    assert _snapshots(images, name) == []
    images.delete(name)


def test_a_pool_stopped_during_a_clone_keeps_no_snapshot_of_the_source(
    images: RbdVolumes, ceph: CephCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool stopped while a clone copies (``pool-destroy``, the daemon's stop, which
    waits for the copy's thread) keeps its connection until the copy is done, and the
    clone's snapshot of the source is removed all the same."""
    name, copy = volume_name("source"), volume_name("copy")
    other = _other_daemon(ceph)
    try:
        other.create(VolumeRequest(name, 8 * MIB, None))
        with other.image(name) as image:
            image.write(os.urandom(MIB), 0)
        seen: list[list[str]] = []
        copied = rbdvolumes.copy_range

        def copy_as_the_pool_stops(source: object, target: object, start: int, end: int) -> None:
            seen.append(_snapshots(other, name))
            images.close()
            copied(source, target, start, end)

        monkeypatch.setattr(rbdvolumes, "copy_range", copy_as_the_pool_stops)
        images.create_from(VolumeRequest(copy, None, None), name)
        assert [[rbdvolumes._is_hidden_name(s, ".virtvol-clone-") for s in n] for n in seen] == [
            [True]
        ]
        assert _snapshots(other, name) == []
        assert _content(other, copy) == _content(other, name)
        other.delete(copy)
        other.delete(name)
    finally:
        other.close()


def test_a_clone_walks_its_source_in_windows(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy asks the object map for the source's extents a window at a time (as a
    download does), never for the whole image at once: the extents held stay those of
    one window, whatever the image's size. Data on either side of a window's edge, and
    in the last byte, is copied, and nothing else is written."""
    name, copy = volume_name("windows"), volume_name("copy")
    size = 3 * rbdvolumes.EXTENT_WINDOW
    images.create(VolumeRequest(name, size, None))
    spots = [0, rbdvolumes.EXTENT_WINDOW - 1, rbdvolumes.EXTENT_WINDOW, size - 1]
    with images.image(name) as image:
        for at in spots:
            image.write(b"\xff", at)
    queries = _counted_queries(monkeypatch, rbdvolumes)
    images.create_from(VolumeRequest(copy, None, None), name)
    monkeypatch.undo()
    assert len(queries) > 1
    assert max(queries) < size
    with images.image(name, read_only=True) as source, images.image(copy) as target:
        extents = rbdvolumes.data_extents(source, 0, size)
        assert rbdvolumes.data_extents(target, 0, size) == extents
        for start, end in extents:
            assert target.read(start, end - start) == source.read(start, end - start)
    images.delete(copy)
    images.delete(name)


def test_the_clean_up_removes_only_clone_snapshots_nobody_uses(
    images: RbdVolumes, ceph: CephCluster
) -> None:
    """A clone's snapshot a crash left is removed at the next pool start, and so is a
    hidden image that has one (Ceph removes no image with snapshots); not another
    client's snapshot whose name merely starts alike, and not one on an image open for
    writing (a clone running through another daemon watches its source; a guest's disk
    keeps it until it is closed)."""
    idle, busy = volume_name("idle"), volume_name("busy")
    ours = ".virtvol-clone-" + os.urandom(8).hex()
    theirs = [".virtvol-clone-backup", ".virtvol-clone-" + "A" * 16, "daily"]
    for name in (idle, busy):
        images.create(VolumeRequest(name, MIB, None))
        with images.image(name) as image:
            for snapshot in [ours, *theirs]:
                image.create_snap(snapshot)
    hidden = ".virtvol-old-" + os.urandom(8).hex()  # a clone's source a swap hid
    rbd = images._rbd
    rbd.RBD().create(images._ioctx, hidden, MIB, old_format=False)
    with rbd.Image(images._ioctx, hidden) as image:
        image.create_snap(".virtvol-clone-" + os.urandom(8).hex())
    other = _other_daemon(ceph)
    try:
        with other.image(busy):
            images.recover_after_crash()
            assert images._sweeper is not None
            images._sweeper.join(60)
    finally:
        other.close()
    assert hidden not in images._all_names()
    assert sorted(_snapshots(images, idle)) == sorted(theirs)
    assert sorted(_snapshots(images, busy)) == sorted([ours, *theirs])
    images.delete(idle, with_snapshots=True)
    images.delete(busy, with_snapshots=True)


def test_the_clean_up_removes_the_rest_after_a_snapshot_its_clone_removed(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone may end, removing its snapshot, between the clean-up's look at the image
    and its removals: the snapshots a crash left after that one are removed all the same."""
    name = volume_name("ended")
    ended, left = (".virtvol-clone-" + os.urandom(8).hex() for _ in range(2))
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name) as image:
        for snapshot in (ended, left):  # listed in this order
            image.create_snap(snapshot)
    listed = rbdvolumes._clone_snapshots

    def the_clone_ends_after_the_look(ioctx: Any, image: Any) -> list[str]:
        found = listed(ioctx, image)
        if ended in found:
            with images.image(name) as writable:
                writable.remove_snap(ended)
        return found

    monkeypatch.setattr(rbdvolumes, "_clone_snapshots", the_clone_ends_after_the_look)
    images.recover_after_crash()
    assert images._sweeper is not None
    images._sweeper.join(60)
    monkeypatch.undo()
    assert _snapshots(images, name) == []
    images.delete(name)


def test_the_clean_up_keeps_a_clone_snapshot_that_is_protected_or_has_children(
    images: RbdVolumes,
) -> None:
    """A snapshot named as a clone's that is protected, or that has a child, is another
    client's (a clone protects its snapshot never, and makes no child of it): the clean-up
    keeps it (librbd would move one with a clone v2 child to its trash) and still removes
    the leftovers after it on the same image."""
    name, child = volume_name("parent"), volume_name("child")
    protected, parent, left = (".virtvol-clone-" + os.urandom(8).hex() for _ in range(3))
    images.create(VolumeRequest(name, MIB, None))
    with images.image(name) as image:
        for snapshot in (protected, parent, left):  # listed in this order
            image.create_snap(snapshot)
        image.protect_snap(protected)
    # Clone v2: a child of an unprotected snapshot, which librbd then does not refuse to
    # remove, but moves to its trash.
    images._cluster.conf_set("rbd_default_clone_format", "2")
    images._rbd.RBD().clone(images._ioctx, name, parent, images._ioctx, child)
    images.recover_after_crash()
    assert images._sweeper is not None
    images._sweeper.join(60)
    assert _snapshots(images, name) == [protected, parent]
    images._rbd.RBD().remove(images._ioctx, child)
    with images.image(name) as image:
        image.unprotect_snap(protected)
    images.delete(name, with_snapshots=True)


def test_a_clone_and_a_whole_upload_of_one_volume_through_one_daemon_both_succeed(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon's own watches are no writers elsewhere, and its own swap no change: a
    clone taken while a whole-volume upload of its source runs (and swaps) copies the
    old content whole, and the upload is swapped in, as in a directory pool."""
    name, early, late = volume_name("both"), volume_name("early"), volume_name("late")
    old = os.urandom(MIB)
    images.create(VolumeRequest(name, 12 * MIB, None))
    with images.image(name) as image:  # two extents, 4 MiB objects
        image.write(old, 0)
        image.write(old, 8 * MIB)
    writer, outcome = _whole_upload(images, name)
    writer.write(b"new")
    images.create_from(VolumeRequest(early, None, None), name)  # while the upload runs
    copied = rbdvolumes.copy_range

    def copy_while_the_upload_swaps(source: object, target: object, start: int, end: int) -> None:
        copied(source, target, start, end)
        if start == 0:
            writer.commit()

    monkeypatch.setattr(rbdvolumes, "copy_range", copy_while_the_upload_swaps)
    images.create_from(VolumeRequest(late, None, None), name)
    monkeypatch.undo()
    writer.release_replaced()
    assert outcome == [True]
    assert _content(images, name)[:3] == b"new"
    for copy in (early, late):
        content = _content(images, copy)
        assert content[:MIB] == old
        assert content[8 * MIB : 9 * MIB] == old
        images.delete(copy)


def test_a_removal_cut_short_is_finished_by_the_next_start(images: RbdVolumes) -> None:
    """A removal stopped halfway (the pool stopped, the daemon was killed) leaves an image
    that is still listed but no longer opens: the next start's sweep removes it all the same."""
    rbd = images._rbd
    leftover = f".virtvol-upload-{os.urandom(8).hex()}"
    # No object map: librbd removes it object by object, reporting each step.
    rbd.RBD().create(images._ioctx, leftover, 64 << 30, features=rbd.RBD_FEATURE_LAYERING)
    steps: list[int] = []

    def stop_after_three(done: int, total: int) -> int:
        steps.append(done)
        return -errno.ECANCELED if len(steps) > 3 else 0

    with pytest.raises(rbd.OperationCanceled):
        rbd.RBD().remove(images._ioctx, leftover, on_progress=stop_after_three)
    assert leftover in images._all_names()
    with pytest.raises(rbd.ImageNotFound):
        rbd.Image(images._ioctx, leftover, read_only=True)
    images.recover_after_crash()
    assert images._sweeper is not None
    images._sweeper.join(60)
    assert leftover not in images._all_names()


def test_an_image_listed_before_it_opens_is_left_to_its_maker(
    images: RbdVolumes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """librbd lists a new image a moment before it can be opened (another host's upload
    creating its image): a start's sweep that finds it not opening yet, then opening, keeps
    it, and only one that still does not open is taken for a removal cut short."""
    monkeypatch.setattr(rbdvolumes, "CREATION_GRACE", 0.1)
    rbd = images._rbd
    starting = f".virtvol-upload-{os.urandom(8).hex()}"
    rbd.RBD().create(images._ioctx, starting, MIB)
    opens: list[str] = []

    def not_yet_at_first(ioctx: object, name: str, **options: object) -> object:
        opens.append(name)
        if name == starting and opens.count(name) == 1:
            raise rbd.ImageNotFound("not made yet")
        return rbd.Image(ioctx, name, **options)

    class Binding:
        Image = staticmethod(not_yet_at_first)

        def __getattr__(self, attribute: str) -> object:
            return getattr(rbd, attribute)

    monkeypatch.setattr(images, "_rbd", Binding())
    # The "virtvol" logger's own level may be set by a daemon or command line run in
    # this process before; its INFO records must get through.
    caplog.set_level("INFO", logger="virtvol")
    images.recover_after_crash()
    assert images._sweeper is not None
    images._sweeper.join(30)
    monkeypatch.undo()
    assert starting in images._all_names()
    assert f"kept {starting}: it was being made" in caplog.text
    images.remove_temp(starting)
