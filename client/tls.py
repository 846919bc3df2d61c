"""The client side of libvirt's TLS transport (``driver+tls://host/path``).

Theory of operation: the connection is a TLS session over TCP (port 16514 by
default). The client presents its certificate and checks the server's against
the CA and the URI's host name (unless ``?no_verify=1``). The server then
checks the client's certificate and sends one byte, ``\\x01``, inside TLS when
it passed; only after that byte do RPC frames flow. The errors are worded as
libvirt's client words them, so scripts that grep virsh's messages keep working.

Credentials are found as libvirt's client finds them: in ``?pkipath=DIR`` when
given (``cacert.pem``, ``cacrl.pem``, ``clientcert.pem``, ``clientkey.pem``);
otherwise, when not root, in ``~/.pki/libvirt`` where present, and else in
``/etc/pki/CA/cacert.pem``, ``/etc/pki/CA/cacrl.pem``,
``/etc/pki/libvirt/clientcert.pem`` and ``/etc/pki/libvirt/private/clientkey.pem``.
A client without a certificate still connects; the server decides.

This module holds what both engines share: the credentials, the context, the wording
of a failed handshake and the check of the confirmation byte, and the command line's
blocking handshake (``open_tls_socket``). The event loop's is ``tls_transport``.
"""

from __future__ import annotations

import errno
import os
import ssl
import time

from virtvol.client.errors import LibvirtError

# libvirt's error numbers are read through the module when an error is made: importing
# them (and typing) up front was ~1.7 ms of every TLS command (docs/performance.md).
from virtvol.protocol import errors as wire
from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record

if TYPE_CHECKING:
    import _socket

    from virtvol.protocol.errors import ErrorCode

__all__ = [
    "ClientCredentials",
    "check_confirmation",
    "client_context",
    "handshake_failure",
    "locate_credentials",
    "open_tls_socket",
    "unconfirmed",
]

SYSTEM_CA_FILE = "/etc/pki/CA/cacert.pem"
SYSTEM_CRL_FILE = "/etc/pki/CA/cacrl.pem"
SYSTEM_CLIENT_CERT = "/etc/pki/libvirt/clientcert.pem"
SYSTEM_CLIENT_KEY = "/etc/pki/libvirt/private/clientkey.pem"
USER_PKI_DIR = os.path.join(".pki", "libvirt")

CONFIRMATION = b"\x01"


class ClientCredentials(Record):
    ca_file: str
    crl_file: str | None
    cert_file: str | None  # None: connect without a client certificate
    key_file: str | None


def _error(code: ErrorCode, message: str) -> LibvirtError:
    return LibvirtError(code, wire.ErrorDomain.RPC, message)


def locate_credentials(pkipath: str | None, *, home: str | None = None) -> ClientCredentials:
    """The CA, CRL, certificate and key files, chosen as libvirt's client chooses them."""
    join, exists = os.path.join, os.path.exists
    if pkipath:
        ca, crl = join(pkipath, "cacert.pem"), join(pkipath, "cacrl.pem")
        cert, key = join(pkipath, "clientcert.pem"), join(pkipath, "clientkey.pem")
    else:
        ca, crl = SYSTEM_CA_FILE, SYSTEM_CRL_FILE
        cert, key = SYSTEM_CLIENT_CERT, SYSTEM_CLIENT_KEY
        if os.geteuid() != 0:
            user_dir = join(os.path.expanduser("~") if home is None else home, USER_PKI_DIR)
            if exists(join(user_dir, "cacert.pem")):
                ca = join(user_dir, "cacert.pem")
            if exists(join(user_dir, "cacrl.pem")):
                crl = join(user_dir, "cacrl.pem")
            user_cert, user_key = join(user_dir, "clientcert.pem"), join(user_dir, "clientkey.pem")
            if exists(user_cert) and exists(user_key):
                cert, key = user_cert, user_key
    has_pair = exists(cert) and exists(key)
    return ClientCredentials(
        ca_file=ca,
        crl_file=crl if exists(crl) else None,
        cert_file=cert if has_pair else None,
        key_file=key if has_pair else None,
    )


