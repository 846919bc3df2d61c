"""libvirt's client configuration file: ``uri_default`` and ``uri_aliases``.

libvirt's library reads ``/etc/libvirt/libvirt.conf`` when the process runs
as root, and ``$XDG_CONFIG_HOME/libvirt/libvirt.conf`` (``~/.config/...``)
otherwise; never both. Two of its settings decide where a client connects:

* ``uri_default = "URI"``: the URI used when none is given and
  ``LIBVIRT_DEFAULT_URI`` is unset;
* ``uri_aliases = [ "name=URI", ... ]``: a URI (given or default) that equals
  an alias name is replaced by its URI. Alias names use ``a-z A-Z 0-9 _ -``.

The file is read as libvirt's configuration parser reads it, and refused where
it refuses it, in its words (``configuration file syntax error: FILE:LINE:
expecting a separator``), whichever URI is opened: ``name = value``
statements apart at line ends or ``;``, names of ASCII letters, digits and
``_`` (a letter first), values that are strings (``"..."`` or ``'...'`` on one
line, three double quotes across lines), numbers (a sign, digits) or ``[ ... ]``
lists (which may span lines, but hold no comments), ``#`` comments. The first
statement of a name counts. A setting of the wrong type is refused only when
it is used: ``uri_default`` when no URI is given, ``uri_aliases`` when there
is a URI to resolve.
"""

from __future__ import annotations

import os

from virtvol.client.errors import InvalidURI
from virtvol.protocol.record import Record

__all__ = ["ClientConfig", "config_path", "load_client_config"]

_ALIAS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_CHARS = _LETTERS | frozenset("0123456789_")
_DIGITS = frozenset("0123456789")
_BLANKS = " \t"
_ENDS_OF_LINE = "\r\n"


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
    # libvirt's refusal of a setting of the wrong type, said when the setting is used.
    default_refused: str | None = None
    aliases_refused: str | None = None

    def default(self) -> str | None:
        """``uri_default``, as libvirt takes it when no URI is given.

        Raises:
            InvalidURI: it is not a string, or it is empty (which libvirt takes for a
                URI naming no driver).
        """
        if self.default_refused is not None:
            raise InvalidURI(self.default_refused)
        if self.uri_default == "":
            raise InvalidURI(
                "no connection driver available for URI '(null)' does not include a driver name"
            )
        return self.uri_default

    def resolve_alias(self, uri: str) -> str:
        """``uri`` itself, or the URI of the alias it names.

        Raises:
            InvalidURI: ``uri_aliases`` is not a list of strings, or a malformed entry
                was met before a match.
        """
        if self.aliases_refused is not None:
            raise InvalidURI(self.aliases_refused)
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


