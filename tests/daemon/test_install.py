"""``make install``: a virtual environment under PREFIX, the units, the docs, the config.

Staged with ``DESTDIR`` in a temporary directory, so the machine's /opt, /etc and
systemd are never touched; the staged tree is checked as it would run at PREFIX.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from virtvol.daemon.config import SYSTEM_SOCK_DIR, Settings, default_listen, load_config_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "virtvold.toml"
PREFIX = "/usr/local/virtvol-test-prefix"  # not the default, so the rewriting shows


def _uncommented(text: str) -> str:
    """The example with every commented-out setting switched on."""
    return re.sub(r"^# (\w+ = .*)$", r"\1", text, flags=re.MULTILINE)


def test_example_config_parses_and_shows_the_defaults(tmp_path: Path) -> None:
    as_shipped = load_config_file(str(EXAMPLE))
    assert as_shipped.listen == ()
    assert as_shipped.pools == {}
    config = tmp_path / "virtvold.toml"
    text = _uncommented(EXAMPLE.read_text())
    config.write_text(text)
    switched_on = load_config_file(str(config))
    keys = set(re.findall(r"^(\w+) = ", text, flags=re.MULTILINE)) - {"default"} | {"pools"}
    settings = {field.name for field in fields(Settings)}
    # Every setting the daemon knows is shown, and each shows its default (as root);
    # tls_allowed_dn_list is unset by default, which TOML cannot write as a value.
    assert keys == settings - {"mode", "config_file", "tls_allowed_dn_list"}, keys ^ settings
    assert "tls_allowed_dn_list" in text
    defaults = Settings(state_dir="/var/lib/virtvol", unix_sock_dir=SYSTEM_SOCK_DIR)
    for key in keys - {"listen", "pools"}:
        assert getattr(switched_on, key) == getattr(defaults, key), key
    assert list(switched_on.listen) == default_listen("system")
    assert switched_on.pools == {"default": "/var/lib/virtvol/pools/default"}


def _staged_python(staged: Path, *args: str) -> str:
    """What the staged environment's Python prints, run with ``args``."""
    run = subprocess.run(
        [str(staged / "bin" / "python"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return run.stdout


@pytest.mark.timeout(300)
def test_make_install_into_a_staging_dir(tmp_path: Path) -> None:
    destdir = tmp_path / "stage"
    kept = destdir / "etc" / "virtvol" / "virtvold.toml"
    kept.parent.mkdir(parents=True)
    kept.write_text('log_level = "debug"\n')  # an admin's own config survives
    # pip builds in the source tree, writing build/ and virtvol.egg-info there, and the
    # other worker's Pythons read this checkout's egg-info (the package's version) all
    # along: the install runs from a copy.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info"))
    done = subprocess.run(
        ["make", "install", f"DESTDIR={destdir}", f"PREFIX={PREFIX}", f"PYTHON={sys.executable}"],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not Path(PREFIX).exists()
    staged = destdir / PREFIX.lstrip("/")

    # The entry points run with the environment's own Python, named where it will live.
    script = staged / "bin" / "virtvold"
    assert script.read_text().splitlines()[0].startswith(f"#!{PREFIX}/bin/python")
    for name in ("virtvold", "virtvol", "python3", "activate"):
        assert str(destdir) not in (staged / "bin" / name).read_text(errors="replace")
    version = _staged_python(staged, str(script), "--version")
    assert version == f"virtvold (virtvol) {importlib.metadata.version('virtvol')}\n"
    # A real install, not a link back to this checkout.
    located = _staged_python(staged, "-c", "import virtvol.daemon; print(virtvol.daemon.__file__)")
    assert located.startswith(str(staged / "lib")), located
    # Without setuptools, whose start-up hook would run in every command (~0.5 ms).
    setuptools = "import importlib.util as u; print(u.find_spec('setuptools'))"
    assert _staged_python(staged, "-c", setuptools) == "None\n"

    units = destdir / "etc" / "systemd" / "system"
    service = (units / "virtvold.service").read_text()
    assert f"\nExecStart={PREFIX}/bin/virtvold $VIRTVOLD_ARGS\n" in service
    assert f"\nDocumentation=file://{PREFIX}/share/doc/virtvol/systemd.md\n" in service
    assert "/opt/virtvol" not in service
    for name in ("virtvold.socket", "virtvold-ro.socket", "virtvold-tcp.socket"):
        assert (units / name).read_text() == (REPO / "systemd" / name).read_text().replace(
            "/opt/virtvol/", f"{PREFIX}/"
        )
    docs = staged / "share" / "doc" / "virtvol"
    assert (docs / "systemd.md").read_text() == (REPO / "docs" / "systemd.md").read_text()
    assert (docs / "virtvold.toml").read_text() == EXAMPLE.read_text()
    assert kept.read_text() == 'log_level = "debug"\n'
