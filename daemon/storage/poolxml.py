"""Pool definitions: parsing ``<pool>`` XML and writing it back in libvirt's layout."""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.protocol.uuids import parse_uuid

from .names import check_pool_name
from .permissions import parse_permissions
from .poolsource import dir_pool_source
from .rbdxml import RbdSource, format_rbd_source, parse_rbd_source
from .reports import storage_error, xml_error
from .xmldoc import (
    c_int_id,
    child_string,
    child_text,
    escape,
    parse_document,
)

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

# virStoragePoolType, in enum order: libvirt names the number in its errors.
POOL_TYPES = (
    "dir",
    "fs",
    "netfs",
    "logical",
    "disk",
    "iscsi",
    "iscsi-direct",
    "scsi",
    "mpath",
    "rbd",
    "sheepdog",
    "gluster",
    "zfs",
    "vstorage",
)

DEFAULT_DIR_MODE = 0o711  # what libvirt gives a directory it builds for a pool


@dataclass(frozen=True, slots=True)
class PoolDefinition:
    """What a ``<pool type='dir'>`` or ``<pool type='rbd'>`` document defines.

    An rbd pool has ``rbd`` set and no directory: its ``target`` is
    ``rbd:<monitors>/<ceph pool>``, so that two definitions of the same
    Ceph pool conflict like two of the same directory.
    """

    name: str
    uuid: bytes
    target: str
    # <target><permissions><mode>, used when the pool directory is built.
    mode: int | None = None
    rbd: RbdSource | None = None
    # <owner> and <group>, which a build gives the directory, and <label>: kept and
    # printed as libvirt keeps them; None when not given (or given as -1).
    owner: int | None = None
    group: int | None = None
    label: str | None = None
    # <features><cow state>: copy on write for the folder a build makes (None: as it is).
    cow: bool | None = None
    # <refresh><volume allocation>: "default" or "capacity", kept and printed; nothing a
    # dir pool's volumes are measured by changes with it, in libvirt either.
    refresh_allocation: str | None = None
    # What libvirt keeps and prints of a dir pool's <source> (``poolsource``): lines.
    source: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PoolRuntime:
    """Live facts shown in the XML of a pool that has been started."""

    capacity: int
    allocation: int
    available: int
    mode: int
    owner: int
    group: int


# The pool types virtvold has a backend for, in libvirt's order of backends.
SERVED_POOL_TYPES = ("dir", "rbd")


def capabilities_xml() -> str:
    """CONNECT_GET_CAPABILITIES of a storage-only daemon: the pool types it can run,
    laid out as libvirtd's storage driver lays out its own list."""
    values = "".join(f"      <value>{kind}</value>\n" for kind in SERVED_POOL_TYPES)
    return (
        "<capabilities>\n\n  <pool>\n    <enum name='type'>\n"
        f"{values}    </enum>\n  </pool>\n\n</capabilities>\n"
    )


def find_pool_sources(pool_type: str) -> str:
    """CONNECT_FIND_STORAGE_POOL_SOURCES: neither backend here discovers sources, so every
    type gets libvirt's refusal for it: unknown, without a backend, or without discovery."""
    if pool_type not in POOL_TYPES:
        raise storage_error(ErrorCode.INTERNAL_ERROR, f"unknown storage pool type {pool_type}")
    if pool_type not in SERVED_POOL_TYPES:
        raise missing_backend(pool_type)
    raise storage_error(
        ErrorCode.NO_SUPPORT, f"pool type '{pool_type}' does not support source discovery"
    )


def missing_backend(pool_type: str) -> ErrorReport:
    number = POOL_TYPES.index(pool_type)
    return storage_error(
        ErrorCode.INTERNAL_ERROR, f"missing backend for pool type {number} ({pool_type})"
    )


def clean_path(path: str) -> str:
    """Collapse repeated slashes and drop a trailing one, as libvirt does (no '..' resolution).

    Exactly two leading slashes stay: POSIX leaves their meaning to the system, so
    libvirt does not take "//a" for "/a" (three or more are one).
    """
    cleaned = re.sub(r"/{2,}", "/", path)
    if path.startswith("//") and not path.startswith("///"):
        cleaned = "/" + cleaned
    if len(cleaned) > 1 and cleaned.endswith("/"):
        cleaned = cleaned[:-1]
    return cleaned


