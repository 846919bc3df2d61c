"""Distinguished names as libvirt prints them, and ``tls_allowed_dn_list`` patterns.

libvirtd matches the client's DN, formatted by gnutls_x509_crt_get_dn, against
each pattern with GLib's g_pattern_match_simple (only ``*`` and ``?`` are
wildcards); both are reproduced here so that an existing allow-list means the
same thing to virtvold.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

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
# The characters gnutls escapes with a backslash in a value ("=" is not one of them).
_DN_SPECIALS = frozenset(',+"\\<>;')
# The only characters of a tls_allowed_dn_list pattern that are not themselves.
_WILDCARDS = {"*": ".*", "?": "."}


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
    """GLib's g_pattern_match_simple, as libvirtd 9.0 uses it: ``*`` is any string,
    ``?`` any one character, and every other character, ``[`` and ``\\`` included,
    only itself."""
    return re.compile("".join(_WILDCARDS.get(ch) or re.escape(ch) for ch in pattern), re.DOTALL)


def compile_dn_patterns(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    """The patterns of ``tls_allowed_dn_list``, compiled once."""
    return tuple(_pattern_regex(pattern) for pattern in patterns)


def dn_allowed(dn: str, patterns: Sequence[str | re.Pattern[str]]) -> bool:
    """True when ``dn`` matches one of the wildcard patterns as a whole."""
    return any((_pattern_regex(p) if isinstance(p, str) else p).fullmatch(dn) for p in patterns)
