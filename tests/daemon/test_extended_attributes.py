"""A volume's or a downloaded file's extended attributes survive an atomic replacement as
they survive libvirtd's and virsh's writes in place.

What must survive comes from the real peers doing the same: libvirtd 9.0 receiving the
same upload into its pool, virsh 9.0 downloading over an existing file.
"""

from __future__ import annotations

import os
import struct
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.client.test_cli_spellings import _COMMAND as VIRTVOL
from tests.client.test_cli_spellings import run_virtvol
from tests.conftest import NOBODY, POOL_NAME, run_virsh

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd, Virtvold

# A file capability (CAP_NET_RAW, effective) as the kernel stores it (VFS_CAP_REVISION_2).
CAP_NET_RAW = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)


def attributes_to_set() -> dict[str, bytes]:
    """Attributes of every kind this process may set: users' and tools' ``user.*`` ones
    (any bytes), and as root a ``trusted.*`` one, an SELinux label and a file capability."""
    attributes = {"user.backup.id": b"2026-12-01T05:00", "user.note": b"\0any \xff bytes"}
    if os.geteuid() == 0:
        attributes["trusted.tag"] = b"golden"
        attributes["security.selinux"] = b"system_u:object_r:svirt_image_t:s0:c12,c34\0"
        attributes["security.capability"] = CAP_NET_RAW
    return attributes


def give(path: Path, attributes: dict[str, bytes]) -> None:
    for name, value in attributes.items():
        os.setxattr(path, name, value)


def attributes_of(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in os.listxattr(path)}


def upload_by_each_client(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd, image: Path
) -> None:
    """The same whole upload of ``image`` by each client: virsh into libvirtd's volume
    "v", virsh and virtvol into virtvold's "by-virsh" and "by-virtvol"."""
    run_virsh(reference_libvirtd.tcp_uri, "vol-upload", "--pool", POOL_NAME, "v", str(image))
    run_virsh(virtvold.tcp_uri, "vol-upload", "--pool", POOL_NAME, "by-virsh", str(image))
    uploaded = run_virtvol(
        "-c", virtvold.tcp_uri, "vol-upload", "--pool", POOL_NAME, "by-virtvol", str(image)
    )
    assert uploaded.returncode == 0, uploaded.stderr


