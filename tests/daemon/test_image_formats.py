"""Image files in a directory pool are reported as libvirtd 9.0 reports them.

The same image headers (written from the formats' specifications, ``tests/images.py``)
are placed in the reference libvirtd's pool and in virtvold's; python3-libvirt and virsh
then ask both daemons about them, and the answers must match: format, capacity (the
virtual size), allocation, physical size, backing store, qcow2's compat, cluster size
and features, and the refusals of what would need qemu-img.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tests import images
from tests.conftest import run_virsh
from tests.daemon.test_python_libvirt_dropin import assert_same_answers

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd, Virtvold

GIB = 1 << 30
FILE_SIZE = 200 * 1024


def _patched(header: bytes, offset: int, raw: bytes) -> bytes:
    """``header`` with ``raw`` written over it at ``offset``."""
    return header[:offset] + raw + header[offset + len(raw) :]


# name: (header, file size or None for the header's own length). Every one of these is
# one libvirtd lists without failing its pool's refresh.
IMAGES: dict[str, tuple[bytes, int | None]] = {
    "raw.img": (b"plain bytes", 1 << 20),
    "empty.img": (b"", None),
    "v2.qcow2": (images.qcow2(GIB, version=2), FILE_SIZE),
    "v3.qcow2": (images.qcow2(GIB), FILE_SIZE),
    "lazy.qcow2": (images.qcow2(GIB, compatible=1), FILE_SIZE),
    "extl2.qcow2": (images.qcow2(GIB, incompatible=0x10 | 1), FILE_SIZE),
    "v2-backed.qcow2": (images.qcow2(GIB, version=2, backing=b"raw.img"), FILE_SIZE),
    "v3-backed.qcow2": (
        images.qcow2(GIB, backing=b"raw.img", backing_format=b"raw"),
        FILE_SIZE,
    ),
    "on-qcow2.qcow2": (
        images.qcow2(GIB, backing=b"v3.qcow2", backing_format=b"qcow2"),
        FILE_SIZE,
    ),
    "probed-backing.qcow2": (images.qcow2(GIB, backing=b"v3.qcow2"), FILE_SIZE),
    "trusted-format.qcow2": (
        images.qcow2(GIB, backing=b"raw.img", backing_format=b"qcow2"),
        FILE_SIZE,
    ),
    "unknown-format.qcow2": (
        images.qcow2(GIB, backing=b"raw.img", backing_format=b"bogus", compatible=1),
        FILE_SIZE,
    ),
    "missing-backing.qcow2": (images.qcow2(GIB, backing=b"nothere.img"), FILE_SIZE),
    "outside.qcow2": (images.qcow2(GIB, backing=b"/etc/hostname"), FILE_SIZE),
    "dotdot.qcow2": (images.qcow2(GIB, backing=b"../elsewhere.img"), FILE_SIZE),
    "odd-name.qcow2": (images.qcow2(GIB, backing=b"a'b<c>&\"d\ne\x01f"), FILE_SIZE),
    "nul-name.qcow2": (images.qcow2(GIB, backing=b"ab\0cd"), FILE_SIZE),
    "self-backed.qcow2": (images.qcow2(GIB, backing=b"self-backed.qcow2"), FILE_SIZE),
    "long-name.qcow2": (images.qcow2(GIB, backing=b"b" * 1024, compatible=1), FILE_SIZE),
    "far-name.qcow2": (
        # The name's offset, past the bytes libvirt reads.
        _patched(images.qcow2(GIB, backing=b"raw.img"), 8, (40000).to_bytes(8, "big")),
        FILE_SIZE,
    ),
    "huge.qcow2": (images.qcow2((1 << 64) - 1), FILE_SIZE),
    "no-clusters.qcow2": (images.qcow2(GIB, cluster_bits=0), FILE_SIZE),
    "header-only.qcow2": (images.qcow2(GIB, backing=b"raw.img"), None),
    "cut-at-100.qcow2": (images.qcow2(GIB, compatible=1)[:100], None),
    "cut-at-30.qcow2": (images.qcow2(GIB)[:30], None),
    "version-9.qcow2": (images.qcow2(GIB, version=9), FILE_SIZE),
    "v1.qcow": (images.qcow1(GIB), FILE_SIZE),
    "v1-backed.qcow": (images.qcow1(GIB, backing=b"raw.img"), FILE_SIZE),
    "plain.qed": (images.qed(GIB), FILE_SIZE),
    "plain.vmdk": (images.vmdk(GIB // 512), FILE_SIZE),
    "child.vmdk": (images.vmdk(GIB // 512, parent=b"raw.img"), FILE_SIZE),
    "open-quote.vmdk": (images.vmdk(100)[:512] + b'parentFileNameHint="abc', 4096),
    "huge.vmdk": (images.vmdk((1 << 64) - 1), 4096),
    "disk.vhd": (images.vpc(GIB), FILE_SIZE),
    "disk.vdi": (images.vdi(GIB), FILE_SIZE),
    "disc.iso": (images.iso(), FILE_SIZE),
    "short.iso": (images.iso()[:32772], None),
    "plain.cow": (images.cow(GIB), FILE_SIZE),
    "backed.cow": (images.cow(GIB, backing=b"raw.img"), FILE_SIZE),
    "image.hds": (images.ploop(GIB // 512), FILE_SIZE),
}


def _place_images(pool_dir: Path) -> None:
    for name, (header, size) in IMAGES.items():
        images.place(pool_dir, name, header, size).chmod(0o644)


# Every volume's XML (timestamps aside: they differ between the two copies) and info.
DESCRIBE_ALL = r"""
import re
pool = conn.storagePoolLookupByName("default")
pool.refresh()
for name in sorted(pool.listVolumes()):
    vol = pool.storageVolLookupByName(name)
    step(name + " xml", lambda: re.sub(r"\s*<timestamps>.*?</timestamps>", "",
                                       vol.XMLDesc(), flags=re.S))
    step(name + " info", vol.info)
    step(name + " physical", lambda: vol.infoFlags(1))
"""


def test_volume_xml_and_info_match_libvirtd(
    reference_libvirtd: ReferenceLibvirtd, virtvold: Virtvold, tmp_path: Path
) -> None:
    _place_images(reference_libvirtd.pool_dir)
    _place_images(virtvold.pool_dir)
    assert_same_answers(reference_libvirtd, virtvold, tmp_path, DESCRIBE_ALL)


def _details(uri: str, pool_dir: Path) -> list[str]:
    out = run_virsh(uri, "pool-refresh default; vol-list default --details").stdout
    rows = [line.replace(str(pool_dir), "POOL") for line in out.splitlines()]
    # Columns are as wide as the longest path, which differs between the two pools.
    return [re.sub(r"\s+", " ", row).strip() for row in rows if not row.startswith("---")]


def test_vol_list_details_match_libvirtd(
    reference_libvirtd: ReferenceLibvirtd, virtvold: Virtvold
) -> None:
    _place_images(reference_libvirtd.pool_dir)
    _place_images(virtvold.pool_dir)
    expected = _details(reference_libvirtd.tcp_uri, reference_libvirtd.pool_dir)
    assert " ".join(expected).count("1.00 GiB") > 10  # the images' virtual sizes
    assert _details(virtvold.tcp_uri, virtvold.pool_dir) == expected
