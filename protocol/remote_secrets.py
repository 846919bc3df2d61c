"""The REMOTE program's structs of secrets.

Part of ``virtvol.protocol.remote``, which hands them out under its own name: this
module is imported when one of them is first used. Declared as ``remote``'s are.
"""

from __future__ import annotations

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Annotated
else:
    from virtvol.protocol.hints import Annotated

from virtvol.protocol.constants import (
    REMOTE_SECRET_LIST_MAX,
    REMOTE_SECRET_VALUE_MAX,
    REMOTE_STRING_MAX,
)
from virtvol.protocol.remote import I32, U32, NonnullString, Uuid
from virtvol.protocol.xdr import Array, Opaque, String, XdrStruct

__all__ = [
    "ListAllSecretsArgs",
    "ListAllSecretsRet",
    "ListSecretsArgs",
    "ListSecretsRet",
    "Secret",
    "SecretArgs",
    "SecretFlagsArgs",
    "SecretGetValueRet",
    "SecretLookupByUsageArgs",
    "SecretRet",
    "SecretSetValueArgs",
    "SecretUuids",
    "SecretValue",
    "SecretXmlArgs",
    "Secrets",
]


class Secret(XdrStruct):
    """``remote_nonnull_secret``: UUID, usage type and usage ID (e.g. the ceph name)."""

    uuid: Uuid
    usage_type: I32
    usage_id: NonnullString


SecretValue = Annotated[bytes, Opaque(REMOTE_SECRET_VALUE_MAX)]


class ListSecretsArgs(XdrStruct):
    maxuuids: I32


SecretUuids = Annotated[tuple[str, ...], Array(String(REMOTE_STRING_MAX), REMOTE_SECRET_LIST_MAX)]


class ListSecretsRet(XdrStruct):
    uuids: SecretUuids


class SecretXmlArgs(XdrStruct):
    """``{xml, flags}`` of SECRET_DEFINE_XML."""

    xml: NonnullString
    flags: U32


class SecretRet(XdrStruct):
    secret: Secret


class SecretArgs(XdrStruct):
    secret: Secret


class SecretFlagsArgs(XdrStruct):
    """``{secret, flags}``: XML description, get value."""

    secret: Secret
    flags: U32


class SecretSetValueArgs(XdrStruct):
    secret: Secret
    value: SecretValue
    flags: U32

    def __repr__(self) -> str:
        # The value is a credential: never in a log line or a traceback.
        return f"SecretSetValueArgs(secret={self.secret!r}, value=<{len(self.value)} bytes>)"


class SecretGetValueRet(XdrStruct):
    value: SecretValue

    def __repr__(self) -> str:
        return f"SecretGetValueRet(value=<{len(self.value)} bytes>)"


class SecretLookupByUsageArgs(XdrStruct):
    usage_type: I32
    usage_id: NonnullString


class ListAllSecretsArgs(XdrStruct):
    need_results: I32
    flags: U32


Secrets = Annotated[tuple[Secret, ...], Array(Secret.codec(), REMOTE_SECRET_LIST_MAX)]


class ListAllSecretsRet(XdrStruct):
    secrets: Secrets
    ret: U32
