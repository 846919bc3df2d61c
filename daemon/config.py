"""virtvold's settings: defaults, the TOML config file, and command-line overrides.

The config file (``--config FILE``, else ``/etc/virtvol/virtvold.toml`` when it
exists, as libvirtd reads ``/etc/libvirt/libvirtd.conf``) holds the same settings as the
command line::

    listen = ["unix:///run/libvirt/virtstoraged-sock", "tcp://127.0.0.1:16509"]
    auth_tcp = "none"             # needed for any plain TCP listener (libvirtd's name)
    unix_sock_dir = "/run/libvirt"  # where the default Unix sockets go
    state_dir = "/var/lib/virtvol"
    protocol = "current"          # or "legacy": a daemon from before sparse streams
    log_level = "info"
    keepalive_interval = 5        # seconds; libvirtd's defaults (-1: never ping)
    keepalive_count = 5
    shutdown_timeout = 30         # seconds running streams get on SIGTERM
    sync_uploads = true           # flush a whole-volume upload to disk before it replaces
                                  # the volume (false: survives daemon crashes, not power cuts)
    max_clients = 5000            # connections at once (libvirtd's name and default)
    max_anonymous_clients = 20    # clients waiting for authentication: none, with "none"
                                  # (read as libvirtd reads it; 0: no such limit)
    max_client_requests = 5       # calls in flight per connection; reading pauses beyond
    max_client_streams = 16       # upload/download streams open per connection
    handshake_timeout = 30        # seconds a connection may take to send CONNECT_OPEN

    # libvirtd.conf's names. TLS (for tls:// listeners): without ca_file/cert_file/
    # key_file the files are looked up where libvirt keeps them (docs/security.md).
    ca_file = "/etc/pki/CA/cacert.pem"
    cert_file = "/etc/pki/libvirt/servercert.pem"
    key_file = "/etc/pki/libvirt/private/serverkey.pem"
    crl_file = "/etc/pki/CA/cacrl.pem"
    tls_no_verify_certificate = false   # true: accept clients without checking certificates
    tls_allowed_dn_list = ["C=GB,ST=London,L=London,O=Example,CN=*"]
    unix_sock_group = "libvirt"   # group of our own Unix sockets
    unix_sock_rw_perms = "0770"   # default "0700": the owner only
    unix_sock_ro_perms = "0777"

    [pools]
    default = "/var/lib/virtvol/pools/default"

    [ceph_keys]                   # cephx keys offered to rbd pools as private secrets,
    "client.admin secret" = "/etc/ceph/ceph.client.admin.keyring"   # by usage name

A flag given on the command line replaces the file's value; ``--pool`` adds to
(or overrides by name) the file's pools.

Without ``listen``, virtvold takes the Unix sockets of libvirt's storage daemon,
virtstoraged, which libvirt's clients try first for ``storage:///system`` and
``storage:///session``: in system mode (root) ``/run/libvirt/virtstoraged-sock`` and
``virtstoraged-sock-ro``, in session mode ``$XDG_RUNTIME_DIR/libvirt/virtstoraged-sock``
(libvirt has no read-only socket in session mode). No TCP listener is opened unless
one is asked for, and plain TCP is refused unless ``auth_tcp = "none"``: virtvold has
no SASL, so such a listener gives every client that reaches it full access.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from virtvol.protocol.constants import ProtocolMode

PROTOCOL_MODES: tuple[ProtocolMode, ...] = ("current", "legacy")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# libvirtd's values for auth_tcp that mean something here: "sasl" (its default) refuses
# plain TCP, since virtvold has no SASL; "none" allows it, unauthenticated.
AUTH_TCP_MODES = ("sasl", "none")
DEFAULT_CONFIG_FILE = "/etc/virtvol/virtvold.toml"
SYSTEM_SOCK_DIR = "/run/libvirt"
# The socket names of libvirt's modular storage daemon (libvirt's remote driver builds
# them from the URI's driver name: "virt" + "storage" + "d").
SOCKET_NAME = "virtstoraged-sock"
RO_SOCKET_NAME = "virtstoraged-sock-ro"
DaemonMode = Literal["system", "session"]


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


def default_state_dir() -> str:
    """``/var/lib/virtvol`` as root, else the per-user data dir."""
    if os.geteuid() == 0:
        return "/var/lib/virtvol"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "virtvol")


def default_mode() -> DaemonMode:
    """System mode as root, session mode otherwise: libvirt's clients choose the same way."""
    return "system" if os.geteuid() == 0 else "session"


