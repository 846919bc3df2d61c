"""The frozen value classes of the protocol core (``virtvol.protocol.record``).

They stand in for frozen slotted dataclasses: these tests pin the behaviour the
rest of the tree relies on, and that declaring them needs none of the machinery
that made importing the protocol package slow.
"""

from __future__ import annotations

import copy
import inspect
import os
import pickle
import subprocess
import sys
from typing import Annotated, Any, ClassVar

import pytest

from virtvol.protocol import record as record_module
from virtvol.protocol.connection import (
    PingReceived,
    StreamDataReceived,
    StreamEndReceived,
    StreamFinished,
)
from virtvol.protocol.frames import Header
from virtvol.protocol.record import Record
from virtvol.protocol.remote import (
    RemoteError,
    SecretGetValueRet,
    StoragePool,
    StorageVol,
    StreamHole,
)
from virtvol.protocol.xdr import Int, String, XdrStruct

UUID = bytes(range(16))


class _Point(Record):
    x: int
    y: int
    label: str = "origin"
    weight: float = 1.0


class _Outer:
    class Inner(Record):
        value: int


def test_fields_become_slots_and_instances_have_no_dict() -> None:
    assert vars(_Point)["__slots__"] == ("x", "y", "label", "weight")
    point = _Point(1, 2)
    assert not hasattr(point, "__dict__")
    assert vars(StreamDataReceived)["__slots__"] == ("serial", "data")


def test_records_are_frozen() -> None:
    point = _Point(1, 2)
    with pytest.raises(AttributeError, match="cannot assign to field 'x'"):
        point.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError, match="cannot assign to field 'other'"):
        point.other = 5
    with pytest.raises(AttributeError, match="cannot delete field 'y'"):
        del point.y
    assert (point.x, point.y) == (1, 2)


def test_construction_by_position_keyword_and_both() -> None:
    expected = ("a", UUID)
    for pool in (
        StoragePool("a", UUID),
        StoragePool(name="a", uuid=UUID),
        StoragePool(uuid=UUID, name="a"),
        StoragePool("a", uuid=UUID),
        StoragePool(**dict[str, Any](name="a", uuid=UUID)),
    ):
        assert (pool.name, pool.uuid) == expected
    assert StreamEndReceived(serial=7).serial == 7
    assert StreamDataReceived(serial=7, data=b"x").data == b"x"
    header = Header(program=1, version=2, procedure=3, type=4, serial=5, status=6)
    assert header == Header(1, 2, 3, 4, 5, 6)
    assert StorageVol("p", "v", key="k") == StorageVol("p", "v", "k")


@pytest.mark.parametrize("size", range(9))
def test_records_of_every_size_take_positions_and_keywords(size: int) -> None:
    # Construction is unrolled for the small sizes: each one, and the loop beyond.
    fields = [f"field{index}" for index in range(size)]
    metaclass: Any = type(Record)
    cls = metaclass(f"Sized{size}", (Record,), {"__annotations__": dict.fromkeys(fields, "int")})
    values = tuple(range(10, 10 + size))
    by_position = cls(*values)
    by_keyword = cls(**dict(zip(reversed(fields), reversed(values), strict=True)))
    assert by_position == by_keyword
    assert tuple(getattr(by_position, field) for field in fields) == values
    with pytest.raises(TypeError, match=f"takes {size} positional arguments but {size + 1}"):
        cls(*values, 99)


def test_defaults_fill_what_a_call_leaves_out() -> None:
    assert StreamHole(5) == StreamHole(5, 0) == StreamHole(length=5)
    assert (_Point(1, 2).label, _Point(1, 2).weight) == ("origin", 1.0)
    assert _Point(1, 2, "a") == _Point(1, 2, "a", 1.0)
    assert _Point(1, 2, weight=3.0) == _Point(1, 2, "origin", 3.0)
    assert _Point(y=2, x=1, weight=3.0) == _Point(1, 2, "origin", 3.0)
    error = RemoteError(code=1, domain=2, message="m")
    assert (error.level, error.dom, error.str1, error.int1, error.net) == (2, None, None, -1, None)
    assert RemoteError(1, 2, "m") == error


