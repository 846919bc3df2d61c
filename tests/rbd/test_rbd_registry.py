"""The rbd pool through the storage registry (the daemon's layer under the wire), with
faults the cluster would have to be made to show: injected into the binding."""

from __future__ import annotations

import base64
import dataclasses
import errno
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.rbd.conftest import SECRET_UUID, rbd_pool_xml, volume_name
from virtvol.daemon.storage import PoolRef, StorageRegistry
from virtvol.daemon.storage.model import PoolEvent, PoolState
from virtvol.protocol.errors import ErrorReport

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tools.ceph_cluster import CephCluster
    from virtvol.daemon.storage.model import VolumeRef
    from virtvol.daemon.storage.poolxml import PoolRuntime
    from virtvol.daemon.storage.rbdtransfer import RbdWriter
    from virtvol.daemon.storage.rbdvolumes import RbdVolumes

MIB = 1 << 20


@pytest.fixture
def registry(ceph: CephCluster, tmp_path: Path) -> Iterator[tuple[StorageRegistry, PoolRef]]:
    """A registry with the session's Ceph pool as its started rbd pool."""
    registry = StorageRegistry(tmp_path / "state", sync_uploads=False)
    try:
        registry.secrets.define_xml(
            f"<secret ephemeral='yes' private='yes'><uuid>{SECRET_UUID}</uuid>"
            "<usage type='ceph'><name>client.admin secret</name></usage></secret>"
        )
        registry.secrets.set_value(uuid.UUID(SECRET_UUID).bytes, base64.b64decode(ceph.admin_key))
        ref = registry.define_pool_xml(rbd_pool_xml(ceph))
        registry.start_pool(ref)
        yield registry, ref
    finally:
        registry.close()


def _volume_holding_old(
    storage: StorageRegistry, ref: PoolRef, name: str
) -> tuple[VolumeRef, RbdVolumes]:
    """Volume ``name`` of 1 MiB made in the pool, b"old" written at its start; with the
    pool's images."""
    volume = storage.create_volume_xml(
        ref, f"<volume><name>{name}</name><capacity>{MIB}</capacity></volume>"
    )
    images = storage._pool(ref).rbd
    assert images is not None
    with images.image(name) as image:
        image.write(b"old", 0)
    return volume, images


