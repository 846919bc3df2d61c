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
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from virtvol.client.errors import LibvirtError
from virtvol.protocol.errors import ErrorCode, ErrorDomain

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

__all__ = ["ClientCredentials", "client_context", "locate_credentials", "open_tls"]

SYSTEM_CA_FILE = "/etc/pki/CA/cacert.pem"
SYSTEM_CRL_FILE = "/etc/pki/CA/cacrl.pem"
SYSTEM_CLIENT_CERT = "/etc/pki/libvirt/clientcert.pem"
SYSTEM_CLIENT_KEY = "/etc/pki/libvirt/private/clientkey.pem"
USER_PKI_DIR = Path(".pki") / "libvirt"

CONFIRMATION = b"\x01"


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    ca_file: str
    crl_file: str | None
    cert_file: str | None  # None: connect without a client certificate
    key_file: str | None


def _error(code: ErrorCode, message: str) -> LibvirtError:
    return LibvirtError(code, ErrorDomain.RPC, message)


def locate_credentials(pkipath: str | None, *, home: Path | None = None) -> ClientCredentials:
    """The CA, CRL, certificate and key files, chosen as libvirt's client chooses them."""
    if pkipath:
        directory = Path(pkipath)
        ca, crl = directory / "cacert.pem", directory / "cacrl.pem"
        cert, key = directory / "clientcert.pem", directory / "clientkey.pem"
    else:
        ca, crl = Path(SYSTEM_CA_FILE), Path(SYSTEM_CRL_FILE)
        cert, key = Path(SYSTEM_CLIENT_CERT), Path(SYSTEM_CLIENT_KEY)
        if os.geteuid() != 0:
            user_dir = (home or Path.home()) / USER_PKI_DIR
            if (user_dir / "cacert.pem").exists():
                ca = user_dir / "cacert.pem"
            if (user_dir / "cacrl.pem").exists():
                crl = user_dir / "cacrl.pem"
            if (user_dir / "clientcert.pem").exists() and (user_dir / "clientkey.pem").exists():
                cert, key = user_dir / "clientcert.pem", user_dir / "clientkey.pem"
    has_pair = cert.exists() and key.exists()
    return ClientCredentials(
        ca_file=str(ca),
        crl_file=str(crl) if crl.exists() else None,
        cert_file=str(cert) if has_pair else None,
        key_file=str(key) if has_pair else None,
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
            ErrorCode.SYSTEM_ERROR, f"Cannot read CA certificate '{creds.ca_file}': {reason}"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=creds.ca_file)
        if creds.crl_file is not None:
            context.load_verify_locations(cafile=creds.crl_file)
            # Every certificate of the chain, as libvirt checks it: a revoked sub-CA
            # withdraws the server certificates it signed.
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    except (ssl.SSLError, OSError) as exc:
        raise _error(
            ErrorCode.SYSTEM_ERROR, f"Unable to set x509 CA certificate: {creds.ca_file}: {exc}"
        ) from None
    if creds.cert_file is not None and creds.key_file is not None:
        try:
            context.load_cert_chain(creds.cert_file, creds.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise _error(
                ErrorCode.SYSTEM_ERROR,
                f"Unable to set x509 key and certificate: {creds.key_file}, {creds.cert_file}:"
                f" {exc}",
            ) from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Confirmation(asyncio.Protocol):
    """Waits for the server's confirmation byte, then hands the transport over."""

    def __init__(self) -> None:
        self.result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.result.done():
            self.result.set_result(data)

    def eof_received(self) -> bool | None:
        # Not every event loop tells a clean TLS close from a dropped connection here,
        # and libvirtd refuses by dropping: both read as "Unable to read TLS confirmation".
        self.connection_lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_exception(ConnectionResetError("connection closed"))


async def open_tls(
    sock: socket.socket,
    server_name: str,
    context: ssl.SSLContext,
    make_protocol: Callable[[], asyncio.BaseProtocol],
) -> asyncio.BaseProtocol:
    """Over the connected ``sock``, shake hands with ``server_name`` (checked against
    its certificate if ``context`` says so), wait for the confirmation byte and return
    the RPC protocol.

    Raises:
        LibvirtError: the handshake failed, the server's certificate did not pass,
            or the server refused ours (libvirt's messages).
        OSError: the connection broke.
    """
    loop = asyncio.get_running_loop()
    try:
        transport, gate = await loop.create_connection(
            _Confirmation, sock=sock, ssl=context, server_hostname=server_name
        )
    except ssl.SSLCertVerificationError:
        raise _error(
            ErrorCode.AUTH_FAILED, "authentication failed: Failed to verify peer's certificate"
        ) from None
    except ssl.SSLError as exc:
        raise _error(
            ErrorCode.AUTH_FAILED, f"authentication failed: TLS handshake failed {exc.reason}"
        ) from None
    try:
        first = await gate.result
    except (OSError, ssl.SSLError):
        transport.abort()
        raise _error(
            ErrorCode.SYSTEM_ERROR, "Unable to read TLS confirmation: Input/output error"
        ) from None
    except BaseException:  # a time limit, a cancelled task: the connection goes too
        transport.abort()
        raise
    if first != CONFIRMATION:
        transport.abort()
        raise _error(ErrorCode.RPC, "server verification (of our certificate or IP address) failed")
    protocol = make_protocol()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return protocol