@pytest.mark.parametrize(
    ("cls", "args", "kwargs", "message"),
    [
        (StoragePool, ("a",), {}, r"StoragePool\(\) missing 1 required argument\(s\): 'uuid'"),
        (StoragePool, (), {}, r"missing 2 required argument\(s\): 'name', 'uuid'"),
        (StoragePool, (), {"name": "a"}, r"missing 1 required argument\(s\): 'uuid'"),
        (StoragePool, ("a", UUID, 3), {}, r"takes 2 positional arguments but 3 were given"),
        (StoragePool, (), {"name": "a", "id": UUID}, r"unexpected keyword argument 'id'"),
        (StoragePool, ("a",), {"name": "b"}, r"multiple values for argument 'name'"),
        (PingReceived, (1,), {}, r"PingReceived\(\) takes 0 positional arguments but 1"),
        (PingReceived, (), {"serial": 1}, r"unexpected keyword argument 'serial'"),
        (StreamEndReceived, (), {}, r"missing 1 required argument\(s\): 'serial'"),
        (StreamEndReceived, (1, 2), {}, r"takes 1 positional arguments but 2 were given"),
        (StreamEndReceived, (), {"id": 1}, r"unexpected keyword argument 'id'"),
        (Header, (1, 2, 3), {}, r"missing 3 required argument\(s\): 'type', 'serial', 'status'"),
        (Header, (1, 2, 3, 4, 5, 6, 7), {}, r"takes 6 positional arguments but 7"),
        (StreamHole, (), {}, r"missing 1 required argument\(s\): 'length'"),
        (_Outer.Inner, (), {}, r"_Outer.Inner\(\) missing 1 required argument\(s\): 'value'"),
    ],
)
def test_a_wrong_call_is_refused_as_for_a_function(
    cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        cls(*args, **kwargs)


def test_equality_is_by_value_and_by_class() -> None:
    assert StoragePool("a", UUID) == StoragePool("a", UUID)
    assert StoragePool("a", UUID) != StoragePool("b", UUID)
    # Same field values, different classes: never equal, as with dataclasses.
    assert StreamEndReceived(1) != StreamFinished(1)  # type: ignore[comparison-overlap]
    assert StoragePool("a", UUID) != ("a", UUID)  # type: ignore[comparison-overlap]
    assert PingReceived() == PingReceived()
    assert StoragePool("a", UUID).__eq__(("a", UUID)) is NotImplemented


def test_hash_is_the_hash_of_the_field_values() -> None:
    assert hash(StoragePool("a", UUID)) == hash(("a", UUID))
    assert hash(StreamEndReceived(3)) == hash((3,))
    assert hash(PingReceived()) == hash(())
    assert len({StoragePool("a", UUID), StoragePool("a", UUID), StoragePool("b", UUID)}) == 2


def test_repr_names_each_field() -> None:
    assert repr(StoragePool("a", b"\x01")) == "StoragePool(name='a', uuid=b'\\x01')"
    assert repr(StreamEndReceived(3)) == "StreamEndReceived(serial=3)"
    assert repr(PingReceived()) == "PingReceived()"
    assert repr(_Outer.Inner(1)) == "_Outer.Inner(value=1)"
    assert repr(_Point(1, 2)) == "_Point(x=1, y=2, label='origin', weight=1.0)"
    # A repr written in the class body stays: a secret is never printed.
    assert repr(SecretGetValueRet(b"hunter2")) == "SecretGetValueRet(value=<7 bytes>)"


def test_match_args_follow_the_fields() -> None:
    assert Header.__match_args__ == ("program", "version", "procedure", "type", "serial", "status")
    match StreamDataReceived(4, b"data"):
        case StreamDataReceived(serial, data):
            assert (serial, data) == (4, b"data")
        case _:  # pragma: no cover - the case above matches
            pytest.fail("no match")


def test_pickle_and_copy_rebuild_an_equal_record() -> None:
    error = RemoteError(1, 2, "m", dom=None, str1="s")
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert clone == error
        assert type(clone) is RemoteError
    assert pickle.loads(pickle.dumps(PingReceived())) == PingReceived()


def test_the_signature_names_the_fields_and_defaults() -> None:
    assert str(inspect.signature(StreamHole)) == "(length, flags=0)"
    assert str(inspect.signature(_Point)) == "(x, y, label='origin', weight=1.0)"
    assert str(inspect.signature(PingReceived)) == "()"


def test_a_subclass_adds_its_fields_after_those_of_its_base() -> None:
    class Weighted(_Point):
        colour: str = "red"

    point = Weighted(1, 2, colour="blue")
    assert vars(Weighted)["__slots__"] == ("colour",)
    assert (point.x, point.y, point.label, point.weight, point.colour) == (
        1,
        2,
        "origin",
        1.0,
        "blue",
    )
    assert repr(point).startswith("test_a_subclass_adds_its_fields_after_those_of_its_base.")
    assert point != _Point(1, 2)


def test_class_variables_are_not_fields() -> None:
    class Counted(Record):
        limit: ClassVar[int] = 3
        count: int

    assert vars(Counted)["__slots__"] == ("count",)
    assert Counted(1).limit == 3
    # The same with annotations that are objects rather than strings.
    metaclass: Any = type(Record)
    dynamic = metaclass(
        "Dynamic",
        (Record,),
        {"__annotations__": {"size": int, "kind": ClassVar[str], "bare": ClassVar}, "kind": "x"},
    )
    assert vars(dynamic)["__slots__"] == ("size",)
    assert dynamic(size=4).kind == "x"


def test_a_class_body_init_is_kept() -> None:
    class Doubled(Record):
        value: int

        def __init__(self, half: int) -> None:
            object.__setattr__(self, "value", 2 * half)

    assert Doubled(2).value == 4


def test_a_record_class_makes_its_constructor_when_first_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Declaring a class must not pay for its constructor: most of the protocol's
    # classes are never built by a command.
    made: list[tuple[str, ...]] = []
    make_init = record_module._make_init

    def counting_make_init(qualname: str, fields: tuple[str, ...], *rest: Any) -> Any:
        made.append(fields)
        return make_init(qualname, fields, *rest)

    monkeypatch.setattr(record_module, "_make_init", counting_make_init)

    class Pair(Record):
        first: int
        second: str = "b"

    assert made == []
    assert Pair(1) == Pair(first=1, second="b")
    assert Pair(2, "c").second == "c"
    assert made == [("first", "second")]


def test_a_base_built_through_a_subclass_makes_its_own_constructor() -> None:
    class Base(Record):
        value: int

    class Tagged(Base):
        tag: str

        def __init__(self, value: int) -> None:
            Base.__init__(self, value)  # the base's fields only; the tag set after
            object.__setattr__(self, "tag", f"#{value}")

    tagged = Tagged(3)
    assert (tagged.value, tagged.tag) == (3, "#3")
    assert Base(4).value == 4
    with pytest.raises(TypeError, match=r"takes 1 positional arguments but 2 were given"):
        Base(1, 2)  # type: ignore[call-arg]


def test_declarations_a_dataclass_would_refuse_are_refused() -> None:
    with pytest.raises(TypeError, match="a field without a default follows one with a default"):

        class Misordered(Record):
            first: int = 0
            second: int  # type: ignore[misc]

    with pytest.raises(ValueError, match=r"Mutable\.items: mutable default list"):

        class Mutable(Record):
            items: list[int] = []  # noqa: RUF012 - the point of the test


def test_xdr_fields_are_compiled_on_first_use_from_the_annotations() -> None:
    class Pair(XdrStruct):
        name: Annotated[str, String(8)]
        number: Annotated[int, Int()]

    assert "_xdr_fields" not in Pair.__dict__
    (name, name_codec), (number, number_codec) = Pair.fields()
    assert (name, name_codec, number) == ("name", String(8), "number")
    assert isinstance(number_codec, Int)
    assert "_xdr_fields" in Pair.__dict__
    assert Pair.decode(Pair("ab", -1).encode()) == Pair("ab", -1)


def test_importing_the_protocol_core_needs_no_dataclasses_or_event_loop() -> None:
    # A fresh interpreter, as the command line starts (without the coverage hook of
    # `make unit`, which imports modules of its own first).
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import virtvol.protocol.connection, virtvol.protocol.procedures\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=environment,
    )
    imported = set(result.stdout.split())
    assert "virtvol.protocol.record" in imported
    assert not imported & {"asyncio", "dataclasses", "inspect", "socket", "ssl"}
    for cls in (StoragePool, RemoteError, StreamDataReceived, Header):
        assert not hasattr(cls, "__dataclass_fields__")


def test_without_typing_imported_no_annotation_object_is_a_class_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A command imports no typing (virtvol.protocol.hints), so no ClassVar object can
    # exist, and the check must not import typing to find out.
    from virtvol.protocol import record

    monkeypatch.delitem(sys.modules, "typing")
    assert not record._is_class_variable(int)
    assert "typing" not in sys.modules
    assert record._is_class_variable("ClassVar[int]")
