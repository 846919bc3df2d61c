"""Volume create/clone/delete/wipe/resize, lookups, XML, and name safety."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from tests.daemon.storage.conftest import (
    BLOCK,
    NO_VOL,
    NOT_VALID,
    PoolSetup,
    allocated,
    fails,
)
from virtvol.daemon.storage import VolumeInfo, VolumeRef, VolumeType
from virtvol.daemon.storage import names as names_module
from virtvol.daemon.storage import volumes as volumes_module
from virtvol.daemon.storage.volumes import VolumeDir
from virtvol.protocol.errors import ErrorCode, ErrorDomain
from virtvol.sparse import files as sparse_files

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1 << 20


def test_create_defaults_to_full_allocation(setup: PoolSetup) -> None:
    vol = setup.registry.create_volume_xml(
        setup.ref, "<volume><name>v1</name><capacity unit='M'>1</capacity></volume>"
    )
    path = setup.pool_dir / "v1"
    assert vol == VolumeRef("default", "v1", str(path))
    assert path.stat().st_size == MIB
    assert allocated(path) == MIB
    assert (path.stat().st_mode & 0o7777) == 0o600
    assert setup.registry.volume_info(vol) == VolumeInfo(VolumeType.FILE, MIB, MIB)


def test_create_sparse_and_partly_allocated(setup: PoolSetup) -> None:
    registry = setup.registry
    sparse = setup.volume("sparse", 1 << 30, 0)
    assert registry.volume_info(sparse) == VolumeInfo(VolumeType.FILE, 1 << 30, 0)
    assert registry.volume_info(sparse, 1) == VolumeInfo(VolumeType.FILE, 1 << 30, 1 << 30)
    xml = (
        "<volume><name>u1</name><capacity unit='KiB'>3</capacity>"
        "<allocation unit='k'>1</allocation></volume>"
    )
    registry.create_volume_xml(setup.ref, xml)
    assert (setup.pool_dir / "u1").stat().st_size == 3072
    assert allocated(setup.pool_dir / "u1") == BLOCK
    xml = (
        "<volume><name>u2</name><capacity unit='KB'>3</capacity>"
        "<allocation unit='b'>0</allocation></volume>"
    )
    registry.create_volume_xml(setup.ref, xml)
    assert (setup.pool_dir / "u2").stat().st_size == 3000
    # An allocation above the capacity raises the capacity, as in libvirt.
    xml = "<volume><name>y</name><capacity>4096</capacity><allocation>8192</allocation></volume>"
    registry.create_volume_xml(setup.ref, xml)
    assert (setup.pool_dir / "y").stat().st_size == 8192
    setup.volume("empty", 0)
    assert (setup.pool_dir / "empty").stat().st_size == 0


def test_create_errors(setup: PoolSetup) -> None:
    registry, ref = setup.registry, setup.ref
    setup.volume("v1", 1)
    pool = str(setup.pool_dir)

    def vol(body: str) -> str:
        return f"<volume>{body}</volume>"

    cap = "<capacity>1</capacity>"
    cases: list[tuple[str, ErrorCode, ErrorDomain, str]] = [
        (
            vol("<name>v1</name>" + cap),
            ErrorCode.STORAGE_VOL_EXIST,
            ErrorDomain.STORAGE,
            "storage volume 'v1' exists already",
        ),
        (
            vol("<name>a/b</name>" + cap),
            ErrorCode.OPERATION_INVALID,
            ErrorDomain.STORAGE,
            NOT_VALID + "volume name 'a/b' cannot contain '/'",
        ),
        (
            vol("<name>..</name>" + cap),
            ErrorCode.OPERATION_INVALID,
            ErrorDomain.STORAGE,
            NOT_VALID + f"volume target path '{pool}/..' already exists",
        ),
        (
            vol("<name>.</name>" + cap),
            ErrorCode.OPERATION_INVALID,
            ErrorDomain.STORAGE,
            NOT_VALID + f"volume target path '{pool}/.' already exists",
        ),
        (
            vol("<name>.virtvol-x</name>" + cap),
            ErrorCode.OPERATION_INVALID,
            ErrorDomain.STORAGE,
            NOT_VALID + "volume name '.virtvol-x' is reserved: names starting with "
            "'.virtvol-' are used for temporary files",
        ),
        (
            vol("<name>" + "n" * 256 + "</name>" + cap),
            ErrorCode.SYSTEM_ERROR,
            ErrorDomain.STORAGE,
            f"Failed to create file '{pool}/{'n' * 256}': File name too long",
        ),
        (
            vol("<name></name>" + cap),
            ErrorCode.XML_ERROR,
            ErrorDomain.STORAGE,
            "XML error: missing volume name element",
        ),
        (
            vol(cap),
            ErrorCode.XML_ERROR,
            ErrorDomain.STORAGE,
            "XML error: missing volume name element",
        ),
        (
            vol("<name>x</name>"),
            ErrorCode.XML_ERROR,
            ErrorDomain.STORAGE,
            "XML error: missing capacity element",
        ),
        (
            vol("<name>x</name><capacity>-1</capacity>"),
            ErrorCode.XML_ERROR,
            ErrorDomain.STORAGE,
            "XML error: malformed capacity element",
        ),
        (
            vol("<name>x</name><capacity>1</capacity><allocation>z</allocation>"),
            ErrorCode.XML_ERROR,
            ErrorDomain.STORAGE,
            "XML error: malformed capacity element",  # libvirt's words for both sizes
        ),
        (
            vol("<name>x</name><capacity unit='Q'>1</capacity>"),
            ErrorCode.INVALID_ARG,
            ErrorDomain.NONE,
            "invalid argument: unknown suffix 'Q'",
        ),
        (
            vol("<name>x</name><capacity unit='KX'>1</capacity>"),
            ErrorCode.INVALID_ARG,
            ErrorDomain.NONE,
            "invalid argument: unknown suffix 'KX'",
        ),
        (
            vol("<name>x</name><capacity unit='EiB'>100</capacity>"),
            ErrorCode.OVERFLOW,
            ErrorDomain.NONE,
            "numerical overflow: value too large: 100EiB",
        ),
        (
            vol("<name>x</name>" + cap + "<target><format type='qcow2'/></target>"),
            ErrorCode.INTERNAL_ERROR,
            ErrorDomain.STORAGE,
            "internal error: creation of non-raw file images is not supported without qemu-img.",
        ),
        (
            vol("<name>x</name>" + cap + "<target><format type='bogus'/></target>"),
            ErrorCode.CONFIG_UNSUPPORTED,
            ErrorDomain.STORAGE,
            "unsupported configuration: unknown volume format type bogus",
        ),
        (
            vol("<name>x</name>" + cap + "<target><format type='none'/></target>"),
            ErrorCode.CONFIG_UNSUPPORTED,
            ErrorDomain.STORAGE,
            "unsupported configuration: unknown volume format type none",
        ),
        (
            "<volume type='bogus'><name>x</name>" + cap + "</volume>",
            ErrorCode.CONFIG_UNSUPPORTED,
            ErrorDomain.STORAGE,
            "unsupported configuration: unknown volume type 'bogus'",
        ),
        (  # a raw file cannot have one: ignoring it made an empty volume, not an overlay
            vol(f"<name>x</name>{cap}<backingStore><path>{pool}/v1</path></backingStore>"),
            ErrorCode.NO_SUPPORT,
            ErrorDomain.STORAGE,
            "this function is not supported by the connection driver: "
            "backing storage not supported for raw volumes",
        ),
        (  # ignoring it made a plain volume of one asked to be encrypted
            vol("<name>x</name>" + cap + "<target><encryption format='luks'/></target>"),
            ErrorCode.INTERNAL_ERROR,
            ErrorDomain.STORAGE,
            "internal error: creation of non-raw file images is not supported without qemu-img.",
        ),
        (
            "<pool><name>x</name></pool>",
            ErrorCode.XML_ERROR,
            ErrorDomain.XML,
            "XML error: expecting root element of 'volume', not 'pool'",
        ),
        (
            "<volume><name>x</name>",
            ErrorCode.XML_DETAIL,
            ErrorDomain.STORAGE,
            # libxml's words, as libvirtd reports them, with libvirt's excerpt
            "(storage_volume_definition):1: Premature end of data in tag volume line 1\n"
            "<volume><name>x</name>\n" + "-" * 22 + "^",
        ),
        # As libvirtd 9.0 answers them: the pointer has a dash for each byte of the
        # line, however long, and keeps its tabs.
        (
            "<volume><name>" + "a" * 200,
            ErrorCode.XML_DETAIL,
            ErrorDomain.STORAGE,
            "(storage_volume_definition):1: Premature end of data in tag name line 1\n"
            "<volume><name>" + "a" * 200 + "\n" + "-" * 214 + "^",
        ),
        (
            "<volume>\n\t<name>x\t\ty",
            ErrorCode.XML_DETAIL,
            ErrorDomain.STORAGE,
            "(storage_volume_definition):2: Premature end of data in tag name line 2\n"
            "\t<name>x\t\ty\n\t-------\t\t-^",
        ),
        (
            "<volume><name>\u00e9\u00e9\u00e9",
            ErrorCode.XML_DETAIL,
            ErrorDomain.STORAGE,
            "(storage_volume_definition):1: Premature end of data in tag name line 1\n"
            "<volume><name>\u00e9\u00e9\u00e9\n" + "-" * 20 + "^",
        ),
    ]
    for xml, code, domain, message in cases:
        with fails(code, message, domain):
            registry.create_volume_xml(ref, xml)
    ok = vol("<name>x</name>" + cap)
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x2) in function storageVolCreateXML"):
        registry.create_volume_xml(ref, ok, 2)
    with fails(
        ErrorCode.CONFIG_UNSUPPORTED,
        "unsupported configuration: metadata preallocation is not supported for raw volumes",
    ):
        registry.create_volume_xml(ref, ok, 1)
    assert registry.list_volume_names(ref, 100) == ["v1"]
    assert registry.create_volume_xml(ref, ok, 4).name == "x"  # VALIDATE is accepted
    raw = vol("<name>r</name>" + cap + "<target><format type='raw'/></target>")
    assert registry.create_volume_xml(ref, raw).name == "r"


def test_volume_xml_matches_libvirt_layout(setup: PoolSetup) -> None:
    vol = setup.volume("v", 5000, 0)
    path = setup.pool_dir / "v"
    os.utime(path, ns=(1795638953_523026733, 1795638953_000000000))
    st = path.stat()
    assert setup.registry.volume_xml(vol) == (
        "<volume type='file'>\n"
        "  <name>v</name>\n"
        f"  <key>{path}</key>\n"
        "  <capacity unit='bytes'>5000</capacity>\n"
        "  <allocation unit='bytes'>0</allocation>\n"
        "  <physical unit='bytes'>5000</physical>\n"
        "  <target>\n"
        f"    <path>{path}</path>\n"
        "    <format type='raw'/>\n"
        "    <permissions>\n"
        "      <mode>0600</mode>\n"
        f"      <owner>{st.st_uid}</owner>\n"
        f"      <group>{st.st_gid}</group>\n"
        "    </permissions>\n"
        "    <timestamps>\n"
        "      <atime>1795638953.523026733</atime>\n"
        "      <mtime>1795638953</mtime>\n"
        f"      <ctime>{st.st_ctime_ns // 10**9}.{st.st_ctime_ns % 10**9:09d}</ctime>\n"
        "      <btime>0</btime>\n"
        "    </timestamps>\n"
        "  </target>\n"
        "</volume>\n"
    )
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x1) in function storageVolGetXMLDesc"):
        setup.registry.volume_xml(vol, 1)
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x2) in function storageVolGetInfoFlags"):
        setup.registry.volume_info(vol, 2)


def test_names_are_escaped_in_xml(setup: PoolSetup) -> None:
    xml = "<volume><name>a&amp;b&lt;'c'&gt;</name><capacity>1</capacity></volume>"
    vol = setup.registry.create_volume_xml(setup.ref, xml)
    assert vol.name == "a&b<'c'>"
    assert "<name>a&amp;b&lt;&apos;c&apos;&gt;</name>" in setup.registry.volume_xml(vol)


def test_lookups_and_lists(setup: PoolSetup) -> None:
    registry, ref = setup.registry, setup.ref
    b = setup.volume("b", 1)
    a = setup.volume("a", 1)
    assert registry.lookup_volume_by_name(ref, "a") == a
    assert registry.lookup_volume_by_key(a.key) == a
    assert registry.lookup_volume_by_path(a.key) == a
    assert registry.lookup_volume_by_path(a.key.replace("/pool/", "//pool//")) == a
    assert registry.volume_path(a) == str(setup.pool_dir / "a")
    assert registry.num_volumes(ref) == 2
    assert registry.list_volume_names(ref, 10) == ["a", "b"]
    assert registry.list_volume_names(ref, 1) == ["a"]
    assert registry.list_all_volumes(ref) == [a, b]
    with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + "name 'nope'"):
        registry.lookup_volume_by_name(ref, "nope")
    with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + "key /tmp/nope"):
        registry.lookup_volume_by_key("/tmp/nope")
    with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + "path '/tmp/nope'"):
        registry.lookup_volume_by_path("/tmp/nope")
    dotted = f"{setup.pool_dir}/../pool/a"
    with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + f"path '{dotted}'"):
        registry.lookup_volume_by_path(dotted)
    with fails(
        ErrorCode.NO_STORAGE_VOL, NO_VOL + f"path '{setup.pool_dir}//x' ({setup.pool_dir}/x)"
    ):
        registry.lookup_volume_by_path(f"{setup.pool_dir}//x")
    for bad in ("", ".", "..", "../pool/a", "a/", "a\0", ".virtvol-upload-1"):
        with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + f"name '{bad}'"):
            registry.lookup_volume_by_name(ref, bad)
    stale = VolumeRef("default", "gone", "/x")
    for call in (registry.volume_info, registry.volume_xml, registry.volume_path):
        with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + "name 'gone'"):
            call(stale)


def test_a_listing_and_a_look_for_leftovers_through_a_view_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh looks for leftovers through a view, outside the registry's lock, while a
    listing reads the directory under it. A view's descriptor is a duplicate, which shares
    the directory's read position: the look started in the middle of the listing must
    wait for it, and then find the leftover, as the listing finds every volume."""
    names = [f"vol{index:02}" for index in range(40)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    leftover = tmp_path / ".virtvol-upload-0123456789abcdef"
    leftover.write_bytes(b"left by a crash")
    volumes = VolumeDir(str(tmp_path), os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    looks: list[threading.Thread] = []

    def look_for_leftovers_at_the_first_entry(name: str) -> bool:
        if not looks:
            view = volumes.view()

            def look() -> None:
                with view:
                    view.remove_stale_temps()

            looks.append(threading.Thread(target=look))
            looks[0].start()
            looks[0].join(0.5)  # as long as it needs, unless it waits for the listing
        return names_module.is_volume_name(name)

    monkeypatch.setattr(volumes_module, "is_volume_name", look_for_leftovers_at_the_first_entry)
    try:
        assert volumes.names() == names
        looks[0].join(10)
        assert not looks[0].is_alive()
        assert not leftover.exists()
    finally:
        volumes.close()


def test_symlinks_and_other_files_are_not_volumes(setup: PoolSetup, tmp_path: Path) -> None:
    registry, ref = setup.registry, setup.ref
    outside = tmp_path / "secret"
    outside.write_bytes(b"do not touch")
    (setup.pool_dir / "link").symlink_to(outside)
    (setup.pool_dir / "dangling").symlink_to(tmp_path / "missing")
    (setup.pool_dir / "subdir").mkdir()  # a volume of type dir (tests/daemon/test_image_formats.py)
    os.mkfifo(setup.pool_dir / "fifo")
    (setup.pool_dir / ".virtvol-upload-feed").write_bytes(b"temp")
    setup.volume("real", 1)
    assert registry.list_volume_names(ref, 100) == ["real", "subdir"]
    assert registry.num_volumes(ref) == 2
    for name in ("link", "dangling", "fifo"):
        with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + f"name '{name}'"):
            registry.lookup_volume_by_name(ref, name)
        forged = VolumeRef("default", name, str(setup.pool_dir / name))
        with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + f"name '{name}'"):
            registry.open_download(forged, 0, 0).close()
        with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + f"name '{name}'"):
            registry.open_upload(forged, 0, 0)
        with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + f"name '{name}'"):
            registry.wipe_volume(forged)
        with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + f"name '{name}'"):
            registry.resize_volume(forged, 1 << 20)
        with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + f"name '{name}'"):
            registry.delete_volume(forged)
    with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + f"key {setup.pool_dir}/link"):
        registry.lookup_volume_by_key(f"{setup.pool_dir}/link")
    with fails(ErrorCode.STORAGE_VOL_EXIST, "storage volume 'link' exists already"):
        setup.volume("link", 1)
    assert outside.read_bytes() == b"do not touch"
    assert (setup.pool_dir / "link").is_symlink()


