"""The C library functions the sparse engine calls through ctypes, loaded on first use.

ctypes costs a command that moves a file a few milliseconds to import, and most
transfers never call into libc (fallocate, sync_file_range and mincore serve
punching, the writeback of durable uploads and of downloads over a file, and the
daemon's page-cache hygiene), so it is imported by the first call that needs it.
"""

from __future__ import annotations

import functools
import os

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

__all__ = ["errno", "function", "raise_errno"]


@functools.cache
def function(name: str, restype: str, *argtypes: str) -> Any | None:
    """libc's ``name``, returning ``restype`` and taking ``argtypes`` (ctypes type
    names), or None where the library lacks it. Call ``raise_errno`` after a failure."""
    import ctypes

    try:
        # The C library is already loaded: no library search (ctypes.util runs ldconfig).
        func = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    func.restype = getattr(ctypes, restype)
    func.argtypes = tuple(getattr(ctypes, argtype) for argtype in argtypes)
    return func


def errno() -> int:
    """The errno a ``function`` left behind."""
    import ctypes

    return ctypes.get_errno()


def raise_errno() -> None:
    """Raise the OSError of the errno a ``function`` left behind."""
    err = errno()
    raise OSError(err, os.strerror(err))
