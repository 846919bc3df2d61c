"""Where ``virtvol`` connects without ``-c``, and which socket a URI leads to, compared with
virsh 9.0 in the same environment: the same variables, libvirt's client configuration
(``uri_default``, ``uri_aliases``), session sockets under ``$XDG_RUNTIME_DIR`` and the
system sockets under /var/run/libvirt (in a private mount namespace with its own /run, so
nothing outside the test sees them).

Where nothing listens, both report the socket they tried ("Failed to connect socket to
'PATH'"), so equal error output means the same choice."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import POOL_NAME, Virtvold, start_virtvold, stop_virtvold

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

pytestmark = pytest.mark.interop

_VIRTVOL = [sys.executable, "-c", "from virtvol.client.cli import main; raise SystemExit(main())"]
_URI_VARIABLES = ("LIBVIRT_DEFAULT_URI", "VIRSH_DEFAULT_CONNECT_URI", "VIRTVOL_DEFAULT_URI")
_NOBODY = pwd.getpwnam("nobody")


def _env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """A clean environment: no URI variables and no XDG dirs unless given; no autostart
    of a session libvirtd by virsh."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _URI_VARIABLES and not key.startswith("XDG_")
    }
    env.update(LC_ALL="C", HOME=str(home), LIBVIRT_AUTOSTART="0", **extra)
    env.pop("LANG", None)
    return env


def _run(
    argv: Sequence[str], env: dict[str, str], *, as_nobody: bool
) -> subprocess.CompletedProcess[str]:
    prefix = (
        ["setpriv", f"--reuid={_NOBODY.pw_uid}", f"--regid={_NOBODY.pw_gid}", "--clear-groups"]
        if as_nobody
        else []
    )
    if as_nobody:
        # Coverage data files go where the tests' user writes, not nobody.
        env = {key: value for key, value in env.items() if not key.startswith("COVERAGE_")}
    return subprocess.run(
        [*prefix, *argv],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
        cwd="/",
    )


