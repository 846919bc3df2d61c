"""URI parsing (libvirt's rules) and virsh's size syntax, without a peer."""

from __future__ import annotations

import asyncio
import os
import re
from typing import TYPE_CHECKING

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from virtvol.client import InvalidURI, UnsupportedTransport, connect, volume_xml
from virtvol.client.display import format_table
from virtvol.client.errors import NoSupport, error_from_remote
from virtvol.client.libvirt_conf import load_client_config
from virtvol.client.sizes import SizeError, format_size, parse_size
from virtvol.client.uri import parse_uri
from virtvol.client.xmldesc import renamed_volume_xml
from virtvol.protocol.remote import RemoteError

if TYPE_CHECKING:
    from pathlib import Path


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
    for bad in ("", "1X", "-1", "1.5G", "1MiX", "1 M", "1M ", "0x10"):
        with pytest.raises(SizeError):
            parse_size(bad)
    assert format_size(0) == "0.00 B"
    assert format_size(10005) == "9.77 KiB"
    assert format_size(100000002) == "95.37 MiB"


# The number as strtoull reads it: C blanks, a "+", decimal digits; the rest is the suffix.
SIZE_PATTERN = re.compile(r"[ \t\n\v\f\r]*\+?([0-9]+)(.*)", re.DOTALL)


@given(st.text(alphabet="0123456789 +kKmMgGtTiIbBeEyYsx.-\t\u00a0\u2003\u212a", max_size=12))
@example(" 10G")
@example(" +10G")
@example("10 G")
@example("1M ")
@example("+-1")
@example("16E")
@example("\u212a")
def test_sizes_read_as_strtoull_then_the_suffix(text: str) -> None:
    def outcome(size: str) -> int | str:
        try:
            return parse_size(size)
        except SizeError as error:
            return "refused" if error.reason is None else error.reason

    match = SIZE_PATTERN.fullmatch(text)
    if match is None:
        assert outcome(text) == "refused"
        return
    number, suffix = match.groups()
    # Blanks and the sign before the number do not matter; the suffix is taken whole.
    assert outcome(text) == outcome(number + suffix)
    answer = outcome(text)
    if isinstance(answer, int):
        assert answer % int(number) == 0 if int(number) else answer == 0
    elif suffix.strip() != suffix or not suffix.isascii():
        assert answer == f"invalid argument: unknown suffix '{suffix}'"


def test_sizes_past_64_bits_overflow_as_in_libvirt() -> None:
    assert parse_size("15E") == 15 << 60
    with pytest.raises(SizeError) as caught:
        parse_size("+016E")
    assert caught.value.reason == "numerical overflow: value too large: 16E"
    with pytest.raises(SizeError) as caught:
        parse_size("18446744073709551616")
    assert caught.value.reason is None  # strtoull's own range error: no libvirt line


def test_only_ascii_digits_are_a_size() -> None:
    # As virsh reads numbers (strtoull): other scripts' digits are refused.
    with pytest.raises(SizeError, match="invalid size"):
        parse_size("\u0661\u0662")


def test_table_layout() -> None:
    assert format_table(["Name", "Path"], []) == " Name   Path\n--------------\n"


def test_unknown_procedure_maps_to_no_support() -> None:
    error = error_from_remote(RemoteError(code=39, domain=7, message="unknown procedure: 66"))
    assert isinstance(error, NoSupport)
    assert error.code == 3


def test_unsupported_transport_names_it() -> None:
    async def open_ssh() -> None:
        await connect("storage+ssh://user@host/system")

    with pytest.raises(UnsupportedTransport, match="transport 'ssh' is not supported") as info:
        asyncio.run(open_ssh())
    assert isinstance(info.value, InvalidURI)
    assert info.value.transport == "ssh"


