"""Disk image headers written from the formats' public specifications, for probing tests.

No qemu-img here: each function returns the bytes of a small but well-formed header
(and what must follow it for the probe to read), enough for a prober to tell the
format, its virtual size and its backing file. The images are not meant to be usable
by a hypervisor beyond that.

``qcow2(size, version=3, backing=None, backing_format=None, cluster_bits=16,
compatible=0, incompatible=0, encryption=0)``, ``qcow1(size, backing=None)``,
``qed(size, backing=None)``, ``vmdk(sectors, parent=None)``, ``vpc(size)``,
``vdi(size)``, ``iso()``, ``luks(payload_sectors=4096)``, ``cow(size, backing=None)``,
``ploop(sectors)``, ``bochs(size)``, ``cloop(block_size, blocks)``:
the header bytes. ``dmg(sectors)`` and ``vhd_dynamic(size, current=None)``: a whole small
image; ``dmg_trailer(sectors, ...)`` and ``vhd_footer(size, ...)``: the structure a DMG or
a VHD ends with. ``place(directory, name, header, file_size=None, trailer=b"")`` writes
one as a file, sparse up to ``file_size``, ``trailer`` its last bytes.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

QCOW_MAGIC = b"QFI\xfb"
# qcow2 header extension: the backing file's format name.
_QCOW2_BACKING_FORMAT_EXTENSION = 0xE2792ACA


def qcow2(
    size: int,
    *,
    version: int = 3,
    backing: bytes | None = None,
    backing_format: bytes | None = None,
    cluster_bits: int = 16,
    compatible: int = 0,
    incompatible: int = 0,
    encryption: int = 0,
) -> bytes:
    """A qcow2 header (v2: 72 bytes, v3: 104), its extensions, then the backing name."""
    header_length = 72 if version == 2 else 104
    extensions = b""
    if backing_format is not None:
        padded = backing_format + b"\0" * (-len(backing_format) % 8)
        extensions += struct.pack(">II", _QCOW2_BACKING_FORMAT_EXTENSION, len(backing_format))
        extensions += padded
    extensions += struct.pack(">II", 0, 0)  # end of the extensions
    backing_offset = header_length + len(extensions) if backing else 0
    head = struct.pack(
        ">4sIQIIQIIQQIIQ",
        QCOW_MAGIC,
        version,
        backing_offset,
        len(backing or b""),
        cluster_bits,
        size,
        encryption,
        1,  # l1_size
        1 << cluster_bits,  # l1_table_offset
        2 << cluster_bits,  # refcount_table_offset
        1,  # refcount_table_clusters
        0,  # nb_snapshots
        0,  # snapshots_offset
    )
    if version != 2:
        head += struct.pack(">QQQII", incompatible, compatible, 0, 4, header_length)
    return head + extensions + (backing or b"")


def qcow1(size: int, *, backing: bytes | None = None) -> bytes:
    """A qcow (version 1) header, then the backing name."""
    header_length = 48
    head = struct.pack(
        ">4sIQIIQBBHIQ",
        QCOW_MAGIC,
        1,
        header_length if backing else 0,
        len(backing or b""),
        0,  # mtime
        size,
        12,  # cluster_bits
        9,  # l2_bits
        0,  # padding
        0,  # crypt_method
        0,  # l1_table_offset
    )
    return head + (backing or b"")


def qed(size: int, *, backing: bytes | None = None) -> bytes:
    """A QED header (little endian), then the backing name."""
    header_size = 1  # in clusters
    features = 1 if backing else 0  # QED_F_BACKING_FILE
    name_offset = 64 if backing else 0
    head = struct.pack(
        "<4sIIIQQQQQII",
        b"QED\0",
        65536,  # cluster_size
        4,  # table_size
        header_size,
        features,
        0,  # compat_features
        0,  # autoclear_features
        65536,  # l1_table_offset
        size,
        name_offset,
        len(backing or b""),
    )
    return head + (backing or b"")


def vmdk(sectors: int, *, parent: bytes | None = None) -> bytes:
    """A hosted sparse VMDK extent header (version 1) with its descriptor at sector 1."""
    head = struct.pack(
        "<4sIIQQQQ",
        b"KDMV",
        1,
        3,  # flags
        sectors,  # capacity in sectors
        128,  # grain size
        1,  # descriptor offset (sectors)
        20,  # descriptor size (sectors)
    )
    head += b"\0" * (512 - len(head))
    descriptor = (
        b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        b'createType="monolithicSparse"\n'
    )
    if parent is not None:
        descriptor += b'parentFileNameHint="' + parent + b'"\n'
    descriptor += b'\n# Extent description\nRW %d SPARSE "x.vmdk"\n' % sectors
    return head + descriptor


def vpc(size: int) -> bytes:
    """A Virtual PC footer copy at the start of a dynamic VHD: "conectix", big endian."""
    return struct.pack(
        ">8sIIQI4sI4sQQI",
        b"conectix",
        2,  # features
        0x10000,  # file format version
        512,  # data offset
        0,  # time stamp
        b"qemu",
        0x50003,
        b"Wi2k",
        size,  # original size
        size,  # current size
        0,  # disk geometry
    ) + b"\0" * (512 - 64)


def vdi(size: int) -> bytes:
    """A VirtualBox VDI 1.1 header: text, magic at 64, version at 68, size at 368."""
    head = b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0")
    head += struct.pack("<II", 0xBEDA107F, 0x00010001)
    head = head.ljust(368, b"\0")
    head += struct.pack("<Q", size)
    return head.ljust(512, b"\0")


def iso() -> bytes:
    """An ISO 9660 primary volume descriptor at sector 16 (identifier "CD001")."""
    return b"\0" * 32768 + b"\x01CD001\x01" + b"\0" * (2048 - 7)


def luks(payload_sectors: int = 4096) -> bytes:
    """A LUKS1 header's start: magic, version 1, cipher, mode, hash, payload offset."""
    return (
        b"LUKS\xba\xbe"
        + struct.pack(">H", 1)
        + b"aes".ljust(32, b"\0")
        + b"xts-plain64".ljust(32, b"\0")
        + b"sha256".ljust(32, b"\0")
        + struct.pack(">I", payload_sectors)
    ).ljust(592, b"\0")


