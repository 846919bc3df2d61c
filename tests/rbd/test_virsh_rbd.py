"""An rbd pool on virtvold, driven by virsh 9.0 and python3-libvirt 9.0, checked in Ceph itself."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from typing import TYPE_CHECKING

from tests.conftest import (
    Virtvold,
    run_system_python,
    run_virsh,
    start_virtvold,
    stop_virtvold,
)
from tests.daemon.conftest import (
    allocated,
    assert_no_clone_while_written_in_place,
    make_sparse_file,
    run_client,
)
from tests.rbd.conftest import (
    CEPH_POOL,
    RBD_POOL,
    SECRET_UUID,
    define_rbd_pool,
    rbd_pool_xml,
    volume_name,
)
from virtvol.daemon.storage.rbdvolumes import RbdVolumes
from virtvol.daemon.storage.rbdxml import RbdSource

if TYPE_CHECKING:
    from pathlib import Path

    from tools.ceph_cluster import CephCluster

MIB = 1 << 20


def exported(ceph: CephCluster, name: str, folder: Path) -> bytes:
    """The image's bytes as Ceph's own ``rbd export`` reads them."""
    target = folder / f"export-{name}"
    target.unlink(missing_ok=True)
    ceph.rbd("export", f"{CEPH_POOL}/{name}", str(target))
    return target.read_bytes()


def image_size(ceph: CephCluster, name: str) -> int:
    info = json.loads(ceph.rbd("info", "--format", "json", f"{CEPH_POOL}/{name}"))
    size: int = info["size"]
    return size


def images(ceph: CephCluster) -> list[str]:
    return ceph.rbd("ls", CEPH_POOL).split()


def stream_holes(daemon: Virtvold, direction: str, name: str) -> int:
    """Skip frames of the last ``direction`` stream of volume ``name``, from the daemon's log."""
    marker = f"{direction} {RBD_POOL}/{name}:"
    deadline = time.monotonic() + 10  # the line is written once the image is closed
    while True:
        lines = [line for line in daemon.log_text().splitlines() if marker in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines, daemon.log_text()
    return int(re.search(r"(\d+) holes", lines[-1]).group(1))  # type: ignore[union-attr]


def test_pool_lifecycle(rbd_virtvold: Virtvold) -> None:
    uri = rbd_virtvold.tcp_uri
    assert re.search(r"State:\s+running", run_virsh(uri, "pool-info", RBD_POOL).stdout)
    xml = run_virsh(uri, "pool-dumpxml", RBD_POOL).stdout
    assert "<pool type='rbd'>" in xml
    assert f"<name>{CEPH_POOL}</name>" in xml
    assert f"<secret uuid='{SECRET_UUID}'/>" in xml
    assert RBD_POOL in run_virsh(uri, "pool-list", "--type", "rbd").stdout
    assert RBD_POOL not in run_virsh(uri, "pool-list", "--type", "dir").stdout
    run_virsh(uri, "pool-refresh", RBD_POOL)
    run_virsh(uri, "pool-destroy", RBD_POOL)
    stopped = run_virsh(uri, "vol-list", RBD_POOL, check=False)
    assert f"storage pool '{RBD_POOL}' is not active" in stopped.stderr
    run_virsh(uri, "pool-start", RBD_POOL)
    run_virsh(uri, "vol-list", RBD_POOL)


def test_volume_lifecycle(rbd_virtvold: Virtvold, ceph: CephCluster) -> None:
    uri, name = rbd_virtvold.tcp_uri, volume_name("life")
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "8M")
    assert name in images(ceph)
    listing = run_virsh(uri, "vol-list", RBD_POOL).stdout
    assert f"{CEPH_POOL}/{name}" in listing
    info = run_virsh(uri, "vol-info", "--pool", RBD_POOL, name).stdout
    assert re.search(r"Type:\s+network", info)
    assert re.search(r"Capacity:\s+8.00 MiB", info)
    assert re.search(r"Allocation:\s+0.00 B", info)
    assert run_virsh(uri, "vol-path", "--pool", RBD_POOL, name).stdout.strip() == (
        f"{CEPH_POOL}/{name}"
    )
    assert run_virsh(uri, "vol-key", "--pool", RBD_POOL, name).stdout.strip() == (
        f"{CEPH_POOL}/{name}"
    )

    by_key = run_virsh(uri, "vol-info", f"{CEPH_POOL}/{name}").stdout  # lookup by key
    assert f"Name:           {name}" in by_key

    run_virsh(uri, "vol-resize", "--pool", RBD_POOL, name, "16M")
    assert image_size(ceph, name) == 16 * MIB
    refused = run_virsh(uri, "vol-resize", "--pool", RBD_POOL, name, "4M", check=False)
    assert "Can't shrink capacity below current capacity unless shrink flag" in refused.stderr
    # libvirt checks the new size before its rbd backend refuses to preallocate.
    refused = run_virsh(
        uri, "vol-resize", "--pool", RBD_POOL, name, "4M", "--allocate", check=False
    )
    assert "Can't shrink capacity below current capacity unless shrink flag" in refused.stderr
    # Past the size checks and needing no room (the image holds no data; this cluster's
    # memstore reports no free space at all), the backend's refusal to preallocate.
    refused = run_virsh(
        uri, "vol-resize", "--pool", RBD_POOL, name, "0", "--shrink", "--allocate", check=False
    )
    # libvirt's driver passes the backend every flag but the delta: 0x5 here.
    assert "unsupported flags (0x5) in function virStorageBackendRBDResizeVol" in refused.stderr
    refused = run_virsh(
        uri, "vol-resize", "--pool", RBD_POOL, name, "100T", "--allocate", check=False
    )
    assert "Not enough space left in storage pool" in refused.stderr
    assert image_size(ceph, name) == 16 * MIB
    run_virsh(uri, "vol-resize", "--pool", RBD_POOL, name, "4M", "--shrink")
    assert image_size(ceph, name) == 4 * MIB
    # libvirt's sum is unsigned 64-bit: 4 MiB + (2^64 - 1) wraps round to 4 MiB - 1.
    wrapped = run_virsh(
        uri, "vol-resize", "--pool", RBD_POOL, name, str((1 << 64) - 1), "--delta", check=False
    )
    assert "Can't shrink capacity below current capacity unless shrink flag" in wrapped.stderr
    assert image_size(ceph, name) == 4 * MIB

    run_virsh(uri, "vol-delete", "--pool", RBD_POOL, name)
    assert name not in images(ceph)
    missing = run_virsh(uri, "vol-info", "--pool", RBD_POOL, name, check=False)
    assert "Storage volume not found" in missing.stderr


