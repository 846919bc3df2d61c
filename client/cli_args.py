"""Command arguments as virsh reads them, and virsh-style help for them.

virsh does not use getopt for a command's arguments; its rules, which this
module follows (checked against virsh 9.0):

* ``--name value`` and ``--name=value`` for options that take a value (a name begins
  with a letter or digit: ``---x`` is a value),
  ``--name`` alone for flags (``--flag=x`` is an error); names are never
  abbreviated, and an option may appear once;
* any other word fills the next option that takes a value and has not been
  given yet, in the order the command declares them: ``vol-info X P`` is
  ``vol-info --vol X --pool P``; after ``--`` every word is such a value;
* a command's required options must all be present; exclusive options are
  refused when the command runs (``check_exclusive``), as virsh does.

virtvol's own: ``--quiet`` where an option's name may stand is the ``-q`` given before
the command (virsh takes it there only); where virsh reads a value (``--vol --quiet``,
after ``--``), it is that value.

The error texts are virsh's, so that a typo reads the same in both.
"""

from __future__ import annotations

from virtvol.protocol.hints import TYPE_CHECKING
from virtvol.protocol.record import Record

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Literal, TypeAlias

__all__ = [
    "ArgumentError",
    "Arguments",
    "Command",
    "Option",
    "check_exclusive",
    "check_late_option",
    "check_not_empty",
    "format_command_help",
    "read_arguments",
    "split_command_string",
]

Kind: TypeAlias = 'Literal["bool", "string", "number"]'


class ArgumentError(Exception):
    """A command line virsh would refuse; the message is virsh's."""


class Option(Record):
    """One option of a command.

    Attributes:
        name: the option's name without ``--``.
        help: one line for ``help COMMAND``.
        kind: ``"bool"`` (a flag), ``"string"`` or ``"number"`` (takes a value).
        required: the command cannot run without it (shown as ``<name>``).
        extension: virtvol's own option, which virsh does not have.
        empty_ok: an empty text is a value (virsh refuses it for most options).
        late: virsh reads it only after looking the volume up, so a missing volume is
            said before an empty value (the command checks it: ``check_late_option``).
    """

    name: str
    help: str
    kind: Kind = "string"
    required: bool = False
    extension: bool = False
    empty_ok: bool = False
    late: bool = False

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


class Command(Record):
    """A command: its name, what it does, its options and their exclusions.

    Attributes:
        name: e.g. ``"vol-upload"``.
        summary: one line for ``help``.
        description: the paragraph of ``help COMMAND``.
        group: the help keyword of its group (``"pool"`` or ``"volume"``).
        options: in declaration order (the order positional words fill them).
        exclusive: pairs of options that may not be given together.
    """

    name: str
    summary: str
    description: str
    group: str
    options: tuple[Option, ...]
    exclusive: tuple[tuple[str, str], ...] = ()

    def option(self, name: str) -> Option | None:
        for opt in self.options:
            if opt.name == name:
                return opt
        return None


def _is_option(word: str) -> bool:
    """virsh takes a word for an option's name when a letter or digit (ASCII) follows its
    ``--``: ``--=x``, ``---`` or ``--_x`` is a value."""
    return word.startswith("--") and word[2:3].isascii() and word[2:3].isalnum()


class Arguments(Record):
    """A command's words as ``read_arguments`` read them.

    ``values``: every option's ``dest``: True/False for flags, the text or None for the
    others. ``help_asked``: the words hold ``--help``, virsh's flag of every command,
    which shows the command's help instead of running it: the words must read as the
    command's all the same (``--foo --help`` is refused for ``--foo``), but its required
    options may then be missing. ``quiet``: virtvol's own ``--quiet`` stood where an
    option may (see the module's docstring).
    """

    values: dict[str, object]
    help_asked: bool
    quiet: bool


def read_arguments(
    command: Command,
    words: Sequence[str],
    *,
    overlooked: list[str] | None = None,
) -> Arguments:
    """Read ``words`` (what follows the command's name) as virsh would.

    With ``overlooked`` (virsh's reading of its ``help`` command's words), an unknown
    option and a word with no option left to fill are passed over, and so is an option
    given again, after ``overlooked`` got virsh's complaint about it.

    Raises:
        ArgumentError: with virsh's message.
    """
    given: dict[str, object] = {}
    help_asked = quiet = False
    only_values = False
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not only_values and word == "--":
            only_values = True
            continue
        if not only_values and _is_option(word):
            name, equals, value = word[2:].partition("=")
            if name == "help":
                if equals:
                    raise ArgumentError("invalid '=' after option --help")
                help_asked = True
                continue
            opt = command.option(name)
            if opt is None and word == "--quiet":
                quiet = True
                continue
            if opt is None:
                if overlooked is not None:
                    continue
                raise ArgumentError(f"command '{command.name}' doesn't support option --{name}")
            if opt.name in given:
                if overlooked is not None:
                    overlooked.append(f"option --{opt.name} already seen")
                    continue
                raise ArgumentError(f"option --{opt.name} already seen")
            if opt.kind == "bool":
                if equals:
                    raise ArgumentError(f"invalid '=' after option --{opt.name}")
                given[opt.name] = True
                continue
            if not equals:
                if i >= len(words):
                    raise ArgumentError(f"expected syntax: --{opt.name} <{opt.kind}>")
                value = words[i]
                i += 1
            given[opt.name] = value
            continue
        target = next(
            (o for o in command.options if o.kind != "bool" and o.name not in given), None
        )
        if target is None:
            if overlooked is not None:
                continue
            raise ArgumentError(f"unexpected data '{word}'")
        given[target.name] = word
    for opt in command.options:
        if opt.required and opt.name not in given and not help_asked:
            raise ArgumentError(f"command '{command.name}' requires <{opt.name}> option")
    values = {
        opt.dest: given.get(opt.name, False if opt.kind == "bool" else None)
        for opt in command.options
    }
    return Arguments(values, help_asked, quiet)


