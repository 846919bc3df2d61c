"""``Enum``, ``IntEnum`` and ``IntFlag`` for the protocol's enum classes, made quickly.

Making an enum class the usual way checks each member as it is added (~9 us a
member on this project's machines); the protocol's enums hold over 300 members, so
that was ~3 ms of every command, the largest single part of importing the
protocol. Classes that derive from the bases here are made instead by the
constructor the standard library uses for its own enums (``enum._simple_enum``),
which skips those checks, and each member is then put in the class's namespace,
where the usual way puts it (a member is read as a plain attribute, not through a
descriptor). The result is an ordinary ``enum.IntEnum`` (``Enum``, ``IntFlag``)
subclass: ``tests/protocol/test_enums.py`` holds every protocol enum to one made
the usual way from the same members.

What the quick way does not do, so the classes here must not need it: refuse a
duplicate name, ``_missing_``/``_generate_next_value_`` overrides,
``__init_subclass__``, ``enum.unique``. On a Python without that constructor the
usual classes are used.

Type checkers see the ``enum`` module's classes themselves.
"""

from __future__ import annotations

import enum

from virtvol.protocol.hints import TYPE_CHECKING

__all__ = ["Enum", "IntEnum", "IntFlag"]

if TYPE_CHECKING or not hasattr(enum, "_simple_enum"):
    from enum import Enum, IntEnum, IntFlag
else:

    class _QuickEnumType(type):
        """Makes each class stated with a base of this module an enum of that base's
        kind (``_kind``), through ``enum._simple_enum``."""

        def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, object]) -> type:
            if not bases:  # one of this module's bases itself
                return super().__new__(mcls, name, bases, namespace)
            (base,) = bases
            body = type(name, (), namespace)
            made: type[enum.Enum] = enum._simple_enum(base._kind)(body)
            for member_name, member in made._member_map_.items():
                type.__setattr__(made, member_name, member)
            return made

    class Enum(metaclass=_QuickEnumType):
        _kind = enum.Enum

    class IntEnum(metaclass=_QuickEnumType):
        _kind = enum.IntEnum

    class IntFlag(metaclass=_QuickEnumType):
        _kind = enum.IntFlag