class _Parser:
    """libvirt's configuration grammar over ``text``, one statement at a time, with its
    line count and its messages. ``text`` ends as a C string does, at an implicit NUL,
    which no rule takes (a file of blanks alone "expects a name", as in libvirt)."""

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.pos = 0
        self.line = 1

    def error(self, what: str) -> InvalidURI:
        return InvalidURI(f"configuration file syntax error: {self.path}:{self.line}: {what}")

    def char(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else "\0"

    def skip_blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _BLANKS:
            self.pos += 1

    def skip_blanks_and_lines(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _BLANKS + _ENDS_OF_LINE:
            self.line += self.text[self.pos] == "\n"
            self.pos += 1

    def skip_to_line_end(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] not in _ENDS_OF_LINE:
            self.pos += 1

    def statements(self) -> dict[str, object]:
        """Each name's first value."""
        values: dict[str, object] = {}
        while self.pos < len(self.text):
            statement = self.statement()
            if statement is not None:
                values.setdefault(*statement)
            self.separator()
        return values

    def statement(self) -> tuple[str, object] | None:
        self.skip_blanks_and_lines()
        if self.char() == "#":
            self.skip_to_line_end()
            return None
        if self.char() not in _LETTERS:
            raise self.error("expecting a name")
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _NAME_CHARS:
            self.pos += 1
        name = self.text[start : self.pos]
        self.skip_blanks()
        if self.char() != "=":
            raise self.error("expecting an assignment")
        self.pos += 1
        self.skip_blanks()
        value = self.value()
        self.skip_blanks()
        if self.char() == "#":
            self.skip_to_line_end()
        return name, value

    def separator(self) -> None:
        self.skip_blanks()
        if self.pos >= len(self.text):
            return
        if self.char() == ";":
            self.pos += 1
        elif self.char() not in _ENDS_OF_LINE:
            raise self.error("expecting a separator")
        self.skip_blanks_and_lines()

    def value(self) -> object:
        self.skip_blanks()
        if self.pos >= len(self.text):
            raise self.error("expecting a value")
        first = self.char()
        if first in "'\"":
            return self.quoted()
        if first == "[":
            return self.bracketed()
        if first in _DIGITS or first in "+-":
            return self.signed_number()
        raise self.error("expecting a value")

    def quoted(self) -> str:
        text = self.text
        if text.startswith('"""', self.pos) and self.pos + 6 < len(text):
            start = self.pos = self.pos + 3
            while self.pos + 2 < len(text) and not text.startswith('"""', self.pos):
                self.line += text[self.pos] == "\n"
                self.pos += 1
            if not text.startswith('"""', self.pos):
                raise self.error("unterminated string")
            self.pos += 3
            return text[start : self.pos - 3]
        quote = text[self.pos]
        start = self.pos = self.pos + 1
        while self.pos < len(text) and text[self.pos] not in quote + _ENDS_OF_LINE:
            self.pos += 1
        if self.char() != quote:
            raise self.error("unterminated string")
        self.pos += 1
        return text[start : self.pos - 1]

    def signed_number(self) -> int:
        sign = -1 if self.char() == "-" else 1
        if self.char() in "+-":
            self.pos += 1
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _DIGITS:
            self.pos += 1
        if self.pos == start:
            raise self.error("unterminated number")
        return sign * int(self.text[start : self.pos])

    def bracketed(self) -> list[object]:
        # Lists are read with a stack of the open ones, not by recursion: a file may nest
        # them deeper than Python recurses ("x = [[[[..."), and libvirt reads it.
        outer: list[list[object]] = []
        items: list[object] = []
        self.pos += 1
        self.skip_blanks_and_lines()
        want_value = self.pos < len(self.text) and self.char() != "]"
        while True:
            if want_value:
                want_value = False
                self.skip_blanks()
                if self.char() == "[":
                    outer.append(items)
                    items = []
                    self.pos += 1
                    self.skip_blanks_and_lines()
                    want_value = self.pos < len(self.text) and self.char() != "]"
                    continue
                items.append(self.value())  # not a list: value() does not come back here
                self.skip_blanks_and_lines()
            if self.pos < len(self.text) and self.char() != "]":
                if self.char() != ",":
                    raise self.error("expecting a separator in list")
                self.pos += 1
                self.skip_blanks_and_lines()
                if self.char() != "]":
                    want_value = True
                    continue
            if self.char() != "]":
                raise self.error("list is not closed with ]")
            self.pos += 1
            if not outer:
                return items
            inner, items = items, outer.pop()
            items.append(inner)
            self.skip_blanks_and_lines()


# libvirt reads a configuration file of up to 10 MiB.
_MAX_FILE = 10 * 1024 * 1024


def _read_whole(path: str) -> bytes:
    """The file's bytes, or libvirt's words for why not ("Failed to open file" when the
    open fails, "Failed to read file" when the reading does: a folder, which opens as in
    C, or a file over 10 MiB)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidURI(f"Failed to open file '{path}': {_reason(exc)}") from None
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= _MAX_FILE:
            chunk = os.read(fd, _MAX_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InvalidURI(f"Failed to read file '{path}': {_reason(exc)}") from None
    finally:
        os.close(fd)
    if size > _MAX_FILE:
        import errno

        raise InvalidURI(f"Failed to read file '{path}': {os.strerror(errno.EOVERFLOW)}")
    return b"".join(chunks)


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def load_client_config(path: str | os.PathLike[str] | None = None) -> ClientConfig:
    """Read libvirt's client configuration (``config_path()`` unless ``path`` is given).

    A missing file, or one out of reach (``access`` fails), is an empty configuration.

    Raises:
        InvalidURI: the file cannot be opened, read or parsed.
    """
    where = os.fspath(path) if path is not None else config_path()
    # libvirt reads the file only if access() finds it: one out of reach (a home folder
    # this user may not enter) is no file, not a failure.
    if not os.access(where, os.F_OK):
        return ClientConfig(None, None, ())
    text = _read_whole(where).decode("utf-8", "surrogateescape")
    values = _Parser(text, where).statements() if text else {}
    default = values.get("uri_default")
    aliases = values.get("uri_aliases", [])
    default_refused = aliases_refused = None
    if default is not None and not isinstance(default, str):
        default_refused = f"internal error: {where}: expected a string for 'uri_default' parameter"
        default = None
    if not isinstance(aliases, list):
        aliases_refused = (
            f"internal error: {where}: expected a string list for 'uri_aliases' parameter"
        )
        aliases = []
    elif not all(isinstance(alias, str) for alias in aliases):
        aliases_refused = (
            f"configuration file syntax error: {where}: expected a string list for"
            " 'uri_aliases' parameter"
        )
        aliases = []
    return ClientConfig(
        where,
        default,
        tuple(str(alias) for alias in aliases),
        default_refused=default_refused,
        aliases_refused=aliases_refused,
    )