def test_clone_is_sparse(setup: PoolSetup) -> None:
    """A clone asked to be allocated less than its source's size copies only the
    source's data (one asked for no allocation is allocated whole, as in libvirt)."""
    registry = setup.registry
    source = setup.volume("src", 64 * BLOCK)
    with open(setup.pool_dir / "src", "r+b") as f:
        f.seek(BLOCK)
        f.write(b"1" * BLOCK)
        f.seek(40 * BLOCK)
        f.write(b"2" * 10)
    clone = registry.create_volume_xml_from(
        setup.ref,
        "<volume><name>copy</name><capacity>1</capacity><allocation>0</allocation></volume>",
        source,
    )
    copy = setup.pool_dir / "copy"
    assert copy.read_bytes() == (setup.pool_dir / "src").read_bytes()
    assert allocated(copy) == 2 * BLOCK
    bigger = registry.create_volume_xml_from(
        setup.ref, "<volume><name>big</name><capacity>1000000</capacity></volume>", clone
    )
    assert registry.volume_info(bigger).capacity == 1000000
    no_capacity = "<volume><name>nocap</name></volume>"
    assert (
        registry.volume_info(
            registry.create_volume_xml_from(setup.ref, no_capacity, source)
        ).capacity
        == 64 * BLOCK
    )
    with fails(
        ErrorCode.INTERNAL_ERROR, "internal error: storage volume name 'copy' already in use."
    ):
        registry.create_volume_xml_from(setup.ref, "<volume><name>copy</name></volume>", source)
    with fails(
        ErrorCode.INTERNAL_ERROR, "internal error: storage volume name 'src' already in use."
    ):
        registry.create_volume_xml_from(setup.ref, "<volume><name>src</name></volume>", source)
    with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + "name 'ghost'"):
        registry.create_volume_xml_from(
            setup.ref, "<volume><name>c2</name></volume>", VolumeRef("default", "ghost", "/k")
        )
    with fails(
        ErrorCode.INVALID_ARG, "unsupported flags (0x8) in function storageVolCreateXMLFrom"
    ):
        registry.create_volume_xml_from(setup.ref, "<volume><name>c3</name></volume>", source, 8)
    # REFLINK shares the source's blocks where the file system can, and fails there
    # otherwise (no copy instead), leaving no file behind.
    reflink = "<volume><name>c4</name></volume>"
    refusal = _block_sharing_refusal(setup.pool_dir)
    if refusal is None:
        registry.create_volume_xml_from(setup.ref, reflink, source, 2)
        assert (setup.pool_dir / "c4").read_bytes() == (setup.pool_dir / "src").read_bytes()
    else:
        src = setup.pool_dir / "src"
        with fails(
            ErrorCode.SYSTEM_ERROR,
            f"failed to clone files from '{src}': {os.strerror(refusal)}",
        ):
            registry.create_volume_xml_from(setup.ref, reflink, source, 2)
        assert not (setup.pool_dir / "c4").exists()


