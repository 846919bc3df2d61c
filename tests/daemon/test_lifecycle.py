"""virtvold's command line, config file, restart, SIGHUP reload and SIGTERM shutdown."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.conftest import Virtvold, run_virsh, start_virtvold, stop_virtvold
from tests.daemon.conftest import RawClient
from virtvol.daemon.config import ConfigError, Overrides, resolve
from virtvol.daemon.listeners import ListenError, UnixSocketAccess

if TYPE_CHECKING:
    from pathlib import Path


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "virtvold.toml"
    config.write_text(
        'listen = ["tcp://127.0.0.1:1"]\nprotocol = "legacy"\nlog_level = "debug"\n'
        'state_dir = "/nowhere"\n[pools]\na = "/srv/a"\nb = "/srv/b"\n'
    )
    settings = resolve(
        Overrides(
            config_file=str(config),
            listen=("unix:///run/x",),
            pools=("b=/data/b", "c=/data/c"),
            protocol="current",
        )
    )
    assert settings.listen == ("unix:///run/x",)
    assert settings.pools == {"a": "/srv/a", "b": "/data/b", "c": "/data/c"}
    assert settings.protocol == "current"
    assert settings.log_level == "debug"
    assert settings.state_dir == "/nowhere"
    config.write_text("listn = []\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve(Overrides(config_file=str(config)))
    with pytest.raises(ConfigError, match="NAME=DIR"):
        resolve(Overrides(pools=("nodir",)))


def test_sync_uploads_setting(tmp_path: Path) -> None:
    config = tmp_path / "virtvold.toml"
    assert resolve(Overrides()).sync_uploads is True
    config.write_text("sync_uploads = false\n")
    assert resolve(Overrides(config_file=str(config))).sync_uploads is False
    config.write_text('sync_uploads = "no"\n')
    with pytest.raises(ConfigError, match="sync_uploads must be true or false"):
        resolve(Overrides(config_file=str(config)))


@pytest.mark.parametrize(
    "line",
    [
        "keepalive_count = inf",
        "keepalive_count = nan",
        "shutdown_timeout = nan",
        "keepalive_interval = nan",
        "keepalive_interval = inf",
        "handshake_timeout = -inf",
        "handshake_timeout = nan",
        "handshake_timeout = 1" + "0" * 400,  # an integer no float holds
    ],
)
def test_numbers_that_are_not_finite_are_refused(tmp_path: Path, line: str) -> None:
    config = tmp_path / "virtvold.toml"
    config.write_text(line + "\n")
    with pytest.raises(ConfigError, match=line.split()[0] + " must be"):
        resolve(Overrides(config_file=str(config)))


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('state_dir = "/var/lib/a\\u0000b"', "state_dir"),
        ('unix_sock_dir = "/run/a\\u0000b"', "unix_sock_dir"),
        ('[pools]\nimages = "/srv/a\\u0000b"', "pool 'images'"),
        ('ca_file = "/etc/a\\u0000b"', "ca_file"),
    ],
)
def test_a_nul_byte_in_a_path_is_refused_as_a_setting(tmp_path: Path, line: str, what: str) -> None:
    """Not a Python error deep in the start-up, or in the set-up of one pool."""
    config = tmp_path / "virtvold.toml"
    config.write_text(line + "\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(what)}: a NUL byte cannot be part"):
        resolve(Overrides(config_file=str(config)))


@pytest.mark.parametrize("group", ["\u0663", "99999999999", "4294967295"])
def test_a_group_number_no_group_can_have_is_refused(group: str) -> None:
    """An Arabic-Indic digit is no number to the system; (gid_t)-1 would leave the group
    alone; larger numbers do not fit."""
    with pytest.raises(ListenError, match="unix_sock_group: no group"):
        UnixSocketAccess(group=group).gid()


def test_restart_keeps_pools_and_sighup_adds_new_ones(tmp_path: Path) -> None:
    base = tmp_path / "d"
    daemon = start_virtvold(base)
    run_virsh(daemon.tcp_uri, "vol-create-as", "default", "v", "1M")
    assert stop_virtvold(daemon) == 0
    config = tmp_path / "virtvold.toml"
    config.write_text("")
    daemon = start_virtvold(base, "--config", str(config))
    try:
        assert "v " in run_virsh(daemon.tcp_uri, "vol-list", "default").stdout
        config.write_text(f'[pools]\nextra = "{tmp_path / "extra"}"\n')
        daemon.process.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "extra" in run_virsh(daemon.tcp_uri, "pool-list").stdout:
                break
        assert " extra     active   yes" in run_virsh(daemon.tcp_uri, "pool-list").stdout
    finally:
        assert stop_virtvold(daemon) == 0


@pytest.mark.parametrize("change", ["another-pool-on-its-folder", "settings-it-cannot-take"])
def test_a_settings_pool_a_client_changed_does_not_keep_the_daemon_from_starting(
    tmp_path: Path, change: str
) -> None:
    """A client may undefine the pool of ``--pool default=DIR`` and define another on that
    folder, or give it settings the folder cannot take (no copy on write, which only
    btrfs has) and delete the folder: the next start cannot set the pool up again. It is
    logged, and the daemon starts and serves the rest, as libvirtd starts whatever pool
    fails."""
    base = tmp_path / "d"
    daemon = start_virtvold(base)
    folder = str(daemon.pool_dir)
    if change == "another-pool-on-its-folder":
        run_virsh(daemon.tcp_uri, "pool-destroy", "default")
        run_virsh(daemon.tcp_uri, "pool-undefine", "default")
        run_virsh(daemon.tcp_uri, "pool-define-as", "other", "dir", "--target", folder)
        run_virsh(daemon.tcp_uri, "pool-start", "other")
        expected = r"^ other\s"  # defined, served (whether it runs is another matter)
    else:
        definition = tmp_path / "default.xml"
        xml = run_virsh(daemon.tcp_uri, "pool-dumpxml", "default").stdout
        definition.write_text(
            xml.replace("</pool>", "<features><cow state='no'/></features></pool>")
        )
        run_virsh(daemon.tcp_uri, "pool-define", str(definition))
        run_virsh(daemon.tcp_uri, "pool-destroy", "default")
        run_virsh(daemon.tcp_uri, "pool-delete", "default")
        expected = r"^ default\s.*\syes$"  # served (it runs if its folder was made again)
    assert stop_virtvold(daemon) == 0
    daemon = start_virtvold(base)
    try:
        listing = run_virsh(daemon.tcp_uri, "pool-list", "--all").stdout
        assert re.search(expected, listing, re.MULTILINE), listing
        log = daemon.log_path.read_text()
        assert "cannot set up storage pool 'default'" in log, log
    finally:
        assert stop_virtvold(daemon) == 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_restart_starts_the_directory_pools_whose_folder_is_there(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """As libvirtd 9.0 does when it starts (observed: docs/libvirtd-observed.md), every
    directory pool whose folder is there runs after a restart, autostart or not: one that
    ran, one never started, one destroyed. One whose folder is gone stays inactive. A
    reload (SIGHUP) starts none of them: libvirtd's only autostarts."""
    base = tmp_path / "d"
    daemon = start_virtvold(base)
    for name in ("ran", "never", "destroyed", "gone"):
        run_virsh(daemon.tcp_uri, "pool-define-as", name, "dir", "--target", str(tmp_path / name))
        run_virsh(daemon.tcp_uri, "pool-build", name)
    run_virsh(daemon.tcp_uri, "pool-start", "ran")
    run_virsh(daemon.tcp_uri, "pool-start", "destroyed")
    run_virsh(daemon.tcp_uri, "pool-destroy", "destroyed")
    (tmp_path / "gone").rmdir()
    daemon.process.send_signal(stop)
    daemon.process.wait(15)
    daemon = start_virtvold(base)
    try:
        listing = run_virsh(daemon.tcp_uri, "pool-list", "--all").stdout
        for name, state in [
            ("default", "active"),
            ("ran", "active"),
            ("never", "active"),
            ("destroyed", "active"),
            ("gone", "inactive"),
        ]:
            assert re.search(rf"^ {name}\s+{state}\s", listing, re.MULTILINE), listing
        run_virsh(daemon.tcp_uri, "pool-destroy", "ran")
        daemon.process.send_signal(signal.SIGHUP)
        time.sleep(1)
        listing = run_virsh(daemon.tcp_uri, "pool-list", "--all").stdout
        assert re.search(r"^ ran\s+inactive\s", listing, re.MULTILINE), listing
    finally:
        assert stop_virtvold(daemon) == 0


