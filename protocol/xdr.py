"""A typed XDR codec (RFC 4506) for the structs of libvirt's RPC protocol.

Structs are frozen records (``virtvol.protocol.record``) deriving from
``XdrStruct`` whose fields carry their XDR type in ``Annotated`` metadata::

    class StoragePool(XdrStruct):
        name: Annotated[str, String(REMOTE_STRING_MAX)]
        uuid: Annotated[bytes, FixedOpaque(16)]

A field whose type is itself an ``XdrStruct`` needs no annotation. Each class
is compiled once, on first use, into a list of field codecs.

Decoding never trusts the peer: every length is checked against the declared
maximum and against the bytes that are left *before* anything is allocated,
errors name the path of the field that failed, and trailing bytes are an
error. Encoding refuses what does not fit its XDR type rather than wrapping it.
"""

from __future__ import annotations

import enum
import struct
import sys

from virtvol.protocol.exceptions import XdrDecodeError, XdrEncodeError
from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record

if TYPE_CHECKING:
    from typing import Any, ClassVar, Self

_INT = struct.Struct(">i")
_UINT = struct.Struct(">I")
_HYPER = struct.Struct(">q")
_UHYPER = struct.Struct(">Q")


class Reader:
    """A cursor over bytes being decoded, with bounds checked on every read.

    With ``c_strings``, strings end at their first NUL byte, as libvirtd's C code
    reads every string it decodes: what follows a NUL never reaches a lookup, a
    message or a file name.
    """

    __slots__ = ("_data", "_pos", "c_strings")

    def __init__(self, data: bytes | bytearray | memoryview, *, c_strings: bool = False) -> None:
        self._data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._pos = 0
        self.c_strings = c_strings

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, size: int, path: str) -> int:
        if size > self.remaining:
            raise XdrDecodeError(path, f"needs {size} bytes, only {self.remaining} left")
        start = self._pos
        self._pos += size
        return start

    def int32(self, path: str) -> int:
        value: int = _INT.unpack_from(self._data, self._take(4, path))[0]
        return value

    def uint32(self, path: str) -> int:
        value: int = _UINT.unpack_from(self._data, self._take(4, path))[0]
        return value

    def int64(self, path: str) -> int:
        value: int = _HYPER.unpack_from(self._data, self._take(8, path))[0]
        return value

    def uint64(self, path: str) -> int:
        value: int = _UHYPER.unpack_from(self._data, self._take(8, path))[0]
        return value

    def fixed(self, size: int, path: str) -> bytes:
        padded = size + (-size % 4)
        start = self._take(padded, path)
        padding = bytes(self._data[start + size : start + padded])
        if padding.strip(b"\0"):
            raise XdrDecodeError(path, "non-zero padding")
        return bytes(self._data[start : start + size])

    def variable(self, maximum: int, path: str) -> bytes:
        size = self.uint32(path)
        if size > maximum:
            raise XdrDecodeError(path, f"length {size} exceeds the maximum {maximum}")
        return self.fixed(size, path)

    def expect_end(self, path: str) -> None:
        if self.remaining:
            raise XdrDecodeError(path, f"{self.remaining} trailing bytes")


