"""The packages depend in one direction: protocol <- sparse <- client, daemon.

``protocol`` imports none of the others, ``sparse`` only ``protocol``, and
``client`` and ``daemon`` never import each other. Checked on the source
(every import statement, at module level or inside functions), without
importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What each package may import from virtvol (itself always).
ALLOWED = {
    "protocol": set[str](),
    "sparse": {"protocol"},
    "client": {"protocol", "sparse"},
    "daemon": {"protocol", "sparse"},
}
PACKAGES = frozenset(ALLOWED)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def virtvol_imports(source: str) -> list[tuple[int, str]]:
    """(line, package) of every import of ``virtvol.<package>`` in ``source``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.level == 0 and node.module:
            names = [node.module]
            if node.module == "virtvol":  # from virtvol import client
                names = [f"virtvol.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "virtvol" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_every_package_is_found() -> None:
    for package in PACKAGES:
        assert _modules(package), package


@pytest.mark.parametrize(
    "module",
    [path for package in sorted(PACKAGES) for path in _modules(package)],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_imports_follow_the_layers(module: Path) -> None:
    package = module.relative_to(ROOT).parts[0]
    allowed = ALLOWED[package] | {package}
    offending = [
        f"{module.relative_to(ROOT)}:{line}: imports virtvol.{target}"
        for line, target in virtvol_imports(module.read_text())
        if target in PACKAGES and target not in allowed
    ]
    assert offending == []


def test_the_check_catches_offenders() -> None:
    source = (
        "import virtvol.daemon.storage\n"
        "from virtvol.client.streams import Hole\n"
        "from virtvol import sparse\n"
        "from . import zeros\n"
        "def lazy() -> None:\n"
        "    from virtvol.protocol import frames\n"
    )
    assert virtvol_imports(source) == [
        (1, "daemon"),
        (2, "client"),
        (3, "sparse"),
        (6, "protocol"),
    ]


# The stream handlers talk to their adapter (client: RpcProtocol's stream methods;
# daemon: StreamChannel), never to the protocol core behind it.
HANDLERS = {
    "client/streams.py": "core",
    "daemon/upload.py": "rpc",
    "daemon/download.py": "rpc",
}


def core_accesses(source: str, core: str) -> list[int]:
    """Lines where ``source`` reaches an attribute named ``core``."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr == core
    ]


@pytest.mark.parametrize("handler", sorted(HANDLERS))
def test_stream_handlers_use_only_their_adapter(handler: str) -> None:
    source = (ROOT / handler).read_text()
    assert core_accesses(source, HANDLERS[handler]) == []


def test_the_adapter_check_catches_offenders() -> None:
    source = "x = self._rpc.core.send_data(1, b'')\nself._sink.rpc.send_eof(2)\n"
    assert core_accesses(source, "core") == [1]
    assert core_accesses(source, "rpc") == [2]
