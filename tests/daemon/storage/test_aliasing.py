"""One directory, one pool; no change in place reaches outside the pool; build keeps modes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Virtvold, run_virsh
from tests.daemon.storage.conftest import NOT_VALID, PoolSetup, fails
from virtvol.daemon.storage import PoolCreateFlags, StorageRegistry
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport

if TYPE_CHECKING:
    from pathlib import Path

CONFLICT = "operation failed: Storage source conflict with pool: 'default'"


def pool_xml(name: str, target: Path | str, mode: str | None = None) -> str:
    permissions = f"<permissions><mode>{mode}</mode></permissions>" if mode else ""
    return (
        f"<pool type='dir'><name>{name}</name>"
        f"<target><path>{target}</path>{permissions}</target></pool>"
    )


def test_same_directory_by_another_spelling_is_a_conflict(setup: PoolSetup, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(setup.pool_dir)
    spellings = [
        f"{setup.pool_dir}/.",
        f"{tmp_path}/x/../pool",
        f"{tmp_path}/link",
    ]
    for target in spellings:
        with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
            setup.registry.define_pool_xml(pool_xml("alias", target))
        with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
            setup.registry.create_pool_xml(pool_xml("alias", target))
    assert [p.name for p in setup.registry.list_all_pools()] == ["default"]


def test_alias_made_after_definition_cannot_start(setup: PoolSetup, tmp_path: Path) -> None:
    later = tmp_path / "later"
    ref = setup.registry.define_pool_xml(pool_xml("later", later))
    later.symlink_to(setup.pool_dir)  # the directory appears, and it is the other pool's
    with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
        setup.registry.start_pool(ref)
    assert not setup.registry.pool_is_active(ref)
    # Once the other pool stops, this one may run there.
    setup.registry.destroy_pool(setup.ref)
    setup.registry.start_pool(ref)
    with fails(
        ErrorCode.OPERATION_FAILED, "operation failed: Storage source conflict with pool: 'later'"
    ):
        setup.registry.start_pool(setup.ref)


def test_hard_linked_volume_is_not_changed_in_place(setup: PoolSetup, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious" * 512)
    os.link(outside, setup.pool_dir / "linked")
    volume = setup.registry.lookup_volume_by_name(setup.ref, "linked")
    refusal = NOT_VALID + (
        "volume 'linked' has 2 hard links; changing it in place would change every file "
        "linked to it"
    )
    with fails(ErrorCode.OPERATION_INVALID, refusal):
        setup.registry.wipe_volume(volume)
    with fails(ErrorCode.OPERATION_INVALID, refusal):
        setup.registry.resize_volume(volume, 1 << 20)
    with fails(ErrorCode.OPERATION_INVALID, refusal):
        setup.registry.open_upload(volume, 0, 4096)
    with fails(ErrorCode.OPERATION_INVALID, refusal):
        setup.registry.open_upload(volume, 10, 0)
    assert outside.read_bytes() == b"precious" * 512
    # A whole-volume upload replaces the pool's name only (the volume's bytes past the
    # stream's end copied, as the volume keeps them); the other file keeps its bytes.
    with setup.registry.open_upload(volume, 0, 0) as writer:
        writer.write(b"new")
        writer.commit()
    assert (setup.pool_dir / "linked").read_bytes() == b"new" + (b"precious" * 512)[3:]
    assert outside.read_bytes() == b"precious" * 512
    # The volume has one link now: in-place changes are fine again.
    setup.registry.resize_volume(volume, 4096)


@pytest.mark.parametrize("explicit", [None, "0750"])
def test_build_keeps_the_mode_of_an_existing_directory(
    tmp_path: Path, explicit: str | None
) -> None:
    """As libvirt 9.0 (checked against libvirtd): building over an existing directory
    changes its mode only when the definition asks for one."""
    target = tmp_path / "existing"
    target.mkdir()
    target.chmod(0o700)
    registry = StorageRegistry(tmp_path / "state")
    ref = registry.define_pool_xml(pool_xml("p", target, explicit))
    registry.start_pool(ref, PoolCreateFlags.WITH_BUILD)
    assert target.stat().st_mode & 0o7777 == (0o700 if explicit is None else 0o750)
    registry.destroy_pool(ref)
    registry.undefine_pool(ref)
    # The daemon's --pool NAME=DIR builds the same way.
    registry.ensure_pool("q", target)
    assert target.stat().st_mode & 0o7777 == (0o700 if explicit is None else 0o750)
    registry.close()


def test_refused_build_leaves_the_other_pools_directory_mode(
    setup: PoolSetup, tmp_path: Path
) -> None:
    # A build over a path that leads to a running pool's directory is refused: it must
    # not give that directory the mode of the definition first.
    setup.pool_dir.chmod(0o700)
    later = tmp_path / "later"
    ref = setup.registry.define_pool_xml(pool_xml("later", later, "0777"))
    later.symlink_to(setup.pool_dir)
    with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
        setup.registry.start_pool(ref, PoolCreateFlags.WITH_BUILD)
    with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
        setup.registry.create_pool_xml(pool_xml("later", later, "0777"), PoolCreateFlags.WITH_BUILD)
    assert setup.pool_dir.stat().st_mode & 0o7777 == 0o700


def test_build_and_delete_of_a_path_leading_to_a_running_pools_directory_are_refused(
    setup: PoolSetup, tmp_path: Path
) -> None:
    """pool-build and pool-delete of an inactive pool whose path leads, through a link made
    after its definition, to a running pool's directory: the build would give that
    directory the definition's mode, the delete would remove it (empty) from under the
    running pool."""
    setup.pool_dir.chmod(0o700)
    parent = tmp_path / "parent"
    ref = setup.registry.define_pool_xml(pool_xml("later", parent / "pool", "0777"))
    parent.symlink_to(tmp_path)  # later's folder is now the running pool's
    with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
        setup.registry.build_pool(ref, 0)
    assert setup.pool_dir.stat().st_mode & 0o7777 == 0o700
    with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
        setup.registry.delete_pool(ref, 0)
    assert setup.pool_dir.is_dir()
    assert setup.registry.list_volume_names(setup.ref, 10) == []
    setup.registry.undefine_pool(ref)  # no job left behind on the refused pool


def test_virsh_cannot_define_a_second_pool_over_the_directory(virtvold: Virtvold) -> None:
    result = run_virsh(
        virtvold.tcp_uri,
        "pool-define-as",
        "alias",
        "dir",
        "--target",
        f"{virtvold.pool_dir}/.",
        check=False,
    )
    assert result.returncode == 1
    assert f"error: {CONFLICT}" in result.stderr


def test_refused_alias_leaves_the_running_upload_alone(setup: PoolSetup, tmp_path: Path) -> None:
    volume = setup.file("disk", b"old" * 1000)
    later = tmp_path / "later"
    ref = setup.registry.define_pool_xml(pool_xml("later", later))
    later.symlink_to(setup.pool_dir)
    writer = setup.registry.open_upload(volume, 0, 0)
    writer.write(b"new" * 1000)
    # Starting over the other pool's directory is refused, and must not clean that
    # directory first: the temporary of the upload running there is not stale.
    with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
        setup.registry.start_pool(ref)
    with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
        setup.registry.start_pool(ref, PoolCreateFlags.WITH_BUILD)
    with fails(ErrorCode.OPERATION_FAILED, CONFLICT):
        setup.registry.create_pool_xml(pool_xml("later", later))
    writer.commit()
    assert (setup.pool_dir / "disk").read_bytes() == b"new" * 1000


MOVED = NOT_VALID + (
    "storage pool 'default' directory '{}' is not the one the pool opened any more: "
    "refresh the pool to use the one there now"
)


def test_a_directory_replaced_under_a_running_pool_is_not_written(
    setup: PoolSetup, tmp_path: Path
) -> None:
    # An operator moves the pool's files elsewhere and leaves a symbolic link: libvirt,
    # which goes by the path, uses the new directory. Writing on into the old one while
    # reporting the new one's paths would put volumes where no path names them.
    volume = setup.file("disk", b"old")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "there").write_bytes(b"there")
    setup.pool_dir.rename(tmp_path / "moved")
    setup.pool_dir.symlink_to(elsewhere)
    refused = MOVED.format(setup.pool_dir)
    registry = setup.registry
    with fails(ErrorCode.OPERATION_INVALID, refused):
        setup.volume("new", 1)
    with fails(ErrorCode.OPERATION_INVALID, refused):
        registry.open_upload(volume, 0, 0)
    with fails(ErrorCode.OPERATION_INVALID, refused):
        registry.delete_volume(volume)
    with fails(ErrorCode.OPERATION_INVALID, refused):
        registry.list_volume_names(setup.ref, 10)
    with pytest.raises(ErrorReport):
        registry.lookup_volume_by_key(volume.key)
    assert sorted(os.listdir(tmp_path / "moved")) == ["disk"]
    # pool-info still answers; a refresh takes the directory the path names now.
    registry.pool_info(setup.ref)
    registry.refresh_pool(setup.ref)
    assert registry.list_volume_names(setup.ref, 10) == ["there"]
    setup.volume("new", 1)
    assert sorted(os.listdir(elsewhere)) == ["new", "there"]


def test_refresh_of_a_removed_directory_stops_the_pool(setup: PoolSetup, tmp_path: Path) -> None:
    setup.pool_dir.rename(tmp_path / "moved")
    path = setup.pool_dir
    with fails(
        ErrorCode.SYSTEM_ERROR,
        f"cannot open directory '{path}': No such file or directory",
        ErrorDomain.NONE,
    ):
        setup.registry.refresh_pool(setup.ref)
    assert not setup.registry.pool_is_active(setup.ref)  # as libvirt stops it
    # A transient pool stopped that way is gone, as one destroyed is.
    (tmp_path / "t").mkdir()
    ref = setup.registry.create_pool_xml(pool_xml("t", tmp_path / "t"))
    (tmp_path / "t").rename(tmp_path / "t-moved")
    with pytest.raises(ErrorReport):
        setup.registry.refresh_pool(ref)
    assert [p.name for p in setup.registry.list_all_pools()] == ["default"]


def test_refresh_waits_for_jobs_in_a_replaced_directory(setup: PoolSetup, tmp_path: Path) -> None:
    volume = setup.file("disk", b"old")
    writer = setup.registry.open_upload(volume, 0, 0)
    setup.pool_dir.rename(tmp_path / "moved")
    setup.pool_dir.mkdir()
    with fails(
        ErrorCode.INTERNAL_ERROR, "internal error: pool 'default' has asynchronous jobs running."
    ):
        setup.registry.refresh_pool(setup.ref)
    writer.write(b"new")
    writer.commit()  # the upload ends where it began
    assert (tmp_path / "moved" / "disk").read_bytes() == b"new"
    setup.registry.refresh_pool(setup.ref)
    assert setup.registry.list_volume_names(setup.ref, 10) == []
