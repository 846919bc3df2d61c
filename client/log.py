"""The ``virtvol.client`` logger, with :mod:`logging` imported when something first logs.

Importing logging (and the traceback, threading and string modules it brings) costs
every command line run ~7 ms of CPU, and most runs never log a line. ``log`` stands in
for ``logging.getLogger("virtvol.client")``: the first attribute asked of it imports
logging and hands over the real logger's, so records name their true caller and an
application's logging configuration applies as usual.
"""

from __future__ import annotations

import _thread

from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import cast
else:
    from virtvol.protocol.hints import cast

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

LOGGER_NAME = "virtvol.client"
CONNECTION_FAILURE = {"connection_failure": True}
"""``extra`` of the warning logged when a connection fails: the failure is also raised
in every call and stream of the connection, so a caller that reports those (the
command line) can tell this news apart from what it will say anyway."""

_logger: logging.Logger | None = None
_on_first_use: list[Callable[[], None]] = []
# The first use configures, once, before any thread logs (_thread: threading's import
# is what this module spares).
_first_use = _thread.RLock()


def _real_logger() -> logging.Logger:
    global _logger
    if _logger is None:
        with _first_use:
            if _logger is None:
                import logging

                while _on_first_use:
                    _on_first_use.pop(0)()
                _logger = logging.getLogger(LOGGER_NAME)
    return _logger


def when_first_used(configure: Callable[[], None]) -> None:
    """Run ``configure`` (which may import logging) before the first record is logged,
    or now if something has logged already."""
    with _first_use:
        if _logger is None:
            if configure not in _on_first_use:
                _on_first_use.append(configure)
            return
    configure()


class _DeferredLogger:
    __slots__ = ()

    def __getattr__(self, name: str) -> object:
        return getattr(_real_logger(), name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(_real_logger(), name, value)


log = cast("logging.Logger", _DeferredLogger())