def test_virsh_sparse_round_trip_over_old_content(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    uri, name = rbd_virtvold.tcp_uri, volume_name("rt")
    size = 12 * MIB
    old = tmp_path / "old.img"
    old.write_bytes(os.urandom(size))
    run_virsh(uri, "vol-create-as", RBD_POOL, name, str(size))
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(old))  # dense
    assert exported(ceph, name, tmp_path) == old.read_bytes()

    # Holes where the old image had data must read back as zeros.
    new = make_sparse_file(
        tmp_path / "new.img",
        size + MIB + 123,
        [(0, b"head"), (5 * MIB + 7, os.urandom(70_000)), (size + MIB, os.urandom(123))],
    )
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(new), "--sparse")
    assert exported(ceph, name, tmp_path) == new.read_bytes()
    assert stream_holes(rbd_virtvold, "upload", name) == 2  # virsh sent the holes as skips
    info = run_virsh(uri, "vol-info", "--pool", RBD_POOL, name, "--bytes").stdout
    assert f"{size + MIB + 123} bytes" in info
    allocation = int(re.search(r"Allocation:\s+(\d+)", info).group(1))  # type: ignore[union-attr]
    assert allocation <= 3 * 4 * MIB  # three RADOS objects hold data

    sparse_out = tmp_path / "sparse-out"
    run_virsh(uri, "vol-download", "--pool", RBD_POOL, name, str(sparse_out), "--sparse")
    assert sparse_out.read_bytes() == new.read_bytes()
    assert allocated(sparse_out) <= 512 * 1024
    assert stream_holes(rbd_virtvold, "download", name) == 2  # neighbouring holes: one skip

    dense_out = tmp_path / "dense-out"
    run_virsh(uri, "vol-download", "--pool", RBD_POOL, name, str(dense_out))
    assert dense_out.read_bytes() == new.read_bytes()

    clone = volume_name("clone")
    run_virsh(uri, "vol-clone", "--pool", RBD_POOL, name, clone)
    assert exported(ceph, clone, tmp_path) == new.read_bytes()
    assert [n for n in images(ceph) if n.startswith(".virtvol-")] == []


