"""virtvold's settings: defaults, the TOML config file, and command-line overrides.

The config file holds the same settings as the command line::

    listen = ["tcp://127.0.0.1:16509", "unix:///run/virtvol/virtvold-sock"]
    state_dir = "/var/lib/virtvol"
    protocol = "current"          # or "legacy": a daemon from before sparse streams
    log_level = "info"
    keepalive_interval = 5        # seconds; libvirtd's defaults
    keepalive_count = 5
    shutdown_timeout = 30         # seconds running streams get on SIGTERM
    sync_uploads = true           # flush a whole-volume upload to disk before it replaces
                                  # the volume (false: survives daemon crashes, not power cuts)
    max_clients = 5000            # connections at once (libvirtd's name and default)
    max_anonymous_clients = 20    # of them, connections that have not sent CONNECT_OPEN yet
    max_client_requests = 5       # calls in flight per connection; reading pauses beyond
    max_client_streams = 16       # upload/download streams open per connection
    handshake_timeout = 30        # seconds a connection may take to send CONNECT_OPEN

    [pools]
    default = "/var/lib/virtvol/pools/default"

A flag given on the command line replaces the file's value; ``--pool`` adds to
(or overrides by name) the file's pools.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

ProtocolMode = Literal["current", "legacy"]
PROTOCOL_MODES: tuple[ProtocolMode, ...] = ("current", "legacy")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_TCP_LISTEN = "tcp://127.0.0.1:16509"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


def default_state_dir() -> str:
    """``/var/lib/virtvol`` as root, else the per-user data dir."""
    if os.geteuid() == 0:
        return "/var/lib/virtvol"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "virtvol")


def default_runtime_dir() -> str:
    """Where the default Unix socket lives: ``/run/virtvol`` as root, else the user runtime dir."""
    if os.geteuid() == 0:
        return "/run/virtvol"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/virtvol-{os.geteuid()}"
    return str(Path(base) / "virtvol")


def default_listen() -> list[str]:
    return [f"unix://{default_runtime_dir()}/virtvold-sock", DEFAULT_TCP_LISTEN]


@dataclass(frozen=True)
class Settings:
    """Everything the daemon is configured with. ``listen`` empty means "the defaults"."""

    listen: tuple[str, ...] = ()
    pools: dict[str, str] = field(default_factory=dict)
    state_dir: str = ""
    protocol: ProtocolMode = "current"
    log_level: str = "info"
    keepalive_interval: float = 5.0
    keepalive_count: int = 5
    shutdown_timeout: float = 30.0
    sync_uploads: bool = True
    max_clients: int = 5000
    max_anonymous_clients: int = 20
    max_client_requests: int = 5
    max_client_streams: int = 16
    handshake_timeout: float = 30.0
    config_file: str | None = None

    @property
    def legacy(self) -> bool:
        return self.protocol == "legacy"

    def effective_listen(self) -> list[str]:
        return list(self.listen) if self.listen else default_listen()

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


def _number(table: dict[str, Any], key: str, default: float, *, minimum: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{key} must be a number >= {minimum}, not {value!r}")
    return float(value)


def _integer(table: dict[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, not {value!r}")
    return value


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
        "max_clients",
        "max_anonymous_clients",
        "max_client_requests",
        "max_client_streams",
        "handshake_timeout",
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
    state_dir = table.get("state_dir", "")
    if not isinstance(state_dir, str):
        raise ConfigError(f"{source}: state_dir must be a string")
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
        keepalive_interval=_number(table, "keepalive_interval", 5.0, minimum=0.001),
        keepalive_count=int(count),
        shutdown_timeout=_number(table, "shutdown_timeout", 30.0, minimum=0),
        sync_uploads=sync_uploads,
        max_clients=_integer(table, "max_clients", 5000, minimum=1),
        max_anonymous_clients=_integer(table, "max_anonymous_clients", 20, minimum=1),
        max_client_requests=_integer(table, "max_client_requests", 5, minimum=1),
        max_client_streams=_integer(table, "max_client_streams", 16, minimum=1),
        handshake_timeout=_number(table, "handshake_timeout", 30.0, minimum=0.001),
        config_file=source,
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


def resolve(overrides: Overrides) -> Settings:
    """The file's settings (if any) with the command line's on top."""
    base = load_config_file(overrides.config_file) if overrides.config_file else Settings()
    pools = dict(base.pools)
    for text in overrides.pools:
        name, directory = parse_pool_option(text)
        pools[name] = directory
    return replace(
        base,
        listen=overrides.listen or base.listen,
        pools=pools,
        state_dir=overrides.state_dir if overrides.state_dir is not None else base.state_dir,
        protocol=_check_protocol(overrides.protocol) if overrides.protocol else base.protocol,
        log_level=_check_log_level(overrides.log_level) if overrides.log_level else base.log_level,
    )