def _state_of(uri: str, name: str) -> tuple[str, str, str] | None:
    """(state, persistent, the folder it runs with) of pool ``name``; None if it is gone."""
    info = run_virsh(uri, "pool-info", name, check=False)
    if info.returncode != 0:
        return None
    fields = dict(line.split(":", 1) for line in info.stdout.splitlines() if ":" in line)
    target = re.search(r"<path>(.*)</path>", run_virsh(uri, "pool-dumpxml", name).stdout)
    assert target is not None
    return fields["State"].strip(), fields["Persistent"].strip(), target[1]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_restart_keeps_what_the_pools_ran_with_and_a_new_boot_forgets_it(
    tmp_path: Path, stop: signal.Signals
) -> None:
    """As libvirtd keeps it in its run directory: a transient pool runs again after a
    restart (one destroyed before it does not come back), and a pool defined anew with
    another folder while it ran runs its old folder until it is stopped. After a restart
    of the host (another boot), the transient pool is gone and the new definition runs."""
    base = tmp_path / "d"
    for folder in ("transient", "gone", "old", "new"):
        (tmp_path / folder).mkdir()
    daemon = start_virtvold(base)
    uri = daemon.tcp_uri
    run_virsh(uri, "pool-create-as", "transient", "dir", "--target", str(tmp_path / "transient"))
    run_virsh(uri, "pool-create-as", "gone", "dir", "--target", str(tmp_path / "gone"))
    run_virsh(uri, "pool-destroy", "gone")
    run_virsh(uri, "pool-define-as", "moved", "dir", "--target", str(tmp_path / "old"))
    run_virsh(uri, "pool-start", "moved")
    definition = tmp_path / "moved.xml"
    old_xml = run_virsh(uri, "pool-dumpxml", "moved").stdout
    definition.write_text(old_xml.replace(str(tmp_path / "old"), str(tmp_path / "new")))
    run_virsh(uri, "pool-define", str(definition))
    daemon.process.send_signal(stop)
    daemon.process.wait(15)

    daemon = start_virtvold(base)
    uri = daemon.tcp_uri
    try:
        assert _state_of(uri, "transient") == ("running", "no", str(tmp_path / "transient"))
        assert _state_of(uri, "gone") is None
        assert _state_of(uri, "moved") == ("running", "yes", str(tmp_path / "old"))
        run_virsh(uri, "pool-destroy", "moved")
        run_virsh(uri, "pool-start", "moved")
        assert _state_of(uri, "moved") == ("running", "yes", str(tmp_path / "new"))
        run_virsh(uri, "pool-destroy", "moved")
        run_virsh(uri, "pool-define", str(tmp_path / "moved.xml"))  # the new folder again
        definition.write_text(old_xml)
        run_virsh(uri, "pool-start", "moved")  # runs "new"; now defined anew as "old"
        run_virsh(uri, "pool-define", str(definition))
    finally:
        assert stop_virtvold(daemon) == 0

    # Another boot: what ran is forgotten, as a host's restart empties a run directory.
    (base / "state" / "running" / "boot_id").write_text("another boot\n")
    daemon = start_virtvold(base)
    uri = daemon.tcp_uri
    try:
        assert _state_of(uri, "transient") is None
        assert _state_of(uri, "moved") == ("running", "yes", str(tmp_path / "old"))
    finally:
        assert stop_virtvold(daemon) == 0


