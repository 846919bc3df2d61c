"""The public surface of ``virtvol.client``: which names, documented, with keyword-only options.

Changing ``PUBLIC`` is an API change: it belongs in docs/CHANGELOG.md.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import pytest

import virtvol.client
import virtvol.client.testing

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import ModuleType

PUBLIC = [
    "CallTimeout",
    "Connection",
    "ConnectionClosed",
    "Download",
    "Hole",
    "InvalidArgument",
    "InvalidURI",
    "LibvirtError",
    "NoStoragePool",
    "NoStorageVolume",
    "NoSupport",
    "OperationDenied",
    "OperationFailed",
    "OperationInvalid",
    "PendingConnection",
    "PoolInfo",
    "PoolState",
    "ProtocolViolation",
    "SparseUnsupported",
    "StoragePool",
    "StorageVolume",
    "StorageVolumeExists",
    "StreamError",
    "TransferResult",
    "TransportError",
    "UnsendableValue",
    "UnsupportedTransport",
    "Upload",
    "VirtvolError",
    "VolWipeAlgorithm",
    "VolumeInfo",
    "VolumeType",
    "connect",
    "default_uri",
    "download_file",
    "upload_file",
    "volume_xml",
]

TESTING = ["MemoryDaemon", "MemoryPool", "MemoryVolume", "memory_daemon"]

MODULES = [virtvol.client, virtvol.client.testing]

# Parameters with a default that may still be given by position: the one thing
# the call is about, where a keyword would only be noise.
POSITIONAL_OPTIONS = {("connect", "uri")}


def _public_members(cls: type) -> Iterator[tuple[str, object]]:
    """The members ``cls`` defines itself (not those it inherits), without private names."""
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        yield name, member


def _own_doc(obj: object) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    if isinstance(obj, type):
        doc = vars(obj).get("__doc__") or ""
        # A dataclass without a docstring gets its signature as one.
        if doc.startswith(f"{obj.__name__}("):
            doc = ""
    return doc.strip()


def _callables(module: ModuleType) -> Iterator[tuple[str, Callable[..., object]]]:
    for name in module.__all__:
        obj = getattr(module, name)
        if isinstance(obj, type):
            if not obj.__module__.startswith("virtvol."):
                continue
            for member_name, member in _public_members(obj):
                if isinstance(member, staticmethod | classmethod):
                    member = member.__func__
                if inspect.isfunction(member):
                    yield f"{name}.{member_name}", member
        elif callable(obj):
            yield name, obj


def test_all_is_the_documented_surface() -> None:
    assert virtvol.client.__all__ == PUBLIC
    assert virtvol.client.testing.__all__ == TESTING


def test_internal_names_stay_importable_from_their_modules() -> None:
    from virtvol.client.streams import FRAME_DATA_MAX
    from virtvol.client.uri import Target, parse_uri, resolve_uri

    assert FRAME_DATA_MAX > 0
    assert parse_uri("storage+tcp://h/system").host == "h"
    assert isinstance(parse_uri("storage+tcp://h/system"), Target)
    assert resolve_uri("storage+tcp://h/system") == "storage+tcp://h/system"
    for name in ("FRAME_DATA_MAX", "Target", "parse_uri", "resolve_uri", "ProtocolMode"):
        assert name not in virtvol.client.__all__


def test_protocol_mode_is_the_literal_type_it_names() -> None:
    # Made on first use (a command imports no typing), it is still typing's Literal.
    import typing

    from virtvol.client.connection import ProtocolMode
    from virtvol.protocol import constants

    assert typing.get_args(ProtocolMode) == ("current", "legacy")
    assert constants.ProtocolMode is ProtocolMode or constants.ProtocolMode == ProtocolMode
    with pytest.raises(AttributeError):
        constants.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError):
        virtvol.client.connection.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_public_name_has_a_docstring(module: ModuleType) -> None:
    assert _own_doc(module)
    undocumented = [name for name in module.__all__ if not _own_doc(getattr(module, name))]
    assert undocumented == []


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_public_method_and_property_has_a_docstring(module: ModuleType) -> None:
    undocumented = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not isinstance(obj, type) or not obj.__module__.startswith("virtvol."):
            continue
        for member_name, member in _public_members(obj):
            if member_name == "__init__":
                continue
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if (inspect.isfunction(member) or isinstance(member, property)) and not (
                member.__doc__ or ""
            ).strip():
                undocumented.append(f"{name}.{member_name}")
    assert undocumented == []


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_options_are_keyword_only(module: ModuleType) -> None:
    positional_options = []
    for qualified, function in _callables(module):
        for param in inspect.signature(function).parameters.values():
            if param.default is inspect.Parameter.empty:
                continue
            if param.kind is inspect.Parameter.KEYWORD_ONLY:
                continue
            if (qualified, param.name) not in POSITIONAL_OPTIONS:
                positional_options.append(f"{qualified}({param.name})")
    assert positional_options == []


def test_the_surface_checks_see_every_callable() -> None:
    """The checks above walk the methods of the public classes, not only the functions."""
    names = {name for name, _ in _callables(virtvol.client)}
    assert {"connect", "Connection.lookup_pool_by_name", "StorageVolume.resize"} <= names
    assert "Upload.send" in names


def test_connect_returns_the_public_pending_connection() -> None:
    pending = virtvol.client.connect("storage+tcp://127.0.0.1:1/system")
    assert isinstance(pending, virtvol.client.PendingConnection)
    assert inspect.signature(virtvol.client.connect).return_annotation in (
        "PendingConnection",
        virtvol.client.PendingConnection,
    )
