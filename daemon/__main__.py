"""``virtvold``: the storage daemon speaking libvirt's RPC protocol.

virtvold [--config FILE] [--listen URL]... [--pool NAME=DIR]... [--state-dir DIR]
         [--protocol current|legacy] [--log-level LEVEL] [--auth-tcp none|sasl]
         [--unix-sock-dir DIR] [--system | --session] [--version]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import sys
from typing import TYPE_CHECKING

from virtvol.daemon import tcpauth
from virtvol.daemon.config import (
    AUTH_TCP_MODES,
    DEFAULT_CONFIG_FILE,
    LOG_LEVELS,
    PROTOCOL_MODES,
    ConfigError,
    Overrides,
    Settings,
    resolve,
)
from virtvol.daemon.service import Daemon, StartupError
from virtvol.daemon.systemd import Notifier

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

log = logging.getLogger("virtvol.daemon")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virtvold",
        description="Serve directory storage pools to libvirt clients (virsh, python3-libvirt).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (virtvol) {_version()}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML config file (flags override it); default {DEFAULT_CONFIG_FILE} if present",
    )
    parser.add_argument(
        "--listen",
        metavar="URL",
        action="append",
        default=[],
        help="tcp://HOST:PORT (needs --auth-tcp none), tls://HOST[:PORT] (16514),"
        " unix:///PATH or unix-ro:///PATH (read-only); repeatable."
        " Default: virtstoraged's Unix sockets, no TCP",
    )
    parser.add_argument(
        "--auth-tcp",
        choices=AUTH_TCP_MODES,
        help="'none' allows plain TCP listeners, unauthenticated (libvirtd's auth_tcp)",
    )
    parser.add_argument(
        "--unix-sock-dir",
        metavar="DIR",
        help="directory of the default Unix sockets (/run/libvirt in system mode,"
        " $XDG_RUNTIME_DIR/libvirt in session mode)",
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--system",
        dest="mode",
        action="store_const",
        const="system",
        help="system mode: read-write and read-only sockets (the default as root)",
    )
    modes.add_argument(
        "--session",
        dest="mode",
        action="store_const",
        const="session",
        help="session mode: one socket for this user (the default for other users)",
    )
    parser.add_argument(
        "--pool",
        metavar="NAME=DIR",
        action="append",
        default=[],
        help="define (persistently) and start a directory pool; repeatable",
    )
    parser.add_argument("--state-dir", metavar="DIR", help="where pool definitions persist")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOL_MODES,
        help="'legacy' behaves like libvirt before sparse streams (3.4)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower)
    return parser


def overrides_from_args(argv: Sequence[str] | None) -> Overrides:
    args = build_parser().parse_args(argv)
    return Overrides(
        config_file=args.config,
        listen=tuple(args.listen),
        pools=tuple(args.pool),
        state_dir=args.state_dir,
        protocol=args.protocol,
        log_level=args.log_level,
        auth_tcp=args.auth_tcp,
        unix_sock_dir=args.unix_sock_dir,
        mode=args.mode,
    )


def _version() -> str:
    try:
        return importlib.metadata.version("virtvol")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def serve(settings: Settings, overrides: Overrides, notifier: Notifier) -> None:
    # The daemon's asyncio objects are made inside the loop that runs them.
    daemon = Daemon(settings, overrides, notifier)
    await daemon.start()
    await daemon.run_until_stopped()


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (faster socket I/O); plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    overrides = overrides_from_args(argv)
    try:
        settings = resolve(overrides)
        tcpauth.check_listen_urls(settings)
    except ConfigError as exc:
        print(f"virtvold: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="virtvold %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    notifier = Notifier.from_environment()
    loop_factory = _uvloop_factory()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(settings, overrides, notifier))
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    finally:
        notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
