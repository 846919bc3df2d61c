"""Which names may become files: volume names in a pool directory, pool names in the state dir."""

from __future__ import annotations

import errno

from virtvol.protocol.errors import ErrorCode, ErrorDomain

from .reports import storage_error, system_error, xml_error

# Files the storage layer itself creates in a pool directory (whole-volume
# upload temporaries) start with this; such names are never volumes.
RESERVED_PREFIX = ".virtvol-"

# NAME_MAX of Linux file systems, in bytes.
_NAME_MAX = 255


def is_volume_name(name: str) -> bool:
    """True when ``name`` can only denote a file directly inside the pool directory."""
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
        and not name.startswith(RESERVED_PREFIX)
        and len(name.encode("utf-8", "surrogateescape")) <= _NAME_MAX
    )


def check_new_volume_name(name: str, pool_path: str) -> None:
    """Refuse a name for a new volume with the error libvirt gives for it."""
    if "/" in name:
        raise storage_error(ErrorCode.OPERATION_INVALID, f"volume name '{name}' cannot contain '/'")
    if name in (".", ".."):
        # libvirt joins the name to the pool path and finds it exists already.
        raise storage_error(
            ErrorCode.OPERATION_INVALID, f"volume target path '{pool_path}/{name}' already exists"
        )
    if not name or "\0" in name:
        raise xml_error("missing volume name element")
    if name.startswith(RESERVED_PREFIX):
        raise storage_error(
            ErrorCode.OPERATION_INVALID,
            f"volume name '{name}' is reserved: names starting with '{RESERVED_PREFIX}' "
            "are used for temporary files",
        )
    if not is_volume_name(name):
        # Too long for a file name: libvirt finds out when it creates the file.
        raise system_error(
            f"Failed to create file '{pool_path}/{name}'", errno.ENAMETOOLONG, ErrorDomain.STORAGE
        )


def check_pool_name(name: str) -> None:
    """Pool names become file names under the state directory."""
    if "/" in name:
        raise xml_error(f"name {name} cannot contain '/'")
    if "\0" in name or name.startswith(".") or len(name.encode("utf-8", "surrogateescape")) > 200:
        raise xml_error(f"name {name} is not usable as a pool name")
