"""What a volume file's first bytes say it is: libvirt 9.0's image format probe.

Pure functions over the bytes already read (at most ``HEADER_LIMIT`` of them, from the
file's start): no file is opened here. libvirtd reports what its probe finds in every
volume's XML and info, so a qcow2 file shows its virtual size and its backing file; the
rules below give the answers libvirtd gives, truncated and hostile headers included,
except where libvirtd fails outright (such a header here yields what could be read).

Every number read from a header is bounded by the bytes at hand: an offset or a length
pointing past them makes that part of the header count as absent, never a longer read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# libvirt reads this many bytes of a file to probe it (VIR_STORAGE_MAX_HEADER).
HEADER_LIMIT = 0x8200

_U64_MAX = (1 << 64) - 1
# The longest qcow backing file name libvirt accepts.
_QCOW_BACKING_NAME_MAX = 1023
# qcow2's header up to the snapshots offset; the v3 fields (features, header length) follow.
_QCOW2_V2_HEADER_LENGTH = 72
_QCOW2_V3_FIELDS_END = 100  # the header-length field's offset: v3 features need this much
_QCOW2_EXTENSION_END = 0
_QCOW2_EXTENSION_BACKING_FORMAT = 0xE2792ACA
# qcow2 feature bits libvirt names, in the order its volume XML lists them.
_QCOW2_COMPATIBLE_FEATURES = {0: "lazy_refcounts"}
_QCOW2_INCOMPATIBLE_FEATURES = {4: "extended_l2"}
_QED_BACKING_FILE = 0x01
_QED_BACKING_FORMAT_NO_PROBE = 0x04
_COW_BACKING_NAME_MAX = 1024
_VMDK_DESCRIPTOR_OFFSET = 0x200
_VMDK_PARENT_KEY = b'parentFileNameHint="'
_LUKS_MAGIC = b"LUKS\xba\xbe"
# After the magic, version, cipher name, cipher mode and hash spec.
_LUKS_PAYLOAD_OFFSET = 6 + 2 + 32 + 32 + 32

# virStorageFileFormat: the formats libvirt knows for file volumes, in its order.
FILE_FORMATS = (
    "none",
    "raw",
    "dir",
    "bochs",
    "cloop",
    "dmg",
    "iso",
    "vpc",
    "vdi",
    "fat",
    "vhd",
    "ploop",
    "cow",
    "qcow",
    "qcow2",
    "qed",
    "vmdk",
)
# What a qcow2 backing-format extension may name: "none", the enum's zero, is no format.
_BACKING_FORMAT_NAMES = frozenset(FILE_FORMATS) - {"none"}


@dataclass(frozen=True, slots=True)
class _Signature:
    """How libvirt recognises one format: magic bytes, then a version field."""

    name: str
    magic_offset: int
    magic: bytes
    big_endian: bool
    # Offset and width of the version field; None: any version matches.
    version_at: tuple[int, int] | None
    versions: tuple[int, ...]
    # Where the virtual size is (8 bytes) and its unit; None: the file's size is the capacity.
    size_offset: int | None
    size_unit: int = 1


# libvirt's order: the first format whose magic and version both match is the file's.
_SIGNATURES = (
    _Signature("iso", 32769, b"CD001", False, None, (), None),
    _Signature("vpc", 0, b"conectix", True, (12, 4), (0x10000,), 40),
    _Signature("vdi", 64, b"\x7f\x10\xda\xbe", False, (68, 4), (0x00010001,), 368),
    _Signature("ploop", 0, b"WithouFreSpacExt", False, None, (), None),
    _Signature("cow", 0, b"OOOM", True, (4, 4), (2,), 1036),
    _Signature("qcow", 0, b"QFI", True, (4, 4), (1,), 24),
    _Signature("qcow2", 0, b"QFI", True, (4, 4), (2, 3), 24),
    _Signature("qed", 0, b"QED", False, None, (), 48),
    _Signature("vmdk", 0, b"KDMV", False, (4, 4), (1, 2, 3), 12, 512),
)


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What a file's header says, as libvirt's probe reads it.

    ``capacity`` None: the file's size is the volume's capacity (as when the header
    says 0). ``backing_name``: the
    backing file exactly as the header names it (None: no backing file).
    ``backing_format`` None: the header does not say; the backing file is probed.
    ``features`` None: no feature list (only qcow2 v3 headers have one, and those are
    reported with compat 1.1). ``encryption``: "luks" or "qcow" for an encrypted image
    (None: not encrypted); ``payload_offset``: where a raw LUKS volume's data starts, in
    bytes, which libvirt takes off its capacity.
    """

    format: str = "raw"
    capacity: int | None = None
    cluster_size: int | None = None
    backing_name: bytes | None = None
    backing_format: str | None = None
    features: tuple[str, ...] | None = None
    encryption: str | None = None
    payload_offset: int | None = None

    @property
    def is_raw(self) -> bool:
        """Plain bytes that may be changed as bytes (resized, copied) without qemu-img."""
        return self.format == "raw" and self.encryption is None


