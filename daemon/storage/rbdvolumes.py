"""Volumes of an rbd pool: RBD images in one Ceph pool, reached through librbd.

Every call here blocks (it talks to the cluster), so the registry runs them in
worker threads, never on the event loop. One cluster connection and one I/O
context serve the pool while it is active; images opened for a transfer keep
them alive: ``close()`` on a pool whose images are still open (a download the
pool was destroyed under) only marks it, and the last ``release()`` shuts the
connection down. librados must never see its I/O context closed under an open
image.

Whole-volume uploads write a hidden image (``.virtvol-upload-…``) and swap it
in by name when the stream commits. RBD refuses to rename onto an existing
image, so the swap is two renames: the old image to a hidden name
(``.virtvol-old-…``), then the new one to the volume's name, and the old one is
removed after the client has its acknowledgement. If the second rename fails,
the first is undone. Hidden names never show in volume lists. The new image gets
the old one's image-meta (the key/values ``rbd image-meta`` sets) before the
swap: libvirt writes into the image in place, which keeps them.

A daemon killed between the two renames leaves no image under the volume's
name. So before the first rename the swap records on the old image, in its
image-meta (``SWAP_RECORD_KEY``), the volume's name, the hidden name it is
about to get and the upload image's name; the record is removed once the
second rename is done. When the pool next starts (``recover_after_crash``), a
hidden image is renamed back to its volume only if its record names the very
name it is hidden under (a record a crash left on a live volume, which a
delete later hid under another name, does not), the volume is missing, and
the upload image is still there under its hidden name (so the upload was never
acknowledged: the old content is the right one). Then the hidden images
nobody has open are removed, in a thread beside the started pool: uploads a
crash cut short, old images a crashed daemon still read. librbd's watchers
tell who has an image open; a reader registers none, so an old image waiting
here for its last reader is held open for writing meanwhile (``_keepers``),
and another daemon starting the same Ceph pool keeps it. A killed client's
watch stays until the OSD's watch timeout (30 s by default): what it had open
is kept by a start within that, and removed by a later one.

A clone reads its source at a snapshot of its own (``.virtvol-clone-…``), removed when
the copy ends, however it ends; the snapshots a crash left are removed at the next pool
start from images nobody has open for writing or watches (a running clone watches its
source).

An image removed under an open handle reads as zeros, without an error: a
download (or a clone's source) would end "successfully" with zeros where the
data was. So an image this daemon has open is never removed: a replaced or
deleted volume's image is hidden under a ``.virtvol-old-…`` name and removed
when its last handle here closes, as a file unlinked while open lives on until
it is closed.

Ceph's Python binding comes only as distribution packages (Debian's
``python3-rados``, ``python3-rbd``); it is imported when an rbd pool starts, so
the daemon runs without it and such a pool fails to start with a message
naming the packages.
"""

from __future__ import annotations

import base64
import collections
import errno
import importlib
import json
import logging
import secrets
import threading
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from virtvol.protocol.constants import VolResizeFlags
from virtvol.protocol.errors import ErrorCode, ErrorReport

from .names import RESERVED_PREFIX, is_volume_name
from .poolxml import PoolRuntime
from .reports import (
    no_volume_named,
    pool_not_active,
    storage_error,
    system_error,
    volume_exists,
    volume_in_use,
)
from .resizerules import new_capacity
from .volxml import MAX_FILE_SIZE

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator
    from types import ModuleType

    from .rbdxml import RbdSource
    from .volxml import VolumeRequest

log = logging.getLogger(__name__)

UPLOAD_PREFIX = RESERVED_PREFIX + "upload-"
REPLACED_PREFIX = RESERVED_PREFIX + "old-"
# The snapshots a clone reads its source at (``create_from``); a crash's are removed at the
# next pool start (``recover_after_crash``).
CLONE_SNAPSHOT_PREFIX = RESERVED_PREFIX + "clone-"

# The random part of a hidden image's name: its hex digits, and nothing else, follow the
# prefix. The clean-up after a crash removes only names of that shape, never another
# client's image that merely starts alike.
_TOKEN_BYTES = 8

# What a refusal of a whole-volume upload suggests instead: an upload with an offset or a
# length writes into the image, which keeps its id and all that knows it by that.
WRITE_IN_PLACE = "upload with an offset or a length to write into it in place"

# The image-meta key of the record a swap leaves on the image it hides (see ``_swap``).
SWAP_RECORD_KEY = "virtvol.swap"

# librbd's discard and write_zeroes take the length as an int: 2 GiB or more is
# refused (EINVAL) or wraps. Zeroing goes in steps of this size.
ZERO_STEP = 1 << 30

# Seconds a listed image that does not open is given to open (librbd lists a new image
# a moment before its header is written) before it is taken for a removal cut short.
CREATION_GRACE = 2.0

# The largest image size made or read here: the largest capacity a volume's XML takes.
# librbd accepts sizes up to 2^64 - 1 but counts objects with an overflow past 2^64
# minus one object; walking such an image's object map aborts the whole process (a
# failed assertion in librbd), so no size near that is ever made or walked.
MAX_IMAGE_SIZE = MAX_FILE_SIZE

# Names one read of the pool's image directory returns (``_names_in_directory``), and
# the room for them: Ceph's longest object names (2048 bytes) and an id each.
DIRECTORY_PAGE = 1024
DIRECTORY_PAGE_BYTES = DIRECTORY_PAGE * (2 * 4 + 2048 + 64)

# Room for what an image's header object answers when its snapshots are read there
# (``_snapshots``): a snapshot context of up to 8192 snapshot ids, and one snapshot's name
# of up to 64 KiB. A longer answer fails the call (librados: "Numerical result out of
# range"), never a shorter read.
SNAPSHOT_CONTEXT_BYTES = 8 + 4 + 8192 * 8
SNAPSHOT_NAME_BYTES = 4 + 65536

# The most objects whose object map ``vol-info`` walks for a volume's allocation (4 TiB of
# 4 MiB objects, a 256 KiB map, a fraction of a second): librbd goes through the whole map
# for any query, so a larger image is not walked there (``_reported_allocation``).
INFO_WALK_OBJECTS = 1 << 20

# How much of the image one object-map query covers at first, and again after one that
# found data: bounds the extent list.
EXTENT_WINDOW = 1 << 30

# A query that finds no data doubles the next one, up to this many objects. librbd
# (16.2) loads the whole object map for every query, whatever range it asks about (64
# MiB for the largest image an object map allows): a large thin image is walked in a
# few dozen queries, not one per EXTENT_WINDOW, and one query still returns few extents.
MAX_WINDOW_OBJECTS = 1 << 16

# Seconds librados waits for the monitors and OSDs before giving up, as libvirt sets them.
CLUSTER_TIMEOUT = "30"

MISSING_BINDING = (
    "rbd pools need Ceph's Python binding (modules 'rados' and 'rbd'): install the "
    "python3-rados and python3-rbd packages, then run 'make setup' to link them"
)


def load_binding() -> tuple[ModuleType, ModuleType]:
    """The ``rados`` and ``rbd`` modules, or a clear error naming the packages."""
    try:
        rados = importlib.import_module("rados")
        rbd = importlib.import_module("rbd")
    except ImportError:
        raise storage_error(ErrorCode.INTERNAL_ERROR, MISSING_BINDING) from None
    return rados, rbd


def _errno(exc: BaseException) -> int:
    value = getattr(exc, "errno", None)
    return value if isinstance(value, int) and value > 0 else errno.EIO


def too_large(what: str) -> ErrorReport:
    """libvirt's system error for a size past ``MAX_IMAGE_SIZE``."""
    return system_error(what, errno.EFBIG)


def walkable_size(image: Any) -> int:
    """The image's size; ``OSError`` (EFBIG) when librbd cannot walk it (``MAX_IMAGE_SIZE``:
    one another Ceph client made)."""
    size: int = image.size()
    if size > MAX_IMAGE_SIZE:
        raise OSError(errno.EFBIG, "image too large to walk")
    return size


