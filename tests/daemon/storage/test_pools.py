"""Pool lifecycle, persistence, lookups, lists and their libvirt errors."""

from __future__ import annotations

import errno
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.daemon.storage.conftest import NO_POOL, NOT_VALID, PoolSetup, fails
from virtvol.daemon.storage import (
    ListPoolsFlags,
    PoolCreateFlags,
    PoolRef,
    PoolState,
    PoolXMLFlags,
    StorageRegistry,
)
from virtvol.daemon.storage import pool as pool_module
from virtvol.daemon.storage import volumes as volumes_module
from virtvol.daemon.storage.model import PoolEvent
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

UUID = "4040308c-6b3e-4a07-a1eb-923ff41ea901"


def pool_xml(name: str, target: Path | str, uuid_text: str | None = None, kind: str = "dir") -> str:
    uuid_part = f"<uuid>{uuid_text}</uuid>" if uuid_text else ""
    return (
        f"<pool type='{kind}'><name>{name}</name>{uuid_part}"
        f"<target><path>{target}</path></target></pool>"
    )


def test_define_start_destroy_undefine(tmp_path: Path) -> None:
    registry = StorageRegistry(tmp_path / "state")
    target = tmp_path / "p1"
    target.mkdir()
    ref = registry.define_pool_xml(pool_xml("p1", target, UUID))
    assert ref == PoolRef("p1", uuid.UUID(UUID).bytes)
    assert not registry.pool_is_active(ref)
    assert registry.pool_is_persistent(ref)
    assert registry.pool_info(ref).state == PoolState.INACTIVE
    registry.start_pool(ref)
    info = registry.pool_info(ref)
    assert info.state == PoolState.RUNNING
    assert info.capacity >= info.allocation > 0
    assert info.available > 0
    with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "storage pool 'p1' is already active"):
        registry.start_pool(ref)
    with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "storage pool 'p1' is still active"):
        registry.undefine_pool(ref)
    registry.destroy_pool(ref)
    with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "storage pool 'p1' is not active"):
        registry.destroy_pool(ref)
    registry.undefine_pool(ref)
    with fails(ErrorCode.NO_STORAGE_POOL, NO_POOL + f"uuid '{UUID}' (p1)"):
        registry.pool_info(ref)
    assert target.is_dir()  # undefine never deletes data
    assert not (tmp_path / "state/pools/p1.xml").exists()


def test_pool_xml_matches_libvirt_layout(setup: PoolSetup) -> None:
    text = setup.registry.pool_xml(setup.ref)
    st = os.stat(setup.pool_dir)
    info = setup.registry.pool_info(setup.ref)
    lines = text.splitlines()
    assert lines[0] == "<pool type='dir'>"
    assert lines[1] == "  <name>default</name>"
    assert lines[2] == f"  <uuid>{uuid.UUID(bytes=setup.ref.uuid)}</uuid>"
    assert lines[3] == f"  <capacity unit='bytes'>{info.capacity}</capacity>"
    assert lines[6:10] == [
        "  <source>",
        "  </source>",
        "  <target>",
        f"    <path>{setup.pool_dir}</path>",
    ]
    assert lines[10:15] == [
        "    <permissions>",
        "      <mode>0711</mode>",
        f"      <owner>{st.st_uid}</owner>",
        f"      <group>{st.st_gid}</group>",
        "    </permissions>",
    ]
    assert lines[15:] == ["  </target>", "</pool>"]
    assert text.endswith("</pool>\n")


def test_inactive_xml_has_zero_sizes_and_no_permissions(tmp_path: Path) -> None:
    registry = StorageRegistry(tmp_path / "state")
    ref = registry.define_pool_xml(pool_xml("p", tmp_path / "d", UUID))
    assert registry.pool_xml(ref) == (
        "<pool type='dir'>\n  <name>p</name>\n"
        f"  <uuid>{UUID}</uuid>\n"
        "  <capacity unit='bytes'>0</capacity>\n"
        "  <allocation unit='bytes'>0</allocation>\n"
        "  <available unit='bytes'>0</available>\n"
        "  <source>\n  </source>\n"
        f"  <target>\n    <path>{tmp_path}/d</path>\n  </target>\n</pool>\n"
    )
    assert registry.pool_info(ref).capacity == 0


def test_redefine_while_running_applies_at_next_start(setup: PoolSetup, tmp_path: Path) -> None:
    registry = setup.registry
    other = tmp_path / "elsewhere"
    other.mkdir()
    registry.define_pool_xml(pool_xml("default", other, str(uuid.UUID(bytes=setup.ref.uuid))))
    assert f"<path>{setup.pool_dir}</path>" in registry.pool_xml(setup.ref)
    inactive = registry.pool_xml(setup.ref, PoolXMLFlags.INACTIVE)
    assert f"<path>{other}</path>" in inactive
    registry.destroy_pool(setup.ref)
    registry.start_pool(setup.ref)
    assert f"<path>{other}</path>" in registry.pool_xml(setup.ref)


