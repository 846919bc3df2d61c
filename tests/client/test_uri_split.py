"""URIs are cut without importing urllib.parse, exactly as urllib.parse cuts them; their
query's parameters are read and written as libvirt's client does."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
from typing import TYPE_CHECKING

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.client.fake_peer import FakePeer
from virtvol.client import InvalidURI
from virtvol.client.uri import (
    UriParts,
    _split_with_urllib,
    format_params,
    parse_uri,
    query_params,
    split_uri,
)
from virtvol.protocol import remote as r
from virtvol.protocol.procedures import Proc

if TYPE_CHECKING:
    from pathlib import Path

    from virtvol.protocol.connection import CallReceived

PLAIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:/?=&+,@"
# Characters that send a URI to urllib.parse, mixed in with the plain ones.
OTHER = "%#[]; é\t"

URI_PIECES = st.sampled_from(
    ["storage", "QEMU", "+tcp", "+unix", "://", ":", "/", "//", "?", "&", "=", "@", "h", "1"]
)


def urllib_parts(uri: str) -> UriParts | str:
    """What urllib.parse makes of ``uri``, or the message of the ValueError it raises."""
    try:
        return _split_with_urllib(uri)
    except ValueError as error:
        return str(error)


def our_parts(uri: str) -> UriParts | str:
    try:
        return split_uri(uri)
    except ValueError as error:
        return str(error)


@given(st.text(alphabet=PLAIN) | st.lists(URI_PIECES | st.text(PLAIN)).map("".join))
@example("storage+tcp://User@Host:16509/system?socket=/a+b&x&=y&&mode=direct")
@example("storage+tcp://h:99999/system")
@example("storage+tcp://h:1:2/system")
@example("storage+tcp://h:/system")
@example("1a://h/")
@example("a.b-c+d://h/")
def test_plain_uris_are_cut_as_urllib_cuts_them(uri: str) -> None:
    assert our_parts(uri) == urllib_parts(uri)


@given(st.text(alphabet=PLAIN + OTHER))
@example("storage+tcp://[::1]:16509/system?socket=%2Frun%2Fx%20y#frag")
@example("storage+tcp://[::1/system")
def test_other_uris_go_to_urllib(uri: str) -> None:
    assert our_parts(uri) == urllib_parts(uri)


@pytest.mark.parametrize(
    ("query", "params"),
    [
        ("socket=/run/a+b&x=%2F%20", (("socket", "/run/a+b"), ("x", "/ "))),
        # A name alone has the empty value; "=value" and empty pairs are skipped.
        ("a&=b&&c=&d", (("a", ""), ("c", ""), ("d", ""))),
        # ";" separates only where the rest of the query has no "&".
        ("a=1;b=2", (("a", "1"), ("b", "2"))),
        ("a=1;b=2&c=3", (("a", "1;b=2"), ("c", "3"))),
        ("a=1&b=2;c=3", (("a", "1"), ("b", "2"), ("c", "3"))),
        ("k=a=b&", (("k", "a=b"),)),
        ("", ()),
        # "=" alone: libvirt's name is the rest of the query (libxml2 reads a length of
        # 0 as "to the end"), and the pairs after it are read as well.
        ("foo=1&=&socket=/s", (("foo", "1"), ("=&socket=/s", ""), ("socket", "/s"))),
        ("socket=/s&=", (("socket", "/s"), ("=", ""))),
        # An escaped NUL ends a name or a value (C strings); an empty name stays.
        ("a%00b=x%00y&%00=1", (("a", "x"), ("", "1"))),
    ],
)
def test_query_params_read_as_libvirt_reads_them(
    query: str, params: tuple[tuple[str, str], ...]
) -> None:
    assert query_params(query) == params


# Values as a URI yields them: text (no lone surrogates, as st.text() makes it) without
# NUL, which ends a value.
@given(
    st.lists(
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
        max_size=4,
    )
)
@example(["a b+c/d:é~"])
def test_formatted_values_read_back_as_they_were(values: list[str]) -> None:
    written = format_params([(f"n{index}", value) for index, value in enumerate(values)])
    assert [value for _, value in query_params(written)] == values
    assert written.isascii()
    assert " " not in written
    assert "+" not in written


def test_values_are_escaped_as_libvirts_remote_driver_escapes_them() -> None:
    assert format_params([("k", "a b+c/d:é~"), ("Name", "x")]) == (
        "k=a%20b%2Bc%2Fd%3A%C3%A9~&Name=x"
    )


def test_urllib_parse_is_not_imported_for_a_plain_uri() -> None:
    # The reason for cutting URIs here: urllib.parse is ~4 ms of each command.
    # (Without coverage's start-up hook in the child: coverage imports both.)
    env = {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_")}
    probe = (
        "import sys\n"
        "from virtvol.client.uri import parse_uri\n"
        "parse_uri('storage+unix:///system?socket=/run/x-sock&foo=a+b')\n"
        "print('urllib.parse' in sys.modules, 're' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env=env,
    )
    assert result.stdout.split() == ["False", "False"], result.stderr


@pytest.mark.parametrize(
    ("uri", "open_name"),
    [
        ("storage+tcp://h/system?foo=a+b&pkipath=/p", "storage:///system?foo=a%2Bb"),
        # The remote driver's own parameters, whatever their case, stay with the client.
        ("storage+tcp://h/system?PKIPath=/p&No_Verify=1&foo=x", "storage:///system?foo=x"),
        ("storage+tcp://h/system?x=%2F", "storage:///system?x=%2F"),
        ("storage+tcp://h/system#part", "storage:///system#part"),
        ("storage+tcp://h", "storage://"),
        # The name is the driver's, "//" and the path, whatever the driver is called
        # (urllib.parse would write "file:" URIs differently).
        ("file+tcp://h/x", "file:///x"),
    ],
)
def test_open_name(uri: str, open_name: str) -> None:
    assert parse_uri(uri).open_name == open_name


@pytest.mark.parametrize(
    ("value", "verify"),
    [("0", True), ("+0", True), (" \t-0", True), ("1", False), (" 1", False), ("-1", False)],
)
def test_integer_parameters_read_as_c_reads_them(value: str, verify: bool) -> None:
    # Leading white space and a sign, as strtol takes them (the refusals are compared
    # with virsh's in test_cli_spellings.py).
    target = parse_uri(f"storage+tls://h/system?no_verify={urllib.parse.quote(value)}")
    assert target.tls_verify is verify


def test_brackets_stand_in_a_host_or_a_fragment() -> None:
    # libxml2 takes them in a fragment too (XPointer), as virsh does.
    assert parse_uri("storage+tcp://[::1]:1/system#a[1]").host == "::1"
    for refused in ("storage+tcp://h/system?a=[1]", "storage:/system?x=a://[::1]/"):
        with pytest.raises(InvalidURI, match="Unable to parse URI"):
            parse_uri(refused)


def test_the_stand_in_takes_the_hosts_place_not_a_like_user() -> None:
    # The user part may be written as the bracketed host is: only the host is swapped.
    for uri in ("storage+tcp://[::]@[foo]:1/system", "storage+tcp://[foo]@[foo]:1/system"):
        parts = split_uri(uri)
        user = uri.split("//")[1].split("@")[0]
        assert (parts.netloc, parts.host, parts.port) == (f"{user}@[foo]:1", "foo", 1)
        assert parts.path == "/system"
    # parse_uri refuses a bracket in the user part, as libvirt does.
    with pytest.raises(InvalidURI, match="Unable to parse URI"):
        parse_uri("storage+tcp://[::]@[foo]:1/system")


def test_an_ipv6_zone_is_not_taken_for_a_bad_escape() -> None:
    # "%" inside the brackets starts a zone (libvirt takes it); elsewhere it must
    # start an escape of two hex digits.
    target = parse_uri("storage+tcp://[fe80::1%eth0]:1/system")
    assert (target.host, target.port) == ("fe80::1%eth0", 1)
    with pytest.raises(InvalidURI, match="Unable to parse URI"):
        parse_uri("storage+tcp://[fe80::1]:1/sys%zz")


def _open_name_sent(command: list[str], peer: FakePeer) -> str:
    """Run ``command`` against ``peer`` and return the name its CONNECT_OPEN carried
    (the peer hangs up after answering it: the rest of the command fails)."""
    names: list[str] = []

    def take_the_name(peer: FakePeer, event: CallReceived) -> None:
        assert isinstance(event.args, r.ConnectOpenArgs)
        names.append(event.args.name or "")
        peer.reply(event.serial)
        peer.hang_up()

    peer.handlers[Proc.CONNECT_OPEN] = take_the_name
    env = {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_")}
    subprocess.run(
        command, capture_output=True, stdin=subprocess.DEVNULL, timeout=60, check=False, env=env
    )
    assert len(names) == 1, f"{command[0]} did not open a connection"
    return names[0]


@pytest.mark.parametrize(
    ("uri", "sent"),
    [
        # The remote driver's parameter in capitals, and one for the server with "+", an
        # escaped space and "/".
        (
            "storage+unix:///system?SOCKET={socket}&foo=a+b%20c/d",
            "storage:///system?foo=a%2Bb%20c%2Fd",
        ),
        # "=" alone and an escaped NUL, read as libvirt reads them.
        ("storage+unix:///system?foo=1&=&socket={socket}&bar=x%00y&%00z=1", None),
        # The driver as written; the path and the fragment written anew from what their
        # escapes stand for.
        ("STORAGE+Unix:///system?socket={socket}", "STORAGE:///system"),
        ("storage+unix:///sys%74em/a:b%2F%C3%A9?socket={socket}", None),
        ("storage+unix:///system?socket={socket}#a%41b%2F%20[1]?c:d", None),
        ("REMOTE+unix:///system?socket={socket}", "REMOTE:///system"),
        ("remote+unix:///system?socket={socket}", ""),
    ],
)
def test_the_query_reaches_the_socket_and_the_server_as_with_virsh(
    tmp_path: Path, uri: str, sent: str | None
) -> None:
    # The socket's path holds "+" (a plus, not a space, to libvirt): virsh and virtvol
    # reach the same socket and send the server the same name.
    # One after the other on the same path, which the name may carry.
    folder = tmp_path / "a+sock"
    folder.mkdir()
    names = {}
    for client in ("virsh", "virtvol"):
        with FakePeer(folder) as peer:
            command = [client, "-c", uri.format(socket=peer.path), "pool-list"]
            if client == "virtvol":
                command[:1] = [sys.executable, "-m", "virtvol.client.cli"]
            names[client] = _open_name_sent(command, peer)
        peer.path.unlink()
    assert names["virtvol"] == names["virsh"]
    if sent is not None:
        assert names["virsh"] == sent