def session_sock_dir() -> str:
    """libvirt's user runtime dir: ``$XDG_RUNTIME_DIR/libvirt``, else under the cache dir."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("XDG_CACHE_HOME")
    return str(Path(base or Path.home() / ".cache") / "libvirt")


def default_listen(mode: DaemonMode, sock_dir: str = "") -> list[str]:
    """virtstoraged's Unix sockets for ``mode``, in ``sock_dir`` when given."""
    if mode == "session":
        return [f"unix://{sock_dir or session_sock_dir()}/{SOCKET_NAME}"]
    directory = sock_dir or SYSTEM_SOCK_DIR
    return [f"unix://{directory}/{SOCKET_NAME}", f"unix-ro://{directory}/{RO_SOCKET_NAME}"]


@dataclass(frozen=True)
class Settings:
    """Everything the daemon is configured with. ``listen`` empty means "the defaults"."""

    listen: tuple[str, ...] = ()
    pools: dict[str, str] = field(default_factory=dict)
    state_dir: str = ""
    protocol: ProtocolMode = "current"
    log_level: str = "info"
    # None: the daemon never pings (libvirtd.conf's -1); clients' PINGs are still answered.
    keepalive_interval: float | None = 5.0
    keepalive_count: int = 5
    shutdown_timeout: float = 30.0
    sync_uploads: bool = True
    auth_tcp: str = "sasl"
    unix_sock_dir: str = ""
    mode: DaemonMode | None = None  # None: by the effective user, as libvirt
    max_clients: int = 5000
    max_anonymous_clients: int = 20
    max_client_requests: int = 5
    max_client_streams: int = 16
    handshake_timeout: float = 30.0
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    crl_file: str = ""
    tls_no_verify_certificate: bool = False
    tls_allowed_dn_list: tuple[str, ...] | None = None  # None: every verified client
    unix_sock_group: str = ""
    unix_sock_rw_perms: int = 0o700
    unix_sock_ro_perms: int = 0o777
    # usage name -> keyring file: private secrets of usage type ceph (see docs/rbd.md).
    ceph_keys: dict[str, str] = field(default_factory=dict)
    config_file: str | None = None

    @property
    def legacy(self) -> bool:
        return self.protocol == "legacy"

    @property
    def plain_tcp_allowed(self) -> bool:
        return self.auth_tcp == "none"

    def effective_mode(self) -> DaemonMode:
        return self.mode or default_mode()

    def effective_listen(self) -> list[str]:
        if self.listen:
            return list(self.listen)
        return default_listen(self.effective_mode(), self.unix_sock_dir)

    def effective_state_dir(self) -> str:
        return self.state_dir or default_state_dir()


@dataclass(frozen=True)
class Overrides:
    """What the command line said; None / empty means "not given"."""

    config_file: str | None = None
    listen: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()
    state_dir: str | None = None
    protocol: str | None = None
    log_level: str | None = None
    auth_tcp: str | None = None
    unix_sock_dir: str | None = None
    mode: DaemonMode | None = None


def parse_pool_option(text: str) -> tuple[str, str]:
    """``NAME=DIR`` from ``--pool``."""
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise ConfigError(f"--pool wants NAME=DIR, not {text!r}")
    return name, directory


def _check_protocol(value: object) -> ProtocolMode:
    if value == "current":
        return "current"
    if value == "legacy":
        return "legacy"
    raise ConfigError(f"protocol must be one of {', '.join(PROTOCOL_MODES)}, not {value!r}")


def _check_log_level(value: object) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
    return value.lower()


def _check_auth_tcp(value: object) -> str:
    if value not in AUTH_TCP_MODES:
        raise ConfigError(f"auth_tcp must be one of {', '.join(AUTH_TCP_MODES)}, not {value!r}")
    return str(value)