def test_whole_upload_keeps_the_size_and_the_bytes_past_the_stream(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """As a dir pool's volume (and libvirtd's in-place write of a file): a shorter stream
    leaves the old size and the old bytes past its end; a longer one grows the image."""
    uri, name = rbd_virtvold.tcp_uri, volume_name("tail")
    old = make_sparse_file(
        tmp_path / "old", 16 * MIB, [(0, os.urandom(2 * MIB)), (12 * MIB, os.urandom(4 * MIB))]
    )
    run_virsh(uri, "vol-create-as", RBD_POOL, name, str(16 * MIB))
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(old), "--sparse")
    new = tmp_path / "new"
    new.write_bytes(os.urandom(MIB + 5))
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(new))
    expected = new.read_bytes() + old.read_bytes()[MIB + 5 :]
    assert exported(ceph, name, tmp_path) == expected
    info = run_virsh(uri, "vol-info", "--pool", RBD_POOL, name, "--bytes").stdout
    assert f"{16 * MIB} bytes" in info
    allocation = int(re.search(r"Allocation:\s+(\d+)", info).group(1))  # type: ignore[union-attr]
    assert allocation <= 8 * MIB  # the old hole in the middle stays one: 4 MiB objects
    longer = tmp_path / "longer"
    longer.write_bytes(os.urandom(17 * MIB))
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(longer))
    assert exported(ceph, name, tmp_path) == longer.read_bytes()
    assert [n for n in images(ceph) if n.startswith(".virtvol-")] == []


def test_virsh_offset_and_length(rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path) -> None:
    uri, name = rbd_virtvold.tcp_uri, volume_name("range")
    base = os.urandom(8 * MIB)
    whole = tmp_path / "whole.img"
    whole.write_bytes(base)
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "8M")
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(whole))
    patch = make_sparse_file(tmp_path / "patch", 2 * MIB, [(MIB, b"patched")])
    run_virsh(
        uri, "vol-upload", "--pool", RBD_POOL, name, str(patch),
        "--offset", str(3 * MIB), "--length", str(2 * MIB), "--sparse",
    )  # fmt: skip
    expected = base[: 3 * MIB] + patch.read_bytes() + base[5 * MIB :]
    assert exported(ceph, name, tmp_path) == expected
    part = tmp_path / "part"
    run_virsh(
        uri, "vol-download", "--pool", RBD_POOL, name, str(part),
        "--offset", str(3 * MIB - 10), "--length", str(MIB + 20), "--sparse",
    )  # fmt: skip
    assert part.read_bytes() == expected[3 * MIB - 10 : 4 * MIB + 10]


def test_vol_wipe_frees_the_image(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    uri, name = rbd_virtvold.tcp_uri, volume_name("wipe")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(6 * MIB))
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "6M")
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(data))
    run_virsh(uri, "vol-wipe", "--pool", RBD_POOL, name)
    assert exported(ceph, name, tmp_path) == bytes(6 * MIB)
    # Whole objects are freed; the tail object, partly inside the image, is zeroed.
    info = run_virsh(uri, "vol-info", "--pool", RBD_POOL, name, "--bytes").stdout
    allocation = int(re.search(r"Allocation:\s+(\d+)", info).group(1))  # type: ignore[union-attr]
    assert allocation <= 2 * MIB


def test_vol_wipe_algorithms_as_libvirts_rbd_backend(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """libvirt's rbd backend discards the image for trim and refuses scrub's patterns
    with INVALID_ARG "unsupported algorithm N" (a directory pool answers otherwise)."""
    uri, name = rbd_virtvold.tcp_uri, volume_name("trim")
    data = tmp_path / "data"
    data.write_bytes(os.urandom(6 * MIB))
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "6M")
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(data))
    refused = run_virsh(
        uri, "vol-wipe", "--pool", RBD_POOL, name, "--algorithm", "dod", check=False
    )
    assert (refused.returncode, refused.stderr) == (
        1,
        f"error: Failed to wipe vol {name}\nerror: invalid argument: unsupported algorithm 2\n",
    )
    assert exported(ceph, name, tmp_path) == data.read_bytes()
    run_virsh(uri, "vol-wipe", "--pool", RBD_POOL, name, "--algorithm", "trim")
    assert exported(ceph, name, tmp_path) == bytes(6 * MIB)
    # A volume gone since it was looked up is not found before its algorithm is judged.
    answer = run_system_python(STALE_WIPE_SCRIPT, uri, RBD_POOL, name).stdout
    assert answer.strip() == (
        f"50 Storage volume not found: no storage vol with matching name '{name}'"
    )


