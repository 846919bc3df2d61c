"""``virtvol``: virsh's storage commands, over virtvol.client.

    virtvol [-c URI] [--protocol current|legacy] [-q] COMMAND [ARGS...]

Names, arguments, output and error texts follow virsh, so that a virsh user
needs nothing new: tables and ``Label:  value`` blocks as virsh draws them,
every command's output followed by one empty line, errors on stderr as
``error: <what failed>`` and ``error: <the daemon's message>`` with exit
status 1. vol-upload and vol-download also draw a progress bar on a terminal
and print one summary line on stderr (``--quiet`` silences both).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

from virtvol.client.connection import Connection, connect
from virtvol.client.display import format_fields, format_table
from virtvol.client.errors import (
    LibvirtError,
    SparseUnsupported,
    TransportError,
    VirtvolError,
)
from virtvol.client.objects import PoolState, StoragePool, StorageVolume, VolumeType
from virtvol.client.progress import TransferProgress, summary_line
from virtvol.client.sizes import SizeError, format_size, parse_size

__all__ = ["main"]

LIST_INACTIVE = 1
LIST_ACTIVE = 2
POOL_CREATE_WITH_BUILD = 1

_STATE_DETAILS = {
    PoolState.INACTIVE: "inactive",
    PoolState.BUILDING: "building",
    PoolState.RUNNING: "running",
    PoolState.DEGRADED: "degraded",
    PoolState.INACCESSIBLE: "inaccessible",
}
_VOL_TYPES = {
    VolumeType.FILE: "file",
    VolumeType.BLOCK: "block",
    VolumeType.DIR: "dir",
    VolumeType.NETWORK: "network",
    VolumeType.NETDIR: "netdir",
    VolumeType.PLOOP: "ploop",
}


class CommandError(Exception):
    """A failure to report as virsh does: ``error: <line>`` for each line."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[-1] if lines else "")
        self.lines = lines


def _fail(context: str, exc: BaseException) -> NoReturn:
    message = exc.message if isinstance(exc, LibvirtError) else str(exc)
    raise CommandError(context, message) from exc


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(1)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except SizeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- lookups, as virsh resolves its arguments --------------------------------------------------


async def _pool(conn: Connection, name: str) -> StoragePool:
    """By UUID when the argument looks like one, then by name."""
    if len(name) == 36:
        try:
            return await conn.lookup_pool_by_uuid(name)
        except (LibvirtError, ValueError):
            pass
    try:
        return await conn.lookup_pool_by_name(name)
    except LibvirtError as exc:
        _fail(f"failed to get pool '{name}'", exc)


async def _volume(conn: Connection, name: str, pool_name: str | None) -> StorageVolume:
    """By name in ``--pool``, then by key, then by path (the last error is reported)."""
    pool = None
    if pool_name is not None:
        pool = await _pool(conn, pool_name)
        if not await pool.is_active():
            raise CommandError(f"pool '{pool.name}' is not active")
    error: LibvirtError | None = None
    vol = None
    if pool is not None:
        try:
            vol = await pool.lookup_volume(name)
        except LibvirtError as exc:
            error = exc
    for lookup in (conn.lookup_volume_by_key, conn.lookup_volume_by_path):
        if vol is not None:
            break
        try:
            vol = await lookup(name)
        except LibvirtError as exc:
            error = exc
    if vol is None:
        assert error is not None
        hint = "" if pool_name is not None else ", specifying --pool might help"
        _fail(f"failed to get vol '{name}'{hint}", error)
    if pool is not None and vol.pool_name != pool.name:
        raise CommandError(f"Requested volume '{name}' is not in pool '{pool.name}'")
    return vol


# -- pool commands ------------------------------------------------------------------------------


