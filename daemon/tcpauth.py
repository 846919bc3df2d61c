"""Plain TCP listeners: none by default, and only with ``auth_tcp = "none"``.

libvirtd opens no TCP socket unless configured, and without TLS asks for SASL unless
``auth_tcp = "none"`` is set explicitly. virtvold has no SASL, so a plain TCP listener is
refused unless that setting says, in so many words, that anyone who reaches the port may
use the daemon with the daemon's rights; when it is allowed, the start-up says so.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from virtvol.daemon.config import ConfigError, Settings
from virtvol.daemon.listeners import ListenError, parse_listen_url

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger("virtvol.daemon")


def refusal(what: str) -> str:
    return (
        f"{what}: plain TCP is unauthenticated and virtvold has no SASL, so it is refused"
        ' unless the config file sets auth_tcp = "none" (or --auth-tcp none is given)'
    )


def check_listen_urls(settings: Settings) -> list[str]:
    """The plain TCP listeners among the settings' ``listen``; refused unless allowed."""
    tcp = []
    for url in settings.effective_listen():
        try:
            address = parse_listen_url(url)
        except ListenError as exc:
            raise ConfigError(str(exc)) from None
        if address.kind == "tcp":
            tcp.append(address.describe())
    if tcp and not settings.plain_tcp_allowed:
        raise ConfigError(refusal(tcp[0]))
    return tcp


def warn_unauthenticated(labels: Iterable[str]) -> None:
    for label in labels:
        log.warning(
            'listening on %s without authentication (auth_tcp = "none"): every client'
            " that reaches it has full access to the pools",
            label,
        )
