"""virtvol's XDR writer against an independent encoder, xdrlib3's packer, on every struct."""

from __future__ import annotations

from typing import Any

import pytest
import xdrlib3
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol.conftest import struct_strategy
from tests.protocol.test_xdr import STRUCTS
from virtvol.protocol.exceptions import XdrEncodeError
from virtvol.protocol.xdr import (
    Array,
    Bool,
    Codec,
    Enum,
    FixedOpaque,
    Hyper,
    Int,
    Opaque,
    Optional,
    String,
    Struct,
    UHyper,
    UInt,
    XdrStruct,
    encode_value,
)


def pack_reference(packer: xdrlib3.Packer, codec: Codec, value: Any) -> None:
    """``value`` written by xdrlib3, walking the same XDR declaration."""
    if isinstance(codec, Int | Enum):
        packer.pack_int(int(value))
    elif isinstance(codec, UInt):
        packer.pack_uint(value)
    elif isinstance(codec, Hyper):
        packer.pack_hyper(value)
    elif isinstance(codec, UHyper):
        packer.pack_uhyper(value)
    elif isinstance(codec, Bool):
        packer.pack_bool(value)
    elif isinstance(codec, String):
        packer.pack_string(value.encode("utf-8", "surrogateescape"))
    elif isinstance(codec, Opaque):
        packer.pack_opaque(value)
    elif isinstance(codec, FixedOpaque):
        packer.pack_fopaque(codec.size, value)
    elif isinstance(codec, Optional):
        packer.pack_uint(value is not None)
        if value is not None:
            pack_reference(packer, codec.inner, value)
    elif isinstance(codec, Array):
        packer.pack_uint(len(value))
        for item in value:
            pack_reference(packer, codec.inner, item)
    elif isinstance(codec, Struct):
        for name, field in codec.struct_type.fields():
            pack_reference(packer, field, getattr(value, name))
    else:  # pragma: no cover - a codec this walk does not know
        raise TypeError(codec)


def reference_encoding(value: XdrStruct) -> bytes:
    packer = xdrlib3.Packer()
    pack_reference(packer, type(value).codec(), value)
    encoded: bytes = packer.get_buffer()
    return encoded


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda cls: cls.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_struct_encodes_as_xdrlib3_does(cls: type[XdrStruct], data: st.DataObject) -> None:
    value = data.draw(struct_strategy(cls))
    assert value.encode() == reference_encoding(value)


@given(st.binary(max_size=9), st.integers(-(2**70), 2**70))
def test_primitives_encode_as_xdrlib3_does(raw: bytes, number: int) -> None:
    assert encode_value(Opaque(16), raw) == _packed("pack_opaque", raw)
    assert encode_value(FixedOpaque(len(raw)), raw) == _packed("pack_fopaque", len(raw), raw)
    for codec, method, low, high in (
        (Int(), "pack_int", -(2**31), 2**31),
        (UInt(), "pack_uint", 0, 2**32),
        (Hyper(), "pack_hyper", -(2**63), 2**63),
        (UHyper(), "pack_uhyper", 0, 2**64),
    ):
        if low <= number < high:
            assert encode_value(codec, number) == _packed(method, number)
        else:
            # Refused, never wrapped around (xdrlib3 masks hypers to 64 bits).
            with pytest.raises(XdrEncodeError):
                encode_value(codec, number)


def _packed(method: str, *args: Any) -> bytes:
    packer = xdrlib3.Packer()
    getattr(packer, method)(*args)
    encoded: bytes = packer.get_buffer()
    return encoded