def _number(table: dict[str, Any], key: str, default: float, *, minimum: float) -> float:
    value = table.get(key, default)
    # TOML has inf and nan; neither is a usable time or count.
    try:
        # An integer past what a float holds (TOML takes any number of digits) is no
        # usable number either; math.isfinite cannot even take it.
        usable = (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(value)
            and value >= minimum
        )
    except OverflowError:
        usable = False
    if not usable:
        shown = value if not isinstance(value, int) or value.bit_length() < 64 else "too large"
        raise ConfigError(f"{key} must be a finite number >= {minimum}, not {shown!r}")
    return float(value)


def _keepalive_interval(table: dict[str, Any]) -> float | None:
    """Seconds of silence before a PING; -1 turns the daemon's PINGs off, as in libvirtd."""
    if table.get("keepalive_interval") == -1 and not isinstance(table["keepalive_interval"], bool):
        return None
    return _number(table, "keepalive_interval", 5.0, minimum=0.001)


def _integer(table: dict[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, not {value!r}")
    return value


_TLS_FILE_KEYS = ("ca_file", "cert_file", "key_file", "crl_file")
_ACCESS_KEYS = (
    *_TLS_FILE_KEYS,
    "tls_no_verify_certificate",
    "tls_allowed_dn_list",
    "unix_sock_group",
    "unix_sock_rw_perms",
    "unix_sock_ro_perms",
)


def _perms(table: dict[str, Any], key: str, default: int, source: str) -> int:
    """An octal permission string such as ``"0770"``, as libvirtd.conf writes them."""
    value = table.get(key)
    if value is None:
        return default
    try:
        mode = int(value, 8) if isinstance(value, str) else -1
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ConfigError(f'{source}: {key} must be an octal mode such as "0770", not {value!r}')
    return mode


def _access_settings(table: dict[str, Any], source: str) -> dict[str, Any]:
    """The TLS and Unix socket access settings (libvirtd.conf's names)."""
    result: dict[str, Any] = {}
    for key in (*_TLS_FILE_KEYS, "unix_sock_group"):
        value = table.get(key, "")
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string")
        result[key] = value
    no_verify = table.get("tls_no_verify_certificate", False)
    if no_verify not in (True, False, 0, 1):  # libvirtd.conf writes 0 or 1
        raise ConfigError(f"{source}: tls_no_verify_certificate must be true or false")
    result["tls_no_verify_certificate"] = bool(no_verify)
    dn_list = table.get("tls_allowed_dn_list")
    if dn_list is not None and (
        not isinstance(dn_list, list) or not all(isinstance(item, str) for item in dn_list)
    ):
        raise ConfigError(f"{source}: tls_allowed_dn_list must be a list of DN patterns")
    result["tls_allowed_dn_list"] = tuple(dn_list) if dn_list is not None else None
    result["unix_sock_rw_perms"] = _perms(table, "unix_sock_rw_perms", 0o700, source)
    result["unix_sock_ro_perms"] = _perms(table, "unix_sock_ro_perms", 0o777, source)
    return result


def settings_from_toml(table: dict[str, Any], source: str) -> Settings:
    """Settings from a parsed TOML document; unknown keys are refused (typos must not pass)."""
    known = {
        "listen",
        "pools",
        "state_dir",
        "protocol",
        "log_level",
        "keepalive_interval",
        "keepalive_count",
        "shutdown_timeout",
        "sync_uploads",
        "auth_tcp",
        "unix_sock_dir",
        "max_clients",
        "max_anonymous_clients",
        "max_client_requests",
        "max_client_streams",
        "handshake_timeout",
        *_ACCESS_KEYS,
        "ceph_keys",
    }
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    listen = table.get("listen", [])
    if not isinstance(listen, list) or not all(isinstance(item, str) for item in listen):
        raise ConfigError(f"{source}: listen must be a list of URLs")
    pools = table.get("pools", {})
    if not isinstance(pools, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in pools.items()
    ):
        raise ConfigError(f"{source}: [pools] must map names to directories")
    ceph_keys = table.get("ceph_keys", {})
    if not isinstance(ceph_keys, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in ceph_keys.items()
    ):
        raise ConfigError(f"{source}: [ceph_keys] must map usage names to key files")
    state_dir = table.get("state_dir", "")
    if not isinstance(state_dir, str):
        raise ConfigError(f"{source}: state_dir must be a string")
    unix_sock_dir = table.get("unix_sock_dir", "")
    if not isinstance(unix_sock_dir, str) or (unix_sock_dir and not unix_sock_dir.startswith("/")):
        raise ConfigError(f"{source}: unix_sock_dir must be an absolute path")
    sync_uploads = table.get("sync_uploads", True)
    if not isinstance(sync_uploads, bool):
        raise ConfigError(f"{source}: sync_uploads must be true or false")
    count = _number(table, "keepalive_count", 5, minimum=0)
    if count != int(count):
        raise ConfigError(f"{source}: keepalive_count must be an integer")
    return Settings(
        listen=tuple(listen),
        pools=dict(pools),
        state_dir=state_dir,
        protocol=_check_protocol(table.get("protocol", "current")),
        log_level=_check_log_level(table.get("log_level", "info")),
        keepalive_interval=_keepalive_interval(table),
        keepalive_count=int(count),
        shutdown_timeout=_number(table, "shutdown_timeout", 30.0, minimum=0),
        sync_uploads=sync_uploads,
        auth_tcp=_check_auth_tcp(table.get("auth_tcp", "sasl")),
        unix_sock_dir=unix_sock_dir,
        max_clients=_integer(table, "max_clients", 5000, minimum=1),
        max_anonymous_clients=_integer(table, "max_anonymous_clients", 20, minimum=0),
        max_client_requests=_integer(table, "max_client_requests", 5, minimum=1),
        max_client_streams=_integer(table, "max_client_streams", 16, minimum=1),
        handshake_timeout=_number(table, "handshake_timeout", 30.0, minimum=0.001),
        ceph_keys=dict(ceph_keys),
        config_file=source,
        **_access_settings(table, source),
    )


def load_config_file(path: str) -> Settings:
    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    return settings_from_toml(table, path)


def config_file_to_read(overrides: Overrides) -> str | None:
    """``--config``, else the default file when it exists, else none."""
    if overrides.config_file:
        return overrides.config_file
    return DEFAULT_CONFIG_FILE if os.path.exists(DEFAULT_CONFIG_FILE) else None


def resolve(overrides: Overrides) -> Settings:
    """The file's settings (if any) with the command line's on top."""
    path = config_file_to_read(overrides)
    base = load_config_file(path) if path else Settings()
    pools = dict(base.pools)
    for text in overrides.pools:
        name, directory = parse_pool_option(text)
        pools[name] = directory
    settings = replace(
        base,
        listen=overrides.listen or base.listen,
        pools=pools,
        state_dir=overrides.state_dir if overrides.state_dir is not None else base.state_dir,
        protocol=_check_protocol(overrides.protocol) if overrides.protocol else base.protocol,
        log_level=_check_log_level(overrides.log_level) if overrides.log_level else base.log_level,
        auth_tcp=_check_auth_tcp(overrides.auth_tcp) if overrides.auth_tcp else base.auth_tcp,
        unix_sock_dir=os.path.abspath(overrides.unix_sock_dir)
        if overrides.unix_sock_dir
        else base.unix_sock_dir,
        mode=overrides.mode or base.mode,
    )
    _check_no_nul(settings)
    return settings


def _check_no_nul(settings: Settings) -> None:
    """Refuse a path or name with a NUL byte, which no file can have: the system calls
    would fail with a Python error deep in the start-up (or in a pool's set-up)."""
    named = [
        ("state_dir", settings.state_dir or ""),
        ("unix_sock_dir", settings.unix_sock_dir or ""),
        *[(f"pool {name!r}", f"{name}={directory}") for name, directory in settings.pools.items()],
        *[(key, getattr(settings, key)) for key in _TLS_FILE_KEYS],
        ("unix_sock_group", settings.unix_sock_group),
        *[("listen", url) for url in settings.listen],
    ]
    for what, text in named:
        if "\0" in text:
            raise ConfigError(f"{what}: a NUL byte cannot be part of a path or name")
