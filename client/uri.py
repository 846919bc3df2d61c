"""libvirt connection URIs: where to connect, and the name CONNECT_OPEN carries.

A URI is ``driver[+transport]://[user@][host][:port]/path[?params]``. The
rules follow libvirt's remote driver:

* transports are ``tls, unix, ssh, libssh2, ext, tcp, libssh`` (any case);
  without one, ``tls`` when there is a host and ``unix`` when there is not;
  ``unix`` with a host is an error. virtvol itself connects over the
  transports in ``SUPPORTED_TRANSPORTS``; ``connect`` refuses the others
  with ``UnsupportedTransport``.
* hosts: ``tcp`` and ``tls`` without one connect to ``localhost``.
* ports: the URI's, else 16509 for tcp and 16514 for tls.
* what libvirt's URI parser refuses (a character RFC 3986 does not allow, a bad
  %-escape, a port that is not digits) is refused in its words
  (``internal error: Unable to parse URI ...``).
* UNIX socket: ``?socket=PATH`` wins; else ``?mode=legacy|direct|auto``
  chooses between libvirtd's socket and the per-driver daemon's one
  (``virt<driver>d-sock``, ``-sock-ro`` for read-only): ``auto`` takes the
  per-driver socket if it exists, else libvirtd's. ``/session`` as non-root
  uses the user's runtime dir (``$XDG_RUNTIME_DIR/libvirt``), which has no
  read-only sockets.
* the default URI (``default_uri``): ``$VIRTVOL_DEFAULT_URI``, then
  ``$LIBVIRT_DEFAULT_URI``, then ``uri_default`` in libvirt's client
  configuration, then ``storage:///system`` (root) or ``storage:///session``.
  Aliases from that configuration (``uri_aliases``) apply to every URI.
* the CONNECT_OPEN name is the URI without ``+transport``, user, host and
  port, and without the parameters the client consumes; ``?name=`` overrides
  it, and ``remote`` schemes send "" so that the server picks.
"""

from __future__ import annotations

import os

from virtvol.client.errors import InvalidURI
from virtvol.client.libvirt_conf import ClientConfig, load_client_config
from virtvol.protocol.constants import ConnectOpenFlags
from virtvol.protocol.record import Record

__all__ = [
    "DEFAULT_URI_ENV",
    "LIBVIRT_DEFAULT_URI_ENV",
    "SUPPORTED_TRANSPORTS",
    "Target",
    "default_uri",
    "parse_uri",
    "resolve_uri",
]

DEFAULT_URI_ENV = "VIRTVOL_DEFAULT_URI"
LIBVIRT_DEFAULT_URI_ENV = "LIBVIRT_DEFAULT_URI"

TRANSPORTS = frozenset({"tls", "unix", "ssh", "libssh2", "ext", "tcp", "libssh"})
DEFAULT_PORTS = {"tcp": 16509, "tls": 16514}
# The transports virtvol can open.
SUPPORTED_TRANSPORTS = frozenset({"tcp", "tls", "unix"})

# Parameters the remote driver consumes itself (their names in any case); they
# never reach the server.
CONSUMED_PARAMS = frozenset(
    {
        "socket",
        "mode",
        "name",
        "command",
        "auth",
        "sshauth",
        "netcat",
        "keyfile",
        "pkipath",
        "known_hosts",
        "known_hosts_verify",
        "tls_priority",
        "proxy",
        "no_sanity",
        "no_verify",
        "no_tty",
        "authfile",
    }
)

# CONNECT_OPEN flag bits (the client's internal open flags).
OPEN_USER = 2

_RUN_DIR = "/var/run/libvirt"

_ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# URIs made of these characters only are split here; any other (a %-escape, a
# fragment, an IPv6 host in brackets, spaces, non-ASCII...) goes to urllib.parse,
# whose import (with the re and ipaddress it brings) is ~4 ms of every command.
_PLAIN_URI_CHARACTERS = frozenset(_ALPHANUMERIC + "-._~:/?=&+,@")
_SCHEME_CHARACTERS = frozenset(_ALPHANUMERIC + "+-.")
# What RFC 3986 allows in a URI: unreserved and reserved characters, and "%" escapes.
_RFC3986_CHARACTERS = frozenset(_ALPHANUMERIC + "-._~:/?#[]@!$&'()*+,;=%")
_HEX = frozenset("0123456789abcdefABCDEF")
# What a parameter's value keeps unescaped in the name sent to the server (RFC 3986's
# unreserved characters, as libvirt's remote driver escapes it).
_UNRESERVED = frozenset(_ALPHANUMERIC + "-._~")
# What the path and the fragment of that name keep unescaped (as libxml2 writes a URI:
# its "unreserved" characters, RFC 2396's, and some of the reserved ones).
_PATH_KEEPS = frozenset(_ALPHANUMERIC + "-_.!~*'()" + "/;@&=+$,")
_FRAGMENT_KEEPS = frozenset(_ALPHANUMERIC + "-_.!~*'()" + ";/?:@&=+$,[]")


class Target(Record):
    """Where and how to connect, derived from a URI.

    Attributes:
        uri: the URI as given.
        transport: ``"tcp"``, ``"unix"``, or another libvirt transport name.
        host: the host for network transports (None for unix).
        port: the TCP port for network transports.
        socket_path: the UNIX socket path for the unix transport.
        open_name: the name sent in CONNECT_OPEN.
        open_flags: the CONNECT_OPEN flags (bit 0 read-only, bit 1 per-user).
        pkipath: for tls, the ``?pkipath=`` folder holding the certificates (None: libvirt's).
        tls_verify: for tls, False when ``?no_verify=1`` skips checking the server.
    """

    uri: str
    transport: str
    host: str | None
    port: int | None
    socket_path: str | None
    open_name: str
    open_flags: int
    pkipath: str | None = None
    tls_verify: bool = True


def default_uri(*, config: ClientConfig | None = None) -> str:
    """The URI used when none is given, chosen as libvirt's library chooses it.

    ``$VIRTVOL_DEFAULT_URI``, then ``$LIBVIRT_DEFAULT_URI``, then ``uri_default``
    in libvirt's client configuration; without any, the local storage daemon
    (``storage:///system`` as root, else ``storage:///session``), where
    libvirt would ask its own daemon to pick a driver.

    Raises:
        InvalidURI: the client configuration cannot be read.
    """
    chosen = _chosen_default(config if config is not None else load_client_config())
    if chosen is not None:
        return chosen
    return _local_default_uri()


def _local_default_uri() -> str:
    return "storage:///system" if os.geteuid() == 0 else "storage:///session"


def _chosen_default(config: ClientConfig) -> str | None:
    """The default URI a variable or ``uri_default`` names, or None for none."""
    for name in (DEFAULT_URI_ENV, LIBVIRT_DEFAULT_URI_ENV):
        env = os.environ.get(name)
        if env:
            return env
    return config.default()


def resolve_uri(uri: str | None) -> str:
    """The URI to open for ``uri`` (None: ``default_uri()``), after libvirt's ``uri_aliases``,
    which libvirt consults only for a URI given or named as the default.

    Raises:
        InvalidURI: the client configuration cannot be read, or a setting it uses is
            malformed (``uri_default``, ``uri_aliases``).
    """
    config = load_client_config()
    chosen = uri if uri else _chosen_default(config)
    if chosen is None:
        return _local_default_uri()
    return config.resolve_alias(chosen)


def _runtime_dir() -> str:
    """Where a user's daemons put their sockets (glib's user runtime dir, as libvirt uses)."""
    env = os.environ.get("XDG_RUNTIME_DIR")
    if env:
        return env
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def _unix_socket(driver: str, path: str, params: dict[str, str], *, read_only: bool) -> str:
    if "socket" in params:
        return params["socket"]
    mode = params.get("mode", "auto")
    user = path == "/session" and os.geteuid() != 0
    # A user's daemon has one socket: libvirt names no read-only one there.
    suffix = "-sock-ro" if read_only and not user else "-sock"
    base = os.path.join(_runtime_dir(), "libvirt") if user else _RUN_DIR
    legacy = os.path.join(base, f"libvirt{suffix}")
    direct = os.path.join(base, f"virt{driver}d{suffix}") if driver else legacy
    if mode == "legacy":
        return legacy
    if mode == "direct":
        return direct
    return direct if os.path.exists(direct) else legacy