def test_what_a_pool_ran_with_is_forgotten_when_it_cannot_run_again(tmp_path: Path) -> None:
    """A pool defined anew while it ran, whose old folder is gone by the restart: it does
    not run, and it is its new definition that stays (and runs at the next restart), as
    libvirtd forgets the state of a pool its check finds inactive."""
    base = tmp_path / "d"
    for folder in ("old", "new"):
        (tmp_path / folder).mkdir()
    daemon = start_virtvold(base)
    run_virsh(daemon.tcp_uri, "pool-define-as", "moved", "dir", "--target", str(tmp_path / "old"))
    run_virsh(daemon.tcp_uri, "pool-start", "moved")
    definition = tmp_path / "moved.xml"
    xml = run_virsh(daemon.tcp_uri, "pool-dumpxml", "moved").stdout
    definition.write_text(xml.replace(str(tmp_path / "old"), str(tmp_path / "new")))
    run_virsh(daemon.tcp_uri, "pool-define", str(definition))
    assert stop_virtvold(daemon) == 0
    (tmp_path / "old").rmdir()
    for state in ("inactive", "running"):
        daemon = start_virtvold(base)
        try:
            assert _state_of(daemon.tcp_uri, "moved") == (state, "yes", str(tmp_path / "new"))
        finally:
            assert stop_virtvold(daemon) == 0


