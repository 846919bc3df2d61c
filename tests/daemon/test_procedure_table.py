"""The procedure table drives virtvold: one handler per served procedure, refusals from it."""

from __future__ import annotations

import builtins
import os
from typing import TYPE_CHECKING, Any

import pytest

from tests.daemon.conftest import RawClient, error_of
from virtvol.daemon.dispatch import HANDLERS, Handler, Runs, handler_table, stream
from virtvol.daemon.storage import StorageRegistry
from virtvol.protocol import procedures as p
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived
from virtvol.protocol.constants import ConnectOpenFlags
from virtvol.protocol.errors import ErrorCode, ErrorReport
from virtvol.protocol.procedure_names import REMOTE_PROCEDURE_NAMES
from virtvol.protocol.procedures import PROCEDURES, Proc, Procedure
from virtvol.protocol.xdr import Reader, XdrStruct

if TYPE_CHECKING:
    from pathlib import Path

    from tests.conftest import ReferenceLibvirtd, Virtvold

REFUSED_READ_ONLY = [proc for proc in PROCEDURES.values() if proc.refused_read_only]


def test_every_served_procedure_has_one_handler() -> None:
    served = {number for number, proc in PROCEDURES.items() if not proc.event}
    assert set(HANDLERS) == served
    for number, handler in HANDLERS.items():
        assert handler.procedure is PROCEDURES[number]
        assert (handler.runs is Runs.STREAM) == (handler.procedure.stream is not None)
        assert (handler.function is None) == (handler.runs in (Runs.STREAM, Runs.CLOSE))


def test_a_second_handler_or_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="STORAGE_VOL_UPLOAD has two handlers"):
        handler_table(stream(p.STORAGE_VOL_UPLOAD), stream(p.STORAGE_VOL_UPLOAD))
    with pytest.raises(ValueError, match="a stream procedure needs a stream handler"):
        handler_table(Handler(p.STORAGE_VOL_DOWNLOAD, Runs.CLOSE))
    with pytest.raises(ValueError, match="CONNECT_GET_TYPE entered twice"):
        p._p(Proc.CONNECT_GET_TYPE, None, lambda: r.ConnectGetTypeRet)


def test_the_table_names_procedures_as_libvirt_numbers_them() -> None:
    for number, proc in PROCEDURES.items():
        assert REMOTE_PROCEDURE_NAMES[number] == proc.name == Proc(number).name
    assert set(PROCEDURES) == set(Proc)


def test_refused_read_only_covers_every_mutating_procedure() -> None:
    mutating = {proc.name for proc in PROCEDURES.values() if proc.mutating}
    assert mutating <= {proc.name for proc in REFUSED_READ_ONLY}
    assert "STORAGE_VOL_DOWNLOAD" in {proc.name for proc in REFUSED_READ_ONLY}


class _FileTouched(BaseException):
    """Raised by every file function while the event loop's calls run (a BaseException:
    no ``except OSError`` or ``except Exception`` on the way may take it for a failure)."""


# What a call could reach a file or a directory through.
_FILE_FUNCTIONS = [
    "stat",
    "lstat",
    "fstat",
    "statvfs",
    "fstatvfs",
    "open",
    "listdir",
    "scandir",
    "read",
    "pread",
    "readv",
    "preadv",
    "write",
    "pwrite",
    "pwritev",
    "mkdir",
    "rmdir",
    "rename",
    "replace",
    "unlink",
    "remove",
    "fsync",
    "fdatasync",
    "chmod",
    "fchmod",
]


def _memory_call_args(
    procedure: Procedure[Any, Any], values: dict[str, object]
) -> XdrStruct | None:
    args: type[XdrStruct] | None = procedure.args
    return None if args is None else args(**{field: values[field] for field in args._record_fields})


def test_the_calls_answered_on_the_event_loop_touch_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``Runs.MEMORY`` handler, answered about a running pool, a volume and a secret
    that exist, with each file function of ``os`` and ``open`` raising: the event loop
    runs them, and a file they touched could keep it waiting for a frozen disk."""
    registry = StorageRegistry(tmp_path / "state")
    registry.load()
    pool = registry.ensure_pool("default", tmp_path / "pool")
    (tmp_path / "pool" / "disk.img").write_bytes(b"data")
    secret = registry.secrets.define_xml(
        "<secret ephemeral='no' private='no'><usage type='ceph'><name>key</name></usage></secret>"
    )
    registry.secrets.set_value(secret.uuid, b"value")
    wire_pool = r.StoragePool(name=pool.name, uuid=pool.uuid)
    values: dict[str, object] = {
        "flags": 0,
        "type": "dir",
        "src_spec": None,
        "path": str(tmp_path / "pool"),
        "maxnames": 16,
        "maxuuids": 16,
        "need_results": 1,
        "name": "default",
        "pool": wire_pool,
        "vol": r.StorageVol(pool="default", name="disk.img", key=str(tmp_path / "pool/disk.img")),
        "usage_type": int(secret.usage_type),
        "usage_id": secret.usage_id,
        "secret": r.Secret(
            uuid=secret.uuid, usage_type=int(secret.usage_type), usage_id=secret.usage_id or ""
        ),
    }
    memory = [handler for handler in HANDLERS.values() if handler.runs is Runs.MEMORY]
    answered: dict[str, object] = {}
    try:
        with monkeypatch.context() as patched:
            for name in _FILE_FUNCTIONS:
                patched.setattr(os, name, _touched)
            patched.setattr(builtins, "open", _touched)
            for handler in memory:
                procedure, function = handler.procedure, handler.function
                assert function is not None
                uuid = secret.uuid if procedure.name.startswith("SECRET_") else pool.uuid
                args = _memory_call_args(procedure, {**values, "uuid": uuid})
                try:
                    answered[procedure.name] = function(registry, args)
                except ErrorReport as exc:
                    answered[procedure.name] = exc.message
    finally:
        registry.close()
    assert len(answered) == len(memory)
    assert answered["STORAGE_POOL_LOOKUP_BY_NAME"] == r.PoolRet(pool=wire_pool)
    assert answered["SECRET_GET_VALUE"] == r.SecretGetValueRet(value=b"value")
    # Only source discovery is refused, as libvirt refuses it for a dir pool.
    refused = {name for name, answer in answered.items() if isinstance(answer, str)}
    assert refused == {"CONNECT_FIND_STORAGE_POOL_SOURCES"}


def _touched(*args: object, **kwargs: object) -> None:
    raise _FileTouched(args)


def _placeholder_args(procedure: Procedure[Any, Any]) -> XdrStruct | None:
    # Empty names and zeros: the read-only check comes before any lookup.
    args: type[XdrStruct] | None = procedure.args
    return args.unpack(Reader(bytes(4096))) if args is not None else None


# Every procedure a client may call, but CONNECT_CLOSE (it ends the connection).
CALLABLE = [
    proc for proc in PROCEDURES.values() if not proc.event and proc.number != Proc.CONNECT_CLOSE
]

Answer = tuple[int, int, str | None] | None  # the error, or None for a reply


async def _read_only_answers(port: int, name: str) -> dict[str, Answer]:
    client = await RawClient.connect(port)
    try:
        opened = await client.call(
            Proc.CONNECT_OPEN, r.ConnectOpenArgs(name=name, flags=ConnectOpenFlags.RO)
        )
        assert isinstance(opened, ReplyReceived), opened
        answers: dict[str, Answer] = {}
        for proc in CALLABLE:
            event = await client.call(proc.number, _placeholder_args(proc))
            answers[proc.name] = None if isinstance(event, ReplyReceived) else error_of(event)
        return answers
    finally:
        await client.close()


def _refused(answers: dict[str, Answer]) -> dict[str, Answer]:
    return {
        name: answer
        for name, answer in answers.items()
        if answer is not None and answer[0] == ErrorCode.OPERATION_DENIED
    }


async def test_read_only_refusals_match_libvirtd(
    virtvold: Virtvold, reference_libvirtd: ReferenceLibvirtd
) -> None:
    """libvirtd refuses exactly the table's refused_read_only procedures, as virtvold does."""
    ours = _refused(await _read_only_answers(virtvold.port, "storage:///system"))
    # The reference libvirtd runs unprivileged: its storage driver is the session one.
    theirs = _refused(await _read_only_answers(reference_libvirtd.port, "storage:///session"))
    assert set(theirs) == {proc.name for proc in REFUSED_READ_ONLY}
    assert ours == theirs
    for proc in REFUSED_READ_ONLY:
        answer = ours[proc.name]
        assert answer is not None
        assert answer[2] == f"operation forbidden: read only access prevents {proc.api_name}"
