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

# The attributes gnutls prints by name (gnutls_x509_crt_get_dn, which libvirt matches
# tls_allowed_dn_list against), by OID, with the string types it prints as text; any
# other attribute, or a value of another type, it prints as its OID (or name) and "#"
# with the hex of the value's DER encoding, as RFC 4514 says. Read off libvirt's
# virt-pki-query-dn (tests/daemon/test_tls_settings.py).
_UTF8, _PRINTABLE, _T61, _IA5, _UNIVERSAL, _BMP = 0x0C, 0x13, 0x14, 0x16, 0x1C, 0x1E
_DIRECTORY = frozenset({_UTF8, _PRINTABLE, _T61, _UNIVERSAL, _BMP})  # X.520 DirectoryString
_PRINTABLE_ONLY = frozenset({_PRINTABLE})
_IA5_ONLY = frozenset({_IA5})
_DN_ATTRIBUTES: dict[str, tuple[str, frozenset[int]]] = {
    "2.5.4.3": ("CN", _DIRECTORY),
    "2.5.4.4": ("surName", _DIRECTORY),
    "2.5.4.5": ("serialNumber", _PRINTABLE_ONLY),
    "2.5.4.6": ("C", _PRINTABLE_ONLY),
    "2.5.4.7": ("L", _DIRECTORY),
    "2.5.4.8": ("ST", _DIRECTORY),
    "2.5.4.9": ("street", _DIRECTORY),
    "2.5.4.10": ("O", _DIRECTORY),
    "2.5.4.11": ("OU", _DIRECTORY),
    "2.5.4.12": ("title", _DIRECTORY),
    "2.5.4.13": ("description", _DIRECTORY),
    "2.5.4.15": ("businessCategory", _DIRECTORY),
    "2.5.4.17": ("postalCode", _DIRECTORY),
    "2.5.4.20": ("telephoneNumber", _PRINTABLE_ONLY),
    "2.5.4.41": ("name", _DIRECTORY),
    "2.5.4.42": ("givenName", _DIRECTORY),
    "2.5.4.43": ("initials", _DIRECTORY),
    "2.5.4.44": ("generationQualifier", _DIRECTORY),
    "2.5.4.46": ("dnQualifier", _PRINTABLE_ONLY),
    "2.5.4.65": ("pseudonym", _DIRECTORY),
    "0.9.2342.19200300.100.1.1": ("UID", _DIRECTORY),
    "0.9.2342.19200300.100.1.25": ("DC", _IA5_ONLY),
    "1.2.840.113549.1.9.1": ("EMAIL", _IA5_ONLY),
    "1.3.6.1.4.1.311.60.2.1.1": ("jurisdictionOfIncorporationLocalityName", _DIRECTORY),
    "1.3.6.1.4.1.311.60.2.1.2": ("jurisdictionOfIncorporationStateOrProvinceName", _DIRECTORY),
    "1.3.6.1.4.1.311.60.2.1.3": ("jurisdictionOfIncorporationCountryName", _PRINTABLE_ONLY),
    "1.3.6.1.5.5.7.9.2": ("placeOfBirth", _DIRECTORY),
    "1.3.6.1.5.5.7.9.3": ("gender", _PRINTABLE_ONLY),
    "1.3.6.1.5.5.7.9.4": ("countryOfCitizenship", _PRINTABLE_ONLY),
    "1.3.6.1.5.5.7.9.5": ("countryOfResidence", _PRINTABLE_ONLY),
}
# The characters gnutls escapes with a backslash in a value ("=" is not one of them).
_DN_SPECIALS = frozenset(',+"\\<>;')
# The only characters of a tls_allowed_dn_list pattern that are not themselves.
_WILDCARDS = {"*": ".*", "?": "."}
_SEQUENCE, _SET, _OID, _VERSION = 0x30, 0x31, 0x06, 0xA0