def _block_sharing_refusal(folder: Path) -> int | None:
    """The errno Linux's FICLONE gets under ``folder``; None where it shares blocks."""
    with open(folder / "probe-a", "w+b") as a, open(folder / "probe-b", "wb") as b:
        try:
            fcntl.ioctl(b.fileno(), 0x40049409, a.fileno())
        except OSError as exc:
            return exc.errno
        finally:
            os.unlink(folder / "probe-a")
            os.unlink(folder / "probe-b")
    return None


def test_delete(setup: PoolSetup) -> None:
    vol = setup.volume("v", 1)
    with fails(
        ErrorCode.INVALID_ARG, "unsupported flags (0x1) in function virStorageBackendVolDeleteLocal"
    ):
        setup.registry.delete_volume(vol, 1)
    setup.registry.delete_volume(vol)
    assert not (setup.pool_dir / "v").exists()
    with fails(ErrorCode.NO_STORAGE_VOL, NO_VOL + "name 'v'"):
        setup.registry.delete_volume(vol)


def test_wipe_zeroes_and_keeps_a_full_volume_allocated(setup: PoolSetup) -> None:
    """As libvirtd (docs/libvirtd-observed.md, vol-wipe): a sparse volume ends with no
    blocks, a fully allocated one keeps its blocks (a preallocated disk stays reserved)."""
    sparse = setup.file("w", os.urandom(8 * BLOCK + 100))
    with open(setup.pool_dir / "w", "r+b") as f:
        f.truncate(64 * BLOCK)
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x1) in function storageVolWipePattern"):
        setup.registry.wipe_volume(sparse, 1)
    setup.registry.wipe_volume(sparse)
    assert (setup.pool_dir / "w").read_bytes() == bytes(64 * BLOCK)
    assert allocated(setup.pool_dir / "w") == 0
    full = setup.file("full", os.urandom(8 * BLOCK + 100))
    before = allocated(setup.pool_dir / "full")
    setup.registry.wipe_volume(full)
    assert (setup.pool_dir / "full").read_bytes() == bytes(8 * BLOCK + 100)
    assert allocated(setup.pool_dir / "full") == before
    thick = setup.volume("thick", MIB, None)
    setup.registry.wipe_volume(thick)
    assert setup.registry.volume_info(thick) == VolumeInfo(VolumeType.FILE, MIB, MIB)


