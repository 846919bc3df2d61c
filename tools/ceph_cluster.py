"""Start a throwaway Ceph cluster (one monitor, one memstore OSD) for tests and benchmarks.

Everything lives in one folder: configuration, keyrings, the monitor's store, the
OSD's data, logs and admin sockets. No systemd, no ``/etc/ceph``, no ``/var/lib/ceph``.
cephx is on, as on any real cluster, so clients need the admin key. The monitor
listens on a loopback port given by the caller; pools get one replica.

Bootstrap follows Ceph's manual deployment: keyrings with ``ceph-authtool``, a
monitor map with ``monmaptool``, ``ceph-mon --mkfs``, then an OSD id from
``ceph osd new`` and ``ceph-osd --mkfs``. ``paxos propose interval`` is cut from
1 s to 10 ms, which brings start-up from ~7 s to ~1 s. memstore keeps objects in
RAM (about twice their size), so test data should stay small.

    python -m tools.ceph_cluster DIR PORT
        prints "conf=PATH key=BASE64" once the cluster takes writes; SIGINT or SIGTERM stops it

From Python: ``cluster = start(folder, port)``, ``cluster.create_pool("rbd")``,
then ``cluster.stop()`` (the OSD first, then the monitor).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "apt-get install -y --no-install-recommends ceph-mon ceph-osd ceph-common"
MEMSTORE_BYTES = 1 << 30
START_TIMEOUT = 60.0


class CephError(RuntimeError):
    """The throwaway cluster could not be started or used."""


@dataclass(frozen=True)
class CephCluster:
    """A running one-monitor, one-OSD cluster."""

    folder: Path
    port: int
    fsid: str
    admin_key: str
    monitor: subprocess.Popen[bytes]
    osd: subprocess.Popen[bytes]

    @property
    def conf(self) -> Path:
        """The cluster's ``ceph.conf`` (monitor address, keyring of client.admin)."""
        return self.folder / "ceph.conf"

    @property
    def mon_host(self) -> str:
        return "127.0.0.1"

    def ceph(self, *args: str, timeout: float = 30.0) -> str:
        """Run the ``ceph`` command against this cluster; its stdout."""
        return _run(["ceph", "--conf", str(self.conf), *args], timeout=timeout)

    def rbd(self, *args: str, timeout: float = 60.0) -> str:
        """Run the ``rbd`` command against this cluster; its stdout."""
        return _run(["rbd", "--conf", str(self.conf), *args], timeout=timeout)

    def create_pool(self, name: str, pg_num: int = 8) -> None:
        """A replicated pool with one copy, ready for RBD images."""
        self.ceph("osd", "pool", "create", name, str(pg_num), str(pg_num))
        self.ceph("osd", "pool", "set", name, "size", "1", "--yes-i-really-mean-it")
        self.ceph("osd", "pool", "application", "enable", name, "rbd")
        self.rbd("pool", "init", name)

    def stop(self, *, grace: float = 10.0) -> None:
        """Stop the OSD, then the monitor (an OSD without monitor hangs on shutdown)."""
        for process in (self.osd, self.monitor):
            if process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _run(argv: list[str], *, timeout: float = 30.0, check: bool = True) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise CephError(f"{argv[0]} not found; {INSTALL_HINT}") from None
    except subprocess.TimeoutExpired:
        raise CephError(f"{' '.join(argv[:4])} timed out after {timeout} s") from None
    if check and done.returncode != 0:
        raise CephError(
            f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
        )
    return done.stdout.decode()