def cow(size: int, *, backing: bytes | None = None) -> bytes:
    """A User-Mode Linux COW v2 header: magic, version, 1024-byte backing name, ..., size."""
    name = (backing or b"").ljust(1024, b"\0")
    return struct.pack(">4sI", b"OOOM", 2) + name + struct.pack(">IQ", 0, size)


def ploop(sectors: int) -> bytes:
    """A Parallels ploop header: its signature, then the size in sectors at offset 36."""
    head = b"WithouFreSpacExt" + struct.pack("<IIII", 2, 0, 0, 0)
    head = head.ljust(36, b"\0") + struct.pack("<Q", sectors)
    return head.ljust(64, b"\0")


def bochs(size: int) -> bytes:
    """A Bochs growing redolog header (v2, little endian): text magic, type and subtype,
    version at 64, header size, catalog, bitmap and extent sizes, then the disk size."""
    entries = -(-size // (512 * 1024))  # one catalog entry per 512 KiB extent
    head = (
        b"Bochs Virtual HD Image".ljust(32, b"\0")
        + b"Redolog".ljust(16, b"\0")
        + b"Growing".ljust(16, b"\0")
        + struct.pack("<IIIIIIQ", 0x00020000, 512, entries, 512, 512 * 1024, 0, size)
    )
    catalog = struct.pack("<I", 0xFFFFFFFF) * entries  # no extent written yet
    return head.ljust(512, b"\0") + catalog


_CLOOP_PREAMBLE = (
    b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
)


def cloop(block_size: int, blocks: int) -> bytes:
    """A compressed loop (cloop v2) image's start: the shell preamble padded to 128
    bytes, block size and block count (big endian), then the blocks' offsets."""
    head = _CLOOP_PREAMBLE.ljust(128, b"\0") + struct.pack(">II", block_size, blocks)
    first = len(head) + 8 * (blocks + 1)
    # Every block compressed to 16 bytes, one after the other.
    return head + b"".join(struct.pack(">Q", first + 16 * i) for i in range(blocks + 1))


def dmg_trailer(sectors: int, *, data_length: int, xml_offset: int, xml_length: int) -> bytes:
    """A UDIF (Apple disk image) "koly" trailer, big endian, 512 bytes: the data fork
    from offset 0, the property list's place and the disk's size in sectors at 492."""
    head = struct.pack(
        ">4sIIIQQQQQII16sII",
        b"koly",
        4,  # version
        512,  # header size
        1,  # flags: flattened
        0,  # running data fork offset
        0,  # data fork offset
        data_length,
        0,  # resource fork offset
        0,  # resource fork length
        1,  # segment number
        1,  # segment count
        bytes(range(16)),  # segment id
        0,  # data fork checksum type
        0,  # its size in bits
    )
    head = head.ljust(216, b"\0") + struct.pack(">QQ", xml_offset, xml_length)
    return head.ljust(488, b"\0") + struct.pack(">IQ", 1, sectors).ljust(24, b"\0")


def dmg(sectors: int) -> bytes:
    """A whole small UDIF image: a data fork, its property list, the koly trailer."""
    data = b"\0" * 4096
    plist = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0">\n<dict>\n'
        b"\t<key>resource-fork</key>\n\t<dict/>\n</dict>\n</plist>\n"
    )
    trailer = dmg_trailer(
        sectors, data_length=len(data), xml_offset=len(data), xml_length=len(plist)
    )
    return data + plist + trailer


