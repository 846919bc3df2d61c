"""python3-libvirt programs get the same answers from virtvold as from libvirtd.

Each scenario is one python3-libvirt script run against the reference libvirtd and
against virtvold: it records every call's result, or its error's code, domain and
message, with the scratch folder's path written as BASE. The two records must match,
so the expectation is libvirt's own behaviour, not one written down here.
"""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING

from tests.conftest import run_system_python

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd, Virtvold

# argv: URI, a scratch folder both daemons may write in, the "default" pool's folder.
PRELUDE = """
import json, os, sys, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
URI, BASE, POOL_DIR = sys.argv[1:4]
conn = libvirt.open(URI)
record = []

def step(label, call):
    try:
        value = call()
        if isinstance(value, (libvirt.virStoragePool, libvirt.virStorageVol)):
            value = value.name()
        result = ["ok", value]
    except libvirt.libvirtError as e:
        result = ["error", e.get_error_code(), e.get_error_domain(), e.get_error_message()]
    text = json.dumps(result).replace(POOL_DIR, "POOL_DIR").replace(BASE, "BASE")
    record.append([label, json.loads(text)])

def define_dir_pool(name, path, extra=""):
    return conn.storagePoolDefineXML(
        "<pool type='dir'><name>%s</name><target><path>%s</path>%s</target></pool>"
        % (name, path, extra), 0)
"""

EPILOGUE = """
print(json.dumps(record))
"""


def _record(uri: str, scratch: Path, pool_dir: Path, body: str) -> list[list[object]]:
    scratch.mkdir(parents=True, exist_ok=True)
    scratch.chmod(0o777)  # the reference libvirtd runs as nobody
    code = PRELUDE + textwrap.dedent(body) + EPILOGUE
    out = run_system_python(code, uri, str(scratch), str(pool_dir)).stdout
    result: list[list[object]] = json.loads(out)
    return result


def assert_same_answers(
    reference_libvirtd: ReferenceLibvirtd, virtvold: Virtvold, tmp_path: Path, body: str
) -> None:
    expected = _record(
        reference_libvirtd.tcp_uri,
        reference_libvirtd.state_dir / "scratch",
        reference_libvirtd.pool_dir,
        body,
    )
    got = _record(virtvold.tcp_uri, tmp_path / "scratch", virtvold.pool_dir, body)
    assert [label for label, _ in got] == [label for label, _ in expected]
    differences = [
        f"{label}:\n  libvirtd: {want}\n  virtvold: {have}"
        for (label, want), (_, have) in zip(expected, got, strict=True)
        if want != have
    ]
    assert not differences, "\n".join(differences)


POOL_BUILD = """
target = os.path.join(BASE, "built", "nested")
pool = define_dir_pool("built", target)
for flags in (1, 2, 3, 12, 0x14, 0x404, 4, 8):
    step("build %#x" % flags, lambda: pool.build(flags))
    step("made by %#x" % flags, lambda: os.path.isdir(target))
step("build", lambda: pool.build(0))
step("mode", lambda: oct(os.stat(target).st_mode))
os.chmod(target, 0o700)
step("build again keeps the mode", lambda: (pool.build(0), oct(os.stat(target).st_mode)))
step("start", lambda: pool.create(0))
step("build a running pool", lambda: pool.build(0))
step("destroy", pool.destroy)
with_mode = define_dir_pool("moded", os.path.join(BASE, "moded"),
                            "<permissions><mode>0750</mode></permissions>")
step("build with a mode", lambda: with_mode.build(0))
step("mode asked for", lambda: oct(os.stat(os.path.join(BASE, "moded")).st_mode))
os.chmod(os.path.join(BASE, "moded"), 0o700)
step("build puts the mode back", lambda: with_mode.build(0))
step("mode put back", lambda: oct(os.stat(os.path.join(BASE, "moded")).st_mode))
read_only = libvirt.openReadOnly(URI).storagePoolLookupByName("built")
step("read-only build", lambda: read_only.build(0))
"""


def test_pool_build(
    reference_libvirtd: ReferenceLibvirtd, virtvold: Virtvold, tmp_path: Path
) -> None:
    assert_same_answers(reference_libvirtd, virtvold, tmp_path, POOL_BUILD)


POOL_DELETE = """
target = os.path.join(BASE, "doomed")
os.mkdir(target)
pool = define_dir_pool("doomed", target)
step("start", lambda: pool.create(0))
step("delete a running pool", lambda: pool.delete(0))
step("destroy", pool.destroy)
open(os.path.join(target, "left"), "w").close()
step("delete zeroed", lambda: pool.delete(1))
step("delete unknown flag", lambda: pool.delete(0x20))
step("delete a folder holding a file", lambda: pool.delete(0))
os.unlink(os.path.join(target, "left"))
step("delete", lambda: pool.delete(0))
step("gone", lambda: os.path.exists(target))
step("still defined", lambda: pool.isPersistent())
step("delete again", lambda: pool.delete(0))
read_only = libvirt.openReadOnly(URI).storagePoolLookupByName("doomed")
step("read-only delete", lambda: read_only.delete(0))
step("start without a folder", lambda: pool.create(0))
"""


def test_pool_delete(
    reference_libvirtd: ReferenceLibvirtd, virtvold: Virtvold, tmp_path: Path
) -> None:
    assert_same_answers(reference_libvirtd, virtvold, tmp_path, POOL_DELETE)
