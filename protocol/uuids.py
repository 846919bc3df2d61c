"""A UUID's text as libvirt reads it (virUUIDParse), for both ends.

The command line reads a pool argument by it (virsh looks up by UUID what libvirt
parses as one) and the daemon a definition's ``<uuid>``: one reading for both, as
libvirt has one. Python's ``uuid.UUID`` differs both ways: it takes braces and
"urn:uuid:", and refuses the spaces libvirt allows between pairs.
"""

from __future__ import annotations

__all__ = ["parse_uuid"]

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
# glib's g_ascii_isspace(), which libvirt skips around the digits: C's isspace() without
# the vertical tab.
_BLANKS = " \t\n\f\r"


def parse_uuid(text: str) -> bytes | None:
    """The 16 bytes ``text`` stands for, or None when libvirt would refuse it: blanks
    around, then 32 hex digits in pairs, with any dashes or spaces between pairs (not
    inside one)."""
    body = text.strip(_BLANKS)
    pairs: list[str] = []
    i = 0
    while len(pairs) < 16:
        if body[i : i + 1] in ("-", " "):
            i += 1
            continue
        pair = body[i : i + 2]
        if len(pair) < 2 or not _HEX_DIGITS.issuperset(pair):
            return None
        pairs.append(pair)
        i += 2
    return bytes.fromhex("".join(pairs)) if i == len(body) else None
