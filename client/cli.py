"""``virtvol``: virsh's storage commands, over virtvol.client.

    virtvol [-c URI] [-q] [-r] [--protocol current|legacy] COMMAND [ARGS...]
    virtvol help [COMMAND] | virtvol --version

Names, arguments, output and error texts follow virsh 9.0, so that a virsh user
needs nothing new: the same options and positional order (``cli_args``), tables
and ``Label:  value`` blocks as virsh draws them, every command's output
followed by one empty line, errors on stderr as ``error: <what failed>`` and
``error: <the daemon's message>`` with exit status 1, the same default URI.
``-q`` drops table headers, notices (``Notice``), the blank line, the progress
bar and the summary line; warnings stay, as virsh keeps its own. vol-upload and
vol-download draw a progress bar on a terminal and print one summary line on
stderr. The README lists where virtvol differs on purpose.
"""

from __future__ import annotations

import codecs
import io
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace

from virtvol.client.cli_args import (
    ArgumentError,
    Arguments,
    Command,
    Option,
    check_exclusive,
    check_late_option,
    check_not_empty,
    format_command_help,
    read_arguments,
    split_command_string,
)
from virtvol.client.cli_globals import USAGE, Globals, read_globals, version_text
from virtvol.client.connection import Connection
from virtvol.client.display import format_fields, format_table
from virtvol.client.errors import (
    LibvirtError,
    NoSupport,
    TransportError,
    UnsendableValue,
    VirtvolError,
)
from virtvol.client.log import when_first_used
from virtvol.client.objects import (
    PoolState,
    StoragePool,
    StorageVolume,
    VolumeType,
    VolWipeAlgorithm,
    describe_pools,
    describe_volumes,
)
from virtvol.client.progress import TransferProgress, draws_a_bar, summary_line
from virtvol.client.sizes import C_BLANKS, SizeError, format_size, parse_size
from virtvol.client.uri import DEFAULT_URI_ENV
from virtvol.client.xmldesc import name_content, renamed_volume_xml, virsh_volume_xml
from virtvol.protocol.constants import (
    ListPoolsFlags,
    PoolBuildFlags,
    PoolCreateFlags,
    PoolDefineFlags,
    VolCreateFlags,
    VolDeleteFlags,
)
from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record

if TYPE_CHECKING:
    import signal as _signal
    from types import FrameType
    from typing import NoReturn, TypeVar

    from virtvol.client.download_output import DownloadTarget
else:
    # The C module: the signal module turns its names into enums as it is imported,
    # which every command would pay for. Typed as the signal module (same functions).
    import _signal

    from virtvol.protocol.hints import TypeVar

__all__ = ["main"]

_T = TypeVar("_T")


# By number: a daemon newer than this client may answer one it has no name for ("unknown").
_STATE_DETAILS: dict[int, str] = {
    PoolState.INACTIVE: "inactive",
    PoolState.BUILDING: "building",
    PoolState.RUNNING: "running",
    PoolState.DEGRADED: "degraded",
    PoolState.INACCESSIBLE: "inaccessible",
}
_VOL_TYPES: dict[int, str] = {
    VolumeType.FILE: "file",
    VolumeType.BLOCK: "block",
    VolumeType.DIR: "dir",
    VolumeType.NETWORK: "network",
    VolumeType.NETDIR: "netdir",
    VolumeType.PLOOP: "ploop",
}


class Notice(str):
    """Output that reports an action ("Vol x created"); ``--quiet`` drops it, as virsh does."""


class CommandError(Exception):
    """A failure to report as virsh does: ``error: <line>`` for each line.

    ``ran`` is False for failures before the command ran (connecting, an unknown
    command): virsh ends a command that ran, even one that failed, with a blank line.
    ``output``: what the command printed on stdout before it failed (vol-info's name).
    """

    def __init__(self, *lines: str, ran: bool = True, output: str = "") -> None:
        super().__init__(lines[-1] if lines else "")
        self.lines = lines
        self.ran = ran
        self.output = output


def _fail(context: str, exc: BaseException) -> NoReturn:
    message = exc.message if isinstance(exc, LibvirtError) else str(exc)
    raise CommandError(context, message) from exc


def _fail_alone(exc: LibvirtError, *, output: str = "") -> NoReturn:
    """A failure virsh reports with the daemon's message alone: the command gives up
    without a line of its own."""
    raise CommandError(exc.message, output=output) from exc


def _unsupported(args: SimpleNamespace, *names: str) -> None:
    """virsh options virtvol reads but cannot carry out: a clear refusal, not a silent no-op."""
    for name in names:
        if getattr(args, name.replace("-", "_")):
            raise CommandError(f"option --{name} is not supported by virtvol")


def _late(args: SimpleNamespace, name: str) -> None:
    """An option virsh reads after the volume's lookup: its emptiness is said now."""
    try:
        check_late_option(name, getattr(args, name.replace("-", "_")))
    except ArgumentError as exc:
        raise CommandError(str(exc)) from None


def _size_argument(text: str) -> int:
    """A scaled size as vol-create-as reads it (virsh's messages on a bad one)."""
    try:
        return parse_size(text)
    except SizeError as exc:
        lines = [f"Malformed size {text}"]
        if exc.reason:
            lines.append(exc.reason)
        raise CommandError(*lines) from exc


def _number_argument(text: str | None, name: str, *, wraps: bool = False) -> int:
    """--offset/--length: virsh takes plain numbers, with a "+" in front too, up to
    2**64 - 1, the wire's limit (strtoull's rules); virtvol also takes a size suffix.
    ``wraps`` (--length): a "-" before plain digits is taken too, the number counted back
    from 2**64 as strtoull counts it (``-1`` is 2**64 - 1, the whole volume)."""
    if text is None:
        return 0
    stripped = text.lstrip(C_BLANKS)
    digits = stripped[1:]
    if wraps and stripped.startswith("-") and digits.isascii() and digits.isdigit():
        if (back := int(digits)) <= _WIRE_MAX:
            return -back % (_WIRE_MAX + 1)
    else:
        try:
            return parse_size(text)
        except SizeError:
            pass
    raise CommandError(f"Numeric value '{text}' for <{name}> option is malformed or out of range")


_WIRE_MAX = (1 << 64) - 1


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


# virsh reads an XML file of up to 10 MiB; a larger one is refused before anything is sent.
_MAX_XML_FILE = 10 * 1024 * 1024


def _read_xml_file(path: str) -> str:
    """An XML file as virsh reads it, in virsh's words when it cannot: "Failed to open
    file" when opening fails, "Failed to read file" when reading does (a directory opens,
    then fails to read) or the file is over 10 MiB. The text ends at a NUL byte, as a C
    string does; bytes that are not UTF-8 travel unchanged."""
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_XML_FILE + 1)
    except OSError as exc:
        # A folder opens in C and fails its first read: virsh says it could not read it.
        opened = isinstance(exc, IsADirectoryError) or exc.filename is None
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        failure = "read" if opened else "open"
        raise CommandError(f"Failed to {failure} file '{path}': {reason}") from None
    if len(data) > _MAX_XML_FILE:
        import errno

        raise CommandError(f"Failed to read file '{path}': {os.strerror(errno.EOVERFLOW)}")
    return data.partition(b"\0")[0].decode("utf-8", "surrogateescape")


async def _sending_text(context: str, call: Awaitable[_T]) -> _T:
    """Await a call that carries a user's text (an XML file): a refusal is reported under
    ``context``, as is a text over the wire's limits (over 4 MiB), in libvirt's client's
    words."""
    try:
        return await call
    except LibvirtError as exc:
        _fail(context, exc)
    except UnsendableValue as exc:
        raise CommandError(context, "Unable to encode message payload") from exc


# -- lookups, as virsh resolves its arguments --------------------------------------------------


def _uuid_sized(text: str) -> bool:
    """Whether virsh takes ``text`` for a UUID to look up: it has a UUID's 36 bytes."""
    return len(text.encode("utf-8", "surrogateescape")) == 36


def _virsh_uuid(text: str) -> bytes | None:
    """The UUID in ``text`` as libvirt reads one, or None."""
    from virtvol.protocol.uuids import parse_uuid  # for the commands that look pools up

    return parse_uuid(text)


async def _pool(conn: Connection, name: str) -> StoragePool:
    """By UUID when the argument is one as virsh reads it, then by name."""
    uuid = _virsh_uuid(name) if _uuid_sized(name) else None
    if uuid is not None:
        try:
            return await conn.lookup_pool_by_uuid(uuid)
        except LibvirtError:
            pass
    try:
        return await conn.lookup_pool_by_name(name)
    except LibvirtError as exc:
        _fail(f"failed to get pool '{name}'", exc)


async def _volume(
    conn: Connection, name: str, pool_name: str | None, *, pool_option: str = "pool"
) -> StorageVolume:
    """By name in ``--pool`` (vol-create-from: ``--inputpool``), then by key, then by
    path (the last error is reported)."""
    pool = None
    if pool_name is not None:
        pool = await _pool(conn, pool_name)
        # Named as given (a UUID too), as virsh names it; an unanswered question is a no,
        # the daemon's reason said after.
        try:
            active = await pool.is_active()
        except LibvirtError as exc:
            _fail(f"pool '{pool_name}' is not active", exc)
        if not active:
            raise CommandError(f"pool '{pool_name}' is not active")
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
        hint = "" if pool_name is not None else f", specifying --{pool_option} might help"
        _fail(f"failed to get vol '{name}'{hint}", error)
    if pool is not None and vol.pool_name != pool.name:
        raise CommandError(f"Requested volume '{name}' is not in pool '{pool.name}'")
    return vol


# -- pool commands ------------------------------------------------------------------------------


_POOL_TYPES = [
    "dir",
    "fs",
    "netfs",
    "logical",
    "disk",
    "iscsi",
    "scsi",
    "mpath",
    "rbd",
    "sheepdog",
    "gluster",
    "zfs",
    "vstorage",
    "iscsi-direct",
]


