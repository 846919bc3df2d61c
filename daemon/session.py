"""Connection-level procedures, answered as libvirtd 9.0 with only the storage driver answers.

Theory of operation: a connection is NEW until CONNECT_OPEN succeeds, then
OPEN. Authentication is "none" on every listener, so a client is authenticated
from its first byte and AUTH_LIST answers [NONE]. While NEW, only AUTH_LIST,
CONNECT_OPEN, CONNECT_CLOSE and SUPPORTS_FEATURE(10) are served; everything else
gets libvirtd's "hypervisor connection not open". A read-only listener (or the
read-only open flag) makes the connection refuse every procedure the procedure
table marks as such (``Procedure.refused_read_only``: those that change state,
and downloads), with libvirt's own "read only access prevents <function>".
"""

from __future__ import annotations

import itertools
import os
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from virtvol.protocol import remote as r
from virtvol.protocol.constants import (
    UPLOAD_SKIPS_LEAVE_ZEROS_FEATURE,
    AuthType,
    ConnectOpenFlags,
    DriverFeature,
)
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.protocol.procedures import Proc, Procedure

# libvirt 9.0.0, as the reference peer reports it. Clients do not need it for
# sparse streams (they are negotiated by the call flag alone), but tools that
# gate sparse transfers on the library version look for >= 3.4.0, and the wire
# behaviour here is 9.0's (32 MiB messages, sparse streams, close callbacks).
LIB_VERSION = 9_000_000
# Legacy mode plays a daemon from before sparse streams: 3.3.0.
LEGACY_LIB_VERSION = 3_003_000
# GET_VERSION reports virtvol's own version (0.1.0) as the "hypervisor" version.
DRIVER_VERSION = 1_000

# CONNECT_SUPPORTS_FEATURE answers after CONNECT_OPEN, as the storage-only
# libvirtd 9.0 gives them (docs/libvirtd-observed.md); unlisted ones are 0.
_FEATURES_AFTER_OPEN = frozenset(
    {
        DriverFeature.FD_PASSING,
        DriverFeature.PROGRAM_KEEPALIVE,
        DriverFeature.REMOTE_EVENT_CALLBACK,
        DriverFeature.REMOTE_CLOSE_CALLBACK,
        UPLOAD_SKIPS_LEAVE_ZEROS_FEATURE,
    }
)

# URI schemes of libvirt's drivers; opening one gives a storage-only connection
# on which hypervisor procedures get VIR_ERR_NO_SUPPORT.
_DRIVER_SCHEMES = frozenset(
    {
        "storage",
        "qemu",
        "lxc",
        "libxl",
        "xen",
        "vbox",
        "vmwareplayer",
        "vmwarews",
        "vmwarefusion",
        "bhyve",
        "ch",
        "openvz",
        "vz",
        "test",
        "network",
        "nwfilter",
        "nodedev",
        "secret",
        "interface",
    }
)

_ALLOWED_BEFORE_OPEN = frozenset(
    {Proc.AUTH_LIST, Proc.CONNECT_OPEN, Proc.CONNECT_CLOSE, Proc.CONNECT_SUPPORTS_FEATURE}
)


def not_open() -> ErrorReport:
    return ErrorReport.raised(
        ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, "hypervisor connection not open"
    )


def read_only_denied(function: str) -> ErrorReport:
    # libvirt reports from the API's own module: libvirt-secret.c for virSecret*.
    domain = ErrorDomain.SECRET if function.startswith("virSecret") else ErrorDomain.STORAGE
    return ErrorReport.raised(
        ErrorCode.OPERATION_DENIED, domain, f"read only access prevents {function}"
    )


def _default_uri() -> str:
    return "storage:///system" if os.geteuid() == 0 else "storage:///session"


def check_open_name(name: str | None) -> str:
    """The URI a CONNECT_OPEN name selects, or libvirt's refusal."""
    if not name:
        return _default_uri()
    try:
        parts = urlsplit(name)
    except ValueError:
        # An unclosed "[" or a stray "]" in the host, which libvirt's parser (libxml2's)
        # refuses too: libvirtd's answer, not an internal error and a traceback in the log
        # for every connection that sends one. (urllib also refuses a bracketed host that
        # is no IP address, which libvirt would take: a refusal all the same.)
        raise ErrorReport.raised(
            ErrorCode.INTERNAL_ERROR, ErrorDomain.URI, f"Unable to parse URI {name}"
        ) from None
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in _DRIVER_SCHEMES:
        raise ErrorReport(
            ErrorCode.NO_CONNECT,
            ErrorDomain.NONE,
            f"no connection driver available for {name}",
            str1="no connection driver available for %s",
            str2=name,
        )
    if scheme == "storage" and parts.path not in ("/system", "/session"):
        # libvirt's check of a driver URI's path (shared by its drivers) reports without a
        # domain, and names the path a daemon of its kind serves.
        raise ErrorReport.raised(
            ErrorCode.INTERNAL_ERROR,
            ErrorDomain.NONE,
            f"unexpected storage URI path '{parts.path}', try {_default_uri()}",
        )
    return name


