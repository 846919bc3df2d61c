"""The protocol's enums, made the quick way (``protocol/enums.py``), against the same
modules run with the ``enum`` module's own classes: every behaviour a caller can see
must be the same."""

from __future__ import annotations

import enum
import importlib
import importlib.util
import itertools
import pickle
import pkgutil
import sys
import types
from typing import Any

import pytest

import virtvol.protocol
from virtvol.protocol import enums


def _protocol_enum_modules() -> list[types.ModuleType]:
    modules = []
    for info in pkgutil.iter_modules(virtvol.protocol.__path__):
        module = importlib.import_module(f"virtvol.protocol.{info.name}")
        if module is not enums and any(_enums_of(module)):
            modules.append(module)
    return modules


def _enums_of(module: types.ModuleType) -> list[type[enum.Enum]]:
    """The enum classes ``module`` defines (not those it imports)."""
    return [
        value
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, enum.Enum)
        and value.__qualname__ == name
        and value.__module__ == module.__name__
    ]


def _run_the_usual_way(module: types.ModuleType) -> types.ModuleType:
    """``module`` run again, its enums made by the ``enum`` module's own classes. The
    copy is not registered: the protocol's modules keep their own classes."""
    usual_bases = types.ModuleType(enums.__name__)
    usual_bases.__dict__.update(Enum=enum.Enum, IntEnum=enum.IntEnum, IntFlag=enum.IntFlag)
    spec = importlib.util.spec_from_file_location(module.__name__, module.__file__)
    assert spec is not None
    assert spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    saved = sys.modules[enums.__name__]
    sys.modules[enums.__name__] = usual_bases
    try:
        spec.loader.exec_module(copy)
    finally:
        sys.modules[enums.__name__] = saved
    return copy


PAIRS = [
    (quick, getattr(_run_the_usual_way(module), quick.__name__))
    for module in _protocol_enum_modules()
    for quick in _enums_of(module)
]


def _id(pair: tuple[type, type]) -> str:
    return pair[0].__name__


def _lookup(cls: Any, value: object) -> str:
    try:
        return repr(cls(value))
    except ValueError as exc:
        return f"ValueError: {exc}"


def _seen(member: Any) -> tuple[str, str, str, object]:
    return (repr(member), str(member), format(member), member.value)


def _shape(namespace: dict[str, Any]) -> dict[str, str]:
    """What each name of a class's namespace holds, by kind."""
    return {
        name: "the object hash" if value is object.__hash__ else type(value).__name__
        for name, value in namespace.items()
    }


def test_every_protocol_enum_is_made_the_quick_way() -> None:
    assert enums.IntEnum is not enum.IntEnum
    assert len(PAIRS) >= 20
    for quick, usual in PAIRS:
        assert quick is not usual
        assert type(quick) is type(usual) is enum.EnumType
        for kind in (enum.IntFlag, enum.IntEnum, enum.Enum):
            assert issubclass(quick, kind) == issubclass(usual, kind), quick


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_classes_read_as_the_usual_ones(pair: tuple[Any, Any]) -> None:
    quick, usual = pair
    for attribute in ("__doc__", "__qualname__", "__module__", "__mro__"):
        # The classes of the base list are the same; only the class itself differs.
        seen = getattr(quick, attribute)
        expected = getattr(usual, attribute)
        if attribute == "__mro__":
            seen, expected = seen[1:], expected[1:]
        assert seen == expected, attribute
    assert _shape(vars(quick)) == _shape(vars(usual))
    assert dir(quick) == dir(usual)
    assert quick.__hash__ is usual.__hash__ or quick.__hash__.__qualname__ == (
        usual.__hash__.__qualname__
    )


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_members_read_as_the_usual_ones(pair: tuple[Any, Any]) -> None:
    quick, usual = pair
    assert list(quick.__members__) == list(usual.__members__)
    assert [m.name for m in quick] == [m.name for m in usual]
    assert len(quick) == len(usual)
    for name, member in quick.__members__.items():
        assert _seen(member) == _seen(usual[name]), name
        assert member.__doc__ == usual[name].__doc__
        assert dir(member) == dir(usual[name])
        assert getattr(quick, name) is member
        # Read as a plain attribute, as the usual way stores it, not through a descriptor.
        assert quick.__dict__[name] is member
        assert quick(member.value) is member
        assert quick[name] is member
        assert member in quick
        assert pickle.loads(pickle.dumps(member)) is member
        if issubclass(quick, int):
            assert int(member) == member.value
            assert hash(member) == hash(member.value) == hash(usual[name])
    for stranger in (123456, -7, "no such value"):
        assert _lookup(quick, stranger) == _lookup(usual, stranger)


@pytest.mark.parametrize("pair", [p for p in PAIRS if issubclass(p[0], enum.Flag)], ids=_id)
def test_flags_combine_as_the_usual_ones(pair: tuple[Any, Any]) -> None:
    quick, usual = pair
    names = list(quick.__members__)
    for first, second in itertools.product(names, repeat=2):
        combined = quick[first] | quick[second]
        expected = usual[first] | usual[second]
        assert _seen(combined) == _seen(expected)
        assert [m.name for m in combined] == [m.name for m in expected]
        assert _seen(quick[first] & quick[second]) == _seen(usual[first] & usual[second])
        assert _seen(quick[first] ^ quick[second]) == _seen(usual[first] ^ usual[second])
        assert _seen(~combined) == _seen(~expected)
    every = 0
    for member in quick:
        every |= member.value
    for value in (0, every, every | 1 << 30, 1 << 30, -1):
        assert _seen(quick(value)) == _seen(usual(value))


def test_the_bases_answer_isinstance_as_their_kind() -> None:
    from virtvol.protocol.constants import ListPoolsFlags, MessageType
    from virtvol.protocol.stream import Side

    assert isinstance(MessageType.CALL, enums.IntEnum)
    assert issubclass(MessageType, enums.IntEnum)
    assert isinstance(ListPoolsFlags.ACTIVE, enums.IntFlag)
    assert isinstance(Side.CLIENT, enums.Enum)
    assert not isinstance(Side.CLIENT, enums.IntEnum)
    assert not isinstance(1, enums.IntEnum)


def test_what_the_quick_way_cannot_make_is_refused() -> None:
    with pytest.raises(TypeError, match="one base and no class keywords"):
        types.new_class(
            "Bounded", (enums.IntFlag,), {"boundary": enum.STRICT}, lambda ns: ns.update(A=1)
        )
    with pytest.raises(TypeError, match="one base and no class keywords"):
        types.new_class("Mixed", (enums.Enum, enums.IntEnum), {}, lambda ns: ns.update(A=1))
