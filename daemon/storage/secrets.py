"""libvirt's secret objects: the Ceph keys rbd pools authenticate with, and the
passphrase secrets an encrypted volume's XML names (those whose usage, of type volume,
is the volume's path).

A secret is an XML definition (UUID, private/ephemeral flags, a usage such as
``<usage type='ceph'><name>...</name></usage>``) plus an optional value. The
store serves libvirt's secret procedures with libvirt's rules and errors:
a usage belongs to one secret only, the value of a private secret never goes
back to a client (only pools use it, through ``value_for_pool``), and a
persistent secret lives in ``<state_dir>/secrets`` as ``<uuid>.xml`` and
``<uuid>.base64``: a directory of mode 0700 and files of mode 0600, written
through a temporary file and a rename. Values appear in no log line, error
message or ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import errno
import logging
import os
import secrets as token
import threading
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport, check_flags
from virtvol.protocol.uuids import parse_uuid

from .reports import system_error, uuid_text
from .xmldoc import child_string, escape, parse_document

log = logging.getLogger(__name__)

SECRET = ErrorDomain.SECRET
_XML = ".xml"
_VALUE = ".base64"
# UUIDs of secrets offered from key files: uuid5 of the usage name in this namespace.
_KEY_FILE_NAMESPACE = uuidlib.UUID("1b7e5a0c-6f43-4d2a-9c8e-3a5d7f0b2e91")


class UsageType(enum.IntEnum):
    """``virSecretUsageType``."""

    NONE = 0
    VOLUME = 1
    CEPH = 2
    ISCSI = 3
    TLS = 4
    VTPM = 5


# The element under <usage> that names the secret's user, per usage type.
_USAGE_ELEMENT = {
    UsageType.VOLUME: "volume",
    UsageType.CEPH: "name",
    UsageType.ISCSI: "target",
    UsageType.TLS: "name",
    UsageType.VTPM: "name",
}
_USAGE_MISSING = {
    UsageType.VOLUME: "volume usage specified, but volume path is missing",
    UsageType.CEPH: "Ceph usage specified, but name is missing",
    UsageType.ISCSI: "iSCSI usage specified, but target is missing",
    UsageType.TLS: "TLS usage specified, but name is missing",
    UsageType.VTPM: "vTPM usage specified, but name is missing",
}


class ListSecretsFlags(enum.IntFlag):
    """``virConnectListAllSecretsFlags``."""

    EPHEMERAL = 1
    NO_EPHEMERAL = 2
    PRIVATE = 4
    NO_PRIVATE = 8


@dataclass(frozen=True, slots=True)
class SecretDefinition:
    """A secret's XML, parsed."""

    uuid: bytes
    usage_type: UsageType
    usage_id: str  # "" when the usage type is NONE
    ephemeral: bool = False
    private: bool = False
    description: str | None = None


@dataclass(slots=True)
class _Entry:
    definition: SecretDefinition
    value: bytes | None = field(default=None, repr=False)


def secret_error(code: ErrorCode, detail: str) -> ErrorReport:
    """``virReportError(code, detail)`` from the secret driver."""
    return ErrorReport.raised(code, SECRET, detail)


def no_secret_with_uuid(raw: bytes) -> ErrorReport:
    return secret_error(ErrorCode.NO_SECRET, f"no secret with matching uuid '{uuid_text(raw)}'")


def no_secret_with_usage(usage_id: str) -> ErrorReport:
    return secret_error(ErrorCode.NO_SECRET, f"no secret with matching usage '{usage_id}'")


def _yes_no(value: str | None, attribute: str) -> bool:
    if value is None or value == "no":
        return False
    if value == "yes":
        return True
    raise secret_error(ErrorCode.XML_ERROR, f"invalid value of '{attribute}'")


