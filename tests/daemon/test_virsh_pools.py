"""Real virsh 9.0 managing pools and volumes through virtvold, over TCP and the Unix socket."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Virtvold, run_virsh

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(params=["tcp", "unix"])
def uri(request: pytest.FixtureRequest, virtvold: Virtvold) -> str:
    return virtvold.tcp_uri if request.param == "tcp" else virtvold.unix_uri


def test_pool_lifecycle(uri: str, tmp_path: Path) -> None:
    target = tmp_path / "other"
    target.mkdir()
    assert (
        "Pool other defined"
        in run_virsh(uri, "pool-define-as", "other", "dir", "--target", str(target)).stdout
    )
    listing = run_virsh(uri, "pool-list", "--all").stdout
    assert " default   active     yes" in listing
    assert " other     inactive   no" in listing
    assert "Pool other started" in run_virsh(uri, "pool-start", "other").stdout
    info = run_virsh(uri, "pool-info", "other").stdout
    assert "State:          running" in info
    assert "Persistent:     yes" in info
    assert "Capacity:" in info
    again = run_virsh(uri, "pool-start", "other", check=False)
    assert again.returncode == 1
    assert "storage pool 'other' is already active" in again.stderr
    busy = run_virsh(uri, "pool-undefine", "other", check=False)
    assert "Requested operation is not valid: storage pool 'other' is still active" in busy.stderr
    assert "Pool other destroyed" in run_virsh(uri, "pool-destroy", "other").stdout
    assert "State:          inactive" in run_virsh(uri, "pool-info", "other").stdout
    assert "Pool other has been undefined" in run_virsh(uri, "pool-undefine", "other").stdout
    assert "other" not in run_virsh(uri, "pool-list", "--all").stdout


def test_volume_lifecycle(uri: str, virtvold: Virtvold) -> None:
    assert "Vol v1 created" in run_virsh(uri, "vol-create-as", "default", "v1", "1M").stdout
    assert (
        "Vol thin created"
        in run_virsh(uri, "vol-create-as", "default", "thin", "10M", "--allocation", "0").stdout
    )
    details = run_virsh(uri, "vol-list", "default", "--details").stdout.splitlines()
    rows = [line.split() for line in details[2:] if line.strip()]
    assert rows == [
        ["thin", str(virtvold.pool_dir / "thin"), "file", "10.00", "MiB", "0.00", "B"],
        ["v1", str(virtvold.pool_dir / "v1"), "file", "1.00", "MiB", "1.00", "MiB"],
    ]
    info = run_virsh(uri, "vol-info", "--pool", "default", "v1", "--bytes").stdout
    assert "Capacity:       1048576 bytes" in info
    assert "Allocation:     1048576 bytes" in info
    xml = run_virsh(uri, "vol-dumpxml", "--pool", "default", "thin").stdout
    assert f"<key>{virtvold.pool_dir / 'thin'}</key>" in xml
    assert "<capacity unit='bytes'>10485760</capacity>" in xml
    assert "<allocation unit='bytes'>0</allocation>" in xml
    assert os.stat(virtvold.pool_dir / "thin").st_blocks == 0
    assert "Vol thin deleted" in run_virsh(uri, "vol-delete", "--pool", "default", "thin").stdout
    assert not (virtvold.pool_dir / "thin").exists()


def test_missing_pool_and_volume(uri: str) -> None:
    pool = run_virsh(uri, "pool-info", "nope", check=False)
    assert pool.returncode == 1
    assert pool.stderr.splitlines() == [
        "error: failed to get pool 'nope'",
        "error: Storage pool not found: no storage pool with matching name 'nope'",
    ]
    vol = run_virsh(uri, "vol-info", "--pool", "default", "nope", check=False)
    assert vol.stderr.splitlines() == [
        "error: failed to get vol 'nope'",
        "error: Storage volume not found: no storage vol with matching path 'nope'",
    ]


def test_volume_name_escaping_the_pool(uri: str, virtvold: Virtvold) -> None:
    escape = run_virsh(uri, "vol-create-as", "default", "../evil", "1M", check=False)
    assert escape.returncode == 1
    assert "volume name '../evil' cannot contain '/'" in escape.stderr
    assert not (virtvold.pool_dir.parent / "evil").exists()
    lookup = run_virsh(uri, "vol-info", "--pool", "default", "../state", check=False)
    assert lookup.returncode == 1
    assert "Storage volume not found" in lookup.stderr


def test_read_only_socket_refuses_changes(virtvold: Virtvold) -> None:
    run_virsh(virtvold.unix_uri, "vol-create-as", "default", "v1", "1M")
    listing = run_virsh(virtvold.ro_uri, "vol-list", "default").stdout
    assert "v1" in listing
    for args, context, function in [
        (
            ("vol-create-as", "default", "v2", "1M"),
            "Failed to create vol v2",
            "virStorageVolCreateXML",
        ),
        (
            ("vol-delete", "--pool", "default", "v1"),
            "Failed to delete vol v1",
            "virStorageVolDelete",
        ),
        (("pool-refresh", "default"), "Failed to refresh pool default", "virStoragePoolRefresh"),
    ]:
        denied = run_virsh(virtvold.ro_uri, *args, check=False)
        assert denied.returncode == 1
        assert denied.stderr.splitlines() == [
            f"error: {context}",
            f"error: operation forbidden: read only access prevents {function}",
        ]
    assert (virtvold.pool_dir / "v1").exists()