def test_start_requires_directory_unless_built(tmp_path: Path) -> None:
    registry = StorageRegistry(tmp_path / "state")
    target = tmp_path / "a" / "b"
    ref = registry.define_pool_xml(pool_xml("p", target))
    with fails(
        ErrorCode.SYSTEM_ERROR,
        f"cannot open directory '{target}': No such file or directory",
        ErrorDomain.NONE,
    ):
        registry.start_pool(ref)
    for flags in (2, 4, 6, 7):
        with fails(
            ErrorCode.OPERATION_INVALID,
            NOT_VALID + "No source device specified when formatting pool 'p'",
        ):
            registry.start_pool(ref, flags)
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x8) in function storagePoolCreate"):
        registry.start_pool(ref, 8)
    registry.start_pool(ref, PoolCreateFlags.WITH_BUILD)
    assert target.is_dir()
    assert (target.stat().st_mode & 0o7777) == 0o711


def test_build_uses_requested_mode(tmp_path: Path) -> None:
    registry = StorageRegistry(tmp_path / "state")
    xml = (
        "<pool type='dir'><name>p</name><target><path>"
        f"{tmp_path}/m</path><permissions><mode>0750</mode></permissions></target></pool>"
    )
    ref = registry.define_pool_xml(xml)
    assert "<mode>0750</mode>" in registry.pool_xml(ref)
    registry.start_pool(ref, 1)
    assert ((tmp_path / "m").stat().st_mode & 0o7777) == 0o750


def test_transient_pool(tmp_path: Path) -> None:
    registry = StorageRegistry(tmp_path / "state")
    xml = pool_xml("t", tmp_path / "t")
    with fails(
        ErrorCode.SYSTEM_ERROR,
        f"cannot open directory '{tmp_path}/t': No such file or directory",
        ErrorDomain.NONE,
    ):
        registry.create_pool_xml(xml)
    assert registry.list_all_pools() == []
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x8) in function storagePoolCreateXML"):
        registry.create_pool_xml(xml, 8)
    ref = registry.create_pool_xml(xml, PoolCreateFlags.WITH_BUILD)
    assert registry.pool_is_active(ref)
    assert not registry.pool_is_persistent(ref)
    assert not registry.pool_autostart(ref)
    with fails(ErrorCode.INTERNAL_ERROR, "internal error: pool has no config file"):
        registry.set_pool_autostart(ref, True)
    # As libvirtd: another UUID under the name is a clash; the same pool, already active.
    with fails(
        ErrorCode.OPERATION_FAILED,
        f"operation failed: pool 't' already exists with uuid {uuid.UUID(bytes=ref.uuid)}",
    ):
        registry.create_pool_xml(xml)
    with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "pool is already active as 't'"):
        registry.create_pool_xml(pool_xml("t", tmp_path / "t", str(uuid.UUID(bytes=ref.uuid))))
    with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "storage pool 't' is still active"):
        registry.undefine_pool(ref)
    assert not (tmp_path / "state/pools/t.xml").exists()
    registry.destroy_pool(ref)
    with fails(ErrorCode.NO_STORAGE_POOL, NO_POOL + "name 't'"):
        registry.lookup_pool_by_name("t")
    assert StorageRegistry(tmp_path / "state").list_all_pools() == []


def test_transient_pool_made_persistent_by_define(tmp_path: Path) -> None:
    registry = StorageRegistry(tmp_path / "state")
    ref = registry.create_pool_xml(pool_xml("t", tmp_path / "t", UUID), 1)
    registry.define_pool_xml(pool_xml("t", tmp_path / "t", UUID))
    assert registry.pool_is_persistent(ref)
    registry.destroy_pool(ref)
    assert registry.lookup_pool_by_name("t") == ref


def test_create_xml_over_a_defined_pool(tmp_path: Path) -> None:
    """As libvirtd: creating a pool defined (inactive) under the same name and UUID starts
    it with the new definition, which lasts until it stops; another UUID is a clash, and
    so is another pool's directory under a new name, checked first."""
    registry = StorageRegistry(tmp_path / "state")
    ref = registry.define_pool_xml(pool_xml("p", tmp_path / "p", UUID))
    other = str(uuid.uuid4())
    with fails(
        ErrorCode.OPERATION_FAILED, f"operation failed: pool 'p' already exists with uuid {UUID}"
    ):
        registry.create_pool_xml(pool_xml("p", tmp_path / "p2", other), 1)
    with fails(
        ErrorCode.OPERATION_FAILED, "operation failed: Storage source conflict with pool: 'p'"
    ):
        registry.create_pool_xml(pool_xml("q", tmp_path / "p", UUID), 1)
    assert registry.create_pool_xml(pool_xml("p", tmp_path / "live", UUID), 1) == ref
    assert registry.pool_is_active(ref)
    assert registry.pool_is_persistent(ref)
    assert f"<path>{tmp_path}/live</path>" in registry.pool_xml(ref)
    registry.destroy_pool(ref)
    assert registry.lookup_pool_by_name("p") == ref
    assert f"<path>{tmp_path}/p</path>" in registry.pool_xml(ref)


