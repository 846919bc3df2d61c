"""libvirt's secret procedures on virtvold, driven by virsh 9.0 and python3-libvirt 9.0."""

from __future__ import annotations

import base64
import json
import stat
from typing import TYPE_CHECKING

from tests.conftest import Virtvold, run_system_python, run_virsh, start_virtvold, stop_virtvold

if TYPE_CHECKING:
    from pathlib import Path

# A Ceph key's shape; the test only needs it to be recognisable in files and logs.
KEY = base64.b64decode("AQBvaFtjAAAAABAAsG4n1+8bHDwYgUuxGQTw8w==")
KEY_B64 = base64.b64encode(KEY).decode()
UUID = "5f8e4ad3-7c1b-4d0c-9a3e-0b9a1c2d3e4f"


def _secret_xml(path: Path, *, private: bool, usage: str = "client.admin secret") -> Path:
    path.write_text(
        f"<secret ephemeral='no' private='{'yes' if private else 'no'}'>"
        f"<uuid>{UUID}</uuid><description>rbd key</description>"
        f"<usage type='ceph'><name>{usage}</name></usage></secret>"
    )
    return path


def test_virsh_secret_lifecycle(virtvold: Virtvold, tmp_path: Path) -> None:
    uri = virtvold.tcp_uri
    defined = run_virsh(uri, "secret-define", str(_secret_xml(tmp_path / "s.xml", private=True)))
    assert f"Secret {UUID} created" in defined.stdout
    # virsh 9.0 still takes the value as a positional argument (with a warning).
    assert "Secret value set" in run_virsh(uri, "secret-set-value", UUID, KEY_B64).stdout
    listing = run_virsh(uri, "secret-list").stdout
    assert UUID in listing
    assert "ceph client.admin secret" in listing
    dumped = run_virsh(uri, "secret-dumpxml", UUID).stdout
    assert "<usage type='ceph'>" in dumped
    assert "<name>client.admin secret</name>" in dumped
    assert "private='yes'" in dumped

    refused = run_virsh(uri, "secret-get-value", UUID, check=False)
    assert refused.returncode != 0
    assert "Invalid secret: secret is private" in refused.stderr
    assert KEY_B64 not in refused.stdout + refused.stderr

    folder = virtvold.state_dir / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(p.name for p in folder.iterdir())
    assert files == [f"{UUID}.base64", f"{UUID}.xml"]
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode((folder / f"{UUID}.base64").read_bytes()) == KEY

    ro = run_virsh(virtvold.ro_uri, "secret-set-value", UUID, "--base64", KEY_B64, check=False)
    assert "read only access prevents virSecretSetValue" in ro.stderr
    assert UUID in run_virsh(virtvold.ro_uri, "secret-list").stdout

    run_virsh(uri, "secret-undefine", UUID)
    assert UUID not in run_virsh(uri, "secret-list").stdout
    assert list(folder.iterdir()) == []
    missing = run_virsh(uri, "secret-dumpxml", UUID, check=False)
    assert f"Secret not found: no secret with matching uuid '{UUID}'" in missing.stderr
    assert KEY_B64 not in virtvold.log_text()


def test_public_secret_value_survives_a_restart(tmp_path: Path) -> None:
    daemon = start_virtvold(tmp_path / "first")
    try:
        xml = _secret_xml(tmp_path / "s.xml", private=False)
        run_virsh(daemon.tcp_uri, "secret-define", str(xml))
        run_virsh(daemon.tcp_uri, "secret-set-value", UUID, "--base64", KEY_B64)
        got = run_virsh(daemon.tcp_uri, "secret-get-value", UUID).stdout.strip()
        assert got == KEY_B64
    finally:
        stop_virtvold(daemon)
    again = start_virtvold(tmp_path / "first")
    try:
        got = run_virsh(again.tcp_uri, "secret-get-value", UUID).stdout.strip()
        assert got == KEY_B64
    finally:
        stop_virtvold(again)


def test_usage_belongs_to_one_secret(virtvold: Virtvold, tmp_path: Path) -> None:
    run_virsh(virtvold.tcp_uri, "secret-define", str(_secret_xml(tmp_path / "a", private=True)))
    other = tmp_path / "b"
    other.write_text(
        "<secret><uuid>00000000-0000-4000-8000-000000000001</uuid>"
        "<usage type='ceph'><name>client.admin secret</name></usage></secret>"
    )
    clash = run_virsh(virtvold.tcp_uri, "secret-define", str(other), check=False)
    assert clash.returncode != 0
    assert f"a secret with UUID {UUID} already defined for use with client.admin" in clash.stderr
    no_name = tmp_path / "c"
    no_name.write_text("<secret><usage type='ceph'/></secret>")
    bad = run_virsh(virtvold.tcp_uri, "secret-define", str(no_name), check=False)
    assert "Ceph usage specified, but name is missing" in bad.stderr


PY_SECRETS = r"""
import json, sys, libvirt
import base64
uri, uuid, key = sys.argv[1], sys.argv[2], base64.b64decode(sys.argv[3])
conn = libvirt.open(uri)
out = {}
xml = ("<secret ephemeral='no' private='no'><uuid>%s</uuid>"
       "<usage type='ceph'><name>pool key</name></usage></secret>" % uuid)
secret = conn.secretDefineXML(xml)
secret.setValue(key)
found = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, "pool key")
out["by_usage"] = found.UUIDString()
out["usage_id"] = found.usageID()
out["usage_type"] = found.usageType()
out["value"] = base64.b64encode(conn.secretLookupByUUIDString(uuid).value()).decode()
out["all"] = [s.UUIDString() for s in conn.listAllSecrets()]
out["listed"] = conn.listSecrets()
out["count"] = conn.numOfSecrets()
out["private_only"] = len(conn.listAllSecrets(libvirt.VIR_CONNECT_LIST_SECRETS_PRIVATE))
secret.undefine()
try:
    conn.secretLookupByUUIDString(uuid)
except libvirt.libvirtError as exc:
    out["after_undefine"] = [exc.get_error_code(), exc.get_error_domain()]
print(json.dumps(out))
"""


def test_python_libvirt_secrets(virtvold: Virtvold) -> None:
    result = json.loads(run_system_python(PY_SECRETS, virtvold.tcp_uri, UUID, KEY_B64).stdout)
    assert result["by_usage"] == UUID
    assert result["usage_id"] == "pool key"
    assert result["usage_type"] == 2  # VIR_SECRET_USAGE_TYPE_CEPH
    assert result["value"] == KEY_B64
    assert result["all"] == [UUID]
    assert result["listed"] == [UUID]
    assert result["count"] == 1
    assert result["private_only"] == 0
    assert result["after_undefine"] == [66, 30]  # VIR_ERR_NO_SECRET, VIR_FROM_SECRET
