"""The procedure table's own rules, seen from the protocol core."""

from __future__ import annotations

import pytest

from tests.protocol.conftest import Pair
from virtvol.protocol import procedures
from virtvol.protocol.connection import CallRejected
from virtvol.protocol.procedures import PROCEDURES, Proc, _p
from virtvol.protocol.remote import ConnectEventConnectionClosedMsg


def test_api_names_are_libvirts_function_names() -> None:
    assert procedures.STORAGE_VOL_CREATE_XML.api_name == "virStorageVolCreateXML"
    assert procedures.STORAGE_POOL_LOOKUP_BY_UUID.api_name == "virStoragePoolLookupByUUID"
    assert procedures.CONNECT_GET_URI.api_name == "virConnectGetURI"
    assert procedures.STORAGE_VOL_DOWNLOAD.api_name == "virStorageVolDownload"


def test_a_procedure_is_entered_once() -> None:
    entry = PROCEDURES[Proc.CONNECT_OPEN]
    with pytest.raises(ValueError, match="CONNECT_OPEN entered twice"):
        _p(Proc.CONNECT_OPEN, None, None)
    assert PROCEDURES[Proc.CONNECT_OPEN] is entry


def test_a_call_to_an_event_is_refused_as_unknown() -> None:
    # Only a server sends CONNECT_EVENT_CONNECTION_CLOSED; libvirtd has no handler for it.
    pair = Pair()
    serial, frame = pair.client.call(
        Proc.CONNECT_EVENT_CONNECTION_CLOSED, ConnectEventConnectionClosedMsg(reason=0)
    )
    (event,) = pair.to_server(frame)
    assert isinstance(event, CallRejected)
    assert (event.serial, event.procedure) == (serial, Proc.CONNECT_EVENT_CONNECTION_CLOSED)
    assert event.error.message == f"unknown procedure: {Proc.CONNECT_EVENT_CONNECTION_CLOSED}"
