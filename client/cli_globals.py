"""The options before a ``virtvol`` command, read as virsh reads its own.

virsh uses getopt_long for them: short options may be grouped (``-qr``) and take
their value attached or as the next word (``-cURI``, ``-c URI``); long options
may be abbreviated while unambiguous (``--conn=URI``). Reading stops at the
first word that is not an option: the command.
"""

from __future__ import annotations

from virtvol.client.cli_args import ArgumentError
from virtvol.client.sizes import C_BLANKS
from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["USAGE", "Globals", "read_globals", "version_text"]

USAGE = """\
virtvol [options]... <command> [args...]

  options:
    -c | --connect=URI      the daemon to talk to (libvirt URI or alias)
    -e | --escape <char>    checked as virsh checks it; virtvol has no console
    -h | --help             this help
    -k | --keepalive-interval=SECONDS
                            silence before a keepalive ping (0: no pings)
    -K | --keepalive-count=NUM
                            unanswered pings before giving the daemon up
    -q | --quiet            quiet mode: no table headers, notices, progress or summary
    -r | --readonly         open the connection read-only
    -t | --timing           how long each command took
    -v                      short version
    -V                      long version
         --version[=TYPE]   version, TYPE is short or long (default short)
         --protocol=MODE    current, or legacy to act as a client without sparse
                            streams (virtvol only)

  commands (see 'virtvol help' and 'virtvol help COMMAND'):
"""


class Globals:
    """The options before the command, read as virsh reads its own (getopt)."""

    __slots__ = (
        "connect",
        "keepalive_count",
        "keepalive_interval",
        "protocol",
        "quiet",
        "readonly",
        "show",
        "timing",
    )

    def __init__(self) -> None:
        self.connect: str | None = None
        # None: the connection's own (``-k``/``-K`` not given).
        self.keepalive_interval: int | None = None
        self.keepalive_count: int | None = None
        self.quiet = False
        self.readonly = False
        self.timing = False
        self.protocol = "current"
        self.show: str | None = None  # "help", "version-short", "version-long"


_SHORT_FLAGS = {
    "q": "quiet",
    "r": "readonly",
    "t": "timing",
    "h": "help",
    "v": "version-short",
    "V": "version-long",
}
_LONG = (
    "connect",
    "escape",
    "keepalive-interval",
    "keepalive-count",
    "quiet",
    "readonly",
    "timing",
    "help",
    "version",
    "protocol",
)
# The options that take a number, by their letter.
_NUMBERS = {"k": "keepalive-interval", "K": "keepalive-count"}
_INT_MAX = 2**31 - 1


def _c_int(text: str) -> int | None:
    """``text`` read as C's strtol reads an int (base 0: blanks before it, a sign, ``0x``
    for hex, ``0`` for octal), the whole text; None for anything else or out of range."""
    body = text.lstrip(C_BLANKS)
    sign = -1 if body.startswith("-") else 1
    body = body[1:] if body[:1] in "+-" else body
    base = 10
    if body[:2].lower() == "0x" and len(body) > 2:
        base, body = 16, body[2:]
    elif body.startswith("0") and len(body) > 1:
        base, body = 8, body[1:]
    digits = "0123456789abcdef"[:base]
    if not body or any(char not in digits for char in body.lower()):
        return None
    number = sign * int(body, base)
    return number if -_INT_MAX - 1 <= number <= _INT_MAX else None