STALE_WIPE_SCRIPT = r"""
import sys, libvirt
uri, pool, name = sys.argv[1:4]
conn = libvirt.open(uri)
vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
vol.delete(0)
try:
    vol.wipePattern(libvirt.VIR_STORAGE_VOL_WIPE_ALG_DOD, 0)
except libvirt.libvirtError as exc:
    print(exc.get_error_code(), exc.get_error_message())
"""


def test_python_libvirt_transfers(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    uri, name = rbd_virtvold.tcp_uri, volume_name("py")
    source = make_sparse_file(
        tmp_path / "source", 9 * MIB, [(MIB, os.urandom(5000)), (8 * MIB, os.urandom(MIB))]
    )
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "9M")
    run_client(uri, name, "sparse-upload", source, pool=RBD_POOL)
    assert exported(ceph, name, tmp_path) == source.read_bytes()
    out = tmp_path / "recv"
    counters = run_client(rbd_virtvold.unix_uri, name, "recvflags", out, pool=RBD_POOL)
    assert out.read_bytes() == source.read_bytes()
    assert counters["holes"] >= 2
    assert counters["data_frames"] >= 2
    plain = tmp_path / "plain"
    run_client(uri, name, "download", plain, pool=RBD_POOL)
    assert plain.read_bytes() == source.read_bytes()


ABORT_SCRIPT = r"""
import sys, libvirt
uri, pool, name = sys.argv[1:4]
conn = libvirt.open(uri)
vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
st = conn.newStream(0)
vol.upload(st, 0, 0, 0)
st.send(b"\xff" * (3 << 20))
st.abort()
conn.close()
"""


def test_aborted_upload_leaves_the_old_image(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    uri, name = rbd_virtvold.tcp_uri, volume_name("abort")
    old = tmp_path / "old"
    old.write_bytes(os.urandom(4 * MIB))
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "4M")
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(old))
    run_system_python(ABORT_SCRIPT, uri, RBD_POOL, name)
    assert exported(ceph, name, tmp_path) == old.read_bytes()
    # The hidden image is gone once the daemon has seen the abort.
    run_virsh(uri, "vol-list", RBD_POOL)
    assert [n for n in images(ceph) if n.startswith(".virtvol-")] == []
    assert ceph.admin_key not in rbd_virtvold.log_text()


def test_secret_by_usage_and_autostart(ceph: CephCluster, tmp_path: Path) -> None:
    """A pool naming its secret by usage, autostarted by a restarted daemon."""
    base = tmp_path / "daemon"
    daemon = start_virtvold(base)
    try:
        define_rbd_pool(daemon.tcp_uri, ceph, tmp_path)
        run_virsh(daemon.tcp_uri, "pool-destroy", RBD_POOL)
        run_virsh(daemon.tcp_uri, "pool-undefine", RBD_POOL)
        by_usage = tmp_path / "by-usage.xml"
        by_usage.write_text(
            rbd_pool_xml(ceph).replace(
                f"<secret uuid='{SECRET_UUID}'/>", "<secret usage='client.admin secret'/>"
            )
        )
        run_virsh(daemon.tcp_uri, "pool-define", str(by_usage))
        run_virsh(daemon.tcp_uri, "pool-autostart", RBD_POOL)
    finally:
        stop_virtvold(daemon)
    again = start_virtvold(base)
    try:
        assert re.search(
            r"State:\s+running", run_virsh(again.tcp_uri, "pool-info", RBD_POOL).stdout
        )
        assert (
            "<secret usage='client.admin secret'/>"
            in run_virsh(again.tcp_uri, "pool-dumpxml", RBD_POOL).stdout
        )
        name = volume_name("usage")
        run_virsh(again.tcp_uri, "vol-create-as", RBD_POOL, name, "1M")
        assert name in images(ceph)
        assert ceph.admin_key not in again.log_text()
    finally:
        stop_virtvold(again)


