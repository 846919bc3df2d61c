"""What the code needs of ``typing`` at run time, without importing ``typing``.

``typing`` and the ``re`` it imports are ~4 ms of every ``virtvol`` command's
start-up, which is most of what a short command does. The modules a command
runs through therefore read ``TYPE_CHECKING`` from here and import ``typing``'s
names inside ``if TYPE_CHECKING:``; the few names that are also used at run time
come from here in the ``else:`` branch, doing at run time what ``typing``'s
do (nothing, or keeping an annotation's metadata)::

    from virtvol.protocol.hints import TYPE_CHECKING

    if TYPE_CHECKING:
        from typing import Annotated, Generic, TypeVar
    else:
        from virtvol.protocol.hints import Annotated, Generic, TypeVar

Type checkers read the ``if`` branch only (they take any name ``TYPE_CHECKING``
to be true), so the types are ``typing``'s own.
"""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class AnnotatedHint:
    """``Annotated[origin, *metadata]``: the attributes a real one has, and no more."""

    __slots__ = ("__metadata__", "__origin__")

    def __init__(self, origin: object, metadata: tuple[object, ...]) -> None:
        self.__origin__ = origin
        self.__metadata__ = metadata

    def __repr__(self) -> str:
        extras = ", ".join(repr(extra) for extra in self.__metadata__)
        return f"Annotated[{self.__origin__!r}, {extras}]"


class Annotated:
    """Subscripted like ``typing.Annotated``; gives an ``AnnotatedHint``."""

    __slots__ = ()

    def __class_getitem__(cls, params: object) -> AnnotatedHint:
        if not isinstance(params, tuple) or len(params) < 2:
            raise TypeError("Annotated[...] takes a type and at least one annotation")
        return AnnotatedHint(params[0], params[1:])


class Generic:
    """A base that may be subscripted, as ``Generic[T]``, and adds nothing."""

    __slots__ = ()

    def __class_getitem__(cls, params: object) -> type:
        return cls


def TypeVar(name: str, *constraints: object, **options: object) -> str:
    """A type variable is only a name at run time."""
    return name


def overload(function: Callable[..., Any]) -> Callable[..., Any]:
    """The signature the type checker reads; the undecorated definition after it wins."""
    return function


def dataclass_transform(**options: object) -> Callable[[type], type]:
    """Marks a class for the type checker only."""
    return lambda cls: cls


def cast(kind: object, value: object) -> object:
    """The value as it is; the type is the checker's business."""
    return value