def _virsh_order(name: str) -> bytes:
    """The key virsh sorts its pool and volume lists by: strcasecmp's, which lowers ASCII
    letters only and compares the bytes (``_x`` before ``a``, ``a`` before ``B``)."""
    return name.encode("utf-8", "surrogateescape").lower()


def _virsh_list(text: str) -> list[str]:
    """A list option as virsh's vshStringToArray reads it: items apart at each comma,
    ",," standing for a comma within an item."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "," and text[i + 1 : i + 2] == ",":
            current.append(",")
            i += 2
            continue
        if text[i] == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    items.append("".join(current))
    return items


def _pool_list_flags(args: SimpleNamespace) -> int:
    flags = 0 if args.all else ListPoolsFlags.INACTIVE if args.inactive else ListPoolsFlags.ACTIVE
    for given, bit in (
        (args.persistent, ListPoolsFlags.PERSISTENT),
        (args.transient, ListPoolsFlags.TRANSIENT),
        (args.autostart, ListPoolsFlags.AUTOSTART),
        (args.no_autostart, ListPoolsFlags.NO_AUTOSTART),
    ):
        if given:
            flags |= bit
    if args.type:
        for name in _virsh_list(args.type):
            if name not in _POOL_TYPES:
                raise CommandError(f"Invalid pool type '{name}'")
            flags |= ListPoolsFlags.DIR << _POOL_TYPES.index(name)
    return flags


async def pool_list(conn: Connection, args: SimpleNamespace) -> str:
    try:
        pools = await conn.list_pools(flags=_pool_list_flags(args))
    except LibvirtError as exc:
        _fail("Failed to list pools", exc)
    pools.sort(key=lambda pool: _virsh_order(pool.name))
    if args.name or args.uuid:
        # virsh's layout: the UUID, then the name padded to 20 bytes (printf's "%-20s",
        # which counts bytes, not characters: "pöol" gets 15 spaces).
        lines = []
        for pool in pools:
            parts = [pool.uuid_string] if args.uuid else []
            if args.name:
                padding = 20 - len(pool.name.encode("utf-8", "surrogateescape"))
                parts.append(pool.name + " " * padding)
            lines.append(" ".join(parts) + "\n")
        return "".join(lines)
    rows = []
    # virsh's words for what it could not learn of a pool (one destroyed meanwhile).
    for pool, found in zip(pools, await describe_pools(pools, details=args.details), strict=True):
        autostart = "no autostart" if found.autostart is None else _yes_no(found.autostart)
        info = found.info
        if info is None:
            sys.stderr.write("error: Could not retrieve pool information\n")
        if not args.details:
            # virsh asks whether the pool is active, and takes a failed answer for yes.
            state = "unknown" if info is None else "inactive" if found.active is False else "active"
            rows.append([pool.name, state, autostart])
            continue
        persistent = "unknown" if found.persistent is None else _yes_no(found.persistent)
        if info is None:
            rows.append([pool.name, "unknown", autostart, persistent, *["unknown"] * 3])
            continue
        state = _STATE_DETAILS.get(info.state, "unknown")
        sizes = (
            [format_size(info.capacity), format_size(info.allocation), format_size(info.available)]
            if info.state in (PoolState.RUNNING, PoolState.DEGRADED)
            else ["-", "-", "-"]
        )
        rows.append([pool.name, state, autostart, persistent, *sizes])
    header = ["Name", "State", "Autostart"]
    if args.details:
        header += ["Persistent", "Capacity", "Allocation", "Available"]
    return format_table(header, rows, headers=not args.quiet)


async def pool_uuid(conn: Connection, args: SimpleNamespace) -> str:
    """By name only, as virsh looks it up."""
    try:
        pool = await conn.lookup_pool_by_name(args.pool)
    except LibvirtError as exc:
        _fail(f"failed to get pool '{args.pool}'", exc)
    return pool.uuid_string + "\n"


async def pool_name(conn: Connection, args: SimpleNamespace) -> str:
    """By UUID only: text that is no UUID fails with no daemon's answer, as in virsh."""
    if not _uuid_sized(args.pool):
        raise CommandError(f"failed to get pool '{args.pool}'")
    uuid = _virsh_uuid(args.pool)
    if uuid is None:  # libvirt's own refusal, before any call
        raise CommandError(
            f"failed to get pool '{args.pool}'",
            "uuidstr in virStoragePoolLookupByUUIDString must be a valid UUID",
        )
    try:
        pool = await conn.lookup_pool_by_uuid(uuid)
    except LibvirtError as exc:
        _fail(f"failed to get pool '{args.pool}'", exc)
    return pool.name + "\n"


async def pool_info(conn: Connection, args: SimpleNamespace) -> str:
    pool = await _pool(conn, args.pool)
    fields = [("Name", pool.name), ("UUID", pool.uuid_string)]
    try:
        info = await pool.info()
    except LibvirtError as exc:  # a pool gone since its lookup: what virsh printed first
        _fail_alone(exc, output=format_fields(fields))
    # virsh's words for an answer it could not get, the command still succeeding.
    try:
        persistent = _yes_no(await pool.is_persistent())
    except LibvirtError:
        persistent = "unknown"
    try:
        autostart = _yes_no(await pool.autostart())
    except LibvirtError:
        autostart = "no autostart"
    fields += [
        ("State", _STATE_DETAILS.get(info.state, "unknown")),
        ("Persistent", persistent),
        ("Autostart", autostart),
    ]
    if info.state in (PoolState.RUNNING, PoolState.DEGRADED):
        show = str if args.bytes else format_size
        fields += [
            ("Capacity", show(info.capacity)),
            ("Allocation", show(info.allocation)),
            ("Available", show(info.available)),
        ]
    return format_fields(fields)


async def pool_dumpxml(conn: Connection, args: SimpleNamespace) -> str:
    _unsupported(args, "xpath", "wrap")
    pool = await _pool(conn, args.pool)
    try:
        xml = await pool.xml_desc(inactive=args.inactive)
    except LibvirtError as exc:
        _fail_alone(exc)
    return xml if xml.endswith("\n") else xml + "\n"


def _pool_xml(args: SimpleNamespace) -> str:
    """The pool XML virsh's pool-define-as/pool-create-as build from their options (the
    same elements, order and conditions as virsh 9.0), the values as given, unescaped, as
    virsh writes them: a name holding "&" is the daemon's XML error, not a pool so named."""
    a = args
    lines = [f"<pool type='{a.type}'>", f"  <name>{a.name}</name>"]
    fc_host = a.adapter_wwnn and a.adapter_wwpn
    source = []
    if a.source_host:
        source.append(f"<host name='{a.source_host}'/>")
    if a.source_path:
        source.append(f"<dir path='{a.source_path}'/>")
    if a.source_dev:
        source.append(f"<device path='{a.source_dev}'/>")
    if a.source_initiator:
        source += ["<initiator>", f"  <iqn name='{a.source_initiator}'/>", "</initiator>"]
    if fc_host:
        parent = ""
        if a.adapter_parent:
            parent = f" parent='{a.adapter_parent}'"
        elif a.adapter_parent_wwnn and a.adapter_parent_wwpn:
            parent = f" parent_wwnn='{a.adapter_parent_wwnn}' parent_wwpn='{a.adapter_parent_wwpn}'"
        elif a.adapter_parent_fabric_wwn:
            parent = f" parent_fabric_wwn='{a.adapter_parent_fabric_wwn}'"
        source.append(
            f"<adapter type='fc_host'{parent} wwnn='{a.adapter_wwnn}' wwpn='{a.adapter_wwpn}'/>"
        )
    elif a.adapter_name:
        source.append(f"<adapter type='scsi_host' name='{a.adapter_name}'/>")
    if a.auth_type and a.auth_username and (a.secret_usage or a.secret_uuid):
        secret = f"usage='{a.secret_usage}'" if a.secret_usage else f"uuid='{a.secret_uuid}'"
        source += [
            f"<auth type='{a.auth_type}' username='{a.auth_username}'>",
            f"  <secret {secret}/>",
            "</auth>",
        ]
    if a.source_format:
        source.append(f"<format type='{a.source_format}'/>")
    if a.source_name:
        source.append(f"<name>{a.source_name}</name>")
    if a.source_protocol_ver:
        source.append(f"<protocol ver='{a.source_protocol_ver}'/>")
    # virsh writes <source> only for these options (auth or a protocol version alone: none).
    if (
        a.source_host
        or a.source_path
        or a.source_dev
        or a.source_initiator
        or a.source_format
        or a.source_name
        or fc_host
        or a.adapter_name
    ):
        lines += ["  <source>", *(f"    {line}" for line in source), "  </source>"]
    if a.target:
        lines += ["  <target>", f"    <path>{a.target}</path>", "  </target>"]
    lines.append("</pool>")
    return "\n".join(lines) + "\n"


def _build_flags(args: SimpleNamespace) -> int:
    """pool-start/pool-create-as: --build, --overwrite, --no-overwrite (exclusive)."""
    flags = PoolCreateFlags.WITH_BUILD if args.build else 0
    if args.overwrite:
        flags |= PoolCreateFlags.WITH_BUILD_OVERWRITE
    if args.no_overwrite:
        flags |= PoolCreateFlags.WITH_BUILD_NO_OVERWRITE
    return flags


async def pool_define_as(conn: Connection, args: SimpleNamespace) -> str:
    xml = _pool_xml(args)
    if args.print_xml:
        return xml
    try:
        await conn.define_pool(xml)
    except LibvirtError as exc:
        _fail(f"Failed to define pool {args.name}", exc)
    return Notice(f"Pool {args.name} defined\n")


async def pool_create_as(conn: Connection, args: SimpleNamespace) -> str:
    xml = _pool_xml(args)
    if args.print_xml:
        return xml
    try:
        await conn.create_pool(xml, flags=_build_flags(args))
    except LibvirtError as exc:
        _fail(f"Failed to create pool {args.name}", exc)
    return Notice(f"Pool {args.name} created\n")