def _shutdown_config(tmp_path: Path, seconds: float) -> Path:
    config = tmp_path / "virtvold.toml"
    config.write_text(f"shutdown_timeout = {seconds}\n")
    return config


async def _upload_under_way(daemon: Virtvold) -> tuple[bytes, RawClient]:
    """Volume "v" with 1 MiB of old content, and a client whose whole-volume upload into
    it has sent 100 kB and goes on: the old content, and that client."""
    run_virsh(daemon.tcp_uri, "vol-create-as", "default", "v", "1M")
    old = os.urandom(1 << 20)
    (daemon.pool_dir / "v").write_bytes(old)
    client = await RawClient.connect(daemon.port)
    await client.open()
    serial = await client.open_upload("v")
    client.send(*client.rpc.send_data(serial, b"\x02" * 100_000))
    await client.writer.drain()
    await asyncio.sleep(0.2)  # the daemon takes the data in
    return old, client


async def test_sigterm_aborts_a_running_upload(tmp_path: Path) -> None:
    daemon = start_virtvold(tmp_path / "d", "--config", str(_shutdown_config(tmp_path, 0.3)))
    try:
        old, client = await _upload_under_way(daemon)
        daemon.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.process.wait, 10) == 0
        assert await client.next_event() is None
        await client.close()
    finally:
        stop_virtvold(daemon)
    assert (daemon.pool_dir / "v").read_bytes() == old
    assert os.listdir(daemon.pool_dir) == ["v"]
    log = daemon.log_text()
    assert "upload default/v: dropped" in log
    assert "stopped" in log
    assert not (tmp_path / "d" / "virtvold-sock").exists()


def test_a_second_daemon_on_one_state_directory_is_refused(tmp_path: Path) -> None:
    # Two daemons over one state directory would overwrite each other's pool definitions,
    # and a pool starting in one removes the other's upload temporaries.
    first = start_virtvold(tmp_path / "a")
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "virtvol.daemon",
                "--state-dir",
                str(first.state_dir),
                "--listen",
                f"unix://{tmp_path / 'second-sock'}",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a second daemon started on the state directory in use")
    finally:
        assert stop_virtvold(first) == 0
    assert second.returncode == 1
    assert f"state directory {first.state_dir} is in use by virtvold" in second.stderr
    assert "Traceback" not in second.stderr
    # Once the first daemon is gone the directory is free again.
    stop_virtvold(start_virtvold(tmp_path / "a"))


def _wait_for_log(daemon: Virtvold, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in daemon.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
async def test_a_second_signal_while_stopping_lets_the_stop_finish(
    tmp_path: Path, second: signal.Signals
) -> None:
    # Killed by the second signal, the daemon would leave the upload's temporary in the
    # pool (and SIGINT ended in a traceback); the stop is bounded by shutdown_timeout anyway.
    daemon = start_virtvold(tmp_path / "d", "--config", str(_shutdown_config(tmp_path, 1.5)))
    try:
        old, client = await _upload_under_way(daemon)
        daemon.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(_wait_for_log, daemon, "stopping:")
        daemon.process.send_signal(second)
        assert await asyncio.to_thread(daemon.process.wait, 10) == 0
        await client.close()
    finally:
        stop_virtvold(daemon)
    assert (daemon.pool_dir / "v").read_bytes() == old
    assert os.listdir(daemon.pool_dir) == ["v"]
    log = daemon.log_text()
    assert "Traceback" not in log
    assert "stopped" in log
