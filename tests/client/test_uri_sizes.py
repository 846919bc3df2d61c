"""URI parsing (libvirt's rules) and virsh's size syntax, without a peer."""

from __future__ import annotations

import pytest

from virtvol.client import InvalidURI, parse_uri
from virtvol.client.display import format_table
from virtvol.client.errors import NoSupport, error_from_remote
from virtvol.client.sizes import SizeError, format_size, parse_size
from virtvol.protocol.remote import RemoteError


@pytest.mark.parametrize(
    ("uri", "transport", "host", "port", "name"),
    [
        ("qemu+tcp://127.0.0.1:16509/system", "tcp", "127.0.0.1", 16509, "qemu:///system"),
        ("storage+tcp://h/system", "tcp", "h", 16509, "storage:///system"),
        ("storage+TCP://user@h:99/session", "tcp", "h", 99, "storage:///session"),
        ("storage://h/system", "tls", "h", 16514, "storage:///system"),
        ("remote+tcp://h/", "tcp", "h", 16509, ""),
        ("qemu+tcp://h/system?name=XYZ", "tcp", "h", 16509, "XYZ"),
        (
            "storage+tcp://h/system?foo=bar&no_verify=1",
            "tcp",
            "h",
            16509,
            "storage:///system?foo=bar",
        ),
    ],
)
def test_network_uris(uri: str, transport: str, host: str, port: int, name: str) -> None:
    target = parse_uri(uri)
    assert (target.transport, target.host, target.port, target.open_name) == (
        transport,
        host,
        port,
        name,
    )
    assert target.open_flags == 0


def test_unix_uris() -> None:
    target = parse_uri("storage+unix:///system?socket=/tmp/s")
    assert target.socket_path == "/tmp/s"
    assert target.open_name == "storage:///system"
    assert parse_uri("storage:///system?mode=legacy").socket_path == "/var/run/libvirt/libvirt-sock"
    assert parse_uri("storage:///system?mode=direct").socket_path == (
        "/var/run/libvirt/virtstoraged-sock"
    )
    assert parse_uri("storage:///system", read_only=True).open_flags == 1


@pytest.mark.parametrize("uri", ["storage+bogus://h/system", "storage+unix://h/system", "nothing"])
def test_bad_uris(uri: str) -> None:
    with pytest.raises(InvalidURI):
        parse_uri(uri)


def test_sizes() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("1M") == parse_size("1MiB") == 1 << 20
    assert parse_size("1MB") == 10**6
    assert parse_size("2k") == parse_size("2KiB") == 2048
    assert parse_size("1G") == 1 << 30
    assert parse_size("1T") == 1 << 40
    assert parse_size("1P") == 1 << 50
    assert parse_size("1E") == 1 << 60
    assert parse_size("7b") == parse_size("7bytes") == 7
    for bad in ("", "1X", "-1", "1.5G", "1MiX"):
        with pytest.raises(SizeError):
            parse_size(bad)
    assert format_size(0) == "0.00 B"
    assert format_size(10005) == "9.77 KiB"
    assert format_size(100000002) == "95.37 MiB"


def test_table_layout() -> None:
    assert format_table(["Name", "Path"], []) == " Name   Path\n--------------\n"


def test_unknown_procedure_maps_to_no_support() -> None:
    error = error_from_remote(RemoteError(code=39, domain=7, message="unknown procedure: 66"))
    assert isinstance(error, NoSupport)
    assert error.code == 3