def test_persistence_and_autostart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    registry = StorageRegistry(state)
    a = registry.define_pool_xml(pool_xml("a", tmp_path / "a"))
    b = registry.define_pool_xml(pool_xml("b", tmp_path / "b"))
    registry.start_pool(a, 1)
    registry.start_pool(b, 1)
    registry.set_pool_autostart(a, True)
    assert registry.pool_autostart(a)
    registry.set_pool_autostart(b, True)
    registry.set_pool_autostart(b, False)
    registry.close()

    again = StorageRegistry(state)
    again.load()
    assert again.list_all_pools() == [a, b]
    assert again.pool_is_active(a)
    assert again.pool_autostart(a)
    assert not again.pool_is_active(b)
    assert not again.pool_autostart(b)
    assert f"<path>{tmp_path}/b</path>" in again.pool_xml(b)


def test_autostart_failure_leaves_pool_defined(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    registry = StorageRegistry(state)
    ref = registry.define_pool_xml(pool_xml("gone", tmp_path / "gone"))
    registry.set_pool_autostart(ref, True)
    again = StorageRegistry(state)
    again.load()
    assert not again.pool_is_active(ref)
    assert "cannot autostart storage pool 'gone'" in caplog.text


def test_unreadable_definition_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pools = tmp_path / "state" / "pools"
    pools.mkdir(parents=True)
    (pools / "bad.xml").write_text("<pool type='dir'><name>bad")
    (pools / "misnamed.xml").write_text(pool_xml("other", tmp_path / "o"))
    registry = StorageRegistry(tmp_path / "state")
    registry.load()
    assert registry.list_all_pools() == []
    assert (pools / "bad.xml").exists()
    assert "ignoring pool definition" in caplog.text


def test_ensure_pool_is_idempotent(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = StorageRegistry(state)
    ref = first.ensure_pool("default", tmp_path / "pool")
    assert first.pool_is_active(ref)
    assert first.pool_autostart(ref)
    assert first.ensure_pool("default", tmp_path / "pool") == ref
    first.close()
    second = StorageRegistry(state)
    second.load()
    assert second.ensure_pool("default", str(tmp_path / "pool") + "/") == ref
    assert second.list_active_pool_names(10) == ["default"]
    moved = second.ensure_pool("default", tmp_path / "moved")
    assert moved == ref
    assert f"<path>{tmp_path}/moved</path>" in second.pool_xml(ref)
    assert (tmp_path / "moved").is_dir()


def test_ensure_pool_writes_nothing_when_the_definition_is_unchanged(tmp_path: Path) -> None:
    # A state directory that cannot be written (a full disk) must not keep a daemon whose
    # --pool definitions are already stored from starting or reloading.
    state = tmp_path / "state"
    first = StorageRegistry(state)
    ref = first.ensure_pool("default", tmp_path / "pool")
    first.close()
    stored = (state / "pools" / "default.xml").read_bytes()
    (state / "pools" / ".default.xml.tmp").mkdir()  # no temporary can be written
    second = StorageRegistry(state)
    second.load()
    assert second.ensure_pool("default", tmp_path / "pool") == ref
    assert second.pool_is_active(ref)
    assert second.ensure_pool("default", tmp_path / "pool") == ref
    with pytest.raises(ErrorReport, match="cannot save pool config"):
        second.ensure_pool("default", tmp_path / "moved")
    assert (state / "pools" / "default.xml").read_bytes() == stored


def test_stored_definitions_are_readable_by_the_owner_only(tmp_path: Path) -> None:
    # As libvirt saves its XML definitions (0600): rbd pools name their cephx user and secret.
    state = tmp_path / "state"
    (state / "pools").mkdir(parents=True)
    (state / "pools" / ".default.xml.tmp").write_text("left by a crash")
    (state / "pools" / ".default.xml.tmp").chmod(0o666)
    registry = StorageRegistry(state)
    registry.ensure_pool("default", tmp_path / "pool")
    assert (state / "pools" / "default.xml").stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(state / "pools")) == ["default.autostart", "default.xml"]
    old_umask = os.umask(0o022)
    try:
        registry.ensure_pool("other", tmp_path / "other")
    finally:
        os.umask(old_umask)
    assert (state / "pools" / "other.xml").stat().st_mode & 0o777 == 0o600


def test_lookups(setup: PoolSetup) -> None:
    registry, ref = setup.registry, setup.ref
    assert registry.lookup_pool_by_name("default") == ref
    assert registry.lookup_pool_by_uuid(ref.uuid) == ref
    volume = setup.volume("v", 1)
    assert registry.lookup_pool_by_volume(volume) == ref
    with fails(ErrorCode.NO_STORAGE_POOL, NO_POOL + "name 'nope'"):
        registry.lookup_pool_by_name("nope")
    with fails(ErrorCode.NO_STORAGE_POOL, NO_POOL + "uuid '01010101-0101-0101-0101-010101010101'"):
        registry.lookup_pool_by_uuid(b"\x01" * 16)
    with fails(ErrorCode.NO_STORAGE_POOL, NO_POOL + "name 'x'"):
        registry.lookup_pool_by_volume(volume.__class__("x", "v", "/k"))
    # A reference is resolved by UUID: a stale name does not matter, a stale UUID does.
    assert registry.pool_is_active(PoolRef("renamed", ref.uuid))


def test_define_errors(setup: PoolSetup, tmp_path: Path) -> None:
    registry = setup.registry
    existing = str(uuid.UUID(bytes=setup.ref.uuid))
    cases: list[tuple[str, ErrorCode, ErrorDomain, str]] = [
        (pool_xml("default", tmp_path / "x"), ErrorCode.OPERATION_FAILED, ErrorDomain.STORAGE,
         f"operation failed: pool 'default' already exists with uuid {existing}"),
        (pool_xml("p9", tmp_path / "x", existing), ErrorCode.OPERATION_FAILED, ErrorDomain.STORAGE,
         f"operation failed: pool 'default' is already defined with uuid {existing}"),
        (pool_xml("p8", setup.pool_dir), ErrorCode.OPERATION_FAILED, ErrorDomain.STORAGE,
         "operation failed: Storage source conflict with pool: 'default'"),
        # The directory is checked before the UUID (libvirtd's order).
        (pool_xml("p9", setup.pool_dir, existing), ErrorCode.OPERATION_FAILED,
         ErrorDomain.STORAGE, "operation failed: Storage source conflict with pool: 'default'"),
        (pool_xml("p7", "/x", kind="rbd"), ErrorCode.XML_ERROR, ErrorDomain.STORAGE,
         "XML error: element 'name' is mandatory for RBD pool"),
        (pool_xml("p7", "/x", kind="sheepdog"), ErrorCode.INTERNAL_ERROR, ErrorDomain.STORAGE,
         "internal error: missing backend for pool type 10 (sheepdog)"),
        (pool_xml("p7", "/x", kind="logical"), ErrorCode.INTERNAL_ERROR, ErrorDomain.STORAGE,
         "internal error: missing backend for pool type 3 (logical)"),
        (pool_xml("p7", "/x", kind="bogus"), ErrorCode.XML_ERROR, ErrorDomain.XML,
         "XML error: Invalid value for attribute 'type' in element 'pool': 'bogus'."),
        ("<pool><name>p7</name></pool>", ErrorCode.XML_ERROR, ErrorDomain.XML,
         "XML error: Missing required attribute 'type' in element 'pool'"),
        ("<pool type='dir'><target><path>/x</path></target></pool>", ErrorCode.XML_ERROR,
         ErrorDomain.STORAGE, "XML error: missing pool source name element"),
        ("<pool type='dir'><name>p7</name></pool>", ErrorCode.XML_ERROR, ErrorDomain.STORAGE,
         "XML error: missing storage pool target path"),
        (pool_xml("p7", "rel/x"), ErrorCode.XML_ERROR, ErrorDomain.STORAGE,
         "XML error: storage pool target path 'rel/x' must be absolute"),
        (pool_xml("p7", "/x", "zz"), ErrorCode.XML_ERROR, ErrorDomain.STORAGE,
         "XML error: malformed uuid element"),
        (pool_xml("p/7", "/x"), ErrorCode.XML_ERROR, ErrorDomain.STORAGE,
         "XML error: name p/7 cannot contain '/'"),
        (pool_xml(".hidden", "/x"), ErrorCode.XML_ERROR, ErrorDomain.STORAGE,
         "XML error: name .hidden is not usable as a pool name"),
        ("<volume/>", ErrorCode.XML_ERROR, ErrorDomain.XML,
         "XML error: expecting root element of 'pool', not 'volume'"),
        ("<pool type='dir'>", ErrorCode.XML_DETAIL, ErrorDomain.STORAGE,
         "(storage_pool_definition):1: Premature end of data in tag pool line 1\n"
         "<pool type='dir'>\n" + "-" * 17 + "^"),
        ("<!DOCTYPE pool [<!ENTITY e 'x'>]><pool type='dir'><name>&e;</name></pool>",
         ErrorCode.XML_ERROR, ErrorDomain.STORAGE,
         "XML error: (storage_pool_definition): DTDs, entity declarations and external "
         "references are not accepted"),
    ]  # fmt: skip
    for xml, code, domain, message in cases:
        with fails(code, message, domain):
            registry.define_pool_xml(xml)
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x2) in function storagePoolDefineXML"):
        registry.define_pool_xml(pool_xml("p7", "/x"), 2)
    assert registry.list_all_pools() == [setup.ref]
    assert sorted(os.listdir(setup.state_dir / "pools")) == ["default.autostart", "default.xml"]