def test_client_config_default_and_aliases(tmp_path: Path) -> None:
    conf = tmp_path / "libvirt.conf"
    conf.write_text(
        "# a comment\n"
        'uri_default = "storage:///session"  # trailing comment\n'
        "uri_aliases = [\n"
        '  "here=storage+unix:///system?socket=/tmp/s",\n'
        "  'there=storage+tcp://h/system',\n"
        "]\n"
        "remote_mode = 'legacy'\n"
    )
    config = load_client_config(conf)
    assert config.uri_default == "storage:///session"
    assert config.resolve_alias("there") == "storage+tcp://h/system"
    assert config.resolve_alias("here") == "storage+unix:///system?socket=/tmp/s"
    assert config.resolve_alias("storage:///system") == "storage:///system"
    assert load_client_config(tmp_path / "missing.conf").uri_default is None
    conf.write_text('uri_aliases = [ "bad alias=storage:///system" ]\n')
    with pytest.raises(InvalidURI, match="aliases may only contain"):
        load_client_config(conf).resolve_alias("x")
    conf.write_text("uri_default = \n")
    with pytest.raises(InvalidURI, match=r"libvirt.conf:1: expecting a value"):
        load_client_config(conf)


def test_session_sockets_have_no_read_only_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    legacy = parse_uri("storage:///session", read_only=True)
    assert legacy.socket_path == f"{tmp_path}/libvirt/libvirt-sock"
    (tmp_path / "libvirt").mkdir()
    (tmp_path / "libvirt" / "virtstoraged-sock").touch()
    assert parse_uri("storage:///session", read_only=True).socket_path == (
        f"{tmp_path}/libvirt/virtstoraged-sock"
    )
    assert parse_uri("remote:///session").socket_path == f"{tmp_path}/libvirt/libvirt-sock"


def test_volume_xml() -> None:
    assert volume_xml("a<b>'&\"", 1024, allocation=0, format="qcow2") == (
        "<volume>\n"
        "  <name>a&lt;b&gt;&apos;&amp;&quot;</name>\n"
        "  <capacity>1024</capacity>\n"
        "  <allocation>0</allocation>\n"
        "  <target>\n"
        "    <format type='qcow2'/>\n"
        "  </target>\n"
        "</volume>\n"
    )
    assert "<allocation>" not in volume_xml("v", 1)
    with pytest.raises(ValueError, match="negative"):
        volume_xml("v", -1)


def test_renamed_volume_xml() -> None:
    original = (
        "<volume type='file'>\n  <name>a</name>\n  <capacity unit='bytes'>5</capacity>\n"
        "  <target>\n    <format type='qcow2'/>\n  </target>\n</volume>\n"
    )
    # The name is read as libxml2 takes a node's text: a reference stands for what it
    # names, and a "&" that starts none empties the name, as with virsh.
    for name, written in (("b&amp;c", "<name>b&amp;c</name>"), ("b&c", "<name/>")):
        assert renamed_volume_xml(original, name) == (
            f'<volume type="file">\n  {written}\n  <capacity unit="bytes">5</capacity>\n'
            '  <target>\n    <format type="qcow2"/>\n  </target>\n</volume>'
        )
    for bad in ("<pool><name>x</name></pool>", "<volume/>", "<volume"):
        with pytest.raises(ValueError, match="not a volume's XML"):
            renamed_volume_xml(bad, "b")


@pytest.mark.parametrize(
    ("text", "default"),
    [
        ('# uri_default = "storage:///x"\n\n   # indented comment\n\t\n', None),
        ("", None),
        ("  uri_default = 'storage:///x' # not a comment line\n", "storage:///x"),
        ('# comment\nuri_default = "a#b"\n', "a#b"),
    ],
)
def test_client_config_of_comments_only(tmp_path: Path, text: str, default: str | None) -> None:
    # A file of comments (libvirt.conf as Debian installs it) is read without
    # tokenizing; a setting after comments, or a "#" inside a value, still counts.
    conf = tmp_path / "libvirt.conf"
    conf.write_text(text)
    config = load_client_config(conf)
    assert config.uri_default == default
    assert config.uri_aliases == ()
    assert config.path == str(conf)
