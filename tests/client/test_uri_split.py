"""URIs are cut without importing urllib.parse, exactly as urllib.parse cuts them."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from virtvol.client import InvalidURI
from virtvol.client.uri import UriParts, _encode_query, parse_uri, split_uri

PLAIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~:/?=&+,@"
# Characters that send a URI to urllib.parse, mixed in with the plain ones.
OTHER = "%#[]; é\t"

URI_PIECES = st.sampled_from(
    ["storage", "QEMU", "+tcp", "+unix", "://", ":", "/", "//", "?", "&", "=", "@", "h", "1"]
)


def urllib_parts(uri: str) -> UriParts | str:
    """What urllib.parse makes of ``uri``, or the message of the ValueError it raises."""
    try:
        parts = urllib.parse.urlsplit(uri)
        return UriParts(
            parts.scheme,
            parts.netloc,
            parts.path,
            parts.query,
            parts.fragment,
            parts.hostname or None,
            parts.port,
            tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)),
        )
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


@given(st.lists(st.tuples(st.text(), st.text()), max_size=4))
@example([("a b", "c-d_e.f~g")])
@example([("k", "/run/x:y")])
def test_query_encoded_as_urlencode_does(pairs: list[tuple[str, str]]) -> None:
    assert _encode_query(pairs) == urllib.parse.urlencode(pairs)


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
        ("storage+tcp://h/system?foo=a+b&pkipath=/p", "storage:///system?foo=a+b"),
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


def test_an_ipv6_zone_is_not_taken_for_a_bad_escape() -> None:
    # "%" inside the brackets starts a zone (libvirt takes it); elsewhere it must
    # start an escape of two hex digits.
    target = parse_uri("storage+tcp://[fe80::1%eth0]:1/system")
    assert (target.host, target.port) == ("fe80::1%eth0", 1)
    with pytest.raises(InvalidURI, match="Unable to parse URI"):
        parse_uri("storage+tcp://[fe80::1]:1/sys%zz")