def test_resize_rules(setup: PoolSetup) -> None:
    registry = setup.registry
    full = setup.volume("full", MIB, None)
    sparse = setup.volume("sparse", 3000, 0)
    shrink_below_alloc = "invalid argument: can't shrink capacity below existing allocation"
    with fails(ErrorCode.INVALID_ARG, shrink_below_alloc):
        registry.resize_volume(full, BLOCK)
    with fails(ErrorCode.INVALID_ARG, shrink_below_alloc):
        registry.resize_volume(full, BLOCK, 4)
    with fails(
        ErrorCode.INVALID_ARG,
        "invalid argument: Can't shrink capacity below current capacity "
        "unless shrink flag explicitly specified",
    ):
        registry.resize_volume(sparse, 1000)
    registry.resize_volume(sparse, 1000, 4)
    assert registry.volume_info(sparse).capacity == 1000
    registry.resize_volume(sparse, 500, 2 | 4)
    assert registry.volume_info(sparse).capacity == 500
    registry.resize_volume(sparse, 5000, 4)  # growing with SHRINK is fine
    registry.resize_volume(sparse, MIB, 2)
    assert registry.volume_info(sparse) == VolumeInfo(VolumeType.FILE, MIB + 5000, 0)
    registry.resize_volume(sparse, 2 * MIB, 1)
    info = registry.volume_info(sparse)
    assert info.capacity == 2 * MIB
    assert info.allocation >= 2 * MIB - MIB - 5000
    registry.resize_volume(full, MIB)  # same size: nothing to do
    with fails(ErrorCode.INVALID_ARG, shrink_below_alloc):
        registry.resize_volume(full, 10**9, 2 | 4)  # a delta shrink stops at zero
    with fails(
        ErrorCode.SYSTEM_ERROR,
        f"Failed to truncate file '{setup.pool_dir}/full': Invalid argument",
        ErrorDomain.NONE,
    ):
        registry.resize_volume(full, 1 << 63)  # a negative off_t to ftruncate
    with fails(ErrorCode.INVALID_ARG, "unsupported flags (0x8) in function storageVolResize"):
        registry.resize_volume(full, 1, 8)


