"""The procedure table drives virtvold: one handler per served procedure, refusals from it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.daemon.conftest import RawClient, error_of
from virtvol.daemon.dispatch import HANDLERS, Handler, Runs, handler_table, stream
from virtvol.protocol import procedures as p
from virtvol.protocol import remote as r
from virtvol.protocol.connection import ReplyReceived
from virtvol.protocol.constants import ConnectOpenFlags
from virtvol.protocol.errors import ErrorCode
from virtvol.protocol.procedure_names import REMOTE_PROCEDURE_NAMES
from virtvol.protocol.procedures import PROCEDURES, Proc, Procedure
from virtvol.protocol.xdr import Reader, XdrStruct

if TYPE_CHECKING:
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
