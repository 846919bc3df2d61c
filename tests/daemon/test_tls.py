"""virtvold's tls:// listener against real virsh 9.0, python3-libvirt 9.0 and virtvol.

One throwaway CA per module (tests/tlsca.py). The daemon requires client
certificates, checks them against the CA and the revocation list, and admits
only DNs matching ``tls_allowed_dn_list``; refused clients get libvirt's error.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

import virtvol.client
from tests.client.test_direct import run_cli_probe
from tests.conftest import Virtvold, free_port, run_system_python, run_virsh, start_virtvold
from tests.conftest import stop_virtvold as stop_daemon
from tests.daemon.conftest import RawClient, allocated, assert_same_content, make_sparse_file
from tests.tlsca import CLIENT_DN, Pki, issue_client, new_ca, write_crl, write_server_pki
from virtvol.client.errors import LibvirtError
from virtvol.protocol.connection import Connection
from virtvol.protocol.procedures import Proc
from virtvol.protocol.stream import Side

if TYPE_CHECKING:
    from collections.abc import Iterator

MIB = 1 << 20
REFUSED = "Unable to read TLS confirmation: Input/output error"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _write_config(path: Path, pki: Pki, *, crl: Path | None = None, extra: str = "") -> Path:
    lines = [
        f'ca_file = "{pki.server / "cacert.pem"}"',
        f'cert_file = "{pki.server / "servercert.pem"}"',
        f'key_file = "{pki.server / "serverkey.pem"}"',
        'tls_allowed_dn_list = ["C=GB,ST=London,L=London,O=Red Hat,CN=*"]',
    ]
    if crl is not None:
        lines.append(f'crl_file = "{crl}"')
    path.write_text("\n".join([*lines, extra, ""]))
    return path


def _server_config(tmp_path: Path, pki: Pki, server: Path, extra: str = "") -> Path:
    """A config with ``server``'s certificate and key, and the PKI's CA."""
    config = tmp_path / "virtvold.toml"
    config.write_text(
        f'ca_file = "{pki.server / "cacert.pem"}"\n'
        f'cert_file = "{server / "servercert.pem"}"\n'
        f'key_file = "{server / "serverkey.pem"}"\n{extra}'
    )
    return config


class TlsDaemon:
    def __init__(self, daemon: Virtvold, port: int, config: Path) -> None:
        self.daemon = daemon
        self.port = port
        self.config = config

    def uri(self, pki: Pki, case: str, extra: str = "") -> str:
        return f"storage+tls://127.0.0.1:{self.port}/system?pkipath={pki.client_dir(case)}{extra}"

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.daemon.log_text()
            if text in log:
                return log
            time.sleep(0.05)
        pytest.fail(f"{text!r} not in the daemon log:\n{self.daemon.log_text()}")


def start_tls_daemon(tmp_path: Path, config: Path) -> TlsDaemon:
    """virtvold under ``tmp_path`` with ``config``, listening for TLS on a free port."""
    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    return TlsDaemon(daemon, port, config)


@pytest.fixture
def tls_daemon(tmp_path: Path, pki: Pki) -> Iterator[TlsDaemon]:
    config = _write_config(tmp_path / "virtvold.toml", pki, crl=pki.crl)
    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    try:
        yield TlsDaemon(daemon, port, config)
    finally:
        stop_daemon(daemon)


def _sparse_source_and_volume(uri: str, tmp_path: Path) -> Path:
    """A 6 MiB sparse image with two runs of data, and a volume "disk" to upload it into."""
    source = make_sparse_file(
        tmp_path / "source.img",
        6 * MIB,
        [(0, os.urandom(3 * MIB + 17)), (5 * MIB, b"WORLD")],
    )
    run_virsh(uri, "vol-create-as", "default", "disk", "1M")
    return source


def test_virsh_sparse_round_trip(tls_daemon: TlsDaemon, pki: Pki, tmp_path: Path) -> None:
    uri = tls_daemon.uri(pki, "client")
    source = _sparse_source_and_volume(uri, tmp_path)
    run_virsh(uri, "vol-upload", "--pool", "default", "disk", str(source), "--sparse")
    volume = tls_daemon.daemon.pool_dir / "disk"
    assert_same_content(source, volume)
    assert allocated(volume) <= allocated(source) + 64 * 1024
    out = tmp_path / "out.img"
    run_virsh(uri, "vol-download", "--pool", "default", "disk", str(out), "--sparse")
    assert out.read_bytes() == source.read_bytes()
    assert allocated(out) <= allocated(source) + 64 * 1024
    log = tls_daemon.wait_for_log(f"as DN '{CLIENT_DN}'")
    assert "on tls://127.0.0.1:" in log


def test_virtvol_command_round_trip_without_an_event_loop(
    tls_daemon: TlsDaemon, pki: Pki, tmp_path: Path
) -> None:
    """The command line over its own blocking TLS socket: a sparse image up and back with
    its bytes and holes, and neither asyncio nor typing imported."""
    uri = tls_daemon.uri(pki, "client")
    source = _sparse_source_and_volume(uri, tmp_path)
    up = run_cli_probe(
        "-c", uri, "vol-upload", "--pool", "default", "disk", str(source), "--sparse"
    )
    assert "asyncio imported: False status: 0" in up.stdout, up.stderr
    # Nor typing, nor libvirt's error numbers while no error came (~1.7 ms of a TLS
    # command's start); re may come with the ssl module.
    assert "typing, urllib.parse, re imported: [False, False, " in up.stdout
    assert "error numbers imported: False" in up.stdout
    volume = tls_daemon.daemon.pool_dir / "disk"
    assert_same_content(source, volume)
    out = tmp_path / "out.img"
    down = run_cli_probe(
        "-c", uri, "vol-download", "--pool", "default", "disk", str(out), "--sparse"
    )
    assert "asyncio imported: False status: 0" in down.stdout, down.stderr
    assert "typing, urllib.parse, re imported: [False, False, " in down.stdout
    assert "error numbers imported: False" in down.stdout
    assert out.read_bytes() == source.read_bytes()
    assert allocated(out) <= allocated(source) + 64 * 1024


def test_python_libvirt_connects(tls_daemon: TlsDaemon, pki: Pki) -> None:
    code = (
        "import sys, libvirt\n"
        "conn = libvirt.open(sys.argv[1])\n"
        "print(conn.getType(), [p.name() for p in conn.listAllStoragePools()])\n"
        "conn.close()\n"
    )
    out = run_system_python(code, tls_daemon.uri(pki, "client")).stdout
    assert out.strip() == "storage ['default']"


async def test_virtvol_library_sparse_round_trip(
    tls_daemon: TlsDaemon, pki: Pki, tmp_path: Path
) -> None:
    source = make_sparse_file(
        tmp_path / "source.img",
        40 * MIB,
        [(MIB, os.urandom(9 * MIB)), (30 * MIB, os.urandom(5 * MIB + 3))],
    )
    out = tmp_path / "out.img"
    async with virtvol.client.connect(tls_daemon.uri(pki, "client")) as conn:
        pool = await conn.lookup_pool_by_name("default")
        vol = await pool.create_volume(
            f"<volume><name>disk</name><capacity unit='bytes'>{40 * MIB}</capacity></volume>"
        )
        sent = await vol.upload_file(source)
        received = await vol.download_file(out)
    assert out.read_bytes() == source.read_bytes()
    assert allocated(out) <= allocated(source) + 64 * 1024
    # Holes travelled as holes both ways, the data as data.
    for result in (sent, received):
        assert result.sparse
        assert 14 * MIB + 3 <= result.data_bytes <= 14 * MIB + 4096
        assert result.data_bytes + result.hole_bytes == 40 * MIB


REFUSALS = [
    ("other", "is not on the list of allowed clients (tls_allowed_dn_list)"),
    ("wrongca", "unable to get local issuer certificate"),
    ("expired", "certificate has expired"),
    ("revoked", "certificate revoked"),
    ("nocert", "no client certificate was presented"),
]


@pytest.mark.parametrize(("case", "logged"), REFUSALS, ids=[case for case, _ in REFUSALS])
async def test_refused_clients(tls_daemon: TlsDaemon, pki: Pki, case: str, logged: str) -> None:
    # no_sanity: virsh would refuse to send an expired or foreign certificate itself.
    proc = run_virsh(tls_daemon.uri(pki, case, "&no_sanity=1"), "pool-list", check=False)
    assert proc.returncode == 1
    assert REFUSED in proc.stderr, proc.stderr
    with pytest.raises(LibvirtError) as caught:
        await virtvol.client.connect(tls_daemon.uri(pki, case))
    assert caught.value.message == REFUSED
    log = tls_daemon.wait_for_log(logged)
    line = next(line for line in log.splitlines() if logged in line)
    assert "WARNING" in line
    assert "127.0.0.1:" in line
    assert "connected on tls" not in log


def test_plain_text_to_the_tls_port(tls_daemon: TlsDaemon) -> None:
    proc = run_virsh(f"storage+tcp://127.0.0.1:{tls_daemon.port}/system", "uri", check=False)
    assert proc.returncode == 1
    assert "End of file while reading data" in proc.stderr
    tls_daemon.wait_for_log("TLS handshake failed: the client does not speak TLS")


async def test_client_checks_the_server(tls_daemon: TlsDaemon, pki: Pki) -> None:
    with pytest.raises(LibvirtError) as caught:
        await virtvol.client.connect(tls_daemon.uri(pki, "untrusting"))
    assert caught.value.message == "authentication failed: Failed to verify peer's certificate"
    virsh = run_virsh(tls_daemon.uri(pki, "untrusting", "&no_sanity=1"), "uri", check=False)
    assert "authentication failed: Failed to verify peer's certificate" in virsh.stderr
    # no_verify=1 skips the check of the server, as libvirt does.
    async with virtvol.client.connect(tls_daemon.uri(pki, "untrusting", "&no_verify=1")) as conn:
        assert await conn.get_type() == "storage"


def test_cli_error_and_missing_files(tls_daemon: TlsDaemon, pki: Pki, tmp_path: Path) -> None:
    cli = [str(Path(sys.executable).parent / "virtvol")]
    refused = subprocess.run(
        [*cli, "-c", tls_daemon.uri(pki, "other"), "pool-list"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert refused.returncode == 1
    assert refused.stderr == f"error: failed to connect to the hypervisor\nerror: {REFUSED}\n"
    missing = tmp_path / "none"
    uri = f"storage+tls://127.0.0.1:{tls_daemon.port}/system?pkipath={missing}"
    ours = subprocess.run(
        [*cli, "-c", uri, "pool-list"], capture_output=True, text=True, check=False, timeout=60
    )
    theirs = run_virsh(uri, "pool-list", check=False)
    expected = f"Cannot read CA certificate '{missing}/cacert.pem': No such file or directory"
    assert expected in theirs.stderr
    assert ours.stderr == f"error: failed to connect to the hypervisor\nerror: {expected}\n"


def test_sighup_reloads_the_revocation_list(tmp_path: Path, pki: Pki) -> None:
    crl = tmp_path / "cacrl.pem"
    write_crl(pki.ca, crl, [])
    config = _write_config(tmp_path / "virtvold.toml", pki, crl=crl)
    tls = start_tls_daemon(tmp_path, config)
    daemon = tls.daemon
    try:
        run_virsh(tls.uri(pki, "revoked"), "uri")
        write_crl(pki.ca, crl, [pki.revoked_serial])
        daemon.process.send_signal(signal.SIGHUP)
        tls.wait_for_log("configuration reloaded")
        proc = run_virsh(tls.uri(pki, "revoked", "&no_sanity=1"), "uri", check=False)
        assert REFUSED in proc.stderr
        tls.wait_for_log("certificate revoked")
        run_virsh(tls.uri(pki, "client"), "uri")
    finally:
        stop_daemon(daemon)


def _revocation_lists_with_a_certificate(pki: Pki, tmp_path: Path) -> tuple[Path, trustme.CA]:
    """A CRL file that holds, beside the CA's list, another CA's certificate and list:
    the file and that other CA."""
    other = new_ca()
    bundle = tmp_path / "crl-bundle.pem"
    other_list = write_crl(other, tmp_path / "other-crl.pem", [])
    bundle.write_bytes(pki.crl.read_bytes() + other.cert_pem.bytes() + other_list.read_bytes())
    return bundle, other


def test_a_certificate_in_the_crl_file_is_no_trusted_ca(tmp_path: Path, pki: Pki) -> None:
    """libvirt (gnutls) reads only revocation lists from its CRL file; OpenSSL would take
    a certificate there for a trusted CA, and let in the clients it signed."""
    bundle, other = _revocation_lists_with_a_certificate(pki, tmp_path)
    issue_client(other, tmp_path / "signed-by-other", trust=pki.ca)
    config = _write_config(tmp_path / "virtvold.toml", pki, crl=bundle)
    tls = start_tls_daemon(tmp_path, config)
    daemon, port = tls.daemon, tls.port
    try:
        run_virsh(tls.uri(pki, "client"), "uri")
        stranger = (
            f"storage+tls://127.0.0.1:{port}/system"
            f"?pkipath={tmp_path / 'signed-by-other'}&no_sanity=1"
        )
        assert REFUSED in run_virsh(stranger, "uri", check=False).stderr
        proc = run_virsh(tls.uri(pki, "revoked", "&no_sanity=1"), "uri", check=False)
        assert REFUSED in proc.stderr  # the CA's own list still counts
    finally:
        stop_daemon(daemon)


async def test_a_certificate_in_the_clients_crl_file_is_no_trusted_ca(
    tmp_path: Path, pki: Pki
) -> None:
    """The same on virtvol's side: a server whose certificate another CA signed is not
    trusted because that CA's certificate sits in the client's cacrl.pem."""
    bundle, other = _revocation_lists_with_a_certificate(pki, tmp_path)
    server = write_server_pki(other, tmp_path / "server")
    config = tmp_path / "virtvold.toml"
    config.write_text(
        f'ca_file = "{server / "cacert.pem"}"\n'
        f'cert_file = "{server / "servercert.pem"}"\n'
        f'key_file = "{server / "serverkey.pem"}"\n'
        "tls_no_verify_certificate = true\n"
    )
    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    client = tmp_path / "client"
    shutil.copytree(pki.client_dir("client"), client)
    shutil.copy(bundle, client / "cacrl.pem")
    uri = f"storage+tls://127.0.0.1:{port}/system?pkipath={client}"
    try:
        with pytest.raises(LibvirtError) as caught:
            await virtvol.client.connect(uri)
        assert caught.value.message == "authentication failed: Failed to verify peer's certificate"
        virsh = run_virsh(uri, "uri", check=False)
        assert "authentication failed: Failed to verify peer's certificate" in virsh.stderr
    finally:
        stop_daemon(daemon)


def test_bad_tls_setup_stops_start_up(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "virtvold.toml"
    config.write_text(f'ca_file = "{pki.server / "cacert.pem"}"\n')
    refusal = _start_up_refusal(config, tmp_path)
    assert "cannot set up TLS: cert_file, key_file must be set too" in refusal


def _start_up_refusal(config: Path, tmp_path: Path) -> str:
    """What virtvold says as it refuses to start with TLS as ``config`` sets it up."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtvol.daemon",
            "--config",
            str(config),
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            f"tls://127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("fault", ["expired", "not-yet-valid", "another-ca"])
def test_a_server_certificate_clients_would_refuse_stops_start_up(
    tmp_path: Path, pki: Pki, fault: str
) -> None:
    """As libvirtd refuses to start with it, rather than serve and have every client fail
    to verify it."""
    now = datetime.datetime.now(datetime.UTC)
    server = tmp_path / "server"
    server.mkdir()
    issuer = new_ca() if fault == "another-ca" else pki.ca
    # Valid from and until, in days from now: expired, not yet valid, or valid.
    days = {"expired": (-30, -1), "not-yet-valid": (1, 30)}.get(fault, (-1, 30))
    leaf = issuer.issue_cert(
        "127.0.0.1",
        key_type=trustme.KeyType.RSA,
        not_before=now + datetime.timedelta(days=days[0]),
        not_after=now + datetime.timedelta(days=days[1]),
    )
    leaf.cert_chain_pems[0].write_to_path(str(server / "servercert.pem"))
    leaf.private_key_pem.write_to_path(str(server / "serverkey.pem"))
    config = _server_config(tmp_path, pki, server)
    cert = server / "servercert.pem"
    expected = {
        "expired": f"The server certificate {cert} has expired",
        "not-yet-valid": f"The server certificate {cert} is not yet active",
        "another-ca": f"Our own certificate {cert} failed validation against"
        f" {pki.server / 'cacert.pem'}: The certificate hasn't got a known issuer.",
    }[fault]
    assert f"cannot set up TLS: {expected}" in _start_up_refusal(config, tmp_path)