def test_pool_start_failures(rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path) -> None:
    uri = rbd_virtvold.tcp_uri
    no_pool = tmp_path / "no-pool.xml"
    no_pool.write_text(
        rbd_pool_xml(ceph, "nopool").replace(f"<name>{CEPH_POOL}</name>", "<name>absent</name>")
    )
    run_virsh(uri, "pool-define", str(no_pool))
    failed = run_virsh(uri, "pool-start", "nopool", check=False)
    assert "failed to create the RBD IoCTX. Does the pool 'absent' exist?" in failed.stderr

    unknown = "00000000-0000-4000-8000-00000000abcd"
    no_secret = tmp_path / "no-secret.xml"
    no_secret.write_text(
        rbd_pool_xml(ceph, "nosecret")
        .replace(f"<name>{CEPH_POOL}</name>", "<name>elsewhere</name>")
        .replace(SECRET_UUID, unknown)
    )
    run_virsh(uri, "pool-define", str(no_secret))
    failed = run_virsh(uri, "pool-start", "nosecret", check=False)
    assert f"Secret not found: no secret with matching uuid '{unknown}'" in failed.stderr
    conflict = tmp_path / "conflict.xml"
    conflict.write_text(rbd_pool_xml(ceph, "again"))
    clash = run_virsh(uri, "pool-define", str(conflict), check=False)
    assert f"Storage source conflict with pool: '{RBD_POOL}'" in clash.stderr


def _layout(ceph: CephCluster, name: str) -> tuple[object, ...]:
    info = json.loads(ceph.rbd("info", "--format", "json", f"{CEPH_POOL}/{name}"))
    return (
        info["object_size"],
        info.get("stripe_unit"),
        info.get("stripe_count"),
        info.get("data_pool"),
        sorted(info["features"]),
    )


def test_whole_upload_and_clone_keep_the_image_layout(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """An image made with Ceph's own tool (small objects, striping, a separate data pool,
    as an erasure-coded setup needs) keeps all of it through a whole-volume upload, and
    a clone has it too: its data does not move to the pool of the metadata."""
    ceph.create_pool("virtvol-data")
    uri, name = rbd_virtvold.tcp_uri, volume_name("layout")
    ceph.rbd(
        "create", "--size", "6M", "--object-size", "1M", "--stripe-unit", "64K",
        "--stripe-count", "4", "--data-pool", "virtvol-data", "--image-feature",
        "layering,exclusive-lock,object-map,fast-diff", f"{CEPH_POOL}/{name}",
    )  # fmt: skip
    before = _layout(ceph, name)
    assert before[:4] == (MIB, 64 * 1024, 4, "virtvol-data")
    source = make_sparse_file(tmp_path / "source", 5 * MIB + 1, [(MIB + 3, os.urandom(200_000))])
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(source), "--sparse")
    expected = source.read_bytes() + bytes(MIB - 1)  # the volume's size is kept
    assert exported(ceph, name, tmp_path) == expected
    assert _layout(ceph, name) == before
    clone = volume_name("layout-clone")
    run_virsh(uri, "vol-clone", "--pool", RBD_POOL, name, clone)
    assert exported(ceph, clone, tmp_path) == expected
    assert _layout(ceph, clone) == before


def test_whole_upload_refused_over_snapshots(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """Swapping in a new image would leave the volume without its snapshots and the old
    image, which Ceph will not remove while it has them, hidden for good."""
    uri, name = rbd_virtvold.tcp_uri, volume_name("snap")
    old = tmp_path / "old"
    old.write_bytes(os.urandom(2 * MIB))
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "2M")
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(old))
    ceph.rbd("snap", "create", f"{CEPH_POOL}/{name}@keep")
    new = tmp_path / "new"
    new.write_bytes(os.urandom(2 * MIB))
    refused = run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(new), check=False)
    assert refused.returncode != 0
    assert f"volume '{name}' has snapshots" in refused.stderr
    assert exported(ceph, name, tmp_path) == old.read_bytes()
    assert "keep" in ceph.rbd("snap", "ls", f"{CEPH_POOL}/{name}")
    assert [n for n in images(ceph) if n.startswith(".virtvol-")] == []
    # In place (a length given) it is written, snapshots and all.
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(new), "--length", str(2 * MIB))
    assert exported(ceph, name, tmp_path) == new.read_bytes()
    assert "keep" in ceph.rbd("snap", "ls", f"{CEPH_POOL}/{name}")


