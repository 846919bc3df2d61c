"""``Enum``, ``IntEnum`` and ``IntFlag`` for the protocol's enum classes, made quickly.

Making an enum class the usual way checks each member as it is added (~9 us a
member on this project's machines); the protocol's enums hold over 300 members, so
that was ~3 ms of every command, the largest single part of importing the
protocol. Classes that derive from the bases here are made instead by the
constructor the standard library uses for its own enums (``enum._simple_enum``),
which skips those checks. Each member is then put in the class's namespace, where
the usual way puts it (a member is read as a plain attribute, not through a
descriptor), and the docstring is the class's own (None without one), as the
usual way leaves it. The result is an ``enum.Enum`` (``IntEnum``, ``IntFlag``)
subclass like one made the usual way: ``tests/protocol/test_enums.py`` holds every
protocol enum to the same module run with the ``enum`` module's classes.

What the quick way does not do, so a class here must do without it: class keywords
(``boundary=``) and a second base; ``_order_`` and ``_ignore_``; ``auto()`` in a
flag; members named ``name`` or ``value``; nested classes; zero-argument ``super()``
or ``__class__`` in a method. Type checkers see the ``enum`` module's classes.
``enum._simple_enum`` is private, though present in every Python this project supports
(3.11 and later); the test would tell a change in it.
"""

from __future__ import annotations

import enum

from virtvol.protocol.hints import TYPE_CHECKING

__all__ = ["Enum", "IntEnum", "IntFlag"]

if TYPE_CHECKING:
    from enum import Enum, IntEnum, IntFlag
else:

    class _QuickEnumType(type):
        """Makes each class stated with one of this module's bases an enum of that
        base's kind (``_kind``), through ``enum._simple_enum``; the bases themselves
        answer ``isinstance`` and ``issubclass`` as their kind does."""

        def __new__(
            mcls,
            name: str,
            bases: tuple[type, ...],
            namespace: dict[str, object],
            **keywords: object,
        ) -> type:
            if not bases:  # one of this module's bases itself
                return super().__new__(mcls, name, bases, namespace)
            if keywords or len(bases) != 1:
                raise TypeError(f"{name}: a quickly made enum takes one base and no class keywords")
            body = type(name, (), namespace)
            made: type[enum.Enum] = enum._simple_enum(bases[0]._kind)(body)
            for member_name, member in made._member_map_.items():
                type.__setattr__(made, member_name, member)
            type.__setattr__(made, "__doc__", namespace.get("__doc__"))
            return made

        def __instancecheck__(cls, instance: object) -> bool:
            return isinstance(instance, cls._kind)

        def __subclasscheck__(cls, subclass: type) -> bool:
            return issubclass(subclass, cls._kind)

    class Enum(metaclass=_QuickEnumType):
        _kind = enum.Enum

    class IntEnum(metaclass=_QuickEnumType):
        _kind = enum.IntEnum

    class IntFlag(metaclass=_QuickEnumType):
        _kind = enum.IntFlag
