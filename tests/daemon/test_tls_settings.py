"""TLS and socket access settings: DN strings and patterns, where credentials are found,
the config keys libvirtd.conf shares with virtvold, and tls:// listen URLs."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import TYPE_CHECKING

import pytest

from virtvol.client import tls as client_tls
from virtvol.daemon.config import ConfigError, settings_from_toml
from virtvol.daemon.distinguished_names import (
    compile_dn_patterns,
    distinguished_name,
    dn_allowed,
)
from virtvol.daemon.listeners import parse_listen_url
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


def test_dn_in_certificate_order_with_short_names() -> None:
    subject = (
        (("countryName", "GB"),),
        (("stateOrProvinceName", "London"),),
        (("localityName", "London"),),
        (("organizationName", "Red Hat"),),
        (("commonName", "client"),),
    )
    assert distinguished_name(subject) == "C=GB,ST=London,L=London,O=Red Hat,CN=client"


def test_dn_escapes_specials_and_joins_multivalued_rdns() -> None:
    subject = (
        (("organizationName", "Acme, Inc."),),
        (("organizationalUnitName", "ops"), ("commonName", "a+b")),
        (("emailAddress", "root@example.org"),),
        (("title", "a=b"),),  # gnutls leaves "=" in a value as it is
    )
    assert distinguished_name(subject) == (
        "O=Acme\\, Inc.,OU=ops+CN=a\\+b,EMAIL=root@example.org,title=a=b"
    )


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
    creds = client_tls.locate_credentials(None, home=tmp_path)
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