def test_resize_below_the_allocation_is_refused_growing_too(setup: PoolSetup) -> None:
    """As libvirtd: a new size below the allocation is refused whether the volume grows or
    not, and a file's allocation can exceed its size (the block its end is in, blocks
    allocated past its end)."""
    registry = setup.registry
    below = "invalid argument: can't shrink capacity below existing allocation"
    small = setup.file("small", b"x" * 1000)
    assert allocated(setup.pool_dir / "small") == BLOCK
    with fails(ErrorCode.INVALID_ARG, below):
        registry.resize_volume(small, 2000)
    with fails(ErrorCode.INVALID_ARG, below):
        registry.resize_volume(small, 1000, 2)  # by a delta
    with fails(ErrorCode.INVALID_ARG, below):
        registry.resize_volume(small, 2000, 1)  # allocating
    assert registry.volume_info(small) == VolumeInfo(VolumeType.FILE, 1000, BLOCK)
    registry.resize_volume(small, BLOCK)
    assert registry.volume_info(small).capacity == BLOCK
    kept = setup.file("kept", b"k" * BLOCK)
    subprocess.run(
        ["fallocate", "--keep-size", "--length", str(MIB), str(setup.pool_dir / "kept")],
        check=True,
    )
    with fails(ErrorCode.INVALID_ARG, below):
        registry.resize_volume(kept, MIB - 1)
    registry.resize_volume(kept, MIB)
    assert registry.volume_info(kept) == VolumeInfo(VolumeType.FILE, MIB, MIB)


