"""The XDR codec: round trips of every struct, and refusals that name the field."""

from __future__ import annotations

import inspect
import struct
import tracemalloc
from typing import TYPE_CHECKING, Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.protocol.conftest import struct_strategy
from virtvol.protocol import remote, remote_events, remote_secrets, remote_volumes
from virtvol.protocol.constants import AuthType
from virtvol.protocol.exceptions import XdrDecodeError, XdrEncodeError, XdrError
from virtvol.protocol.remote import StreamHole
from virtvol.protocol.xdr import (
    Bool,
    Opaque,
    Reader,
    String,
    XdrStruct,
    decode_value,
    encode_value,
)

if TYPE_CHECKING:
    from collections.abc import Callable

STRUCTS = sorted(
    (
        cls
        for module in (remote, remote_volumes, remote_secrets, remote_events)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, XdrStruct) and cls.__module__ == module.__name__
    ),
    key=lambda cls: cls.__name__,
)


def test_every_struct_is_found() -> None:
    names = {cls.__name__ for cls in STRUCTS}
    assert {"RemoteError", "StreamHole", "VolTransferArgs", "ListAllPoolsRet"} <= names
    assert len(STRUCTS) >= 40


@pytest.mark.parametrize("cls", STRUCTS, ids=lambda cls: cls.__name__)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type[XdrStruct], data: st.DataObject) -> None:
    value = data.draw(struct_strategy(cls))
    encoded = value.encode()
    assert len(encoded) % 4 == 0
    decoded = cls.decode(encoded)
    assert decoded == value
    assert decoded.encode() == encoded
    assert cls.decode(memoryview(encoded)) == value
    assert cls.decode(bytearray(encoded)) == value


@settings(max_examples=50, deadline=None)
@given(raw=st.binary(max_size=40))
def test_any_string_bytes_survive_a_round_trip(raw: bytes) -> None:
    """Names that are not UTF-8 come back as the same bytes (surrogateescape)."""
    codec = String(100)
    encoded = encode_value(Opaque(100), raw)
    text = decode_value(codec, encoded)
    assert encode_value(codec, text) == encoded


def test_known_encodings() -> None:
    vol = remote.StorageVol(pool="default", name="a.img", key="/p/a.img")
    assert vol.encode() == bytes.fromhex(
        "00000007 64656661756c7400 00000005 612e696d67000000 00000008 2f702f612e696d67"
    )
    assert remote.StreamHole(61440).encode() == bytes.fromhex("000000000000f000 00000000")
    assert remote.ConnectOpenArgs(None, 0).encode() == bytes(8)
    assert remote.AuthListRet((AuthType.NONE, AuthType.POLKIT)).encode() == bytes.fromhex(
        "00000002 00000000 00000002"
    )


# -- refusals when decoding ------------------------------------------------------------