def _escape_dn_value(value: str) -> str:
    escaped = "".join(f"\\{ch}" if ch in _DN_SPECIALS else ch for ch in value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """The DER element at ``pos``: (tag, start of its content, end of its content)."""
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > len(der):
        raise ValueError("DER element longer than its certificate")
    return tag, pos, pos + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The elements inside ``der[start:end]``: (tag, element start, content start, end)."""
    found = []
    while start < end:
        tag, content, stop = _tlv(der, start)
        found.append((tag, start, content, stop))
        start = stop
    return found


def _oid_text(content: bytes) -> str:
    arcs, value = [], 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in (first, arcs[0] - 40 * first, *arcs[1:]))


def _value_text(tag: int, content: bytes) -> str | None:
    """The value as gnutls prints a string it takes for text (escaped afterwards), or
    None where it prints the encoding in hex instead."""
    if tag == _T61 and all(0x20 <= byte < 0x7F for byte in content):
        return content.decode("ascii")  # printable ASCII only: what gnutls takes for text
    if tag in (_T61, _UNIVERSAL):
        return "#" + content.hex()  # text all the same: escaped as a leading "#"
    if tag == _UTF8:
        text = content.decode("utf-8", "replace")
    elif tag in (_PRINTABLE, _IA5):
        text = content.decode("latin-1")
    elif tag == _BMP:
        try:
            text = content.decode("utf-16-be")
        except UnicodeDecodeError:  # a lone surrogate: no text to gnutls either
            return "#" + content.hex()
        # gnutls's conversion to UTF-8 ends the text before one last NUL, if any; no text
        # is left of a lone one.
        if text.endswith("\x00"):
            text = text[:-1] or "\x00"
    else:
        return None
    # gnutls refuses a string with a NUL in it as text: such a value is its encoding's hex.
    return None if "\x00" in text else text


def certificate_dn(der: bytes) -> str:
    """The subject of certificate ``der`` as libvirt prints it (gnutls_x509_crt_get_dn),
    e.g. ``C=GB,ST=London,L=London,O=Red Hat,CN=client``: attributes in certificate
    order, separated by commas, multi-valued RDNs joined with ``+``.

    Raises:
        ValueError: ``der`` is no certificate.
    """
    try:
        _, cert_start, cert_end = _tlv(der, 0)
        _, tbs_start, tbs_end = _tlv(der, cert_start)
        fields = _children(der, tbs_start, min(tbs_end, cert_end))
        if fields and fields[0][0] == _VERSION:
            fields = fields[1:]
        # serialNumber, signature, issuer, validity, subject
        tag, _, subject_start, subject_end = fields[4]
        if tag != _SEQUENCE:
            raise ValueError("no subject")
        rdns = []
        for rdn_tag, _, rdn_start, rdn_end in _children(der, subject_start, subject_end):
            if rdn_tag != _SET:
                raise ValueError("malformed subject")
            parts = []
            for _, _, atv_start, atv_end in _children(der, rdn_start, rdn_end):
                (oid_tag, _, oid_start, oid_end), value = _children(der, atv_start, atv_end)[:2]
                if oid_tag != _OID:
                    raise ValueError("malformed attribute")
                parts.append(_attribute(_oid_text(der[oid_start:oid_end]), der, value))
            rdns.append("+".join(parts))
    except (IndexError, ValueError) as exc:
        raise ValueError(f"unreadable certificate subject: {exc}") from None
    return ",".join(rdns)


def _attribute(oid: str, der: bytes, value: tuple[int, int, int, int]) -> str:
    tag, start, content, end = value
    name, types = _DN_ATTRIBUTES.get(oid, (oid, frozenset()))
    if content == end and types is _DIRECTORY:
        # gnutls prints no DN at all then, and libvirtd refuses the client.
        raise ValueError(f"{name} without a value")
    text = _value_text(tag, der[content:end]) if tag in types and content < end else None
    if text is None:
        return f"{name}=#{der[start:end].hex()}"
    return f"{name}={_escape_dn_value(text)}"


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