def compare(
    home: Path,
    args: Sequence[str],
    env: dict[str, str] | None = None,
    *,
    as_nobody: bool = False,
    virtvol_args: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """virsh ARGS and virtvol ARGS (or VIRTVOL_ARGS) in the same environment must answer
    alike; returns virtvol's answer."""
    environment = _env(home, env or {})
    theirs = _run(["virsh", *args], environment, as_nobody=as_nobody)
    ours = _run(
        [*_VIRTVOL, *(args if virtvol_args is None else virtvol_args)],
        environment,
        as_nobody=as_nobody,
    )
    assert (ours.stdout, ours.stderr, ours.returncode) == (
        theirs.stdout,
        theirs.stderr,
        theirs.returncode,
    ), (args, env)
    return ours


def _refused(path: str) -> str:
    return (
        "error: failed to connect to the hypervisor\n"
        f"error: Failed to connect socket to '{path}': No such file or directory\n"
    )


@pytest.fixture
def home() -> Iterator[Path]:
    """A home folder "nobody" can use (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="virtvol-home-", dir="/tmp"))
    base.chmod(0o755)
    os.chown(base, _NOBODY.pw_uid, _NOBODY.pw_gid)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_environment_order(home: Path, virtvold: Virtvold) -> None:
    def at(name: str) -> str:
        return f"storage+unix:///system?socket={home}/{name}"

    lib = compare(home, ["pool-list"], {"LIBVIRT_DEFAULT_URI": at("lib")})
    assert lib.stderr == _refused(f"{home}/lib")
    both = {"LIBVIRT_DEFAULT_URI": at("lib"), "VIRSH_DEFAULT_CONNECT_URI": at("virsh")}
    assert compare(home, ["pool-list"], both).stderr == _refused(f"{home}/virsh")
    given = compare(home, ["-c", at("given"), "pool-list"], both)
    assert given.stderr == _refused(f"{home}/given")
    # virtvol's own variable comes before virsh's and libvirt's.
    ours = _run([*_VIRTVOL, "pool-list"], _env(home, {**both, "VIRTVOL_DEFAULT_URI": at("o")}),
                as_nobody=False)  # fmt: skip
    assert ours.stderr == _refused(f"{home}/o")
    # And a URI from the environment reaches a daemon.
    listing = compare(home, ["pool-list"], {"VIRSH_DEFAULT_CONNECT_URI": virtvold.unix_uri})
    assert f" {POOL_NAME} " in listing.stdout


def test_client_configuration_and_session_sockets(home: Path, tmp_path: Path) -> None:
    config = home / "config" / "libvirt"
    config.mkdir(parents=True)
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    for folder in (home / "config", config, runtime):
        os.chown(folder, _NOBODY.pw_uid, _NOBODY.pw_gid)
    env = {"XDG_CONFIG_HOME": str(home / "config"), "XDG_RUNTIME_DIR": str(runtime)}
    (config / "libvirt.conf").write_text(
        "# what the user set\n"
        f'uri_default = "storage+unix:///system?socket={home}/from-config"\n'
        "uri_aliases = [\n"
        f'  "mine=storage+unix:///system?socket={home}/from-alias",\n'
        "]\n"
    )
    default = compare(home, ["pool-list"], env, as_nobody=True)
    assert default.stderr == _refused(f"{home}/from-config")
    alias = compare(home, ["-c", "mine", "pool-list"], env, as_nobody=True)
    assert alias.stderr == _refused(f"{home}/from-alias")
    over = compare(home, ["pool-list"], {**env, "LIBVIRT_DEFAULT_URI": "mine"}, as_nobody=True)
    assert over.stderr == _refused(f"{home}/from-alias")
    # Root reads /etc/libvirt/libvirt.conf only: the user's file changes nothing.
    as_root = compare(home, ["-c", "storage+unix:///system?socket=/nowhere", "pool-list"], env)
    assert as_root.stderr == _refused("/nowhere")

    # Session URIs: the per-driver socket if it exists, else libvirtd's; never "-ro".
    (config / "libvirt.conf").unlink()
    session = ["-c", "storage:///session", "pool-list"]
    assert compare(home, session, env, as_nobody=True).stderr == _refused(
        f"{runtime}/libvirt/libvirt-sock"
    )
    assert compare(home, ["-r", *session], env, as_nobody=True).stderr == _refused(
        f"{runtime}/libvirt/libvirt-sock"
    )
    # Without $XDG_RUNTIME_DIR: glib's fallback, the user's cache folder.
    assert compare(home, session, {}, as_nobody=True).stderr == _refused(
        f"{home}/.cache/libvirt/libvirt-sock"
    )
    sockets = runtime / "libvirt"
    sockets.mkdir(mode=0o700)
    os.chown(sockets, _NOBODY.pw_uid, _NOBODY.pw_gid)
    daemon = start_virtvold(tmp_path / "session", "--listen", f"unix://{sockets}/virtstoraged-sock")
    try:
        os.chown(sockets / "virtstoraged-sock", _NOBODY.pw_uid, _NOBODY.pw_gid)
        listing = compare(home, session, env, as_nobody=True)
        assert f" {POOL_NAME} " in listing.stdout
        # Without -c, virtvol as a user opens storage:///session: the same daemon.
        bare = _run([*_VIRTVOL, "pool-list"], _env(home, env), as_nobody=True)
        assert bare.stdout == listing.stdout
        read_only = compare(home, ["-r", *session], env, as_nobody=True)
        assert read_only.stdout == listing.stdout
    finally:
        stop_virtvold(daemon)


_SOCKET = "storage+unix:///system?socket=/nowhere"


@pytest.mark.parametrize(
    "text",
    [
        # The first statement of a name counts.
        f'uri_default = "{_SOCKET}-1"\nuri_default = "{_SOCKET}-2"\n',
        # Strings in three double quotes; numbers with a sign.
        f'uri_default = """{_SOCKET}-3"""\nlevel = +5\n',
        # Syntax libvirt refuses, said with the file and the line.
        f'uri_default = "{_SOCKET}-4" uri_aliases = []\n',
        "x.y = 1\n",
        "_x = 1\n",
        "x = -\n",
        "x = 1\n\n\n  ;\n",
        "\n\n",
        'uri_aliases = [\n  # a comment\n  "a=storage:///system",\n]\n',
        'uri_aliases = [ "a=storage:///system" "b=storage:///system" ]\n',
        "uri_aliases = [ 1,\n",
        # Lists nested deeper than Python's recursion goes, left open or closed.
        "x = " + "[" * 5000 + "\n",
        "x = " + "[" * 5000 + "]" * 5000 + "\n",
        "x = " + "[ 1, " * 5000 + "2" + "]," * 4999 + "\n",
        # A setting of the wrong type is refused where it is used: uri_default without a
        # URI, uri_aliases with one; an empty uri_default names no driver.
        "uri_default = 5\n",
        'uri_aliases = "mine=storage:///system"\n',
        "uri_aliases = [ 1 ]\n",
        'uri_default = ""\n',
    ],
)
def test_the_client_configuration_is_read_as_libvirt_reads_it(home: Path, text: str) -> None:
    config = home / "config" / "libvirt"
    config.mkdir(parents=True)
    (config / "libvirt.conf").write_text(text)
    env = {"XDG_CONFIG_HOME": str(home / "config"), "XDG_RUNTIME_DIR": str(home)}
    compare(home, ["pool-list"], env, as_nobody=True)
    compare(home, ["-c", "mine", "pool-list"], env, as_nobody=True)


@pytest.mark.parametrize("case", ["out-of-reach", "unreadable", "folder"])
def test_a_client_configuration_that_cannot_be_read_as_libvirt_says(home: Path, case: str) -> None:
    """libvirt looks for the file with access(): one in a folder the user may not enter is
    no file (virtvol failed every command then, as a user whose $HOME is root's); one it
    finds but cannot open or read fails the connection in libvirt's words."""
    config = home / "config"
    (config / "libvirt").mkdir(parents=True)
    conf = config / "libvirt" / "libvirt.conf"
    if case == "folder":
        conf.mkdir()
    else:
        conf.write_text(f'uri_default = "{_SOCKET}"\n')
    if case == "unreadable":
        conf.chmod(0o000)
    if case == "out-of-reach":
        config.chmod(0o700)  # root's: nobody cannot enter it
    else:
        for folder in (config, config / "libvirt"):
            os.chown(folder, _NOBODY.pw_uid, _NOBODY.pw_gid)
    env = {"XDG_CONFIG_HOME": str(config), "XDG_RUNTIME_DIR": str(home)}
    said = compare(
        home, ["-c", "storage+unix:///system?socket=/nowhere", "pool-list"], env, as_nobody=True
    )
    assert said.stderr.startswith("error: failed to connect to the hypervisor\n")


# Runs inside `unshare -m`: a private /run, virtvold on the system sockets, then virsh and
# virtvol side by side; prints what each answered, as JSON.
_SYSTEM_SCRIPT = r"""
import json, os, socket, subprocess, sys, time
state, virtvol = sys.argv[1], json.loads(sys.argv[2])
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
os.mkdir("/run/libvirt")
env = dict(os.environ)
results = {}

def serve(*sockets):
    listen = []
    for path in sockets:
        listen += ["--listen", ("unix-ro://" if path.endswith("-ro") else "unix://") + path]
    log = open(os.path.join(state, "virtvold.log"), "ab")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "virtvol.daemon", "--state-dir", os.path.join(state, "state"),
         "--pool", "default=" + os.path.join(state, "pool"), *listen],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(sockets[-1])
            return daemon
        except OSError:
            time.sleep(0.05)
    daemon.kill()
    raise SystemExit("virtvold did not start")

def run(name, argv):
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    results[name] = [proc.stdout, proc.stderr, proc.returncode]

def side_by_side(tag, virsh_args, virtvol_args):
    run(tag + ":virsh", ["virsh", *virsh_args])
    run(tag + ":virtvol", [*virtvol, *virtvol_args])

side_by_side("none", ["-c", "storage:///system", "pool-list"], ["pool-list"])
daemon = serve("/run/libvirt/virtstoraged-sock", "/run/libvirt/virtstoraged-sock-ro")
try:
    side_by_side("direct", ["-c", "storage:///system", "pool-list"], ["pool-list"])
    side_by_side("direct-ro", ["-r", "-c", "storage:///system", "pool-list"], ["-r", "pool-list"])
    side_by_side("ro-refused", ["-r", "-c", "storage:///system", "vol-create-as", "default",
                 "x", "1M"], ["-r", "vol-create-as", "default", "x", "1M"])
finally:
    daemon.terminate()
    daemon.wait()
for path in os.listdir("/run/libvirt"):
    os.unlink(os.path.join("/run/libvirt", path))
daemon = serve("/run/libvirt/libvirt-sock")
try:
    side_by_side("legacy", ["-c", "storage:///system", "pool-list"], ["pool-list"])
finally:
    daemon.terminate()
    daemon.wait()
print(json.dumps(results))
"""


def test_system_sockets_in_a_private_namespace(home: Path) -> None:
    env = _env(home, {})
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            sys.executable,
            "-c",
            _SYSTEM_SCRIPT,
            str(home),
            json.dumps(_VIRTVOL),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
        check=False,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr + (home / "virtvold.log").read_text(errors="replace")
    results = json.loads(proc.stdout)
    # (stderr and status; stdout too except for a failed connection, where virsh ends with a
    # blank line only when it connected inside the command, that is without -c.)
    for tag in ("none", "direct", "direct-ro", "ro-refused", "legacy"):
        assert results[f"{tag}:virtvol"][1:] == results[f"{tag}:virsh"][1:], tag
        if tag != "none":
            assert results[f"{tag}:virtvol"][0] == results[f"{tag}:virsh"][0], tag
    # Nothing there: libvirtd's socket is the last resort of both.
    assert results["none:virsh"][1] == _refused("/var/run/libvirt/libvirt-sock")
    for tag in ("direct", "direct-ro", "legacy"):
        assert f" {POOL_NAME} " in results[f"{tag}:virsh"][0], tag
    assert "operation forbidden" in results["ro-refused:virsh"][1]
