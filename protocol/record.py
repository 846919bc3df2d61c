"""Frozen, slotted value classes that cost next to nothing to declare.

A ``Record`` subclass declares its fields as annotations, like a frozen dataclass
with slots::

    class Header(Record):
        serial: int
        status: int = 0

and gets the same behaviour: construction by position or keyword (defaults
after the fields without one), ``__slots__`` and no ``__dict__``, assignment
refused, equality and hashing by the tuple of the field values (only between
instances of the very same class), a repr naming each field, ``__match_args__``,
and pickling and copying. Type checkers see it as a frozen dataclass
(``dataclass_transform``).

Why not ``dataclasses``: a frozen slotted dataclass compiles half a dozen methods
from source text and builds its class twice, which made importing the protocol
package's hundred-odd value classes the bulk of ``virtvol``'s start-up. Here the
metaclass only reads the annotations: ``__init__``, ``__eq__`` and ``__hash__`` are
closures over a few tuples computed once per class, the rest is shared, and
nothing is compiled. Construction by position, as the per-frame events are built,
costs what a dataclass's generated ``__init__`` costs.
"""

from __future__ import annotations

import operator
import sys

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    import inspect
    from collections.abc import Callable
    from typing import Any, dataclass_transform

    # How a value goes into one slot: the ``__set__`` of the slot's descriptor.
    Setter = Callable[[Any, Any], None]
else:
    from virtvol.protocol.hints import dataclass_transform


def _is_class_variable(annotation: object) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    # An annotation object that is a ClassVar comes from a module that imported
    # typing: when nothing has, there is none (and typing is not imported for it).
    typing = sys.modules.get("typing")
    if typing is None:
        return False
    class_var = typing.ClassVar
    return annotation is class_var or getattr(annotation, "__origin__", None) is class_var