def parse_secret_xml(text: str) -> SecretDefinition:
    """A ``<secret>`` document as libvirt reads it; a missing UUID gets a random one."""
    root = parse_document(text, "secret", "definition_of_secret", SECRET)
    raw_uuid = child_string(root, "uuid")
    if raw_uuid is None:
        uuid = uuidlib.uuid4().bytes
    else:
        parsed = parse_uuid(raw_uuid)
        if parsed is None:
            raise secret_error(ErrorCode.INTERNAL_ERROR, "malformed uuid element")
        uuid = parsed
    usage_type, usage_id = UsageType.NONE, ""
    usage = root.find("usage")
    if usage is not None:
        kind = usage.get("type")
        if not kind:  # libvirt's XPath read takes an empty type for none
            raise secret_error(ErrorCode.XML_ERROR, "unknown secret usage type")
        try:
            usage_type = next(t for t in UsageType if t.name.lower() == kind)
        except StopIteration:
            raise secret_error(
                ErrorCode.CONFIG_UNSUPPORTED, f"unknown secret usage type {kind}"
            ) from None
        if usage_type is not UsageType.NONE:
            # Untrimmed, as libvirt keeps it: a padded usage then names no volume's path
            # (nor a pool's key) there either.
            found = child_string(usage, _USAGE_ELEMENT[usage_type])
            if found is None:
                raise secret_error(ErrorCode.INTERNAL_ERROR, _USAGE_MISSING[usage_type])
            usage_id = found
    return SecretDefinition(
        uuid=uuid,
        usage_type=usage_type,
        usage_id=usage_id,
        ephemeral=_yes_no(root.get("ephemeral"), "ephemeral"),
        private=_yes_no(root.get("private"), "private"),
        description=child_string(root, "description"),  # untrimmed, its children's text too
    )


def format_secret_xml(definition: SecretDefinition) -> str:
    """The definition as libvirt's ``virSecretDefFormat`` writes it."""
    yes_no = {True: "yes", False: "no"}
    lines = [
        f"<secret ephemeral='{yes_no[definition.ephemeral]}' "
        f"private='{yes_no[definition.private]}'>",
        f"  <uuid>{uuid_text(definition.uuid)}</uuid>",
    ]
    if definition.description is not None:
        lines.append(f"  <description>{escape(definition.description)}</description>")
    if definition.usage_type is not UsageType.NONE:
        element = _USAGE_ELEMENT[definition.usage_type]
        lines += [
            f"  <usage type='{definition.usage_type.name.lower()}'>",
            f"    <{element}>{escape(definition.usage_id)}</{element}>",
            "  </usage>",
        ]
    lines.append("</secret>")
    return "\n".join(lines) + "\n"


