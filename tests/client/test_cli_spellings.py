"""Every spelling virsh 9.0 takes for virtvol's commands, and its refusals, compared with
virsh itself: the same words to both against one real libvirtd, the same stdout, stderr
and exit status. Also ``--quiet``, ``help`` and the download destination check."""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.client.fake_peer import FakePeer
from tests.client.helpers import MIB, leftovers
from tests.conftest import ReferenceLibvirtd, Virtvold, free_port, run_virsh
from virtvol.client import cli, direct
from virtvol.client.errors import TransportError
from virtvol.protocol import remote as r
from virtvol.protocol.connection import CallReceived, PingReceived
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from collections.abc import Callable

    from virtvol.client.connection import Connection

pytestmark = pytest.mark.interop

_COMMAND = [sys.executable, "-c", "from virtvol.client.cli import main; raise SystemExit(main())"]


def run_in_c_locale(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the C locale (the words of virsh's messages), no input."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=dict(os.environ, LC_ALL="C"),
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def run_virtvol(*args: str) -> subprocess.CompletedProcess[str]:
    return run_in_c_locale([*_COMMAND, *args])


def _mask_pool_sizes(text: str) -> str:
    """A pool's allocation and free space move between two runs (the host's disk is
    shared); only those figures are masked."""
    text = re.sub(r"(Allocation|Available):( +)\d{7,}", r"\1:\2<bytes>", text)
    return re.sub(r"\d+\.\d\d [KMGTPE]iB", "<size>", text)


def same(ours: subprocess.CompletedProcess[str], theirs: subprocess.CompletedProcess[str]) -> None:
    assert (_mask_pool_sizes(ours.stdout), ours.stderr, ours.returncode) == (
        _mask_pool_sizes(theirs.stdout),
        theirs.stderr,
        theirs.returncode,
    ), ours.args


def both(uri: str, *args: str) -> tuple[str, str, int]:
    """Run ``args`` with virsh, then virtvol; assert they answered alike; return virsh's."""
    theirs = run_virsh(uri, *args, check=False)
    ours = run_virtvol("-c", uri, *args)
    if any(a.startswith("pool-") for a in args):
        same(ours, theirs)
    else:
        assert (ours.stdout, ours.stderr, ours.returncode) == (
            theirs.stdout,
            theirs.stderr,
            theirs.returncode,
        ), args
    return theirs.stdout, theirs.stderr, theirs.returncode


# What ``{}`` becomes in the names virsh's run and virtvol's run change (``both_changing``).
VIRSH_TAG = "A"
VIRTVOL_TAG = "B"


def both_changing(uri: str, *template: str) -> None:
    """A command that changes something: virsh acts on names ending in "-A", virtvol on
    the same names ending in "-B"; their answers must match once the names are swapped.
    The tags are capitals: the peers' messages also name temporary folders, whose random
    names (``tempfile``'s) are lower case and may hold "-a" or "-b"."""
    theirs = run_virsh(uri, *(w.replace("{}", VIRSH_TAG) for w in template), check=False)
    ours = run_virtvol("-c", uri, *(w.replace("{}", VIRTVOL_TAG) for w in template))
    assert ours.returncode == theirs.returncode, (template, theirs.stderr, ours.stderr)
    ours_as_theirs = (f"-{VIRTVOL_TAG}", f"-{VIRSH_TAG}")
    assert ours.stdout.replace(*ours_as_theirs) == theirs.stdout, template
    assert ours.stderr.replace(*ours_as_theirs) == theirs.stderr, template


def test_spellings_match_virsh(reference_libvirtd: ReferenceLibvirtd, tmp_path: Path) -> None:
    uri = reference_libvirtd.tcp_uri
    run_virsh(uri, "vol-create-as", "default", "v1", "1M", "--allocation", "0")
    for args in (
        # Positional, --opt value and --opt=value, the pool as a second positional.
        ["vol-info", "v1", "default"],
        ["vol-info", "--vol", "v1", "--pool", "default"],
        ["vol-info", "--vol=v1", "--pool=default", "--bytes"],
        ["vol-info", "--pool", "default", "v1", "--physical"],
        ["vol-info", "v1", "--", "default"],
        ["vol-path", "v1", "default"],
        ["vol-key", "--vol", "v1", "--pool", "default"],
        ["vol-dumpxml", "v1", "default"],
        ["vol-list", "--pool", "default"],
        ["vol-list", "--pool=default", "--details"],
        ["pool-info", "--pool", "default"],
        ["pool-info", "--pool=default", "--bytes"],
        ["pool-dumpxml", "--pool", "default", "--inactive"],
        ["pool-list", "--name"],
        ["pool-list", "--uuid"],
        ["pool-list", "--uuid", "--name", "--all"],
        ["pool-list", "--persistent", "--autostart"],
        ["pool-list", "--no-autostart", "--type", "dir,fs", "--details"],
        ["vol-create-as", "default", "x", "1M", "0", "qcow2", "--print-xml"],
        [
            "vol-create-as",
            "default",
            "x",
            "1M",
            "--format",
            "qcow2",
            "--backing-vol",
            "v1",
            "--backing-vol-format",
            "raw",
            "--print-xml",
        ],
        [
            "vol-create-as",
            "default",
            "x",
            "1M",
            "--backing-vol",
            str(reference_libvirtd.pool_dir / "v1"),
            "--print-xml",
        ],
        ["vol-create-as", "default", "x", "1M", "--backing-vol", "nope", "--print-xml"],
        ["vol-clone", "v1", "w", "default", "--print-xml"],
        ["-q", "vol-clone", "--vol", "v1", "--newname", "w", "--pool", "default", "--print-xml"],
        # The new name is put in as libxml2's xmlNodeSetContent reads it: references stand
        # for what they name; a "&" without a ";" empties it, which the daemon refuses.
        ["vol-clone", "v1", "a&amp;b&#65;&#x42;&lt;&foo;>", "default", "--print-xml"],
        ["vol-clone", "v1", "x&y", "default"],
        ["vol-clone", "v1", "&", "default", "--print-xml"],
        ["vol-create-as", "default", "x", "1M", "--backing-vol-format", "raw", "--print-xml"],
        [
            "pool-define-as",
            "p",
            "netfs",
            "--source-host",
            "h",
            "--source-path",
            "/e",
            "--source-format",
            "nfs",
            "--target",
            "/x",
            "--print-xml",
        ],
        [
            "pool-define-as",
            "--name",
            "p",
            "--type",
            "logical",
            "--source-dev",
            "/dev/sdb",
            "--source-name",
            "vg",
            "--print-xml",
        ],
        [
            "pool-define-as",
            "p",
            "iscsi",
            "--source-host",
            "h",
            "--source-path",
            "/e",
            "--source-dev",
            "/dev/x",
            "--source-name",
            "n",
            "--target",
            "/t",
            "--source-format",
            "f",
            "--auth-type",
            "chap",
            "--auth-username",
            "u",
            "--secret-usage",
            "su",
            "--adapter-name",
            "an",
            "--adapter-wwnn",
            "1",
            "--adapter-wwpn",
            "2",
            "--adapter-parent",
            "ap",
            "--source-protocol-ver",
            "3",
            "--source-initiator",
            "iqn.x",
            "--print-xml",
        ],
        [
            "pool-create-as",
            "p",
            "iscsi",
            "--auth-type",
            "chap",
            "--auth-username",
            "u",
            "--secret-uuid",
            "8",
            "--adapter-name",
            "an",
            "--print-xml",
        ],
        [
            "pool-define-as",
            "p",
            "scsi",
            "--adapter-wwnn",
            "1",
            "--adapter-wwpn",
            "2",
            "--adapter-parent-wwnn",
            "5",
            "--adapter-parent-wwpn",
            "6",
            "--adapter-parent-fabric-wwn",
            "7",
            "--print-xml",
        ],
        [
            "pool-define-as",
            "p",
            "scsi",
            "--adapter-wwnn",
            "1",
            "--adapter-wwpn",
            "2",
            "--adapter-parent-fabric-wwn",
            "7",
            "--print-xml",
        ],
        [
            "pool-define-as",
            "p",
            "iscsi",
            "--auth-type",
            "chap",
            "--adapter-wwnn",
            "1",
            "--source-protocol-ver",
            "4",
            "--print-xml",
        ],
        ["pool-define-as", "p", "iscsi", "--secret-usage", "a", "--secret-uuid", "b"],
        # Values go into the XML as given, unescaped, as virsh writes them: the daemon's
        # XML parser then refuses what breaks the document.
        ["pool-define-as", "a&b", "dir", "--target", "/t<x", "--source-host", "h'", "--print-xml"],
        ["pool-create-as", "a'b", "dir", "--target", "/t&amp;u", "--print-xml"],
        ["pool-define-as", "a&b", "dir", "--target", "/t"],
        ["vol-create-as", "default", "a&b", "1M", "--format", "q<", "--print-xml"],
        [
            "vol-create-as",
            "default",
            "x",
            "1M",
            "--backing-vol",
            "v1",
            "--backing-vol-format",
            "r&",
        ],
        ["vol-create-as", "default", "a&b", "1M"],
        # The refusals, word for word.
        ["vol-info"],
        ["vol-info", "v1", "default", "extra"],
        ["vol-info", "v1", "--po", "default"],
        ["vol-info", "v1", "--bytes=1"],
        ["vol-info", "--vol", "v1", "--vol", "v1"],
        ["vol-info", "v1", "--pool"],
        ["vol-info", "v1", "--quiet-not"],
        ["vol-info", "--pool", "--bytes", "v1"],  # a value may look like an option
        ["vol-info", "v1", "-q"],  # after the command, -q is a word like any other
        ["pool-list", "--all", "--inactive"],
        ["pool-list", "--details", "--name"],
        ["pool-list", "--type", "bogus"],
        # Types are read as virsh reads lists: ",," is a comma within an item.
        ["pool-list", "--type", "dir,,fs"],
        ["pool-list", "--type", "dir,,,fs"],
        ["pool-list", "--type", ",,"],
        ["pool-list", "--type", "dir,", "--all"],
        # Both of a pair of filters is no filter, not a refusal.
        ["pool-list", "--all", "--persistent", "--transient"],
        ["pool-list", "--inactive", "--autostart", "--no-autostart", "--details"],
        # An empty value virsh reads after the volume's lookup: a missing volume first.
        ["vol-resize", "nope", "", "default"],
        ["vol-resize", "nope", "-1M", "default"],
        ["vol-resize", "nope", "5X", "default"],
        ["vol-resize", "v1", "", "default"],
        ["vol-upload", "nope", "", "default"],
        ["vol-upload", "v1", "", "default"],
        ["vol-download", "nope", "", "default"],
        ["vol-download", "v1", "", "default"],
        ["vol-wipe", "nope", "default", "--algorithm", ""],
        ["vol-wipe", "v1", "default", "--algorithm", ""],
        ["vol-clone", "nope", "", "default"],
        ["vol-clone", "v1", "", "default"],
        ["pool-start", "default", "--overwrite", "--no-overwrite"],
        ["vol-create-as", "default", "x", "1X"],
        ["vol-create-as", "default", "x", "abc"],
        ["vol-create-as", "default", "x", "1M", "--allocation", "2Q"],
        # An empty allocation is no allocation (virsh reads it quietly), not a bad size.
        ["vol-create-as", "default", "x", "1M", "--allocation", "", "--print-xml"],
        # libvirt's scaled integers: strtoull's number, then the suffix straight after it.
        ["vol-create-as", "default", "x", "1 M"],
        ["vol-create-as", "default", "x", "1M "],
        ["vol-create-as", "default", "x", "1.5M"],
        ["vol-create-as", "default", "x", "0x10"],
        ["vol-create-as", "default", "x", "16E"],
        ["vol-create-as", "default", "x", "-1"],
        ["vol-create-as", "default", "x", "+-1M"],
        ["vol-create-as", "default", "x", " +1M", "--print-xml"],
        ["vol-download", "v1", str(tmp_path / "o"), "--pool", "default", "--offset", "1Q"],
        # strtoull's rules: a value past 64 bits is refused (a "+" in front is taken: below).
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--offset", "18446744073709551616"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--length", "++1"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--offset", "+-1"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--offset", "+ 1"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--length", "1 "],
        # A length may be negative, counted back from 2**64 (an offset may not).
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--offset", "-1"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--length", "-+1"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--length", "-1M"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--length", "-18446744073709551616"],
        ["vol-upload", "--vol", "v1", "--file", str(tmp_path / "none"), "--pool", "default"],
        # Lookups by key or path, by name only, by UUID only.
        ["vol-name", str(reference_libvirtd.pool_dir / "v1")],
        ["vol-name", "v1"],
        ["vol-name", "v1", "--pool", "default"],
        ["vol-pool", str(reference_libvirtd.pool_dir / "v1")],
        ["vol-pool", "--vol", str(reference_libvirtd.pool_dir / "v1"), "--uuid"],
        ["vol-pool", "nope"],
        ["vol-pool"],
        ["pool-uuid", "default"],
        ["pool-uuid", "nope"],
        ["pool-name", "default"],
        ["pool-name", "00000000-0000-0000-0000-000000000000"],
        ["pool-name", "default", "extra"],
        ["nosuch"],
        ["help", "nosuch"],
    ):
        both(uri, *args)
    # Quiet: no headers, no notices, no blank line after the output.
    for args in (
        ["pool-list"],
        ["pool-list", "--details"],
        ["vol-list", "default", "--details"],
        ["vol-info", "v1", "default"],
        ["vol-path", "v1", "--pool", "default"],
        ["vol-info", "nope", "default"],
        ["pool-refresh", "default"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--offset", "+4096"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--length", " +1"],
        ["vol-upload", "v1", str(tmp_path / "o"), "default", "--length", "-2"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--length", "-1"],
        ["vol-download", "v1", str(tmp_path / "o"), "default", "--length", "-0"],
        [
            "vol-download",
            "v1",
            str(tmp_path / "o"),
            "default",
            "--length",
            " -18446744073709551615",
        ],
    ):
        both(uri, "-q", *args)
    assert (tmp_path / "o").stat().st_size == 1  # the last download's length: 1
    assert both(uri, "-q", "vol-list", "default")[0].startswith(" v1 ")
    uuid = both(uri, "pool-uuid", "default")[0].strip()
    assert both(uri, "pool-name", uuid)[0] == "default\n\n"
    assert both(uri, "pool-uuid", uuid)[2] == 1  # by name only


@pytest.mark.parametrize(
    "command",
    [
        [b"vol-info", b"nx\xff", b"--pool", b"default"],
        [b"vol-download", b"--pool", b"default", b"missing", b"no\xffdir/copy"],
    ],
    ids=["daemon-error", "local-error"],
)
def test_bytes_that_are_not_utf8_come_back_as_they_went_in(
    virtvold: Virtvold, command: list[bytes]
) -> None:
    """A name in another encoding is written back in the error lines byte for byte, as
    virsh writes it, not as Python's escape of it (``\\udcff``)."""
    virsh = shutil.which("virsh")
    assert virsh is not None
    if command[0] == b"vol-download":
        (virtvold.pool_dir / "missing").write_bytes(b"data")
    argv = [b"-c", virtvold.tcp_uri.encode(), *command]
    runs = [
        subprocess.run(
            [*program, *argv],
            capture_output=True,
            env=dict(os.environ, LC_ALL="C"),
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        for program in (_COMMAND, [virsh])
    ]
    ours, theirs = runs
    assert ours.returncode == theirs.returncode == 1
    assert b"\xff" in theirs.stderr, theirs.stderr
    assert ours.stderr == theirs.stderr


def test_pool_uuids_are_read_as_virsh_reads_them(reference_libvirtd: ReferenceLibvirtd) -> None:
    """virsh takes a pool argument of 36 bytes for a UUID and reads it as libvirt does:
    hex pairs with "-" or " " between any of them and blanks around; braces or a
    "urn:uuid:" prefix, which Python's uuid module takes, make none."""
    uri = reference_libvirtd.tcp_uri
    uuid = run_virsh(uri, "pool-uuid", "default").stdout.strip()
    digits = uuid.replace("-", "")
    for text in (
        uuid,
        uuid.upper(),
        uuid.replace("-", " "),  # found by virsh, not by virtvol
        f"  {digits[:12]}-{digits[12:20]}-{digits[20:]}",
        f"\t{digits[:2]}---{digits[2:]} ",
        digits,  # no UUID's length: pool-name fails, virtvol's found the pool
        f"{{{uuid}}}",
        f"urn:uuid:{uuid}",
        f"{uuid}-",
        f"-{digits}---",  # a UUID's length, not one: libvirt's own refusal
    ):
        for command in ("pool-name", "pool-info"):
            both(uri, command, text)


def test_changing_spellings_match_virsh(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    uri = reference_libvirtd.tcp_uri
    source = tmp_path / "data.bin"
    source.write_bytes(b"x" * 5000)
    for template in (
        ["vol-create-as", "--pool", "default", "--name", "n-{}", "--capacity", "1M"],
        ["vol-create-as", "default", "q-{}", "1M", "--format", "qcow2", "--prealloc-metadata"],
        ["vol-create-as", "default", "r-{}", "1M", "--prealloc-metadata"],  # raw: refused
        # Quiet: virtvol's summary line would be the only difference.
        ["-q", "vol-upload", "--vol", "n-{}", "--file", str(source), "--pool", "default"],
        [
            "-q",
            "vol-upload",
            "n-{}",
            str(source),
            "default",
            "--offset",
            "4096",
            "--length",
            "5000",
        ],
        ["-q", "vol-download", "--vol", "n-{}", "--file", str(tmp_path / "out-{}"), "default"],
        ["vol-create-as", "default", "k-{}", "1M", "--backing-vol", "n-{}", "--format", "qcow2"],
        ["vol-resize", "--vol", "n-{}", "--capacity", "2M", "--pool", "default"],
        # A "+" is a sign, not a growth: "+1M" asks for 1M, a shrink, refused.
        ["vol-resize", "n-{}", "+1M", "default"],
        ["vol-resize", "n-{}", " +3M", "default"],
        ["vol-resize", "n-{}", "+1M", "default", "--delta"],
        ["vol-resize", "n-{}", "-1M", "default", "--shrink"],
        ["vol-resize", "n-{}", "-1M", "default"],
        ["vol-resize", "n-{}", "-5X", "default", "--shrink"],
        ["vol-resize", "n-{}", "+5X", "default"],
        ["vol-info", "n-{}", "default", "--bytes"],
        ["vol-clone", "--vol", "n-{}", "--newname", "c-{}", "--pool", "default"],
        ["vol-clone", "n-{}", "x&lt;-{}", "default"],  # said as the daemon named it
        ["vol-delete", "x<-{}", "default"],
        ["vol-wipe", "c-{}", "default", "--algorithm", "zero"],
        ["vol-delete", "c-{}", "default"],
        ["vol-delete", "--vol", "n-{}", "--pool", "default"],
        ["-q", "vol-create-as", "default", "s-{}", "1M"],
        ["vol-create-as", "default", "e-{}", "1M", "--allocation", ""],
        ["vol-info", "e-{}", "default", "--bytes"],
        ["-q", "vol-delete", "s-{}", "default"],
        ["pool-define-as", "--name", "p-{}", "--type", "dir", "--target", f"{tmp_path}/p-{{}}"],
        ["pool-autostart", "--pool", "p-{}"],
        ["pool-autostart", "p-{}", "--disable"],
        ["-q", "pool-undefine", "--pool", "p-{}"],
    ):
        both_changing(uri, *template)
    assert (tmp_path / f"out-{VIRSH_TAG}").read_bytes() == (
        tmp_path / f"out-{VIRTVOL_TAG}"
    ).read_bytes()


@pytest.mark.parametrize(
    "address",
    [
        "no-such-host.invalid:16599",  # no such name
        "a..b",  # a name no resolver takes (it used to end in a UnicodeError traceback)
        "127.0.0.1:{port}",  # nobody listening
        # The host as written, its escapes undone.
        "LocalHost:{port}",
        "local%68ost:{port}",
        "h%C3%A9:{port}",
        # Brackets go only from around a host with a colon; libvirt's parser takes any
        # host in brackets, and the resolver is then asked for it as it stands.
        "[127.0.0.1]:{port}",
        "u@[no-such-host.invalid]:{port}",
        "[no:such:host]:{port}",
        "[]:{port}",
    ],
)
def test_a_daemon_out_of_reach_is_reported_in_virshs_words(address: str) -> None:
    uri = f"storage+tcp://{address.format(port=free_port())}/system"
    _, err, code = both(uri, "pool-list")
    assert err.startswith("error: failed to connect to the hypervisor\nerror: "), err
    assert code == 1


@pytest.mark.parametrize(
    "uri",
    [
        "nothing",
        "storage+bogus://h/system",
        "storage+unix://h/system",
        "storage+tcp://h:-1/system",
        "storage+tcp://h:/system",
        "storage+tcp://h/sys tem",
        "storage+tcp://h/sys%zz",
        "storage+tcp://[::1/system",
        "storage+tcp://h/\u00e9",
        # Brackets belong to an IPv6 host (or a fragment) only; one "#" starts the
        # fragment; "//" makes an authority only right after the scheme.
        "storage+tcp://h/system?a=[1]",
        "storage+tcp://h/[x]/system",
        "storage+tcp://h/sys#a#b",
        "storage:/system?x=a://[::1]/",
        "storage+unix://Ho%73t/system",
        # One user, and an IPv6 host in brackets as the whole host.
        "storage+tcp://u@h@h2:1/system",
        "storage+tcp://[::1]x/system",
        "storage+tcp://[::1]]/system",
        "storage+tcp://x[::1]/system",
        # The remote driver's own parameters: integers as C reads them, every one of
        # them, the name as written; known modes and proxies only.
        "storage+tcp://h/system?No_Verify=x",
        "storage+tcp://h/system?no_tty=1_0",
        "storage+tcp://h/system?no_verify=1&NO_SANITY=99999999999",
        "storage+tcp://h/system?no_verify=x&no_verify=1",
        "storage+tcp://h/system?no_verify=1%20",
        "storage+unix:///system?socket=/nonexistent&mode=bogus",
        "storage+tcp://h/system?proxy=bogus",
    ],
)
def test_a_uri_libvirt_refuses_is_refused_in_virshs_words(uri: str) -> None:
    _, err, code = both(uri, "pool-list")
    assert err.startswith("error: failed to connect to the hypervisor\nerror: "), err
    assert code == 1


def test_download_onto_a_directory_is_refused_at_once(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    uri = reference_libvirtd.tcp_uri
    run_virsh(uri, "vol-create-as", "default", "big", "1G", "--allocation", "0")
    folder = tmp_path / "adir"
    folder.mkdir()
    for target in (str(folder), str(folder) + "/", str(tmp_path / "missing" / "x")):
        _, err, code = both(uri, "vol-download", "big", target, "--pool", "default")
        assert (err, code) == (f"error: cannot create {target}\n", 1)
    # Nothing was transferred: no temporary file was ever made next to the target.
    assert list(folder.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["adir"]


def _limited_to_a_mebibyte(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` unable to grow a file past 1 MiB: a write beyond fails with EFBIG
    (SIGXFSZ ignored, which subprocess would restore)."""
    return run_in_c_locale(
        ["bash", "-c", 'trap "" XFSZ; ulimit -f 1024; exec "$@"', "limited", *argv]
    )


def test_a_download_the_disk_refuses_fails_in_virshs_words(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    uri = reference_libvirtd.tcp_uri
    source = tmp_path / "data.img"
    source.write_bytes(os.urandom(4 * MIB))
    run_virsh(uri, "vol-create-as", "default", "unwritable", "4M")
    run_virsh(uri, "vol-upload", "unwritable", str(source), "--pool", "default")
    target = tmp_path / "out.img"
    download = ["-c", uri, "vol-download", "unwritable", str(target), "--pool", "default"]
    try:
        for mode in ([], ["--sparse"]):
            theirs = _limited_to_a_mebibyte("virsh", *download, *mode)
            ours = _limited_to_a_mebibyte(*_COMMAND, *download, *mode)
            expected = (
                "error: cannot receive data from volume unwritable\n"
                "error: recv handler failed: File too large\n"
            )
            assert (theirs.stderr, theirs.returncode) == (expected, 1)
            assert (ours.stdout, ours.stderr, ours.returncode) == (theirs.stdout, expected, 1)
            assert leftovers(tmp_path, target.name) == []
    finally:
        run_virsh(uri, "vol-delete", "unwritable", "default")


@pytest.mark.parametrize("folder_mode", [0o755, 0o1777], ids=["read-only", "sticky"])
def test_a_download_over_a_file_that_cannot_be_replaced_writes_it_as_virsh_does(
    reference_libvirtd: ReferenceLibvirtd, folder_mode: int
) -> None:
    """A user downloads over a file they may write, root's, in root's folder that they
    may not write or that is sticky (as /tmp): virsh opens the file and writes it;
    virtvol refused the first at once and failed the second at its final rename, after
    the whole volume went by."""
    uri = reference_libvirtd.tcp_uri
    content = os.urandom(MIB) + bytes(MIB)
    source = reference_libvirtd.state_dir / "content.img"
    source.write_bytes(content)
    run_virsh(uri, "vol-create-as", "default", "shared", "2M")
    run_virsh(uri, "vol-upload", "shared", str(source), "--pool", "default")
    base = Path(tempfile.mkdtemp(prefix="virtvol-shared-", dir="/tmp"))
    try:
        base.chmod(0o755)
        folder = base / "folder"
        folder.mkdir()
        folder.chmod(folder_mode)
        answers = []
        for client, name in (("virsh", "A.img"), ("virtvol", "B.img")):
            target = folder / name
            target.write_bytes(b"old")
            target.chmod(0o666)
            program = ["virsh"] if client == "virsh" else _COMMAND
            download = ["-c", uri, "vol-download", "shared", str(target), "--pool", "default"]
            env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
            proc = subprocess.run(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    *program,
                    *download,
                ],
                capture_output=True,
                text=True,
                env=dict(env, LC_ALL="C", HOME=str(base)),
                stdin=subprocess.DEVNULL,
                timeout=60,
                check=False,
                cwd="/",
            )
            answers.append((proc.stdout, proc.returncode))
            assert target.read_bytes() == content, (client, proc.stderr)
            assert target.stat().st_uid == 0
        assert answers[1] == answers[0] == ("\n", 0)
        assert sorted(os.listdir(folder)) == ["A.img", "B.img"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
        run_virsh(uri, "vol-delete", "shared", "default")


@pytest.mark.parametrize(
    "source", ["/proc/version", "/proc/sys/kernel/ostype", "/sys/devices/system/cpu/online"]
)
def test_an_upload_from_a_file_that_tells_no_size_sends_its_content(
    reference_libvirtd: ReferenceLibvirtd, source: str
) -> None:
    """procfs's files say they hold 0 bytes (most also refuse a seek to their end, the
    sysctl ones a read of 4 MiB), sysfs's a page, and have other content, which virsh
    reads to its end: virtvol failed with "Invalid argument" or "the source file shrank",
    or sent nothing and succeeded."""
    uri = reference_libvirtd.tcp_uri
    for name in ("from-A", "from-B"):
        run_virsh(uri, "vol-create-as", "default", name, "4k")
    try:
        theirs = run_in_c_locale(
            ["virsh", "-c", uri, "vol-upload", "from-A", source, "--pool", "default"]
        )
        ours = run_virtvol("-q", "-c", uri, "vol-upload", "from-B", source, "--pool", "default")
        assert (ours.stderr, ours.returncode) == (theirs.stderr, theirs.returncode) == ("", 0)
        content = Path(source).read_bytes()
        for name in ("from-A", "from-B"):
            landed = (reference_libvirtd.pool_dir / name).read_bytes()
            assert landed[: len(content)] == content, name
    finally:
        for name in ("from-A", "from-B"):
            run_virsh(uri, "vol-delete", name, "default")


def test_an_upload_whose_source_does_not_open_says_only_that(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    """A socket passes stat() and refuses open() (ENXIO), as a file the user may not read
    does (EACCES): virsh says "cannot read FILE" and no more; virtvol added Python's text
    of the error ("[Errno 6] No such device or address: 'FILE'")."""
    uri = reference_libvirtd.tcp_uri
    run_virsh(uri, "vol-create-as", "default", "unopened", "1M")
    source = tmp_path / "sock"
    try:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(source))
            _, err, code = both(uri, "vol-upload", "unopened", str(source), "default")
        assert (err, code) == (f"error: cannot read {source}\n", 1)
    finally:
        run_virsh(uri, "vol-delete", "unopened", "default")


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root (CAP_LINUX_IMMUTABLE)")
def test_a_download_refused_after_the_volume_went_by_says_why(
    virtvold: Virtvold,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The target made immutable while the volume goes by: the final rename is refused
    (EPERM), after the whole transfer. virsh never fails there; virtvol says "cannot
    create FILE" as for a target that does not open, and then the reason, which is the
    only clue (a failure before any data moved keeps virsh's bare line)."""
    from virtvol.client import cli
    from virtvol.client.progress import TransferProgress

    (virtvold.pool_dir / "vol").write_bytes(b"x" * MIB)
    target = tmp_path / "copy"
    target.write_bytes(b"old")
    update = TransferProgress.update
    locked: list[Path] = []

    def lock_the_target(bar: TransferProgress, data_bytes: int, hole_bytes: int) -> None:
        if not locked:
            subprocess.run(["chattr", "+i", str(target)], check=True)
            locked.append(target)
        update(bar, data_bytes, hole_bytes)

    monkeypatch.setattr(TransferProgress, "update", lock_the_target)
    command = ["vol-download", "vol", str(target), "--pool", "default"]
    try:
        assert cli.main(["-c", virtvold.unix_uri, *command]) == 1
    finally:
        if locked:
            subprocess.run(["chattr", "-i", str(target)], check=True)
    assert locked
    assert capsys.readouterr().err == (
        f"error: cannot create {target}\nerror: Operation not permitted\n"
    )
    assert target.read_bytes() == b"old"


def test_an_upload_the_source_refuses_fails_in_virshs_words(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    # A folder opens for reading, and its first read fails (EISDIR): once the stream runs.
    uri = reference_libvirtd.tcp_uri
    run_virsh(uri, "vol-create-as", "default", "unreadable", "1M")
    try:
        for mode in ([], ["--sparse"]):
            _, err, code = both(uri, "vol-upload", "unreadable", str(tmp_path), "default", *mode)
            assert (err, code) == (
                "error: cannot send data to volume unreadable\n"
                "error: send handler failed: Is a directory\n",
                1,
            )
    finally:
        run_virsh(uri, "vol-delete", "unreadable", "default")


def test_help_and_version() -> None:
    listing = run_virtvol("help")
    assert listing.returncode == 0
    assert listing.stdout.startswith("Grouped commands:\n\n Storage Pool (help keyword 'pool'):\n")
    assert "    vol-upload                     copy a file into a volume\n" in listing.stdout
    # virsh's layout of one command's help, with the same synopsis and option labels.
    ours = run_virtvol("help", "vol-upload").stdout
    theirs = subprocess.run(
        ["virsh", "help", "vol-upload"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    section = [line for line in ours.splitlines() if not line.startswith("    ")]
    assert section == [line for line in theirs.splitlines() if not line.startswith("    ")]
    assert "    vol-upload <vol> <file> [--pool <string>] [--offset <number>]" in ours
    labels = [
        line.split("  ")[2] for line in theirs.splitlines() if line.startswith(("    -", "    ["))
    ]
    assert len(labels) == 6
    assert all(f"    {label}" in ours for label in labels)
    assert "--no-sparse" in ours  # virtvol's own option, marked as such
    assert run_virtvol("vol-upload", "--help").stdout == ours
    assert run_virtvol("-q", "help", "vol-upload").stdout == ours[:-1]
    installed = importlib.metadata.version("virtvol")
    # Any --version but "long" is the short one.
    for flag in (
        "--version",
        "-v",
        "--version=short",
        "--version=x",
        "--version=",
        "--version=LONG",
    ):
        version = run_virtvol(flag)
        assert version.returncode == 0
        assert version.stdout == installed + "\n"
    assert run_virtvol("-V").stdout.startswith(f"virtvol {installed}")
    assert "-c | --connect=URI" in run_virtvol("--help").stdout


def test_help_and_version_end_the_options_as_in_virsh() -> None:
    # virsh shows its help or version as soon as it meets the option: what follows it,
    # a refused option too, is not read.
    for show in ("-v", "-V", "--version", "--version=long", "-h", "--help", "-vq"):
        alone = run_virtvol(show)
        for after in (["-k", "x"], ["-K", "-1"], ["-e", "xy"], ["--bogus"], ["-c"], ["-X"]):
            ours = run_virtvol(show, *after, "pool-list")
            theirs = run_in_c_locale(["virsh", show, *after, "pool-list"])
            assert (ours.stderr, ours.returncode) == (theirs.stderr, theirs.returncode)
            assert (ours.stdout, ours.returncode) == (alone.stdout, alone.returncode)


def test_what_virtvol_cannot_do_is_refused_clearly(virtvold: Virtvold) -> None:
    uri = virtvold.unix_uri
    for args, message in (
        (["pool-edit", "default"], "command 'pool-edit' is not supported by virtvol"),
        (["pool-event", "--list"], "command 'pool-event' is not supported by virtvol"),
        (["pool-dumpxml", "default", "--xpath", "//name"], "option --xpath is not supported"),
        (["vol-upload", "v", "f", "--sparse", "--no-sparse"], "--sparse and --no-sparse are"),
    ):
        proc = run_virtvol("-c", uri, *args)
        assert proc.returncode == 1, args
        assert message in proc.stderr, (args, proc.stderr)
    ssh = run_virtvol("-c", "storage+ssh://root@host/system", "pool-list")
    assert (ssh.returncode, ssh.stderr) == (
        1,
        "error: failed to connect to the hypervisor\n"
        "error: transport 'ssh' is not supported by virtvol (use tcp, tls or unix)\n",
    )
    nothing = run_virtvol()
    assert (nothing.returncode, nothing.stderr) == (
        1,
        "error: no command given (see 'virtvol help')\n",
    )


def test_global_options_as_virsh_reads_them(virtvold: Virtvold) -> None:
    uri = virtvold.unix_uri
    for args in (
        ["-qc", uri, "pool-list"],
        [f"-c{uri}", "-q", "pool-list", "--name"],
        [f"--conn={uri}", "--qui", "vol-list", "default"],
        ["--connect", uri, "-r", "pool-info", "default", "--bytes"],
        ["-c", uri, "--", "pool-list"],
        ["--foo"],
        ["-c"],
        ["-Z"],
        # A flag given a value is refused by its letter.
        ["--readonly=x", "pool-list"],
        ["-c", uri, "--quiet=1", "pool-list"],
        ["--help=x"],
        ["--timing=", "pool-list"],
        # The console's escape: one byte, or ^ and a letter or one of @[\]^_ (a control
        # character); nothing else is checked.
        ["-e", "^]", "-c", uri, "pool-list"],
        ["--escape=x", "-c", uri, "pool-list"],
        ["-e^^", "-c", uri, "pool-list"],
        ["-e^a", "-c", uri, "pool-list"],
        ["-e^@", "-c", uri, "pool-list"],
        ["-e^_", "-c", uri, "pool-list"],
        ["-e^1", "pool-list"],
        ["-e^`", "pool-list"],
        ["-e^{", "pool-list"],
        ["-e^~", "pool-list"],
        ["-e^?", "pool-list"],
        ["-e^ ", "pool-list"],
        ["-e", "ab", "-c", uri, "pool-list"],
        ["--esc", "^\u00e9", "pool-list"],
        ["-e", "^", "pool-list"],
        ["-e"],
    ):
        theirs = run_in_c_locale(["virsh", *args])
        same(run_virtvol(*args), theirs)


def test_keepalive_options_as_virsh_reads_them(reference_libvirtd: ReferenceLibvirtd) -> None:
    uri = reference_libvirtd.tcp_uri
    for keepalive in (
        # Read as C's strtol reads an int: blanks before, a sign, 0x and 0 prefixes.
        ["-k", "0"],
        ["-k", "1", "-K", "1"],
        ["-k5"],
        ["-K0", "-k", "0"],
        ["--keepalive-interval=3"],
        ["--keepalive-count", "3"],
        ["-k", "0x10"],
        ["-k", "010"],
        ["-k", " +3"],
        ["-k", "-0"],
        ["-K", "2147483647"],
        ["-k", "2147483"],
        # Refused while reading the options.
        ["-k", "x"],
        ["-k", ""],
        ["-k", "3 "],
        ["-k", "08"],
        ["-k", "0x"],
        ["-k", "2147483648"],
        ["-k", "-1"],
        ["-k", "-2147483649"],
        ["--keepalive-interval=-5"],
        ["-K", "x"],
        ["-K", "-1"],
        ["-k"],
        ["--keep=3"],
        # Taken, then refused by libvirt's client once connected.
        ["-k", "2147484"],
        ["-k", "2147484", "-K", "0"],
    ):
        args = [*keepalive, "-c", uri, "pool-uuid", "default"]
        same(run_virtvol(*args), run_in_c_locale(["virsh", *args]))


def test_quiet_after_the_command_is_taken_only_where_an_option_stands(
    reference_libvirtd: ReferenceLibvirtd,
) -> None:
    # virtvol's own --quiet after the command: where virsh reads a value (--vol's, or
    # past "--"), the word "--quiet" is that value, a volume of that name, as in virsh.
    uri = reference_libvirtd.tcp_uri
    for name in ("--quiet", "--pool", "v1"):
        run_virsh(uri, "vol-create-as", "default", "--", name, "1M")
    for args in (
        ["vol-path", "--vol", "--quiet", "--pool", "default"],
        ["vol-path", "--vol", "--quiet", "default"],
        ["vol-path", "--pool", "default", "--", "--quiet"],
        ["vol-path --vol --quiet --pool default"],
    ):
        both(uri, *args)
    for args in (
        ["vol-path", "v1", "--quiet", "--pool", "default"],
        ["vol-path v1 default --quiet; vol-key v1 default --quiet"],
    ):
        ours = run_virtvol("-c", uri, *args)
        before = [a.replace(" --quiet", "") for a in args if a != "--quiet"]
        theirs = run_in_c_locale(["virsh", "-q", "-c", uri, *before])
        assert (ours.stdout, ours.stderr, ours.returncode) == (
            theirs.stdout,
            theirs.stderr,
            theirs.returncode,
        ), args


def test_words_beginning_with_dashes_as_virsh_reads_them(
    reference_libvirtd: ReferenceLibvirtd,
) -> None:
    # An option's name begins with a letter or digit; any other word is a value.
    uri = reference_libvirtd.tcp_uri
    for word in ("--=x", "---vol", "--_x", "--.x", "--\u00e9", "--1", "--A", "--a="):
        both(uri, "vol-info", word)
        both(uri, "vol-info", word, "default")


def test_a_commands_help_option_as_virsh_reads_it(reference_libvirtd: ReferenceLibvirtd) -> None:
    """``--help`` is a flag of every command: the rest of the line is read as usual (a
    refusal wins), but required options may be missing; a value may be "--help"."""
    uri = reference_libvirtd.tcp_uri
    for args in (
        ["vol-info", "--help=x"],
        ["vol-info", "--help="],
        ["pool-list", "--foo", "--help"],
        ["vol-info", "--help", "--vol"],
        ["vol-info", "--help", "a", "b", "c"],
        ["vol-info", "--bytes", "--help", "--bytes"],
        ["vol-info", "--vol", "--help"],
        ["vol-info", "--vol", "--help", "--pool", "default"],
    ):
        both(uri, *args)
    for args in (
        ["vol-info", "--help", "--help"],
        ["vol-info", "v1", "--help"],
        ["vol-info", "--help", "--", "--help"],
        ["vol-info", "--pool", "default", "--help", "--vol=v"],
    ):
        ours = run_virtvol("-c", uri, *args)
        assert (ours.returncode, ours.stderr) == (0, ""), args
        assert ours.stdout == run_virtvol("help", "vol-info").stdout, args


def test_the_help_command_reads_its_words_as_virsh_does() -> None:
    """virsh's help overlooks options and words it has no use for; a second topic is
    said, then overlooked too. The texts are virtvol's own: compared are the topic shown,
    stderr and the status."""
    for args, topic in (
        (["help", "--foo=x", "pool-list"], ["pool-list"]),
        (["help", "--foo", "x"], None),
        (["help", "pool-list", "extra"], ["pool-list"]),
        (["help", "pool-list", "--command"], ["pool-list"]),
        (["help", "--command", "pool-list", "--command", "vol-list"], ["pool-list"]),
        (["help", "--command=pool-list", "--bar"], ["pool-list"]),
        (["help", "--", "pool-list", "extra"], ["pool-list"]),
        (["help", "-q"], None),
        (["help", "--command", "--help"], None),
        (["help", ""], []),
        (["help", "--command="], []),
        # The help command's own help.
        (["help", "help"], ["help", "--help"]),
        (["help", "pool-list", "--help"], ["help", "--help"]),
        (["help", "--command"], None),
    ):
        ours = run_virtvol(*args)
        theirs = run_in_c_locale(["virsh", *args])
        assert (ours.stderr, ours.returncode) == (theirs.stderr, theirs.returncode), args
        if topic is not None:
            assert ours.stdout == run_virtvol("help", *topic).stdout, args
    helps_help = run_virtvol("help", "--help").stdout
    assert _synopsis(helps_help) == "help [--command <string>]"


def test_help_lists_the_commands_in_virshs_order() -> None:
    def listed(text: str) -> list[str]:
        return [line.split()[0] for line in text.splitlines() if line.startswith("    ")]

    for args in (["help", "pool"], ["help", "volume"], ["help"]):
        ours = listed(run_virtvol(*args).stdout)
        theirs = [name for name in listed(run_in_c_locale(["virsh", *args]).stdout) if name in ours]
        assert ours == theirs, args


def _mask_times(text: str) -> str:
    return re.sub(r"\(Time: \d+\.\d{3} ms\)", "(Time: T ms)", text)


def test_timing_as_virsh_prints_it(reference_libvirtd: ReferenceLibvirtd) -> None:
    uri = reference_libvirtd.tcp_uri
    for args in (
        ["-t", "pool-uuid", "default"],
        ["--timing", "-q", "pool-uuid", "default"],
        ["-t", "pool-name", "nope"],
        ["-tq", "pool-name", "nope"],
        ["-t", "vol-info", "nope", "default"],
        ["-t", "pool-list", "--all", "--inactive"],
        ["-t", "vol-info", "--bogus"],
        ["-t", "pool-uuid default; pool-name nope"],
        ["-t", "help", "pool-uuid"],
    ):
        ours = run_virtvol("-c", uri, *args)
        theirs = run_in_c_locale(["virsh", "-c", uri, *args])
        assert "(Time: " in theirs.stdout or args[1] == "vol-info", args
        if args[1] == "help":  # the help's words are virtvol's own
            assert _mask_times(ours.stdout).endswith("\n\n(Time: T ms)\n\n"), ours.stdout
            assert _mask_times(theirs.stdout).endswith("\n\n(Time: T ms)\n\n")
            continue
        assert (_mask_times(ours.stdout), ours.stderr, ours.returncode) == (
            _mask_times(theirs.stdout),
            theirs.stderr,
            theirs.returncode,
        ), args


@pytest.mark.parametrize(
    ("options", "keepalive"),
    [
        ([], cli.VIRSH_KEEPALIVE),
        (["-k", "2", "-K", "0"], (2, 0)),
        (["-K3"], (cli.VIRSH_KEEPALIVE[0], 3)),
        (["--keepalive-interval=0"], (0, cli.VIRSH_KEEPALIVE[1])),
    ],
)
def test_keepalive_options_reach_the_connection(
    options: list[str], keepalive: tuple[float, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[object] = []

    async def opener(uri: str | None, **settings: object) -> Connection:
        asked.append(settings["keepalive"])
        raise TransportError("refused")

    monkeypatch.setattr(direct, "open_direct", opener)
    uri = f"storage+tcp://127.0.0.1:{free_port()}/system"
    assert cli.main([*options, "-c", uri, "pool-list"]) == 1
    assert asked == [keepalive]


def _go_silent(peer: FakePeer, event: CallReceived) -> None:
    peer.silent = True  # answers neither this call nor the PINGs that follow


def _pings_before_giving_up(tmp_path: Path, run: Callable[[str], int]) -> tuple[int, int]:
    """The exit status of ``run`` (given a peer's URI) and how many PINGs it sent to a
    peer that goes silent at the command's first call, until it gave the peer up."""
    tmp_path.mkdir()
    with FakePeer(tmp_path, keepalive=True) as peer:
        peer.handlers[Proc.CONNECT_LIST_ALL_STORAGE_POOLS] = _go_silent
        status = run(peer.uri)
        assert peer.hung_up.wait(30), "the client kept its connection"
        return status, sum(isinstance(event, PingReceived) for event in peer.events)


@pytest.mark.parametrize(
    "options",
    [["-k", "5"], ["-K", "3"], ["-k", "2147484"], ["-k", "0", "-K", "3"], []],
)
def test_keepalive_asked_of_a_daemon_without_it_as_virsh_asks(
    options: list[str], tmp_path: Path
) -> None:
    # virsh gives the connection up when -k or -K asked for a keepalive the daemon does
    # not do; its own default, or -k 0, asks for none.
    outcomes: list[tuple[str, str, int]] = []
    for program in (["virsh"], _COMMAND):
        folder = tmp_path / str(len(outcomes))
        folder.mkdir()
        with FakePeer(folder, keepalive=False) as peer:
            peer.handlers[Proc.CONNECT_LIST_ALL_STORAGE_POOLS] = lambda peer, call: peer.reply(
                call.serial, r.ListAllPoolsRet(pools=(), ret=0)
            )
            done = run_in_c_locale([*program, *options, "-c", peer.uri, "pool-list", "--name"])
            outcomes.append((done.stdout, done.stderr, done.returncode))
    assert outcomes[1] == outcomes[0]


@pytest.mark.parametrize("options", [["-k", "1"], ["-k", "1", "-K", "1"]])
def test_keepalive_gives_a_silent_daemon_up_after_as_many_pings_as_virsh(
    options: list[str], tmp_path: Path
) -> None:
    # virsh's count when -K is not given is its own (6), not libvirt's daemon's (5).
    def with_virsh(uri: str) -> int:
        return run_in_c_locale(["virsh", *options, "-c", uri, "pool-list"]).returncode

    def with_virtvol(uri: str) -> int:  # over the blocking socket
        return run_virtvol(*options, "-c", uri, "pool-list").returncode

    # Each client waits out its own peer's silence (-k 1 with virsh's count of 6: 7 s), so
    # the two run side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as other:
        virsh = other.submit(_pings_before_giving_up, tmp_path / "virsh", with_virsh)
        ours = _pings_before_giving_up(tmp_path / "direct", with_virtvol)
        theirs = virsh.result()
        assert theirs[0] == 1
        assert ours == theirs


def _synopsis(help_text: str) -> str:
    lines = help_text.splitlines()
    return lines[lines.index("  SYNOPSIS") + 1].strip()


def test_every_command_takes_virsh_options_in_virsh_order() -> None:
    """The synopsis lists every option in declaration order, which is also the order
    positional words fill them: it must be virsh's, plus only virtvol's marked extras."""
    listing = run_virtvol("help").stdout
    commands = [line.split()[0] for line in listing.splitlines() if line.startswith("    ")]
    assert len(commands) == 35
    for name in commands:
        theirs = subprocess.run(
            ["virsh", "help", name], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        ours = run_virtvol("help", name).stdout
        assert _synopsis(ours).replace(" [--no-sparse]", "") == _synopsis(theirs), name
    group = run_virtvol("help", "volume").stdout
    assert group.startswith(" Storage Volume (help keyword 'volume'):\n    vol-clone ")
    pools = run_virtvol("help", "pool").stdout
    assert "    find-storage-pool-sources-as " in pools
    assert "    pool-capabilities " in pools


def _xml_files(folder: Path, pool_dir: Path) -> dict[str, Path]:
    """Pool and volume XML files for the file-taking commands, good and bad."""
    texts = {
        "pool-{}.xml": f"<pool type='dir'>\n  <name>f-{{}}</name>\n"
        f"  <target><path>{pool_dir.parent}/f-{{}}</path></target>\n</pool>\n",
        "extra-{}.xml": f"<pool type='dir'><name>x-{{}}</name><bogus/>"
        f"<target><path>{pool_dir.parent}/x-{{}}</path></target></pool>",
        "vol-{}.xml": "<volume><name>n-{}</name><capacity>1048576</capacity></volume>",
        "copy-{}.xml": "<volume><name>c-{}</name><capacity>1048576</capacity></volume>",
        "qcow-{}.xml": "<volume><name>q-{}</name><capacity>1048576</capacity>"
        "<target><format type='qcow2'/></target></volume>",
        "truncated.xml": "<pool type='dir'><name>bad",
        "junk.xml": "not xml at all",
        "nul.xml": "<pool type='dir'><name>z\0zz</name></pool>",
        "source.xml": "<source><host name='localhost'/></source>",
    }
    files = {}
    for name, text in texts.items():
        for tag in (VIRSH_TAG, VIRTVOL_TAG) if "{}" in name else ("",):
            path = folder / name.replace("{}", tag)
            path.write_text(text.replace("{}", tag))
            files[name.replace("{}", tag)] = path
    (folder / "over-the-wire.xml").write_text(" " * (5 * MIB))
    with (folder / "over-ten-mib.xml").open("wb") as big:
        big.truncate(10 * MIB + 1)
    return files


def test_file_and_build_commands_match_virsh(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    uri = reference_libvirtd.tcp_uri
    _xml_files(tmp_path, reference_libvirtd.pool_dir)
    run_virsh(uri, "vol-create-as", "default", "v1", "1M", "--allocation", "0")
    uuid = run_virsh(uri, "pool-uuid", "default").stdout.strip()
    t = str(tmp_path)
    for args in (
        ["pool-capabilities"],
        ["-q", "pool-capabilities"],
        ["pool-capabilities", "extra"],
        # Files virsh cannot read, or whose XML the daemon refuses.
        ["pool-define", f"{t}/missing.xml"],
        ["pool-define", t],  # a folder: it opens, then fails to read
        ["pool-define", f"{t}/over-ten-mib.xml"],
        ["pool-define", f"{t}/over-the-wire.xml"],
        ["pool-define", f"{t}/truncated.xml"],
        ["pool-define", "--file", f"{t}/junk.xml"],
        ["pool-define", f"{t}/nul.xml"],
        ["pool-define", f"{t}/vol-{VIRSH_TAG}.xml"],
        ["pool-define", f"{t}/extra-{VIRSH_TAG}.xml", "--validate"],
        ["pool-define", ""],
        ["pool-define"],
        ["pool-create", f"{t}/missing.xml"],
        ["pool-create", f"{t}/pool-{VIRSH_TAG}.xml", "--overwrite", "--no-overwrite"],
        ["pool-create", f"{t}/truncated.xml", "--build"],
        ["vol-create", "default", f"{t}/missing.xml"],
        ["vol-create", "nope", f"{t}/missing.xml"],
        ["vol-create", "default", f"{t}/pool-{VIRSH_TAG}.xml"],
        ["vol-create", "default", f"{t}/truncated.xml"],
        ["vol-create", "default", "--file", f"{t}/vol-{VIRSH_TAG}.xml", "--validate"],
        ["vol-create", "default", ""],
        [
            "vol-create-from",
            "default",
            f"{t}/copy-{VIRSH_TAG}.xml",
            "v1",
        ],  # no --inputpool: no name
        ["vol-create-from", "default", f"{t}/missing.xml", str(reference_libvirtd.pool_dir / "v1")],
        ["vol-create-from", "default", f"{t}/missing.xml", "nosuch", "--inputpool", "default"],
        ["vol-create-from", "default", f"{t}/missing.xml", "v1", "--inputpool", "default"],
        ["vol-create-from", "nope", f"{t}/copy-{VIRSH_TAG}.xml", "v1"],
        ["vol-create-from", "default", f"{t}/copy-{VIRSH_TAG}.xml", "v1", "--inputpool", "nope"],
        ["vol-create-from", "default", f"{t}/copy-{VIRSH_TAG}.xml", "v1", "--inputpool", ""],
        # Pools that cannot be built or deleted now.
        ["pool-build", "nope"],
        ["pool-build", "default"],  # active
        ["pool-delete", "default"],  # active
        ["pool-delete", "--pool", "nope"],
        ["pool-build"],
        # A pool given by its UUID is named so in every message, as virsh names it.
        ["pool-build", uuid],
        ["pool-start", uuid],
        ["pool-refresh", uuid],
        ["pool-autostart", uuid, "--disable"],
        # Discovery: dir pools have none, netfs needs a host, the host has no NFS.
        ["find-storage-pool-sources", "dir"],
        ["find-storage-pool-sources", "bogus"],
        ["find-storage-pool-sources", "netfs", f"{t}/source.xml"],
        ["find-storage-pool-sources", "netfs", "--srcSpec", f"{t}/truncated.xml"],
        ["find-storage-pool-sources", "netfs", f"{t}/missing.xml"],
        ["find-storage-pool-sources", ""],
        ["find-storage-pool-sources"],
        ["find-storage-pool-sources-as", "netfs"],
        ["find-storage-pool-sources-as", "netfs", "localhost", "2049"],
        ["find-storage-pool-sources-as", "--type", "iscsi", "--initiator", "iqn.x"],
        # virsh writes the values into the XML as they are: the daemon's parser says where.
        ["find-storage-pool-sources-as", "netfs", "a'b"],
        ["find-storage-pool-sources-as", "netfs", "h", "1'x"],
        ["find-storage-pool-sources-as", "iscsi", "h", "1", "i&q"],
        ["find-storage-pool-sources-as", "netfs", "--host", ""],
        # An empty value is refused as virsh refuses it, for the older commands too.
        ["pool-info", ""],
        ["vol-info", "v1", ""],
        ["pool-list", "--type", ""],
        ["vol-create-as", "default", "x", "1M", "--format", "", "--print-xml"],
    ):
        both(uri, *args)


def test_changing_file_and_build_commands_match_virsh(
    reference_libvirtd: ReferenceLibvirtd, tmp_path: Path
) -> None:
    uri = reference_libvirtd.tcp_uri
    # libvirtd runs as nobody: the pools' folders go where it may write.
    pools = Path(tempfile.mkdtemp(prefix="virtvol_pools_", dir="/tmp"))
    pools.chmod(0o777)
    try:
        _run_changing_file_commands(uri, tmp_path, pools)
    finally:
        shutil.rmtree(pools, ignore_errors=True)


def _run_changing_file_commands(uri: str, tmp_path: Path, pools: Path) -> None:
    _xml_files(tmp_path, pools / "pool")
    run_virsh(uri, "vol-create-as", "default", "v1", "1M", "--allocation", "0")
    t = str(tmp_path)
    for template in (
        ["vol-create", "default", f"{t}/vol-{{}}.xml"],
        ["vol-create", "--pool", "default", "--file", f"{t}/vol-{{}}.xml"],  # exists
        ["vol-create", "default", f"{t}/qcow-{{}}.xml", "--prealloc-metadata"],
        ["vol-create-from", "default", f"{t}/copy-{{}}.xml", "n-{}", "--inputpool", "default"],
        ["vol-create-from", "default", f"{t}/copy-{{}}.xml", "n-{}", "--inputpool", "default"],
        ["vol-delete", "c-{}", "default"],
        ["vol-create-from", "default", f"{t}/copy-{{}}.xml", "n-{}", "default", "--reflink"],
        [
            "vol-create-from",
            "--pool",
            "default",
            "--file",
            f"{t}/copy-{{}}.xml",
            "--vol",
            "n-{}",
            "--inputpool",
            "default",
            "--prealloc-metadata",
        ],
        [
            "-q",
            "vol-create-from",
            "default",
            f"{t}/copy-{{}}.xml",
            "n-{}",
            "--inputpool",
            "default",
        ],
        ["pool-define", f"{t}/pool-{{}}.xml"],
        ["pool-start", "f-{}"],  # no folder yet
        ["pool-build", "f-{}"],
        ["pool-build", "f-{}", "--overwrite"],
        ["pool-build", "f-{}", "--no-overwrite"],
        ["pool-build", "f-{}", "--overwrite", "--no-overwrite"],  # the daemon refuses
        ["pool-start", "f-{}"],
        ["vol-create", "f-{}", f"{t}/vol-{{}}.xml"],
        ["pool-delete", "f-{}"],  # active
        ["pool-destroy", "f-{}"],
        ["pool-delete", "f-{}"],  # not empty
        ["pool-start", "f-{}"],
        ["vol-delete", "n-{}", "f-{}"],
        ["pool-destroy", "f-{}"],
        ["vol-create", "f-{}", f"{t}/vol-{{}}.xml"],  # inactive
        ["pool-delete", "f-{}"],
        ["pool-delete", "f-{}"],  # gone already
        ["-q", "pool-build", "f-{}"],
        ["pool-undefine", "f-{}"],
        ["pool-create", f"{t}/pool-{{}}.xml", "--build"],
        ["pool-destroy", "f-{}"],
        ["-q", "pool-create", "--file", f"{t}/pool-{{}}.xml"],
        ["pool-destroy", "f-{}"],
        ["-q", "pool-define", f"{t}/pool-{{}}.xml"],
        ["pool-undefine", "f-{}"],
    ):
        both_changing(uri, *template)


def test_file_and_build_commands_against_virtvold(virtvold: Virtvold, tmp_path: Path) -> None:
    """The same commands work against virtvold; the procedures it does not serve (pool
    build and delete, capabilities, source discovery) fail as virsh reports them."""
    uri = virtvold.unix_uri
    _xml_files(tmp_path, tmp_path / "pool")
    t = str(tmp_path)
    for template in (
        ["vol-create", "default", f"{t}/vol-{{}}.xml"],
        ["vol-create", "default", f"{t}/vol-{{}}.xml"],  # exists
        ["vol-create-from", "default", f"{t}/copy-{{}}.xml", "n-{}", "--inputpool", "default"],
        ["vol-create-from", "default", f"{t}/copy-{{}}.xml", "nope-{}"],
        ["vol-create", "default", f"{t}/truncated.xml"],
        ["pool-define", f"{t}/pool-{{}}.xml"],
        ["pool-define", f"{t}/missing-{{}}.xml"],
        ["pool-capabilities"],
        ["pool-build", "f-{}"],
        ["pool-delete", "f-{}"],
        ["pool-start", "f-{}"],
        ["pool-destroy", "f-{}"],
        ["pool-undefine", "f-{}"],
        ["pool-create", f"{t}/pool-{{}}.xml", "--build"],
        ["find-storage-pool-sources", "netfs", f"{t}/source.xml"],
        ["find-storage-pool-sources-as", "netfs", "localhost"],
    ):
        both_changing(uri, *template)


def _in_locale(locale_name: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="surrogateescape",
        env=dict(os.environ, LC_ALL=locale_name),
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def test_tables_write_names_as_virsh_does(reference_libvirtd: ReferenceLibvirtd) -> None:
    """virsh's tables escape what the locale cannot print (a tab as ``\\x09``, four
    columns) and give each character the columns wcwidth says (a CJK letter 2, a
    combining accent 0)."""
    uri = reference_libvirtd.tcp_uri
    for name in ("café", "e\u0301", "tab\there", "日本語"):
        run_virsh(uri, "vol-create-as", "default", name, "1M")
    run_virsh(uri, "pool-define-as", "pöol", "dir", "--target", "/nonexistent/pöol")
    for args in (
        ["vol-list", "default"],
        ["vol-list", "default", "--details"],
        ["-q", "vol-list", "default"],
        ["pool-list", "--all"],
        ["pool-list", "--all", "--details"],
        # Not a table: a name padded to 20 bytes, as printf pads it, in every locale.
        ["pool-list", "--all", "--name"],
        ["pool-list", "--all", "--name", "--uuid"],
    ):
        theirs = _in_locale("C.UTF-8", ["virsh", "-c", uri, *args])
        ours = _in_locale("C.UTF-8", [*_COMMAND, "-c", uri, *args])
        assert (_mask_pool_sizes(ours.stdout), ours.stderr, ours.returncode) == (
            _mask_pool_sizes(theirs.stdout),
            theirs.stderr,
            theirs.returncode,
        ), args
    # In the C locale every byte past ASCII is escaped too, in the same columns; virsh
    # writes each as \xff (a signed char through %02x, cut short), virtvol as it is.
    theirs = _in_locale("C", ["virsh", "-c", uri, "-q", "vol-list", "default"])
    ours = _in_locale("C", [*_COMMAND, "-c", uri, "-q", "vol-list", "default"])
    assert theirs.stdout.splitlines()[0].startswith(" caf\\xff\\xff ")
    assert ours.stdout.splitlines()[0].startswith(" caf\\xc3\\xa9 ")
    assert (
        ours.stdout.replace("\\xc3\\xa9", "\\xff\\xff")
        .replace("\\xcc\\x81", "\\xff\\xff")
        .replace("\\xe6\\x97\\xa5\\xe6\\x9c\\xac\\xe8\\xaa\\x9e", "\\xff" * 9)
        == theirs.stdout
    )


def test_stderr_writes_undecodable_bytes_as_they_came_and_escapes_the_rest() -> None:
    """The handler the command line gives stderr, on an encoder that reports a run mixing
    both at once (ASCII): each undecodable byte as itself, each other character escaped."""
    from virtvol.client import cli

    before = cli._write_undecodable_bytes_as_they_came()  # registers the handler
    try:
        mixed = "n\u00e9\udcff-x\udcfe"
        assert mixed.encode("ascii", cli._STDERR_ERRORS) == b"n\\xe9\xff-x\xfe"
        assert mixed.encode("utf-8", cli._STDERR_ERRORS) == b"n\xc3\xa9\xff-x\xfe"
    finally:
        if before is not None:
            cli._give_stderr_back(*before)
