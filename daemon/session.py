"""Connection-level procedures, answered as libvirtd 9.0 with only the storage driver answers.

Theory of operation: a connection is NEW until CONNECT_OPEN succeeds, then
OPEN. Authentication is "none" on every listener, so a client is authenticated
from its first byte and AUTH_LIST answers [NONE]. While NEW, only AUTH_LIST,
CONNECT_OPEN, CONNECT_CLOSE and SUPPORTS_FEATURE(10) are served; everything else
gets libvirtd's "hypervisor connection not open". A read-only listener (or the
read-only open flag) makes the connection refuse every procedure that changes
state, and downloads, with libvirt's own "read only access prevents <function>".
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from virtvol.protocol import remote as r
from virtvol.protocol.constants import CONNECT_RO, AuthType, DriverFeature
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport
from virtvol.protocol.procedures import Proc, Procedure
from virtvol.protocol.xdr import XdrStruct

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

# Procedures a read-only connection refuses: the table's mutating ones, plus
# DOWNLOAD, which libvirt refuses too (volume content is not for every user).
READ_ONLY_REFUSED_FUNCTIONS: dict[int, str] = {
    Proc.STORAGE_POOL_CREATE_XML: "virStoragePoolCreateXML",
    Proc.STORAGE_POOL_DEFINE_XML: "virStoragePoolDefineXML",
    Proc.STORAGE_POOL_CREATE: "virStoragePoolCreate",
    Proc.STORAGE_POOL_DESTROY: "virStoragePoolDestroy",
    Proc.STORAGE_POOL_UNDEFINE: "virStoragePoolUndefine",
    Proc.STORAGE_POOL_REFRESH: "virStoragePoolRefresh",
    Proc.STORAGE_POOL_SET_AUTOSTART: "virStoragePoolSetAutostart",
    Proc.STORAGE_VOL_CREATE_XML: "virStorageVolCreateXML",
    Proc.STORAGE_VOL_DELETE: "virStorageVolDelete",
    Proc.STORAGE_VOL_CREATE_XML_FROM: "virStorageVolCreateXMLFrom",
    Proc.STORAGE_VOL_WIPE: "virStorageVolWipe",
    Proc.STORAGE_VOL_UPLOAD: "virStorageVolUpload",
    Proc.STORAGE_VOL_DOWNLOAD: "virStorageVolDownload",
    Proc.STORAGE_VOL_RESIZE: "virStorageVolResize",
    Proc.SECRET_DEFINE_XML: "virSecretDefineXML",
    Proc.SECRET_SET_VALUE: "virSecretSetValue",
    Proc.SECRET_GET_VALUE: "virSecretGetValue",
    Proc.SECRET_UNDEFINE: "virSecretUndefine",
}

_ALLOWED_BEFORE_OPEN = frozenset(
    {Proc.AUTH_LIST, Proc.CONNECT_OPEN, Proc.CONNECT_CLOSE, Proc.CONNECT_SUPPORTS_FEATURE}
)

SESSION_PROCEDURES = frozenset(
    {
        Proc.CONNECT_OPEN,
        Proc.CONNECT_GET_TYPE,
        Proc.CONNECT_GET_VERSION,
        Proc.CONNECT_GET_HOSTNAME,
        Proc.CONNECT_SUPPORTS_FEATURE,
        Proc.AUTH_LIST,
        Proc.CONNECT_GET_URI,
        Proc.CONNECT_GET_LIB_VERSION,
        Proc.CONNECT_REGISTER_CLOSE_CALLBACK,
        Proc.CONNECT_UNREGISTER_CLOSE_CALLBACK,
    }
)


def not_open() -> ErrorReport:
    return ErrorReport.raised(
        ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, "hypervisor connection not open"
    )


def read_only_denied(function: str) -> ErrorReport:
    return ErrorReport.raised(
        ErrorCode.OPERATION_DENIED, ErrorDomain.STORAGE, f"read only access prevents {function}"
    )


def _default_uri() -> str:
    return "storage:///system" if os.geteuid() == 0 else "storage:///session"


def check_open_name(name: str | None) -> str:
    """The URI a CONNECT_OPEN name selects, or libvirt's refusal."""
    if not name:
        return _default_uri()
    parts = urlsplit(name)
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
        raise ErrorReport.raised(
            ErrorCode.INTERNAL_ERROR,
            ErrorDomain.STORAGE,
            f"unexpected storage URI path '{parts.path}', try storage:///system",
        )
    return name


@dataclass
class Session:
    """The connection-level state of one client."""

    read_only: bool
    legacy: bool = False
    uri: str | None = None  # set once CONNECT_OPEN succeeded
    close_callback: bool = False
    keepalive_requested: bool = False

    @property
    def opened(self) -> bool:
        return self.uri is not None

    def check_allowed(self, procedure: Procedure) -> None:
        """Refuse a call the connection's state does not allow."""
        if not self.opened:
            if procedure.number not in _ALLOWED_BEFORE_OPEN:
                raise not_open()
            return
        function = READ_ONLY_REFUSED_FUNCTIONS.get(procedure.number)
        if self.read_only and function is not None:
            raise read_only_denied(function)

    def serve(self, procedure: Procedure, args: XdrStruct | None) -> XdrStruct | None:
        """Answer a connection-level procedure (one of SESSION_PROCEDURES)."""
        number = procedure.number
        if number == Proc.AUTH_LIST:
            return r.AuthListRet(types=(AuthType.NONE,))
        if number == Proc.CONNECT_SUPPORTS_FEATURE:
            assert isinstance(args, r.ConnectSupportsFeatureArgs)
            return r.ConnectSupportsFeatureRet(supported=self._feature(args.feature))
        if number == Proc.CONNECT_OPEN:
            assert isinstance(args, r.ConnectOpenArgs)
            if self.opened:
                raise ErrorReport.raised(
                    ErrorCode.INTERNAL_ERROR, ErrorDomain.RPC, "connection already open"
                )
            self.uri = check_open_name(args.name)
            if args.flags & CONNECT_RO:
                self.read_only = True
            return None
        if number == Proc.CONNECT_GET_TYPE:
            return r.ConnectGetTypeRet(type="storage")
        if number == Proc.CONNECT_GET_VERSION:
            return r.ConnectGetVersionRet(hv_ver=DRIVER_VERSION)
        if number == Proc.CONNECT_GET_LIB_VERSION:
            return r.ConnectGetLibVersionRet(
                lib_ver=LEGACY_LIB_VERSION if self.legacy else LIB_VERSION
            )
        if number == Proc.CONNECT_GET_HOSTNAME:
            return r.ConnectGetHostnameRet(hostname=socket.gethostname())
        if number == Proc.CONNECT_GET_URI:
            assert self.uri is not None
            return r.ConnectGetUriRet(uri=self.uri)
        if number == Proc.CONNECT_REGISTER_CLOSE_CALLBACK:
            self.close_callback = True
            return None
        if number == Proc.CONNECT_UNREGISTER_CLOSE_CALLBACK:
            self.close_callback = False
            return None
        raise AssertionError(f"not a session procedure: {procedure.name}")

    def _feature(self, feature: int) -> int:
        if feature == DriverFeature.PROGRAM_KEEPALIVE:
            # libvirtd answers this one itself, even before open, and starts pinging.
            self.keepalive_requested = True
            return 1
        if not self.opened:
            raise not_open()
        return 1 if feature in _FEATURES_AFTER_OPEN else 0