class Writer:
    """Bytes being encoded. A value out of range raises ``struct.error``."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def int32(self, value: int) -> None:
        self._buffer += _INT.pack(value)

    def uint32(self, value: int) -> None:
        self._buffer += _UINT.pack(value)

    def int64(self, value: int) -> None:
        self._buffer += _HYPER.pack(value)

    def uint64(self, value: int) -> None:
        self._buffer += _UHYPER.pack(value)

    def fixed(self, data: bytes) -> None:
        """``data`` and the zero bytes that pad it to a multiple of four."""
        self._buffer += data
        self._buffer += bytes(-len(data) % 4)

    def variable(self, data: bytes) -> None:
        """The length of ``data``, then ``data`` padded."""
        self._buffer += _UINT.pack(len(data))
        self.fixed(data)

    def getvalue(self) -> bytes:
        return bytes(self._buffer)


class Codec:
    """How one XDR type is written and read."""

    def pack(self, writer: Writer, value: Any) -> None:
        raise NotImplementedError

    def unpack(self, reader: Reader, path: str) -> Any:
        raise NotImplementedError

    def min_size(self) -> int:
        """The fewest bytes an encoded value takes (used to bound array counts)."""
        return 4


class Int(Codec):
    """``int``: signed 32-bit."""

    def pack(self, writer: Writer, value: Any) -> None:
        writer.int32(value)

    def unpack(self, reader: Reader, path: str) -> Any:
        return reader.int32(path)


class UInt(Codec):
    """``unsigned int``: unsigned 32-bit."""

    def pack(self, writer: Writer, value: Any) -> None:
        writer.uint32(value)

    def unpack(self, reader: Reader, path: str) -> Any:
        return reader.uint32(path)


class Hyper(Codec):
    """``hyper``: signed 64-bit."""

    def pack(self, writer: Writer, value: Any) -> None:
        if not -(1 << 63) <= value < 1 << 63:
            raise XdrEncodeError("", f"{value} is out of range for a hyper")
        writer.int64(value)

    def unpack(self, reader: Reader, path: str) -> Any:
        return reader.int64(path)

    def min_size(self) -> int:
        return 8


class UHyper(Codec):
    """``unsigned hyper``: unsigned 64-bit."""

    def pack(self, writer: Writer, value: Any) -> None:
        if not 0 <= value < 1 << 64:
            raise XdrEncodeError("", f"{value} is out of range for an unsigned hyper")
        writer.uint64(value)

    def unpack(self, reader: Reader, path: str) -> Any:
        return reader.uint64(path)

    def min_size(self) -> int:
        return 8


class Bool(Codec):
    """``bool``: 0 or 1 in 32 bits; anything else is a decoding error."""

    def pack(self, writer: Writer, value: Any) -> None:
        writer.uint32(1 if value else 0)

    def unpack(self, reader: Reader, path: str) -> Any:
        raw = reader.uint32(path)
        if raw > 1:
            raise XdrDecodeError(path, f"boolean value {raw}")
        return raw == 1


class Enum(Record, Codec):
    """``enum``: a signed 32-bit value that must be one of ``enum_type``'s members."""

    enum_type: type[enum.IntEnum]

    def pack(self, writer: Writer, value: Any) -> None:
        writer.int32(int(value))

    def unpack(self, reader: Reader, path: str) -> Any:
        raw = reader.int32(path)
        try:
            return self.enum_type(raw)
        except ValueError:
            raise XdrDecodeError(path, f"{raw} is not a valid {self.enum_type.__name__}") from None


class String(Record, Codec):
    """``string<maximum>``: length, bytes, padding. Decoded as UTF-8.

    Bytes that are not UTF-8 survive a round trip through ``surrogateescape``.
    """

    maximum: int

    def pack(self, writer: Writer, value: Any) -> None:
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as error:
            raise XdrEncodeError("", f"string cannot be encoded: {error.reason}") from None
        if len(raw) > self.maximum:
            raise XdrEncodeError(
                "", f"string of {len(raw)} bytes exceeds the maximum {self.maximum}"
            )
        writer.variable(raw)

    def unpack(self, reader: Reader, path: str) -> Any:
        raw = reader.variable(self.maximum, path)
        if reader.c_strings:
            raw = raw.partition(b"\0")[0]
        return raw.decode("utf-8", "surrogateescape")


class Opaque(Record, Codec):
    """``opaque<maximum>``: variable-length bytes."""

    maximum: int

    def pack(self, writer: Writer, value: Any) -> None:
        if len(value) > self.maximum:
            raise XdrEncodeError(
                "", f"opaque of {len(value)} bytes exceeds the maximum {self.maximum}"
            )
        writer.variable(bytes(value))

    def unpack(self, reader: Reader, path: str) -> Any:
        return reader.variable(self.maximum, path)


