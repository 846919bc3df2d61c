"""The errors the storage layer raises, worded as libvirt 9.0's storage driver words them."""

from __future__ import annotations

import os
import uuid as uuidlib

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport

STORAGE = ErrorDomain.STORAGE


def storage_error(code: ErrorCode, detail: str) -> ErrorReport:
    """``virReportError(code, detail)`` from the storage driver."""
    return ErrorReport.raised(code, STORAGE, detail)


def system_error(
    what: str, exc: OSError | int, domain: ErrorDomain = ErrorDomain.NONE
) -> ErrorReport:
    """``virReportSystemError``: "<what>: <strerror>" with the errno in ``int1``.

    libvirt's file helpers report these from the util layer, whose domain is NONE.
    """
    err = exc if isinstance(exc, int) else (exc.errno or 0)
    message = f"{what}: {os.strerror(err)}"
    return ErrorReport(ErrorCode.SYSTEM_ERROR, domain, message, str1="%s", str2=message, int1=err)


def uuid_text(raw: bytes) -> str:
    """The dashed lower-case form libvirt prints."""
    return str(uuidlib.UUID(bytes=raw)) if len(raw) == 16 else raw.hex()


def no_pool_named(name: str) -> ErrorReport:
    return storage_error(ErrorCode.NO_STORAGE_POOL, f"no storage pool with matching name '{name}'")


def no_pool_with_uuid(raw: bytes, name: str | None = None) -> ErrorReport:
    detail = f"no storage pool with matching uuid '{uuid_text(raw)}'"
    if name is not None:
        detail += f" ({name})"
    return storage_error(ErrorCode.NO_STORAGE_POOL, detail)


def pool_not_active(name: str) -> ErrorReport:
    return storage_error(ErrorCode.OPERATION_INVALID, f"storage pool '{name}' is not active")


def pool_already_active(name: str) -> ErrorReport:
    return storage_error(ErrorCode.OPERATION_INVALID, f"storage pool '{name}' is already active")


def pool_in_job(name: str, job: str) -> ErrorReport:
    # An rbd pool waiting for its cluster, a folder being made or removed (``PoolJob``);
    # libvirt's callers would wait for it instead.
    return storage_error(ErrorCode.OPERATION_INVALID, f"storage pool '{name}' is {job}")


def pool_still_active(name: str) -> ErrorReport:
    return storage_error(ErrorCode.OPERATION_INVALID, f"storage pool '{name}' is still active")


def pool_has_jobs(name: str) -> ErrorReport:
    # libvirt reports this as an internal error, not as an invalid operation; callers that
    # retry on it (virt-clone wrappers, libvirt-go users) match on that code and text.
    return storage_error(ErrorCode.INTERNAL_ERROR, f"pool '{name}' has asynchronous jobs running.")


def needs_qemu_img() -> ErrorReport:
    """A new volume that is not a plain raw copy: libvirt makes those with qemu-img, which
    virtvold does not use, and words its refusal as libvirt without qemu-img does."""
    return storage_error(
        ErrorCode.INTERNAL_ERROR,
        "creation of non-raw file images is not supported without qemu-img.",
    )


def cannot_resize_image(
    image_format: str, encryption: str | None, *, allocate: bool
) -> ErrorReport:
    """Resizing an image that is not plain raw bytes: libvirt hands that to ploop's tools
    or to qemu-img (neither of which virtvold runs), and refuses before that to
    preallocate such an image or to resize one with qcow's own encryption."""
    if image_format == "ploop":
        return storage_error(
            ErrorCode.INTERNAL_ERROR, "unable to find ploop, please install ploop tools"
        )
    if allocate:
        kind = "an unencrypted raw volume" if image_format == "raw" else "raw type volume"
        return storage_error(
            ErrorCode.OPERATION_UNSUPPORTED, f"preallocate is only supported for {kind}"
        )
    if encryption == "qcow":
        return storage_error(
            ErrorCode.CONFIG_UNSUPPORTED, "resize of qcow2 encrypted image is not supported"
        )
    return storage_error(ErrorCode.INTERNAL_ERROR, "unable to find qemu-img")


def cannot_wipe_ploop() -> ErrorReport:
    """libvirt wipes a ploop image with ploop's own tools, which virtvold does not run."""
    return storage_error(
        ErrorCode.INTERNAL_ERROR, "unable to find ploop tools, please install them"
    )


def no_volume_named(name: str) -> ErrorReport:
    return storage_error(ErrorCode.NO_STORAGE_VOL, f"no storage vol with matching name '{name}'")


def no_volume_with_key(key: str) -> ErrorReport:
    return storage_error(ErrorCode.NO_STORAGE_VOL, f"no storage vol with matching key {key}")


def no_volume_with_path(path: str, cleaned: str) -> ErrorReport:
    detail = f"no storage vol with matching path '{path}'"
    if cleaned != path:
        detail += f" ({cleaned})"
    return storage_error(ErrorCode.NO_STORAGE_VOL, detail)


def volume_in_use(name: str) -> ErrorReport:
    return storage_error(ErrorCode.OPERATION_INVALID, f"volume '{name}' is still in use.")


def volume_exists(name: str) -> ErrorReport:
    # libvirt's message for this code is "storage volume %s exists already".
    message = f"storage volume '{name}' exists already"
    return ErrorReport(
        ErrorCode.STORAGE_VOL_EXIST,
        STORAGE,
        message,
        str1="storage volume %s exists already",
        str2=f"'{name}'",
    )


def clone_name_taken(name: str) -> ErrorReport:
    """vol-create-from's refusal of a name in use, worded unlike vol-create's ``volume_exists``."""
    return storage_error(ErrorCode.INTERNAL_ERROR, f"storage volume name '{name}' already in use.")


def xml_error(detail: str, domain: ErrorDomain = STORAGE) -> ErrorReport:
    """VIR_ERR_XML_ERROR, "XML error: <detail>"."""
    return ErrorReport.raised(ErrorCode.XML_ERROR, domain, detail)


def invalid_arg(detail: str, domain: ErrorDomain = STORAGE) -> ErrorReport:
    """VIR_ERR_INVALID_ARG raised with virReportError, so with the "invalid argument: " prefix."""
    return ErrorReport.raised(ErrorCode.INVALID_ARG, domain, detail)