def test_trailing_slashes_are_cleaned(tmp_path: Path) -> None:
    registry = StorageRegistry(tmp_path / "state")
    ref = registry.define_pool_xml(pool_xml("p", f"{tmp_path}//p4/"))
    assert f"<path>{tmp_path}/p4</path>" in registry.pool_xml(ref)


def test_flag_checks(setup: PoolSetup) -> None:
    registry, ref = setup.registry, setup.ref
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x1) in function storagePoolRefresh"):
        registry.refresh_pool(ref, 1)
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x2) in function storagePoolGetXMLDesc"):
        registry.pool_xml(ref, 2)
    with fails(
        ErrorCode.INVALID_ARG,
        "unsupported flags (0x2000000) in function storageConnectListAllStoragePools",
    ):
        registry.list_all_pools(1 << 25)
    with fails(
        ErrorCode.INVALID_ARG, "unsupported flags (0x1) in function storagePoolListAllVolumes"
    ):
        registry.list_all_volumes(ref, 1)


def test_list_filters(tmp_path: Path) -> None:
    registry = StorageRegistry(tmp_path / "state")
    run = registry.define_pool_xml(pool_xml("run", tmp_path / "run"))
    registry.start_pool(run, 1)
    registry.set_pool_autostart(run, True)
    idle = registry.define_pool_xml(pool_xml("idle", tmp_path / "idle"))
    temp = registry.create_pool_xml(pool_xml("temp", tmp_path / "temp"), 1)
    F = ListPoolsFlags
    assert registry.list_all_pools() == [idle, run, temp]
    assert registry.list_all_pools(F.ACTIVE) == [run, temp]
    assert registry.list_all_pools(F.INACTIVE) == [idle]
    assert registry.list_all_pools(F.ACTIVE | F.INACTIVE) == [idle, run, temp]
    assert registry.list_all_pools(F.TRANSIENT) == [temp]
    assert registry.list_all_pools(F.PERSISTENT | F.ACTIVE) == [run]
    assert registry.list_all_pools(F.AUTOSTART) == [run]
    assert registry.list_all_pools(F.NO_AUTOSTART | F.ACTIVE) == [temp]
    assert registry.list_all_pools(F.DIR) == [idle, run, temp]
    assert registry.list_all_pools(F.FS | F.LOGICAL) == []
    assert registry.list_all_pools(F.FS | F.DIR | F.INACTIVE) == [idle]
    assert registry.num_active_pools() == 2
    assert registry.list_active_pool_names(10) == ["run", "temp"]
    assert registry.list_active_pool_names(1) == ["run"]
    assert registry.num_defined_pools() == 1
    assert registry.list_defined_pool_names(10) == ["idle"]
    assert registry.list_defined_pool_names(0) == []