# A sub-directory of a pool, which libvirt lists as a volume of format dir: nothing in it
# is counted (capacity and allocation 0).
DIRECTORY = ImageHeader("dir", capacity=0)


@dataclass(frozen=True, slots=True)
class BackingStore:
    """A volume's backing file as its XML shows it.

    ``path`` None: a name that is not UTF-8 text, left out (libvirt sends its bytes in
    a document its own Python binding cannot decode). ``st`` None: nothing could be
    found there (its mode, owner and times are left out then).
    """

    path: str | None
    format: str
    st: os.stat_result | None


def _number(data: bytes, offset: int, width: int, *, big_endian: bool) -> int | None:
    """The unsigned number at ``offset``, or None when the bytes end before it does."""
    if offset < 0 or offset + width > len(data):
        return None
    return int.from_bytes(data[offset : offset + width], "big" if big_endian else "little")


def _c_string(raw: bytes) -> bytes:
    """The bytes up to the first NUL, as libvirt's C strings end there."""
    return raw.split(b"\0", 1)[0]


def _matches(signature: _Signature, data: bytes) -> bool:
    start = signature.magic_offset
    if data[start : start + len(signature.magic)] != signature.magic:
        return False
    if signature.version_at is None:
        return True
    offset, width = signature.version_at
    version = _number(data, offset, width, big_endian=signature.big_endian)
    return version in signature.versions


def detect_format(data: bytes) -> str:
    """The format libvirt's probe names for a file starting with ``data`` ("raw" if none)."""
    for signature in _SIGNATURES:
        if _matches(signature, data):
            return signature.name
    return "raw"


def probe_header(data: bytes) -> ImageHeader:
    """Read format, capacity, cluster size, backing file and features from ``data``."""
    data = data[:HEADER_LIMIT]
    signature = next((s for s in _SIGNATURES if _matches(s, data)), None)
    if signature is None:
        return _raw_header(data)
    encryption = _qcow_encryption(signature.name, data)
    if signature.size_offset is None:
        return ImageHeader(signature.name, encryption=encryption)
    size = _number(data, signature.size_offset, 8, big_endian=signature.big_endian)
    if size is None:
        return ImageHeader(signature.name, encryption=encryption)
    if size > _U64_MAX // signature.size_unit:
        # libvirt keeps the unscaled number and reads nothing further.
        return ImageHeader(signature.name, capacity=size, encryption=encryption)
    header = ImageHeader(
        signature.name,
        # libvirt takes a virtual size of 0 for none and keeps the file's size, though
        # it reads the rest of the header.
        capacity=size * signature.size_unit or None,
        cluster_size=_qcow2_cluster_size(data) if signature.name == "qcow2" else None,
        encryption=encryption,
    )
    return _with_backing_and_features(header, data)


def _raw_header(data: bytes) -> ImageHeader:
    """A raw file, or a LUKS (version 1) volume: its data starts at the header's payload
    offset (in 512-byte sectors, 4 bytes big endian at 104)."""
    if not data.startswith(_LUKS_MAGIC):
        return ImageHeader()
    if _number(data, len(_LUKS_MAGIC), 2, big_endian=True) != 1:
        return ImageHeader()
    sectors = _number(data, _LUKS_PAYLOAD_OFFSET, 4, big_endian=True)
    payload = None if sectors is None else sectors * 512
    return ImageHeader(encryption="luks", payload_offset=payload)


def _qcow_encryption(name: str, data: bytes) -> str | None:
    """qcow's crypt method field: 1 is qcow's own AES, 2 (qcow2 only) LUKS."""
    if name == "qcow":
        method = _number(data, 36, 4, big_endian=True)
        return "qcow" if method == 1 else None
    if name == "qcow2":
        method = _number(data, 32, 4, big_endian=True)
        return {1: "qcow", 2: "luks"}.get(method or 0)
    return None


def _qcow2_cluster_size(data: bytes) -> int | None:
    bits = _number(data, 20, 4, big_endian=True)
    # A signed field in libvirt: zero or negative means none; past 63 cannot be a size.
    if bits is None or not 0 < bits < 64:
        return None
    return 1 << bits


@dataclass(frozen=True, slots=True)
class _Backing:
    """A backing probe's outcome: ``valid`` False stops libvirt's reading of the header
    there (no features), but a name already read is kept."""

    valid: bool
    name: bytes | None = None
    format: str | None = None