def test_a_whole_upload_keeps_what_libvirtds_keeps(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    image = tmp_path / "image"
    image.write_bytes(os.urandom(200_000))
    attributes = attributes_to_set()
    run_virsh(reference_libvirtd.tcp_uri, "vol-create-as", POOL_NAME, "v", "1M")
    for name in ("by-virsh", "by-virtvol"):
        run_virsh(virtvold.tcp_uri, "vol-create-as", POOL_NAME, name, "1M")
        give(virtvold.pool_dir / name, attributes)
    give(reference_libvirtd.pool_dir / "v", attributes)

    upload_by_each_client(virtvold, reference_libvirtd, image)

    expected = attributes_of(reference_libvirtd.pool_dir / "v")
    # What libvirtd's in-place write did, as this test reads it: all kept but the file
    # capability, which the kernel removes from a file written to.
    assert expected == {k: v for k, v in attributes.items() if k != "security.capability"}
    for name in ("by-virsh", "by-virtvol"):
        volume = virtvold.pool_dir / name
        assert volume.read_bytes()[: len(image.read_bytes())] == image.read_bytes()
        assert attributes_of(volume) == expected, name
    assert sorted(os.listdir(virtvold.pool_dir)) == ["by-virsh", "by-virtvol"]


# An empty volume: nothing is written into the replacement, so no write removes a file
# capability from it either; it must not be given one.
@pytest.mark.parametrize("size", [200_000, 0], ids=["data", "empty"])
def test_a_download_over_a_file_keeps_what_virshs_keeps(
    virtvold: Virtvold, tmp_path: Path, size: int
) -> None:
    (virtvold.pool_dir / "v").write_bytes(os.urandom(size))
    attributes = attributes_to_set()
    theirs, ours = tmp_path / "by-virsh", tmp_path / "by-virtvol"
    for path in (theirs, ours):
        path.write_bytes(b"old content")
        give(path, attributes)

    run_virsh(virtvold.tcp_uri, "vol-download", "--pool", POOL_NAME, "v", str(theirs))
    downloaded = run_virtvol(
        "-c", virtvold.tcp_uri, "vol-download", "--pool", POOL_NAME, "v", str(ours)
    )
    assert downloaded.returncode == 0, downloaded.stderr

    assert ours.read_bytes() == theirs.read_bytes() == (virtvold.pool_dir / "v").read_bytes()
    expected = attributes_of(theirs)
    # What virsh's write in place (O_TRUNC) did, as this test reads it.
    assert expected == {k: v for k, v in attributes.items() if k != "security.capability"}
    assert attributes_of(ours) == expected
    assert sorted(os.listdir(tmp_path)) == ["by-virsh", "by-virtvol", "virtvold"]


# A Smack label (Smack's counterpart of the SELinux label): giving one takes CAP_MAC_ADMIN
# on a Smack host, and CAP_SYS_ADMIN where no security module claims it, as here. On an
# SELinux host the SELinux label is refused alike, without the policy's relabel permission.
LABEL = ("security.SMACK64", b"vm-disk")


def labelled_file(path: Path, content: bytes) -> None:
    """``content`` in a file of ``nobody``'s, labelled (``LABEL``), with a user's note."""
    path.write_bytes(content)
    os.chown(path, NOBODY, NOBODY)
    os.setxattr(path, *LABEL)
    os.setxattr(path, "user.note", b"golden")


def test_a_download_that_cannot_keep_the_label_leaves_the_file(
    virtvold: Virtvold, nobodys_folder: Path
) -> None:
    """``nobody`` downloading over its own labelled file: the replacement cannot get the
    label, so the download is refused before the stream opens and the file stays as it
    was (virsh, writing in place, would keep the label; dropping it is not an option)."""
    (virtvold.pool_dir / "v").write_bytes(b"new content")
    target = nobodys_folder / "copy"
    labelled_file(target, b"old content")
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    download = ["vol-download", "--pool", POOL_NAME, "v", str(target)]
    # Coverage data files go where the tests' user writes, not nobody.
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}
    done = subprocess.run(
        [*as_nobody, *VIRTVOL, "-c", virtvold.tcp_uri, *download],
        capture_output=True,
        text=True,
        env={**env, "LC_ALL": "C", "HOME": "/nonexistent"},  # nobody's, as passwd says
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert (done.returncode, done.stderr) == (
        1,
        f"error: cannot create {target}\n"
        f"error: cannot keep extended attribute '{LABEL[0]}': Operation not permitted\n",
    )
    assert target.read_bytes() == b"old content"
    assert attributes_of(target) == {LABEL[0]: LABEL[1], "user.note": b"golden"}
    assert os.listdir(nobodys_folder) == ["copy"]


def test_a_download_over_a_file_the_user_may_write_but_not_read_keeps_its_attributes(
    virtvold: Virtvold, nobodys_folder: Path
) -> None:
    """``nobody`` downloading over its own write-only file (mode 0200) that carries a
    ``user.*`` attribute: reading that attribute takes read permission, so no replacement
    could be given it. The file is written in place, as virsh writes it, and keeps it."""
    (virtvold.pool_dir / "v").write_bytes(b"new content")
    results = {}
    for name in ("by-virsh", "by-virtvol"):
        target = nobodys_folder / name
        target.write_bytes(b"old content, longer than the new")
        os.chown(target, NOBODY, NOBODY)
        os.setxattr(target, "user.note", b"golden")
        target.chmod(0o200)
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}
    for name, program in (("by-virsh", ["virsh"]), ("by-virtvol", VIRTVOL)):
        download = ["vol-download", "--pool", POOL_NAME, "v", str(nobodys_folder / name)]
        results[name] = subprocess.run(
            [*as_nobody, *program, "-c", virtvold.tcp_uri, *download],
            capture_output=True,
            text=True,
            env={**env, "LC_ALL": "C", "HOME": "/nonexistent"},
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
            cwd="/",
        )
    assert results["by-virsh"].returncode == 0, results["by-virsh"].stderr
    assert results["by-virtvol"].returncode == 0, results["by-virtvol"].stderr
    for name in ("by-virsh", "by-virtvol"):
        target = nobodys_folder / name
        assert target.read_bytes() == b"new content", name
        assert attributes_of(target) == {"user.note": b"golden"}, name
        assert target.stat().st_mode & 0o777 == 0o200, name
    assert sorted(os.listdir(nobodys_folder)) == ["by-virsh", "by-virtvol"]