def test_hidden_images_are_no_volumes(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """An upload's or a replaced volume's hidden image is no volume by its name either, as
    in a directory pool: not to be looked up, read, written or deleted by a client."""
    uri, hidden = rbd_virtvold.tcp_uri, f".virtvol-old-{os.urandom(8).hex()}"
    ceph.rbd("create", "--size", "1M", f"{CEPH_POOL}/{hidden}")
    out = tmp_path / "out"
    for command in (
        ["vol-info", "--pool", RBD_POOL, hidden],
        ["vol-info", f"{CEPH_POOL}/{hidden}"],  # by key
        ["vol-download", "--pool", RBD_POOL, hidden, str(out)],
        ["vol-delete", "--pool", RBD_POOL, hidden],
        ["vol-wipe", "--pool", RBD_POOL, hidden],
    ):
        refused = run_virsh(uri, *command, check=False)
        assert refused.returncode != 0, command
        assert "Storage volume not found" in refused.stderr, command
    assert hidden in images(ceph)
    ceph.rbd("rm", f"{CEPH_POOL}/{hidden}")


def test_whole_upload_refused_while_a_guest_uses_the_image(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """An image open for writing elsewhere (a running guest) would go on being written
    under the hidden name the swap gives it, which Ceph then refuses to remove."""
    uri, name = rbd_virtvold.tcp_uri, volume_name("guest")
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "1M")
    source = tmp_path / "source"
    source.write_bytes(os.urandom(MIB))
    guest = RbdVolumes.connect(
        RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin"),
        base64.b64decode(ceph.admin_key),
    )
    try:
        with guest.image(name):
            refused = run_virsh(
                uri, "vol-upload", "--pool", RBD_POOL, name, str(source), check=False
            )
            assert refused.returncode != 0
            assert f"volume '{name}' is still in use" in refused.stderr
            assert [n for n in images(ceph) if n.startswith(".virtvol-")] == []
    finally:
        guest.close()
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(source))
    assert exported(ceph, name, tmp_path) == source.read_bytes()


def test_whole_upload_keeps_the_image_meta(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """Key/values set with ``rbd image-meta`` (by users and other tools) stay with the
    volume through a whole-volume upload, as through libvirtd's in-place one."""
    uri, name = rbd_virtvold.tcp_uri, volume_name("meta")
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "1M")
    ceph.rbd("image-meta", "set", f"{CEPH_POOL}/{name}", "owner", "team blue")
    ceph.rbd("image-meta", "set", f"{CEPH_POOL}/{name}", "conf_rbd_cache", "false")
    new = tmp_path / "new"
    new.write_bytes(os.urandom(2 * MIB))
    run_virsh(uri, "vol-upload", "--pool", RBD_POOL, name, str(new))
    assert exported(ceph, name, tmp_path) == new.read_bytes()
    listed = ceph.rbd("image-meta", "list", "--format", "json", f"{CEPH_POOL}/{name}")
    assert json.loads(listed) == {"owner": "team blue", "conf_rbd_cache": "false"}


def test_an_image_uploaded_to_in_place_is_no_clone_source(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    # As in a directory pool: an upload with a length writes the image in place.
    uri, name, clone = rbd_virtvold.tcp_uri, volume_name("written"), volume_name("copy")
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "2M")
    assert_no_clone_while_written_in_place(
        uri, RBD_POOL, name, clone, tmp_path / "fifo", lambda: exported(ceph, name, tmp_path)
    )
    assert clone not in images(ceph)
    run_virsh(uri, "vol-clone", "--pool", RBD_POOL, name, clone)  # free once it is done
    assert exported(ceph, clone, tmp_path) == b"n" * 2 * MIB