def zero_range(image: Any, offset: int, length: int) -> None:
    """Make ``[offset, offset+length)`` read as zeros, freeing whole objects."""
    end = offset + length
    while offset < end:
        step = min(ZERO_STEP, end - offset)
        image.write_zeroes(offset, step)
        offset += step


def data_extents(image: Any, offset: int, length: int) -> list[tuple[int, int]]:
    """Allocated ``(start, end)`` ranges in ``[offset, offset+length)``, merged, in order.

    With fast-diff the object map answers; extents are whole RADOS objects
    (clipped to the range), so a hole inside an object is found only by
    reading it.
    """
    found: list[tuple[int, int]] = []
    walkable_size(image)  # never hand librbd an image it would abort on

    def seen(start: int, size: int, exists: bool) -> int:
        if exists and size:
            if found and found[-1][1] >= start:
                found[-1] = (found[-1][0], max(found[-1][1], start + size))
            else:
                found.append((start, start + size))
        return 0

    if length > 0:
        image.diff_iterate(offset, length, None, seen, whole_object=True)
    end = offset + length
    return [(max(a, offset), min(b, end)) for a, b in found if b > offset and a < end]


class ExtentWindows:
    """The sizes of the object-map queries (``data_extents``) walking one image."""

    def __init__(self, image: Any) -> None:
        object_size: int = image.stat()["obj_size"]
        self._most = max(EXTENT_WINDOW, MAX_WINDOW_OBJECTS * object_size)
        self._next = EXTENT_WINDOW

    def size(self, rest: int) -> int:
        """The next query's length, at most ``rest``."""
        return min(self._next, rest)

    def found(self, extents: list[tuple[int, int]]) -> None:
        """What the last query found decides the next one's length."""
        self._next = EXTENT_WINDOW if extents else min(2 * self._next, self._most)


def data_extents_walked(image: Any, size: int) -> Iterator[tuple[int, int]]:
    """Allocated ``(start, end)`` ranges of the image's first ``size`` bytes, in order, one
    object-map query (``data_extents``) after another, in windows (``ExtentWindows``): the
    extents held at a time are those of one window, whatever the image's size."""
    windows = ExtentWindows(image)
    at = 0
    while at < size:
        window = windows.size(size - at)
        found = data_extents(image, at, window)
        windows.found(found)
        yield from found
        at += window