def test_inactive_pool_refuses_volume_work(tmp_path: Path) -> None:
    registry = StorageRegistry(tmp_path / "state")
    ref = registry.define_pool_xml(pool_xml("p6", tmp_path / "p6"))
    message = NOT_VALID + "storage pool 'p6' is not active"
    calls: list[Callable[[], object]] = [
        lambda: registry.refresh_pool(ref),
        lambda: registry.num_volumes(ref),
        lambda: registry.list_volume_names(ref, 10),
        lambda: registry.list_all_volumes(ref),
        lambda: registry.lookup_volume_by_name(ref, "x"),
        lambda: registry.create_volume_xml(
            ref, "<volume><name>x</name><capacity>1</capacity></volume>"
        ),
    ]
    for call in calls:
        with fails(ErrorCode.OPERATION_INVALID, message):
            call()


def test_refresh_removes_stale_upload_temporaries(setup: PoolSetup) -> None:
    stale = setup.pool_dir / ".virtvol-upload-0123456789abcdef"
    stale.write_bytes(b"half an upload")
    setup.registry.refresh_pool(setup.ref)
    assert not stale.exists()
    stale.write_bytes(b"again")
    setup.registry.destroy_pool(setup.ref)
    setup.registry.start_pool(setup.ref)
    assert not stale.exists()


def test_another_daemons_running_upload_is_not_stale(setup: PoolSetup, tmp_path: Path) -> None:
    # Two daemons (their own state directories) serving one directory: one starting or
    # refreshing its pool must not take the other's running upload for a crash's leftover.
    volume = setup.file("disk", b"old")
    writer = setup.registry.open_upload(volume, 0, 0)
    writer.write(b"new")
    other = StorageRegistry(tmp_path / "other-state", sync_uploads=False)
    ref = other.ensure_pool("default", setup.pool_dir)
    other.refresh_pool(ref)
    other.close()
    writer.commit()
    assert (setup.pool_dir / "disk").read_bytes() == b"new"
    assert os.listdir(setup.pool_dir) == ["disk"]


