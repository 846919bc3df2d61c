"""The protocol's enums, made the quick way (``protocol/enums.py``), against the same
members made the usual way: every behaviour a caller can see must be the same."""

from __future__ import annotations

import enum
import importlib
import itertools
import pickle
import pkgutil
from typing import Any

import pytest

import virtvol.protocol
from virtvol.protocol import enums


def _protocol_enums() -> list[type[enum.Enum]]:
    found: list[type[enum.Enum]] = []
    for info in pkgutil.iter_modules(virtvol.protocol.__path__):
        module = importlib.import_module(f"virtvol.protocol.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, enum.Enum)
                and value.__module__ == module.__name__
                and value not in found
            ):
                found.append(value)
    return found


PROTOCOL_ENUMS = _protocol_enums()


def _kind(cls: type[enum.Enum]) -> type[enum.Enum]:
    return next(k for k in (enum.IntFlag, enum.IntEnum, enum.Enum) if issubclass(cls, k))


def _made_the_usual_way(cls: type[enum.Enum]) -> Any:
    """The same members, aliases included and in the same order, through the usual
    class machinery."""
    kind: Any = _kind(cls)
    return kind(cls.__name__, [(name, m.value) for name, m in cls.__members__.items()])


def _lookup(cls: Any, value: object) -> str:
    try:
        return repr(cls(value))
    except ValueError as exc:
        return f"ValueError: {exc}".replace(cls.__qualname__, "<enum>")


def _seen(member: Any) -> tuple[str, str, str, object]:
    return (repr(member), str(member), format(member), member.value)


def test_every_protocol_enum_is_made_the_quick_way() -> None:
    # The quick way is in use on this Python; without it the usual classes serve.
    assert hasattr(enum, "_simple_enum")
    assert enums.IntEnum is not enum.IntEnum
    assert len(PROTOCOL_ENUMS) >= 20
    for cls in PROTOCOL_ENUMS:
        assert issubclass(cls, _kind(cls)), cls
        assert type(cls) is enum.EnumType, cls


@pytest.mark.parametrize("cls", PROTOCOL_ENUMS, ids=lambda c: c.__name__)
def test_members_read_as_the_usual_ones(cls: Any) -> None:
    usual = _made_the_usual_way(cls)
    assert list(cls.__members__) == list(usual.__members__)
    assert [m.name for m in cls] == [m.name for m in usual]
    assert len(cls) == len(usual)
    for name, member in cls.__members__.items():
        assert _seen(member) == _seen(usual[name]), name
        assert getattr(cls, name) is member
        # Read as a plain attribute, as the usual way stores it, not through a descriptor.
        assert cls.__dict__[name] is member
        assert cls(member.value) is member
        assert cls[name] is member
        assert member in cls
        assert pickle.loads(pickle.dumps(member)) is member
        if issubclass(cls, int):
            assert int(member) == member.value
            assert hash(member) == hash(member.value)
    for stranger in (123456, -7, "no such value"):
        assert _lookup(cls, stranger) == _lookup(usual, stranger)


@pytest.mark.parametrize(
    "cls", [c for c in PROTOCOL_ENUMS if issubclass(c, enum.Flag)], ids=lambda c: c.__name__
)
def test_flags_combine_as_the_usual_ones(cls: Any) -> None:
    usual = _made_the_usual_way(cls)
    names = list(cls.__members__)
    for first, second in itertools.product(names, repeat=2):
        combined = cls[first] | cls[second]
        expected = usual[first] | usual[second]
        assert _seen(combined) == _seen(expected)
        assert [m.name for m in combined] == [m.name for m in expected]
        assert _seen(cls[first] & cls[second]) == _seen(usual[first] & usual[second])
        assert _seen(cls[first] ^ cls[second]) == _seen(usual[first] ^ usual[second])
        assert _seen(~combined) == _seen(~expected)
    every = 0
    for member in cls:
        every |= member.value
    for value in (0, every, every | 1 << 30, 1 << 30):
        assert _seen(cls(value)) == _seen(usual(value))