class FixedOpaque(Record, Codec):
    """``opaque[size]``: exactly ``size`` bytes (a UUID is ``FixedOpaque(16)``)."""

    size: int

    def pack(self, writer: Writer, value: Any) -> None:
        if len(value) != self.size:
            raise XdrEncodeError("", f"fixed opaque needs {self.size} bytes, got {len(value)}")
        writer.fixed(bytes(value))

    def unpack(self, reader: Reader, path: str) -> Any:
        return reader.fixed(self.size, path)

    def min_size(self) -> int:
        return self.size + (-self.size % 4)


class Optional(Record, Codec):
    """``T *``: a boolean presence flag, then the value when present."""

    inner: Codec

    def pack(self, writer: Writer, value: Any) -> None:
        if value is None:
            writer.uint32(0)
        else:
            writer.uint32(1)
            self.inner.pack(writer, value)

    def unpack(self, reader: Reader, path: str) -> Any:
        present = reader.uint32(path)
        if present > 1:
            raise XdrDecodeError(path, f"optional presence flag {present}")
        return self.inner.unpack(reader, path) if present else None


class Array(Record, Codec):
    """``T name<maximum>``: a count, then the elements. Decoded as a tuple."""

    inner: Codec
    maximum: int

    def pack(self, writer: Writer, value: Any) -> None:
        if len(value) > self.maximum:
            raise XdrEncodeError("", f"array of {len(value)} exceeds the maximum {self.maximum}")
        writer.uint32(len(value))
        for item in value:
            self.inner.pack(writer, item)

    def unpack(self, reader: Reader, path: str) -> Any:
        count = reader.uint32(path)
        if count > self.maximum:
            raise XdrDecodeError(path, f"array count {count} exceeds the maximum {self.maximum}")
        # Refuse a count the remaining bytes cannot hold before building anything.
        if count * self.inner.min_size() > reader.remaining:
            raise XdrDecodeError(
                path, f"array count {count} does not fit in {reader.remaining} bytes"
            )
        return tuple(self.inner.unpack(reader, f"{path}[{index}]") for index in range(count))


class Struct(Record, Codec):
    """A nested ``XdrStruct``."""

    struct_type: type[XdrStruct]

    def pack(self, writer: Writer, value: Any) -> None:
        value.pack(writer)

    def unpack(self, reader: Reader, path: str) -> Any:
        return self.struct_type.unpack(reader, path)

    def min_size(self) -> int:
        return sum(codec.min_size() for _, codec in self.struct_type.fields())


_Field = tuple[str, Codec]


class XdrStruct(Record):
    """Base of every XDR struct: subclasses are frozen records with annotated fields."""

    __slots__ = ()
    if TYPE_CHECKING:
        # Set on each struct class by ``fields``. Declared for the type checker only,
        # so that ``typing.get_type_hints`` on a struct sees nothing but its fields.
        _xdr_fields: ClassVar[tuple[_Field, ...] | None]

    @classmethod
    def fields(cls) -> tuple[_Field, ...]:
        """The (name, codec) pairs of the struct, compiled once per class."""
        compiled = cls.__dict__.get("_xdr_fields")
        if compiled is None:
            compiled = tuple(_compile_fields(cls))
            type.__setattr__(cls, "_xdr_fields", compiled)
        return compiled

    @classmethod
    def codec(cls) -> Struct:
        """This struct as a codec, to nest it inside ``Optional`` or ``Array``."""
        return Struct(cls)

    def pack(self, writer: Writer) -> None:
        for name, codec in self.fields():
            try:
                codec.pack(writer, getattr(self, name))
            except XdrEncodeError as error:
                inner = f" ({error.path})" if error.path else ""
                raise XdrEncodeError(f"{type(self).__name__}.{name}{inner}", error.reason) from None
            except (struct.error, TypeError, AttributeError) as error:
                raise XdrEncodeError(f"{type(self).__name__}.{name}", str(error)) from None

    @classmethod
    def unpack(cls, reader: Reader, path: str = "") -> Self:
        prefix = path or cls.__name__
        # By position, in field order: the cheapest way to build a record.
        return cls(*[codec.unpack(reader, f"{prefix}.{name}") for name, codec in cls.fields()])

    def encode(self) -> bytes:
        """The XDR bytes of this value."""
        writer = Writer()
        self.pack(writer)
        return writer.getvalue()

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, *, c_strings: bool = False) -> Self:
        """Decode exactly one value from ``data``; trailing bytes are an error.
        ``c_strings``: cut strings at their first NUL (``Reader``)."""
        reader = Reader(data, c_strings=c_strings)
        value = cls.unpack(reader)
        reader.expect_end(cls.__name__)
        return value