class RbdVolumes:
    """The images of an active rbd pool; thread-safe."""

    def __init__(
        self, source: RbdSource, rbd: ModuleType, cluster: Any, ioctx: Any, *, pool_name: str
    ) -> None:
        self.source = source
        self.path = source.pool
        # The libvirt pool's name, for the refusal of a call that finds the pool stopped.
        self.pool_name = pool_name
        self._rbd = rbd
        self._cluster = cluster
        self._ioctx = ioctx
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False
        # Open handles by image id (an image keeps its id through renames), and the
        # hidden names of images to remove once their last handle closes.
        self._handle_ids: dict[Any, str] = {}
        self._handles: collections.Counter[str] = collections.Counter()
        self._remove_when_closed: dict[str, str] = {}
        # Ids of images being removed or removed (Ceph never gives an id again): a handle
        # that opened one meanwhile, counted only after the removal, is refused.
        self._removing: set[str] = set()
        # A handle open for writing on each hidden image waiting for its last reader here:
        # librbd registers no watch for a reader, and a watch is what tells another
        # daemon's clean-up of leftovers (``recover_after_crash``) that the image is in use.
        self._keepers: dict[str, Any] = {}
        # What tells each running whole-volume upload, by its image's name, whether its
        # volume was changed meanwhile, or its name now leads to another image (deleted
        # and made again): ``create_upload_temp``, ``_prepare_swap``.
        self._change_watches: dict[str, ChangeWatch] = {}
        # This connection's client id: notifications it sends (a swap's own changes to
        # the image it hides) are no change by another client (``ChangeWatch``).
        self.client_id: int = cluster.get_instance_id()
        # The cookies of this daemon's ChangeWatch objects (uploads' and clones'): they
        # write nothing, and are no writers elsewhere (``_writers_elsewhere``). A cookie
        # is one only with ``client_id``: each client picks its own.
        self._own_watches: set[int] = set()
        # Watches whose closing failed: librados may still call them until the
        # connection goes (``ChangeWatch.close``).
        self._unclosed_watches: list[Any] = []
        # The thread removing what a crash left (``recover_after_crash``), while it runs.
        self._sweeper: threading.Thread | None = None
        self._stopped = threading.Event()  # set by ``close``: ends the sweeper's waits

    @classmethod
    def connect(
        cls,
        source: RbdSource,
        key: bytes | None,
        stopping: Stopping | None = None,
        *,
        pool_name: str | None = None,
    ) -> RbdVolumes:
        """Log in to the cluster and open the Ceph pool (the key comes from a libvirt secret);
        given up when ``stopping`` is set (the daemon stops). ``pool_name``: the libvirt
        pool's (the Ceph pool's when there is none)."""
        rados, rbd = load_binding()
        conf = {
            "mon_host": source.mon_host,
            "client_mount_timeout": CLUSTER_TIMEOUT,
            "rados_mon_op_timeout": CLUSTER_TIMEOUT,
            "rados_osd_op_timeout": CLUSTER_TIMEOUT,
            "log_to_stderr": "false",
            "err_to_stderr": "false",
        }
        if source.username is None:
            conf["auth_supported"] = "none"
        elif key is not None:
            # libvirt keeps the decoded key; librados wants it in base64.
            conf["key"] = base64.b64encode(key).decode()
        cluster = rados.Rados(rados_id=source.username, conf=conf)
        attempt = _Connecting(cluster, stopping or Stopping())
        failure = attempt.wait()
        if failure is not None:
            raise system_error(
                f"failed to connect to the RADOS monitor on: {source.mon_host}", _errno(failure)
            ) from None
        try:
            ioctx = cluster.open_ioctx(source.pool)
        except Exception as exc:
            cluster.shutdown()
            raise system_error(
                f"failed to create the RBD IoCTX. Does the pool '{source.pool}' exist?",
                _errno(exc),
            ) from None
        return cls(source, rbd, cluster, ioctx, pool_name=pool_name or source.pool)

    # -- lifetime -----------------------------------------------------------------

    def acquire(self) -> None:
        """An image is being opened: keep the connection until ``release``."""
        with self._lock:
            # Once closing, only work on an open image's behalf may go on (the
            # connection is still there); with no image open it is gone.
            if self._closing and self._users == 0:
                raise pool_not_active(self.pool_name)
            self._users += 1

    def release(self) -> None:
        """An image opened after ``acquire`` is closed."""
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            self._shutdown()

    def close(self) -> None:
        """Stop the pool; the connection goes once no image is open any more."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._stopped.set()
            idle = self._users == 0
        if idle:
            self._shutdown()

    def wait_for_sweep(self, timeout: float) -> bool:
        """After ``close``: wait up to ``timeout`` seconds for the removal of a crash's
        leftovers to give up (it stops at the next object); False if it still runs."""
        sweeper = self._sweeper
        if sweeper is None:
            return True
        sweeper.join(timeout)
        return not sweeper.is_alive()

    def _shutdown(self) -> None:
        self._ioctx.close()
        self._cluster.shutdown()
        with self._lock:
            self._unclosed_watches.clear()  # nothing calls them any more

    def keep_until_shutdown(self, watch: Any) -> None:
        """Keep a watch whose closing failed, and what its callbacks touch, for as long
        as librados may call it: until the connection is shut down."""
        with self._lock:
            self._unclosed_watches.append(watch)

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        """Keep the connection open for the length of a call."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    @contextmanager
    def image(self, name: str, *, read_only: bool = False) -> Iterator[Any]:
        """An open image for the length of a call; a missing one is libvirt's 'no volume'."""
        image = self.open_image(name, read_only=read_only)
        try:
            yield image
        finally:
            self.close_image(image)

    def open_image(self, name: str, *, read_only: bool = False, hidden: bool = False) -> Any:
        """Open an image; the caller must ``close_image`` it (from any thread).

        A hidden image (an upload's, a replaced volume's) is no volume: only the
        daemon's own work opens one (``hidden``), never a client's request by name.
        """
        if not is_volume_name(name) and not (hidden and name.startswith(RESERVED_PREFIX)):
            raise no_volume_named(name)
        self.acquire()
        try:
            image = self._rbd.Image(self._ioctx, name, read_only=read_only)
        except self._rbd.ImageNotFound:
            self.release()
            raise no_volume_named(name) from None
        except Exception as exc:
            self.release()
            raise system_error(f"failed to open the RBD image '{name}'", _errno(exc)) from None
        image_id = _id_of(image)
        with self._lock:
            removing = image_id in self._removing
            if not removing:
                self._handle_ids[image] = image_id
                self._handles[image_id] += 1
        if removing:  # opened by its old name just before it was hidden
            self.close_image(image)
            raise no_volume_named(name)
        return image

    def close_image(self, image: Any) -> None:
        """Close an image; the last handle of a replaced or deleted one removes it."""
        try:
            image.close()
        finally:
            try:
                with self._lock:
                    image_id = self._handle_ids.pop(image, None)
                    hidden = keeper = None
                    if image_id is not None:
                        self._handles[image_id] -= 1
                        if not self._handles[image_id]:
                            del self._handles[image_id]
                            hidden = self._remove_when_closed.pop(image_id, None)
                            keeper = self._keepers.pop(image_id, None)
                _close_quietly(keeper)
                if hidden is not None:
                    assert image_id is not None
                    self._remove_hidden(hidden, image_id)
            finally:
                self.release()

    def _claim_unless_open(self, image_id: str) -> bool:
        """Mark an image as being removed, unless this daemon has it open."""
        with self._lock:
            if self._handles[image_id]:
                return False
            self._removing.add(image_id)
            return True

    def _unclaim(self, image_id: str) -> None:
        with self._lock:
            self._removing.discard(image_id)

    def _removed(self, image_id: str) -> None:
        """The image is gone: its id stays claimed, so that a handle opened just before
        the removal is refused, unless it is the id all old-format images share."""
        if not image_id:
            self._unclaim(image_id)

    def _remove_hidden(self, hidden: str, image_id: str) -> None:
        """Remove a replaced or deleted image now, or at the close of its last handle
        (watched meanwhile, so that no other daemon takes it for a crash's leftover)."""
        with self._lock:
            read_here = bool(self._handles[image_id])
        if read_here and self._defer_removal(hidden, image_id):
            return
        with self._lock:
            if self._handles[image_id]:
                self._remove_when_closed[image_id] = hidden
                return
            self._removing.add(image_id)
        try:
            self._remove_quietly(hidden)
        except Exception as exc:
            self._unclaim(image_id)
            log.error("cannot remove the replaced RBD image '%s': %s", hidden, exc)
            return
        self._removed(image_id)

    def _defer_removal(self, hidden: str, image_id: str) -> bool:
        """Leave the hidden image to the close of its last handle here, watched meanwhile;
        False when that handle is closed already."""
        try:
            with self._in_use():
                keeper = self._open_for_watch(hidden)
                with self._lock:
                    if self._handles[image_id]:
                        self._remove_when_closed[image_id] = hidden
                        if keeper is not None:
                            self._keepers[image_id] = keeper
                        return True
                _close_quietly(keeper)
                return False
        except ErrorReport:  # the pool stopped as its last reader closed: a leftover
            log.warning("kept the replaced RBD image '%s' of a stopped pool", hidden)
            return True

    def _open_for_watch(self, hidden: str) -> Any:
        """A handle open for writing on a hidden image (librbd watches it), or None."""
        try:
            return self._rbd.Image(self._ioctx, hidden)
        except Exception as exc:
            log.warning(
                "hidden RBD image '%s' read here is not watched, another daemon starting "
                "the pool may remove it: %s",
                hidden,
                exc,
            )
            return None

    def _writers_elsewhere(self, image: Any) -> int:
        """The image's watchers but this daemon's ``ChangeWatch`` objects: handles open
        for writing (this daemon's own among them), and other daemons' watches."""
        with self._lock:
            own = {(self.client_id, cookie) for cookie in self._own_watches}
        return _watcher_count(image, own)

    def removed_meanwhile(self, image: Any) -> bool:
        """Whether another client of the Ceph pool removed ``image`` (open here), or is
        removing it, or that cannot be told: librbd reads zeros from a removed image's
        handle, without an error. A removal first moves the image to the trash, then
        removes its data, then its header object, then the trash entry: an image neither
        in the trash nor without its header was not being removed while it was read."""
        image_id = _id_of(image)
        if not image_id:  # an old-format image is removed without the trash
            return False
        try:
            with self._in_use():
                try:
                    self._rbd.RBD().trash_get(self._ioctx, image_id)
                except self._rbd.ImageNotFound:
                    pass
                else:
                    return True
                self._ioctx.stat(f"rbd_header.{image_id}")
        except Exception as exc:
            log.info("RBD image '%s' taken for removed: %s", image_id, exc)
            return True
        return False

    # -- the pool -------------------------------------------------------------------

    def volume_path(self, name: str) -> str:
        """``<ceph pool>/<image>``: libvirt's key and path of an rbd volume."""
        return f"{self.source.pool}/{name}"

    def runtime(self) -> PoolRuntime:
        """Cluster-wide sizes, as libvirt reports them for an rbd pool."""
        # Held outside the try: a pool stopped meanwhile is refused as such, not as a
        # cluster that failed to answer.
        with self._in_use():
            try:
                stats = self._cluster.get_cluster_stats()
                pool = self._ioctx.get_stats()
            except Exception as exc:
                raise system_error(
                    f"failed to stat the RADOS pool '{self.source.pool}'", _errno(exc)
                ) from None
        return PoolRuntime(
            capacity=stats["kb"] * 1024,
            allocation=pool["num_bytes"],
            available=stats["kb_avail"] * 1024,
            mode=0,
            owner=0,
            group=0,
        )

    def _all_names(self) -> list[str]:
        """The names of the Ceph pool's images that are text (UTF-8)."""
        with self._in_use():  # outside the try, as in ``runtime``
            try:
                try:
                    return list(self._rbd.RBD().list(self._ioctx))
                except UnicodeDecodeError:
                    # Another client named an image with bytes that are no UTF-8, and
                    # Ceph's binding fails the whole listing: read the directory itself.
                    return self._names_in_directory()
            except Exception as exc:
                raise system_error("Unable to list RBD images", _errno(exc)) from None

    def _names_in_directory(self) -> list[str]:
        """The images' names as the pool's ``rbd_directory`` object holds them (class
        ``rbd``, method ``dir_list``), a page at a time; those that are no UTF-8 left out."""
        names: list[str] = []
        after = b""
        while True:
            request = _ceph_string(after) + DIRECTORY_PAGE.to_bytes(8, "little")
            _, reply = self._ioctx.execute(
                "rbd_directory", "rbd", "dir_list", request, DIRECTORY_PAGE_BYTES
            )
            page = list(_decode_string_map(bytes(reply)))
            for raw in page:
                with suppress(UnicodeDecodeError):
                    names.append(raw.decode())
            if len(page) < DIRECTORY_PAGE:
                return names
            after = page[-1]

    def names(self) -> list[str]:
        """Volume names, sorted; hidden upload images are not volumes."""
        return sorted(name for name in self._all_names() if is_volume_name(name))

    def require(self, name: str) -> None:
        """Nothing, or libvirt's "no storage vol with matching name"."""
        with self.image(name, read_only=True):
            pass

    def exists(self, name: str) -> bool:
        try:
            self.require(name)
        except ErrorReport:
            return False
        return True

    def info(self, name: str) -> tuple[int, int]:
        """(capacity, allocation), at a cost bounded whatever the image's size
        (``_reported_allocation``)."""
        with self.image(name, read_only=True) as image:
            size = image.size()
            return size, _reported_allocation(self._rbd, image, size)

    # -- changes ----------------------------------------------------------------------

    def create(self, request: VolumeRequest) -> None:
        """A new, empty (thin) image; RBD has no preallocation, so allocation is ignored."""
        self._create(request.name, request.capacity or 0)

    def _create(self, name: str, capacity: int, layout: dict[str, Any] | None = None) -> None:
        if capacity > MAX_IMAGE_SIZE:
            raise too_large(f"failed to create volume '{self.volume_path(name)}'")
        try:
            with self._in_use():
                self._rbd.RBD().create(
                    self._ioctx, name, capacity, old_format=False, **(layout or {})
                )
        except self._rbd.ImageExists:
            raise volume_exists(name) from None
        except Exception as exc:
            raise system_error(
                f"failed to create volume '{self.volume_path(name)}'", _errno(exc)
            ) from None

    def create_from(self, request: VolumeRequest, source: str) -> None:
        """A copy of ``source`` as it was at one instant (only its data is copied) of at
        least its size.

        The copy reads one extent after another, which a guest (or any other client)
        may write meanwhile: it reads a snapshot of the source instead, taken for it and
        removed after it, as libvirt's rbd backend clones from one. A guest's writes are
        then crash-consistent in the copy, as libvirt's. The source is watched meanwhile
        (``ChangeWatch``): Ceph refuses to remove a watched image, and other daemons
        refuse to (``_held_elsewhere``), so its snapshot stays until the copy is done.
        """
        name = request.name
        with self.image(source, read_only=True) as image:
            image_id = _id_of(image)
            layout = self._layout(image)
            watch = ChangeWatch(self, image, source)
            try:
                snapshot = self._take_clone_snapshot(image_id, source)
                made = False
                try:
                    with self._opened_at(image_id, source, snapshot) as frozen:
                        size = frozen.size()
                        self._create(name, max(request.capacity or 0, size), layout)
                        made = True
                        with self.image(name) as target:
                            for start, end in data_extents_walked(frozen, size):
                                copy_range(frozen, target, start, end)
                except BaseException:
                    try:
                        self._drop_clone_snapshot(image_id, source, snapshot)
                    except ErrorReport as exc:  # the next pool start removes it
                        log.warning("kept snapshot '%s': %s", snapshot, exc)
                    if made:
                        self._remove_quietly(name)
                    raise
                try:
                    # Failing, the snapshot may have been removed by another client while
                    # it was read, and have read as zeros.
                    self._drop_clone_snapshot(image_id, source, snapshot)
                except BaseException:
                    self._remove_quietly(name)
                    raise
            finally:
                watch.close()

    def _take_clone_snapshot(self, image_id: str, source: str) -> str:
        """A new snapshot of the image ``image_id`` (volume ``source``) for a clone to read.

        Taken through a handle open for writing (librbd refuses it through a reader): on
        an image whose exclusive lock a guest holds, librbd asks the guest for the lock,
        which gives it up and takes it back at its next write. Open only for the moment,
        that handle is no writer that would keep this daemon's own whole-volume upload of
        the volume from its swap (``_prepare_swap``)."""
        snapshot = _hidden_name(CLONE_SNAPSHOT_PREFIX)
        self._through_writer(
            image_id, source, lambda image: image.create_snap(snapshot), "create a snapshot"
        )
        return snapshot

    @contextmanager
    def _opened_at(self, image_id: str, source: str, snapshot: str) -> Iterator[Any]:
        """The image ``image_id`` open read-only at ``snapshot`` for the length of a call.
        By its id: a whole-volume upload may swap another image in under its name."""
        with self._in_use():
            try:
                image = self._by_id(image_id, source, snapshot=snapshot, read_only=True)
            except Exception as exc:
                raise system_error(
                    f"failed to open the snapshot of volume '{self.volume_path(source)}'",
                    _errno(exc),
                ) from None
            try:
                yield image
            finally:
                image.close()

    def _by_id(self, image_id: str, name: str, **options: Any) -> Any:
        """A new handle of the image ``image_id``; of the image ``name`` for an old-format
        image, which has no id (``_id_of``). The caller holds the connection."""
        if not image_id:
            return self._rbd.Image(self._ioctx, name, **options)
        return self._rbd.Image(self._ioctx, image_id=image_id, **options)

    def _drop_clone_snapshot(self, image_id: str, source: str, snapshot: str) -> None:
        """Remove a clone's snapshot (through a handle open for writing, as it was taken);
        an error when it is gone already: someone removed it while the copy read it."""
        self._through_writer(
            image_id, source, lambda image: image.remove_snap(snapshot), "remove the snapshot"
        )

    def _through_writer(
        self, image_id: str, source: str, change: Callable[[Any], None], what: str
    ) -> None:
        """``change`` the image ``image_id`` (volume ``source``) through a handle open for
        writing for just that; a failure is said as "failed to ``what`` of volume ..."."""
        try:
            with self._in_use():
                image = self._by_id(image_id, source)
                try:
                    change(image)
                finally:
                    image.close()
        except Exception as exc:
            raise system_error(
                f"failed to {what} of volume '{self.volume_path(source)}'", _errno(exc)
            ) from None

    def delete(self, name: str, *, with_snapshots: bool = False) -> None:
        """Remove the image; one this daemon still reads is hidden, and removed when read.

        An image Ceph refuses to remove (one with snapshots, in a group, or open for
        writing: a guest's disk) is not hidden: it would be removed later, behind the
        back of whoever made Ceph refuse. Ceph's removal says no at once instead.
        ``with_snapshots`` first removes its snapshots, unprotecting them, one by one, as
        libvirt's rbd backend does (until one fails: one a clone depends on); not for an
        image Ceph would refuse to remove all the same, which keeps them.
        """
        if with_snapshots:
            with self.image(name, read_only=True) as image:
                held = self._held_elsewhere(image)
            if held:
                raise system_error(f"failed to remove volume '{self.volume_path(name)}'", held)
            self._remove_snapshots(name)
        with self.image(name, read_only=True) as image:
            image_id = _id_of(image)
            has_snapshots = _has_snapshots(self._ioctx, image)
            held = self._held_elsewhere(image)
        if held == errno.EBUSY:
            # Open for writing or watched elsewhere (a guest, another host's whole-volume
            # upload): Ceph refuses too, but only after taking the image's exclusive
            # lock, which tells every watcher of a write and so ends such an upload.
            # Ceph looks at the snapshots first.
            refusal = errno.ENOTEMPTY if has_snapshots else held
            raise system_error(f"failed to remove volume '{self.volume_path(name)}'", refusal)
        refused = has_snapshots or bool(held)
        claimed = not refused and self._claim_unless_open(image_id)
        hide = not refused and not claimed
        hidden = _hidden_name(REPLACED_PREFIX)
        try:
            with self._in_use():
                if hide:
                    self._rbd.RBD().rename(self._ioctx, name, hidden)
                else:
                    self._rbd.RBD().remove(self._ioctx, name)
        except BaseException as exc:
            if claimed:  # still there: it may be opened again
                self._unclaim(image_id)
            if isinstance(exc, self._rbd.ImageNotFound):
                raise no_volume_named(name) from None
            if isinstance(exc, Exception):
                raise system_error(
                    f"failed to remove volume '{self.volume_path(name)}'", _errno(exc)
                ) from None
            raise
        if claimed:
            self._removed(image_id)
        if hide:
            self._remove_hidden(hidden, image_id)

    def _held_elsewhere(self, image: Any) -> int:
        """The errno of Ceph's refusal to remove ``image`` for what holds it beside its
        snapshots (a handle open for writing: a guest's disk, another host's watch; an RBD
        group), in the order Ceph looks at them; 0 if none."""
        if self._writers_elsewhere(image) > 0:
            return errno.EBUSY
        if image.group()["pool"] >= 0:
            return errno.EMLINK
        return 0

    def _remove_snapshots(self, name: str) -> None:
        """Remove the image's snapshots (those of users, as ``rbd snap ls`` shows them)."""
        user = self._rbd.RBD_SNAP_NAMESPACE_TYPE_USER
        with self.image(name) as image:
            for snapshot, namespace in _snapshots(self._ioctx, image):
                if namespace not in (None, user):
                    continue
                # A name that is no UTF-8 goes to the client as the bytes it is.
                label = f"{self.volume_path(name)}@{snapshot.decode('utf-8', 'surrogateescape')}"
                try:
                    if image.is_protected_snap(snapshot):
                        image.unprotect_snap(snapshot)
                except Exception as exc:
                    raise system_error(
                        f"failed to unprotect snapshot '{label}'", _errno(exc)
                    ) from None
                try:
                    image.remove_snap(snapshot)
                except Exception as exc:
                    raise system_error(
                        f"failed to remove snapshot '{label}'", _errno(exc)
                    ) from None

    def wipe(self, name: str) -> None:
        """The whole image reads as zeros; its objects are freed."""
        with self.image(name) as image:
            try:
                zero_range(image, 0, walkable_size(image))
            except Exception as exc:
                raise system_error(f"failed to wipe RBD image {name}", _errno(exc)) from None

    def resize(
        self, name: str, capacity: int, *, delta: bool, shrink: bool, allocate: bool
    ) -> None:
        """libvirt's resize rules; RBD images cannot be preallocated, which libvirt's rbd
        backend says once the rules passed."""
        with self.image(name) as image:
            current = image.size()
            new = new_capacity(
                current,
                capacity,
                lambda: written_bytes(image, current),
                delta=delta,
                shrink=shrink,
                # Measuring the allocation walks the whole image (diff_iterate), and an
                # image never has more allocated than its size: only a shrink needs it.
                allocation_within_capacity=True,
                available=(lambda: self.runtime().available) if allocate else None,
            )
            if allocate:
                # libvirt's backend names every flag it was given but the delta, which the
                # driver has already applied.
                flags = VolResizeFlags.ALLOCATE | (VolResizeFlags.SHRINK if shrink else 0)
                raise storage_error(
                    ErrorCode.INVALID_ARG,
                    f"unsupported flags ({flags:#x}) in function virStorageBackendRBDResizeVol",
                )
            if new > MAX_IMAGE_SIZE:
                raise too_large(f"failed to resize the RBD image '{name}'")
            try:
                image.resize(new)
            except Exception as exc:
                raise system_error(
                    f"failed to resize the RBD image '{name}'", _errno(exc)
                ) from None

    # -- whole-volume uploads -------------------------------------------------------------

    def create_upload_temp(self, like: str) -> str:
        """A hidden empty image laid out as volume ``like`` is, of its size, to be swapped
        in on commit (``replace``) or removed (``remove_temp``); refused for an image with
        snapshots, which the swap would leave behind in the old image (and Ceph keeps an
        image while it has snapshots), and for one open for writing elsewhere. The
        volume is watched meanwhile (``ChangeWatch``): one changed by another client is
        not replaced."""
        with self.image(like, read_only=True) as image:
            self._check_nothing_holds_by_id(image, like)
            if _has_snapshots(self._ioctx, image):
                raise storage_error(
                    ErrorCode.OPERATION_INVALID,
                    f"volume '{like}' has snapshots, which a whole-volume upload would leave "
                    f"behind: {WRITE_IN_PLACE}",
                )
            if self._writers_elsewhere(image):
                # Open for writing elsewhere (a running guest): the swap would leave it
                # writing to the old image, which Ceph refuses to remove while it is open.
                raise volume_in_use(like)
            size = image.size()
            layout = self._layout(image)
            watch = ChangeWatch(self, image, like)
        temp = _hidden_name(UPLOAD_PREFIX)
        try:
            self._create(temp, size, layout)
        except BaseException:
            watch.close()
            raise
        with self._lock:
            self._change_watches[temp] = watch
        return temp

    def _check_nothing_holds_by_id(self, image: Any, name: str) -> None:
        """Refuse a whole-volume upload to an image that an RBD group or mirroring holds:
        they know it by its id, and the swap would leave them with the old image (which
        Ceph cannot remove while it is in a group) and the volume outside them. Any
        change to either while the upload runs is seen by its watch (``ChangeWatch``)."""
        group = image.group()
        if group["pool"] >= 0:
            raise storage_error(
                ErrorCode.OPERATION_INVALID,
                f"volume '{name}' is in the RBD group '{group['name']}', which a whole-volume "
                f"upload would leave with the old image: {WRITE_IN_PLACE}",
            )
        if image.mirror_image_get_info()["state"] != self._rbd.RBD_MIRROR_IMAGE_DISABLED:
            raise storage_error(
                ErrorCode.OPERATION_INVALID,
                f"volume '{name}' is mirrored, which a whole-volume upload would leave to the "
                f"old image: {WRITE_IN_PLACE}",
            )

    def _layout(self, image: Any) -> dict[str, Any]:
        """What a new image needs to be laid out as ``image`` is (``RBD.create``'s
        arguments): object size, striping, features and data pool."""
        rbd = self._rbd
        # Features librbd sets itself (the data pool one from its argument), never asked for.
        implied = (
            rbd.RBD_FEATURE_DATA_POOL
            | rbd.RBD_FEATURE_OPERATIONS
            | rbd.RBD_FEATURE_MIGRATING
            | rbd.RBD_FEATURE_NON_PRIMARY
        )
        data_pool_id = image.data_pool_id()
        data_pool = None
        if data_pool_id >= 0 and data_pool_id != self._ioctx.get_pool_id():
            data_pool = self._cluster.pool_reverse_lookup(data_pool_id)
        return {
            "order": image.stat()["order"],
            "features": image.features() & ~implied,
            "stripe_unit": image.stripe_unit(),
            "stripe_count": image.stripe_count(),
            "data_pool": data_pool,
        }

    def replace(self, temp: str, name: str) -> Callable[[], None]:
        """Swap image ``temp`` in as volume ``name``; returns what removes the old image.

        When the swap fails, the upload image ``temp`` is removed, except while the
        volume's image stays hidden (the undo failed too): the next pool start gives it
        back only while ``temp`` is there (``recover_after_crash``), and would take it
        for a leftover without.
        """
        with self._in_use():
            return self._swap(temp, name)

    def _swap(self, temp: str, name: str) -> Callable[[], None]:
        rbd = self._rbd.RBD()
        old = _hidden_name(REPLACED_PREFIX)
        with self._lock:
            watch = self._change_watches.pop(temp, None)
        try:
            old_id = self._prepare_swap(temp, name, old, watch)
        except BaseException as exc:
            self._drop_upload(temp)
            if isinstance(exc, ErrorReport) or not isinstance(exc, Exception):
                raise
            raise system_error(f"cannot replace volume '{name}'", _errno(exc)) from None
        # A crash from the first rename to the second leaves no image ``name``: the
        # record tells the next pool start to rename ``old`` back (``recover_after_crash``).
        try:
            rbd.rename(self._ioctx, name, old)
            rbd.rename(self._ioctx, temp, name)
        except BaseException as exc:
            # A rename that failed may have been done all the same (a timeout): what
            # decides is whether the volume's image is found hidden and cannot be unhidden.
            if self._unhide(old, name):
                self._drop_upload(temp)
            if not isinstance(exc, Exception):
                raise
            raise system_error(f"cannot replace volume '{name}'", _errno(exc)) from None
        self._drop_swap_record(old)
        return lambda: self._remove_hidden(old, old_id)

    def _drop_upload(self, temp: str) -> None:
        """Remove the image of an upload whose swap failed; one that stays is removed by
        the next pool start."""
        try:
            self._remove_quietly(temp)
        except Exception as exc:
            log.warning("cannot remove the upload image '%s': %s", temp, exc)

    def _prepare_swap(self, temp: str, name: str, old: str, watch: ChangeWatch | None) -> str:
        """Before volume ``name`` is hidden as ``old``: refuse if another client changed
        it since the upload began, or made it again (``watch``, closed here whatever
        happens), or has it open for writing now, give upload image ``temp`` the
        volume's image-meta (libvirt's in-place upload keeps it), then record on the
        volume what the swap is about to make of it. Returns the volume image's id."""
        try:
            image = self.open_image(name)
            try:
                # Swapped in, the upload would drop what another client wrote meanwhile.
                changed = watch is None or watch.changed(image)
            except BaseException:
                self.close_image(image)
                raise
        finally:
            if watch is not None:
                watch.close()  # before this swap's own changes to the volume
        try:
            image_id = _id_of(image)
            # create_upload_temp found nobody writing it, but a guest may have opened it
            # since: the swap would leave it writing into the hidden old image, every
            # write after it lost. This handle, open for writing, is one watcher itself.
            if changed or self._writers_elsewhere(image) > 1:
                raise volume_in_use(name)
            meta = [(k, v) for k, v in image.metadata_list() if k != SWAP_RECORD_KEY]
            upload = self.open_image(temp, hidden=True)
            try:
                for key, value in meta:
                    upload.metadata_set(key, value)
            finally:
                self.close_image(upload)
            record = {"volume": name, "hidden": old, "upload": temp}
            image.metadata_set(SWAP_RECORD_KEY, json.dumps(record))
        finally:
            self.close_image(image)
        return image_id

    def _unhide(self, old: str, name: str) -> bool:
        """Undo the first rename of a swap that failed; True once the volume's image is not
        hidden as ``old`` (any more, or at all), False if it still may be."""
        try:
            self._rbd.RBD().rename(self._ioctx, old, name)
        except self._rbd.ImageNotFound:
            return True  # never hidden, or given back by another daemon's pool start
        except Exception as exc:
            # The record on ``old`` lets the next pool start do it.
            log.error("cannot give volume '%s' back its image '%s': %s", name, old, exc)
            return False
        return True

    def _drop_swap_record(self, image_name: str) -> None:
        """Remove a swap's record that no longer matters (a leftover one is harmless)."""
        try:
            with self._in_use(), suppress(KeyError):
                image = self._rbd.Image(self._ioctx, image_name)
                try:
                    image.metadata_remove(SWAP_RECORD_KEY)
                finally:
                    image.close()
        except Exception as exc:
            log.warning("cannot remove the swap record of RBD image '%s': %s", image_name, exc)

    # -- what a crash leaves -------------------------------------------------------------

    def recover_after_crash(self) -> None:
        """At pool start: give back the volumes a crash left hidden in the middle of a
        swap, then start removing the hidden images nobody has open, in a thread of its
        own. Never fails the start: what cannot be looked at or removed is logged and kept.

        The renames back are done before the pool serves anything: a volume must be
        there when it is listed. The removals are not waited for: librbd removes an
        image object by object, by name where the image has no object map, and a 1 TiB
        sparse one took 44 s on a one-OSD test cluster; neither the daemon's start
        (systemd's start timeout) nor a pool-start should wait for that. A stop of the
        pool cancels a removal at its next object (the image is kept for the next start).
        """
        try:
            names = set(self._all_names())
        except ErrorReport as exc:
            log.error("cannot look for leftovers in Ceph pool '%s': %s", self.path, exc)
            return
        for hidden in sorted(n for n in names if _is_hidden_name(n, REPLACED_PREFIX)):
            volume = self._interrupted_swap(hidden, names)
            if volume is not None and self._restore(hidden, volume):
                names.discard(hidden)
                names.add(volume)
        leftovers = sorted(n for n in names if _is_hidden_name(n, UPLOAD_PREFIX, REPLACED_PREFIX))
        # A clone's snapshot may be on any image: a volume, or one a swap or delete hid
        # (``_remove_leftover`` removes those with the image).
        snapshotted = sorted(n for n in names if is_volume_name(n))
        if snapshotted or leftovers:
            self._sweeper = threading.Thread(
                target=self._remove_leftovers,
                args=(leftovers, snapshotted),
                name=f"rbd-leftovers-{self.path}",
                daemon=True,  # a daemon's stop waits for it only so long (wait_for_sweep)
            )
            self._sweeper.start()

    def _remove_leftovers(self, names: list[str], snapshotted: list[str]) -> None:
        """The sweeper thread: remove each of ``names`` (``_remove_leftover``), then the
        clones' snapshots of each of ``snapshotted`` (``_remove_clone_snapshots``), until
        the pool stops."""
        for name in names:
            if self._closing:
                log.info("kept %s: the pool stopped (Ceph pool '%s')", name, self.path)
                continue
            try:
                self._remove_leftover(name)
            except ErrorReport:  # the pool stopped and its connection is gone
                log.info("kept %s: the pool stopped (Ceph pool '%s')", name, self.path)
            except Exception:
                log.exception("kept %s: its removal failed (Ceph pool '%s')", name, self.path)
        for name in snapshotted:
            if self._closing:
                return
            try:
                self._remove_clone_snapshots(name)
            except ErrorReport:  # the pool stopped and its connection is gone
                return
            except Exception:
                log.exception("kept the clone snapshots of %s (Ceph pool '%s')", name, self.path)

    def _interrupted_swap(self, hidden: str, names: set[str]) -> str | None:
        """The volume a swap hid as ``hidden`` and a crash kept from being replaced, or
        None. The record must name ``hidden`` itself (a record a crash left on a live
        volume goes with it when that is deleted and hidden under another name), the
        volume must be missing, and the upload image still there under its hidden name
        (after the second rename it is not: the upload was done)."""
        try:
            with self._in_use():
                image = self._rbd.Image(self._ioctx, hidden, read_only=True)
                try:
                    text = image.metadata_get(SWAP_RECORD_KEY)
                finally:
                    image.close()
        except (KeyError, self._rbd.ImageNotFound):
            return None
        except Exception as exc:
            log.warning("cannot read the swap record of RBD image '%s': %s", hidden, exc)
            return None
        record = _parse_swap_record(text)
        if record is None or record["hidden"] != hidden:
            return None
        volume, upload = record["volume"], record["upload"]
        if not is_volume_name(volume) or volume in names or upload not in names:
            return None
        return volume

    def _restore(self, hidden: str, volume: str) -> bool:
        try:
            with self._in_use():
                self._rbd.RBD().rename(self._ioctx, hidden, volume)
        except Exception as exc:  # another daemon restored it first, or made a new one
            log.warning("cannot restore volume '%s' from %s: %s", volume, hidden, exc)
            return False
        log.warning(
            "restored volume '%s' from %s, which a whole-volume upload cut short by a crash "
            "had hidden (Ceph pool '%s')",
            volume,
            hidden,
            self.path,
        )
        self._drop_swap_record(volume)
        return True

    def _remove_leftover(self, name: str) -> None:
        """Remove hidden image ``name`` unless someone has it open (librbd's watchers: a
        running upload, an old image another daemon still reads) or that cannot be told."""
        try:
            with self._in_use():
                image = self._rbd.Image(self._ioctx, name, read_only=True)
                try:
                    image_id = _id_of(image)
                    watched = any(True for _ in image.watchers_list())
                    snapshots_left = _clone_snapshots(self._ioctx, image)
                finally:
                    image.close()
        except self._rbd.ImageNotFound:
            self._finish_cut_removal(name)
            return
        except Exception as exc:
            log.warning("kept %s: cannot tell whether it is in use: %s", name, exc)
            return
        if watched:
            log.info("kept %s: open elsewhere (Ceph pool '%s')", name, self.path)
            return
        if not self._claim_unless_open(image_id):
            log.info("kept %s: open here (Ceph pool '%s')", name, self.path)
            return
        if snapshots_left:  # Ceph removes no image with snapshots
            try:
                with self._in_use():
                    self._remove_snapshots_left(image_id, name, snapshots_left)
            except Exception as exc:
                self._unclaim(image_id)
                log.warning("kept %s: cannot remove its snapshots: %s", name, exc)
                return
        if self._remove_swept(name) is False:
            self._unclaim(image_id)
            return
        self._removed(image_id)

    def _remove_clone_snapshots(self, name: str) -> None:
        """Remove the snapshots of image ``name`` that clones cut short by a crash left
        (only names ``create_from`` makes), unless someone has the image open for writing
        or watches it (librbd's watchers): a clone running now, here or through another
        daemon, watches its source (a guest's disk keeps them until it is closed)."""
        with self._in_use():
            try:
                image = self._rbd.Image(self._ioctx, name, read_only=True)
            except self._rbd.ImageNotFound:
                return
            try:
                left = _clone_snapshots(self._ioctx, image)
                watched = bool(left) and any(True for _ in image.watchers_list())
                image_id = _id_of(image)
            finally:
                image.close()
            if not left:
                return
            if watched:
                log.info("kept the clone snapshots of %s: open elsewhere", name)
                return
            self._remove_snapshots_left(image_id, name, left)

    def _remove_snapshots_left(self, image_id: str, name: str, left: list[str]) -> None:
        """Remove the snapshots ``left`` of an image nobody watches; the caller holds the
        connection."""
        image = self._by_id(image_id, name)
        try:
            for snapshot in left:
                try:
                    image.remove_snap(snapshot)
                except self._rbd.ImageNotFound:
                    # Its clone ended (and removed it) after the image was looked at:
                    # the rest are still leftovers.
                    continue
                log.info(
                    "removed snapshot %s@%s, left by a crash (Ceph pool '%s')",
                    name,
                    snapshot,
                    self.path,
                )
        finally:
            image.close()

    def _finish_cut_removal(self, name: str) -> None:
        """A listed image that does not open: gone since it was listed (its upload was
        done, another daemon's clean-up came first), one being made (another host's
        upload: librbd lists it a moment before it opens), or one whose removal a stop
        or a crash cut short, which took its header and left its name listed. Nobody can
        open that one, and only librbd's removal takes it away; so an image still not
        opening after ``CREATION_GRACE`` seconds is removed, one opening then is kept."""
        if self._stopped.wait(CREATION_GRACE):
            log.info("kept %s: the pool stopped", name)
            return
        try:
            with self._in_use():
                self._rbd.Image(self._ioctx, name, read_only=True).close()
        except self._rbd.ImageNotFound:
            pass  # still not opening
        except Exception as exc:
            log.warning("kept %s: cannot tell whether it is in use: %s", name, exc)
            return
        else:
            log.info("kept %s: it was being made (Ceph pool '%s')", name, self.path)
            return
        self._remove_swept(name)

    def _remove_swept(self, name: str) -> bool | None:
        """Remove a leftover, given up when the pool stops; True once removed (logged),
        None when it was gone already, False when kept (logged)."""
        try:
            with self._in_use():
                self._rbd.RBD().remove(self._ioctx, name, on_progress=self._cancel_when_stopping)
        except self._rbd.ImageNotFound:
            return None
        except Exception as exc:  # Ceph refuses too while it is watched
            if self._closing:
                log.info("kept %s: the pool stopped during its removal", name)
            else:
                log.warning("kept %s: cannot remove it: %s", name, exc)
            return False
        log.info("removed %s, left by a crash (Ceph pool '%s')", name, self.path)
        return True

    def remove_temp(self, temp: str) -> None:
        """Remove the image of a whole-volume upload given up (``create_upload_temp``)."""
        with self._lock:
            watch = self._change_watches.pop(temp, None)
        try:
            self._remove_quietly(temp)
        finally:
            if watch is not None:
                watch.close()

    def _cancel_when_stopping(self, _done: int, _total: int) -> int:
        """librbd's progress callback of a removal: non-zero makes it give up."""
        return -errno.ECANCELED if self._closing else 0

    def _remove_quietly(self, name: str) -> None:
        with self._in_use(), suppress(self._rbd.ImageNotFound):
            self._rbd.RBD().remove(self._ioctx, name)


