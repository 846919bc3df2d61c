"""The protocol core's own exceptions.

``LocalProtocolError``: we were asked to do something the protocol forbids
(a hole on a non-sparse stream, data after finish). ``RemoteProtocolError``:
the peer did. Both derive from ``ProtocolError``, and so does ``XdrError``,
raised when bytes do not decode.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised by ``virtvol.protocol``."""


class LocalProtocolError(ProtocolError):
    """Our side tried to make a move the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection cannot go on safely."""


class XdrError(RemoteProtocolError):
    """Bytes that do not decode as the declared XDR type (or a value that cannot be encoded).

    Args:
        path: the field that failed, e.g. ``StorageVolUploadArgs.vol.name``.
        reason: what was wrong with it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason
