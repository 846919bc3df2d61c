"""The protocol core's own exceptions.

As h11 splits them: ``LocalProtocolError``, we were asked to do something the
protocol forbids (a hole on a non-sparse stream, data after finish, a value
that cannot be encoded); ``RemoteProtocolError``, the peer did (bytes that do
not decode, a reply to no call). Both derive from ``ProtocolError``.

``XdrError`` is raised by the XDR codec, and which side is at fault depends on
the direction: ``XdrDecodeError`` (the peer's bytes) is a
``RemoteProtocolError``, ``XdrEncodeError`` (our value) a ``LocalProtocolError``.
Catch ``XdrError`` for both.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised by ``virtvol.protocol``."""


class LocalProtocolError(ProtocolError):
    """Our side tried to make a move the protocol does not allow; nothing was sent
    and the connection's state is as it was."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection cannot go on safely."""


class XdrError(ProtocolError):
    """A value that does not fit its declared XDR type, in either direction.

    Args:
        path: the field that failed, e.g. ``StorageVolUploadArgs.vol.name``.
        reason: what was wrong with it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class XdrDecodeError(XdrError, RemoteProtocolError):
    """Bytes from the peer that do not decode as the declared XDR type."""


class XdrEncodeError(XdrError, LocalProtocolError):
    """A value of ours that cannot be encoded (too long, out of range, wrong type)."""
