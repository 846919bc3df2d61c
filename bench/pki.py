"""A throwaway CA, server and client certificate for ``--tls`` runs, made with ``openssl``.

The folder is laid out as libvirt's ``pkipath`` expects (``cacert.pem``,
``servercert.pem``/``serverkey.pem``, ``clientcert.pem``/``clientkey.pem``), so
it serves as the daemons' certificate folder and as the clients' ``?pkipath=``.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_DAYS = "2"
_SERVER_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth\n"
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
)
_CLIENT_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n"
)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(folder: Path, role: str, subject: str, extensions: str) -> None:
    key, csr, extfile = (folder / f"{role}{suffix}" for suffix in ("key.pem", ".csr", ".ext"))
    extfile.write_text(extensions)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(folder / "cacert.pem"),
        "-CAkey",
        str(folder / "cakey.pem"),
        "-CAcreateserial",
        "-days",
        _DAYS,
        "-extfile",
        str(extfile),
        "-out",
        str(folder / f"{role}cert.pem"),
    )


def make_pki(folder: Path) -> Path:
    """Write the CA, the server's files (for 127.0.0.1) and a client's into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(folder / "cakey.pem"),
        "-out",
        str(folder / "cacert.pem"),
        "-days",
        _DAYS,
        "-subj",
        "/CN=virtvol bench CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    _issue(folder, "server", "/O=virtvol bench/CN=127.0.0.1", _SERVER_EXTENSIONS)
    _issue(folder, "client", "/C=GB/O=virtvol bench/CN=client", _CLIENT_EXTENSIONS)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder
