"""Commands given as one word, as virsh reads them: ``virtvol 'vol-path v default;
vol-key v default'``. The words of each command are split at blanks, quotes and
backslashes as a shell would (without its expansions), commands end at ``;`` or a new
line, and ``#`` begins a comment; every command is read before the first runs. Compared
with virsh itself against one real libvirtd."""

from __future__ import annotations

import pytest

from tests.client.test_cli_spellings import run_in_c_locale, run_virtvol, same
from tests.conftest import ReferenceLibvirtd, free_port, run_virsh

pytestmark = pytest.mark.interop


def both(*args: str) -> None:
    same(run_virtvol(*args), run_in_c_locale(["virsh", *args]))


def test_a_command_string_is_read_and_run_as_virsh_does(
    reference_libvirtd: ReferenceLibvirtd,
) -> None:
    uri = reference_libvirtd.tcp_uri
    run_virsh(uri, "vol-create-as", "default", "v1", "1M")
    for text in (
        "pool-list --all",
        "pool-uuid default; vol-path v1 default",
        "vol-info v1 default;vol-key v1 default;",
        ";  vol-info v1 default   ;  ; pool-uuid default  ",
        # The status is the last command's.
        "pool-name nope; pool-uuid default",
        "pool-uuid default; pool-name nope",
        "pool-list --all --inactive; pool-uuid default",
        # A command line refused anywhere: nothing runs.
        "pool-uuid default; nope; pool-uuid default",
        "pool-uuid default; vol-info --bogus",
        "pool-uuid default; vol-info v1 default extra",
        "pool-uuid default; pool-uuid",
        # Quotes and backslashes.
        'vol-path "v1" default',
        "vol-path 'v1' 'def'ault",
        'vol-path v\\1 "d\\ef"ault',
        'pool-uuid "def ault"',
        "pool-uuid 'de\\fault'",
        "pool-uuid 'de;fault",
        'pool-uuid "de\\"fault"',
        'pool-uuid --pool=def"au"lt',
        'vol-info v1 "--pool" default',
        "vol-info v1 -- default",
        'vol-info v1 "" default',
        'pool-uuid ""',
        'pool-uuid "default',
        "pool-uuid default\\",
        'nope; pool-uuid "x',
        # Comments, new lines and continued lines.
        "pool-uuid default # the UUID\npool-uuid default",
        "pool-uuid default;#x;pool-uuid default",
        "pool-uuid #x",
        "pool-uuid de#fault",
        # A first word beginning with '#' once read: a comment to the command's end.
        "'#x' pool-destroy default; pool-uuid default",
        "\\#x pool-name nope; pool-uuid default",
        '"#" "a;b"; pool-uuid default',
        "'#x' \"a; pool-destroy default",
        "'#x' \"a; pool-uuid default\"; pool-name nope",
        "'#x' a\\",
        "pool-uuid default; '#' x\npool-uuid default",
        "pool-uuid \\\n default",
        "pool-uuid de\\\nfault\tdefault",
        "pool-uuid default\r",
        # quit and exit end the commands, with status 0.
        "pool-uuid default; quit; pool-uuid default",
        "pool-name nope; exit",
        "quit; nope",
        "exit extra",
        # Nothing to run.
        "",
        " ",
        ";",
        "# nothing",
    ):
        both("-c", uri, text)
        both("-q", "-c", uri, text)


def test_a_command_line_of_several_words_is_read_as_virsh_does(
    reference_libvirtd: ReferenceLibvirtd,
) -> None:
    # Several words are the command and its words as they are: no ';', quote or '#'
    # in them means anything (a volume named so is that volume), but a first word
    # beginning with '#', which virsh takes for a comment: nothing runs.
    uri = reference_libvirtd.tcp_uri
    name = "a; pool-destroy default"
    run_virsh(uri, "vol-create-as", "default", name, "1M")
    for words in (
        ["vol-info", name, "--pool", "default"],
        ["vol-path", "--pool", "default", name],
        ["pool-uuid", "default;", "pool-destroy"],
        ["pool-uuid", "'default'"],
        ["pool-uuid", "#default"],
        ["#", "pool-destroy", "default"],
        ["#x", "pool-destroy", "default"],
        ["pool-uuid;", "default"],
    ):
        both("-c", uri, *words)
    assert "running" in run_virsh(uri, "pool-info", "default").stdout


def test_a_command_string_needs_its_connection_first() -> None:
    # virsh connects once, before the first command: a daemon out of reach runs none.
    uri = f"storage+tcp://127.0.0.1:{free_port()}/system"
    both("-c", uri, "pool-uuid a; pool-uuid b")


@pytest.mark.parametrize("command", ["quit", "exit"])
def test_quit_and_exit_describe_themselves_as_virsh_does(
    reference_libvirtd: ReferenceLibvirtd, command: str
) -> None:
    # Their help's words are virtvol's own: each program is compared with itself, then
    # with virsh's outcome. ``quit --help`` is virsh's ``help quit``, which does not end.
    uri = reference_libvirtd.tcp_uri
    uuid = run_virsh(uri, "pool-uuid", "default").stdout
    for run in (run_virtvol, lambda *args: run_in_c_locale(["virsh", *args])):
        for text in (f"{command} --help", f"help {command}"):
            described = run("-c", uri, text)
            assert described.returncode == 0, described.stderr
            assert f"    {command} - " in described.stdout
            then = run("-c", uri, f"{text}; pool-uuid default")
            assert (then.stdout, then.stderr, then.returncode) == (
                described.stdout + uuid,
                "",
                0,
            )


def test_a_keepalive_refused_leaves_no_connection_to_reconnect(
    reference_libvirtd: ReferenceLibvirtd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without -c each command connects when it needs to. One whose keepalive virsh gives
    # up (an interval past an int's milliseconds) leaves it no connection: the next
    # command's failure is to connect, not to reconnect.
    monkeypatch.setenv("VIRSH_DEFAULT_CONNECT_URI", reference_libvirtd.tcp_uri)
    for name in ("VIRTVOL_DEFAULT_URI", "LIBVIRT_DEFAULT_URI"):
        monkeypatch.delenv(name, raising=False)
    both("-k", "2147484", "pool-uuid default; pool-uuid default")