def test_unix_socket_modes_and_group(tmp_path: Path, virtvold: Virtvold) -> None:
    # Defaults as libvirtd without polkit: read-write 0700, read-only 0777.
    rw = Path(virtvold.unix_uri.split("socket=")[1])
    ro = Path(virtvold.ro_uri.split("socket=")[1])
    assert stat.S_IMODE(rw.stat().st_mode) == 0o700
    assert stat.S_IMODE(ro.stat().st_mode) == 0o777
    group = os.getegid()
    config = tmp_path / "access.toml"
    config.write_text(
        f'unix_sock_group = "{group}"\nunix_sock_rw_perms = "0770"\nunix_sock_ro_perms = "0775"\n'
    )
    daemon = start_virtvold(tmp_path / "access", "--config", str(config))
    try:
        rw2 = Path(daemon.unix_uri.split("socket=")[1])
        ro2 = Path(daemon.ro_uri.split("socket=")[1])
        assert stat.S_IMODE(rw2.stat().st_mode) == 0o770
        assert stat.S_IMODE(ro2.stat().st_mode) == 0o775
        assert rw2.stat().st_gid == group
        run_virsh(daemon.unix_uri, "uri")
        # SO_PEERCRED: virsh's pid and uid, on the read-write socket.
        pattern = rf"pid (\d+) uid {os.geteuid()}: connected on unix://{rw2}$"
        pids = re.findall(pattern, daemon.log_text(), re.MULTILINE)
        assert len(pids) == 1
        assert int(pids[0]) != os.getpid()
    finally:
        stop_daemon(daemon)