def _pool_action(
    action: Callable[[StoragePool, SimpleNamespace], Awaitable[None]],
    failure: str,
    success: str,
) -> Callable[[Connection, SimpleNamespace], Awaitable[str]]:
    """A command on one pool; its messages name the pool as it was given (a UUID too),
    as virsh's do."""

    async def run(conn: Connection, args: SimpleNamespace) -> str:
        pool = await _pool(conn, args.pool)
        try:
            await action(pool, args)
        except LibvirtError as exc:
            _fail(failure.format(name=args.pool), exc)
        return Notice(success.format(name=args.pool) + "\n")

    return run


async def _start(pool: StoragePool, args: SimpleNamespace) -> None:
    await pool.start(flags=_build_flags(args))


async def _destroy(pool: StoragePool, args: SimpleNamespace) -> None:
    await pool.destroy()


async def _undefine(pool: StoragePool, args: SimpleNamespace) -> None:
    await pool.undefine()


async def _refresh(pool: StoragePool, args: SimpleNamespace) -> None:
    await pool.refresh()


async def _build(pool: StoragePool, args: SimpleNamespace) -> None:
    # No exclusion of --overwrite and --no-overwrite here, as in virsh: the daemon refuses.
    flags = PoolBuildFlags.OVERWRITE if args.overwrite else 0
    if args.no_overwrite:
        flags |= PoolBuildFlags.NO_OVERWRITE
    await pool.build(flags=flags)


async def _delete(pool: StoragePool, args: SimpleNamespace) -> None:
    await pool.delete()


async def pool_define(conn: Connection, args: SimpleNamespace) -> str:
    xml = _read_xml_file(args.file)
    pool = await _sending_text(
        f"Failed to define pool from {args.file}",
        conn.define_pool(xml, flags=PoolDefineFlags.VALIDATE if args.validate else 0),
    )
    return Notice(f"Pool {pool.name} defined from {args.file}\n")


async def pool_create(conn: Connection, args: SimpleNamespace) -> str:
    xml = _read_xml_file(args.file)
    pool = await _sending_text(
        f"Failed to create pool from {args.file}", conn.create_pool(xml, flags=_build_flags(args))
    )
    return Notice(f"Pool {pool.name} created from {args.file}\n")


async def pool_capabilities(conn: Connection, args: SimpleNamespace) -> str:
    try:
        xml = await conn.storage_pool_capabilities()
    except LibvirtError as exc:
        _fail("failed to get storage pool capabilities", exc)
    return xml + "\n"  # virsh adds a newline to the document's own


async def _find_sources(conn: Connection, pool_type: str, src_spec: str | None) -> str:
    return await _sending_text(
        f"Failed to find any {pool_type} pool sources",
        conn.find_storage_pool_sources(pool_type, src_spec=src_spec),
    )


async def find_storage_pool_sources(conn: Connection, args: SimpleNamespace) -> str:
    src_spec = None if args.srcSpec is None else _read_xml_file(args.srcSpec)
    return await _find_sources(conn, args.type, src_spec)


def _source_spec(host: str | None, port: str | None, initiator: str | None) -> str | None:
    """The ``<source>`` virsh writes from --host, --port and --initiator: nothing without
    a host, and the values as given, unescaped, as virsh writes them."""
    if host is None:
        return None
    lines = ["<source>", f"  <host name='{host}'" + (f" port='{port}'" if port else "") + "/>"]
    if initiator:
        lines += ["  <initiator>", f"    <iqn name='{initiator}'/>", "  </initiator>"]
    lines.append("</source>")
    return "\n".join(lines) + "\n"


async def find_storage_pool_sources_as(conn: Connection, args: SimpleNamespace) -> str:
    return await _find_sources(conn, args.type, _source_spec(args.host, args.port, args.initiator))


async def pool_autostart(conn: Connection, args: SimpleNamespace) -> str:
    pool = await _pool(conn, args.pool)
    try:
        await pool.set_autostart(not args.disable)
    except LibvirtError as exc:
        verb = "unmark" if args.disable else "mark"
        _fail(f"failed to {verb} pool {args.pool} as autostarted", exc)
    if args.disable:
        return Notice(f"Pool {args.pool} unmarked as autostarted\n")
    return Notice(f"Pool {args.pool} marked as autostarted\n")


# -- volume commands ------------------------------------------------------------------------------


async def vol_list(conn: Connection, args: SimpleNamespace) -> str:
    pool = await _pool(conn, args.pool)
    try:
        vols = await pool.list_volumes()
    except LibvirtError as exc:
        _fail("Failed to list volumes", exc)
    vols.sort(key=lambda vol: _virsh_order(vol.name))
    rows = []
    # A volume deleted since the listing is a row of "unknown", as in virsh's table.
    described = await describe_volumes(vols, info=args.details)
    for vol, (path, info) in zip(vols, described, strict=True):
        row = [vol.name, path if path is not None else "unknown"]
        if args.details and info is None:
            row += ["unknown"] * 3
        elif info is not None:
            kind = _VOL_TYPES.get(info.type, "unknown")
            row += [kind, format_size(info.capacity), format_size(info.allocation)]
        rows.append(row)
    header = ["Name", "Path"]
    if args.details:
        header += ["Type", "Capacity", "Allocation"]
    return format_table(header, rows, headers=not args.quiet)