def test_a_swap_whose_undo_fails_keeps_what_the_next_start_needs(
    registry: tuple[StorageRegistry, PoolRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload's rename fails after the volume's image was hidden, and so does the undo:
    the upload image must stay, since the next pool start gives the volume its image back
    only while the upload image is there (else it takes the hidden image for a leftover
    and removes it: the volume and its content gone)."""
    storage, ref = registry
    name = volume_name("undo")
    volume, images = _volume_holding_old(storage, ref, name)
    writer = storage.open_volume_upload(volume, 0, 0)
    writer.write(b"new")
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
        writer.commit()
    assert failed.value.message == f"cannot replace volume '{name}': Input/output error"
    writer.abort()
    monkeypatch.undo()
    assert name not in images.names()
    storage.destroy_pool(ref)
    storage.start_pool(ref)
    restarted = storage._pool(ref).rbd
    assert restarted is not None
    with restarted.image(name, read_only=True) as image:
        assert image.read(0, 3) == b"old"
        assert image.size() == MIB
    assert restarted._sweeper is not None
    restarted._sweeper.join(60)  # the upload's image is removed beside the running pool
    assert not [n for n in restarted._all_names() if n.startswith(".virtvol-")]


@pytest.mark.parametrize("whole", [True, False])
def test_an_upload_into_a_pool_stopped_while_it_opens_is_refused(
    registry: tuple[StorageRegistry, PoolRef], monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    """The pool is stopped after the upload found it an rbd pool, before the volume is held
    busy (nothing then keeps the stop out). A download still reading an image keeps the
    stopped pool's connection: an upload through it would write the volume of a stopped
    pool, which libvirtd refuses."""
    storage, ref = registry
    name = volume_name("stopped")
    volume, images = _volume_holding_old(storage, ref, name)
    reading = images.open_image(name, read_only=True)  # a download's
    opening = storage._open_rbd_upload

    def stopped_first(volume: VolumeRef, offset: int, length: int) -> RbdWriter:
        storage.destroy_pool(ref)
        return opening(volume, offset, length)

    monkeypatch.setattr(storage, "_open_rbd_upload", stopped_first)
    try:
        with pytest.raises(ErrorReport) as refused:
            storage.open_volume_upload(volume, 0, 0 if whole else 3)
    finally:
        images.close_image(reading)
    assert refused.value.message == (
        "Requested operation is not valid: storage pool 'ceph' is not active"
    )
    monkeypatch.undo()
    storage.start_pool(ref)
    restarted = storage._pool(ref).rbd
    assert restarted is not None
    with restarted.image(name, read_only=True) as image:
        assert image.read(0, 3) == b"old"
    assert not [n for n in restarted._all_names() if n.startswith(".virtvol-")]


def test_a_volume_looked_at_as_its_pool_stops_is_refused_in_libvirts_words(
    registry: tuple[StorageRegistry, PoolRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    """vol-info found the pool running and took its images, then the pool was stopped
    before the image was opened (outside the registry's lock): its connection is gone, and
    the call is refused as one on a stopped pool is."""
    storage, ref = registry
    name = volume_name("info")
    volume = storage.create_volume_xml(
        ref, f"<volume><name>{name}</name><capacity>{MIB}</capacity></volume>"
    )
    images = storage._pool(ref).rbd
    assert images is not None
    if images._sweeper is not None:
        # The start's clean-up of other tests' volumes would keep the connection a while.
        images._sweeper.join(60)
    looking = images.info

    def stopped_first(image: str) -> tuple[int, int]:
        storage.destroy_pool(ref)
        return looking(image)

    monkeypatch.setattr(images, "info", stopped_first)
    with pytest.raises(ErrorReport) as refused:
        storage.volume_info(volume)
    assert refused.value.message == (
        "Requested operation is not valid: storage pool 'ceph' is not active"
    )
    monkeypatch.undo()
    storage.start_pool(ref)
    storage.delete_volume(volume)


def test_a_pools_info_read_as_it_stops_gives_what_the_call_found(
    registry: tuple[StorageRegistry, PoolRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pool-info found the pool running, then the pool was stopped before its sizes were
    read from the cluster (outside the registry's lock): the call answers as of when it
    found the pool, with the sizes last read, instead of failing as a cluster that cannot
    be asked would."""
    storage, ref = registry
    images = storage._pool(ref).rbd
    assert images is not None
    if images._sweeper is not None:
        images._sweeper.join(60)  # it would keep the connection a while
    found = storage.pool_info(ref)
    reading = images.runtime

    def stopped_first() -> PoolRuntime:
        storage.destroy_pool(ref)
        return reading()

    monkeypatch.setattr(images, "runtime", stopped_first)
    info = storage.pool_info(ref)
    assert info.state is PoolState.RUNNING
    assert info.capacity == found.capacity
    monkeypatch.undo()
    assert storage.pool_info(ref).state is PoolState.INACTIVE
    storage.start_pool(ref)


def test_volumes_listed_as_their_pool_stops_are_refused_in_libvirts_words(
    registry: tuple[StorageRegistry, PoolRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    """vol-list found the pool running, then the pool was stopped before the cluster was
    asked for the images (outside the registry's lock): refused as a call on a stopped
    pool is, not as a cluster that failed to answer."""
    storage, ref = registry
    images = storage._pool(ref).rbd
    assert images is not None
    if images._sweeper is not None:
        images._sweeper.join(60)  # it would keep the connection a while
    listing = images.names

    def stopped_first() -> list[str]:
        storage.destroy_pool(ref)
        return listing()

    monkeypatch.setattr(images, "names", stopped_first)
    with pytest.raises(ErrorReport) as refused:
        storage.list_volume_names(ref, 10)
    assert refused.value.message == (
        "Requested operation is not valid: storage pool 'ceph' is not active"
    )
    monkeypatch.undo()
    storage.start_pool(ref)


def test_a_pools_info_read_as_it_stops_keeps_its_sizes_when_redefined_meanwhile(
    registry: tuple[StorageRegistry, PoolRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, for a pool defined anew while it ran, whose stop drops the run's sizes
    (the new definition's next start reads its own): the call found the pool running
    with sizes, and answers those, not a running pool of no size."""
    storage, ref = registry
    pool = storage._pool(ref)
    images = pool.rbd
    assert images is not None
    if images._sweeper is not None:
        images._sweeper.join(60)  # it would keep the connection a while
    storage.define_pool_xml(storage.pool_xml(ref))  # reads the sizes too
    assert pool.runtime is not None
    # A young test cluster reports no space yet: sizes as a later read gives them.
    pool.runtime = dataclasses.replace(
        pool.runtime, capacity=64 * MIB, allocation=3 * MIB, available=61 * MIB
    )
    reading = images.runtime

    def stopped_first() -> PoolRuntime:
        storage.destroy_pool(ref)
        return reading()

    monkeypatch.setattr(images, "runtime", stopped_first)
    info = storage.pool_info(ref)
    assert info.state is PoolState.RUNNING
    assert (info.capacity, info.allocation, info.available) == (64 * MIB, 3 * MIB, 61 * MIB)
    monkeypatch.undo()
    assert storage.pool_info(ref).state is PoolState.INACTIVE
    storage.start_pool(ref)


def test_a_pool_refreshed_as_it_stops_is_refused_and_no_refresh_is_told(
    registry: tuple[StorageRegistry, PoolRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pool-refresh found the pool running, then the pool was stopped before its sizes
    came back from the cluster: nothing was refreshed, so the call is refused as one on a
    stopped pool is, and clients hear of the stop, not of a refresh after it."""
    storage, ref = registry
    images = storage._pool(ref).rbd
    assert images is not None
    if images._sweeper is not None:
        images._sweeper.join(60)  # it would keep the connection a while
    told: list[PoolEvent] = []
    storage.on_event = lambda _, event: told.append(event)
    reading = images.runtime

    def stopped_first() -> PoolRuntime:
        storage.destroy_pool(ref)
        return reading()

    monkeypatch.setattr(images, "runtime", stopped_first)
    with pytest.raises(ErrorReport) as refused:
        storage.refresh_pool(ref)
    assert refused.value.message == (
        "Requested operation is not valid: storage pool 'ceph' is not active"
    )
    assert told == [PoolEvent.STOPPED]
    monkeypatch.undo()
    storage.start_pool(ref)