def _conf_text(folder: Path, fsid: str, port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{port}
mon initial members = a
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {folder}/admin.keyring
run dir = {folder}/run
admin socket = {folder}/run/$name.asok
log file = {folder}/log/$name.log
ms bind msgr1 = false
ms bind ipv4 = true
ms bind ipv6 = false
public addr = 127.0.0.1
paxos propose interval = 0.01
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0

[mon]
mon data = {folder}/mon/$name

[osd]
osd data = {folder}/osd/$name
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
osd max object name len = 256
osd max object namespace len = 64
"""


def start(folder: Path | str, port: int) -> CephCluster:
    """Bootstrap and start a cluster in ``folder`` (created; must be empty) on ``port``."""
    for tool in ("ceph-mon", "ceph-osd", "ceph", "ceph-authtool", "monmaptool", "rbd"):
        if shutil.which(tool) is None:
            raise CephError(f"{tool} not found; {INSTALL_HINT}")
    folder = Path(folder).absolute()
    for sub in ("run", "log", "mon/mon.a", "osd/osd.0"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    fsid = str(uuid.uuid4())
    conf = folder / "ceph.conf"
    conf.write_text(_conf_text(folder, fsid, port))
    c = ["--conf", str(conf)]
    mon_keyring = folder / "mon.keyring"
    admin_keyring = folder / "admin.keyring"
    caps = ["--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"]
    new_key = ["ceph-authtool", "--gen-key", "--create-keyring"]
    _run([*new_key, str(admin_keyring), "-n", "client.admin", *caps])
    _run([*new_key, str(mon_keyring), "-n", "mon.", "--cap", "mon", "allow *"])
    _run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(admin_keyring)])
    monmap = folder / "monmap"
    address = f"[v2:127.0.0.1:{port}]"
    _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", address, str(monmap)])
    _run(
        [
            "ceph-mon",
            *c,
            "--mkfs",
            "-i",
            "a",
            "--monmap",
            str(monmap),
            "--keyring",
            str(mon_keyring),
        ]
    )
    monitor = _spawn(["ceph-mon", *c, "-f", "-i", "a"], folder / "log" / "mon.a.out")
    osd: subprocess.Popen[bytes] | None = None
    try:
        admin_key = _run(["ceph-authtool", str(admin_keyring), "-p", "-n", "client.admin"]).strip()
        osd_uuid = str(uuid.uuid4())
        osd_id = _run(["ceph", *c, "osd", "new", osd_uuid], timeout=START_TIMEOUT).strip()
        osd_dir = folder / "osd" / f"osd.{osd_id}"
        osd_dir.mkdir(parents=True, exist_ok=True)
        osd_keyring = osd_dir / "keyring"
        mkfs = ["--mkfs", "--mkkey", "--no-mon-config", "--osd-uuid", osd_uuid]
        _run(
            ["ceph-osd", *c, "-i", osd_id, *mkfs, "--keyring", str(osd_keyring)],
            timeout=START_TIMEOUT,
        )
        osd_caps = ["osd", "allow *", "mon", "allow profile osd"]
        _run(["ceph", *c, "auth", "add", f"osd.{osd_id}", *osd_caps, "-i", str(osd_keyring)])
        osd = _spawn(
            ["ceph-osd", *c, "-f", "-i", osd_id, "--keyring", str(osd_keyring)],
            folder / "log" / f"osd.{osd_id}.out",
        )
        cluster = CephCluster(folder, port, fsid, admin_key, monitor, osd)
        _wait_osd_up(cluster)
        return cluster
    except BaseException:
        for process in (osd, monitor):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        raise


def _spawn(argv: list[str], output: Path) -> subprocess.Popen[bytes]:
    """A daemon in the foreground, its output in ``output``."""
    with output.open("wb") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)


def _wait_osd_up(cluster: CephCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        for process in (cluster.monitor, cluster.osd):
            if process.poll() is not None:
                raise CephError(f"a Ceph daemon exited early; see {cluster.folder}/log")
        status = json.loads(cluster.ceph("osd", "stat", "--format", "json"))
        if status.get("num_up_osds", status.get("osdmap", {}).get("num_up_osds")) == 1:
            return
        if time.monotonic() > deadline:
            raise CephError(f"the OSD did not come up; see {cluster.folder}/log")
        time.sleep(0.1)


def main() -> None:
    folder, port = sys.argv[1], int(sys.argv[2])
    # SIGINT (even when started in the background, where it is ignored) and SIGTERM
    # both stop the cluster in order.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster = start(folder, port)
    print(f"conf={cluster.conf} key={cluster.admin_key}", flush=True)
    try:
        cluster.monitor.wait()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
