"""Throwaway certificate authorities for the TLS tests.

``trustme`` makes the CA and the server certificate (with the loopback names);
client certificates are made here with ``cryptography`` because the tests need
full distinguished names (C, ST, L, O, CN), past expiry dates and revocation
lists, which trustme does not offer. Files are laid out as libvirt's
``pkipath`` expects: ``cacert.pem``, ``cacrl.pem``, ``servercert.pem`` /
``serverkey.pem``, ``clientcert.pem`` / ``clientkey.pem``.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

# The DN of libvirt's documentation example, as libvirt prints it.
CLIENT_DN = "C=GB,ST=London,L=London,O=Red Hat,CN=client"
SERVER_NAMES = ("127.0.0.1", "localhost")

_SHORT_NAMES = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
}


def new_ca() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.RSA)


def _name(dn: str) -> x509.Name:
    """``C=GB,...,CN=client`` (no escaped commas) as an X.509 name in that order."""
    attributes = []
    for part in dn.split(","):
        key, _, value = part.partition("=")
        attributes.append(x509.NameAttribute(_SHORT_NAMES[key], value))
    return x509.Name(attributes)


def _ca_key(ca: trustme.CA) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _ca_cert(ca: trustme.CA) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.cert_pem.bytes())


def write_server_pki(ca: trustme.CA, directory: Path, names: Sequence[str] = SERVER_NAMES) -> Path:
    """``cacert.pem``, ``servercert.pem`` and ``serverkey.pem`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*names, key_type=trustme.KeyType.RSA)
    ca.cert_pem.write_to_path(str(directory / "cacert.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(directory / "servercert.pem"))
    leaf.private_key_pem.write_to_path(str(directory / "serverkey.pem"))
    return directory


def issue_client(
    ca: trustme.CA,
    directory: Path,
    dn: str = CLIENT_DN,
    *,
    expired: bool = False,
    trust: trustme.CA | None = None,
    subject: x509.Name | None = None,
) -> int:
    """``cacert.pem`` (of ``trust``, default ``ca``), ``clientcert.pem`` (signed by
    ``ca``) and ``clientkey.pem`` in ``directory``. ``subject`` replaces ``dn`` for names
    that the simple ``dn`` syntax cannot write (commas or plus signs in values).

    Returns the certificate's serial number (for ``write_crl``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        not_before, not_after = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    else:
        not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject if subject is not None else _name(dn))
        .issuer_name(_ca_cert(ca).subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(_ca_key(ca), hashes.SHA256())
    )
    (trust or ca).cert_pem.write_to_path(str(directory / "cacert.pem"))
    (directory / "clientcert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "clientkey.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return serial


def write_crl(ca: trustme.CA, path: Path, revoked: Sequence[int]) -> Path:
    """A revocation list signed by ``ca`` that revokes the ``revoked`` serial numbers."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_ca_cert(ca).subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=1))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - datetime.timedelta(minutes=5))
            .build()
        )
    crl = builder.sign(_ca_key(ca), hashes.SHA256())
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


class Pki:
    """A CA with a server and one client folder per case, laid out for ``pkipath``.

    ``server``: the server's files. Client folders: ``client`` (allowed DN),
    ``other`` (a DN off the allow-list), ``wrongca`` (signed by another CA),
    ``expired``, ``revoked`` (listed in ``crl``), ``nocert`` (the CA only),
    ``untrusting`` (a good client certificate but another CA to check the server).
    """

    def __init__(self, base: Path) -> None:
        self.ca = new_ca()
        self.base = base
        self.server = write_server_pki(self.ca, base / "server")
        issue_client(self.ca, base / "client")
        issue_client(self.ca, base / "other", "C=FR,O=Elsewhere,CN=intruder")
        issue_client(new_ca(), base / "wrongca", trust=self.ca)
        issue_client(self.ca, base / "expired", expired=True)
        self.revoked_serial = issue_client(self.ca, base / "revoked")
        (base / "nocert").mkdir()
        self.ca.cert_pem.write_to_path(str(base / "nocert" / "cacert.pem"))
        issue_client(self.ca, base / "untrusting", trust=new_ca())
        self.crl = write_crl(self.ca, base / "cacrl.pem", [self.revoked_serial])

    def client_dir(self, case: str) -> Path:
        return self.base / case
