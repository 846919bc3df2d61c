"""libvirt's client configuration file: ``uri_default`` and ``uri_aliases``.

libvirt's library reads ``/etc/libvirt/libvirt.conf`` when the process runs
as root, and ``$XDG_CONFIG_HOME/libvirt/libvirt.conf`` (``~/.config/...``)
otherwise; never both. Two of its settings decide where a client connects:

* ``uri_default = "URI"``: the URI used when none is given and
  ``LIBVIRT_DEFAULT_URI`` is unset;
* ``uri_aliases = [ "name=URI", ... ]``: a URI (given or default) that equals
  an alias name is replaced by its URI. Alias names use ``a-z A-Z 0-9 _ -``.

The file uses libvirt's configuration syntax: ``key = value`` lines, values
being quoted strings, integers or ``[ ... ]`` lists (which may span lines),
``#`` comments. Only what these two settings need is read; other keys are
skipped.
"""

from __future__ import annotations

import functools
import os

from virtvol.client.errors import InvalidURI
from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record

if TYPE_CHECKING:
    import re

__all__ = ["ClientConfig", "config_path", "load_client_config"]

_ALIAS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_TOKEN = (
    r"""\s+|\#[^\n]*|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<string>"[^"\n]*"|'[^'\n]*')"""
    r"""|(?P<number>-?\d+)|(?P<punct>[=\[\],;])"""
)


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    # Imported when a file has settings: re is ~2 ms of a command's start-up, and
    # the file as installed holds comments only.
    import re

    return re.compile(_TOKEN)


def _holds_nothing(text: str) -> bool:
    """True for blank lines and comments only: there is nothing to read."""
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.split("\n"))


class ClientConfig(Record):
    """The settings of libvirt's client configuration that choose the URI.

    Attributes:
        path: the file read (None when there was none).
        uri_default: ``uri_default``, or None.
        uri_aliases: ``uri_aliases`` entries as written (``name=URI``).
    """

    path: str | None
    uri_default: str | None
    uri_aliases: tuple[str, ...]

    def resolve_alias(self, uri: str) -> str:
        """``uri`` itself, or the URI of the alias it names.

        Raises:
            InvalidURI: a malformed ``uri_aliases`` entry was met before a match.
        """
        for entry in self.uri_aliases:
            name, equals, target = entry.partition("=")
            if not equals:
                raise InvalidURI(
                    f"Malformed 'uri_aliases' config entry '{entry}', "
                    "expected 'alias=uri://host/path'"
                )
            if not set(name) <= _ALIAS_CHARS:
                raise InvalidURI(
                    f"Malformed 'uri_aliases' config entry '{entry}', "
                    "aliases may only contain 'a-Z, 0-9, _, -'"
                )
            if name == uri:
                return target
        return uri


def config_path() -> str:
    """Where libvirt's library looks for its client configuration, for this process."""
    if os.geteuid() == 0:
        return "/etc/libvirt/libvirt.conf"
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "libvirt", "libvirt.conf")


def _values(text: str, path: str) -> dict[str, str | list[str] | int]:
    if _holds_nothing(text):
        return {}
    tokens: list[tuple[str, str]] = []
    pos = 0
    pattern = _token_pattern()
    while pos < len(text):
        match = pattern.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise InvalidURI(f"{path}:{line}: cannot read the configuration near {text[pos]!r}")
        pos = match.end()
        if match.lastgroup is not None:
            tokens.append((match.lastgroup, match.group()))
    values: dict[str, str | list[str] | int] = {}
    i = 0

    def bad(what: str) -> InvalidURI:
        return InvalidURI(f"{path}: configuration syntax error: {what}")

    while i < len(tokens):
        kind, name = tokens[i]
        if kind == "punct" and name == ";":
            i += 1
            continue
        if kind != "name" or i + 2 > len(tokens) or tokens[i + 1] != ("punct", "="):
            raise bad(f"expected 'name = value' at '{name}'")
        i += 2
        if i >= len(tokens):
            raise bad(f"no value for '{name}'")
        kind, token = tokens[i]
        i += 1
        if kind == "string":
            values[name] = token[1:-1]
        elif kind == "number":
            values[name] = int(token)
        elif token == "[":
            items: list[str] = []
            while i < len(tokens) and tokens[i] != ("punct", "]"):
                kind, token = tokens[i]
                if kind == "string":
                    items.append(token[1:-1])
                elif token != ",":
                    raise bad(f"unexpected '{token}' in the list '{name}'")
                i += 1
            if i >= len(tokens):
                raise bad(f"unterminated list '{name}'")
            i += 1
            values[name] = items
        else:
            raise bad(f"unexpected '{token}' after '{name} ='")
    return values


def load_client_config(path: str | os.PathLike[str] | None = None) -> ClientConfig:
    """Read libvirt's client configuration (``config_path()`` unless ``path`` is given).

    A missing file is an empty configuration.

    Raises:
        InvalidURI: the file cannot be parsed, or a setting has the wrong type.
    """
    where = os.fspath(path) if path is not None else config_path()
    try:
        with open(where, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except FileNotFoundError:
        return ClientConfig(None, None, ())
    except OSError as exc:
        raise InvalidURI(f"cannot read {where}: {exc.strerror or exc}") from exc
    values = _values(text, where)
    default = values.get("uri_default")
    aliases = values.get("uri_aliases", [])
    if default is not None and not isinstance(default, str):
        raise InvalidURI(f"{where}: uri_default must be a string")
    if not isinstance(aliases, list):
        raise InvalidURI(f"{where}: uri_aliases must be a list of strings")
    return ClientConfig(where, default or None, tuple(aliases))
