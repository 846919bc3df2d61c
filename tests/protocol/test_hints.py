"""The run-time stand-ins for typing's names behave as typing's do where the code uses them."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from virtvol.protocol import hints


def test_annotated_keeps_the_type_and_the_metadata_as_typing_does() -> None:
    # Subscripted by hand: type checkers read the subscript as typing's own.
    ours = hints.Annotated.__class_getitem__((int, "meta", 2))
    theirs = typing.Annotated[int, "meta", 2]
    assert (ours.__origin__, ours.__metadata__) == (
        getattr(theirs, "__origin__", None),
        getattr(theirs, "__metadata__", None),
    )
    assert repr(ours) == "Annotated[<class 'int'>, 'meta', 2]"
    with pytest.raises(TypeError, match="at least one annotation"):
        hints.Annotated.__class_getitem__(int)


def test_the_other_names_do_nothing_at_run_time() -> None:
    class Box(hints.Generic.__class_getitem__(hints.TypeVar("T"))):  # type: ignore[misc]
        __slots__ = ()

    assert Box.__class_getitem__(int) is Box
    assert hints.TypeVar("T", bound=int) == "T"
    value = object()
    assert hints.cast(int, value) is value

    def function() -> None: ...

    assert hints.overload(function) is function
    assert hints.dataclass_transform(frozen_default=True)(Box) is Box
    assert hints.TYPE_CHECKING is False


def test_a_command_line_import_brings_no_typing() -> None:
    # What the stand-ins are for: the protocol, the command line and the sparse
    # engine import neither typing nor re, and every REMOTE struct's fields compile
    # without them (coverage's start-up hook would import both).
    probe = (
        "import sys\n"
        "import virtvol.client.cli, virtvol.client.direct, virtvol.client.direct_transfer\n"
        "from virtvol.protocol import procedures, remote, xdr\n"
        "from virtvol.protocol import remote_events, remote_secrets, remote_volumes\n"
        "modules = (remote, remote_volumes, remote_secrets, remote_events)\n"
        "structs = [c for m in modules for c in vars(m).values() if isinstance(c, type)]\n"
        "for struct in structs:\n"
        "    if issubclass(struct, xdr.XdrStruct) and struct is not xdr.XdrStruct:\n"
        "        struct.fields()\n"
        "print(sorted({'typing', 're', 'urllib.parse'} & set(sys.modules)))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.stdout == "[]\n", result.stderr