class SecretStore:
    """Every secret of the daemon; thread-safe.

    Args:
        directory: where persistent secrets are kept (created 0700 when needed).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._entries: dict[bytes, _Entry] = {}
        # ``_lock`` guards the entries and is never held across file I/O: a volume's XML
        # looks its secret up, and must not wait for another client's secret to reach
        # the disk. ``_changing`` makes changes one at a time, their files included.
        self._lock = threading.Lock()
        self._changing = threading.Lock()

    def load(self) -> None:
        """Read persisted secrets; unreadable ones are logged (never their value) and skipped."""
        if not self.directory.is_dir():
            return
        with self._changing:
            loaded: dict[bytes, _Entry] = {}
            for path in sorted(self.directory.glob("*" + _XML)):
                try:
                    definition = parse_secret_xml(path.read_text(encoding="utf-8"))
                    value_path = path.with_suffix(_VALUE)
                    value = (
                        base64.b64decode(value_path.read_bytes(), validate=True)
                        if value_path.exists()
                        else None
                    )
                except (OSError, UnicodeDecodeError, ErrorReport, binascii.Error) as exc:
                    log.error("ignoring secret %s: %s", path.name, type(exc).__name__)
                    continue
                if path.name != uuid_text(definition.uuid) + _XML:
                    log.error("ignoring secret %s: it defines another UUID", path.name)
                    continue
                loaded[definition.uuid] = _Entry(definition, value)
            with self._lock:
                self._entries.update(loaded)

    # -- lookups ------------------------------------------------------------------

    def _entry(self, uuid: bytes) -> _Entry:
        entry = self._entries.get(uuid)
        if entry is None:
            raise no_secret_with_uuid(uuid)
        return entry

    def lookup_by_uuid(self, uuid: bytes) -> SecretDefinition:
        """SECRET_LOOKUP_BY_UUID."""
        with self._lock:
            return self._entry(uuid).definition

    def lookup_by_usage(self, usage_type: int, usage_id: str) -> SecretDefinition:
        """SECRET_LOOKUP_BY_USAGE."""
        found = self.find_by_usage(usage_type, usage_id)
        if found is None:
            raise no_secret_with_usage(usage_id)
        return found

    def find_by_usage(self, usage_type: int, usage_id: str) -> SecretDefinition | None:
        """The secret of this usage, or None: for callers to whom none is no error (an
        encrypted volume's XML names its secret only when there is one)."""
        if usage_type == UsageType.NONE:  # a secret of no usage is found by none
            return None
        with self._lock:
            for entry in self._entries.values():
                found = entry.definition
                if found.usage_type == usage_type and found.usage_id == usage_id:
                    return found
        return None

    def list_all(self, flags: int = 0) -> list[SecretDefinition]:
        """CONNECT_LIST_ALL_SECRETS with libvirt's filters, sorted by UUID."""
        check_flags(flags, int(_LIST_FLAGS), "secretConnectListAllSecrets", SECRET)
        wanted = ListSecretsFlags(flags)
        with self._lock:
            found = [entry.definition for entry in self._entries.values()]
        return sorted(
            (d for d in found if _matches(d, wanted)), key=lambda definition: definition.uuid
        )

    def xml(self, uuid: bytes, flags: int = 0) -> str:
        """SECRET_GET_XML_DESC."""
        check_flags(flags, 0, "secretGetXMLDesc", SECRET)
        with self._lock:
            return format_secret_xml(self._entry(uuid).definition)

    # -- changes ------------------------------------------------------------------

    def define_xml(self, xml: str, flags: int = 0) -> SecretDefinition:
        """SECRET_DEFINE_XML: a new secret, or new XML for an existing UUID (value kept)."""
        check_flags(flags, _DEFINE_VALIDATE, "secretDefineXML", SECRET)
        definition = parse_secret_xml(xml)
        with self._changing:
            with self._lock:
                self._check_usage_free(definition)
                existing = self._entries.get(definition.uuid)
            value = existing.value if existing is not None else None
            if not definition.ephemeral:
                self._save(definition, value)
            elif existing is not None and not existing.definition.ephemeral:
                self._forget_files(definition.uuid)
            with self._lock:
                self._entries[definition.uuid] = _Entry(definition, value)
            return definition

    def _check_usage_free(self, definition: SecretDefinition) -> None:
        """libvirt's checks of a definition against those it has, in its order: a UUID
        defined already keeps its usage's name (its type may change) and stays private
        once private; a new UUID may not take a usage another secret has."""
        existing = self._entries.get(definition.uuid)
        if existing is not None:
            old = existing.definition
            if _usage_name(old) != _usage_name(definition):
                raise secret_error(
                    ErrorCode.INTERNAL_ERROR,
                    f"a secret with UUID {uuid_text(old.uuid)} is already defined for use "
                    f"with {_usage_name(old) or '(null)'}",
                )
            if old.private and not definition.private:
                raise secret_error(
                    ErrorCode.INTERNAL_ERROR, "cannot change private flag on existing secret"
                )
            return
        if definition.usage_type is UsageType.NONE:
            return
        for entry in self._entries.values():
            other = entry.definition
            if other.usage_type == definition.usage_type and other.usage_id == definition.usage_id:
                raise secret_error(
                    ErrorCode.INTERNAL_ERROR,
                    f"a secret with UUID {uuid_text(other.uuid)} already defined for use "
                    f"with {definition.usage_id}",
                )

    def set_value(self, uuid: bytes, value: bytes, flags: int = 0) -> None:
        """SECRET_SET_VALUE: kept in memory, and on disk for a persistent secret. An empty
        value is none: libvirt's API refuses it before the driver looks at the flags."""
        if not value:
            raise ErrorReport(
                ErrorCode.INVALID_ARG,
                SECRET,
                "value in virSecretSetValue must not be NULL",
                str1="virSecretSetValue",
                str2="value",
                int1=0,
                int2=0,
            )
        check_flags(flags, 0, "secretSetValue", SECRET)
        with self._changing:
            with self._lock:
                entry = self._entry(uuid)
            if not entry.definition.ephemeral:
                self._save(entry.definition, value)
            with self._lock:
                entry.value = bytes(value)

    def get_value(self, uuid: bytes, flags: int = 0) -> bytes:
        """SECRET_GET_VALUE: refused for a private secret, as libvirt refuses it to clients."""
        check_flags(flags, 0, "secretGetValue", SECRET)
        with self._lock:
            entry = self._entry(uuid)
            if entry.definition.private:
                raise secret_error(ErrorCode.INVALID_SECRET, "secret is private")
            return self._value_of(entry)

    def value_for_pool(self, uuid: bytes | None, usage_id: str | None) -> bytes:
        """The value of a ceph secret named by UUID or usage, private or not, for a pool."""
        if uuid is not None:
            with self._lock:
                return self._value_of(self._entry(uuid))
        assert usage_id is not None
        definition = self.lookup_by_usage(UsageType.CEPH, usage_id)
        with self._lock:
            return self._value_of(self._entry(definition.uuid))

    @staticmethod
    def _value_of(entry: _Entry) -> bytes:
        if entry.value is None:
            raise secret_error(
                ErrorCode.NO_SECRET,
                f"secret '{uuid_text(entry.definition.uuid)}' does not have a value",
            )
        return entry.value

    def offer_key_file(self, usage_id: str, path: str) -> SecretDefinition:
        """A private, ephemeral ceph secret holding the cephx key in file ``path``.

        For keys named in the daemon's config rather than set over the protocol.
        The UUID follows from the usage name, so it stays the same across restarts
        and a reload only refreshes the value.
        """
        key = read_key_file(path)
        definition = SecretDefinition(
            uuid=uuidlib.uuid5(_KEY_FILE_NAMESPACE, usage_id).bytes,
            usage_type=UsageType.CEPH,
            usage_id=usage_id,
            ephemeral=True,
            private=True,
            description=f"cephx key from {path}",
        )
        with self._changing, self._lock:
            self._check_usage_free(definition)
            self._entries[definition.uuid] = _Entry(definition, key)
        return definition

    def undefine(self, uuid: bytes) -> None:
        """SECRET_UNDEFINE: the definition and its value are gone, from memory and disk."""
        with self._changing:
            with self._lock:
                entry = self._entry(uuid)
            if not entry.definition.ephemeral:
                self._forget_files(uuid)
            with self._lock:
                del self._entries[uuid]

    # -- files --------------------------------------------------------------------

    def _save(self, definition: SecretDefinition, value: bytes | None) -> None:
        name = uuid_text(definition.uuid)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            if value is not None:
                self._write(name + _VALUE, base64.b64encode(value))
            self._write(name + _XML, format_secret_xml(definition).encode())
        except OSError as exc:
            raise system_error(f"cannot write secret '{name}'", exc) from None

    def _write(self, name: str, data: bytes) -> None:
        """Write a file of mode 0600 atomically: it never exists with other permissions."""
        target = self.directory / name
        temp = self.directory / f".{name}.{token.token_hex(4)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def _forget_files(self, uuid: bytes) -> None:
        name = uuid_text(uuid)
        for suffix in (_VALUE, _XML):
            path = self.directory / (name + suffix)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise system_error(f"cannot remove secret file '{path.name}'", exc) from None


def read_key_file(path: str) -> bytes:
    """The cephx key in a keyring (``key = ...``) or a file holding just the base64 key."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        error = exc if isinstance(exc, OSError) else errno.EINVAL
        raise system_error(f"cannot read ceph key file '{path}'", error) from None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "key":
            text = value
            break
    try:
        return base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise secret_error(ErrorCode.INTERNAL_ERROR, f"no cephx key in '{path}'") from None


def _usage_name(definition: SecretDefinition) -> str | None:
    """What libvirt compares of two usages of one UUID: the name alone (none for a
    secret of no usage)."""
    return None if definition.usage_type is UsageType.NONE else definition.usage_id


def _matches(definition: SecretDefinition, wanted: ListSecretsFlags) -> bool:
    def group(yes: ListSecretsFlags, no: ListSecretsFlags, value: bool) -> bool:
        if not wanted & (yes | no):
            return True
        return bool(wanted & yes) if value else bool(wanted & no)

    return group(
        ListSecretsFlags.EPHEMERAL, ListSecretsFlags.NO_EPHEMERAL, definition.ephemeral
    ) and group(ListSecretsFlags.PRIVATE, ListSecretsFlags.NO_PRIVATE, definition.private)


_LIST_FLAGS = (
    ListSecretsFlags.EPHEMERAL
    | ListSecretsFlags.NO_EPHEMERAL
    | ListSecretsFlags.PRIVATE
    | ListSecretsFlags.NO_PRIVATE
)
_DEFINE_VALIDATE = 1  # VIR_SECRET_DEFINE_VALIDATE

__all__ = [
    "ListSecretsFlags",
    "SecretDefinition",
    "SecretStore",
    "UsageType",
    "format_secret_xml",
    "parse_secret_xml",
    "read_key_file",
]