def test_sizes_past_librbds_object_arithmetic_are_refused(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """librbd takes an image size up to 2^64 - 1, but counts its objects with an overflow
    past 2^64 minus one object: such an image aborts the process that later walks its
    object map (vol-info, a download), every daemon of the Ceph pool. Growing an image
    there, by a resize or by writing at an offset, is refused, and nothing changes."""
    uri, name = rbd_virtvold.tcp_uri, volume_name("huge")
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "1M")
    huge = str((1 << 64) - 1)
    grown = run_virsh(uri, "vol-resize", "--pool", RBD_POOL, name, huge, check=False)
    assert grown.returncode == 1
    assert "File too large" in grown.stderr
    patch = tmp_path / "patch"
    patch.write_bytes(b"far")
    written = run_virsh(
        uri, "vol-upload", "--pool", RBD_POOL, name, str(patch),
        "--offset", str((1 << 64) - 3), check=False,
    )  # fmt: skip
    assert written.returncode == 1
    assert "File too large" in written.stderr
    assert image_size(ceph, name) == MIB
    info = run_virsh(uri, "vol-info", "--pool", RBD_POOL, name, "--bytes")  # still answering
    assert re.search(r"Capacity:\s+1048576 bytes", info.stdout), info.stdout


def test_an_image_too_large_for_librbd_made_elsewhere_is_answered_safely(
    rbd_virtvold: Virtvold, ceph: CephCluster, tmp_path: Path
) -> None:
    """An image another Ceph client made of 2^64 - 1 bytes (librbd takes it) is listed
    with its allocation unknown (the capacity, as libvirt reports an image without a
    usable object map), refused for downloads and wipes, and can be deleted."""
    uri, name = rbd_virtvold.tcp_uri, volume_name("huge")
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "1M")
    source = RbdSource(CEPH_POOL, (("127.0.0.1", ceph.port),), "admin")
    elsewhere = RbdVolumes.connect(source, base64.b64decode(ceph.admin_key))
    try:
        with elsewhere.image(name) as image:
            image.resize((1 << 64) - 1)
    finally:
        elsewhere.close()
    listed = run_virsh(uri, "vol-list", "--details", RBD_POOL)
    assert name in listed.stdout
    target = tmp_path / "out"
    read = run_virsh(
        uri, "vol-download", "--pool", RBD_POOL, name, str(target), "--sparse", check=False
    )
    assert read.returncode == 1
    assert "File too large" in read.stderr
    wiped = run_virsh(uri, "vol-wipe", "--pool", RBD_POOL, name, check=False)
    assert wiped.returncode == 1
    assert "File too large" in wiped.stderr
    run_virsh(uri, "vol-delete", "--pool", RBD_POOL, name)
    assert name not in images(ceph)


def test_vol_delete_with_snapshots_as_libvirts_rbd_backend(
    rbd_virtvold: Virtvold, ceph: CephCluster
) -> None:
    """libvirt's rbd backend takes ``vol-delete --delete-snapshots``: it unprotects and
    removes the volume's snapshots, then the volume. Without the flag Ceph refuses to
    remove an image with snapshots; one a clone depends on stays protected."""
    uri, name, clone = rbd_virtvold.tcp_uri, volume_name("snaps"), volume_name("child")
    run_virsh(uri, "vol-create-as", RBD_POOL, name, "1M")
    for snapshot in ("one", "two"):
        ceph.rbd("snap", "create", f"{CEPH_POOL}/{name}@{snapshot}")
    ceph.rbd("snap", "protect", f"{CEPH_POOL}/{name}@two")
    plain = run_virsh(uri, "vol-delete", "--pool", RBD_POOL, name, check=False)
    assert plain.returncode == 1
    assert f"failed to remove volume '{CEPH_POOL}/{name}'" in plain.stderr
    ceph.rbd("clone", f"{CEPH_POOL}/{name}@two", f"{CEPH_POOL}/{clone}")
    held = run_virsh(uri, "vol-delete", "--pool", RBD_POOL, name, "--delete-snapshots", check=False)
    assert held.returncode == 1
    assert f"failed to unprotect snapshot '{CEPH_POOL}/{name}@two'" in held.stderr
    assert name in images(ceph)
    run_virsh(uri, "vol-delete", "--pool", RBD_POOL, clone)
    run_virsh(uri, "vol-delete", "--pool", RBD_POOL, name, "--delete-snapshots")
    assert name not in images(ceph)