class Stopping:
    """Set when the daemon stops: a pool start waiting for a cluster gives up (``connect``)."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.stopped = False

    def set(self) -> None:
        with self.condition:
            self.stopped = True
            self.condition.notify_all()


class _Connecting:
    """librados' connect to a cluster, in a thread of its own: a monitor that does not
    answer takes librados' timeout (30 s), which a daemon's stop does not wait for. The
    connection belongs to whoever is first under ``stopping``'s lock: the waiter, once
    the connect ended, or else the thread, which shuts down the one it made for nobody."""

    def __init__(self, cluster: Any, stopping: Stopping) -> None:
        self._cluster = cluster
        self._stopping = stopping
        self._ended = False
        self._given_up = False
        self._failure: BaseException | None = None
        threading.Thread(target=self._connect, name="rados-connect", daemon=True).start()

    def _connect(self) -> None:
        failure: BaseException | None = None
        try:
            self._cluster.connect(timeout=int(CLUSTER_TIMEOUT))
        except Exception as exc:
            failure = exc
        with self._stopping.condition:
            self._ended, self._failure = True, failure
            given_up = self._given_up
            self._stopping.condition.notify_all()
        if given_up or failure is not None:
            self._cluster.shutdown()

    def wait(self) -> BaseException | None:
        """None once connected; librados' error; or the daemon's stop, as an error."""
        with self._stopping.condition:
            self._stopping.condition.wait_for(lambda: self._ended or self._stopping.stopped)
            if self._ended:
                return self._failure
            self._given_up = True
        return InterruptedError(errno.EINTR, "the daemon is stopping")


class ChangeWatch:
    """Whether another client of the Ceph pool changed an image since this was made.

    librbd notifies the watchers of an image's header object when a writer takes the
    image's exclusive lock (every writer does before its first write, with the feature
    Ceph enables by default), and when its size or image-meta change; readers send
    nothing. So a notification is a change. Without the feature, a changed size or
    modification time is (librbd moves the latter at most once a minute). A watch that
    fails (a lost connection) can no longer tell: that counts as a change too.

    Notifications this daemon's own connection sends (a swap's changes to the image it
    hides while a clone here reads it) are no change: the daemon changes no volume it
    uploads to or clones meanwhile but so. The watch is one of the image's watchers
    (``watchers_list``) until ``close``, one other daemons see, and this one does not
    count (``RbdVolumes._writers_elsewhere``); it keeps the connection open meanwhile
    (``RbdVolumes.acquire``).
    """

    def __init__(self, volumes: RbdVolumes, image: Any, name: str) -> None:
        self._volumes: RbdVolumes | None = volumes
        self._image_id = _id_of(image)
        self._size: int = image.size()
        self._modified = _modified_at(image)
        self._notified = threading.Event()
        self._client_id = volumes.client_id
        self._watch: Any = None
        volumes.acquire()
        if not self._image_id:  # an old-format image has no header object by its id
            return
        try:
            self._watch = volumes._ioctx.watch(
                f"rbd_header.{self._image_id}", self._on_notify, self._on_error
            )
        except Exception as exc:
            self.close()
            raise system_error(f"cannot watch volume '{name}' for changes", _errno(exc)) from None
        with volumes._lock:
            volumes._own_watches.add(self._watch.get_id())

    def _on_notify(self, _notify_id: int, notifier_id: int, *_args: object) -> None:
        if notifier_id != self._client_id:  # this daemon's own changes are none
            self._notified.set()

    def _on_error(self, *_args: object) -> None:
        self._notified.set()

    def changed(self, image: Any) -> bool:
        """True if ``image`` (the volume now) is another image, or this one was changed."""
        return (
            self._notified.is_set()
            or _id_of(image) != self._image_id
            or image.size() != self._size
            or _modified_at(image) != self._modified
        )

    def close(self) -> None:
        """Stop watching; safe to call twice."""
        watch, self._watch = self._watch, None
        volumes, self._volumes = self._volumes, None
        try:
            if watch is not None:
                assert volumes is not None
                cookie = watch.get_id()
                try:
                    watch.close()
                except Exception as exc:
                    # librados stops the watch even when its unwatch fails, but the
                    # binding then skips the wait for callbacks under way (and would
                    # unwatch again when collected): the object they call stays.
                    log.warning("cannot stop watching an RBD image: %s", exc)
                    volumes.keep_until_shutdown(watch)
                with volumes._lock:
                    volumes._own_watches.discard(cookie)
        finally:
            if volumes is not None:
                volumes.release()


def _modified_at(image: Any) -> object:
    """The image's modification time, None where librbd cannot tell it."""
    try:
        return image.modify_timestamp()
    except Exception:
        return None