# Callback numbers are unique across the daemon, as libvirt's are.
_callback_ids = itertools.count(1)
# virStoragePoolEventID: LIFECYCLE, REFRESH.
POOL_EVENT_LIFECYCLE, POOL_EVENT_REFRESH = 0, 1
# Pool event callbacks one connection may hold. Registering is allowed on the read-only
# socket, which every local user may reach, and each pool event goes out once per
# callback: without a bound, one client's registrations grew the daemon's memory without
# end and made every event as many frames, encoded on the event loop. A client registers
# one or two per pool it watches.
MAX_POOL_EVENT_CALLBACKS = 256


@dataclass(frozen=True)
class PoolEventCallback:
    """A client's registration for one kind of pool event, of one pool or of all."""

    event_id: int
    pool_uuid: bytes | None

    def wants(self, event_id: int, pool_uuid: bytes) -> bool:
        return event_id == self.event_id and self.pool_uuid in (None, pool_uuid)


@dataclass
class Session:
    """The connection-level state of one client."""

    read_only: bool
    legacy: bool = False
    uri: str | None = None  # set once CONNECT_OPEN succeeded
    close_callback: bool = False
    keepalive_requested: bool = False
    pool_event_callbacks: dict[int, PoolEventCallback] = field(default_factory=dict)

    @property
    def opened(self) -> bool:
        return self.uri is not None

    def check_allowed(self, procedure: Procedure[Any, Any]) -> None:
        """Refuse a call the connection's state does not allow."""
        if not self.opened:
            if procedure.number not in _ALLOWED_BEFORE_OPEN:
                raise not_open()
            return
        if self.read_only and procedure.refused_read_only:
            raise read_only_denied(procedure.api_name)

    # The connection-level procedures (daemon/dispatch.py names which is which).

    def auth_list(self, args: None) -> r.AuthListRet:
        return r.AuthListRet(types=(AuthType.NONE,))

    def supports_feature(self, args: r.ConnectSupportsFeatureArgs) -> r.ConnectSupportsFeatureRet:
        return r.ConnectSupportsFeatureRet(supported=self._feature(args.feature))

    def open(self, args: r.ConnectOpenArgs) -> None:
        if self.opened:
            raise ErrorReport.raised(
                ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, "connection already open"
            )
        self.uri = check_open_name(args.name)
        if args.flags & ConnectOpenFlags.RO:
            self.read_only = True

    def get_type(self, args: None) -> r.ConnectGetTypeRet:
        return r.ConnectGetTypeRet(type="storage")

    def get_version(self, args: None) -> r.ConnectGetVersionRet:
        return r.ConnectGetVersionRet(hv_ver=DRIVER_VERSION)

    def is_secure(self, args: None) -> r.ConnectIsSecureRet:
        # As libvirtd's storage driver: the daemon end is trivially secure; the client
        # library weighs its own transport (TCP, TLS, Unix socket) against this answer.
        return r.ConnectIsSecureRet(secure=1)

    def get_lib_version(self, args: None) -> r.ConnectGetLibVersionRet:
        return r.ConnectGetLibVersionRet(lib_ver=LEGACY_LIB_VERSION if self.legacy else LIB_VERSION)

    def get_hostname(self, args: None) -> r.ConnectGetHostnameRet:
        return r.ConnectGetHostnameRet(hostname=socket.gethostname())

    def get_uri(self, args: None) -> r.ConnectGetUriRet:
        assert self.uri is not None
        return r.ConnectGetUriRet(uri=self.uri)

    def register_close_callback(self, args: None) -> None:
        self.close_callback = True

    def unregister_close_callback(self, args: None) -> None:
        self.close_callback = False

    def register_pool_events(self, args: r.PoolEventRegisterArgs) -> r.PoolEventRegisterRet:
        if args.event_id not in (POOL_EVENT_LIFECYCLE, POOL_EVENT_REFRESH):
            raise ErrorReport.raised(
                ErrorCode.INTERNAL_ERROR,
                ErrorDomain.RPC,
                f"unsupported storage pool event ID {args.event_id}",
            )
        if len(self.pool_event_callbacks) >= MAX_POOL_EVENT_CALLBACKS:
            raise ErrorReport.raised(
                ErrorCode.OPERATION_FAILED,
                ErrorDomain.RPC,
                f"too many storage pool event callbacks registered on this connection"
                f" ({MAX_POOL_EVENT_CALLBACKS})",
            )
        callback_id = next(_callback_ids)
        uuid = None if args.pool is None else args.pool.uuid
        self.pool_event_callbacks[callback_id] = PoolEventCallback(args.event_id, uuid)
        return r.PoolEventRegisterRet(callback_id=callback_id)

    def deregister_pool_events(self, args: r.PoolEventDeregisterArgs) -> None:
        if self.pool_event_callbacks.pop(args.callback_id, None) is None:
            raise ErrorReport.raised(
                ErrorCode.INTERNAL_ERROR,
                ErrorDomain.RPC,
                f"storage pool event callback {args.callback_id} not registered",
            )

    def _feature(self, feature: int) -> int:
        if feature == DriverFeature.PROGRAM_KEEPALIVE:
            # libvirtd answers this one itself, even before open, and starts pinging.
            self.keepalive_requested = True
            return 1
        if not self.opened:
            raise not_open()
        return 1 if feature in _FEATURES_AFTER_OPEN else 0