def _compile_fields(cls: type[XdrStruct]) -> list[_Field]:
    hints = _field_hints(cls)
    return [(field, _codec_for(hints[field], cls)) for field in cls._record_fields]


def _field_hints(cls: type[XdrStruct]) -> dict[str, object]:
    """The annotation of each field, as ``typing.get_type_hints`` gives it.

    A field annotated with a name defined in its class's module (the REMOTE structs
    use ``Annotated`` aliases and struct names only) is looked up there, which needs
    no typing at run time (see ``virtvol.protocol.hints``). Any other annotation is
    evaluated by typing, as ``get_type_hints`` would (the module's names first).
    """
    fields = set(cls._record_fields)
    hints: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        declared = vars(klass).get("__annotations__", {})
        # As typing does: a class whose module is gone resolves against no names.
        module_names = getattr(sys.modules.get(klass.__module__), "__dict__", {})
        own = {field: hint for field, hint in declared.items() if field in fields}
        for field, hint in own.items():
            if isinstance(hint, str):
                if hint.isidentifier() and hint in module_names:
                    hint = module_names[hint]
                else:
                    hints.update(_evaluated(klass, own, module_names))
                    break
            hints[field] = hint
    return hints


def _evaluated(
    klass: type, annotations: dict[str, object], module_names: dict[str, object]
) -> dict[str, object]:
    """``annotations`` of ``klass`` evaluated by typing, the module's names before the
    class's own (the order ``typing.get_type_hints`` gives a class)."""
    import typing

    evaluated: dict[str, object] = typing.get_type_hints(
        _Annotated(annotations), dict(vars(klass)), module_names, include_extras=True
    )
    return evaluated


class _Annotated:
    """Something with annotations, for ``typing.get_type_hints``."""

    def __init__(self, annotations: dict[str, object]) -> None:
        self.__annotations__ = annotations


def _codec_for(hint: Any, owner: type) -> Codec:
    # ``Annotated[...]``, typing's or ``virtvol.protocol.hints``': the XDR type is in
    # the metadata.
    metadata = getattr(hint, "__metadata__", None)
    if metadata is not None:
        for extra in metadata:
            if isinstance(extra, Codec):
                return extra
        hint = hint.__origin__
    if isinstance(hint, type) and issubclass(hint, XdrStruct):
        return Struct(hint)
    raise TypeError(f"{owner.__name__}: no XDR type for {hint!r}")


def encode_value(codec: Codec, value: Any) -> bytes:
    """Encode a bare value (not a struct) with ``codec``."""
    writer = Writer()
    try:
        codec.pack(writer, value)
    except (struct.error, TypeError, AttributeError) as error:
        raise XdrEncodeError("", str(error)) from None
    return writer.getvalue()


def decode_value(codec: Codec, data: bytes | bytearray | memoryview, path: str = "value") -> Any:
    """Decode exactly one bare value with ``codec``."""
    reader = Reader(data)
    value = codec.unpack(reader, path)
    reader.expect_end(path)
    return value
