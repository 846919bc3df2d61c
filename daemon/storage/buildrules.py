"""Which new volumes a pool can make without qemu-img or ploop's tools, and libvirtd 9.0's
refusals of the rest, in the order it gives them.

libvirtd checks a new volume's name (a '/', a name in use) before anything about its
format, so these run once the name is reserved; only an unknown format name is refused
earlier, while the XML is read (``volxml.parse_volume_xml``).

A directory pool makes raw files (new, or copies of a raw file or of a sub-directory,
whatever format the copy's definition names but a qcow2 or other image's) and new
sub-directories (format dir). An rbd pool makes raw images only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport, unsupported_flags

from .probe import FILE_FORMATS
from .reports import needs_qemu_img, storage_error

if TYPE_CHECKING:
    from .probe import ImageHeader
    from .volxml import VolumeRequest

# VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA, as libvirt's builders name it when refusing it.
_PREALLOC_METADATA = 0x1


def check_new_file(
    request: VolumeRequest, *, prealloc_metadata: bool, source: ImageHeader | None = None
) -> None:
    """Refuse a new volume of a directory pool that virtvold cannot make, as libvirtd does.

    ``source``: what the clone's source is (None: a new, empty volume).
    """
    if request.format == "ploop":
        if _is_file_image(source):
            raise needs_qemu_img()
        raise _ploop_refusal(request, prealloc_metadata=prealloc_metadata, source=source)
    if request.format == "dir" and source is None:
        _check_new_directory(request, prealloc_metadata=prealloc_metadata)
        return
    # A clone into format dir is a raw copy, as libvirt makes it (what virsh's vol-clone
    # of a sub-directory asks for); libvirtd calls it a directory until the next refresh,
    # virtvold reports the file it is.
    copy_into_directory = request.format == "dir"
    if request.format not in ("raw", "dir") or _is_file_image(source):
        raise needs_qemu_img()
    if request.encrypted and not copy_into_directory:
        raise needs_qemu_img()  # libvirt encrypts a raw file with qemu-img
    if prealloc_metadata:
        raise metadata_prealloc_unsupported()
    if request.backing:
        raise _no_backing_store("raw volumes")
    if request.encrypted:
        raise _no_encryption()
    if source is not None and source.format == "ploop":
        # libvirtd copies a ploop image's bytes into a file it calls raw.
        raise needs_qemu_img()


def check_new_image(request: VolumeRequest, *, prealloc_metadata: bool) -> None:
    """Refuse a new image of an rbd pool that is not plain raw bytes."""
    if request.format != "raw":
        raise needs_qemu_img()
    if request.backing:
        raise _no_backing_store("raw volumes")
    if request.encrypted:
        raise needs_qemu_img()
    if prealloc_metadata:
        raise metadata_prealloc_unsupported()


def metadata_prealloc_unsupported() -> ErrorReport:
    """PREALLOC_METADATA makes no sense for raw files; libvirt refuses it the same way."""
    return storage_error(
        ErrorCode.CONFIG_UNSUPPORTED, "metadata preallocation is not supported for raw volumes"
    )


def _is_file_image(source: ImageHeader | None) -> bool:
    """A clone source that libvirt would convert with qemu-img: an image file (qcow2 and
    the like) or an encrypted one; not a sub-directory nor a ploop image, which libvirt
    does not count as files."""
    return source is not None and not source.is_raw and source.format not in ("dir", "ploop")


def _check_new_directory(request: VolumeRequest, *, prealloc_metadata: bool) -> None:
    """A sub-directory holds no metadata to preallocate, has no backing store and cannot
    be encrypted (libvirtd makes a plain one where encryption is asked for; virtvold
    refuses, in libvirtd's words for an encrypted clone into a directory)."""
    if prealloc_metadata:
        raise unsupported_flags(_PREALLOC_METADATA, "createFileDir", ErrorDomain.STORAGE)
    if request.backing:
        raise _no_backing_store("directories volumes")
    if request.encrypted:
        raise _no_encryption()


def _ploop_refusal(
    request: VolumeRequest, *, prealloc_metadata: bool, source: ImageHeader | None
) -> ErrorReport:
    """libvirt makes ploop images with ploop's tools, once it has checked the request; it
    copies only a ploop image into one, and names another source by its format's number."""
    if prealloc_metadata:
        return unsupported_flags(
            _PREALLOC_METADATA, "storageBackendCreatePloop", ErrorDomain.STORAGE
        )
    if source is not None and source.format != "ploop":
        number = FILE_FORMATS.index(source.format)
        return storage_error(
            ErrorCode.INTERNAL_ERROR, f"unsupported input storage vol type {number}"
        )
    if request.encrypted:
        return storage_error(
            ErrorCode.CONFIG_UNSUPPORTED,
            "encrypted ploop volumes are not supported with ploop init",
        )
    if request.backing:
        return storage_error(
            ErrorCode.CONFIG_UNSUPPORTED, "copy-on-write ploop volumes are not yet supported"
        )
    return storage_error(
        ErrorCode.INTERNAL_ERROR, "unable to find ploop, please install ploop tools"
    )


def _no_encryption() -> ErrorReport:
    return storage_error(
        ErrorCode.CONFIG_UNSUPPORTED, "storage pool does not support encrypted volumes"
    )


def _no_backing_store(kind: str) -> ErrorReport:
    return storage_error(ErrorCode.NO_SUPPORT, f"backing storage not supported for {kind}")