def parse_uri(uri: str, *, read_only: bool = False) -> Target:
    """Work out the transport, address and CONNECT_OPEN name of a libvirt URI.

    Args:
        uri: e.g. ``storage+tcp://host:16509/system`` or
            ``storage+unix:///system?socket=/run/x.sock``.
        read_only: open the connection read-only (CONNECT_OPEN flag bit 0).

    Returns:
        The ``Target``.

    Raises:
        InvalidURI: the URI has no scheme, an unknown transport, or a unix transport with a host.
    """
    unparsable = InvalidURI(f"internal error: Unable to parse URI {uri}")
    if _not_rfc3986(uri):
        raise unparsable
    try:
        parts = split_uri(uri)
    except ValueError as exc:
        if str(exc) == "Port out of range 0-65535":  # digits libxml2 reads, but no port
            raise InvalidURI(f"cannot parse URI '{uri}': {exc}") from None
        raise unparsable from None
    if parts.netloc.rpartition("@")[2].endswith(":"):  # a port without digits
        raise unparsable
    if not parts.scheme:
        raise InvalidURI(
            f"no connection driver available for URI '{uri}' does not include a driver name"
        )
    # The driver as written: libvirt names it so to the server and in the socket's name.
    driver, _, transport = uri[: len(parts.scheme)].partition("+")
    host = _written_host(parts.netloc)
    transport = transport.lower()
    if transport and transport not in TRANSPORTS:
        raise InvalidURI(
            "invalid argument: remote_open: transport in URL not recognised"
            " (should be tls|unix|ssh|ext|tcp|libssh2|libssh)"
        )
    if not transport:
        transport = "tls" if host else "unix"
    if transport == "unix" and host:
        raise InvalidURI(
            f"invalid argument: using unix socket and remote server '{host}' is not supported."
        )
    if host is None and transport in ("tcp", "tls"):
        host = "localhost"  # libvirt's remote driver, for a URI without a server
    params = _remote_params(parts.params)
    kept = [(k, v) for k, v in parts.params if _ascii_lower(k) not in CONSUMED_PARAMS]
    if "name" in params:
        open_name = params["name"]
    elif driver == "remote":
        open_name = ""
    else:
        # libvirt keeps the "//" of the empty authority, and writes the path and the
        # fragment anew from what their escapes stand for.
        open_name = f"{driver}://{_escape(_unescape(parts.path), _PATH_KEEPS)}"
        if kept:
            open_name += "?" + format_params(kept)
        if parts.fragment:
            open_name += "#" + _escape(_unescape(parts.fragment), _FRAGMENT_KEEPS)

    flags = ConnectOpenFlags.RO if read_only else 0
    socket_path = None
    port = None
    if transport == "unix":
        # A "remote" URI names no driver: libvirtd's socket serves it.
        socket_driver = "" if driver == "remote" else driver
        socket_path = _unix_socket(socket_driver, parts.path, params, read_only=read_only)
        if parts.path == "/session" and os.geteuid() != 0:
            flags |= OPEN_USER
    else:
        port = parts.port if parts.port is not None else DEFAULT_PORTS.get(transport)
    return Target(
        uri=uri,
        transport=transport,
        host=host,
        port=port,
        socket_path=socket_path,
        open_name=open_name,
        open_flags=flags,
        pkipath=params.get("pkipath") or None,
        tls_verify=params.get("no_verify", "0") == "0",
    )


# The remote driver's parameters that hold a C int, and the values its choices take.
_INT_PARAMS = frozenset({"no_verify", "no_tty", "no_sanity"})
_MODES = ("auto", "legacy", "direct")
_PROXIES = ("auto", "netcat", "native")
_C_SPACE = " \t\n\v\f\r"


