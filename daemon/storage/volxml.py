"""Volume definitions: parsing ``<volume>`` XML and writing it in libvirt's layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.protocol.uuids import parse_uuid

from .model import VolumeType
from .permissions import parse_permissions
from .probe import FILE_FORMATS, BackingStore, ImageHeader
from .reports import storage_error, uuid_text, xml_error
from .units import U64_MAX, scaled_size
from .xmldoc import (
    c_int_id,
    c_integer,
    child_string,
    escape,
    escape_text,
    parse_document,
)

if TYPE_CHECKING:
    import os
    from xml.etree.ElementTree import Element

# Largest size a Linux file can have (off_t).
MAX_FILE_SIZE = (1 << 63) - 1

# virStorageVolType names ("type" of <volume>); the file itself is always made a file.
_VOLUME_TYPES = frozenset(["file", "block", "dir", "network", "netdir", "ploop"])

# What a volume's XML may name: "none", the enum's zero, is refused as unknown.
_KNOWN_FORMATS = frozenset(FILE_FORMATS) - {"none"}


@dataclass(frozen=True, slots=True)
class VolumeRequest:
    """What a ``<volume>`` document asks for.

    ``allocation`` None means "as much as capacity" (libvirt's default);
    ``capacity`` None is allowed only when cloning (the source's size is used).
    """

    name: str
    capacity: int | None
    allocation: int | None
    # <target><permissions>: None leaves the daemon's default (0600, its own user).
    mode: int | None = None
    owner: int | None = None
    group: int | None = None
    # <target><format type>, and whether a backing store or encryption is asked for:
    # what can be made of those is for ``buildrules`` to say, once the name is checked.
    format: str = "raw"
    backing: bool = False
    encrypted: bool = False
    # <target><nocow/>: a file without copy on write, which only btrfs can make.
    nocow: bool = False


def _size(root: Element, tag: str) -> int | None:
    """``<capacity>`` or ``<allocation>`` as libvirt reads it: the element's text (its
    children's too, XPath's string()), empty counting as absent, then strtoull's rules
    (blanks and one "+" in front, digits to the end, 64 bits at most)."""
    element = root.find(tag)
    if element is None:
        return None
    text = "".join(element.itertext())
    if not text:
        return None
    value = _strtoull(text)
    if value is None:
        # libvirt says "capacity" for a malformed allocation too.
        raise xml_error("malformed capacity element")
    return scaled_size(value, element.get("unit"), MAX_FILE_SIZE)


def _strtoull(text: str) -> int | None:
    """``text`` whole as strtoull reads an unsigned 64-bit number (blanks and a "+" in
    front, no minus), as libvirt reads sizes; None when it is not one."""
    value = c_integer(text)
    if value is None or "-" in text or value > U64_MAX:
        return None
    return value


def parse_volume_xml(text: str, *, capacity_required: bool = True) -> VolumeRequest:
    """Parse a volume definition (``buildrules`` says which can be made).

    Raises:
        ErrorReport: malformed XML, missing name or capacity, bad sizes or units,
            or a format libvirt does not know.
    """
    root = parse_document(text, "volume", "storage_volume_definition")
    name = child_string(root, "name")
    if name is None:
        raise xml_error("missing volume name element")
    kind = root.get("type")
    if kind and kind not in _VOLUME_TYPES:  # an empty type is none, as in libvirt
        raise storage_error(ErrorCode.CONFIG_UNSUPPORTED, f"unknown volume type '{kind}'")
    backing = child_string(root, "backingStore/path") is not None
    if backing:  # read as the target's are, though nothing is made of it (buildrules)
        _format_type(root, "backingStore/format")
        parse_permissions(root.find("backingStore/permissions"))
    capacity = _size(root, "capacity")
    # An overlay may leave its size to its backing file.
    if capacity is None and capacity_required and not backing:
        raise xml_error("missing capacity element")
    allocation = _size(root, "allocation")
    fmt = _format_type(root, "target/format")
    if capacity is not None and allocation is not None and allocation > capacity:
        # libvirt grows the capacity to the requested allocation.
        capacity = allocation
    permissions = parse_permissions(root.find("target/permissions"))
    # The rest of <target> is refused in libvirt's order even where nothing uses it.
    _check_encryption(root)
    _check_compat(root)
    _check_cluster_size(root)
    _check_features(root)
    return VolumeRequest(
        name=name,
        capacity=capacity,
        allocation=allocation,
        mode=permissions.mode,
        owner=permissions.owner,
        group=permissions.group,
        format=fmt or "raw",
        # Refused, not ignored, where they cannot be made: an empty volume instead of an
        # overlay, or a plain one where encryption was asked for.
        backing=backing,
        encrypted=root.find("target/encryption") is not None,
        nocow=root.find("target/nocow") is not None,
    )


def _format_type(root: Element, path: str) -> str | None:
    """The ``type`` of the ``<format>`` at ``path``: None for none (the default format; an
    empty type is none), libvirt's refusal for a type it does not know."""
    element = root.find(path)
    fmt = (element.get("type") or None) if element is not None else None
    if fmt is not None and fmt not in _KNOWN_FORMATS:
        raise storage_error(ErrorCode.CONFIG_UNSUPPORTED, f"unknown volume format type {fmt}")
    return fmt


# virStorageEncryptionFormat and virStorageFileFeature, as libvirt 9.0 names them.
_ENCRYPTION_FORMATS = frozenset(["default", "qcow", "luks", "luks2"])
_FEATURES = frozenset(["lazy_refcounts", "extended_l2"])
_UINT_MAX = (1 << 32) - 1


def _check_encryption(root: Element) -> None:
    """<encryption>'s format, and the UUIDs its secrets name."""
    encryption = root.find("target/encryption")
    if encryption is None:
        return
    kind = encryption.get("format")
    if not kind:
        raise xml_error("unknown volume encryption format")
    if kind not in _ENCRYPTION_FORMATS:
        raise storage_error(
            ErrorCode.CONFIG_UNSUPPORTED, f"unknown volume encryption format type {kind}"
        )
    for secret in encryption.findall("secret"):
        uuid = secret.get("uuid")
        if uuid is not None and parse_uuid(uuid) is None:
            raise xml_error(f"invalid secret uuid '{uuid}'", ErrorDomain.NONE)


def _check_compat(root: Element) -> None:
    """<compat>: two unsigned ints (virStrToLong_ui, "-1" taken) around the first dot."""
    compat = child_string(root, "target/compat")
    if compat is None:
        return
    numbers = compat.split(".", 1)
    values = [c_integer(number) for number in numbers]
    if len(values) != 2 or any(v is None or abs(v) > _UINT_MAX for v in values):
        raise xml_error("forbidden characters in 'compat' attribute")


def _check_cluster_size(root: Element) -> None:
    """<clusterSize>: strtoull's number (no minus sign), scaled by its unit."""
    text = child_string(root, "target/clusterSize")
    if text is None:
        return
    value = _strtoull(text)
    if value is None:
        raise xml_error(
            f"Invalid value '{text}' for element or attribute './target/clusterSize'",
            ErrorDomain.XML,
        )
    element = root.find("target/clusterSize")
    scaled_size(value, element.get("unit") if element is not None else None)


def _check_features(root: Element) -> None:
    features = root.find("target/features")
    for feature in features if features is not None else ():
        if feature.tag not in _FEATURES:
            raise storage_error(ErrorCode.CONFIG_UNSUPPORTED, f"unsupported feature {feature.tag}")


def _timestamp(tag: str, ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    value = f"{seconds}.{nanos:09d}" if nanos else str(seconds)
    return f"      <{tag}>{value}</{tag}>"


def _permissions_and_times(st: os.stat_result) -> list[str]:
    """The file's mode, owner, group and times, as libvirt lists them for a volume."""
    return [
        "    <permissions>",
        # libvirt keeps the permission bits only (no set-id or sticky bit), as "0%o".
        f"      <mode>0{st.st_mode & 0o777:o}</mode>",
        f"      <owner>{c_int_id(st.st_uid)}</owner>",
        f"      <group>{c_int_id(st.st_gid)}</group>",
        "    </permissions>",
        "    <timestamps>",
        _timestamp("atime", st.st_atime_ns),
        _timestamp("mtime", st.st_mtime_ns),
        _timestamp("ctime", st.st_ctime_ns),
        "      <btime>0</btime>",
        "    </timestamps>",
    ]


def _header_details(header: ImageHeader, secret: bytes | None) -> list[str]:
    """What a probed header adds to ``<target>``: the encryption format with its passphrase
    secret (libvirt prints the element open, with or without one), compat and features
    (qcow2 v3), cluster size."""
    lines = []
    if header.encryption is not None:
        lines.append(f"    <encryption format='{header.encryption}'>")
        if secret is not None:
            lines.append(f"      <secret type='passphrase' uuid='{uuid_text(secret)}'/>")
        lines.append("    </encryption>")
    if header.features is not None:
        lines.append("    <compat>1.1</compat>")
    if header.cluster_size is not None:
        lines.append(f"    <clusterSize unit='B'>{header.cluster_size}</clusterSize>")
    if header.features is not None:
        if header.features:
            lines.append("    <features>")
            lines += [f"      <{feature}/>" for feature in header.features]
            lines.append("    </features>")
        else:
            lines.append("    <features/>")
    return lines


def _backing_store(backing: BackingStore) -> list[str]:
    lines = ["  <backingStore>"]
    if backing.path is not None:
        lines.append(f"    <path>{escape_text(backing.path)}</path>")
    lines.append(f"    <format type='{backing.format}'/>")
    if backing.st is not None:
        lines += _permissions_and_times(backing.st)
    lines.append("  </backingStore>")
    return lines


def volume_type(header: ImageHeader) -> VolumeType:
    """The volume type libvirt gives a file of this format: ploop images and
    sub-directories have their own."""
    return _VOLUME_TYPE_OF_FORMAT.get(header.format, VolumeType.FILE)


_VOLUME_TYPE_OF_FORMAT = {"ploop": VolumeType.PLOOP, "dir": VolumeType.DIR}


def volume_sizes(st: os.stat_result, header: ImageHeader) -> tuple[int, int, int]:
    """Capacity, allocation and physical size as libvirt reports them: the header's
    virtual size (or the file's size), the blocks in use, the file's size; all 0 for a
    sub-directory, whose content libvirt does not count."""
    if header.format == "dir":
        return 0, 0, 0
    capacity = st.st_size if header.capacity is None else header.capacity
    if header.payload_offset is not None:
        # A LUKS volume's data starts past its header; libvirt's unsigned difference
        # wraps round when the file is shorter than that.
        capacity = (capacity - header.payload_offset) % (1 << 64)
    return capacity, st.st_blocks * 512, st.st_size


def format_volume_xml(
    name: str,
    path: str,
    st: os.stat_result,
    header: ImageHeader | None = None,
    backing: BackingStore | None = None,
    secret: bytes | None = None,
) -> str:
    """The volume's XML as libvirt 9.0 prints it for a file (or a sub-directory) in a
    directory pool, with what its header says (``probe.probe_header``; None: a raw file),
    its backing file and, for an encrypted image, the UUID of its passphrase secret."""
    header = header or ImageHeader()
    capacity, allocation, physical = volume_sizes(st, header)
    lines = [
        f"<volume type='{volume_type(header).name.lower()}'>",
        f"  <name>{escape(name)}</name>",
        f"  <key>{escape(path)}</key>",
        f"  <capacity unit='bytes'>{capacity}</capacity>",
        f"  <allocation unit='bytes'>{allocation}</allocation>",
    ]
    if physical:  # libvirt leaves a zero physical size out
        lines.append(f"  <physical unit='bytes'>{physical}</physical>")
    lines += [
        "  <target>",
        f"    <path>{escape(path)}</path>",
        f"    <format type='{header.format}'/>",
        *_permissions_and_times(st),
        *_header_details(header, secret),
        "  </target>",
    ]
    if backing is not None:
        lines += _backing_store(backing)
    lines += ["</volume>", ""]
    return "\n".join(lines)


def format_rbd_volume_xml(name: str, path: str, capacity: int, allocation: int) -> str:
    """The XML libvirt 9.0 prints for an image of an rbd pool (a network volume)."""
    lines = [
        "<volume type='network'>",
        f"  <name>{escape(name)}</name>",
        f"  <key>{escape(path)}</key>",
        f"  <capacity unit='bytes'>{capacity}</capacity>",
        f"  <allocation unit='bytes'>{allocation}</allocation>",
        "  <target>",
        f"    <path>{escape(path)}</path>",
        "    <format type='raw'/>",
        "  </target>",
        "</volume>",
        "",
    ]
    return "\n".join(lines)