def _u32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def _refused(
    decode: Callable[[bytes], object], data: bytes, *fragments: str, limit: int = 64 * 1024
) -> XdrError:
    """Decoding fails with XdrError naming ``fragments``, without a large allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(XdrError) as info:
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for fragment in fragments:
        assert fragment in str(info.value)
    assert peak < limit, f"{peak} bytes allocated while refusing"
    return info.value


def test_string_longer_than_its_maximum() -> None:
    data = _u32(1, 0xFFFFFFFF) + b"abcd" + _u32(0)
    error = _refused(remote.ConnectOpenArgs.decode, data, "ConnectOpenArgs.name", "maximum")
    assert error.path == "ConnectOpenArgs.name"


def test_string_count_beyond_the_data() -> None:
    data = _u32(4194304) + b"abcd"
    _refused(remote.LookupByNameArgs.decode, data, "LookupByNameArgs.name", "4194304")


def test_nested_field_paths() -> None:
    pool = remote.StoragePool("p", bytes(16)).encode()
    vol = remote.StorageVol("p", "v", "k").encode()
    data = _u32(2) + vol + _u32(1) + b"p\0\0\0" + _u32(1) + b"v\0\0\0" + _u32(999) + _u32(1)
    _refused(remote.PoolListAllVolumesRet.decode, data, "PoolListAllVolumesRet.vols[1].key")
    data = pool + _u32(0xFFFFFFF0)
    _refused(remote.VolLookupByNameArgs.decode, data, "VolLookupByNameArgs.name")
    data = _u32(1, 2, 1, 0xFFFFFFFF)
    _refused(remote.RemoteError.decode, data, "RemoteError.message", "maximum 4194304")


def test_array_count_above_its_maximum() -> None:
    data = _u32(16385) + bytes(64)
    _refused(remote.ListAllPoolsRet.decode, data, "ListAllPoolsRet.pools", "16385", "16384")
    data = _u32(21)
    _refused(remote.AuthListRet.decode, data, "AuthListRet.types", "maximum 20")


def test_array_count_beyond_the_data() -> None:
    """16384 pools claimed (the maximum), 20 bytes present: refused before building."""
    data = _u32(16384) + bytes(20)
    _refused(remote.ListAllPoolsRet.decode, data, "ListAllPoolsRet.pools", "does not fit")
    data = _u32(16384) + bytes(40)
    _refused(remote.ListPoolNamesRet.decode, data, "ListPoolNamesRet.names", "does not fit")


@pytest.mark.parametrize(
    ("cls", "data", "fragment"),
    [
        (remote.ConnectSupportsFeatureArgs, b"\0\0\0", "needs 4 bytes"),
        (remote.ConnectSupportsFeatureArgs, bytes(8), "trailing"),
        (remote.ConnectOpenArgs, _u32(2, 0), "presence flag 2"),
        (remote.AuthListRet, _u32(1, 7), "not a valid AuthType"),
        (remote.LookupByNameArgs, _u32(1) + b"a\0\0\1", "padding"),
        (remote.LookupByUuidArgs, bytes(15), "needs 16 bytes"),
        (remote.StreamHole, bytes(8), "StreamHole.flags"),
    ],
)
def test_malformed_bytes(cls: type[XdrStruct], data: bytes, fragment: str) -> None:
    _refused(cls.decode, data, fragment)


def test_bool_accepts_only_zero_and_one() -> None:
    assert decode_value(Bool(), _u32(1)) is True
    assert decode_value(Bool(), _u32(0)) is False
    with pytest.raises(XdrError, match="boolean value 2"):
        decode_value(Bool(), _u32(2))


def test_opaque_limits() -> None:
    assert decode_value(Opaque(8), _u32(5) + b"12345\0\0\0") == b"12345"
    with pytest.raises(XdrError, match="exceeds the maximum 8"):
        decode_value(Opaque(8), _u32(9) + bytes(12))
    with pytest.raises(XdrError, match="exceeds the maximum 8"):
        encode_value(Opaque(8), bytes(9))


# -- refusals when encoding -------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        remote.ConnectSupportsFeatureArgs(2**31),
        remote.ConnectOpenArgs("x", -1),
        remote.ConnectOpenArgs("x", 2**32),
        remote.StreamHole(2**63),
        remote.StreamHole(-(2**63) - 1),
        remote.ConnectGetVersionRet(-1),
        remote.ConnectGetVersionRet(2**64),
        remote.StoragePool("p", bytes(15)),
        remote.AuthListRet(tuple([AuthType.NONE] * 21)),
        remote.LookupByNameArgs(123),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_values_that_cannot_be_encoded(value: XdrStruct) -> None:
    with pytest.raises(XdrError) as info:
        value.encode()
    assert info.value.path.startswith(type(value).__name__ + ".")


def test_string_longer_than_its_maximum_is_not_encoded() -> None:
    with pytest.raises(XdrError, match=r"exceeds the maximum 4"):
        encode_value(String(4), "abcde")
    with pytest.raises(XdrError, match=r"RemoteError\.message"):
        remote.RemoteError(1, 2, "x" * (4194304 + 1)).encode()


def test_unencodable_string_is_an_xdr_error() -> None:
    """A lone surrogate cannot become UTF-8 bytes: the codec says so in its own terms."""
    with pytest.raises(XdrError, match=r"LookupByNameArgs\.name"):
        remote.LookupByNameArgs(name="\ud800").encode()


@pytest.mark.parametrize(
    ("length", "flags"), [(1, 0), (65536, 0), (1 << 40, 0), ((1 << 63) - 1, 0xFFFFFFFF), (-5, 1)]
)
def test_a_hole_encodes_as_the_generic_encoder_does(length: int, flags: int) -> None:
    hole = StreamHole(length, flags)
    assert hole.encode() == XdrStruct.encode(hole)
    assert StreamHole.decode(hole.encode()) == hole
    assert StreamHole.decode(hole.encode()) == StreamHole.unpack(Reader(hole.encode()))


@pytest.mark.parametrize("size", [0, 11, 13, 16])
def test_a_hole_payload_of_the_wrong_size_is_refused(size: int) -> None:
    with pytest.raises(XdrDecodeError):
        StreamHole.decode(bytes(size))


@pytest.mark.parametrize(("length", "flags"), [(1 << 63, 0), (1, 1 << 32), (1, -1)])
def test_a_hole_out_of_range_is_refused_naming_its_field(length: int, flags: int) -> None:
    with pytest.raises(XdrEncodeError, match=r"StreamHole\.(length|flags)"):
        StreamHole(length, flags).encode()


@pytest.mark.parametrize("cls", [*STRUCTS, String, Opaque, Bool], ids=lambda cls: cls.__name__)
def test_type_hints_of_a_struct_or_codec_are_its_fields(cls: type) -> None:
    # What users and documentation tools read; the codec needs no typing for it.
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)
    assert tuple(hints) == getattr(cls, "_record_fields", ())


def test_a_field_named_like_a_codec_still_finds_the_codec() -> None:
    # Annotations evaluated the way typing.get_type_hints does: the module's names
    # before the class's own (here, each field's slot descriptor).
    class Clash(XdrStruct):
        Opaque: Annotated[bytes, Opaque(8)]
        String: Annotated[str, String(8)]

    value = Clash(b"ab", "cd")
    assert Clash.decode(value.encode()) == value


def test_a_struct_whose_annotations_are_objects() -> None:
    # Declared in a module that does not postpone annotations: read as they are.
    from virtvol.protocol.xdr import Int

    namespace = {"__annotations__": {"x": Annotated[int, Int()]}, "__module__": __name__}
    metaclass: Any = type(XdrStruct)
    point = metaclass("Point", (XdrStruct,), namespace)
    value = point(7)
    assert value.encode() == b"\0\0\0\7"
    assert point.decode(value.encode()) == value


def test_a_struct_whose_module_is_gone() -> None:
    # As typing.get_type_hints does: no module, no names, annotation objects still read.
    from virtvol.protocol.xdr import Int

    namespace = {"__annotations__": {"x": Annotated[int, Int()]}, "__module__": "gone_module"}
    metaclass: Any = type(XdrStruct)
    orphan = metaclass("Orphan", (XdrStruct,), namespace)
    assert orphan.decode(orphan(5).encode()) == orphan(5)


def test_c_strings_end_at_their_first_nul() -> None:
    """As libvirtd's C code reads them: what follows a NUL is gone, nested or not."""
    args = remote.VolLookupByNameArgs(
        pool=remote.StoragePool(name="default\0/..", uuid=bytes(16)), name="a\0/../x"
    )
    assert remote.VolLookupByNameArgs.decode(args.encode()) == args
    assert remote.VolLookupByNameArgs.decode(args.encode(), c_strings=True) == (
        remote.VolLookupByNameArgs(
            pool=remote.StoragePool(name="default", uuid=bytes(16)), name="a"
        )
    )
