"""The ``<source>`` of a ``<pool type='rbd'>``: Ceph pool, monitors, cephx user and secret."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from virtvol.protocol.errors import ErrorCode
from virtvol.protocol.uuids import parse_uuid

from .reports import storage_error, xml_error
from .xmldoc import child_text, escape

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element


@dataclass(frozen=True, slots=True)
class RbdSource:
    """Where an rbd pool's images live and how to log in to the cluster.

    ``secret_uuid`` or ``secret_usage`` names the libvirt secret holding the
    cephx key of ``username``; without ``username`` the cluster is reached
    without authentication (``auth_supported = none``).
    """

    pool: str
    hosts: tuple[tuple[str, int | None], ...]
    username: str | None = None
    secret_uuid: bytes | None = None
    secret_usage: str | None = None

    @property
    def mon_host(self) -> str:
        """Monitors in librados' ``mon_host`` syntax."""
        parts = []
        for name, port in self.hosts:
            host = f"[{name}]" if ":" in name else name
            parts.append(f"{host}:{port}" if port else host)
        return ",".join(parts)


def parse_rbd_source(root: Element) -> RbdSource:
    """Read ``<source>`` of an rbd pool with libvirt's checks and messages."""
    source = root.find("source")
    name = child_text(source, "name") if source is not None else None
    if source is None or name is None:
        raise xml_error("element 'name' is mandatory for RBD pool")
    hosts = []
    for host in source.findall("host"):
        host_name = host.get("name")
        if not host_name:
            raise xml_error("missing storage pool source host name")
        port_text = host.get("port")
        port = None
        if port_text is not None:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise xml_error(f"Invalid port number: {port_text}")
            port = int(port_text)
        hosts.append((host_name, port))
    if not hosts:
        raise xml_error("missing storage pool source host name")
    auth = source.find("auth")
    if auth is None:
        return RbdSource(name, tuple(hosts))
    kind = auth.get("type")
    if kind is None:
        raise xml_error("storage pool missing auth type")
    if kind != "ceph":
        raise xml_error(f"unknown auth type '{kind}'")
    username = auth.get("username")
    if not username:
        raise xml_error("missing username for auth")
    secret = auth.find("secret")
    secret_uuid_text = secret.get("uuid") if secret is not None else None
    usage = secret.get("usage") if secret is not None else None
    if secret is None or (secret_uuid_text is None and usage is None):
        raise xml_error("missing secret uuid or usage attribute")
    if secret_uuid_text is not None and usage is not None:
        raise xml_error("either secret uuid or usage expected")
    secret_uuid = None
    if secret_uuid_text is not None:
        secret_uuid = parse_uuid(secret_uuid_text)
        if secret_uuid is None:
            raise storage_error(ErrorCode.XML_ERROR, f"invalid secret uuid '{secret_uuid_text}'")
    return RbdSource(name, tuple(hosts), username, secret_uuid, usage)


def format_rbd_source(source: RbdSource) -> list[str]:
    """The ``<source>`` element's lines, indented as in a pool document."""
    lines = ["  <source>"]
    for name, port in source.hosts:
        port_attr = f" port='{port}'" if port else ""
        lines.append(f"    <host name='{escape(name)}'{port_attr}/>")
    lines.append(f"    <name>{escape(source.pool)}</name>")
    if source.username is not None:
        lines.append(f"    <auth type='ceph' username='{escape(source.username)}'>")
        if source.secret_uuid is not None:
            lines.append(f"      <secret uuid='{uuidlib.UUID(bytes=source.secret_uuid)}'/>")
        else:
            lines.append(f"      <secret usage='{escape(source.secret_usage or '')}'/>")
        lines.append("    </auth>")
    lines.append("  </source>")
    return lines
