"""Where virtvold's TLS credentials are, and the server's SSL context made from them.

The files are libvirt's: the system locations under ``/etc/pki`` and, for a
daemon not running as root, ``~/.pki/libvirt``; libvirtd.conf's ``ca_file``,
``cert_file``, ``key_file`` and ``crl_file`` override them.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

# libvirt's system-wide PKI locations.
SYSTEM_CA_FILE = "/etc/pki/CA/cacert.pem"
SYSTEM_CRL_FILE = "/etc/pki/CA/cacrl.pem"
SYSTEM_SERVER_CERT = "/etc/pki/libvirt/servercert.pem"
SYSTEM_SERVER_KEY = "/etc/pki/libvirt/private/serverkey.pem"
# The per-user directory an unprivileged daemon looks in first (under $HOME).
USER_PKI_DIR = Path(".pki") / "libvirt"


class TlsSetupError(ValueError):
    """TLS credentials that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """libvirtd.conf's TLS settings (empty strings: "use libvirt's locations")."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    crl_file: str = ""
    no_verify_certificate: bool = False
    allowed_dn_list: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ServerCredentials:
    ca_file: str
    cert_file: str
    key_file: str
    crl_file: str | None  # None: no revocation list


def locate_credentials(files: TlsFiles, *, privileged: bool, home: Path) -> ServerCredentials:
    """The CA, certificate, key and CRL files the server uses, chosen as libvirtd does.

    Explicit ``ca_file``/``cert_file``/``key_file`` are used together (all three
    needed). Otherwise an unprivileged daemon takes the CA certificate, the CRL
    and the certificate+key pair from ``~/.pki/libvirt`` where they exist, and
    everything else from the system locations. An explicit ``crl_file`` must
    exist; the default one is used only when present.
    """
    if files.ca_file or files.cert_file or files.key_file:
        missing = [
            name
            for name, value in (
                ("ca_file", files.ca_file),
                ("cert_file", files.cert_file),
                ("key_file", files.key_file),
            )
            if not value
        ]
        if missing:
            raise TlsSetupError(
                f"{', '.join(missing)} must be set too when any of ca_file, cert_file,"
                " key_file is set"
            )
        return ServerCredentials(
            files.ca_file, files.cert_file, files.key_file, files.crl_file or None
        )
    ca, cert, key = SYSTEM_CA_FILE, SYSTEM_SERVER_CERT, SYSTEM_SERVER_KEY
    crl: str | None = files.crl_file or None
    default_crl = SYSTEM_CRL_FILE
    if not privileged:
        user_dir = home / USER_PKI_DIR
        if (user_dir / "cacert.pem").exists():
            ca = str(user_dir / "cacert.pem")
        if (user_dir / "cacrl.pem").exists():
            default_crl = str(user_dir / "cacrl.pem")
        if (user_dir / "servercert.pem").exists() and (user_dir / "serverkey.pem").exists():
            cert, key = str(user_dir / "servercert.pem"), str(user_dir / "serverkey.pem")
    if crl is None and os.path.exists(default_crl):
        crl = default_crl
    return ServerCredentials(ca, cert, key, crl)


def _check_readable(kind: str, path: str) -> None:
    if not os.access(path, os.R_OK):
        reason = "No such file or directory" if not os.path.exists(path) else "Permission denied"
        raise TlsSetupError(f"Cannot read {kind} '{path}': {reason}")


def server_context(creds: ServerCredentials, *, verify_clients: bool) -> ssl.SSLContext:
    """An SSL context that presents the server certificate and asks for the client's.

    With ``verify_clients`` the client's chain must lead to the CA and be in date, and
    (with a CRL) none of its certificates may be revoked, or the handshake fails.
    Without it (libvirtd's ``tls_no_verify_certificate``) no client certificate is asked for.
    """
    _check_readable("CA certificate", creds.ca_file)
    _check_readable("certificate", creds.cert_file)
    _check_readable("private key", creds.key_file)
    if creds.crl_file is not None:
        _check_readable("CA revocation list", creds.crl_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets: libvirt's clients wait for the confirmation byte
    # and take a ticket arriving alone as "no data yet", failing with EAGAIN.
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    try:
        context.load_cert_chain(creds.cert_file, creds.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(
            f"Unable to load server certificate {creds.cert_file} and key {creds.key_file}: {exc}"
        ) from None
    try:
        context.load_verify_locations(cafile=creds.ca_file)
        if creds.crl_file is not None:
            _load_revocation_lists(context, creds.crl_file)
            # Every certificate of the chain, not only the client's: revoking a sub-CA
            # must withdraw what it signed. Each CA of the chain then needs its CRL here.
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"Unable to load CA certificate or revocation list: {exc}") from None
    # CERT_OPTIONAL: a client without a certificate completes the handshake and
    # is refused afterwards with a clear reason; a bad certificate fails the handshake.
    context.verify_mode = ssl.CERT_OPTIONAL if verify_clients else ssl.CERT_NONE
    _check_own_certificate(context, creds)
    return context


# What libvirtd says of its own certificate where OpenSSL's verification fails so
# (X509_V_ERR_*), in gnutls's words for the reason; any other reason is OpenSSL's.
_OWN_CERTIFICATE_REASONS = {
    2: "The certificate hasn't got a known issuer.",  # unable to get the issuer's certificate
    20: "The certificate hasn't got a known issuer.",  # unable to get the local issuer
    21: "The certificate hasn't got a known issuer.",  # unable to verify the first one
    23: "The certificate has been revoked.",
}
_EXPIRED, _NOT_YET_VALID = 10, 9


def _check_own_certificate(server: ssl.SSLContext, creds: ServerCredentials) -> None:
    """Refuse, as libvirtd refuses to start, a server certificate every client would
    refuse: expired, not yet valid, not issued under the CA (or revoked, with a CRL). A
    handshake in memory with a client that trusts the CA alone (and its lists) tells;
    otherwise the daemon would serve, and each client fail to verify it."""
    checker = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    checker.check_hostname = False  # the names are the clients' business
    checker.load_verify_locations(cafile=creds.ca_file)
    if creds.crl_file is not None:
        _load_revocation_lists(checker, creds.crl_file)
        checker.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    to_client, to_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = checker.wrap_bio(to_client, to_server)
    served = server.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(8):  # a handshake takes a few rounds
        try:
            client.do_handshake()
            return
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLCertVerificationError as exc:
            raise TlsSetupError(_own_certificate_refusal(exc, creds)) from None
        try:
            served.do_handshake()
        except ssl.SSLWantReadError:
            continue
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"Unable to check the server certificate {creds.cert_file}: {exc}"
            ) from None
    raise TlsSetupError(f"Unable to check the server certificate {creds.cert_file}")


def _own_certificate_refusal(exc: ssl.SSLCertVerificationError, creds: ServerCredentials) -> str:
    if exc.verify_code == _EXPIRED:
        return f"The server certificate {creds.cert_file} has expired"
    if exc.verify_code == _NOT_YET_VALID:
        return f"The server certificate {creds.cert_file} is not yet active"
    reason = _OWN_CERTIFICATE_REASONS.get(exc.verify_code, exc.verify_message)
    return (
        f"Our own certificate {creds.cert_file} failed validation against {creds.ca_file}: {reason}"
    )


# A PEM revocation list's armour. OpenSSL's loading of a CA file takes every certificate in
# it for a trusted CA, CRL file or not; gnutls, which libvirt uses, reads only the lists.
_CRL_BEGIN, _CRL_END = b"-----BEGIN X509 CRL-----", b"-----END X509 CRL-----"


def _load_revocation_lists(context: ssl.SSLContext, path: str) -> None:
    """Give ``context`` the revocation lists in the PEM file ``path``, and nothing else
    of it: a certificate there is no trusted CA (through a memory file, as OpenSSL
    loads lists from files only)."""
    with open(path, "rb") as source:
        pem = source.read()
    lists, at = [], pem.find(_CRL_BEGIN)
    while at >= 0 and (end := pem.find(_CRL_END, at)) >= 0:
        lists.append(pem[at : end + len(_CRL_END)] + b"\n")
        at = pem.find(_CRL_BEGIN, end)
    memory = os.memfd_create("revocation-lists", os.MFD_CLOEXEC)
    try:
        os.write(memory, b"".join(lists))
        context.load_verify_locations(cafile=f"/proc/self/fd/{memory}")
    finally:
        os.close(memory)
