"""The secret store on its own: persistence, ephemeral secrets, filters, private values."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import stat
import threading
import uuid
from typing import TYPE_CHECKING

import pytest

from virtvol.daemon.config import ConfigError, settings_from_toml
from virtvol.daemon.storage.secrets import ListSecretsFlags, SecretStore, UsageType
from virtvol.protocol.errors import ErrorCode, ErrorReport

if TYPE_CHECKING:
    from pathlib import Path


def _xml(usage: str, *, private: bool = False, ephemeral: bool = False, uid: str = "") -> str:
    flags = f"ephemeral='{'yes' if ephemeral else 'no'}' private='{'yes' if private else 'no'}'"
    body = f"<uuid>{uid}</uuid>" if uid else ""
    return f"<secret {flags}>{body}<usage type='ceph'><name>{usage}</name></usage></secret>"


def test_persistent_secret_comes_back_with_its_value(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    defined = store.define_xml(_xml("a", private=True))
    store.set_value(defined.uuid, b"\x00key\xff")
    folder = tmp_path / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    again = SecretStore(folder)
    again.load()
    assert again.lookup_by_usage(UsageType.CEPH, "a") == defined
    assert again.value_for_pool(defined.uuid, None) == b"\x00key\xff"
    assert again.value_for_pool(None, "a") == b"\x00key\xff"
    with pytest.raises(ErrorReport) as refused:
        again.get_value(defined.uuid)
    assert refused.value.code == ErrorCode.INVALID_SECRET
    assert "key" not in refused.value.message


def test_ephemeral_secret_never_touches_the_disk(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    defined = store.define_xml(_xml("e", ephemeral=True))
    store.set_value(defined.uuid, b"v")
    assert store.get_value(defined.uuid) == b"v"
    assert not (tmp_path / "secrets").exists()


def test_list_filters_and_value_missing(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    private = store.define_xml(_xml("p", private=True, uid=str(uuid.UUID(int=1))))
    public = store.define_xml(_xml("q", ephemeral=True, uid=str(uuid.UUID(int=2))))
    assert store.list_all() == [private, public]
    assert store.list_all(ListSecretsFlags.PRIVATE) == [private]
    assert store.list_all(ListSecretsFlags.NO_PRIVATE) == [public]
    assert store.list_all(ListSecretsFlags.EPHEMERAL | ListSecretsFlags.PRIVATE) == []
    with pytest.raises(ErrorReport) as no_value:
        store.value_for_pool(private.uuid, None)
    assert no_value.value.code == ErrorCode.NO_SECRET
    assert "does not have a value" in no_value.value.message
    store.undefine(private.uuid)
    assert list((tmp_path / "secrets").iterdir()) == []


def test_unreadable_secret_files_are_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / f"{uuid.UUID(int=7)}.xml").write_text("<secret>")
    good = SecretStore(folder)
    defined = good.define_xml(_xml("ok"))
    again = SecretStore(folder)
    again.load()
    assert again.list_all() == [defined]


def test_key_files_offer_private_ceph_secrets(tmp_path: Path) -> None:
    bare = tmp_path / "bare.key"
    bare.write_text("AQBvaFtjAAAAABAAsG4n1+8bHDwYgUuxGQTw8w==\n")
    store = SecretStore(tmp_path / "secrets")
    offered = store.offer_key_file("k", str(bare))
    assert offered.private
    assert offered.ephemeral
    assert store.value_for_pool(None, "k") == base64.b64decode(bare.read_text())
    assert store.offer_key_file("k", str(bare)).uuid == offered.uuid  # stable
    with pytest.raises(ErrorReport) as clash:
        store.define_xml(_xml("k"))
    assert "already defined for use with k" in clash.value.message
    garbage = tmp_path / "garbage"
    garbage.write_text("[client.x]\n\tcaps = none\n")
    with pytest.raises(ErrorReport) as bad:
        store.offer_key_file("g", str(garbage))
    assert f"no cephx key in '{garbage}'" in bad.value.message
    with pytest.raises(ErrorReport) as missing:
        store.offer_key_file("m", str(tmp_path / "absent"))
    assert "cannot read ceph key file" in missing.value.message
    assert not (tmp_path / "secrets").exists()


def test_config_ceph_keys_must_name_files() -> None:
    assert settings_from_toml({"ceph_keys": {"k": "/a"}}, "f").ceph_keys == {"k": "/a"}
    with pytest.raises(ConfigError, match=r"\[ceph_keys\] must map usage names to key files"):
        settings_from_toml({"ceph_keys": {"k": 1}}, "f")


def test_lookups_do_not_wait_for_a_secret_reaching_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encrypted volume's XML looks its secret up: a state directory slow to flush
    another secret's files holds up that secret's change, never the lookups."""
    store = SecretStore(tmp_path / "secrets")
    known = store.define_xml(_xml("known"))
    flushing, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def stalled_fsync(fd: int) -> None:
        flushing.set()
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", stalled_fsync)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        change = pool.submit(store.define_xml, _xml("new"))
        try:
            assert flushing.wait(5)
            with concurrent.futures.ThreadPoolExecutor(1) as reader:
                lookup = reader.submit(store.find_by_usage, UsageType.CEPH, "known")
                assert lookup.result(timeout=2) == known
                listing = reader.submit(store.list_all)
                assert listing.result(timeout=2) == [known]
        finally:
            release.set()
        assert change.result(timeout=10).usage_id == "new"
    assert store.find_by_usage(UsageType.CEPH, "new") is not None
