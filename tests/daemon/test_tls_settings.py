"""TLS and socket access settings: DN strings and patterns, where credentials are found,
the config keys libvirtd.conf shares with virtvold, and tls:// listen URLs."""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import datetime
import os
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type

from virtvol.client import tls as client_tls
from virtvol.daemon.config import ConfigError, settings_from_toml
from virtvol.daemon.distinguished_names import (
    certificate_dn,
    compile_dn_patterns,
    dn_allowed,
)
from virtvol.daemon.listeners import ListenError, bind, parse_listen_url
from virtvol.daemon.tlscreds import (
    SYSTEM_CA_FILE,
    SYSTEM_SERVER_CERT,
    TlsFiles,
    TlsSetupError,
    locate_credentials,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def _self_signed(subject: x509.Name, path: Path) -> bytes:
    """A certificate of ``subject`` written to ``path`` (PEM); its DER bytes."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)


def _attribute(
    oid: str, value: str, kind: _ASN1Type = _ASN1Type.UTF8String
) -> x509.NameAttribute[str]:
    return x509.NameAttribute(x509.ObjectIdentifier(oid), value, _type=kind)


_KINDS = (
    _ASN1Type.UTF8String,
    _ASN1Type.PrintableString,
    _ASN1Type.IA5String,
    _ASN1Type.BMPString,
    _ASN1Type.T61String,
    _ASN1Type.UniversalString,
)
SUBJECTS = {
    "short names in certificate order": [
        [_attribute(oid, value)]
        for oid, value in (
            ("2.5.4.6", "GB"),
            ("2.5.4.8", "London"),
            ("2.5.4.7", "London"),
            ("2.5.4.10", "Red Hat"),
            ("2.5.4.3", "client"),
        )
    ],
    "specials escaped, multi-valued joined": [
        [_attribute("2.5.4.10", "Acme, Inc. <storage> a=b")],
        [_attribute("2.5.4.11", "ops"), _attribute("0.9.2342.19200300.100.1.1", "u1")],
        [_attribute("2.5.4.3", '#backup+1 \\"x";')],
        [_attribute("1.2.840.113549.1.9.1", "root@example.org", _ASN1Type.IA5String)],
    ],
    "names gnutls has": [
        [_attribute(oid, "v")]
        for oid in (
            "2.5.4.4",
            "2.5.4.9",
            "2.5.4.12",
            "2.5.4.13",
            "2.5.4.15",
            "2.5.4.17",
            "2.5.4.41",
            "2.5.4.42",
            "2.5.4.43",
            "2.5.4.44",
            "2.5.4.65",
            "1.3.6.1.4.1.311.60.2.1.1",
            "1.3.6.1.4.1.311.60.2.1.2",
            "1.3.6.1.5.5.7.9.2",
        )
    ],
    "attributes gnutls has no name for": [
        [_attribute(oid, "v")]
        for oid in ("2.5.4.97", "1.2.840.113549.1.9.2", "2.5.4.14", "1.2.3.4", "2.999.1")
    ],
    "printable attributes in other types": [
        [_attribute(oid, "GB", kind)]
        for oid in ("2.5.4.6", "2.5.4.5", "1.3.6.1.4.1.311.60.2.1.3", "1.3.6.1.5.5.7.9.4")
        for kind in (_ASN1Type.PrintableString, _ASN1Type.UTF8String, _ASN1Type.IA5String)
    ],
    "ia5 attributes in other types": [
        [_attribute(oid, "root", kind)]
        for oid in ("1.2.840.113549.1.9.1", "0.9.2342.19200300.100.1.25")
        for kind in (_ASN1Type.IA5String, _ASN1Type.UTF8String, _ASN1Type.PrintableString)
    ],
    "directory strings in every type": [
        [_attribute("2.5.4.3", value, kind)]
        for value in ("val", "Jörg")
        for kind in _KINDS
        if value.isascii() or kind not in (_ASN1Type.PrintableString, _ASN1Type.IA5String)
    ],
    "blanks at either end": [[_attribute("2.5.4.10", " lead")], [_attribute("2.5.4.3", "trail ")]],
    # gnutls refuses a string with a NUL in it as text, and takes a T61String for text
    # only when every character is printable ASCII.
    "strings with a nul": [
        [_attribute("2.5.4.3", value, kind)]
        for value in ("adm\x00n", "admin\x00")
        for kind in _KINDS
        if kind is not _ASN1Type.PrintableString  # which cannot carry one
    ],
    "empty values of other attributes than directory strings": [
        [_attribute(oid, "", kind)]
        for oid in ("2.5.4.5", "0.9.2342.19200300.100.1.25", "1.2.840.113549.1.9.1", "1.2.3.4")
        for kind in (_ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.IA5String)
    ],
    "teletex strings beyond printable ascii": [
        [_attribute("2.5.4.3", value, _ASN1Type.T61String)]
        for value in ("a b~", "a\x01b", "a\tb", "a\x7fb")
    ],
}


@pytest.mark.parametrize("case", sorted(SUBJECTS))
def test_dn_is_the_one_libvirt_prints(case: str, tmp_path: Path) -> None:
    """As virt-pki-query-dn (libvirt's own code, gnutls_x509_crt_get_dn) prints it."""
    query = shutil.which("virt-pki-query-dn")
    assert query is not None, "virt-pki-query-dn missing: apt-get install -y libvirt-clients"
    for index, rdn in enumerate(SUBJECTS[case]):
        # One certificate per attribute but the first case's: a whole name at once.
        names = [rdn] if case != "short names in certificate order" else SUBJECTS[case]
        path = tmp_path / f"{index}.pem"
        der = _self_signed(x509.Name([x509.RelativeDistinguishedName(n) for n in names]), path)
        expected = subprocess.run(
            [query, str(path)], capture_output=True, text=True, check=True
        ).stdout.rstrip("\n")
        assert certificate_dn(der) == expected


@pytest.mark.parametrize("kind", [_ASN1Type.UTF8String, _ASN1Type.IA5String, _ASN1Type.BMPString])
@pytest.mark.parametrize("oid", ["2.5.4.10", "2.5.4.41", "0.9.2342.19200300.100.1.1"])
def test_a_directory_string_without_a_value_makes_no_dn(
    oid: str, kind: _ASN1Type, tmp_path: Path
) -> None:
    """gnutls prints no DN for a subject with an empty directory string (an O, a name, a
    UID), and libvirtd refuses such a client: so does virtvold, whatever the patterns."""
    query = shutil.which("virt-pki-query-dn")
    assert query is not None, "virt-pki-query-dn missing: apt-get install -y libvirt-clients"
    path = tmp_path / "empty.pem"
    subject = x509.Name(
        [x509.NameAttribute(x509.NameOID.COMMON_NAME, "client"), _attribute(oid, "", kind)]
    )
    der = _self_signed(subject, path)
    assert subprocess.run([query, str(path)], capture_output=True).returncode != 0
    with pytest.raises(ValueError, match="without a value"):
        certificate_dn(der)


def test_a_bmp_string_with_a_lone_surrogate_is_its_hex(tmp_path: Path) -> None:
    """No text in UTF-16 (a high surrogate without its low one): gnutls prints it as the
    hex of its content. The certificate is made with a stand-in value, then patched (its
    signature no longer matters to the DN)."""
    query = shutil.which("virt-pki-query-dn")
    assert query is not None, "virt-pki-query-dn missing: apt-get install -y libvirt-clients"
    stand_in = "Zb".encode("utf-16-be")
    der = _self_signed(
        x509.Name([_attribute("2.5.4.3", "Zb", _ASN1Type.BMPString)]), tmp_path / "x"
    )
    der = der.replace(b"\x1e\x04" + stand_in, b"\x1e\x04\xd8\x00\x00b")
    path = tmp_path / "surrogate.pem"
    pem = base64.encodebytes(der).decode()  # cryptography reads no such value back
    path.write_text(f"-----BEGIN CERTIFICATE-----\n{pem}-----END CERTIFICATE-----\n")
    expected = subprocess.run([query, str(path)], capture_output=True, text=True, check=True)
    assert certificate_dn(der) == expected.stdout.rstrip("\n") == "CN=\\#d8000062"


def test_dn_of_bytes_that_are_no_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="unreadable certificate subject"):
        certificate_dn(b"\x30\x03\x30\x01")


def _glib_pattern_match() -> Callable[[str, str], bool] | None:
    """GLib's g_pattern_match_simple, which libvirtd 9.0 matches tls_allowed_dn_list with."""
    name = ctypes.util.find_library("glib-2.0")
    if name is None:
        return None
    function = ctypes.CDLL(name).g_pattern_match_simple
    function.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    function.restype = ctypes.c_int
    return lambda pattern, text: bool(function(pattern.encode(), text.encode()))


CLIENT = "C=GB,ST=London,L=London,O=Red Hat,CN=client"


@pytest.mark.parametrize(
    ("pattern", "dn", "allowed"),
    [
        (CLIENT, CLIENT, True),
        ("C=GB,ST=London,L=London,O=Red Hat,CN=*", CLIENT, True),
        ("*CN=client", CLIENT, True),
        ("C=GB,*,CN=cl?ent", CLIENT, True),
        ("C=GB,ST=London,L=London,O=Red Hat,CN=other", CLIENT, False),
        ("CN=client", CLIENT, False),  # the whole DN must match
        ("c=gb,*", CLIENT, False),  # case matters
        ("CN=?", "CN=\u00e9", True),  # one character, not one byte
        # Only * and ? are special: brackets and backslashes match themselves.
        ("C=GB,ST=London,L=London,O=Red[ ]Hat,CN=[!x]lient", CLIENT, False),
        ("C=GB,ST=London,L=London,O=Red Hat,CN=[a-d]lient", CLIENT, False),
        ("O=Example [EU],CN=*", "O=Example E,CN=intruder", False),
        ("O=Example [EU],CN=*", "O=Example [EU],CN=client", True),
        ("CN=[z-a]", "CN=[z-a]", True),
        ("C=GB\\,*", CLIENT, False),
        ("O=Acme\\, Inc.,CN=*", "O=Acme, Inc.,CN=client", False),
        ("O=Acme\\, Inc.,CN=*", "O=Acme\\, Inc.,CN=client", True),
        ("CN=a\\b", "CN=ab", False),
        ("CN=a\\*", "CN=a*", False),
        ("CN=a\\*", "CN=a\\x", True),
    ],
)
def test_dn_patterns_as_libvirtd_matches_them(pattern: str, dn: str, allowed: bool) -> None:
    assert dn_allowed(dn, compile_dn_patterns([pattern])) is allowed
    glib = _glib_pattern_match()
    if glib is not None:  # the expectation itself is libvirtd's
        assert glib(pattern, dn) is allowed


def test_explicit_files_are_used_together(tmp_path: Path) -> None:
    files = TlsFiles(ca_file="/a/ca.pem", cert_file="/a/c.pem", key_file="/a/k.pem")
    creds = locate_credentials(files, privileged=True, home=tmp_path)
    assert (creds.ca_file, creds.cert_file, creds.key_file, creds.crl_file) == (
        "/a/ca.pem",
        "/a/c.pem",
        "/a/k.pem",
        None,
    )
    with pytest.raises(TlsSetupError, match="cert_file, key_file must be set too"):
        locate_credentials(TlsFiles(ca_file="/a/ca.pem"), privileged=True, home=tmp_path)


def test_unprivileged_daemon_prefers_the_user_pki_dir(tmp_path: Path) -> None:
    user = tmp_path / ".pki" / "libvirt"
    user.mkdir(parents=True)
    (user / "cacert.pem").write_text("ca")
    (user / "servercert.pem").write_text("cert")
    creds = locate_credentials(TlsFiles(), privileged=False, home=tmp_path)
    assert creds.ca_file == str(user / "cacert.pem")
    # The certificate and key go as a pair: without the key, both are the system's.
    assert creds.cert_file == SYSTEM_SERVER_CERT
    (user / "serverkey.pem").write_text("key")
    creds = locate_credentials(TlsFiles(), privileged=False, home=tmp_path)
    assert (creds.cert_file, creds.key_file) == (
        str(user / "servercert.pem"),
        str(user / "serverkey.pem"),
    )
    privileged = locate_credentials(TlsFiles(), privileged=True, home=tmp_path)
    assert privileged.ca_file == SYSTEM_CA_FILE


def test_client_credentials_in_pkipath_and_user_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    for name in ("cacert.pem", "clientcert.pem", "clientkey.pem"):
        (pki / name).write_text(name)
    creds = client_tls.locate_credentials(str(pki))
    assert creds == client_tls.ClientCredentials(
        str(pki / "cacert.pem"), None, str(pki / "clientcert.pem"), str(pki / "clientkey.pem")
    )
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    user = tmp_path / ".pki" / "libvirt"
    user.mkdir(parents=True)
    (user / "cacert.pem").write_text("ca")
    (user / "cacrl.pem").write_text("crl")
    creds = client_tls.locate_credentials(None, home=str(tmp_path))
    assert creds.ca_file == str(user / "cacert.pem")
    assert creds.crl_file == str(user / "cacrl.pem")


def test_access_settings_from_toml() -> None:
    settings = settings_from_toml(
        {
            "ca_file": "/x/ca.pem",
            "cert_file": "/x/cert.pem",
            "key_file": "/x/key.pem",
            "crl_file": "/x/crl.pem",
            "tls_no_verify_certificate": 1,
            "tls_allowed_dn_list": ["C=GB,*"],
            "unix_sock_group": "libvirt",
            "unix_sock_rw_perms": "0770",
        },
        "test.toml",
    )
    assert settings.tls_no_verify_certificate is True
    assert settings.tls_allowed_dn_list == ("C=GB,*",)
    assert settings.unix_sock_rw_perms == 0o770
    assert settings.unix_sock_ro_perms == 0o777
    assert settings.unix_sock_group == "libvirt"
    defaults = settings_from_toml({}, "empty.toml")
    assert defaults.tls_allowed_dn_list is None
    assert defaults.unix_sock_rw_perms == 0o700


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"unix_sock_rw_perms": "rw"}, "unix_sock_rw_perms must be an octal mode"),
        ({"unix_sock_ro_perms": 511}, "unix_sock_ro_perms must be an octal mode"),
        ({"unix_sock_rw_perms": "01777"}, "unix_sock_rw_perms must be an octal mode"),
        ({"tls_allowed_dn_list": "C=GB,*"}, "tls_allowed_dn_list must be a list"),
        ({"tls_no_verify_certificate": "yes"}, "tls_no_verify_certificate must be"),
        ({"ca_file": 3}, "ca_file must be a string"),
    ],
)
def test_bad_access_settings(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_toml(table, "bad.toml")


def test_tls_listen_urls() -> None:
    address = parse_listen_url("tls://127.0.0.1")
    assert (address.kind, address.port, address.describe()) == (
        "tls",
        16514,
        "tls://127.0.0.1:16514",
    )
    assert parse_listen_url("tls://[::1]:1234").describe() == "tls://[::1]:1234"


def test_a_unix_path_is_taken_as_written() -> None:
    """A URL parser would cut the path at "#" or "?" and bind another socket."""
    assert parse_listen_url("unix:///run/a#b").path == "/run/a#b"
    assert parse_listen_url("unix-ro:///run/c?d").path == "/run/c?d"
    assert parse_listen_url("unix-ro:///run/c?d").describe() == "unix-ro:///run/c?d"


def test_a_unix_path_too_long_for_a_socket_says_why(tmp_path: Path) -> None:
    address = parse_listen_url(f"unix://{tmp_path}/{'x' * 120}")
    with pytest.raises(ListenError) as refused:
        bind(address)
    assert str(refused.value).startswith(f"cannot listen on {address.describe()}: ")
    assert not str(refused.value).endswith("None")


def test_port_0_is_named_by_the_port_bound() -> None:
    bound = bind(parse_listen_url("tcp://127.0.0.1:0"))
    try:
        assert bound.label == f"tcp://127.0.0.1:{bound.sock.getsockname()[1]}"
        assert not bound.label.endswith(":0")
    finally:
        bound.close()