def _with_backing_and_features(header: ImageHeader, data: bytes) -> ImageHeader:
    reader = _BACKING_READERS.get(header.format)
    backing = _Backing(valid=True) if reader is None else reader(data)
    features = None
    if backing.valid and header.format == "qcow2":
        features = _qcow2_features(data)
    return ImageHeader(
        header.format,
        capacity=header.capacity,
        cluster_size=header.cluster_size,
        backing_name=backing.name,
        backing_format=backing.format,
        features=features,
        encryption=header.encryption,
    )


def _cow_backing(data: bytes) -> _Backing:
    if len(data) < 8 + _COW_BACKING_NAME_MAX:
        return _Backing(valid=False)
    name = _c_string(data[8 : 8 + _COW_BACKING_NAME_MAX])
    return _Backing(valid=True, name=name or None)


def _qcow_backing(data: bytes) -> _Backing:
    """qcow and qcow2: name offset (8 bytes at 8) and length (4 bytes at 16)."""
    offset = _number(data, 8, 8, big_endian=True)
    size = _number(data, 16, 4, big_endian=True)
    if offset is None or size is None or offset > len(data):
        return _Backing(valid=False)
    if offset == 0 or size == 0:
        return _Backing(valid=True)
    if size > _QCOW_BACKING_NAME_MAX or offset + size > len(data):
        return _Backing(valid=False)
    name = _c_string(data[offset : offset + size])
    valid, fmt = _qcow2_backing_format(data, offset)
    return _Backing(valid=valid, name=name, format=fmt)


def _qcow2_backing_format(data: bytes, extensions_end: int) -> tuple[bool, str | None]:
    """Walk qcow2's header extensions (between the header and the backing name) for the
    backing format, as libvirt walks them: each one's length without its padding."""
    version = _number(data, 4, 4, big_endian=True) or 0
    if version < 2:
        return True, None
    if version == 2:
        offset = _QCOW2_V2_HEADER_LENGTH
    else:
        offset = _number(data, _QCOW2_V3_FIELDS_END, 4, big_endian=True) or 0
    limit = min(len(data), extensions_end) - 8
    while offset < limit:
        magic = _number(data, offset, 4, big_endian=True)
        length = _number(data, offset + 4, 4, big_endian=True)
        if magic is None or length is None:
            break
        offset += 8
        if offset + length > len(data):
            break
        if magic == _QCOW2_EXTENSION_END:
            return True, None
        if magic == _QCOW2_EXTENSION_BACKING_FORMAT:
            name = _c_string(data[offset : offset + length]).decode("latin-1")
            if name not in _BACKING_FORMAT_NAMES:
                return False, None
            return True, name
        offset += length
    return True, None


def _qed_backing(data: bytes) -> _Backing:
    features = _number(data, 16, 8, big_endian=False)
    if features is None:
        return _Backing(valid=False)
    if not features & _QED_BACKING_FILE:
        return _Backing(valid=True)
    offset = _number(data, 56, 4, big_endian=False)
    size = _number(data, 60, 4, big_endian=False)
    if offset is None or size is None or offset > len(data):
        return _Backing(valid=False)
    if size == 0:
        return _Backing(valid=True)
    if offset + size > len(data):
        return _Backing(valid=False)
    fmt = "raw" if features & _QED_BACKING_FORMAT_NO_PROBE else None
    return _Backing(valid=True, name=_c_string(data[offset : offset + size]), format=fmt)


def _vmdk_backing(data: bytes) -> _Backing:
    """The descriptor (text from byte 512) names the parent in ``parentFileNameHint``."""
    if len(data) <= _VMDK_DESCRIPTOR_OFFSET:
        return _Backing(valid=False)
    descriptor = _c_string(data[_VMDK_DESCRIPTOR_OFFSET:])
    start = descriptor.find(_VMDK_PARENT_KEY)
    if start < 0:
        return _Backing(valid=True)
    start += len(_VMDK_PARENT_KEY)
    end = descriptor.find(b'"', start)
    if end < 0:
        return _Backing(valid=False)
    return _Backing(valid=True, name=descriptor[start:end] or None)


def _qcow2_features(data: bytes) -> tuple[str, ...] | None:
    """qcow2 v3's named feature bits; None for v2 or a header too short to hold them."""
    if _number(data, 4, 4, big_endian=True) == 2 or len(data) < _QCOW2_V3_FIELDS_END:
        return None
    incompatible = _number(data, 72, 8, big_endian=True) or 0
    compatible = _number(data, 80, 8, big_endian=True) or 0
    named = [name for bit, name in _QCOW2_COMPATIBLE_FEATURES.items() if compatible >> bit & 1]
    named += [name for bit, name in _QCOW2_INCOMPATIBLE_FEATURES.items() if incompatible >> bit & 1]
    return tuple(named)


_BACKING_READERS = {
    "cow": _cow_backing,
    "qcow": _qcow_backing,
    "qcow2": _qcow_backing,
    "qed": _qed_backing,
    "vmdk": _vmdk_backing,
}