def _hidden_name(prefix: str) -> str:
    """A new hidden image name: ``prefix`` and random hex digits."""
    return prefix + secrets.token_hex(_TOKEN_BYTES)


def _is_hidden_name(name: str, *prefixes: str) -> bool:
    """Whether ``name`` is one ``_hidden_name`` makes with one of ``prefixes``."""
    for prefix in prefixes:
        if name.startswith(prefix):
            token = name[len(prefix) :]
            return len(token) == 2 * _TOKEN_BYTES and all(c in "0123456789abcdef" for c in token)
    return False


def _ceph_string(raw: bytes) -> bytes:
    """A string as Ceph encodes it: its length (32 bits, little-endian), then its bytes."""
    return len(raw).to_bytes(4, "little") + raw


def _ceph_string_at(data: bytes, at: int) -> tuple[bytes, int]:
    """The string ``_ceph_string`` encoded at offset ``at`` of ``data``, and the offset
    just past it."""
    end = at + 4 + int.from_bytes(data[at : at + 4], "little")
    return data[at + 4 : end], end


def _decode_string_map(data: bytes) -> Iterator[bytes]:
    """The keys of a map of strings to strings in Ceph's encoding, in its order."""
    count, at = int.from_bytes(data[:4], "little"), 4
    for _ in range(count):
        key, at = _ceph_string_at(data, at)
        _, at = _ceph_string_at(data, at)
        yield key