# What virsh's reading of a command string gives a meaning to; a word without any of
# them is one command of one word.
_COMMAND_STRING_SIGNS = frozenset(" \t\n;#'\"\\")


def split_command_string(text: str) -> Iterator[list[str]]:
    """The commands of ``text``, one word of virsh's command line (``virsh 'a x; b'``),
    each as its words, read as virsh reads them (observed with virsh 9.0):

    * words are apart at blanks (spaces, tabs, a backslash before a new line);
    * a command ends at ``;`` or a new line; a word beginning with ``#`` begins a
      comment, which ends the command and runs to the end of the line; a command whose
      first word begins with ``#`` once read (``'#x'``, ``\\#x``) is a comment to the
      command's end, where a ``"`` left open is no error;
    * ``'...'`` is taken as it is; a backslash outside it takes the next character as
      it is, or joins the lines around it; ``"..."`` keeps blanks, ``;`` and ``'``;
      a quote left open is closed by the end of the text, a ``"`` excepted.

    Raises:
        ArgumentError: ``missing "`` or ``dangling \\`` (when reading that command).
    """
    if not _COMMAND_STRING_SIGNS.intersection(text):
        yield [text]
        return
    end = len(text)
    pos = 0
    words: list[str] = []
    commented = False  # the command's first word began with '#'
    while True:
        while pos < end and (text[pos] in " \t" or text.startswith("\\\n", pos)):
            pos += 2 if text[pos] == "\\" else 1
        if pos == end:
            break
        if text[pos] in ";\n#":
            if text[pos] == "#":
                newline = text.find("\n", pos)
                pos = end if newline < 0 else newline
            pos = min(pos + 1, end)
            if words:
                yield words
            words = []
            commented = False
            continue
        word, pos = _read_word(text, pos, open_quote_ends=commented)
        if commented:
            continue
        if not words and word.startswith("#"):
            commented = True
            continue
        words.append(word)
    if words:
        yield words


def _read_word(text: str, pos: int, *, open_quote_ends: bool = False) -> tuple[str, int]:
    """The word beginning at ``pos`` of a command string, and where it ends
    (``open_quote_ends``: a ``"`` left open is closed by the end of the text)."""
    chars: list[str] = []
    single = double = False
    end = len(text)
    while pos < end:
        char = text[pos]
        if not (single or double) and char in " \t;\n":
            break
        pos += 1
        if char == "'" and not double:
            single = not single
            continue
        if char == '"' and not single:
            double = not double
            continue
        if char == "\\" and not single:
            if pos == end:
                raise ArgumentError("dangling \\")
            char = text[pos]
            pos += 1
            if char == "\n":
                continue
        chars.append(char)
    if double and not open_quote_ends:
        raise ArgumentError('missing "')
    return "".join(chars), pos


def check_exclusive(command: Command, values: dict[str, object]) -> None:
    """virsh checks exclusive options when the command runs (after connecting).

    Raises:
        ArgumentError: two exclusive options were both given.
    """
    for first, second in command.exclusive:
        if values.get(first.replace("-", "_")) and values.get(second.replace("-", "_")):
            raise ArgumentError(f"Options --{first} and --{second} are mutually exclusive")


def check_not_empty(command: Command, values: dict[str, object]) -> None:
    """virsh refuses an empty text for an option that takes one, when the command runs
    (after connecting), unless the option allows it.

    Raises:
        ArgumentError: the first such option, in declaration order.
    """
    for opt in command.options:
        if opt.kind == "string" and not (opt.empty_ok or opt.late):
            check_late_option(opt.name, values.get(opt.dest))


def check_late_option(name: str, value: object) -> None:
    """virsh's refusal of an empty text for option ``name``, when it reads it.

    Raises:
        ArgumentError: ``value`` is empty.
    """
    if value == "":
        raise ArgumentError(f"Failed to get option '{name}': Option argument is empty")


def _synopsis_part(opt: Option) -> str:
    if opt.kind == "bool":
        return f"[--{opt.name}]"
    if opt.required:
        return f"<{opt.name}>"
    return f"[--{opt.name} <{opt.kind}>]"


def _option_label(opt: Option) -> str:
    if opt.kind == "bool":
        return f"--{opt.name}"
    if opt.required:
        return f"[--{opt.name}] <{opt.kind}>"
    return f"--{opt.name} <{opt.kind}>"


def format_command_help(command: Command) -> str:
    """``help COMMAND`` in virsh's layout: NAME, SYNOPSIS, DESCRIPTION, OPTIONS."""
    lines = [
        "  NAME",
        f"    {command.name} - {command.summary}",
        "",
        "  SYNOPSIS",
        "    " + " ".join([command.name, *(_synopsis_part(o) for o in command.options)]),
        "",
        "  DESCRIPTION",
        f"    {command.description}",
        "",
    ]
    if command.options:
        lines.append("  OPTIONS")
        for opt in command.options:
            note = " (virtvol only)" if opt.extension else ""
            lines.append(f"    {_option_label(opt):<15}  {opt.help}{note}")
        lines.append("")
    return "\n".join(lines) + "\n"