_VHD_FIXED = 2
_VHD_DYNAMIC = 3
_VHD_BLOCK_SIZE = 2 << 20


def _vhd_geometry(size: int) -> int:
    """Cylinders, heads and sectors per track for ``size`` bytes, as the VHD
    specification's appendix computes them, packed as the footer holds them."""
    total = min(size // 512, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        sectors, heads = 255, 16
        cylinders_times_heads = total // sectors
    else:
        sectors = 17
        cylinders_times_heads = total // sectors
        heads = max((cylinders_times_heads + 1023) // 1024, 4)
        if cylinders_times_heads >= heads * 1024 or heads > 16:
            sectors, heads = 31, 16
            cylinders_times_heads = total // sectors
        if cylinders_times_heads >= heads * 1024:
            sectors, heads = 63, 16
            cylinders_times_heads = total // sectors
    # Cylinders in the upper 16 bits, then heads, then sectors per track.
    return (cylinders_times_heads // heads) << 16 | heads << 8 | sectors


def vhd_footer(size: int, *, current: int | None = None, fixed: bool = False) -> bytes:
    """A VHD (Virtual PC) footer, big endian, 512 bytes: "conectix", features, version
    0x10000, where the dynamic header is (none for a fixed disk), the original and
    current sizes at 40 and 48, geometry, disk type and checksum."""
    head = struct.pack(
        ">8sIIQI4sI4sQQIII16sB",
        b"conectix",
        2,  # features: reserved bit, always set
        0x10000,
        0xFFFFFFFFFFFFFFFF if fixed else 512,
        0x2A000000,  # seconds since 2000-01-01
        b"qemu",
        0x50003,
        b"Wi2k",
        size,
        size if current is None else current,
        _vhd_geometry(size if current is None else current),
        _VHD_FIXED if fixed else _VHD_DYNAMIC,
        0,  # checksum, computed below
        bytes(range(16)),  # unique id
        0,  # saved state
    )
    footer = head.ljust(512, b"\0")
    checksum = ~sum(footer) & 0xFFFFFFFF
    return footer[:64] + struct.pack(">I", checksum) + footer[68:]


def vhd_dynamic(size: int, *, current: int | None = None) -> bytes:
    """A whole dynamic VHD with no block written: the footer's copy, the "cxsparse"
    dynamic header at 512, an empty block allocation table, the footer."""
    footer = vhd_footer(size, current=current)
    entries = -(-(size if current is None else current) // _VHD_BLOCK_SIZE)
    table = (b"\xff" * 4 * entries).ljust(-(-4 * entries // 512) * 512, b"\0")
    header = struct.pack(
        ">8sQQIIII16sI",
        b"cxsparse",
        0xFFFFFFFFFFFFFFFF,  # data offset: unused
        512 + 1024,  # the table's offset
        0x10000,  # header version
        entries,
        _VHD_BLOCK_SIZE,
        0,  # checksum, computed below
        b"\0" * 16,  # no parent
        0,  # parent's time stamp
    ).ljust(1024, b"\0")
    checksum = ~sum(header) & 0xFFFFFFFF
    header = header[:36] + struct.pack(">I", checksum) + header[40:]
    return footer + header + table + footer


def place(
    directory: Path,
    name: str,
    header: bytes,
    file_size: int | None = None,
    *,
    trailer: bytes = b"",
) -> Path:
    """Write ``header`` as file ``name`` in ``directory``, sparse up to ``file_size``
    (None: just long enough), with ``trailer`` as its last bytes."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, header)
        if file_size is None:
            file_size = len(header) + len(trailer)
        os.ftruncate(fd, file_size)
        if trailer:
            os.pwrite(fd, trailer, file_size - len(trailer))
    finally:
        os.close(fd)
    return path
