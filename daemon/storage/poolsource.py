"""A dir pool's ``<source>``, read as libvirt 9.0 reads any pool's source.

A directory has no source, yet libvirt parses the element for every pool type: it
refuses a host without a name or with a port that is no int, a device without a path
or with a ``part_separator`` other than yes or no, an adapter of an unknown type and an
``<auth>`` it cannot read, in that order; and it keeps, and prints, the parts every
pool's XML carries (the authentication, the protocol version, the vendor and the
product). What it keeps of a host, device, directory, adapter, name or initiator a dir
pool never prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.protocol.uuids import parse_uuid

from .reports import storage_error, uuid_text, xml_error
from .xmldoc import c_integer, escape

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

__all__ = ["dir_pool_source"]

_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_AUTH_TYPES = ("none", "chap", "ceph")


def _invalid_attribute(attribute: str, element: str, value: str, expected: str = "") -> ErrorReport:
    return xml_error(
        f"Invalid value for attribute '{attribute}' in element '{element}': '{value}'.{expected}",
        ErrorDomain.XML,
    )


def dir_pool_source(source: Element | None) -> tuple[str, ...]:
    """The lines libvirt prints inside a dir pool's ``<source>`` (four spaces in), after
    refusing what it refuses of the element."""
    if source is None:
        return ()
    for host in source.findall("host"):
        if host.get("name") is None:
            raise xml_error("missing storage pool host name")
        port = host.get("port")
        if port is None:
            continue
        number = c_integer(port)
        if number is None or not _INT_MIN <= number <= _INT_MAX:
            raise _invalid_attribute("port", "host", port, " Expected integer value")
    for device in source.findall("device"):
        if device.get("path") is None:
            raise xml_error("missing storage pool source device path")
        separator = device.get("part_separator")
        if separator is not None and separator not in ("yes", "no"):
            raise _invalid_attribute("part_separator", "device", separator)
    adapter = source.find("adapter")
    kind = adapter.get("type") if adapter is not None else None
    if kind is not None and kind not in ("scsi_host", "fc_host"):
        raise _invalid_attribute("type", "adapter", kind)
    lines = _auth(source.find("auth"))
    version = _first_attribute(source, "protocol", "ver")
    if version:
        lines.append(f"    <protocol ver='{escape(version)}'/>")
    for element in ("vendor", "product"):
        name = _first_attribute(source, element, "name")
        if name:
            lines.append(f"    <{element} name='{escape(name)}'/>")
    return tuple(lines)


def _first_attribute(source: Element, tag: str, attribute: str) -> str | None:
    """XPath's ``string(./tag/@attribute)``: the first such element's."""
    element = source.find(tag)
    return element.get(attribute) if element is not None else None


def _auth(auth: Element | None) -> list[str]:
    """``<auth>``: a user name, a known type, a ``<secret>`` named by UUID or usage."""
    if auth is None:
        return []
    username = auth.get("username")
    if not username:
        raise xml_error("missing username for auth")
    kind = auth.get("type") or "none"
    if kind not in _AUTH_TYPES:
        raise storage_error(ErrorCode.CONFIG_UNSUPPORTED, f"unknown auth type '{kind}'")
    secret = auth.find("secret")
    if secret is None:
        raise xml_error("Missing <secret> element in auth")
    uuid, usage = secret.get("uuid"), secret.get("usage")
    if uuid is None and usage is None:
        raise xml_error("missing secret uuid or usage attribute", ErrorDomain.NONE)
    if uuid is not None and usage is not None:
        raise xml_error("either secret uuid or usage expected", ErrorDomain.NONE)
    named = ""
    if uuid is not None:
        raw = parse_uuid(uuid)
        if raw is None:
            raise xml_error(f"invalid secret uuid '{uuid}'", ErrorDomain.NONE)
        named = f" uuid='{uuid_text(raw)}'"
    elif usage is not None:  # an empty usage is kept too: stored, it must read back
        named = f" usage='{escape(usage)}'"
    if kind == "none":
        raise storage_error(ErrorCode.CONFIG_UNSUPPORTED, "storage pool missing auth type")
    secret_type = secret.get("type")
    typed = f" type='{escape(secret_type)}'" if secret_type is not None else ""
    return [
        f"    <auth type='{kind}' username='{escape(username)}'>",
        f"      <secret{typed}{named}/>",
        "    </auth>",
    ]