def _id_of(image: Any) -> str:
    """The image's id, which renames keep; "" for an image of the old format 1 (which
    Ceph no longer creates), which has none: those are all counted as one image."""
    try:
        image_id: str = image.id()
    except Exception:
        return ""
    return image_id


def _parse_swap_record(text: str) -> dict[str, str] | None:
    """A swap's record (``SWAP_RECORD_KEY``), or None for anything else found there."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    fields = ("volume", "hidden", "upload")
    if not isinstance(record, dict) or not all(isinstance(record.get(f), str) for f in fields):
        return None
    return {field: record[field] for field in fields}


def _close_quietly(image: Any) -> None:
    """Close a handle of our own whose closing nothing waits for (errors are logged)."""
    if image is None:
        return
    try:
        image.close()
    except Exception as exc:
        log.warning("cannot close an RBD image: %s", exc)


def _watcher_count(image: Any, ignored: Collection[tuple[int, int]] = ()) -> int:
    """Handles open for writing on the image, cluster-wide (a reader registers none), and
    other watches, but those ``ignored`` (by client id and cookie)."""
    return sum(
        1 for watcher in image.watchers_list() if (watcher["id"], watcher["cookie"]) not in ignored
    )


def written_bytes(image: Any, size: int) -> int:
    """What the object map says is written in the image's ``size`` bytes (whole objects),
    counted as librbd reports them: memory stays the same whatever the image's size, the
    time grows with it (librbd goes through every object of the map). The capacity for an
    image too large to walk, as libvirt reports an image whose object map cannot tell."""
    if size > MAX_IMAGE_SIZE:
        return size
    total = 0
    run = [0, 0]  # the extent being merged: librbd reports them in order

    def seen(start: int, length: int, exists: bool) -> int:
        nonlocal total
        if exists and length:
            if run[1] >= start and run[1] > run[0]:
                run[1] = max(run[1], start + length)
            else:
                total += run[1] - run[0]
                run[0], run[1] = start, start + length
        return 0

    if size > 0:
        image.diff_iterate(0, size, None, seen, whole_object=True)
    return total + min(run[1], size) - run[0]


def _reported_allocation(rbd: ModuleType, image: Any, size: int) -> int:
    """A volume's allocation as ``vol-info`` reports it, at a cost that does not grow with
    the image: what the object map says is written when the image has a valid fast-diff
    map of at most ``INFO_WALK_OBJECTS`` objects, the capacity otherwise, as libvirt
    reports an image without a usable fast-diff map. librbd goes through the whole map
    for any query (about 57 s and 64 MiB for a thin 1 PiB image), and without fast-diff
    asks the cluster about every object."""
    if not _fast_diff_usable(rbd, image) or _object_count(image, size) > INFO_WALK_OBJECTS:
        return size
    return written_bytes(image, size)


def _object_count(image: Any, size: int) -> int:
    object_size: int = image.stat()["obj_size"]
    return -(-size // object_size)


def _fast_diff_usable(rbd: ModuleType, image: Any) -> bool:
    """Whether the image has a fast-diff object map librbd trusts."""
    try:
        if not image.features() & rbd.RBD_FEATURE_FAST_DIFF:
            return False
        return not image.flags() & rbd.RBD_FLAG_FAST_DIFF_INVALID
    except Exception:
        return False


def _snapshots(ioctx: Any, image: Any) -> list[tuple[bytes, int | None]]:
    """The image's snapshots, in Ceph's order: each one's name, the bytes Ceph holds, and
    its namespace type (None where the binding does not say).

    Ceph's binding fails the whole listing over a name that is no UTF-8 (another client
    may make one: librbd takes any bytes): the names are then read from the image's
    header object (class ``rbd``: ``get_snapcontext`` for the ids, ``get_snapshot_name``
    for each one's name), and the binding takes them back as bytes.
    """
    try:
        return [
            (snapshot["name"].encode(), snapshot.get("namespace"))
            for snapshot in image.list_snaps()
        ]
    except UnicodeDecodeError:
        pass
    header = f"rbd_header.{image.id()}"
    _, context = ioctx.execute(header, "rbd", "get_snapcontext", b"", SNAPSHOT_CONTEXT_BYTES)
    context = bytes(context)
    # The sequence number (64 bits), then the ids (a count, 64 bits each), newest first.
    count = int.from_bytes(context[8:12], "little")
    ids = [int.from_bytes(context[12 + 8 * i : 20 + 8 * i], "little") for i in range(count)]
    snapshots: list[tuple[bytes, int | None]] = []
    for snap_id in sorted(ids):
        _, reply = ioctx.execute(
            header, "rbd", "get_snapshot_name", snap_id.to_bytes(8, "little"), SNAPSHOT_NAME_BYTES
        )
        name, _ = _ceph_string_at(bytes(reply), 0)
        snapshots.append((name, image.snap_get_namespace_type(snap_id)))
    return snapshots


def _clone_snapshots(ioctx: Any, image: Any) -> list[str]:
    """The names of the image's snapshots that clones take (``CLONE_SNAPSHOT_PREFIX``),
    but for a protected one or one with children: ``create_from`` does neither to its
    snapshot, so such a one is another client's, and librbd would move one with (clone
    v2) children to its trash rather than refuse to remove it. (A name that is no UTF-8
    is never one: kept as surrogates, it has no hex digits to match.)"""
    names = [
        name
        for name in (raw.decode("utf-8", "surrogateescape") for raw, _ in _snapshots(ioctx, image))
        if _is_hidden_name(name, CLONE_SNAPSHOT_PREFIX)
    ]
    ours = []
    for name in names:
        if image.is_protected_snap(name):
            continue
        image.set_snap(name)
        try:
            children = any(True for _ in image.list_children2())
        finally:
            image.set_snap(None)
        if not children:
            ours.append(name)
    return ours


def _has_snapshots(ioctx: Any, image: Any) -> bool:
    return bool(_snapshots(ioctx, image))


def copy_range(source: Any, target: Any, start: int, end: int) -> None:
    """Copy ``[start, end)`` of image ``source`` to ``target``; zero blocks are not written."""
    step = 4 << 20
    zeros = bytes(step)
    while start < end:
        count = min(step, end - start)
        data = source.read(start, count)
        if data != zeros[: len(data)]:
            target.write(data, start)
        start += count
