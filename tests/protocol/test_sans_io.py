"""The protocol core is sans-IO: no module under protocol/ touches sockets, event
loops, the operating system or files. Checked on the source, without importing it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"
MODULES = sorted(PROTOCOL.glob("*.py"))

FORBIDDEN_MODULES = frozenset(
    {
        "asyncio",
        "socket",
        "uvloop",
        "selectors",
        "select",
        "ssl",
        "os",
        "io",
        "_io",
        "pathlib",
        "shutil",
        "tempfile",
        "mmap",
        "fcntl",
        "subprocess",
        "threading",
        "multiprocessing",
        "signal",
        "importlib",
    }
)
FORBIDDEN_CALLS = frozenset({"open", "__import__", "exec", "eval", "compile"})
# The dump tool is a command-line wrapper: reading its input file is its job.
MAY_OPEN_FILES = frozenset({"dump.py"})


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append((node.lineno, node.module))
    return names


def _calls(tree: ast.AST) -> list[tuple[int, str]]:
    calls: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls.append((node.lineno, node.func.id))
    return calls


def test_the_protocol_package_is_found() -> None:
    names = {module.name for module in MODULES}
    assert {"xdr.py", "frames.py", "connection.py", "stream.py", "keepalive.py"} <= names


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_no_io_imports(module: Path) -> None:
    tree = ast.parse(module.read_text(), filename=str(module))
    offending = [
        f"{module.name}:{line}: imports {name}"
        for line, name in _imported(tree)
        if name.split(".")[0] in FORBIDDEN_MODULES
    ]
    assert offending == []


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_no_file_or_dynamic_import_calls(module: Path) -> None:
    tree = ast.parse(module.read_text(), filename=str(module))
    allowed = {"open"} if module.name in MAY_OPEN_FILES else set()
    offending = [
        f"{module.name}:{line}: calls {name}()"
        for line, name in _calls(tree)
        if name in FORBIDDEN_CALLS - allowed
    ]
    assert offending == []


def test_the_checks_catch_offenders() -> None:
    source = (
        "import os.path\nfrom asyncio import Queue\nimport socket as s\n"
        "from . import frames\ndata = open('x').read()\n"
    )
    tree = ast.parse(source)
    found = [name for _, name in _imported(tree) if name.split(".")[0] in FORBIDDEN_MODULES]
    assert found == ["os.path", "asyncio", "socket"]
    assert [name for _, name in _calls(tree)] == ["open"]