async def vol_info(conn: Connection, args: SimpleNamespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        info = await vol.info(physical=args.physical)
    except LibvirtError as exc:  # a volume gone since its lookup: virsh printed its name
        _fail_alone(exc, output=format_fields([("Name", vol.name)]))
    show = (lambda v: f"{v} bytes") if args.bytes else format_size
    return format_fields(
        [
            ("Name", vol.name),
            ("Type", _VOL_TYPES.get(info.type, "unknown")),
            ("Capacity", show(info.capacity)),
            ("Physical" if args.physical else "Allocation", show(info.allocation)),
        ]
    )


async def vol_dumpxml(conn: Connection, args: SimpleNamespace) -> str:
    _unsupported(args, "xpath", "wrap")
    vol = await _volume(conn, args.vol, args.pool)
    try:
        xml = await vol.xml_desc()
    except LibvirtError as exc:
        _fail_alone(exc)
    return xml if xml.endswith("\n") else xml + "\n"


async def vol_path(conn: Connection, args: SimpleNamespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        return await vol.path() + "\n"
    except LibvirtError as exc:
        _fail_alone(exc)


async def _volume_by_key_or_path(conn: Connection, text: str) -> StorageVolume:
    """vol-name and vol-pool: by key, then by path (virsh tries no name: no pool)."""
    try:
        return await conn.lookup_volume_by_key(text)
    except LibvirtError:
        pass
    try:
        return await conn.lookup_volume_by_path(text)
    except LibvirtError as exc:
        _fail(f"failed to get vol '{text}'", exc)


async def vol_name(conn: Connection, args: SimpleNamespace) -> str:
    vol = await _volume_by_key_or_path(conn, args.vol)
    return vol.name + "\n"


async def vol_pool(conn: Connection, args: SimpleNamespace) -> str:
    vol = await _volume_by_key_or_path(conn, args.vol)
    try:
        pool = await vol.pool()
    except LibvirtError as exc:
        _fail("failed to get parent pool", exc)
    return (pool.uuid_string if args.uuid else pool.name) + "\n"


async def vol_key(conn: Connection, args: SimpleNamespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    return vol.key + "\n"


async def _backing_volume(conn: Connection, pool: StoragePool, name: str) -> str:
    """--backing-vol as virsh reads it: a name in the pool, else a key, else a path."""
    for lookup in (pool.lookup_volume, conn.lookup_volume_by_key, conn.lookup_volume_by_path):
        try:
            vol = await lookup(name)
        except LibvirtError as exc:
            error = exc
            continue
        try:
            return await vol.path()
        except LibvirtError as exc:
            _fail_alone(exc)
    _fail(f"failed to get vol '{name}'", error)


async def vol_create_as(conn: Connection, args: SimpleNamespace) -> str:
    pool = await _pool(conn, args.pool)
    capacity = _size_argument(args.capacity)
    # virsh reads --allocation quietly: an empty value is no allocation, not a bad size.
    allocation = _size_argument(args.allocation) if args.allocation else None
    backing = None
    if args.backing_vol is not None:
        backing = await _backing_volume(conn, pool, args.backing_vol)
    xml = virsh_volume_xml(
        args.name,
        capacity,
        allocation=allocation,
        format=args.format,
        backing_path=backing,
        backing_format=args.backing_vol_format if backing is not None else None,
    )
    if args.print_xml:
        return xml
    flags = VolCreateFlags.PREALLOC_METADATA if args.prealloc_metadata else 0
    try:
        await pool.create_volume(xml, flags=flags)
    except LibvirtError as exc:
        _fail(f"Failed to create vol {args.name}", exc)
    return Notice(f"Vol {args.name} created\n")


async def vol_clone(conn: Connection, args: SimpleNamespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    _late(args, "newname")
    flags = VolCreateFlags.PREALLOC_METADATA if args.prealloc_metadata else 0
    if args.reflink:
        flags |= VolCreateFlags.REFLINK
    try:
        pool = await vol.pool()
    except LibvirtError as exc:
        _fail("failed to get parent pool", exc)
    try:
        # As virsh: the original's XML under the new name, so the copy keeps its format.
        xml = renamed_volume_xml(await vol.xml_desc(), args.newname)
    except LibvirtError as exc:
        _fail_alone(exc)
    except ValueError as exc:
        raise CommandError(f"Failed to clone vol from {vol.name}", str(exc)) from exc
    complaint = name_content(args.newname)[1]
    if complaint is not None:  # libxml2's own line, as virsh's library writes it
        sys.stderr.write(f"(volume_definition):-1: error : {complaint}\n")
    if args.print_xml:
        return xml  # no newline of its own: virsh prints it so, then the blank line
    try:
        clone = await pool.create_volume_from(xml, vol, flags=flags)
    except LibvirtError as exc:
        _fail(f"Failed to clone vol from {vol.name}", exc)
    return Notice(f"Vol {clone.name} cloned from {vol.name}\n")


def _vol_create_flags(args: SimpleNamespace) -> int:
    flags = VolCreateFlags.PREALLOC_METADATA if args.prealloc_metadata else 0
    if getattr(args, "reflink", False):
        flags |= VolCreateFlags.REFLINK
    if args.validate:
        flags |= VolCreateFlags.VALIDATE
    return flags


async def vol_create(conn: Connection, args: SimpleNamespace) -> str:
    pool = await _pool(conn, args.pool)
    xml = _read_xml_file(args.file)
    vol = await _sending_text(
        f"Failed to create vol from {args.file}",
        pool.create_volume(xml, flags=_vol_create_flags(args)),
    )
    return Notice(f"Vol {vol.name} created from {args.file}\n")


async def vol_create_from(conn: Connection, args: SimpleNamespace) -> str:
    pool = await _pool(conn, args.pool)
    source = await _volume(conn, args.vol, args.inputpool, pool_option="inputpool")
    xml = _read_xml_file(args.file)
    vol = await _sending_text(
        f"Failed to create vol from {args.file}",
        pool.create_volume_from(xml, source, flags=_vol_create_flags(args)),
    )
    return Notice(f"Vol {vol.name} created from input vol {source.name}\n")


async def vol_delete(conn: Connection, args: SimpleNamespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)
    try:
        await vol.delete(flags=VolDeleteFlags.WITH_SNAPSHOTS if args.delete_snapshots else 0)
    except LibvirtError as exc:
        _fail(f"Failed to delete vol {args.vol}", exc)
    return Notice(f"Vol {args.vol} deleted\n")


# virsh's --algorithm names: libvirt's own, lower case, spelt exactly.
_WIPE_ALGORITHMS = {algorithm.name.lower(): algorithm for algorithm in VolWipeAlgorithm}


async def vol_wipe(conn: Connection, args: SimpleNamespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)  # before the name check, as virsh
    _late(args, "algorithm")
    algorithm = VolWipeAlgorithm.ZERO
    if args.algorithm is not None:
        if args.algorithm not in _WIPE_ALGORITHMS:
            raise CommandError(f"Unsupported algorithm '{args.algorithm}'")
        algorithm = _WIPE_ALGORITHMS[args.algorithm]
    try:
        try:
            await vol.wipe_pattern(algorithm)
        except NoSupport:
            # A daemon without the pattern call still wipes with zeros, as virsh falls back.
            if algorithm != VolWipeAlgorithm.ZERO:
                raise
            await vol.wipe()
    except LibvirtError as exc:
        _fail(f"Failed to wipe vol {args.vol}", exc)
    return Notice(f"Vol {args.vol} wiped\n")


async def vol_resize(conn: Connection, args: SimpleNamespace) -> str:
    vol = await _volume(conn, args.vol, args.pool)  # before the size is read, as virsh
    _late(args, "capacity")
    # As virsh reads it: blanks skipped; a "-" asks for a shrink by that much (the
    # wire takes no negative size); a "+" is only a sign, the size stays absolute.
    text: str = args.capacity.lstrip(C_BLANKS)
    delta = args.delta
    if text.startswith("-"):
        if not args.shrink:
            raise CommandError("negative size requires --shrink")
        delta, text = True, text[1:]
    capacity = _size_argument(text)
    change = f"{'by' if delta else 'to'} {text}"
    try:
        await vol.resize(capacity, allocate=args.allocate, delta=delta, shrink=args.shrink)
    except LibvirtError as exc:
        _fail(f"Failed to change size of volume '{vol.name}' {change}", exc)
    return Notice(f"Size of volume '{vol.name}' successfully changed {change}\n")


def _sparse_choice(args: SimpleNamespace) -> bool | None:
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


def _file_failure(
    exc: OSError, vol: StorageVolume, path: str, *, upload: bool, started: bool
) -> NoReturn:
    """virsh's words for a local file that fails. Opening it (the error names the file):
    "cannot read FILE" or "cannot create FILE", no reason given, as virsh gives none.
    Reading or writing it while the stream runs (the error names none): "cannot send
    data to volume V" or "cannot receive data from volume V", then libvirt's stream
    loop's "send handler failed: REASON" or "recv handler failed: REASON".

    A file that fails so once data moved (``started``: a download's final rename
    refused, the old file's metadata not copied), where virsh never fails, is said the
    same way with the reason after it, the only clue to what went wrong; and so is a
    refusal in virtvol's own words (an extended attribute the replacement could not be
    given), which virsh, writing in place, never meets either."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        line = f"cannot {'read' if upload else 'create'} {path}"
        if type(exc).__str__ is not OSError.__str__:  # says what it is itself
            raise CommandError(line, str(exc)) from exc
        if started:
            raise CommandError(line, reason) from exc
        raise CommandError(line) from exc
    if upload:
        context, detail = f"cannot send data to volume {vol.name}", "send handler failed"
    else:
        context, detail = f"cannot receive data from volume {vol.name}", "recv handler failed"
    raise CommandError(context, f"{detail}: {reason}") from exc


def _read_range(args: SimpleNamespace) -> None:
    args.offset = _number_argument(args.offset, "offset")
    args.length = _number_argument(args.length, "length", wraps=True)


async def vol_upload(conn: Connection, args: SimpleNamespace) -> str:
    _read_range(args)
    vol = await _volume(conn, args.vol, args.pool)
    _late(args, "file")
    if _names_a_missing_standard_stream(args.file):  # /dev/stdin, the command's /dev/null
        raise CommandError(f"cannot read {args.file}")
    try:
        source = os.stat(args.file)
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}") from exc

    async def total() -> int | None:
        size = _source_size(args.file, source)
        length: int = args.length
        if length:
            return length if size is None else min(size, length)
        return size

    return await _transfer(vol, args, upload=True, total=total)


def _source_size(path: str, source: os.stat_result) -> int | None:
    """The bytes an upload of ``path`` will read, for the progress bar: a file's size, a
    block device's (its ``stat`` says 0, its end says how large it is), and None for
    whatever is read as a stream, to its end: a pipe, a character device, and a file
    that tells no true size (procfs's say 0 bytes, sysfs's a page)."""
    if not (stat.S_ISREG(source.st_mode) or stat.S_ISBLK(source.st_mode)):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # the upload itself will say why it cannot read the file
        return None
    try:
        from virtvol.sparse.reader import reads_as_stream  # the upload reads with it anyway

        return None if reads_as_stream(fd) else os.lseek(fd, 0, os.SEEK_END)
    except OSError:  # no size for the bar, as for a stream
        return None
    finally:
        os.close(fd)


def _check_destination(path: str) -> DownloadTarget:
    """Refuse at once, as virsh does (it creates the file before the stream starts), a
    destination that cannot be written: a directory, a missing folder, no permission, a
    socket. Whatever is there already (a file, a FIFO, a device) is opened, as virsh opens
    it: only its own permission counts; a new file needs its folder's. Returns where the
    download goes."""
    from virtvol.client.download_output import download_target

    if _names_a_missing_standard_stream(path):  # /dev/stdout, the command's /dev/null
        raise CommandError(f"cannot create {path}")
    new = not os.path.exists(path)
    folder = os.path.dirname(os.path.abspath(path))
    if (
        os.path.isdir(path)
        or (new and not os.path.isdir(folder))
        or (new and not os.access(folder, os.W_OK | os.X_OK))
        or (os.path.lexists(path) and not os.access(path, os.W_OK))
    ):
        raise CommandError(f"cannot create {path}")
    try:  # a socket: refused before the stream opens, as a file
        return download_target(path)
    except IsADirectoryError:  # "copy/" names a folder, as one that exists above
        raise CommandError(f"cannot create {path}") from None
    except OSError as exc:
        if exc.errno is not None:  # an open's failure: virsh gives no reason
            raise CommandError(f"cannot create {path}") from exc
        raise CommandError(f"cannot create {path}", str(exc)) from exc  # virtvol's own words


async def vol_download(conn: Connection, args: SimpleNamespace) -> str:
    _read_range(args)
    vol = await _volume(conn, args.vol, args.pool)
    _late(args, "file")
    target = _check_destination(args.file)
    stand_ins = _stand_ins_for(target, args.file)

    async def total() -> int | None:
        try:
            capacity = (await vol.info()).capacity
        except LibvirtError:
            return None
        offset: int = args.offset
        remaining = max(0, capacity - offset)
        length: int = args.length
        return min(remaining, length) if length else remaining

    try:
        return await _transfer(
            vol,
            args,
            upload=False,
            total=total,
            after_move=lambda: _nothing_more_into(stand_ins),
        )
    finally:
        _close_stand_ins(stand_ins)


def _stand_ins_for(target: DownloadTarget, path: str) -> list[tuple[int, int]]:
    """Where the download fills stdout's or stderr's own file in place (``/dev/stdout`` on
    a file caught by a program, or one no rename may replace), each such descriptor with
    the copy that ``_nothing_more_into`` sets aside once it has: taken before the stream
    opens, so that a process with no descriptor to spare (a low ``ulimit -n``) fails
    here, its file untouched, and not after the volume was written. (/dev/null is opened
    after, in the place of the downloaded file's descriptor, closed by then.)"""
    from virtvol.sparse.sequential import node_of

    if not target.overwrite or target.node is None:
        return []
    stand_ins: list[tuple[int, int]] = []
    for fd in (1, 2):
        try:
            if node_of(os.fstat(fd)) != target.node:
                continue
        except OSError:  # closed
            continue
        try:
            stand_ins.append((fd, os.dup(fd)))
        except OSError as exc:
            _close_stand_ins(stand_ins)
            raise CommandError(f"cannot create {path}", exc.strerror or str(exc)) from exc
    return stand_ins


def _close_stand_ins(stand_ins: list[tuple[int, int]]) -> None:
    """Close the copies ``_nothing_more_into`` did not take (all when the download failed)."""
    while stand_ins:
        _fd, kept = stand_ins.pop()
        os.close(kept)


def _nothing_more_into(stand_ins: list[tuple[int, int]]) -> None:
    """Where the download wrote stdout's or stderr's own file in place, what the command
    says there after it (the summary line, the blank line) goes to /dev/null: the file
    holds exactly the volume, as one the download replaced does (those lines then go to
    the file replaced). Written to the file, they overwrote the volume's first bytes (the
    download opened the file anew, and the descriptor stood at its start), as virsh's
    blank line does. Only a download that succeeded comes here: no failure is left to
    say. Takes the copies ``_stand_ins_for`` made; one it cannot use (stdout's flush
    failed, /dev/null found no descriptor) is left to ``_close_stand_ins``, its stream
    writing into the file as virsh's does."""
    streams = {1: sys.stdout, 2: sys.stderr}
    for fd, kept in list(stand_ins):
        try:
            streams[fd].flush()
            nowhere = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            continue
        stand_ins.remove((fd, kept))
        _set_aside.append((fd, kept))
        os.dup2(nowhere, fd)
        os.close(nowhere)


# The standard descriptors /dev/null stands in for (``_nothing_more_into``), each with a
# copy of its own: given back as ``main`` returns, so that a caller of ``main`` has them.
_set_aside: list[tuple[int, int]] = []


def _give_standard_streams_back() -> None:
    if not _set_aside:
        return
    import contextlib  # only here: a command that fills no such file does without

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # what is still buffered goes to /dev/null
            stream.flush()
    while _set_aside:
        fd, kept = _set_aside.pop()
        os.dup2(kept, fd)
        os.close(kept)


async def _transfer(
    vol: StorageVolume,
    args: SimpleNamespace,
    *,
    upload: bool,
    total: Callable[[], Awaitable[int | None]],
    after_move: Callable[[], None] | None = None,
) -> str:
    """Move the file with a progress bar, map failures to virsh's messages, print the
    summary. ``total`` says the bar's length; it is asked only when a bar is drawn (for a
    download it is a call virsh does not make). ``after_move`` is called once the file
    has moved, before the summary."""
    verb, way = ("upload", "upload to") if upload else ("download", "download from")
    move = vol.upload_file if upload else vol.download_file
    sparse = _sparse_choice(args)
    enabled = not args.quiet
    bar_total = await total() if draws_a_bar(enabled) else None
    # Whether data moved: a file that fails after that is not one that did not open.
    started = False
    with TransferProgress(
        f"{verb} {vol.name}", bar_total, enabled=enabled, holes=sparse is not False
    ) as bar:

        def progress(data_bytes: int, hole_bytes: int) -> None:
            nonlocal started
            started = True
            bar.update(data_bytes, hole_bytes)

        try:
            result = await move(
                args.file,
                offset=args.offset,
                length=args.length,
                sparse=sparse,
                progress=progress,
            )
        except LibvirtError as exc:  # SparseUnsupported too: it fails the opening call
            _stream_failure(way, vol, exc)
        except OSError as exc:
            if isinstance(exc, (TransportError, VirtvolError)):
                raise  # the connection's, not the file's (a lost peer, a call timed out)
            # A rename names two files: only the commit of a download renames.
            moved = started or exc.filename2 is not None
            _file_failure(exc, vol, args.file, upload=upload, started=moved)
    if after_move is not None:
        after_move()
    if not args.quiet:
        sys.stderr.write(summary_line(f"{verb}ed", result) + "\n")
    return ""


# -- the command table ------------------------------------------------------------------------

Handler = Callable[[Connection, SimpleNamespace], Awaitable[str]]

_POOL = Option("pool", "name or UUID of the pool", required=True)
_POOL_OF_VOL = Option("pool", "name or UUID of the pool holding the volume")
_VOL = Option("vol", "the volume: a name (with --pool), a key or a path", required=True)
_XPATH = (
    Option("xpath", "only the parts of the XML an XPath expression selects"),
    Option("wrap", "put the XPath results under one root element", "bool"),
)
_BUILD = (
    Option("build", "build the pool before starting it", "bool"),
    Option("no-overwrite", "build, but refuse to overwrite data already there", "bool"),
    Option("overwrite", "build, overwriting any data already there", "bool"),
)
_POOL_AS = (
    Option("name", "name of the new pool", required=True),
    Option("type", "type of the pool (dir, fs, netfs, logical...)", required=True),
    Option("print-xml", "only print the pool's XML", "bool"),
    Option("source-host", "host of the storage behind the pool"),
    Option("source-path", "path of the storage behind the pool"),
    Option("source-dev", "device holding the pool's storage"),
    Option("source-name", "name of the storage behind the pool (a volume group...)"),
    Option("target", "where the pool's volumes appear (a directory for dir pools)"),
    Option("source-format", "format of the storage behind the pool"),
    Option("auth-type", "authentication type for the storage (chap...)"),
    Option("auth-username", "user name for that authentication"),
    Option("secret-usage", "usage name of the secret holding the password"),
    Option("secret-uuid", "UUID of the secret holding the password"),
    Option("adapter-name", "SCSI host adapter name (scsi_host pools)"),
    Option("adapter-wwnn", "fibre channel adapter WWNN (with --adapter-wwpn)"),
    Option("adapter-wwpn", "fibre channel adapter WWPN (with --adapter-wwnn)"),
    Option("adapter-parent", "parent scsi_hostN of a vHBA adapter"),
    Option("adapter-parent-wwnn", "WWNN of the parent of a vHBA adapter"),
    Option("adapter-parent-wwpn", "WWPN of the parent of a vHBA adapter"),
    Option("adapter-parent-fabric-wwn", "fabric WWN of the parent of a vHBA adapter"),
    Option("source-protocol-ver", "NFS protocol version to mount with"),
    Option("source-initiator", "iSCSI initiator IQN"),
)
_TRANSFER = (
    Option("pool", "name or UUID of the pool holding the volume"),
    Option("offset", "where in the volume the transfer starts (bytes)", "number"),
    Option("length", "the most bytes to transfer (0: all)", "number"),
    Option("sparse", "require a sparse stream (virtvol asks for one anyway)", "bool"),
    Option("no-sparse", "send every byte, holes included", "bool", extension=True),
)


def _command(
    name: str,
    handler: Handler,
    summary: str,
    description: str,
    *options: Option,
    exclusive: tuple[tuple[str, str], ...] = (),
) -> tuple[Command, Handler]:
    group = "volume" if name.startswith("vol-") else "pool"
    return Command(name, summary, description, group, options, exclusive), handler


_POOL_FILE = Option("file", "a file holding the pool's XML", required=True)
_VALIDATE = Option("validate", "check the XML against libvirt's schema", "bool")
_PREALLOC_METADATA = Option("prealloc-metadata", "preallocate only metadata (qcow2)", "bool")

# In virsh's order, which ``help`` lists them in.
_COMMANDS: dict[str, tuple[Command, Handler]] = {
    c.name: (c, h)
    for c, h in (
        _command(
            "find-storage-pool-sources-as",
            find_storage_pool_sources_as,
            "find storage a pool could use, from options",
            "Print the <sources> XML of the storage a pool of the type could use, looking"
            " at a host.",
            Option("type", "the type of pool (netfs, logical, iscsi...)", required=True),
            Option("host", "the host to look at"),
            Option("port", "its port"),
            Option("initiator", "the iSCSI initiator IQN to look with"),
        ),
        _command(
            "find-storage-pool-sources",
            find_storage_pool_sources,
            "find storage a pool could use",
            "Print the <sources> XML of the storage a pool of the type could use, looking"
            " where a <source> XML file says.",
            Option("type", "the type of pool (netfs, logical, iscsi...)", required=True),
            Option("srcSpec", "a file holding a <source> XML: where to look"),
        ),
        _command(
            "pool-autostart",
            pool_autostart,
            "start a pool when the daemon starts",
            "Mark a pool to be started whenever the daemon starts, or unmark it.",
            _POOL,
            Option("disable", "stop starting the pool with the daemon", "bool"),
        ),
        _command(
            "pool-build",
            _pool_action(_build, "Failed to build pool {name}", "Pool {name} built"),
            "build a pool's storage",
            "Make an inactive pool's storage on the host (a dir pool: its folder).",
            _POOL,
            Option("no-overwrite", "refuse to overwrite data already there", "bool"),
            Option("overwrite", "overwrite any data already there", "bool"),
        ),
        _command(
            "pool-create-as",
            pool_create_as,
            "create and start a pool from options",
            "Create and start a transient pool described by the options.",
            *_POOL_AS,
            *_BUILD,
            exclusive=(("overwrite", "no-overwrite"), ("secret-usage", "secret-uuid")),
        ),
        _command(
            "pool-create",
            pool_create,
            "create and start a pool from an XML file",
            "Create and start a transient pool described by an XML file.",
            _POOL_FILE,
            *_BUILD,
            exclusive=(("overwrite", "no-overwrite"),),
        ),
        _command(
            "pool-define-as",
            pool_define_as,
            "define a pool from options",
            "Define a persistent pool described by the options; it stays inactive.",
            *_POOL_AS,
            exclusive=(("secret-usage", "secret-uuid"),),
        ),
        _command(
            "pool-define",
            pool_define,
            "define a pool from an XML file",
            "Define a persistent pool described by an XML file, or change the definition of"
            " one; it stays as it is until started.",
            _POOL_FILE,
            _VALIDATE,
        ),
        _command(
            "pool-delete",
            _pool_action(_delete, "Failed to delete pool {name}", "Pool {name} deleted"),
            "delete a pool's storage",
            "Remove an inactive pool's storage from the host (a dir pool: its empty folder);"
            " its definition stays.",
            _POOL,
        ),
        _command(
            "pool-destroy",
            _pool_action(_destroy, "Failed to destroy pool {name}", "Pool {name} destroyed"),
            "stop a pool",
            "Stop an active pool; its definition and data stay.",
            _POOL,
        ),
        _command(
            "pool-dumpxml",
            pool_dumpxml,
            "a pool's XML",
            "Print the XML description of a pool.",
            _POOL,
            Option("inactive", "the XML the pool will have when next started", "bool"),
            *_XPATH,
        ),
        _command(
            "pool-info",
            pool_info,
            "a pool's state and sizes",
            "Print a pool's name, UUID, state and sizes.",
            _POOL,
            Option("bytes", "sizes in bytes", "bool"),
        ),
        _command(
            "pool-list",
            pool_list,
            "list pools",
            "List the active pools, or those the options select.",
            Option("inactive", "only inactive pools", "bool"),
            Option("all", "active and inactive pools", "bool"),
            Option("transient", "only transient pools", "bool"),
            Option("persistent", "only persistent pools", "bool"),
            Option("autostart", "only pools started with the daemon", "bool"),
            Option("no-autostart", "only pools not started with the daemon", "bool"),
            Option("type", "only pools of these types (comma-separated)"),
            Option("details", "more columns: persistence and sizes", "bool"),
            Option("uuid", "only the pools' UUIDs", "bool"),
            Option("name", "only the pools' names", "bool"),
            # Both of --persistent and --transient (or of the autostart pair) ask for
            # either, which virsh leaves to the daemon: no filter.
            exclusive=(("all", "inactive"), ("details", "uuid"), ("details", "name")),
        ),
        _command(
            "pool-name",
            pool_name,
            "a pool's name from its UUID",
            "Print the name of the pool with a given UUID.",
            Option("pool", "the pool's UUID", required=True),
        ),
        _command(
            "pool-refresh",
            _pool_action(_refresh, "Failed to refresh pool {name}", "Pool {name} refreshed"),
            "rescan a pool",
            "Look at a pool's storage again to find volumes added or removed behind its back.",
            _POOL,
        ),
        _command(
            "pool-start",
            _pool_action(_start, "Failed to start pool {name}", "Pool {name} started"),
            "start a pool",
            "Start an inactive pool, building it first if asked.",
            _POOL,
            *_BUILD,
            exclusive=(("overwrite", "no-overwrite"),),
        ),
        _command(
            "pool-undefine",
            _pool_action(
                _undefine, "Failed to undefine pool {name}", "Pool {name} has been undefined"
            ),
            "forget an inactive pool",
            "Remove the definition of an inactive pool; its data stays.",
            _POOL,
        ),
        _command(
            "pool-uuid",
            pool_uuid,
            "a pool's UUID from its name",
            "Print the UUID of the pool with a given name.",
            Option("pool", "the pool's name", required=True),
        ),
        _command(
            "pool-capabilities",
            pool_capabilities,
            "the pool types the daemon supports",
            "Print the daemon's storage pool capabilities XML: pool types and their formats.",
        ),
        _command(
            "vol-clone",
            vol_clone,
            "copy a volume",
            "Create a volume in the same pool as a copy of another.",
            Option(
                "vol", "the volume to copy: a name (with --pool), a key or a path", required=True
            ),
            Option("newname", "name of the copy", required=True, late=True),
            _POOL_OF_VOL,
            Option("prealloc-metadata", "preallocate only metadata (qcow2)", "bool"),
            Option("reflink", "share the data blocks (copy-on-write file systems)", "bool"),
            Option("print-xml", "only print the copy's XML", "bool"),
        ),
        _command(
            "vol-create-as",
            vol_create_as,
            "create a volume from options",
            "Create a volume in a pool from a name, a size and the options.",
            Option("pool", "name or UUID of the pool", required=True),
            Option("name", "name of the new volume", required=True),
            Option("capacity", "its size, e.g. 10G (bytes without a suffix)", required=True),
            Option(
                "allocation", "bytes to allocate now, e.g. 0 for a sparse volume", empty_ok=True
            ),
            Option("format", "image format: raw, qcow2, ..."),
            Option("backing-vol", "a volume to overlay (copy-on-write formats)"),
            Option("backing-vol-format", "the format of --backing-vol"),
            Option("prealloc-metadata", "preallocate only metadata (qcow2)", "bool"),
            Option("print-xml", "only print the volume's XML", "bool"),
        ),
        _command(
            "vol-create",
            vol_create,
            "create a volume from an XML file",
            "Create a volume in a pool from a file holding its XML.",
            Option("pool", "name or UUID of the pool", required=True),
            Option("file", "a file holding the volume's XML", required=True),
            _PREALLOC_METADATA,
            _VALIDATE,
        ),
        _command(
            "vol-create-from",
            vol_create_from,
            "create a volume from an XML file, as a copy of another",
            "Create a volume in a pool from a file holding its XML, filled with a copy of"
            " another volume's data.",
            Option("pool", "name or UUID of the pool", required=True),
            Option("file", "a file holding the new volume's XML", required=True),
            Option(
                "vol",
                "the volume to copy: a name (with --inputpool), a key or a path",
                required=True,
            ),
            Option("inputpool", "name or UUID of the pool holding the volume to copy"),
            _PREALLOC_METADATA,
            Option("reflink", "share the data blocks (copy-on-write file systems)", "bool"),
            _VALIDATE,
        ),
        _command(
            "vol-delete",
            vol_delete,
            "delete a volume",
            "Delete a volume and its data.",
            _VOL,
            _POOL_OF_VOL,
            Option("delete-snapshots", "delete the volume's snapshots too", "bool"),
        ),
        _command(
            "vol-download",
            vol_download,
            "copy a volume into a file",
            "Copy a volume's contents into a local file, sparse, written in place only once"
            " complete.",
            _VOL,
            Option("file", "the local file to write", required=True, late=True),
            *_TRANSFER,
            exclusive=(("sparse", "no-sparse"),),
        ),
        _command(
            "vol-dumpxml",
            vol_dumpxml,
            "a volume's XML",
            "Print the XML description of a volume.",
            _VOL,
            _POOL_OF_VOL,
            *_XPATH,
        ),
        _command(
            "vol-info",
            vol_info,
            "a volume's type and sizes",
            "Print a volume's name, type, capacity and allocation.",
            _VOL,
            _POOL_OF_VOL,
            Option("bytes", "sizes in bytes", "bool"),
            Option("physical", "the size on disk instead of the allocation", "bool"),
        ),
        _command(
            "vol-key",
            vol_key,
            "a volume's key",
            "Print the key that names a volume on the host.",
            Option("vol", "the volume: a name (with --pool) or a path", required=True),
            _POOL_OF_VOL,
        ),
        _command(
            "vol-list",
            vol_list,
            "list a pool's volumes",
            "List the volumes of a pool with their paths.",
            _POOL,
            Option("details", "more columns: type and sizes", "bool"),
        ),
        _command(
            "vol-name",
            vol_name,
            "a volume's name from its key or path",
            "Print the name of the volume with a given key or path.",
            Option("vol", "the volume's key or path", required=True),
        ),
        _command(
            "vol-path",
            vol_path,
            "a volume's path",
            "Print the path of a volume on the host.",
            Option("vol", "the volume: a name (with --pool) or a key", required=True),
            _POOL_OF_VOL,
        ),
        _command(
            "vol-pool",
            vol_pool,
            "the pool of a volume",
            "Print the name (or UUID) of the pool holding the volume with a given key or path.",
            Option("vol", "the volume's key or path", required=True),
            Option("uuid", "print the pool's UUID, not its name", "bool"),
        ),
        _command(
            "vol-resize",
            vol_resize,
            "change a volume's size",
            "Grow or shrink a volume.",
            _VOL,
            Option(
                "capacity", "new size, e.g. 20G, or +5G/-5G with --delta", required=True, late=True
            ),
            _POOL_OF_VOL,
            Option("allocate", "allocate the new space now", "bool"),
            Option("delta", "the capacity is a change, not the new size", "bool"),
            Option("shrink", "allow making the volume smaller", "bool"),
        ),
        _command(
            "vol-upload",
            vol_upload,
            "copy a file into a volume",
            "Copy a local file's contents into a volume; holes and zero blocks travel as holes.",
            _VOL,
            Option("file", "the local file to read", required=True, late=True),
            *_TRANSFER,
            exclusive=(("sparse", "no-sparse"),),
        ),
        _command(
            "vol-wipe",
            vol_wipe,
            "overwrite a volume's data",
            "Overwrite all of a volume's data, with zeros unless --algorithm names another way.",
            _VOL,
            _POOL_OF_VOL,
            Option(
                "algorithm", f"one of {', '.join(_WIPE_ALGORITHMS)}; zero by default", late=True
            ),
        ),
    )
}

_GROUPS = (("pool", "Storage Pool"), ("volume", "Storage Volume"))

# virsh commands that open an editor or wait for events: virtvol runs one short command.
_INTERACTIVE = frozenset({"pool-edit", "pool-event"})


def _command_list(group: str | None = None) -> str:
    lines = []
    for keyword, title in _GROUPS:
        if group is not None and group != keyword:
            continue
        lines.append(f" {title} (help keyword '{keyword}'):")
        for command, _ in _COMMANDS.values():
            if command.group == keyword:
                lines.append(f"    {command.name:<30} {command.summary}")
        lines.append("")
    return "\n".join(lines) + "\n"


# virsh's commands that end its shell, and a command string where they stand.
_QUIT_COMMANDS = {
    name: Command(
        name,
        "end the commands",
        "End a command string: the commands after it do not run, and the status is 0.",
        "",
        (),
    )
    for name in ("quit", "exit")
}

_HELP = Command(
    "help",
    "list the commands, or describe one",
    "Describe a command, list the commands of a group, or list them all.",
    "",
    (Option("command", "a command, or a group's help keyword"),),
)


def _help(topic: str | None) -> str:
    if topic is None:
        return "Grouped commands:\n\n" + _command_list()
    if topic == _HELP.name:
        return format_command_help(_HELP)
    if topic in _QUIT_COMMANDS:
        return format_command_help(_QUIT_COMMANDS[topic])
    if topic in _COMMANDS:
        return format_command_help(_COMMANDS[topic][0])
    if topic in dict(_GROUPS):
        return _command_list(topic)
    raise CommandError(f"command or command group '{topic}' doesn't exist")


Opener = Callable[..., Awaitable[Connection]]

_KEEPALIVE_INTERVAL_MAX = (2**31 - 1) // 1000  # seconds whose milliseconds fit an int


async def _run(command: Command, handler: Handler, args: SimpleNamespace, opener: Opener) -> str:
    # virsh connects before the command when given -c, and within it otherwise (so a
    # failure then ends with the command's blank line). Once a command of the run has
    # connected, virsh holds that connection for the rest: a later failure is its attempt
    # to reconnect within the command, and the commands after it still run.
    reconnecting = args.connect in _reached
    ran = reconnecting or not args.connect_given
    failed = "Failed to reconnect" if reconnecting else "failed to connect"
    keepalive: tuple[float, int] = args.keepalive
    # libvirt's client refuses an interval whose milliseconds overflow an int, once
    # connected to a daemon that does keepalive.
    refused_interval = keepalive[0] > _KEEPALIVE_INTERVAL_MAX
    try:
        conn = await opener(
            args.connect,
            protocol=args.protocol,
            read_only=args.readonly,
            keepalive=None if refused_interval else keepalive,
        )
    except TimeoutError as exc:
        raise CommandError(f"{failed} to the hypervisor", "timed out", ran=ran) from exc
    except (TransportError, VirtvolError, LibvirtError) as exc:
        message = exc.message if isinstance(exc, LibvirtError) else str(exc)
        raise CommandError(f"{failed} to the hypervisor", message, ran=ran) from exc
    # virsh gives the connection up when the keepalive -k or -K asked for (an interval
    # of 0 asks for none) cannot be had: the daemon does none, or the client refuses it.
    keepalive_refused = not conn.keepalive_supported or refused_interval
    if args.keepalive_asked and keepalive[0] > 0 and keepalive_refused:
        await conn.close()
        reasons = [f"{failed} to the hypervisor"]
        if conn.keepalive_supported:
            reasons.append(f"internal error: keepalive interval {keepalive[0]} too large")
        raise CommandError(
            "Cannot setup keepalive on connection as requested, disconnecting",
            *reasons,
            ran=ran,
        )
    # Only now held: a connection given up over its keepalive leaves virsh none, and the
    # next command's failure is then to connect, not to reconnect.
    _reached.add(args.connect)
    async with conn:  # a short goodbye after Ctrl-C or a signal that ends the command
        try:
            try:
                check_exclusive(command, vars(args))
                check_not_empty(command, vars(args))
            except ArgumentError as exc:
                raise CommandError(str(exc)) from None
            return await handler(conn, args)
        except VirtvolError as exc:  # a lost connection, a value the wire cannot carry
            raise CommandError(str(exc)) from exc


# The URIs a command of this run has connected to (``None``: the library's default), which
# virsh would still hold a connection to.
_reached: set[str | None] = set()


def _connect_uri(given: str | None) -> str | None:
    """virsh's choice: ``-c``, then ``$VIRSH_DEFAULT_CONNECT_URI``; ``$VIRTVOL_DEFAULT_URI``
    (virtvol's own) comes first of the variables. None leaves the rest to the library
    (``$LIBVIRT_DEFAULT_URI``, libvirt's client configuration, the local daemon)."""
    if given:
        return given
    for name in (DEFAULT_URI_ENV, "VIRSH_DEFAULT_CONNECT_URI"):
        value = os.environ.get(name)
        if value:
            return value
    return None


def _execute(command: Command, handler: Handler, args: SimpleNamespace) -> str:
    """Run the command over a blocking socket (``direct``), whatever the transport: that
    spares a short command the event loop's start-up."""
    from virtvol.client import direct

    return direct.run_blocking(_run(command, handler, args, direct.open_direct))


def _show_warnings() -> None:
    """The library's warnings (a sparse fallback, say) go to stderr as virsh words its own
    (``warning: ...``). ``--quiet`` keeps them, as virsh keeps its warnings under ``-q``:
    it silences notices and decoration, not news that something went differently.
    The handler is put in place when the library first logs: most commands never do,
    and spare importing logging."""
    when_first_used(_stderr_warnings)


_WARNINGS_HANDLER = "virtvol command line warnings"
# A connection's failure, logged as it happens, waits here for the command's end: the
# command usually fails with it, and virsh says it once, as the error (see main).
_held_failures: list[str] = []


def _stderr_warnings() -> None:
    import logging

    class StderrWarnings(logging.Handler):
        # Looks sys.stderr up for each record, so one handler serves every run of main()
        # in a process, whatever stderr is at the time.
        def emit(self, record: logging.LogRecord) -> None:
            try:
                if getattr(record, "connection_failure", False):
                    _held_failures.append(record.getMessage())
                    return
                sys.stderr.write(f"{record.levelname.lower()}: {record.getMessage()}\n")
            except Exception:  # a closed or full stderr must not fail the transfer
                self.handleError(record)

    logger = logging.getLogger("virtvol")
    if not any(handler.name == _WARNINGS_HANDLER for handler in logger.handlers):
        handler = StderrWarnings()
        handler.name = _WARNINGS_HANDLER
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


def _show_held_failures(errors: Sequence[str] = ()) -> None:
    """Warn of the connection failures the command's ``errors`` do not already say (a
    failure while saying goodbye, after the command's work was done)."""
    for message in _held_failures:
        if message not in errors:
            sys.stderr.write(f"warning: {message}\n")
    _held_failures.clear()


class _Invocation(Record):
    """What the command line asks for: a text to print (help, version), a command, or a
    failure to report when its turn comes (help on a topic that does not exist).
    ``ran``: the text is a command's output (``help``), which ends as a command's does.
    ``ends``: ``quit`` or ``exit``, which end the commands with status 0."""

    args: SimpleNamespace
    text: str | None = None
    ran: bool = False
    ends: bool = False
    command: Command | None = None
    handler: Handler | None = None
    failure: CommandError | None = None


class _EmptyCommand(Exception):
    """A command line whose command is an empty word, which virsh refuses without a word."""


def _prepare(argv: Sequence[str]) -> list[_Invocation]:
    """Read the command line (raises ArgumentError or CommandError as virsh would).

    The command and its words may also come as one word holding one or more commands
    (``virtvol 'vol-path v p; vol-key v p'``), as virsh takes them; every one of them
    is read before the first runs, so a refused one runs none.
    """
    found, rest = read_globals(argv)
    plain = SimpleNamespace(quiet=found.quiet, timing=found.timing)
    if found.show == "help":
        return [_Invocation(plain, text=USAGE + _command_list())]
    if found.show is not None:
        return [_Invocation(plain, text=version_text(found.show.removeprefix("version-")))]
    if not rest:
        raise ArgumentError("no command given (see 'virtvol help')")
    if len(rest) > 1:
        if rest[0].startswith("#"):  # virsh takes the whole line for a comment
            return []
        return [_prepare_command(found, rest[0], rest[1:])]
    if not rest[0]:
        raise _EmptyCommand
    return [_prepare_command(found, words[0], words[1:]) for words in split_command_string(rest[0])]


def _prepare_command(found: Globals, name: str, words: list[str]) -> _Invocation:
    """Read one command and its words (raises ArgumentError or CommandError)."""
    if name == "help":
        overlooked: list[str] = []
        reading = read_arguments(_HELP, words, overlooked=overlooked)
        for complaint in overlooked:  # said as the line is read, as virsh says it
            sys.stderr.write(f"error: {complaint}\n")
        plain = _plain(found, reading)
        if reading.help_asked:
            return _Invocation(plain, text=format_command_help(_HELP), ran=True)
        topic = reading.values["command"]
        try:
            text = _help(topic if isinstance(topic, str) and topic else None)
        except CommandError as exc:
            return _Invocation(plain, failure=exc)
        return _Invocation(plain, text=text, ran=True)
    if name in _QUIT_COMMANDS:
        reading = read_arguments(_QUIT_COMMANDS[name], words)
        plain = _plain(found, reading)
        if reading.help_asked:  # virsh's ``help quit``, which ends nothing
            return _Invocation(plain, text=format_command_help(_QUIT_COMMANDS[name]), ran=True)
        return _Invocation(plain, ends=True)
    if name in _INTERACTIVE:
        raise CommandError(f"command '{name}' is not supported by virtvol", ran=False)
    if name not in _COMMANDS:
        raise CommandError(f"unknown command: '{name}'", ran=False)
    command, handler = _COMMANDS[name]
    reading = read_arguments(command, words)
    if reading.help_asked:
        return _Invocation(_plain(found, reading), text=format_command_help(command), ran=True)
    args = SimpleNamespace(
        **reading.values,
        connect=_connect_uri(found.connect),
        connect_given=found.connect is not None,
        quiet=found.quiet or reading.quiet,
        readonly=found.readonly,
        protocol=found.protocol,
        keepalive=_keepalive(found),
        keepalive_asked=found.keepalive_interval is not None or found.keepalive_count is not None,
        timing=found.timing,
    )
    return _Invocation(args, command=command, handler=handler)


def _plain(found: Globals, reading: Arguments) -> SimpleNamespace:
    """What a command that prints a text needs of the options: -q (before the command,
    or virtvol's ``--quiet`` after it) and -t."""
    return SimpleNamespace(quiet=found.quiet or reading.quiet, timing=found.timing)


# virsh's keepalive where -k or -K leaves it: its own count, one more than libvirtd's 5.
VIRSH_KEEPALIVE: tuple[float, int] = (5, 6)


def _keepalive(found: Globals) -> tuple[float, int]:
    """``-k`` and ``-K``, each virsh's own when not given (an interval of 0: none)."""
    interval, count = VIRSH_KEEPALIVE
    if found.keepalive_interval is not None:
        interval = found.keepalive_interval
    if found.keepalive_count is not None:
        count = found.keepalive_count
    return interval, count


def _print(output: str, *, quiet: bool, end: str) -> None:
    """virsh's way: the command's output, then ``end`` (``_command_end``); with --quiet,
    no notices such as "Vol x created"."""
    sys.stdout.write(end if quiet and isinstance(output, Notice) else output + end)
    sys.stdout.flush()


def _command_end(args: SimpleNamespace, started: float) -> str:
    """What virsh writes after a command that ran, whatever its outcome: a blank line
    (none with --quiet), or with --timing how long the command took."""
    if args.timing:
        return f"\n(Time: {(time.perf_counter() - started) * 1000:.3f} ms)\n\n"
    return "" if args.quiet else "\n"


def _flush_output(text: str = "") -> None:
    """Write ``text`` to stdout and flush it around an error, unless its reader went
    away: the error may be that very reader's going (a download into /dev/stdout piped
    to ``head``)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError:
        pass


class _Ended(BaseException):
    """A signal that ends the command (``_ENDING``), raised where the command stands as
    Ctrl-C's KeyboardInterrupt is, so that it undoes what it started the same way: a
    download's stream aborted and its hidden temporary removed (killed outright, it left
    the temporary behind)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_SignalHandler = Callable[[int, "FrameType | None"], object] | int | None

# What ``timeout`` and service managers send (SIGTERM), and a closed terminal or a dropped
# ssh session (SIGHUP).
_ENDING = (_signal.SIGTERM, _signal.SIGHUP)


def _end(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal must not cut the undoing short (SIGKILL still ends it).
    for ending in _ENDING:
        _signal.signal(ending, _signal.SIG_IGN)
    raise _Ended(signum)


def _catch_ending_signals() -> dict[int, _SignalHandler]:
    """Make ``_ENDING`` signals raise ``_Ended``; returns the handlers they had. One this
    process was started with ignored stays ignored (``nohup virtvol ...`` goes on after
    a hangup); one with a handler of its own gets ours for the command's time (a
    coverage hook's, which would end the process at once and leave the temporary)."""
    previous: dict[int, _SignalHandler] = {}
    for signum in _ENDING:
        if _signal.getsignal(signum) != _signal.SIG_IGN:
            try:
                previous[signum] = _signal.signal(signum, _end)
            except ValueError:  # run from another thread: signals are its caller's to handle
                break
    return previous


def _open_closed_standard_streams() -> None:
    """Give a standard descriptor the process was started without (``>&-``, ``2>&-``)
    /dev/null, and Python's stream for it (None then) a file on it: what the command says
    there goes nowhere, and it still succeeds, as virsh does. A None stream failed the
    command with a traceback, after a download had replaced the file; and the number
    left free went to the first file or socket opened (a temporary, the connection),
    where a write meant for the terminal would have landed. A transfer through one
    (``/dev/stdout``) is refused all the same (``_names_a_missing_standard_stream``)."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            _started_without.add(fd)
            opened = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            if opened != fd:  # the lowest free number, which this one is, unless raced
                os.dup2(opened, fd, inheritable=False)
                os.close(opened)
        if getattr(sys, name) is None:
            # Open for the process's life, as Python's own standard streams are.
            stream = open(fd, "r" if fd == 0 else "w", closefd=False)  # noqa: SIM115
            setattr(sys, name, stream)


# The standard descriptors this process was started without, now /dev/null's: a transfer
# through one (``/dev/stdout``) is refused as virsh's open of it is, not sent to /dev/null.
_started_without: set[int] = set()


def _names_a_missing_standard_stream(path: str) -> bool:
    """Whether ``path`` names a standard descriptor the process was started without:
    ``/dev/stdout``, ``/dev/fd/1``, ``/proc/self/fd/1``, or a symbolic link to one."""
    if not _started_without:
        return False
    folders = {"/dev/fd", "/proc/self/fd", "/proc/thread-self/fd", f"/proc/{os.getpid()}/fd"}
    name = os.path.abspath(path)
    for _ in range(40):  # the links the kernel follows at most
        folder, number = os.path.split(name)
        if folder in folders and number.isdigit() and int(number) in _started_without:
            return _still_stood_in(int(number))
        try:
            link = os.readlink(name)  # /dev/stdout leads to /proc/self/fd/1
        except OSError:
            return False
        name = os.path.normpath(os.path.join(folder, link))
    return False


def _still_stood_in(fd: int) -> bool:
    """Whether /dev/null still stands in for the standard descriptor ``fd``: a program
    running ``main`` again may have given it a file of its own since."""
    try:
        held = os.fstat(fd)
        null = os.stat(os.devnull)
    except OSError:  # closed again
        return True
    return stat.S_ISCHR(held.st_mode) and held.st_rdev == null.st_rdev


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``virtvol`` command line (its command, or each of its command string's);
    returns the exit status (0, or 1 on error: the last command's)."""
    _open_closed_standard_streams()
    stderr_before = _write_undecodable_bytes_as_they_came()
    previous = _catch_ending_signals()
    try:
        return _main(argv)
    except _Ended as ended:  # before or after the command: nothing of it to undo
        return 128 + ended.signum
    finally:
        _give_standard_streams_back()
        if stderr_before is not None:
            _give_stderr_back(*stderr_before)
        for signum, handler in previous.items():
            _signal.signal(signum, handler)


# stderr's handler for what its encoding cannot take (``_write_undecodable_bytes...``).
_STDERR_ERRORS = "virtvol-bytes-as-they-came"


def _write_undecodable_bytes_as_they_came() -> tuple[io.TextIOWrapper, str | None] | None:
    """Make stderr write each byte that came in undecodable (a name typed in another
    encoding, a daemon's text that is not UTF-8: kept as a lone surrogate by
    ``surrogateescape``) as that byte, as virsh writes it, not as Python's ``\\udcff``,
    which a script matching the name would not find; what else stderr cannot encode it
    still escapes. Returns the stream and its handler before, for ``main`` to give back
    (None: a stream that cannot change it, left as it is)."""
    stream = sys.stderr
    if not isinstance(stream, io.TextIOWrapper):
        return None
    codecs.register_error(_STDERR_ERRORS, _bytes_as_they_came)
    previous = stream.errors
    stream.reconfigure(errors=_STDERR_ERRORS)
    return stream, previous


def _give_stderr_back(stream: io.TextIOWrapper, errors: str | None) -> None:
    """Give the stream ``_write_undecodable_bytes_as_they_came`` changed its handler back."""
    try:
        stream.reconfigure(errors=errors)
    except (OSError, ValueError):  # closed meanwhile: nothing more goes through it
        return


def _bytes_as_they_came(error: UnicodeError) -> tuple[str | bytes, int]:
    if not isinstance(error, UnicodeEncodeError):
        return codecs.backslashreplace_errors(error)
    # Character by character: an encoder may report a run that mixes such bytes with
    # characters it cannot take either (ASCII's "é\udcff").
    written = bytearray()
    for char in error.object[error.start : error.end]:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            written.append(code - 0xDC00)
        else:
            written += char.encode("ascii", "backslashreplace")
    return bytes(written), error.end


def _main(argv: Sequence[str] | None) -> int:
    _reached.clear()
    try:
        invocations = _prepare(sys.argv[1:] if argv is None else argv)
    except _EmptyCommand:
        return 1
    except ArgumentError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except CommandError as exc:  # an unknown command, refused before any ran
        for line in exc.lines:
            sys.stderr.write(f"error: {line}\n")
        return 1
    status = 0
    for invocation in invocations:
        if invocation.ends:
            return 0
        status, go_on = _run_invocation(invocation)
        if not go_on:
            break
    return status


def _run_invocation(invocation: _Invocation) -> tuple[int, bool]:
    """Run one command as read; returns its exit status and whether the commands after
    it may run (not after Ctrl-C, a reader gone, or a failed connection to ``-c``'s URI,
    which virsh makes once, before the first command)."""
    quiet = invocation.args.quiet
    started = time.perf_counter()
    _held_failures.clear()
    try:
        if invocation.failure is not None:
            raise invocation.failure
        if invocation.command is None or invocation.handler is None:
            end = _command_end(invocation.args, started) if invocation.ran else ""
            sys.stdout.write((invocation.text or "") + end)
            return 0, True
        _show_warnings()
        output = _execute(invocation.command, invocation.handler, invocation.args)
    except ArgumentError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1, True
    except CommandError as exc:
        _flush_output(exc.output)
        _show_held_failures(exc.lines)
        for line in exc.lines:
            sys.stderr.write(f"error: {line}\n")
        sys.stderr.flush()
        if exc.ran:
            _flush_output(_command_end(invocation.args, started))
        return 1, exc.ran
    except KeyboardInterrupt:
        _show_held_failures()
        return 130, False
    except _Ended as ended:  # the shell's status for a death by that signal
        _show_held_failures()
        return 128 + ended.signum, False
    _show_held_failures()
    try:
        _print(output, quiet=quiet, end=_command_end(invocation.args, started))
    except BrokenPipeError:  # the reader went away (``virtvol vol-list | head``)
        return 1, False
    except OSError as exc:  # a full disk, an I/O error: said, not a traceback
        sys.stderr.write(f"error: cannot write the output: {exc.strerror or exc}\n")
        return 1, False
    return 0, True


def run() -> NoReturn:
    """The ``virtvol`` command: ``main``, then exit without tearing the interpreter down.

    Every file the command wrote is closed and every thread joined by the time
    ``main`` returns; what is left, freeing each module and object one by one, is
    a sixth of a short command's time and nobody's benefit.
    """
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe or a full disk: the output did not all arrive
            status = status or 1
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
