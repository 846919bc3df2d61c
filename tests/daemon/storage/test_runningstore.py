"""What the running directory pools ran with is kept for the next start of the daemon
in this boot, and only in this boot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtvol.daemon.storage import runningstore
from virtvol.daemon.storage.poolxml import parse_pool_xml
from virtvol.daemon.storage.runningstore import RunningStore

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

POOL = "<pool type='dir'><name>images</name><target><path>/srv/images</path></target></pool>"


def test_a_record_is_kept_within_a_boot(tmp_path: Path) -> None:
    store = RunningStore(tmp_path)
    definition = parse_pool_xml(POOL)
    store.save(definition)
    assert store.load() == [definition]
    store.remove("images")
    assert store.load() == []


def test_no_record_is_trusted_where_the_boot_cannot_be_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the kernel's boot id, a host's restart would not show: a transient pool
    would come back after it. Nothing is restored then, and the records go."""
    monkeypatch.setattr(runningstore, "_BOOT_ID", str(tmp_path / "no-such-boot-id"))
    store = RunningStore(tmp_path)
    store.save(parse_pool_xml(POOL))
    assert (store.directory / "images.xml").exists()
    assert store.load() == []
    assert list(store.directory.iterdir()) == []