def read_globals(argv: Sequence[str]) -> tuple[Globals, list[str]]:
    """Read the options before the command; returns them and the command with its words.

    Raises:
        ArgumentError: an unknown option, or one without its value.
    """
    found = Globals()
    i = 0

    def value_of(name: str, attached: str | None) -> str:
        nonlocal i
        if attached is not None:
            return attached
        if i >= len(argv):
            letters = {
                "connect": "c",
                "escape": "e",
                **{long: short for short, long in _NUMBERS.items()},
            }
            short = f"'-{letters[name]}'/" if name in letters else ""
            raise ArgumentError(f"option {short}'--{name}' requires an argument")
        i += 1
        return argv[i - 1]

    def number(spelling: str, text: str) -> int:
        value = _c_int(text)
        if value is None:
            raise ArgumentError(f"Invalid value for option {spelling}")
        if value < 0:
            raise ArgumentError(f"option {spelling} requires a positive integer argument")
        return value

    def keepalive(long: str, spelling: str, text: str) -> None:
        if long == "keepalive-interval":
            found.keepalive_interval = number(spelling, text)
        else:
            found.keepalive_count = number(spelling, text)

    def flag(name: str) -> None:
        if name == "quiet":
            found.quiet = True
        elif name == "readonly":
            found.readonly = True
        elif name == "timing":
            found.timing = True
        else:
            found.show = name

    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            break
        if word.startswith("--"):
            name, equals, attached = word[2:].partition("=")
            matches = [n for n in _LONG if n.startswith(name)] if name else []
            if name in _LONG:
                matches = [name]
            if len(matches) != 1:
                raise ArgumentError(f"unsupported option '{word}'. See --help.")
            long = matches[0]
            if long == "connect":
                found.connect = value_of("connect", attached if equals else None)
            elif long == "escape":
                _check_escape(value_of("escape", attached if equals else None))
            elif long in _NUMBERS.values():
                keepalive(long, f"--{long}", value_of(long, attached if equals else None))
            elif long == "protocol":
                found.protocol = value_of("protocol", attached if equals else None)
                if found.protocol not in ("current", "legacy"):
                    raise ArgumentError(f"unknown protocol '{found.protocol}' (current, legacy)")
            elif long == "version":
                kind = "long" if equals and attached == "long" else "short"
                found.show = f"version-{kind}"
            elif equals:  # virsh names the option by its letter then
                letter = next(short for short, name in _SHORT_FLAGS.items() if name == long)
                raise ArgumentError(f"unsupported option '-{letter}'. See --help.")
            else:
                flag(long)
            if found.show is not None:  # virsh shows it at once: the rest is not read
                return found, []
            continue
        if word.startswith("-") and len(word) > 1:
            letters = word[1:]
            while letters:
                letter, letters = letters[0], letters[1:]
                if letter == "c":
                    if letters:
                        found.connect, letters = letters, ""
                    else:
                        found.connect = value_of("connect", None)
                elif letter == "e":
                    _check_escape(letters or value_of("escape", None))
                    letters = ""
                elif letter in _NUMBERS:
                    text, letters = letters or value_of(_NUMBERS[letter], None), ""
                    keepalive(_NUMBERS[letter], f"-{letter}", text)
                elif letter in _SHORT_FLAGS:
                    flag(_SHORT_FLAGS[letter])
                    if found.show is not None:
                        return found, []
                else:
                    raise ArgumentError(f"unsupported option '-{letter}'. See --help.")
            continue
        return found, [word, *argv[i:]]
    return found, list(argv[i:])


# What may follow ``^`` in an escape: a letter, or one of ``@[\]^_`` (``^]`` is Ctrl-]).
_CONTROL_LETTERS = frozenset(b"abcdefghijklmnopqrstuvwxyz@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_")


def _check_escape(text: str) -> None:
    """virsh's console escape: one byte but ``^``, or ``^`` and a control letter. virtvol
    has no console, so it is only checked, as virsh checks it whatever the command."""
    escape = text.encode("utf-8", "surrogateescape")
    if escape.startswith(b"^"):
        valid = len(escape) == 2 and escape[1] in _CONTROL_LETTERS
    else:
        valid = len(escape) == 1
    if not valid:
        raise ArgumentError(f"Invalid string '{text}' for escape sequence")


def version_text(kind: str) -> str:
    """``--version`` (``short``: the number alone, as ``virsh --version``) or ``-V`` (``long``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("virtvol")
    except PackageNotFoundError:  # pragma: no cover - run from a tree that was never installed
        number = "unknown"
    if kind == "short":
        return number + "\n"
    return (
        f"virtvol {number}: virsh's storage commands over libvirt's RPC protocol\n"
        "for storage pools and volumes (libvirt 9.0 wire protocol)\n"
    )
