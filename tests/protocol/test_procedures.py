"""The procedure table's own rules, seen from the protocol core."""

from __future__ import annotations

import pytest

from tests.protocol.conftest import Pair
from virtvol.protocol import procedures
from virtvol.protocol.connection import CallRejected
from virtvol.protocol.errors import ErrorDomain
from virtvol.protocol.procedure_names import api_error_domain, api_function
from virtvol.protocol.procedures import PROCEDURES, Proc, _p
from virtvol.protocol.remote import ConnectEventConnectionClosedMsg


def test_api_names_are_libvirts_function_names() -> None:
    assert procedures.STORAGE_VOL_CREATE_XML.api_name == "virStorageVolCreateXML"
    assert procedures.STORAGE_POOL_LOOKUP_BY_UUID.api_name == "virStoragePoolLookupByUUID"
    assert procedures.CONNECT_GET_URI.api_name == "virConnectGetURI"
    assert procedures.STORAGE_VOL_DOWNLOAD.api_name == "virStorageVolDownload"


@pytest.mark.parametrize(
    ("name", "function", "domain"),
    [
        ("CONNECT_NUM_OF_NWFILTERS", "virConnectNumOfNWFilters", ErrorDomain.NWFILTER),
        ("DOMAIN_GET_IOTHREAD_INFO", "virDomainGetIOThreadInfo", ErrorDomain.DOMAIN),
        ("DOMAIN_INTERFACE_STATS", "virDomainInterfaceStats", ErrorDomain.DOMAIN),
        ("DOMAIN_SNAPSHOT_NUM", "virDomainSnapshotNum", ErrorDomain.DOMAIN_SNAPSHOT),
        (
            "DOMAIN_CHECKPOINT_GET_XML_DESC",
            "virDomainCheckpointGetXMLDesc",
            ErrorDomain.DOMAIN_CHECKPOINT,
        ),
        (
            "CONNECT_DOMAIN_EVENT_REGISTER_ANY",
            "virConnectDomainEventRegisterAny",
            ErrorDomain.DOMAIN,
        ),
        ("NODE_GET_INFO", "virNodeGetInfo", ErrorDomain.DOMAIN),
        ("NODE_NUM_OF_DEVICES", "virNodeNumOfDevices", ErrorDomain.NODEDEV),
        ("NODE_LIST_DEVICES", "virNodeListDevices", ErrorDomain.NODEDEV),
        ("NODE_DEVICE_GET_XML_DESC", "virNodeDeviceGetXMLDesc", ErrorDomain.NODEDEV),
        ("CONNECT_LIST_ALL_INTERFACES", "virConnectListAllInterfaces", ErrorDomain.INTERFACE),
        ("NETWORK_CREATE", "virNetworkCreate", ErrorDomain.NETWORK),
        ("SECRET_GET_VALUE", "virSecretGetValue", ErrorDomain.SECRET),
        (
            "CONNECT_GET_STORAGE_POOL_CAPABILITIES",
            "virConnectGetStoragePoolCapabilities",
            ErrorDomain.STORAGE,
        ),
    ],
)
def test_api_function_and_its_error_domain(name: str, function: str, domain: ErrorDomain) -> None:
    """What libvirtd's "not supported" for a procedure of another driver names."""
    assert api_function(name) == function
    assert api_error_domain(name) is domain


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
