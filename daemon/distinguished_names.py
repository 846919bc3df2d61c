"""Distinguished names as libvirt prints them, and ``tls_allowed_dn_list`` patterns.

libvirtd matches the client's DN, formatted by gnutls_x509_crt_get_dn, against
each pattern with fnmatch(3); both are reproduced here so that an existing
allow-list means the same thing to virtvold.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from virtvol.daemon.tlscreds import TlsSetupError

if TYPE_CHECKING:
    from collections.abc import Sequence

# gnutls's short names for the attributes of a distinguished name; libvirt
# matches tls_allowed_dn_list against the DN as gnutls_x509_crt_get_dn prints it.
_DN_SHORT_NAMES = {
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "commonName": "CN",
    "emailAddress": "EMAIL",
    "domainComponent": "DC",
    "userId": "UID",
    "streetAddress": "street",
    "title": "title",
    "givenName": "givenName",
    "surname": "surName",
    "serialNumber": "serialNumber",
    "postalCode": "postalCode",
}
_DN_SPECIALS = frozenset(',+"\\<>;=')


SubjectName = tuple[tuple[tuple[str, str], ...], ...]


def _escape_dn_value(value: str) -> str:
    escaped = "".join(f"\\{ch}" if ch in _DN_SPECIALS else ch for ch in value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def distinguished_name(subject: SubjectName) -> str:
    """The subject as libvirt prints it, e.g. ``C=GB,ST=London,L=London,O=Red Hat,CN=client``.

    Attributes come in certificate order (country first in the usual layout),
    separated by commas, multi-valued RDNs joined with ``+``.
    """
    parts = []
    for rdn in subject:
        parts.append(
            "+".join(
                f"{_DN_SHORT_NAMES.get(name, name)}={_escape_dn_value(value)}"
                for name, value in rdn
            )
        )
    return ",".join(parts)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """fnmatch(3) without flags, as libvirtd uses it: ``*``, ``?``, ``[...]`` (``[!...]``),
    and a backslash that makes the next character literal."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "\\" and i < len(pattern):
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif (
            ch == "[" and (end := pattern.find("]", i + 1 if pattern[i : i + 1] in "!]" else i)) > 0
        ):
            body = pattern[i:end]
            negate = body.startswith(("!", "^"))
            body = body[1:] if negate else body
            members = "".join(c if c == "-" else re.escape(c) for c in body)
            out.append(f"[{'^' if negate else ''}{members}]")
            i = end + 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def compile_dn_patterns(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    """The patterns of ``tls_allowed_dn_list``, checked once.

    Raises:
        TlsSetupError: a pattern cannot be used (a range such as ``[z-a]``).
    """
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(_pattern_regex(pattern))
        except re.error as exc:
            raise TlsSetupError(
                f"malformed tls_allowed_dn_list pattern {pattern!r}: {exc}"
            ) from None
    return tuple(compiled)


def dn_allowed(dn: str, patterns: Sequence[str | re.Pattern[str]]) -> bool:
    """True when ``dn`` matches one of the shell-style patterns as a whole."""
    return any((_pattern_regex(p) if isinstance(p, str) else p).fullmatch(dn) for p in patterns)
