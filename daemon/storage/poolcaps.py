"""The storage pool capabilities document (virConnectGetStoragePoolCapabilities).

Every pool type libvirt knows is listed, with the formats its pools and volumes may
name (libvirt lists them whether or not a backend runs the type); ``supported`` says
whether virtvold runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .poolxml import POOL_TYPES, SERVED_POOL_TYPES
from .probe import FILE_FORMATS

_FS_FORMATS = tuple(
    [
        "auto",
        "ext2",
        "ext3",
        "ext4",
        "ufs",
        "iso9660",
        "udf",
        "gfs",
        "gfs2",
        "vfat",
        "hfs+",
        "xfs",
        "ocfs2",
        "vmfs",
    ]
)
_DISK_LABELS = tuple(["unknown", "dos", "dvh", "gpt", "mac", "bsd", "pc98", "sun", "lvm2"])
_PARTITION_TYPES = tuple(
    ["none", "linux", "fat16", "fat32", "linux-swap", "linux-lvm", "linux-raid", "extended"]
)


@dataclass(frozen=True)
class _Formats:
    """A default format and the ones to choose from."""

    default: str
    choices: tuple[str, ...]


_FILE_VOLUMES = _Formats("raw", FILE_FORMATS)

# Per pool type: the formats of its source, then of its volumes (None: it has no choice).
_OPTIONS: dict[str, tuple[_Formats | None, _Formats | None]] = {
    "dir": (None, _FILE_VOLUMES),
    "fs": (_Formats("auto", _FS_FORMATS), _FILE_VOLUMES),
    "netfs": (_Formats("auto", ("auto", "nfs", "glusterfs", "cifs")), _FILE_VOLUMES),
    "logical": (_Formats("lvm2", ("unknown", "lvm2")), None),
    "disk": (_Formats("unknown", _DISK_LABELS), _Formats("none", _PARTITION_TYPES)),
    "rbd": (None, _Formats("raw", ())),
    "gluster": (None, _FILE_VOLUMES),
    "vstorage": (None, _FILE_VOLUMES),
}


def pool_capabilities_xml() -> str:
    lines = ["<storagepoolCapabilities>"]
    for kind in POOL_TYPES:
        supported = "yes" if kind in SERVED_POOL_TYPES else "no"
        lines.append(f"  <pool type='{kind}' supported='{supported}'>")
        source, volumes = _OPTIONS.get(kind, (None, None))
        if source is not None:
            lines += _options("poolOptions", "sourceFormatType", source)
        if volumes is not None:
            lines += _options("volOptions", "targetFormatType", volumes)
        lines.append("  </pool>")
    lines.append("</storagepoolCapabilities>")
    return "\n".join(lines) + "\n"


def _options(element: str, enum_name: str, formats: _Formats) -> list[str]:
    return [
        f"    <{element}>",
        f"      <defaultFormat type='{formats.default}'/>",
        f"      <enum name='{enum_name}'>",
        *(f"        <value>{choice}</value>" for choice in formats.choices),
        "      </enum>",
        f"    </{element}>",
    ]
