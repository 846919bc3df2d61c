"""A pool's or a volume's ``<permissions>``, read by one rule as libvirt reads both.

libvirt parses the element of a pool's target and of a volume's target with one
function: ``<mode>`` is a C integer in base 8 (C blanks and a sign in front, nothing
after) holding permission bits only; ``<owner>`` and ``<group>`` are a uid_t or -1,
each refused when empty; ``<label>`` is kept as written. Any deviation is an XML error
naming the element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .reports import xml_error
from .xmldoc import c_integer, child_string

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

__all__ = ["NO_ID", "Permissions", "parse_permissions"]

# (uid_t)-1: "leave the owner (or group) as it is" to chown.
NO_ID = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class Permissions:
    """What ``<permissions>`` asked for; None where it asked for nothing (an owner or
    group of -1 included)."""

    mode: int | None = None
    owner: int | None = None
    group: int | None = None
    label: str | None = None


def parse_permissions(element: Element | None, *, stored: bool = False) -> Permissions:
    """``element`` (``<permissions>``, or None when there is none) read as libvirt reads it.

    ``stored``: a pool definition this daemon wrote itself, read back leniently. Owners
    and groups from 2^31 up are printed as C ints, as libvirt prints them (-2 for
    4294967294), and a mode stored before the permission-bits rule may hold set-id or
    sticky bits, which it loses rather than the pool.
    """
    if element is None:
        return Permissions()
    mode = None
    mode_text = child_string(element, "mode")
    if mode_text is not None:
        mode = c_integer(mode_text, "01234567")
        if mode is not None and stored:
            mode &= 0o777
        if mode is None or mode & ~0o777:
            raise xml_error("malformed octal mode")
    return Permissions(
        mode=mode,
        owner=_id(element, "owner", stored),
        group=_id(element, "group", stored),
        label=child_string(element, "label"),
    )


def _id(permissions: Element, tag: str, stored: bool) -> int | None:
    element = permissions.find(tag)
    if element is None:
        return None
    value = c_integer("".join(element.itertext()), "0123456789")
    if value is not None and stored and -(2**31) <= value < 0:
        value &= NO_ID
    if value is None or not (0 <= value <= NO_ID or value == -1):
        raise xml_error(f"malformed {tag} element")
    return None if value in (-1, NO_ID) else value
