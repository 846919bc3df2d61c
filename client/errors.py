"""The client's exceptions.

``VirtvolError`` is the root. ``LibvirtError`` carries an error the peer
reported (code, domain, message), with one subclass per code users catch; the
registry ``_BY_CODE`` picks the class. Transport failures (the peer went away,
broke the protocol, or stopped answering keepalives) are ``TransportError``,
which is also a builtin ``ConnectionError``. A call not answered in time is
``CallTimeout``, also a builtin ``TimeoutError``; an argument that cannot be
put on the wire is ``UnsendableValue``, also a ``ValueError``.

    VirtvolError
    +-- InvalidURI (also ValueError)
    |   +-- UnsupportedTransport       a transport virtvol cannot open (ssh, ...)
    +-- LibvirtError (code, domain, message)
    |   +-- NoSupport, InvalidArgument, OperationFailed, OperationDenied,
    |   |   OperationInvalid, NoStoragePool, NoStorageVolume, StorageVolumeExists
    |   +-- SparseUnsupported          sparse=True, and the peer has no sparse streams
    +-- TransportError (also ConnectionError)
    |   +-- ConnectionClosed, ProtocolViolation
    +-- CallTimeout (also TimeoutError)
    +-- UnsendableValue (also ValueError)
    +-- StreamError                    a stream used in a way its state does not allow

An error met by a stream (``LibvirtError`` or ``StreamError``) says where in the
stream's life it happened, in ``stage``, given when it is made: ``"open"`` (the
opening call), ``"finish"`` (closing it), or None (while data flowed).

The protocol core raises its own exceptions (``virtvol.protocol.exceptions``);
``core_errors`` turns them into these at the edge where the client calls it.
"""

from __future__ import annotations

from virtvol.protocol.exceptions import LocalProtocolError, RemoteProtocolError
from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

    from virtvol.protocol.remote import RemoteError

__all__ = [
    "CallTimeout",
    "ConnectionClosed",
    "InvalidArgument",
    "InvalidURI",
    "LibvirtError",
    "NoStoragePool",
    "NoStorageVolume",
    "NoSupport",
    "OperationDenied",
    "OperationFailed",
    "OperationInvalid",
    "ProtocolViolation",
    "SparseUnsupported",
    "StorageVolumeExists",
    "StreamError",
    "TransportError",
    "UnsendableValue",
    "UnsupportedTransport",
    "VirtvolError",
    "core_errors",
    "error_from_remote",
]


class VirtvolError(Exception):
    """Root of every error raised by ``virtvol.client``."""


class InvalidURI(VirtvolError, ValueError):
    """A connection URI that cannot be used (bad syntax or an unknown transport)."""


class UnsupportedTransport(InvalidURI):
    """A URI whose transport libvirt knows but virtvol cannot open (``storage+ssh://``).

    Attributes:
        transport: the transport's name.
    """

    def __init__(self, transport: str, supported: str) -> None:
        super().__init__(f"transport '{transport}' is not supported by virtvol (use {supported})")
        self.transport = transport


class LibvirtError(VirtvolError):
    """An error reported by the peer, as libvirt reports it.

    Args:
        code: libvirt's ``virErrorNumber``.
        domain: libvirt's ``virErrorDomain``.
        message: the full text (what virsh prints after ``error:``).
        level: libvirt's error level (2 = error).
        stage: for an error a stream met, ``"open"`` (the opening call),
            ``"finish"``, or None (while data flowed, or not a stream's error).
    """

    def __init__(
        self, code: int, domain: int, message: str, *, level: int = 2, stage: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.domain = domain
        self.message = message
        self.level = level
        self.stage = stage

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code}, domain={self.domain}, "
            f"message={self.message!r})"
        )


class NoSupport(LibvirtError):
    """The peer does not support the function (also libvirt's "unknown procedure")."""


class InvalidArgument(LibvirtError):
    """An argument or flag the peer refused."""


class OperationFailed(LibvirtError):
    """The operation failed on the peer."""


class OperationDenied(LibvirtError):
    """The operation is forbidden (read-only connection, access control)."""


class OperationInvalid(LibvirtError):
    """The operation is not valid in the object's state (e.g. the pool is not active)."""


class NoStoragePool(LibvirtError):
    """No storage pool matches."""


class NoStorageVolume(LibvirtError):
    """No storage volume matches."""


class StorageVolumeExists(LibvirtError):
    """A volume with that name exists already."""


def _by_code() -> dict[int, type[LibvirtError]]:
    """The exception class of each code users catch, made at the first error: the
    error numbers are imported then (``virtvol.protocol.errors``)."""
    from virtvol.protocol.error_codes import ErrorCode

    return {
        ErrorCode.NO_SUPPORT: NoSupport,
        ErrorCode.INVALID_ARG: InvalidArgument,
        ErrorCode.OPERATION_FAILED: OperationFailed,
        ErrorCode.OPERATION_DENIED: OperationDenied,
        ErrorCode.ACCESS_DENIED: OperationDenied,
        ErrorCode.OPERATION_INVALID: OperationInvalid,
        ErrorCode.NO_STORAGE_POOL: NoStoragePool,
        ErrorCode.NO_STORAGE_VOL: NoStorageVolume,
        ErrorCode.STORAGE_VOL_EXIST: StorageVolumeExists,
    }


_BY_CODE: dict[int, type[LibvirtError]] = {}


def error_from_remote(error: RemoteError, *, stage: str | None = None) -> LibvirtError:
    """The exception for a ``remote_error`` received from the peer (``stage``: see
    ``LibvirtError``).

    As libvirt's client does, an RPC-layer "unknown procedure" error becomes
    ``NoSupport`` (code VIR_ERR_NO_SUPPORT), so old peers read as "not supported".
    """
    from virtvol.protocol.error_codes import ErrorCode, ErrorDomain, ErrorLevel

    if not _BY_CODE:
        _BY_CODE.update(_by_code())
    code, domain = error.code, error.domain
    message = error.message if error.message is not None else "unknown error"
    if (
        code == ErrorCode.RPC
        and domain in (ErrorDomain.RPC, ErrorDomain.REMOTE)
        and error.level == ErrorLevel.ERROR
        and message.startswith("unknown procedure")
    ):
        code = ErrorCode.NO_SUPPORT
    cls = _BY_CODE.get(code, LibvirtError)
    return cls(code, domain, message, level=error.level, stage=stage)


class SparseUnsupported(LibvirtError):
    """``sparse=True`` was required but the peer cannot do sparse streams.

    A ``LibvirtError``: ``code`` and ``domain`` are those of the peer's refusal
    of the sparse flag (VIR_ERR_INVALID_ARG, "unsupported flags (0x1) ..."), or
    VIR_ERR_NO_SUPPORT when the connection was opened with ``protocol="legacy"``
    and nothing was asked of the peer.
    """


class TransportError(VirtvolError, ConnectionError):
    """The connection failed: it could not be made, or it broke."""


class ConnectionClosed(TransportError):
    """The connection is closed (by us, by the peer, or after a failure)."""


class ProtocolViolation(TransportError):
    """The peer broke the wire protocol; the connection was dropped."""


class CallTimeout(VirtvolError, TimeoutError):
    """A call got no answer within its ``timeout``; the connection stays usable and a
    late answer is dropped."""


class UnsendableValue(VirtvolError, ValueError):
    """An argument the wire protocol cannot carry (a string or list over its
    maximum, a number out of range); nothing was sent."""


class StreamError(VirtvolError):
    """A stream was used in a way its state does not allow (e.g. send after finish).

    Args:
        message: what was wrong.
        stage: ``"open"``, ``"finish"`` or None, as for ``LibvirtError``.
    """

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


def core_errors(description: str) -> _CoreErrors:
    """Turn the protocol core's exceptions into the client's, in a ``with`` block.

    Args:
        description: the peer, for the messages (its URI).
    """
    return _CoreErrors(description)


class _CoreErrors:
    """The context manager of ``core_errors``: a class, as contextlib's decorator would
    cost every command its import (~0.5 ms) and each use a generator."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        self.description = description

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, LocalProtocolError):
            raise UnsendableValue(f"cannot send to {self.description}: {exc}") from exc
        if isinstance(exc, RemoteProtocolError):
            raise ProtocolViolation(f"protocol error from {self.description}: {exc}") from exc