async def pool_list(conn: Connection, args: argparse.Namespace) -> str:
    if args.all:
        flags = 0
    elif args.inactive:
        flags = LIST_INACTIVE
    else:
        flags = LIST_ACTIVE
    try:
        pools = await conn.list_pools(flags=flags)
    except LibvirtError as exc:
        _fail("Failed to list pools", exc)
    rows = []
    for pool in pools:
        info = await pool.info()
        autostart = _yes_no(await pool.autostart())
        active = info.state != PoolState.INACTIVE
        if not args.details:
            rows.append([pool.name, "active" if active else "inactive", autostart])
            continue
        state = _STATE_DETAILS.get(PoolState(info.state), "unknown") if active else "inactive"
        sizes = (
            [format_size(info.capacity), format_size(info.allocation), format_size(info.available)]
            if info.state in (PoolState.RUNNING, PoolState.DEGRADED)
            else ["-", "-", "-"]
        )
        rows.append([pool.name, state, autostart, _yes_no(await pool.is_persistent()), *sizes])
    header = ["Name", "State", "Autostart"]
    if args.details:
        header += ["Persistent", "Capacity", "Allocation", "Available"]
    return format_table(header, rows)


async def pool_info(conn: Connection, args: argparse.Namespace) -> str:
    pool = await _pool(conn, args.pool)
    try:
        info = await pool.info()
        fields = [
            ("Name", pool.name),
            ("UUID", str(pool.uuid)),
            ("State", _STATE_DETAILS.get(PoolState(info.state), "unknown")),
            ("Persistent", _yes_no(await pool.is_persistent())),
            ("Autostart", _yes_no(await pool.autostart())),
        ]
    except LibvirtError as exc:
        _fail(f"failed to get pool '{args.pool}' info", exc)
    if info.state in (PoolState.RUNNING, PoolState.DEGRADED):
        show = str if args.bytes else format_size
        fields += [
            ("Capacity", show(info.capacity)),
            ("Allocation", show(info.allocation)),
            ("Available", show(info.available)),
        ]
    return format_fields(fields)


async def pool_dumpxml(conn: Connection, args: argparse.Namespace) -> str:
    pool = await _pool(conn, args.pool)
    try:
        xml = await pool.xml_desc(inactive=args.inactive)
    except LibvirtError as exc:
        _fail(f"failed to get pool '{args.pool}' XML", exc)
    return xml if xml.endswith("\n") else xml + "\n"


def escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as XML entities (what xml.sax.saxutils.escape does,
    without the 12 ms that importing it costs every run: it pulls in urllib and email)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _pool_xml(args: argparse.Namespace) -> str:
    target = (
        f"  <target>\n    <path>{escape(args.target)}</path>\n  </target>\n" if args.target else ""
    )
    return (
        f"<pool type='{escape(args.type)}'>\n  <name>{escape(args.name)}</name>\n{target}</pool>\n"
    )


async def pool_define_as(conn: Connection, args: argparse.Namespace) -> str:
    try:
        await conn.define_pool(_pool_xml(args))
    except LibvirtError as exc:
        _fail(f"Failed to define pool {args.name}", exc)
    return f"Pool {args.name} defined\n"


async def pool_create_as(conn: Connection, args: argparse.Namespace) -> str:
    flags = POOL_CREATE_WITH_BUILD if args.build else 0
    try:
        await conn.create_pool(_pool_xml(args), flags=flags)
    except LibvirtError as exc:
        _fail(f"Failed to create pool {args.name}", exc)
    return f"Pool {args.name} created\n"


def _pool_action(
    action: Callable[[StoragePool, argparse.Namespace], Awaitable[None]],
    failure: str,
    success: str,
) -> Callable[[Connection, argparse.Namespace], Awaitable[str]]:
    async def run(conn: Connection, args: argparse.Namespace) -> str:
        pool = await _pool(conn, args.pool)
        try:
            await action(pool, args)
        except LibvirtError as exc:
            _fail(failure.format(name=pool.name), exc)
        return success.format(name=pool.name) + "\n"

    return run


async def _start(pool: StoragePool, args: argparse.Namespace) -> None:
    await pool.start(flags=POOL_CREATE_WITH_BUILD if args.build else 0)


async def _destroy(pool: StoragePool, args: argparse.Namespace) -> None:
    await pool.destroy()


async def _undefine(pool: StoragePool, args: argparse.Namespace) -> None:
    await pool.undefine()


async def _refresh(pool: StoragePool, args: argparse.Namespace) -> None:
    await pool.refresh()