def test_no_verify_certificate_lets_clients_in_unchecked(tmp_path: Path, pki: Pki) -> None:
    config = _write_config(
        tmp_path / "virtvold.toml", pki, extra="tls_no_verify_certificate = true"
    )
    tls = start_tls_daemon(tmp_path, config)
    daemon = tls.daemon
    try:
        # No certificate at all, and one off the allow-list: both get in.
        run_virsh(tls.uri(pki, "nocert"), "uri")
        run_virsh(tls.uri(pki, "other"), "uri")
        log = tls.wait_for_log("as TLS without a client certificate check")
        assert "client certificates not verified" in log
    finally:
        stop_daemon(daemon)


def test_logged_dn_is_the_one_libvirt_computes(tmp_path: Path, pki: Pki) -> None:
    """The DN virtvold matches and logs equals virt-pki-query-dn's (libvirt's own code)."""

    def rdn(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.RelativeDistinguishedName:
        return x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in attributes])

    subject = x509.Name(
        [
            rdn((NameOID.COUNTRY_NAME, "GB")),
            rdn((NameOID.ORGANIZATION_NAME, "Acme, Inc. <storage> a=b")),
            rdn((NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"), (NameOID.USER_ID, "u1")),
            rdn((NameOID.COMMON_NAME, "backup+1")),
            rdn((NameOID.EMAIL_ADDRESS, "root@example.org")),
        ]
    )
    client = tmp_path / "odd"
    issue_client(pki.ca, client, subject=subject)
    query = shutil.which("virt-pki-query-dn")
    assert query is not None, "virt-pki-query-dn missing: apt-get install -y libvirt-clients"
    expected = subprocess.run(
        [query, str(client / "clientcert.pem")], capture_output=True, text=True, check=True
    ).stdout.strip()
    config = _write_config(tmp_path / "virtvold.toml", pki)
    config.write_text(config.read_text().replace("CN=*", 'CN=*", "C=GB,O=Acme*'))
    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    try:
        run_virsh(f"storage+tls://127.0.0.1:{port}/system?pkipath={client}", "uri")
        TlsDaemon(daemon, port, config).wait_for_log(f"as DN '{expected}'")
    finally:
        stop_daemon(daemon)


def test_the_allowed_dn_list_means_what_it_means_to_libvirtd(tmp_path: Path, pki: Pki) -> None:
    """DNs with attributes gnutls prints as their OID and the hex of their encoding (an EV
    certificate's organizationIdentifier, any attribute it has no name for) and under its
    own names (jurisdictionOfIncorporationCountryName): a list written from libvirt's DN
    let such a client in to libvirtd only, and a pattern matched the text of a value
    libvirtd sees in hex ("*,CN=admin" against a value "x,CN=admin"), letting a client in
    to virtvold only."""
    query = shutil.which("virt-pki-query-dn")
    assert query is not None, "virt-pki-query-dn missing: apt-get install -y libvirt-clients"
    organization_id = x509.ObjectIdentifier("2.5.4.97")
    subjects = {
        "ev": x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
                x509.NameAttribute(NameOID.JURISDICTION_COUNTRY_NAME, "GB"),
                x509.NameAttribute(organization_id, "VATGB-123456789"),
                x509.NameAttribute(NameOID.COMMON_NAME, "client"),
            ]
        ),
        "sneaky": x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
                x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "x,CN=admin"),
            ]
        ),
    }
    dns = {}
    for case, subject in subjects.items():
        issue_client(pki.ca, tmp_path / case, subject=subject)
        dns[case] = subprocess.run(
            [query, str(tmp_path / case / "clientcert.pem")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.rstrip("\n")
    assert "CN=admin" not in dns["sneaky"]  # libvirt sees the value in hex
    config = tmp_path / "virtvold.toml"
    config.write_text(
        f'ca_file = "{pki.server / "cacert.pem"}"\n'
        f'cert_file = "{pki.server / "servercert.pem"}"\n'
        f'key_file = "{pki.server / "serverkey.pem"}"\n'
        f'tls_allowed_dn_list = ["{dns["ev"]}", "*,CN=admin"]\n'
    )
    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    try:
        tls = TlsDaemon(daemon, port, config)
        run_virsh(f"storage+tls://127.0.0.1:{port}/system?pkipath={tmp_path / 'ev'}", "uri")
        tls.wait_for_log(f"as DN '{dns['ev']}'")
        sneaky = f"storage+tls://127.0.0.1:{port}/system?pkipath={tmp_path / 'sneaky'}"
        refused = run_virsh(sneaky, "uri", check=False)
        assert refused.returncode == 1
        assert REFUSED in refused.stderr
        tls.wait_for_log(f"client's distinguished name '{dns['sneaky']}' is not on the list")
    finally:
        stop_daemon(daemon)


def test_stop_abandons_unfinished_handshakes(tls_daemon: TlsDaemon) -> None:
    """SIGTERM with a client stuck before its handshake: the daemon stops at once and the
    client's connection is closed, not left open."""
    with socket.create_connection(("127.0.0.1", tls_daemon.port), timeout=10) as stuck:
        time.sleep(0.3)  # accepted, handshake waiting for a ClientHello that never comes
        started = time.monotonic()
        assert stop_daemon(tls_daemon.daemon) == 0
        assert time.monotonic() - started < 8
        assert stuck.recv(1) == b""
    assert "stopped" in tls_daemon.daemon.log_text()


async def test_clients_refuse_a_revoked_server(
    tls_daemon: TlsDaemon, pki: Pki, tmp_path: Path
) -> None:
    """A cacrl.pem next to the client's files revokes the server's certificate: virtvol
    refuses to talk, as virsh does."""
    server = x509.load_pem_x509_certificate((pki.server / "servercert.pem").read_bytes())
    client = tmp_path / "client"
    shutil.copytree(pki.client_dir("client"), client)
    write_crl(pki.ca, client / "cacrl.pem", [server.serial_number])
    uri = f"storage+tls://127.0.0.1:{tls_daemon.port}/system?pkipath={client}"
    with pytest.raises(LibvirtError) as caught:
        await virtvol.client.connect(uri)
    assert caught.value.message == "authentication failed: Failed to verify peer's certificate"
    virsh = run_virsh(uri, "uri", check=False)
    assert "authentication failed: Failed to verify peer's certificate" in virsh.stderr


def test_sighup_with_broken_certificates_keeps_the_running_ones(tmp_path: Path, pki: Pki) -> None:
    server = tmp_path / "server"
    shutil.copytree(pki.server, server)
    config = tmp_path / "virtvold.toml"
    config.write_text(
        f'ca_file = "{server / "cacert.pem"}"\n'
        f'cert_file = "{server / "servercert.pem"}"\n'
        f'key_file = "{server / "serverkey.pem"}"\n'
    )
    tls = start_tls_daemon(tmp_path, config)
    daemon = tls.daemon
    try:
        run_virsh(tls.uri(pki, "client"), "uri")  # serving: the SIGHUP handler is in place
        (server / "serverkey.pem").unlink()
        daemon.process.send_signal(signal.SIGHUP)
        log = tls.wait_for_log("reload failed, keeping the running configuration")
        assert f"Cannot read private key '{server / 'serverkey.pem'}'" in log
        run_virsh(tls.uri(pki, "client"), "uri")
    finally:
        stop_daemon(daemon)


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_unfinished_handshakes_are_bounded(tmp_path: Path, pki: Pki) -> None:
    """Connections that never finish their TLS handshake are no connections yet, but count
    as such (as libvirtd counts them) among max_clients and the descriptors: they cannot
    eat the daemon's descriptors, and a client that does speak TLS still gets in once
    they are gone."""
    config = _write_config(tmp_path / "virtvold.toml", pki, extra="max_clients = 3")
    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    stuck: list[socket.socket] = []
    try:
        baseline = _open_descriptors(daemon.process.pid)
        for _ in range(40):
            stuck.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        await asyncio.sleep(0.5)  # accepted; no ClientHello ever comes
        # Each handshake in progress holds two descriptors; the rest are closed at once.
        assert _open_descriptors(daemon.process.pid) <= baseline + 2 * 3 + 2
        TlsDaemon(daemon, port, config).wait_for_log("max_clients (3) connections are open")
        for sock in stuck:
            sock.close()
        stuck.clear()
        # The daemon frees their places as it sees them closed, a moment later: a client
        # that came before that would still find max_clients reached.
        for _ in range(500):  # 10 s at most
            if _open_descriptors(daemon.process.pid) <= baseline:
                break
            await asyncio.sleep(0.02)
        uri = f"storage+tls://127.0.0.1:{port}/system?pkipath={pki.client_dir('client')}"
        async with virtvol.client.connect(uri, timeout=10) as conn:
            assert await conn.get_type() == "storage"
    finally:
        for sock in stuck:
            sock.close()
        stop_daemon(daemon)


async def test_stalled_handshakes_keep_no_tls_client_out(tls_daemon: TlsDaemon, pki: Pki) -> None:
    """Anyone who reaches the TLS port could keep every TLS client out with 20 connections
    that send nothing, made again as the handshake timeout closes them: libvirtd counts
    such connections among max_clients only, and so does virtvold now."""
    stuck = [
        socket.create_connection(("127.0.0.1", tls_daemon.port), timeout=10) for _ in range(25)
    ]
    try:
        # No ClientHello ever comes from them. The listener accepts in the order of
        # connecting: this client is asked about after all 25 are in their handshakes.
        async with virtvol.client.connect(tls_daemon.uri(pki, "client"), timeout=10) as conn:
            assert await conn.get_type() == "storage"
    finally:
        for sock in stuck:
            sock.close()


async def test_tls_handshakes_in_progress_count_on_every_listener(tmp_path: Path, pki: Pki) -> None:
    """A TLS handshake in progress holds a place among max_clients and two descriptors, and
    anyone who reaches the TLS port can stall one for handshake_timeout: the TCP listener
    let clients in without counting them, so stalled handshakes and plain connections
    together went past max_clients and into the descriptors kept for volume files. A
    handshake that ends in a connection counts as that connection only."""
    config = _write_config(tmp_path / "virtvold.toml", pki, extra="max_clients = 2")
    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    tls_daemon = TlsDaemon(daemon, port, config)
    stalled: socket.socket | None = None
    try:
        plain = await RawClient.connect(daemon.port)
        try:
            await plain.open()
            # One place left: a TLS client takes it, its handshake not counted besides.
            async with virtvol.client.connect(tls_daemon.uri(pki, "client"), timeout=10) as conn:
                assert await conn.get_type() == "storage"
            deadline = time.monotonic() + 10
            while "closed by CONNECT_CLOSE after" not in daemon.log_text():
                assert time.monotonic() < deadline, "the TLS client's place stayed taken"
                await asyncio.sleep(0.02)  # until the daemon sees the TLS client gone
            stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
            # The next one on the TLS port is refused: the stalled handshake is counted.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
                assert refused.recv(1) == b""
            # And so it is on the TCP port.
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as refused:
                refused.sendall(Connection(Side.CLIENT).call(Proc.AUTH_LIST)[1])
                try:  # closed unread: a reset, or an end if the call was not there yet
                    answer = refused.recv(1)
                except ConnectionResetError:
                    answer = b""
                assert answer == b"", "served"
        finally:
            await plain.close()
        assert daemon.log_text().count("max_clients (2) connections are open") >= 1
    finally:
        if stalled is not None:
            stalled.close()
        stop_daemon(daemon)


@pytest.mark.parametrize("intermediate_revoked", [False, True])
async def test_a_revoked_intermediate_ca_refuses_its_clients(
    tmp_path: Path, pki: Pki, intermediate_revoked: bool
) -> None:
    """Revoking a sub-CA in the root's CRL withdraws every client certificate it signed,
    though the client's own certificate is not on its sub-CA's (empty) CRL."""
    intermediate = pki.ca.create_child_ca(key_type=trustme.KeyType.RSA)
    client = tmp_path / "client"
    issue_client(intermediate, client, trust=pki.ca)
    with (client / "clientcert.pem").open("ab") as chain:
        chain.write(intermediate.cert_pem.bytes())
    serial = x509.load_pem_x509_certificate(intermediate.cert_pem.bytes()).serial_number
    root_crl = write_crl(pki.ca, tmp_path / "root.pem", [serial] if intermediate_revoked else [])
    crl = tmp_path / "cacrl.pem"
    crl.write_bytes(
        root_crl.read_bytes() + write_crl(intermediate, tmp_path / "sub.pem", []).read_bytes()
    )
    config = _write_config(tmp_path / "virtvold.toml", pki, crl=crl)
    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    uri = f"storage+tls://127.0.0.1:{port}/system?pkipath={client}"
    try:
        if not intermediate_revoked:
            async with virtvol.client.connect(uri, timeout=10) as conn:
                assert await conn.get_type() == "storage"
            return
        with pytest.raises(LibvirtError) as caught:
            await virtvol.client.connect(uri, timeout=10)
        assert caught.value.message == REFUSED
        TlsDaemon(daemon, port, config).wait_for_log("certificate revoked")
    finally:
        stop_daemon(daemon)


async def test_clients_refuse_a_server_from_a_revoked_sub_ca(tmp_path: Path, pki: Pki) -> None:
    """virtvol checks the revocation of every certificate of the server's chain, as virsh
    does: a server certificate signed by a sub-CA the root's CRL revoked is refused."""
    intermediate = pki.ca.create_child_ca(key_type=trustme.KeyType.RSA)
    leaf = intermediate.issue_cert("127.0.0.1", key_type=trustme.KeyType.RSA)
    server = tmp_path / "server"
    server.mkdir()
    (server / "servercert.pem").write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(server / "serverkey.pem"))
    config = _server_config(tmp_path, pki, server)
    client = tmp_path / "client"
    shutil.copytree(pki.client_dir("client"), client)
    serial = x509.load_pem_x509_certificate(intermediate.cert_pem.bytes()).serial_number
    sub_crl = write_crl(intermediate, tmp_path / "sub.pem", []).read_bytes()

    def revoke(serials: list[int]) -> None:
        root_crl = write_crl(pki.ca, tmp_path / "root.pem", serials).read_bytes()
        (client / "cacrl.pem").write_bytes(root_crl + sub_crl)

    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    uri = f"storage+tls://127.0.0.1:{port}/system?pkipath={client}"
    try:
        revoke([])
        async with virtvol.client.connect(uri, timeout=10) as conn:
            assert await conn.get_type() == "storage"
        revoke([serial])
        virsh = run_virsh(uri, "uri", check=False)
        assert "authentication failed: Failed to verify peer's certificate" in virsh.stderr
        with pytest.raises(LibvirtError) as caught:
            await virtvol.client.connect(uri, timeout=10)
        assert caught.value.message == "authentication failed: Failed to verify peer's certificate"
    finally:
        stop_daemon(daemon)


def test_handshake_timeout_bounds_the_tls_handshake(tmp_path: Path, pki: Pki) -> None:
    """handshake_timeout covers the TLS handshake too: a peer that connects to the TLS port
    and sends nothing holds a place among max_clients that long, not 30 s."""
    config = _write_config(tmp_path / "virtvold.toml", pki, extra="handshake_timeout = 1")
    port = free_port()
    daemon = start_virtvold(
        tmp_path / "virtvold", "--config", str(config), "--listen", f"tls://127.0.0.1:{port}"
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            assert silent.recv(1) == b""  # hung up on, long before 10 s
        TlsDaemon(daemon, port, config).wait_for_log("TLS handshake failed")
    finally:
        stop_daemon(daemon)