def client_context(creds: ClientCredentials, *, verify: bool) -> ssl.SSLContext:
    """An SSL context with our certificate (if any), checking the server's unless told not to.

    Raises:
        LibvirtError: a file cannot be read or used (libvirt's wording).
    """
    if not os.access(creds.ca_file, os.R_OK):
        reason = (
            "No such file or directory"
            if not os.path.exists(creds.ca_file)
            else "Permission denied"
        )
        raise _error(
            wire.ErrorCode.SYSTEM_ERROR, f"Cannot read CA certificate '{creds.ca_file}': {reason}"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=creds.ca_file)
        if creds.crl_file is not None:
            _load_revocation_lists(context, creds.crl_file)
            # Every certificate of the chain, as libvirt checks it: a revoked sub-CA
            # withdraws the server certificates it signed.
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    except (ssl.SSLError, OSError) as exc:
        raise _error(
            wire.ErrorCode.SYSTEM_ERROR,
            f"Unable to set x509 CA certificate: {creds.ca_file}: {exc}",
        ) from None
    if creds.cert_file is not None and creds.key_file is not None:
        try:
            context.load_cert_chain(creds.cert_file, creds.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise _error(
                wire.ErrorCode.SYSTEM_ERROR,
                f"Unable to set x509 key and certificate: {creds.key_file}, {creds.cert_file}:"
                f" {exc}",
            ) from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def handshake_failure(exc: ssl.SSLError) -> LibvirtError:
    """A failed TLS handshake in libvirt's client's words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _error(
            wire.ErrorCode.AUTH_FAILED, "authentication failed: Failed to verify peer's certificate"
        )
    return _error(
        wire.ErrorCode.AUTH_FAILED, f"authentication failed: TLS handshake failed {exc.reason}"
    )


def unconfirmed() -> LibvirtError:
    """The connection ended (or broke) before the server's confirmation byte came."""
    return _error(
        wire.ErrorCode.SYSTEM_ERROR, "Unable to read TLS confirmation: Input/output error"
    )


def check_confirmation(first: bytes) -> None:
    """Raise libvirt's refusal unless ``first`` is the server's confirmation byte."""
    if first != CONFIRMATION:
        raise _error(
            wire.ErrorCode.RPC, "server verification (of our certificate or IP address) failed"
        )


def open_tls_socket(
    sock: _socket.socket, server_name: str, context: ssl.SSLContext, time_limit: float | None
) -> ssl.SSLSocket:
    """Over the connected blocking ``sock``, shake hands with ``server_name`` (checked
    against its certificate if ``context`` says so) and read the confirmation byte,
    both within ``time_limit``; the TLS socket that returns owns ``sock``'s descriptor,
    ``sock`` is closed whatever happens.

    Raises:
        LibvirtError: the handshake failed, the server's certificate did not pass,
            or the server refused ours (libvirt's messages).
        OSError: the connection broke (``TimeoutError`` when the time ran out); a
            server that hangs up during the handshake reads as a reset, as on the
            event loop's transport.
    """
    deadline = None if time_limit is None else time.monotonic() + time_limit
    try:
        sock.settimeout(time_limit)
        tls = context.wrap_socket(
            sock,  # type: ignore[arg-type]  # the C socket: all that wrap_socket uses
            server_hostname=server_name,
            do_handshake_on_connect=False,
        )
    except BaseException:
        sock.close()
        raise
    try:
        try:
            tls.do_handshake()
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLSyscallError):
            # The server hung up: before any TLS (a close, most often), in the middle of
            # it, or with no error number. The event loop's transport says "reset".
            raise ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET)) from None
        except ssl.SSLError as exc:
            raise handshake_failure(exc) from None
        if deadline is not None:
            tls.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            first = tls.recv(1)
        except TimeoutError:
            raise
        except OSError:  # ssl.SSLError included
            raise unconfirmed() from None
        if not first:
            raise unconfirmed()
        check_confirmation(first)
    except BaseException:
        tls.close()
        raise
    return tls


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