async def pool_autostart(conn: Connection, args: argparse.Namespace) -> str:
    pool = await _pool(conn, args.pool)
    try:
        await pool.set_autostart(not args.disable)
    except LibvirtError as exc:
        verb = "unmark" if args.disable else "mark"
        _fail(f"failed to {verb} pool {pool.name} as autostarted", exc)
    if args.disable:
        return f"Pool {pool.name} unmarked as autostarted\n"
    return f"Pool {pool.name} marked as autostarted\n"


# -- volume commands ------------------------------------------------------------------------------


async def vol_list(conn: Connection, args: argparse.Namespace) -> str:
    pool = await _pool(conn, args.pool)
    try:
        vols = await pool.list_volumes()
    except LibvirtError as exc:
        _fail("Failed to list volumes", exc)
    rows = []
    for vol in vols:
        path = await vol.path()
        if not args.details:
            rows.append([vol.name, path])
            continue
        info = await vol.info()
        kind = _VOL_TYPES.get(VolumeType(info.type), "unknown")
        rows.append(
            [vol.name, path, kind, format_size(info.capacity), format_size(info.allocation)]
        )
    header = ["Name", "Path"]
    if args.details:
        header += ["Type", "Capacity", "Allocation"]
    return format_table(header, rows)


async def vol_info(conn: Connection, args: argparse.Namespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        info = await vol.info()
    except LibvirtError as exc:
        _fail(f"failed to get vol '{args.vol}' info", exc)
    show = (lambda v: f"{v} bytes") if args.bytes else format_size
    return format_fields(
        [
            ("Name", vol.name),
            ("Type", _VOL_TYPES.get(VolumeType(info.type), "unknown")),
            ("Capacity", show(info.capacity)),
            ("Allocation", show(info.allocation)),
        ]
    )


async def vol_dumpxml(conn: Connection, args: argparse.Namespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        xml = await vol.xml_desc()
    except LibvirtError as exc:
        _fail(f"failed to get vol '{args.vol}' XML", exc)
    return xml if xml.endswith("\n") else xml + "\n"


async def vol_path(conn: Connection, args: argparse.Namespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        return await vol.path() + "\n"
    except LibvirtError as exc:
        _fail(f"failed to get vol '{args.vol}' path", exc)


async def vol_key(conn: Connection, args: argparse.Namespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    return vol.key + "\n"


def _vol_xml(name: str, capacity: int, allocation: int | None, fmt: str | None) -> str:
    lines = ["<volume>", f"  <name>{escape(name)}</name>", f"  <capacity>{capacity}</capacity>"]
    if allocation is not None:
        lines.append(f"  <allocation>{allocation}</allocation>")
    if fmt:
        lines += ["  <target>", f"    <format type='{escape(fmt)}'/>", "  </target>"]
    lines.append("</volume>")
    return "\n".join(lines) + "\n"


async def vol_create_as(conn: Connection, args: argparse.Namespace) -> str:
    pool = await _pool(conn, args.pool)
    xml = _vol_xml(args.name, args.capacity, args.allocation, args.format)
    try:
        await pool.create_volume(xml)
    except LibvirtError as exc:
        _fail(f"Failed to create vol {args.name}", exc)
    return f"Vol {args.name} created\n"


async def vol_clone(conn: Connection, args: argparse.Namespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        pool = await vol.pool()
        info = await vol.info()
        xml = _vol_xml(args.newname, info.capacity, None, None)
        await pool.create_volume_from(xml, vol)
    except LibvirtError as exc:
        _fail(f"Failed to clone vol from {vol.name}", exc)
    return f"Vol {args.newname} cloned from {vol.name}\n"


async def vol_delete(conn: Connection, args: argparse.Namespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        await vol.delete()
    except LibvirtError as exc:
        _fail(f"Failed to delete vol {args.vol}", exc)
    return f"Vol {args.vol} deleted\n"


async def vol_wipe(conn: Connection, args: argparse.Namespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        await vol.wipe()
    except LibvirtError as exc:
        _fail(f"Failed to wipe vol {args.vol}", exc)
    return f"Vol {args.vol} wiped\n"


async def vol_resize(conn: Connection, args: argparse.Namespace) -> str:
    text: str = args.capacity
    delta = args.delta
    body = text
    if text.startswith("-"):
        if not args.shrink:
            raise CommandError("negative size requires --shrink")
        delta, body = True, text[1:]
    elif text.startswith("+"):
        delta, body = True, text[1:]
    try:
        capacity = parse_size(body)
    except SizeError as exc:
        raise CommandError(f"Malformed size {text}") from exc
    vol = await _volume(conn, args.vol, args.pool)
    try:
        await vol.resize(capacity, allocate=args.allocate, delta=delta, shrink=args.shrink)
    except LibvirtError as exc:
        _fail(f"Failed to change size of volume '{vol.name}' to {text}", exc)
    return f"Size of volume '{vol.name}' successfully changed to {text}\n"


def _sparse_choice(args: argparse.Namespace) -> bool | None:
    if args.sparse:
        return True
    if args.no_sparse:
        return False
    return None


def _stream_failure(verb: str, vol: StorageVolume, exc: LibvirtError) -> NoReturn:
    if exc.stage == "open":
        context = f"cannot {verb} volume {vol.name}"
    elif exc.stage == "finish":
        context = f"cannot close volume {vol.name}"
    elif verb.startswith("upload"):
        context = f"cannot send data to volume {vol.name}"
    else:
        context = f"cannot receive data from volume {vol.name}"
    _fail(context, exc)


async def vol_upload(conn: Connection, args: argparse.Namespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        size = os.stat(args.file).st_size
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}") from exc
    total = min(size, args.length) if args.length else size
    return await _transfer(vol, args, upload=True, total=total)


def _check_destination(path: str) -> None:
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise CommandError(f"cannot create {path}")


async def vol_download(conn: Connection, args: argparse.Namespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    _check_destination(args.file)
    total: int | None = None
    try:
        capacity = (await vol.info()).capacity
        total = max(0, capacity - args.offset)
        if args.length:
            total = min(total, args.length)
    except LibvirtError:
        total = None
    return await _transfer(vol, args, upload=False, total=total)


async def _transfer(
    vol: StorageVolume, args: argparse.Namespace, *, upload: bool, total: int | None
) -> str:
    """Move the file with a progress bar, map failures to virsh's messages, print the summary."""
    verb, way, file_action = (
        ("upload", "upload to", "read") if upload else ("download", "download from", "create")
    )
    move = vol.upload_file if upload else vol.download_file
    with TransferProgress(f"{verb} {vol.name}", total, enabled=not args.quiet) as bar:
        try:
            result = await move(
                args.file,
                offset=args.offset,
                length=args.length,
                sparse=_sparse_choice(args),
                progress=bar.update,
            )
        except LibvirtError as exc:
            _stream_failure(way, vol, exc)
        except SparseUnsupported as exc:
            _fail(f"cannot {way} volume {vol.name}", exc)
        except OSError as exc:
            if isinstance(exc, TransportError):
                raise
            raise CommandError(f"cannot {file_action} {args.file}", str(exc)) from exc
    if not args.quiet:
        sys.stderr.write(summary_line(f"{verb}ed", result) + "\n")
    return ""


# -- the parser ----------------------------------------------------------------------------

Handler = Callable[[Connection, argparse.Namespace], Awaitable[str]]


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="virtvol", description="virsh's storage commands, over virtvol")
    parser.add_argument("-c", "--connect", metavar="URI", help="connection URI")
    parser.add_argument("--protocol", choices=["current", "legacy"], default="current")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
        return sub

    sub = command("pool-list", pool_list, "list pools")
    sub.add_argument("--all", action="store_true")
    sub.add_argument("--inactive", action="store_true")
    sub.add_argument("--details", action="store_true")

    sub = command("pool-info", pool_info, "storage pool information")
    sub.add_argument("pool")
    sub.add_argument("--bytes", action="store_true")

    sub = command("pool-dumpxml", pool_dumpxml, "pool information in XML")
    sub.add_argument("pool")
    sub.add_argument("--inactive", action="store_true")

    for name, handler in (("pool-define-as", pool_define_as), ("pool-create-as", pool_create_as)):
        sub = command(name, handler, f"{name.split('-')[1]} a pool from a set of args")
        sub.add_argument("name")
        sub.add_argument("type")
        sub.add_argument("--target")
        if name == "pool-create-as":
            sub.add_argument("--build", action="store_true")

    sub = command(
        "pool-start",
        _pool_action(_start, "Failed to start pool {name}", "Pool {name} started"),
        "start a pool",
    )
    sub.add_argument("pool")
    sub.add_argument("--build", action="store_true")
    for name, action, failure, success in (
        ("pool-destroy", _destroy, "Failed to destroy pool {name}", "Pool {name} destroyed"),
        (
            "pool-undefine",
            _undefine,
            "Failed to undefine pool {name}",
            "Pool {name} has been undefined",
        ),
        ("pool-refresh", _refresh, "Failed to refresh pool {name}", "Pool {name} refreshed"),
    ):
        sub = command(name, _pool_action(action, failure, success), name)
        sub.add_argument("pool")

    sub = command("pool-autostart", pool_autostart, "autostart a pool")
    sub.add_argument("pool")
    sub.add_argument("--disable", action="store_true")

    sub = command("vol-list", vol_list, "list volumes")
    sub.add_argument("pool")
    sub.add_argument("--details", action="store_true")

    for name, handler in (
        ("vol-info", vol_info),
        ("vol-dumpxml", vol_dumpxml),
        ("vol-path", vol_path),
        ("vol-key", vol_key),
        ("vol-delete", vol_delete),
        ("vol-wipe", vol_wipe),
    ):
        sub = command(name, handler, name)
        sub.add_argument("vol")
        sub.add_argument("--pool")
        if name == "vol-info":
            sub.add_argument("--bytes", action="store_true")

    sub = command("vol-create-as", vol_create_as, "create a volume from a set of args")
    sub.add_argument("pool")
    sub.add_argument("name")
    sub.add_argument("capacity", type=_size)
    sub.add_argument("--allocation", type=_size)
    sub.add_argument("--format")

    sub = command("vol-clone", vol_clone, "clone a volume")
    sub.add_argument("vol")
    sub.add_argument("newname")
    sub.add_argument("--pool")

    sub = command("vol-resize", vol_resize, "resize a volume")
    sub.add_argument("vol")
    sub.add_argument("capacity")
    sub.add_argument("--pool")
    sub.add_argument("--allocate", action="store_true")
    sub.add_argument("--delta", action="store_true")
    sub.add_argument("--shrink", action="store_true")

    for name, handler in (("vol-upload", vol_upload), ("vol-download", vol_download)):
        sub = command(name, handler, f"{name[4:]} a volume's contents")
        sub.add_argument("vol")
        sub.add_argument("file")
        sub.add_argument("--pool")
        sub.add_argument("--offset", type=_size, default=0)
        sub.add_argument("--length", type=_size, default=0)
        sparse = sub.add_mutually_exclusive_group()
        sparse.add_argument("--sparse", action="store_true")
        sparse.add_argument("--no-sparse", action="store_true")
    return parser


async def _run(args: argparse.Namespace) -> str:
    try:
        conn = await connect(args.connect, protocol=args.protocol)
    except TimeoutError as exc:
        raise CommandError("failed to connect to the hypervisor", "timed out") from exc
    except (TransportError, VirtvolError, LibvirtError) as exc:
        message = exc.message if isinstance(exc, LibvirtError) else str(exc)
        raise CommandError("failed to connect to the hypervisor", message) from exc
    try:
        handler: Handler = args.handler
        return await handler(conn, args)
    except TransportError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        await conn.close()


def _event_loop_runner(args: argparse.Namespace) -> asyncio.Runner:
    # uvloop moves stream data faster, but importing it costs more than a
    # short command spends in its loop: only transfers use it.
    if args.handler not in (vol_upload, vol_download):
        return asyncio.Runner()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _show_warnings(*, quiet: bool) -> None:
    """The library's warnings (a sparse fallback, say) go to stderr as virsh words its own;
    ``--quiet`` keeps only errors."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LowercaseLevelFormatter())
    logger = logging.getLogger("virtvol")
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)


class _LowercaseLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``virtvol`` command; returns the exit status (0, or 1 on error)."""
    args = _parser().parse_args(argv)
    _show_warnings(quiet=args.quiet)
    try:
        with _event_loop_runner(args) as runner:
            output = runner.run(_run(args))
    except CommandError as exc:
        sys.stdout.flush()
        for line in exc.lines:
            sys.stderr.write(f"error: {line}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    sys.stdout.write(output + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