def _remote_params(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """The remote driver's own parameters, as libvirt's takes them: names in any (ASCII)
    case, the last of a name winning, each integer checked where it stands; an integer
    flag's value is given as "0" or "1".

    Raises:
        InvalidURI: an integer that is not one, or a mode or proxy libvirt does not know,
            in libvirt's words.
    """
    params = {}
    for name, value in pairs:
        key = _ascii_lower(name)
        if key in _INT_PARAMS:
            number = _c_int(value)
            if number is None:
                raise InvalidURI(f"invalid argument: Failed to parse value of URI component {name}")
            value = "0" if number == 0 else "1"
        if key in CONSUMED_PARAMS:
            params[key] = value
    mode = params.get("mode")
    if mode is not None and mode not in _MODES:
        raise InvalidURI(f"invalid argument: Unknown remote mode '{mode}'")
    proxy = params.get("proxy")
    if proxy is not None and proxy not in _PROXIES:
        # libvirt 9.0's spelling, so that scripts matching virsh's message match ours
        raise InvalidURI(f"invalid argument: Unnkown proxy type '{proxy}'")
    return params


def _ascii_lower(name: str) -> str:
    """``name`` in lower case as C's strcasecmp compares it: ASCII letters only."""
    return name.lower() if name.isascii() else name


def _c_int(text: str) -> int | None:
    """``text`` read as libvirt reads an int (strtol, base 10, all of it, in range), or
    None."""
    body = text.lstrip(_C_SPACE)
    digits = body[1:] if body[:1] in ("+", "-") else body
    if not digits.isascii() or not digits.isdigit():
        return None
    number = int(body)
    return number if -(2**31) <= number < 2**31 else None


class UriParts(Record):
    """A URI cut as ``urllib.parse.urlsplit`` cuts it, with its host, port and parameters.

    ``host`` is lower case (None when empty), ``params`` the query's pairs as
    libvirt reads them (``query_params``).
    """

    scheme: str
    netloc: str
    path: str
    query: str
    fragment: str
    host: str | None
    port: int | None
    params: tuple[tuple[str, str], ...]


def _not_rfc3986(uri: str) -> bool:
    """True for a URI libvirt's parser (libxml2's) refuses: a character RFC 3986 does
    not allow (a space, non-ASCII...), a bracket outside an IPv6 host (or a fragment),
    a second "@" in the authority or "#" in the URI, or a %-escape without two
    hexadecimal digits (outside the brackets of an IPv6 host, where "%" starts a zone:
    [fe80::1%eth0])."""
    if not _RFC3986_CHARACTERS.issuperset(uri) or uri.count("#") > 1:
        return True
    rest, _, fragment = uri.partition("#")  # brackets may stand in a fragment (XPointer)
    authority, outside = "", rest
    colon = rest.find(":")
    if colon > 0 and rest[colon + 1 : colon + 3] == "//":  # the authority follows the scheme
        start = colon + 3
        end = min((i for i in (rest.find(c, start) for c in "/?") if i >= 0), default=len(rest))
        authority, outside = rest[start:end], rest[:start] + rest[end:]
    if "[" in outside or "]" in outside or authority.count("@") > 1:
        return True
    before, bracket, after = authority.partition("[")
    if bracket:
        literal, closed, port = after.partition("]")
        # [IPv6] is the whole host: right after the user, before the port or the end.
        if not closed or before[-1:] not in ("", "@") or port[:1] not in ("", ":"):
            return True
        if "[" in literal or "]" in port:
            return True
        authority = before + port
    return any(
        not _HEX.issuperset(escape[:2]) or len(escape) < 2
        for escape in (outside + authority + fragment).split("%")[1:]
    )


def split_uri(uri: str) -> UriParts:
    """Cut ``uri`` into its parts, as urllib.parse would.

    Raises:
        ValueError: the port is not a number from 0 to 65535, or urllib.parse refuses
            the URI (as it words it).
    """
    if not _PLAIN_URI_CHARACTERS.issuperset(uri):
        return _split_with_urllib(uri)
    scheme, netloc, rest = "", "", uri
    colon = rest.find(":")
    if colon > 0 and rest[0].isalpha() and _SCHEME_CHARACTERS.issuperset(rest[:colon]):
        scheme, rest = rest[:colon].lower(), rest[colon + 1 :]
    if rest[:2] == "//":
        ends = [index for index in (rest.find("/", 2), rest.find("?", 2)) if index >= 0]
        end = min(ends) if ends else len(rest)
        netloc, rest = rest[2:end], rest[end:]
    path, _, query = rest.partition("?")
    hostname, _, port_text = netloc.rpartition("@")[2].partition(":")
    port = None
    if port_text:
        if not port_text.isdigit():
            raise ValueError(f"Port could not be cast to integer value as {port_text!r}")
        port = int(port_text)
        if port > 65535:
            raise ValueError("Port out of range 0-65535")
    return UriParts(
        scheme, netloc, path, query, "", hostname.lower() or None, port, query_params(query)
    )


def _split_with_urllib(uri: str) -> UriParts:
    import urllib.parse

    # urllib refuses a bracketed host that is no IP address ("[foo]", "[127.0.0.1]"),
    # which libvirt's parser takes and hands to the resolver: urllib is shown a stand-in.
    # The stand-in goes where the host is, not where its text first appears (the user
    # part may be written alike), and the host is put back after the netloc's last "@".
    start, literal = _bracketed_host(uri)
    if literal:
        uri = uri[:start] + _STAND_IN + uri[start + len(literal) :]
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc
    if literal:
        user, at, host_port = netloc.rpartition("@")
        netloc = user + at + literal + host_port[len(_STAND_IN) :]
    return UriParts(
        parts.scheme,
        netloc,
        parts.path,
        parts.query,
        parts.fragment,
        literal[1:-1].lower() or None if literal else parts.hostname or None,
        parts.port,
        query_params(parts.query),
    )


_STAND_IN = "[::]"


def _bracketed_host(uri: str) -> tuple[int, str]:
    """Where the "[...]" host of ``uri``'s authority starts, and the host as written;
    (0, "") when it has none."""
    colon = uri.find(":")
    if colon <= 0 or uri[colon + 1 : colon + 3] != "//":
        return 0, ""
    start = colon + 3
    end = min((i for i in (uri.find(c, start) for c in "/?#") if i >= 0), default=len(uri))
    user, at, authority = uri[start:end].rpartition("@")
    if not authority.startswith("["):
        return 0, ""
    return start + len(user + at), authority[: authority.find("]") + 1]


def query_params(query: str) -> tuple[tuple[str, str], ...]:
    """The (name, value) pairs of a URI's query, read as libvirt reads them.

    A pair ends at the next "&", or where the rest of the query holds none, at the
    next ";". "name" alone has the empty value; "=value" and empty pairs are skipped.
    Names and values lose their %-escapes, and nothing else: a "+" stays a plus (as
    in ``socket=/run/a+b``), where a web form's reading would make it a space; an
    escaped NUL ends them. A pair of "=" alone is read as libvirt reads it (see below).
    """
    params = []
    while query:
        end = query.find("&")
        if end < 0:
            end = query.find(";")
        if end < 0:
            end = len(query)
        pair, rest = query[:end], query[end + 1 :]
        if pair == "=":
            # libvirt unescapes the empty name with a length of 0, which libxml2 takes
            # for "to the end": the name is the rest of the query, "=" included.
            params.append((_unescape(query), ""))
        else:
            name, _, value = pair.partition("=")
            if name:
                params.append((_unescape(name), _unescape(value)))
        query = rest
    return tuple(params)


def _unescape(text: str) -> str:
    """``text`` without its %-escapes, cut at the first NUL (libvirt's are C strings)."""
    if "%" not in text:
        return text
    import urllib.parse  # only for an escape: its import is ~4 ms of a command

    return urllib.parse.unquote(text, errors="surrogateescape").partition("\x00")[0]


def format_params(pairs: list[tuple[str, str]]) -> str:
    """The query of the name sent to the server, as libvirt's remote driver writes it:
    ``name=value`` pairs joined by "&", each value's characters %-escaped (UTF-8,
    upper-case hex) but for RFC 3986's unreserved ones, each name as it is."""
    return "&".join(f"{name}={_escape(value, _UNRESERVED)}" for name, value in pairs)


def _escape(text: str, keeps: frozenset[str]) -> str:
    """``text`` with every character but those in ``keeps`` %-escaped (its UTF-8 bytes,
    or the bytes a surrogate escape stands for, in upper-case hex)."""
    if keeps.issuperset(text):
        return text
    return "".join(
        char
        if char in keeps
        else "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
        for char in text
    )


def _written_host(netloc: str) -> str | None:
    """The host of an authority as libvirt takes it: without user and port, in the case
    it is written in, its %-escapes undone (None when empty); brackets are dropped only
    around a host with a colon (an IPv6 address), as libvirt drops them: "[foo]" is
    looked up as it is written, brackets and all."""
    host_port = netloc.rpartition("@")[2]
    if host_port.startswith("["):
        literal = host_port[: host_port.find("]") + 1]
        host = literal[1:-1] if ":" in literal else literal
    else:
        host = host_port.partition(":")[0]
    return _unescape(host) or None
