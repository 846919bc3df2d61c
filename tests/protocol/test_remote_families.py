"""The REMOTE structs declared in modules of their own, handed out by ``remote``.

``virtvol.protocol.remote`` declares the structs every connection uses; those of
volumes, secrets and pool events live in ``remote_volumes``, ``remote_secrets`` and
``remote_events``, imported when one of their names is first read through
``remote``. These tests hold the families to being one set of names with ``remote``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from virtvol.protocol import remote, remote_events, remote_secrets, remote_volumes
from virtvol.protocol.procedures import PROCEDURES
from virtvol.protocol.xdr import XdrStruct

FAMILIES = (remote_volumes, remote_secrets, remote_events)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda module: module.__name__)
def test_every_name_of_a_family_is_read_through_remote(family: object) -> None:
    names = family.__all__  # type: ignore[attr-defined]
    assert names
    for name in names:
        assert getattr(remote, name) is getattr(family, name)
    # ``__all__`` names everything the family declares, and nothing else.
    declared = {
        name
        for name, value in vars(family).items()
        if isinstance(value, type)
        and issubclass(value, XdrStruct)
        and value.__module__ == family.__name__  # type: ignore[attr-defined]
    }
    assert declared <= set(names)


def test_a_family_struct_imports_by_name_from_remote() -> None:
    from virtvol.protocol.remote import SecretGetValueRet, VolRet

    assert VolRet is remote_volumes.VolRet
    assert SecretGetValueRet is remote_secrets.SecretGetValueRet


def test_a_name_no_family_has_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchStruct'"):
        _ = remote.NoSuchStruct  # type: ignore[attr-defined]


def test_no_family_redeclares_a_name_of_remote_or_of_another_family() -> None:
    # What remote declares itself, read in an interpreter where no family was imported.
    code = (
        "from virtvol.protocol import remote\n"
        "print(' '.join(name for name in vars(remote) if not name.startswith('_')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    own = set(result.stdout.split())
    assert {"StoragePool", "StorageVol", "RemoteError", "ListAllPoolsRet"} <= own
    seen: set[str] = set()
    for family in FAMILIES:
        names = set(family.__all__)
        assert not names & seen
        assert not names & own
        seen |= names


def test_every_procedure_names_structs() -> None:
    for procedure in PROCEDURES.values():
        for struct in (procedure.args, procedure.ret):
            assert struct is None or issubclass(struct, XdrStruct)


def test_a_family_is_imported_when_first_read() -> None:
    families = "sorted(name for name in sys.modules if name.startswith('virtvol.protocol.remote_'))"
    code = (
        "import sys\n"
        "from virtvol.protocol import remote\n"
        "from virtvol.protocol.remote import RemoteError\n"
        f"print({families})\n"
        "remote.VolRet\n"
        f"print({families})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.splitlines() == ["[]", "['virtvol.protocol.remote_volumes']"]