def test_busy_volume_refuses_changes(setup: PoolSetup) -> None:
    registry = setup.registry
    vol = setup.volume("v", BLOCK)
    writer = registry.open_upload(vol, 0, 0)
    in_use = NOT_VALID + "volume 'v' is still in use."
    with fails(ErrorCode.OPERATION_INVALID, in_use):
        registry.open_upload(vol, 0, 0)
    with fails(ErrorCode.OPERATION_INVALID, in_use):
        registry.open_upload(vol, 10, 10)
    with fails(ErrorCode.OPERATION_INVALID, in_use):
        registry.delete_volume(vol)
    with fails(ErrorCode.OPERATION_INVALID, in_use):
        registry.wipe_volume(vol)
    with fails(ErrorCode.OPERATION_INVALID, in_use):
        registry.resize_volume(vol, MIB)
    with fails(
        ErrorCode.INTERNAL_ERROR, "internal error: pool 'default' has asynchronous jobs running."
    ):
        registry.destroy_pool(setup.ref)
    registry.open_download(vol, 0, 0).close()  # reading stays allowed
    writer.abort()
    registry.delete_volume(vol)


def _held_when_called(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> tuple[threading.Event, threading.Event]:
    """Make ``sparse_files.<name>`` wait, once called, until released: (called, release).
    A test then acts while the operation that called it is under way."""
    called, release = threading.Event(), threading.Event()
    real = getattr(sparse_files, name)

    def held(*args: int) -> None:
        called.set()
        assert release.wait(10)
        real(*args)

    monkeypatch.setattr(sparse_files, name, held)
    return called, release


@pytest.mark.parametrize("across_pools", [False, True], ids=["same-pool", "another-pool"])
def test_clone_source_is_in_use_while_it_is_copied(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, across_pools: bool
) -> None:
    """As libvirt: the source of a clone cannot be changed under the copy (a wipe or an
    in-place upload there would leave the clone half old, half new); reading it, or
    cloning it again, stays allowed. So too when it is in another pool."""
    registry = setup.registry
    if across_pools:
        images = registry.ensure_pool("images", tmp_path / "images")
        (tmp_path / "images" / "src").write_bytes(b"s" * BLOCK)
        source = registry.lookup_volume_by_name(images, "src")
    else:
        source = setup.file("src", b"s" * BLOCK)
    copying, release = _held_when_called(monkeypatch, "copy_sparse")
    with ThreadPoolExecutor(1) as pool:
        clone = pool.submit(
            registry.create_volume_xml_from,
            setup.ref,
            "<volume><name>copy</name></volume>",
            source,
        )
        assert copying.wait(10)
        in_use = NOT_VALID + "volume 'src' is still in use."
        try:
            with fails(ErrorCode.OPERATION_INVALID, in_use):
                registry.wipe_volume(source)
            with fails(ErrorCode.OPERATION_INVALID, in_use):
                registry.resize_volume(source, MIB)
            with fails(ErrorCode.OPERATION_INVALID, in_use):
                registry.delete_volume(source)
            with fails(ErrorCode.OPERATION_INVALID, in_use):
                registry.open_upload(source, 0, BLOCK)
            with fails(ErrorCode.OPERATION_INVALID, in_use):
                registry.open_upload(source, 0, 0)
            registry.open_download(source, 0, 0).close()
            if across_pools:  # nor may the source's pool stop under the copy, as in libvirtd
                with fails(
                    ErrorCode.INTERNAL_ERROR,
                    "internal error: pool 'images' has asynchronous jobs running.",
                    ErrorDomain.STORAGE,
                ):
                    registry.destroy_pool(images)
        finally:
            release.set()
        clone.result(10)
    assert (setup.pool_dir / "copy").read_bytes() == b"s" * BLOCK
    registry.wipe_volume(source)  # free again once the copy is done
    registry.delete_volume(source)


def test_a_volume_written_in_place_is_no_clone_source(setup: PoolSetup) -> None:
    """An upload with an offset or a length writes the volume in place, as a wipe does: a
    clone started meanwhile would copy it half old, half new, so it is refused as a clone
    of a volume being wiped is. A whole-volume upload writes a new file and the clone
    copies the old one whole: that goes ahead."""
    registry = setup.registry
    source = setup.file("src", b"s" * 2 * BLOCK)
    clone_xml = "<volume><name>copy</name></volume>"
    writer = registry.open_upload(source, 0, 2 * BLOCK)
    try:
        writer.apply([b"n" * BLOCK])  # half of the new bytes are in
        with fails(ErrorCode.OPERATION_INVALID, NOT_VALID + "volume 'src' is still in use."):
            registry.create_volume_xml_from(setup.ref, clone_xml, source)
        writer.apply([b"n" * BLOCK])
        writer.commit()
    finally:
        writer.abort()
    assert not (setup.pool_dir / "copy").exists()
    whole = registry.open_upload(source, 0, 0)
    try:
        whole.apply([b"w" * BLOCK])
        registry.create_volume_xml_from(setup.ref, clone_xml, source)
        whole.commit()
    finally:
        whole.abort()
    assert (setup.pool_dir / "copy").read_bytes() == b"n" * 2 * BLOCK
    assert (setup.pool_dir / "src").read_bytes() == b"w" * BLOCK + b"n" * BLOCK


def test_a_busy_name_is_taken_for_a_new_volume(setup: PoolSetup) -> None:
    """A volume that is being uploaded to still exists: creating or cloning onto its
    name is refused as for any existing volume (libvirt's errors), not as "in use"."""
    registry = setup.registry
    vol = setup.volume("v", BLOCK)
    other = setup.volume("other", BLOCK)
    writer = registry.open_upload(vol, 0, 0)
    try:
        with fails(ErrorCode.STORAGE_VOL_EXIST, "storage volume 'v' exists already"):
            setup.volume("v", BLOCK)
        with fails(
            ErrorCode.INTERNAL_ERROR, "internal error: storage volume name 'v' already in use."
        ):
            registry.create_volume_xml_from(setup.ref, "<volume><name>v</name></volume>", other)
    finally:
        writer.abort()


def test_a_capacity_past_the_largest_file_is_refused_as_libvirt_refuses_it(
    setup: PoolSetup,
) -> None:
    """libvirtd's storage driver: "cannot extend file" (a system error of the storage
    domain) for vol-create and vol-create-from alike, and nothing left in the pool."""
    registry = setup.registry
    source = setup.file("src", b"s" * BLOCK)
    too_large = f"cannot extend file '{setup.pool_dir}/huge': File too large"
    with fails(ErrorCode.SYSTEM_ERROR, too_large):
        setup.volume("huge", 1 << 62)
    with fails(ErrorCode.SYSTEM_ERROR, too_large):
        setup.volume("huge", 1 << 62, None)
    with fails(ErrorCode.SYSTEM_ERROR, too_large):
        registry.create_volume_xml_from(
            setup.ref, f"<volume><name>huge</name><capacity>{1 << 62}</capacity></volume>", source
        )
    assert os.listdir(setup.pool_dir) == ["src"]
    assert registry.list_volume_names(setup.ref, 10) == ["src"]


def test_a_volume_name_is_taken_as_written(setup: PoolSetup) -> None:
    """libvirt takes the name element's text as it is: spaces around it are part of the
    name (trimming them made another volume than the one asked for)."""
    registry = setup.registry
    for name in (" lead", "trail ", "\tboth\n"):
        created = registry.create_volume_xml(
            setup.ref, f"<volume><name>{name}</name><capacity>1</capacity></volume>"
        )
        assert created.name == name
        assert (setup.pool_dir / name).is_file()
        assert registry.lookup_volume_by_name(setup.ref, name) == created
    source = registry.lookup_volume_by_name(setup.ref, " lead")
    clone = registry.create_volume_xml_from(
        setup.ref, "<volume><name>copy </name></volume>", source
    )
    assert clone.name == "copy "
    assert sorted(os.listdir(setup.pool_dir)) == sorted(registry.list_volume_names(setup.ref, 10))


def test_resize_allocate_past_the_free_space_is_refused_up_front(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As libvirt: growing with ALLOCATE by more than the pool has free is refused before
    any block is taken (a failing fallocate keeps what it got: the file system fills up)."""
    registry = setup.registry
    vol = setup.volume("v", BLOCK, BLOCK)
    real_statvfs = os.statvfs
    free_blocks = 16  # of 4 KiB: 64 KiB free, as the pool reports it

    def small_file_system(path: int | str) -> os.statvfs_result:
        st = real_statvfs(path)
        fields = list(st)
        fields[0], fields[1], fields[4] = BLOCK, BLOCK, free_blocks  # bsize, frsize, bavail
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", small_file_system)
    with fails(
        ErrorCode.OPERATION_FAILED, "operation failed: Not enough space left in storage pool"
    ):
        registry.resize_volume(vol, MIB, 1)
    with fails(
        ErrorCode.OPERATION_FAILED, "operation failed: Not enough space left in storage pool"
    ):
        registry.resize_volume(vol, 1 << 62, 1)  # checked before the largest file size
    assert registry.volume_info(vol) == VolumeInfo(VolumeType.FILE, BLOCK, BLOCK)
    registry.resize_volume(vol, (free_blocks + 1) * BLOCK, 1)  # exactly what is free: fine
    registry.resize_volume(vol, MIB)  # without ALLOCATE nothing is taken


def test_a_failed_resize_allocate_gives_back_what_it_took(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Space can run out after the check (another writer): the volume keeps its size
    and the blocks the failed allocation took are freed."""
    registry = setup.registry
    vol = setup.volume("v", BLOCK, BLOCK)
    real_allocate = sparse_files.allocate

    def runs_out(fd: int, offset: int, length: int) -> None:
        real_allocate(fd, offset, length // 2)  # as ext4 does: keeps what it got
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sparse_files, "allocate", runs_out)
    with fails(
        ErrorCode.SYSTEM_ERROR,
        f"Failed to truncate file '{setup.pool_dir}/v': No space left on device",
        ErrorDomain.NONE,
    ):
        registry.resize_volume(vol, 64 * BLOCK, 1)
    assert registry.volume_info(vol) == VolumeInfo(VolumeType.FILE, BLOCK, BLOCK)


def test_a_volume_being_wiped_is_in_use_and_readable(
    setup: PoolSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As libvirtd: while a wipe runs, changes are refused with "still in use" (the
    volume exists; it is not "being allocated") and downloads are allowed."""
    registry = setup.registry
    vol = setup.file("v", b"v" * BLOCK)
    wiping, release = _held_when_called(monkeypatch, "punch_hole")
    with ThreadPoolExecutor(1) as pool:
        wipe = pool.submit(registry.wipe_volume, vol)
        assert wiping.wait(10)
        in_use = NOT_VALID + "volume 'v' is still in use."
        try:
            with fails(ErrorCode.OPERATION_INVALID, in_use):
                registry.delete_volume(vol)
            with fails(ErrorCode.OPERATION_INVALID, in_use):
                registry.resize_volume(vol, MIB)
            with fails(ErrorCode.OPERATION_INVALID, in_use):
                registry.open_upload(vol, 0, 0)
            with fails(ErrorCode.OPERATION_INVALID, in_use):  # a half-wiped copy: refused
                registry.create_volume_xml_from(
                    setup.ref, "<volume><name>copy</name></volume>", vol
                )
            registry.open_download(vol, 0, 0).close()
        finally:
            release.set()
        wipe.result(10)
    assert (setup.pool_dir / "v").read_bytes() == bytes(BLOCK)


def _with_permissions(name: str, permissions: str) -> str:
    return (
        f"<volume><name>{name}</name><capacity>{BLOCK}</capacity>"
        f"<target><permissions>{permissions}</permissions></target></volume>"
    )


def test_a_new_volume_gets_the_permissions_its_xml_asks_for(setup: PoolSetup) -> None:
    """libvirt applies <permissions> (mode, and owner and group where it may) to the file
    it creates, for vol-create and vol-create-from alike; virsh's vol-clone sends the
    original's, so a clone keeps its mode."""
    registry = setup.registry
    for name, mode_text, mode in (("a", "0640", 0o640), ("b", "604", 0o604), ("c", "0777", 0o777)):
        vol = registry.create_volume_xml(
            setup.ref, _with_permissions(name, f"<mode>{mode_text}</mode>")
        )
        assert (setup.pool_dir / name).stat().st_mode & 0o7777 == mode
        assert f"<mode>{mode:04o}</mode>" in registry.volume_xml(vol)
    registry.create_volume_xml(setup.ref, _with_permissions("d", "<mode></mode>"))
    assert (setup.pool_dir / "d").stat().st_mode & 0o7777 == 0o600
    clone = registry.create_volume_xml_from(
        setup.ref,
        "<volume><name>e</name><target><permissions><mode>0660</mode></permissions>"
        "</target></volume>",
        registry.lookup_volume_by_name(setup.ref, "a"),
    )
    assert (setup.pool_dir / clone.name).stat().st_mode & 0o7777 == 0o660
    owned = _with_permissions("f", "<owner>65534</owner><group>65534</group>")
    if os.geteuid() == 0:
        registry.create_volume_xml(setup.ref, owned)
        st = (setup.pool_dir / "f").stat()
        assert (st.st_uid, st.st_gid) == (65534, 65534)
    else:
        with fails(
            ErrorCode.SYSTEM_ERROR,
            f"Failed to create file '{setup.pool_dir}/f': Operation not permitted",
        ):
            registry.create_volume_xml(setup.ref, owned)
        assert not (setup.pool_dir / "f").exists()
    registry.create_volume_xml(setup.ref, _with_permissions("g", "<owner>-1</owner>"))
    assert (setup.pool_dir / "g").stat().st_uid == os.geteuid()


def test_malformed_permissions_are_refused_as_libvirt_refuses_them(setup: PoolSetup) -> None:
    for mode in ("01777", "0999", "x", "-1", "0640 "):
        with fails(ErrorCode.XML_ERROR, "XML error: malformed octal mode"):
            setup.registry.create_volume_xml(
                setup.ref, _with_permissions("v", f"<mode>{mode}</mode>")
            )
    for element in ("owner", "group"):
        for value in ("x", "", " 5 ", "4294967296", "-2"):
            with fails(ErrorCode.XML_ERROR, f"XML error: malformed {element} element"):
                setup.registry.create_volume_xml(
                    setup.ref, _with_permissions("v", f"<{element}>{value}</{element}>")
                )
    assert os.listdir(setup.pool_dir) == []