def test_upload_temporary_removed_before_its_lock_is_made_anew(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another daemon's clean-up may remove a temporary between its creation and its
    # lock: the upload then takes a fresh one instead of writing into a nameless file.
    volume = setup.file("disk", b"old")
    real_lock = volumes_module._lock
    removed: list[str] = []

    def clean_up_first(fd: int) -> bool:
        if not removed:
            (name,) = [n for n in os.listdir(setup.pool_dir) if n.startswith(".virtvol-")]
            os.unlink(setup.pool_dir / name)
            removed.append(name)
        return real_lock(fd)

    monkeypatch.setattr(volumes_module, "_lock", clean_up_first)
    with setup.registry.open_upload(volume, 0, 0) as writer:
        writer.write(b"new")
        writer.commit()
    assert removed
    assert (setup.pool_dir / "disk").read_bytes() == b"new"
    assert os.listdir(setup.pool_dir) == ["disk"]


def test_a_pool_name_is_taken_as_written(tmp_path: Path) -> None:
    """libvirt keeps spaces around a pool's name (trimming them named another pool)."""
    state = tmp_path / "state"
    registry = StorageRegistry(state)
    ref = registry.define_pool_xml(pool_xml(" p ", tmp_path / "p"))
    assert ref.name == " p "
    assert registry.lookup_pool_by_name(" p ") == ref
    registry.set_pool_autostart(ref, True)
    registry.start_pool(ref, 1)
    assert "<name> p </name>" in registry.pool_xml(ref)
    registry.close()
    again = StorageRegistry(state)
    again.load()
    assert again.list_all_pools() == [ref]
    assert again.pool_is_active(ref)


def test_refused_rbd_create_leaves_a_defined_pool_with_its_definition(tmp_path: Path) -> None:
    # A format flag is refused before any cluster is asked, and the pool defined under
    # that name keeps the definition it starts with.
    registry = StorageRegistry(tmp_path / "state")
    pool_uuid = "2b2a4f96-53f2-4d34-9c3c-0d3f4a9f3b11"

    def rbd_xml(host: str) -> str:
        return (
            f"<pool type='rbd'><name>ceph</name><uuid>{pool_uuid}</uuid>"
            f"<source><name>rbd</name><host name='{host}'/></source></pool>"
        )

    ref = registry.define_pool_xml(rbd_xml("mon-a"))
    defined = registry.pool_xml(ref)
    with pytest.raises(ErrorReport, match="No source device specified"):
        registry.create_pool_xml(rbd_xml("mon-b"), PoolCreateFlags.WITH_BUILD_OVERWRITE)
    assert registry.pool_xml(ref) == defined
    assert "mon-a" in defined


def test_a_running_upload_that_cannot_be_read_is_not_stale(
    setup: PoolSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A temporary takes its volume's permission bits: one that is write-only for this
    # daemon cannot be opened for reading, and its lock must be looked for all the same.
    volume = setup.file("disk", b"old")
    writer = setup.registry.open_upload(volume, 0, 0)
    writer.write(b"new")
    real_open = os.open

    def write_only(path: str, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith(".virtvol-upload-") and flags & os.O_ACCMODE == os.O_RDONLY:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", write_only)
    other = StorageRegistry(tmp_path / "other-state", sync_uploads=False)
    ref = other.ensure_pool("default", setup.pool_dir)
    other.refresh_pool(ref)
    other.close()
    monkeypatch.undo()
    writer.commit()
    assert (setup.pool_dir / "disk").read_bytes() == b"new"
    assert os.listdir(setup.pool_dir) == ["disk"]


def test_a_temporary_that_cannot_be_opened_at_all_is_kept(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Neither readable nor writable: nobody's lock can be seen, so it may be a running
    # upload, and the clean-up leaves it.
    kept = setup.pool_dir / ".virtvol-upload-0123456789abcdef"
    kept.write_bytes(b"maybe running")
    real_open = os.open

    def closed_to_us(path: str, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith(".virtvol-upload-"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", closed_to_us)
    setup.registry.refresh_pool(setup.ref)
    monkeypatch.undo()
    assert kept.read_bytes() == b"maybe running"


def test_a_leftover_that_cannot_be_removed_does_not_stop_the_pool(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    leftover = setup.pool_dir / ".virtvol-upload-0123456789abcdef"
    leftover.write_bytes(b"half an upload")
    real_unlink = os.unlink

    def immutable(path: str, *args: Any, **kwargs: Any) -> None:
        if str(path) == leftover.name:
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", immutable)
    setup.registry.refresh_pool(setup.ref)
    setup.registry.destroy_pool(setup.ref)
    setup.registry.start_pool(setup.ref)
    monkeypatch.undo()
    assert leftover.exists()
    assert setup.registry.list_volume_names(setup.ref, 10) == []
    assert leftover.name in caplog.text


def test_an_rbd_pool_has_nothing_to_build_and_cannot_be_deleted(tmp_path: Path) -> None:
    # libvirt's rbd backend has no build step (the call succeeds, and tells of it as a
    # build) and no delete step (refused as not supported); no cluster is asked.
    registry = StorageRegistry(tmp_path / "state")
    events: list[tuple[str, PoolEvent]] = []
    registry.on_event = lambda pool, event: events.append((pool.name, event))
    ref = registry.define_pool_xml(
        "<pool type='rbd'><name>ceph</name>"
        "<source><name>rbd</name><host name='mon-a'/></source></pool>"
    )
    registry.build_pool(ref, 0)
    with fails(
        ErrorCode.NO_SUPPORT,
        "this function is not supported by the connection driver: "
        "pool does not support pool deletion",
    ):
        registry.delete_pool(ref, 0)
    assert events == [("ceph", PoolEvent.DEFINED), ("ceph", PoolEvent.CREATED)]


def test_a_definition_stored_with_a_large_owner_comes_back(tmp_path: Path) -> None:
    """An owner or group from 2^31 up is printed as libvirt prints it, a C int
    (3000000000 as -1294967296), and the stored definition is that print: read back, it
    must be the same id, or the pool would be ignored at the daemon's next start."""
    state = tmp_path / "state"
    registry = StorageRegistry(state)
    xml = (
        f"<pool type='dir'><name>big</name><target><path>{tmp_path / 'big'}</path>"
        "<permissions><mode>0750</mode><owner>3000000000</owner><group>4294967294</group>"
        "</permissions></target></pool>"
    )
    ref = registry.define_pool_xml(xml)
    before = registry.pool_xml(ref)
    registry.close()
    again = StorageRegistry(state)
    again.load()
    assert again.list_all_pools() == [ref]
    assert again.pool_xml(ref) == before
    assert "<owner>-1294967296</owner>" in before


def test_a_definition_stored_with_a_set_id_mode_by_an_older_daemon_comes_back(
    tmp_path: Path,
) -> None:
    """Modes with set-id or sticky bits were kept before definitions took permission
    bits only, as libvirt's do; such a stored pool is read with those bits dropped,
    not ignored at the daemon's start."""
    state = tmp_path / "state"
    StorageRegistry(state).close()
    (state / "pools").mkdir(parents=True, exist_ok=True)
    stored = state / "pools" / "shared.xml"
    stored.write_text(
        "<pool type='dir'>\n  <name>shared</name>\n"
        "  <uuid>0f1d8c52-4c55-4a47-9a1f-6b0e5cd0f2a1</uuid>\n"
        f"  <target>\n    <path>{tmp_path / 'shared'}</path>\n"
        "    <permissions>\n      <mode>2775</mode>\n    </permissions>\n  </target>\n</pool>\n"
    )
    again = StorageRegistry(state)
    again.load()
    (ref,) = again.list_all_pools()
    assert ref.name == "shared"
    assert "<mode>0775</mode>" in again.pool_xml(ref)


def test_a_folder_built_and_swapped_for_a_link_does_not_pass_its_owner_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever may write the pool's parent folder could swap the folder just made for a
    link to another file before its owner and mode are given: the root daemon would
    give that file the pool's owner. The folder is changed as opened, not by its path."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"secret")
    victim.chmod(0o600)
    before = victim.stat()
    target = tmp_path / "parent" / "pool"
    target.parent.mkdir()
    registry = StorageRegistry(tmp_path / "state")
    ref = registry.define_pool_xml(
        f"<pool type='dir'><name>swapped</name><target><path>{target}</path>"
        "<permissions><mode>0777</mode><owner>12345</owner><group>12345</group>"
        "</permissions></target></pool>"
    )
    real_mkdir = os.mkdir

    def mkdir_then_swap(path: Any, mode: int = 0o777, **kwargs: Any) -> None:
        real_mkdir(path, mode, **kwargs)
        if os.fspath(path) == str(target):
            os.rmdir(path)
            os.symlink(victim, path)

    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    with pytest.raises(ErrorReport):
        registry.build_pool(ref)
    after = victim.stat()
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
    )
    assert victim.read_bytes() == b"secret"
    registry.close()


@pytest.mark.parametrize("reload", ["load", "ensure_pool"])
def test_a_reload_leaves_a_pool_whose_folder_is_being_deleted_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reload: str
) -> None:
    """SIGHUP's reload starts autostart pools; one whose pool-delete waits on a frozen file
    system (here: until ``go``) must not end up running over the removed folder."""
    target = tmp_path / "p"
    target.mkdir()
    registry = StorageRegistry(tmp_path / "state", sync_uploads=False)
    ref = registry.define_pool_xml(pool_xml("p", target))
    registry.set_pool_autostart(ref, True)
    deleting, go = threading.Event(), threading.Event()
    delete_directory = pool_module.Pool.delete_directory

    def frozen(self: pool_module.Pool, flags: int) -> None:
        deleting.set()
        go.wait()
        delete_directory(self, flags)

    monkeypatch.setattr(pool_module.Pool, "delete_directory", frozen)
    delete = threading.Thread(target=registry.delete_pool, args=(ref,))
    delete.start()
    assert deleting.wait(10)
    if reload == "load":
        registry.load()
    else:
        registry.ensure_pool("p", target)
    running_meanwhile = registry.pool_is_active(ref)
    go.set()
    delete.join(10)
    assert not running_meanwhile
    assert not registry.pool_is_active(ref)
    assert not target.exists()


def test_build_and_delete_are_told_before_what_follows_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pool-build and pool-delete do their folder work outside the registry's lock; their
    events were told after it too, so a start, a destroy or an undefine of the pool in
    that instant reached clients first: CREATED after STARTED and STOPPED, DELETED for a
    pool already undefined."""
    registry = StorageRegistry(tmp_path / "state")
    told: list[PoolEvent] = []
    registry.on_event = lambda ref, event: told.append(event)
    ref = registry.define_pool_xml(pool_xml("p", tmp_path / "p"))
    job_done = threading.Event()
    go_on = threading.Event()
    run_job = StorageRegistry._run_job

    def pausing_after(self: StorageRegistry, *args: Any) -> None:
        run_job(self, *args)
        job_done.set()
        assert go_on.wait(10)

    monkeypatch.setattr(StorageRegistry, "_run_job", pausing_after)

    def meanwhile(call: Callable[[PoolRef], None], *then: Callable[[PoolRef], None]) -> None:
        job_done.clear()
        go_on.clear()
        worker = threading.Thread(target=call, args=(ref,))
        worker.start()
        assert job_done.wait(10)
        for step in then:
            step(ref)
        go_on.set()
        worker.join(10)

    told.clear()
    meanwhile(registry.build_pool, registry.start_pool, registry.destroy_pool)
    assert told == [PoolEvent.CREATED, PoolEvent.STARTED, PoolEvent.STOPPED]
    told.clear()
    meanwhile(registry.delete_pool, registry.undefine_pool)
    assert told == [PoolEvent.DELETED, PoolEvent.UNDEFINED]


def test_a_directory_unread_for_the_clean_up_is_logged_and_keeps_the_pool(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The leftovers' clean-up runs once the pool runs and its start or refresh was
    answered for: a directory whose entries cannot be read for it then is a warning in
    the log, for pool-refresh as for pool-start, not a failure of the call."""

    def unreadable(self: volumes_module.VolumeDir) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", self.path)

    monkeypatch.setattr(volumes_module.VolumeDir, "remove_stale_temps", unreadable)
    setup.registry.refresh_pool(setup.ref)
    setup.registry.destroy_pool(setup.ref)
    setup.registry.start_pool(setup.ref)
    assert setup.registry.pool_is_active(setup.ref)
    assert caplog.text.count(f"cannot read directory '{setup.pool_dir}'") == 2


class _StopsAtTheSecondLock:
    """The registry's lock, which runs ``stop`` as a call takes it a second time: a stop
    that comes between two steps of the call."""

    def __init__(self, registry: StorageRegistry, stop: Callable[[], None]) -> None:
        self._registry = registry
        self._real = registry._lock
        self._stop = stop
        self._taken = 0

    def __enter__(self) -> None:
        self._taken += 1
        if self._taken == 2:
            self._registry._lock = self._real
            self._stop()
        self._real.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._real.release()


def test_pool_info_racing_a_stop_gives_the_pool_before_or_after_it(setup: PoolSetup) -> None:
    """pool-info and pool-destroy of a pool defined anew while it ran: the info is either
    the running pool's with its sizes or the stopped pool's, as libvirtd (which answers it
    under the pool's lock) gives it; never a running pool of no size."""
    registry, ref = setup.registry, setup.ref
    running = registry.pool_info(ref)
    assert running.capacity > 0
    registry.define_pool_xml(registry.pool_xml(ref, PoolXMLFlags.INACTIVE))
    registry._lock = _StopsAtTheSecondLock(  # type: ignore[assignment]
        registry, lambda: registry.destroy_pool(ref)
    )
    info = registry.pool_info(ref)
    assert not registry.pool_is_active(ref)  # stopped during the call
    assert info.state is PoolState.INACTIVE or info == running


def test_pool_xml_racing_a_stop_gives_the_pool_before_or_after_it(
    setup: PoolSetup, tmp_path: Path
) -> None:
    """As pool-info above, for pool-dumpxml: the running definition with its sizes, or the
    one the stop put in its place; never the running one with no sizes."""
    registry, ref = setup.registry, setup.ref
    running = registry.pool_xml(ref)
    assert "<capacity unit='bytes'>0</capacity>" not in running
    other = tmp_path / "other"
    other.mkdir()
    registry.define_pool_xml(
        registry.pool_xml(ref, PoolXMLFlags.INACTIVE).replace(str(setup.pool_dir), str(other))
    )
    registry._lock = _StopsAtTheSecondLock(  # type: ignore[assignment]
        registry, lambda: registry.destroy_pool(ref)
    )
    xml = registry.pool_xml(ref)
    assert not registry.pool_is_active(ref)  # stopped during the call
    assert str(other) in xml or "<capacity unit='bytes'>0</capacity>" not in xml