def _values_getter(fields: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function returning the field values of a record as a tuple."""
    if len(fields) == 1:
        get_one = operator.attrgetter(fields[0])
        return lambda record: (get_one(record),)
    if fields:
        return operator.attrgetter(*fields)
    return lambda record: ()


def _items_getter(fields: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function returning the values of ``fields`` in a mapping, in order (KeyError if absent)."""
    if len(fields) == 1:
        get_one = operator.itemgetter(fields[0])
        return lambda given: (get_one(given),)
    if fields:
        return operator.itemgetter(*fields)
    return lambda given: ()


def _make_init(
    qualname: str, fields: tuple[str, ...], setters: tuple[Setter, ...], defaults: dict[str, Any]
) -> Callable[..., None]:
    """The ``__init__`` of one record class: a value per field by position is the fast path."""
    count = len(fields)
    pick = _items_getter(fields)
    # The defaults of the trailing fields, for a call that gives fewer values by position.
    tail = tuple(defaults[field] for field in fields if field in defaults)

    def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """The field values of any other call, in order (TypeError as for a function)."""
        if kwargs:
            if not args:
                given = {**defaults, **kwargs} if defaults else kwargs
                if len(given) == count:
                    try:
                        return pick(given)
                    except KeyError:
                        pass  # an unknown keyword in place of a missing one
        elif 0 < count - len(args) <= len(tail):
            return args + tail[len(args) - count :]
        return _checked_arguments(qualname, fields, defaults, args, kwargs)

    # Unrolled up to six fields (the per-frame events and the frame header): a loop
    # over the setters costs a third more. Beyond six, the loop.
    if count == 0:

        def init_0(self: Any, *args: Any, **kwargs: Any) -> None:
            if args or kwargs:
                arguments(args, kwargs)

        return init_0
    if count == 1:
        (set_a,) = setters

        def init_1(self: Any, *args: Any, **kwargs: Any) -> None:
            if kwargs or len(args) != 1:
                args = arguments(args, kwargs)
            set_a(self, args[0])

        return init_1
    if count == 2:
        set_a, set_b = setters

        def init_2(self: Any, *args: Any, **kwargs: Any) -> None:
            if kwargs or len(args) != 2:
                args = arguments(args, kwargs)
            a, b = args
            set_a(self, a)
            set_b(self, b)

        return init_2
    if count == 3:
        set_a, set_b, set_c = setters

        def init_3(self: Any, *args: Any, **kwargs: Any) -> None:
            if kwargs or len(args) != 3:
                args = arguments(args, kwargs)
            a, b, c = args
            set_a(self, a)
            set_b(self, b)
            set_c(self, c)

        return init_3
    if count == 4:
        set_a, set_b, set_c, set_d = setters

        def init_4(self: Any, *args: Any, **kwargs: Any) -> None:
            if kwargs or len(args) != 4:
                args = arguments(args, kwargs)
            a, b, c, d = args
            set_a(self, a)
            set_b(self, b)
            set_c(self, c)
            set_d(self, d)

        return init_4
    if count == 5:
        set_a, set_b, set_c, set_d, set_e = setters

        def init_5(self: Any, *args: Any, **kwargs: Any) -> None:
            if kwargs or len(args) != 5:
                args = arguments(args, kwargs)
            a, b, c, d, e = args
            set_a(self, a)
            set_b(self, b)
            set_c(self, c)
            set_d(self, d)
            set_e(self, e)

        return init_5
    if count == 6:
        set_a, set_b, set_c, set_d, set_e, set_f = setters

        def init_6(self: Any, *args: Any, **kwargs: Any) -> None:
            if kwargs or len(args) != 6:
                args = arguments(args, kwargs)
            a, b, c, d, e, f = args
            set_a(self, a)
            set_b(self, b)
            set_c(self, c)
            set_d(self, d)
            set_e(self, e)
            set_f(self, f)

        return init_6

    def init_n(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs or len(args) != count:
            args = arguments(args, kwargs)
        for setter, value in zip(setters, args, strict=False):  # equal lengths
            setter(self, value)

    return init_n


def _make_eq_and_hash(
    values: Callable[[Any], tuple[Any, ...]],
) -> tuple[Callable[[Any, object], bool], Callable[[Any], int]]:
    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return values(self) == values(other)

    def __hash__(self: Any) -> int:
        return hash(values(self))

    return __eq__, __hash__


def _first_init(cls: _RecordMeta) -> Callable[..., None]:
    """The ``__init__`` a record class starts with: it makes the class's own on the first
    construction, puts it in place and runs it. Most classes a command imports are
    never built (a ``pool-list`` builds a dozen of the protocol's hundred-odd), and
    making each one's ``__init__`` was a tenth of their declaration."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init = _class_init(cls)
        type.__setattr__(cls, "__init__", init)
        init(self, *args, **kwargs)

    return __init__


def _class_init(cls: _RecordMeta) -> Callable[..., None]:
    fields = cls._record_fields
    setters = tuple(getattr(cls, field).__set__ for field in fields)
    return _make_init(cls.__qualname__, fields, setters, cls._record_defaults)


class _RecordMeta(type):
    """Turns the annotations of a class body into slots and the methods that use them."""

    if TYPE_CHECKING:
        # Set on each record class by ``__new__``; declared here, for the type checker
        # only, so that ``typing.get_type_hints`` on a record sees nothing but its fields.
        _record_fields: tuple[str, ...]
        _record_defaults: dict[str, Any]
        _record_values: Callable[[Any], tuple[Any, ...]]

    def __new__(
        mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any
    ) -> _RecordMeta:
        annotations = namespace.get("__annotations__", {})
        own = tuple(field for field, hint in annotations.items() if not _is_class_variable(hint))
        # A slot and a class attribute cannot share a name: defaults move aside.
        own_defaults = {field: namespace.pop(field) for field in own if field in namespace}
        namespace["__slots__"] = own
        inherited: tuple[str, ...] = ()
        defaults: dict[str, Any] = {}
        for base in reversed(bases):
            inherited += tuple(f for f in getattr(base, "_record_fields", ()) if f not in inherited)
            defaults.update(getattr(base, "_record_defaults", {}))
        fields = inherited + tuple(field for field in own if field not in inherited)
        defaults.update(own_defaults)
        for field, default in defaults.items():
            if type(default).__hash__ is None:
                raise ValueError(f"{name}.{field}: mutable default {type(default).__name__}")
        with_default = [field in defaults for field in fields]
        if with_default != sorted(with_default):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        values = _values_getter(fields)
        eq, hash_ = _make_eq_and_hash(values)
        namespace.setdefault("__eq__", eq)
        namespace.setdefault("__hash__", hash_)
        namespace["__match_args__"] = fields
        namespace["_record_fields"] = fields
        namespace["_record_defaults"] = defaults
        namespace["_record_values"] = staticmethod(values)
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        if "__init__" not in namespace:
            type.__setattr__(cls, "__init__", _first_init(cls))
        return cls

    @property
    def __signature__(cls) -> inspect.Signature:
        """The constructor's signature, for ``help()`` and ``inspect`` (built on demand)."""
        import inspect

        defaults = cls._record_defaults
        empty = inspect.Parameter.empty
        return inspect.Signature(
            [
                inspect.Parameter(
                    field,
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    default=defaults.get(field, empty),
                )
                for field in cls._record_fields
            ]
        )


@dataclass_transform(frozen_default=True)
class Record(metaclass=_RecordMeta):
    """Base of the frozen value classes: see the module's description."""

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def __repr__(self) -> str:
        cls = self.__class__
        values = ", ".join(f"{field}={getattr(self, field)!r}" for field in cls._record_fields)
        return f"{cls.__qualname__}({values})"

    def __reduce__(self) -> tuple[type[Record], tuple[Any, ...]]:
        # The default protocol would restore the slots by assignment, which is refused.
        return self.__class__, self.__class__._record_values(self)


def _checked_arguments(
    qualname: str,
    fields: tuple[str, ...],
    defaults: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[Any, ...]:
    """The field values of a call mixing positions and keywords, or the error of a bad call."""
    if len(args) > len(fields):
        raise TypeError(
            f"{qualname}() takes {len(fields)} positional arguments but {len(args)} were given"
        )
    values = dict(zip(fields, args, strict=False))
    for field, value in kwargs.items():
        if field not in fields:
            raise TypeError(f"{qualname}() got an unexpected keyword argument {field!r}")
        if field in values:
            raise TypeError(f"{qualname}() got multiple values for argument {field!r}")
        values[field] = value
    missing = [field for field in fields if field not in values and field not in defaults]
    if missing:
        raise TypeError(
            f"{qualname}() missing {len(missing)} required argument(s): "
            + ", ".join(repr(field) for field in missing)
        )
    return tuple(values[field] if field in values else defaults[field] for field in fields)