def parse_pool_xml(text: str, *, stored: bool = False) -> PoolDefinition:
    """Parse a pool definition; a missing UUID is generated. ``stored``: one the daemon
    saved itself, read back as it was printed (see ``permissions.parse_permissions``).

    Raises:
        ErrorReport: for malformed XML, missing or bad elements, or pool types
            other than "dir" (libvirt's "missing backend" error).
    """
    root = parse_document(text, "pool", "storage_pool_definition")
    pool_type = root.get("type")
    if pool_type is None:
        raise xml_error("Missing required attribute 'type' in element 'pool'", ErrorDomain.XML)
    if pool_type not in POOL_TYPES:
        raise xml_error(
            f"Invalid value for attribute 'type' in element 'pool': '{pool_type}'.",
            ErrorDomain.XML,
        )
    if pool_type not in SERVED_POOL_TYPES:
        raise missing_backend(pool_type)
    # libvirt reads the source before the name.
    source_lines = dir_pool_source(root.find("source")) if pool_type == "dir" else ()
    name = child_string(root, "name")
    if name is None:
        raise xml_error("missing pool source name element")
    check_pool_name(name)
    uuid_text = child_string(root, "uuid")
    if uuid_text is None:
        raw_uuid = uuidlib.uuid4().bytes
    else:
        parsed = parse_uuid(uuid_text)
        if parsed is None:
            raise xml_error("malformed uuid element")
        raw_uuid = parsed
    cow = _cow(root)  # libvirt reads <features> before the source and the target
    if pool_type == "rbd":
        source = parse_rbd_source(root)
        return PoolDefinition(
            name=name, uuid=raw_uuid, target=f"rbd:{source.mon_host}/{source.pool}", rbd=source
        )
    target = child_text(root, "target/path")
    if target is None:
        raise xml_error("missing storage pool target path")
    if not target.startswith("/"):
        # libvirt accepts it and resolves it against the daemon's working
        # directory; a daemon should not depend on where it was started.
        raise xml_error(f"storage pool target path '{target}' must be absolute")
    permissions = parse_permissions(root.find("target/permissions"), stored=stored)
    return PoolDefinition(
        name=name,
        uuid=raw_uuid,
        target=clean_path(target),
        mode=permissions.mode,
        owner=permissions.owner,
        group=permissions.group,
        label=permissions.label,
        cow=cow,
        refresh_allocation=_refresh_allocation(root),
        source=source_lines,
    )


def _refresh_allocation(root: Element) -> str | None:
    """<refresh><volume allocation>: an empty or missing one is no <refresh> at all."""
    volume = root.find("refresh/volume")
    allocation = volume.get("allocation") if volume is not None else None
    if not allocation:
        return None
    if allocation not in ("default", "capacity"):
        raise storage_error(
            ErrorCode.CONFIG_UNSUPPORTED,
            f"unknown storage pool volume refresh allocation type {allocation}",
        )
    return allocation


def _cow(root: Element) -> bool | None:
    """<features><cow state>: yes or no; a <cow/> without one says nothing."""
    cow = root.find("features/cow")
    state = cow.get("state") if cow is not None else None
    if state is None:
        return None
    if state not in ("yes", "no"):
        raise xml_error(
            f"Invalid value for attribute 'state' in element 'cow': '{state}'.", ErrorDomain.XML
        )
    return state == "yes"


def format_pool_xml(definition: PoolDefinition, runtime: PoolRuntime | None) -> str:
    """The pool's XML as libvirt 9.0 prints it (sizes and permissions once it has run)."""
    sizes = runtime or PoolRuntime(0, 0, 0, 0, 0, 0)
    if definition.rbd is not None:
        return "\n".join(
            [
                "<pool type='rbd'>",
                f"  <name>{escape(definition.name)}</name>",
                f"  <uuid>{uuidlib.UUID(bytes=definition.uuid)}</uuid>",
                f"  <capacity unit='bytes'>{sizes.capacity}</capacity>",
                f"  <allocation unit='bytes'>{sizes.allocation}</allocation>",
                f"  <available unit='bytes'>{sizes.available}</available>",
                *format_rbd_source(definition.rbd),
                "</pool>",
                "",
            ]
        )
    lines = [
        "<pool type='dir'>",
        f"  <name>{escape(definition.name)}</name>",
        f"  <uuid>{uuidlib.UUID(bytes=definition.uuid)}</uuid>",
        f"  <capacity unit='bytes'>{sizes.capacity}</capacity>",
        f"  <allocation unit='bytes'>{sizes.allocation}</allocation>",
        f"  <available unit='bytes'>{sizes.available}</available>",
    ]
    if definition.cow is not None:
        state = "yes" if definition.cow else "no"
        lines += ["  <features>", f"    <cow state='{state}'/>", "  </features>"]
    lines += [
        "  <source>",
        *definition.source,
        "  </source>",
        "  <target>",
        f"    <path>{escape(definition.target)}</path>",
    ]
    # Once the pool has run, libvirt shows what its refresh found of the directory (and
    # no label without a security driver's), until the daemon reads the definition again.
    mode: int | None
    owner: int | None
    group: int | None
    if runtime is not None:
        mode, owner, group, label = runtime.mode, runtime.owner, runtime.group, None
    else:
        mode, owner, group = definition.mode, definition.owner, definition.group
        label = definition.label
    permissions = []
    if mode is not None:
        permissions.append(f"      <mode>0{mode:o}</mode>")  # libvirt's "0%o"
    if owner is not None:
        permissions.append(f"      <owner>{c_int_id(owner)}</owner>")
    if group is not None:
        permissions.append(f"      <group>{c_int_id(group)}</group>")
    if label is not None:
        permissions.append(f"      <label>{escape(label)}</label>")
    if permissions:
        lines += ["    <permissions>", *permissions, "    </permissions>"]
    lines.append("  </target>")
    if definition.refresh_allocation is not None:
        lines += [
            "  <refresh>",
            f"    <volume allocation='{definition.refresh_allocation}'/>",
            "  </refresh>",
        ]
    lines += ["</pool>", ""]
    return "\n".join(lines)
