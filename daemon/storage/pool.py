"""One directory pool: its definitions, whether it runs, and the volumes it is busy with."""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import os
from typing import TYPE_CHECKING

from virtvol.protocol.errors import ErrorCode, ErrorReport, check_flags

from .copyonwrite import set_copy_on_write
from .flags import PoolBuildFlags
from .model import PoolRef
from .poolxml import DEFAULT_DIR_MODE, PoolDefinition, PoolRuntime
from .rbdvolumes import RbdVolumes, Stopping
from .reports import (
    STORAGE,
    pool_in_job,
    pool_not_active,
    storage_error,
    system_error,
    volume_in_use,
)
from .volumes import VolumeDir

if TYPE_CHECKING:
    from .secrets import SecretStore


class Busy(enum.Enum):
    """Why a volume may not be uploaded to, deleted, wiped or resized right now."""

    BUILDING = "building"
    UPLOADING = "uploading"  # a whole-volume upload: a new file replaces it at the end
    WRITING = "writing"  # an upload with an offset or a length: written in place
    CHANGING = "changing"  # being deleted, wiped or resized


class PoolJob(enum.Enum):
    """Work on an inactive pool that the registry waits for without holding its lock, and
    the words for it that refuse other changes to the pool meanwhile."""

    STARTING = "starting"  # an rbd pool connecting to its cluster
    BUILDING = "being built"  # its folder being made (a frozen file system waits)
    DELETING = "being deleted"  # its folder being removed


class Pool:
    """Registry entry of a pool.

    ``live`` is the definition the pool runs (or would run) with; ``config`` is
    the persisted one (None for a transient pool). They differ only while a
    running pool has been redefined: the new definition applies at next start.
    """

    def __init__(self, live: PoolDefinition, config: PoolDefinition | None) -> None:
        self.live = live
        self.config = config
        self.autostart = False
        self.volumes: VolumeDir | None = None
        # The images of an active rbd pool (``volumes`` stays None for those).
        self.rbd: RbdVolumes | None = None
        self.runtime: PoolRuntime | None = None
        self.busy: dict[str, Busy] = {}
        # Volumes being read as a clone's source, with the number of clones reading
        # each: they may be read and cloned again, but not changed under the copy.
        self.cloning: collections.Counter[str] = collections.Counter()
        # Work on the inactive pool that the registry waits for unlocked.
        self.job: PoolJob | None = None
        # The upload temporaries of this daemon in the pool's directory, shared by every
        # ``VolumeDir`` the pool opens: a clean-up through a view taken before the pool
        # was stopped and started again still sees those the new one reserved.
        self.upload_temps: dict[str, int | None] = {}

    @property
    def name(self) -> str:
        return self.live.name

    @property
    def uuid(self) -> bytes:
        return self.live.uuid

    @property
    def ref(self) -> PoolRef:
        return PoolRef(self.live.name, self.live.uuid)

    @property
    def active(self) -> bool:
        return self.volumes is not None or self.rbd is not None

    @property
    def persistent(self) -> bool:
        return self.config is not None

    def active_volumes(self) -> VolumeDir:
        """The pool's files, or libvirt's "storage pool '%s' is not active".

        Refused while the pool's path names another directory than the one it opened
        (moved, removed, replaced by a symbolic link): libvirt, which goes by the path,
        would use the one there now, and the paths the volumes are reported with name
        that one. A refresh takes it (``reopen``).
        """
        volumes = self.opened_directory()
        if not volumes.in_place():
            raise storage_error(
                ErrorCode.OPERATION_INVALID,
                f"storage pool '{self.name}' directory '{volumes.path}' is not the one the "
                "pool opened any more: refresh the pool to use the one there now",
            )
        return volumes

    def check_no_job(self) -> None:
        """Refuse to change a pool while a ``job`` runs on it."""
        if self.job is not None:
            raise pool_in_job(self.name, self.job.value)

    def opened_directory(self) -> VolumeDir:
        """The directory the pool opened, wherever its path leads now; or "not active"."""
        if self.volumes is None:
            raise pool_not_active(self.name)
        return self.volumes

    def reopen(self) -> None:
        """Open the directory the pool's path names now in place of the one it opened;
        on failure the pool is left inactive (as libvirt stops a pool it cannot refresh)."""
        old = self.opened_directory()
        self.volumes = None
        old.close()
        self.start(build=False)

    def start(self, *, build: bool, secrets: SecretStore | None = None) -> None:
        """Open the target directory (creating it first when ``build``).

        An rbd pool connects to its cluster instead, with the key of the secret
        its ``<auth>`` names (looked up in ``secrets``).
        """
        if self.live.rbd is not None:
            assert secrets is not None
            self.rbd, self.runtime = self.connect_rbd(secrets)
            return
        target = self.live.target
        if build:
            self.make_directory()
        try:
            fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise system_error(f"cannot open directory '{target}'", exc) from None
        volumes = VolumeDir(target, fd, self.upload_temps)
        try:
            self.volumes = volumes
            self.refresh_runtime()
        except OSError as exc:
            self.volumes = None
            volumes.close()
            raise system_error(f"cannot read directory '{target}'", exc) from None

    def make_directory(self) -> None:
        """Make the target directory in libvirt's steps and words (its BuildLocal): the
        parents as glib makes them, the folder unless something is there already (an
        existing folder keeps its mode unless one is asked for), its owner and group, its
        mode, then its copy on write."""
        target = self.live.target
        parent = os.path.dirname(target)
        if parent != "/":
            _make_parents(parent)
        existed = os.path.exists(target)
        if existed and not os.path.isdir(target):
            # libvirt finds something there, makes nothing and gives even a file the pool's
            # mode and owner; a definition is not to be a way to change a file's
            # permissions, so this is refused as mkdir would refuse it.
            raise system_error(f"failed to create directory '{target}'", errno.EEXIST)
        if not existed:
            try:
                os.mkdir(target, 0o700)
            except OSError as exc:
                raise system_error(f"failed to create directory '{target}'", exc) from None
        try:
            self._set_owner_and_mode(target, created=not existed)
        except BaseException:
            if not existed:
                with contextlib.suppress(OSError):
                    os.rmdir(target)
            raise
        if self.live.cow is not None:
            # Copy on write as <features><cow> asks, which fails the build off btrfs (the
            # folder stays made), as in libvirt.
            try:
                fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                raise system_error(f"unable to open '{target}'", exc) from None
            try:
                set_copy_on_write(fd, target, enabled=self.live.cow)
            finally:
                os.close(fd)

    def _set_owner_and_mode(self, target: str, *, created: bool) -> None:
        """libvirt's virDirCreate after its mkdir; a folder it made is removed again when
        this fails (by the caller). Done on the folder opened, not by its path: whoever may
        write the parent could swap a folder just made for a link to another file, and
        the owner and mode asked for would go to that file. A folder that was there is
        followed through a link, as libvirt follows it (a pool's path may be a link)."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if created else 0)
        try:
            fd = os.open(target, flags)
        except OSError as exc:
            raise system_error(f"cannot open directory '{target}'", exc) from None
        try:
            self._give_owner_and_mode(fd, target, created=created)
        finally:
            os.close(fd)

    def _give_owner_and_mode(self, fd: int, target: str, *, created: bool) -> None:
        # The owner and group asked for, as libvirt gives them to the folder it builds
        # (and to one that was there already).
        uid = -1 if self.live.owner is None else self.live.owner
        gid = -1 if self.live.group is None else self.live.group
        if uid != -1 or gid != -1:
            try:
                os.fchown(fd, uid, gid)
            except OSError as exc:
                unsigned = f"({uid & 0xFFFFFFFF}, {gid & 0xFFFFFFFF})"
                raise system_error(f"cannot chown '{target}' to {unsigned}", exc) from None
        # As libvirt: an existing directory keeps its mode unless one is asked for.
        mode = DEFAULT_DIR_MODE if self.live.mode is None and created else self.live.mode
        if mode is not None:
            try:
                os.fchmod(fd, mode)
            except OSError as exc:
                raise system_error(f"cannot set mode of '{target}' to {mode:04o}", exc) from None

    def build(self, flags: int) -> None:
        """STORAGE_POOL_BUILD of an inactive directory pool: make its directory.

        Overwriting or not a source device's file system asks for a device this pool type
        does not have; libvirt refuses that only once the directory is made, and so do we.
        """
        formats = PoolBuildFlags.OVERWRITE | PoolBuildFlags.NO_OVERWRITE
        check_flags(flags, int(formats), "virStorageBackendFileSystemBuild", STORAGE)
        if flags & formats == formats:
            raise ErrorReport(
                ErrorCode.INVALID_ARG,
                STORAGE,
                "Flags 'VIR_STORAGE_POOL_BUILD_OVERWRITE' and "
                "'VIR_STORAGE_POOL_BUILD_NO_OVERWRITE' are mutually exclusive",
            )
        self.make_directory()
        if flags & formats:
            raise storage_error(
                ErrorCode.OPERATION_INVALID,
                f"No source device specified when formatting pool '{self.name}'",
            )

    def delete_directory(self, flags: int) -> None:
        """STORAGE_POOL_DELETE of an inactive directory pool: remove its (empty) directory."""
        check_flags(flags, 0, "virStorageBackendDeleteLocal", STORAGE)
        try:
            os.rmdir(self.live.target)
        except OSError as exc:
            raise system_error(
                f"failed to remove pool '{self.live.target}'", exc, STORAGE
            ) from None

    def remove_stale_temps(self) -> None:
        """Delete the upload temporaries a crash left in the directory (this pool's running
        uploads keep theirs). Only for a directory no other running pool serves: the
        temporaries of that pool's uploads are not stale."""
        remove_leftovers(self.opened_directory())

    def connect_rbd(
        self, secrets: SecretStore, stopping: Stopping | None = None
    ) -> tuple[RbdVolumes, PoolRuntime]:
        """Connect an rbd pool to its cluster with the key of the secret its ``<auth>``
        names (given up when ``stopping`` is set), set right what a crash left in the Ceph
        pool, and read its sizes; the pool is not started by this (see ``start``). Only a
        start comes here, not a refresh."""
        source = self.live.rbd
        assert source is not None
        key = None
        if source.username is not None:
            key = secrets.value_for_pool(source.secret_uuid, source.secret_usage)
        volumes = RbdVolumes.connect(source, key, stopping, pool_name=self.name)
        try:
            volumes.recover_after_crash()
            return volumes, volumes.runtime()
        except BaseException:
            volumes.close()
            raise

    def directory_identity(self) -> tuple[int, int] | None:
        """(st_dev, st_ino) of the open pool directory; None when the pool is not running."""
        if self.volumes is None:
            return None
        st = os.fstat(self.volumes.fd)
        return (st.st_dev, st.st_ino)

    def stop(self) -> None:
        """Close the target directory (after the calls still working in it: ``VolumeDir.hold``);
        the definition stays."""
        if self.rbd is not None:
            self.rbd.close()
            self.rbd = None
        if self.volumes is not None:
            self.volumes.close()
            self.volumes = None
        if self.config is not None:
            if self.config is not self.live:
                # Defined anew while it ran (or started from other XML): libvirt puts the
                # definition in place of the one that ran, and shows nothing of the run.
                self.runtime = None
            self.live = self.config

    def refresh_runtime(self) -> PoolRuntime:
        """Sizes of the file system holding the pool, and the directory's permissions (an
        rbd pool's sizes come from its cluster, outside the registry's lock: see
        ``StorageRegistry._definition_and_sizes``)."""
        volumes = self.opened_directory()
        fs = os.statvfs(volumes.fd)
        st = os.fstat(volumes.fd)
        capacity = fs.f_frsize * fs.f_blocks
        self.runtime = PoolRuntime(
            capacity=capacity,
            allocation=capacity - fs.f_frsize * fs.f_bfree,
            # As libvirt: every free block, those kept for root included (f_bfree).
            available=fs.f_frsize * fs.f_bfree,
            # Permission bits only, as libvirt's refresh keeps them (no sticky bit).
            mode=st.st_mode & 0o777,
            owner=st.st_uid,
            group=st.st_gid,
        )
        return self.runtime

    def check_not_busy(self, name: str) -> None:
        """libvirt's refusals for a volume that is being built, uploaded to or cloned."""
        reason = self.busy.get(name)
        if reason is Busy.BUILDING:
            raise storage_error(
                ErrorCode.OPERATION_INVALID, f"volume '{name}' is still being allocated."
            )
        if reason in (Busy.UPLOADING, Busy.WRITING, Busy.CHANGING) or self.cloning[name]:
            raise volume_in_use(name)

    def check_can_clone(self, name: str) -> None:
        """A clone's source may be read while a whole-volume upload replaces it (the copy
        takes the old content or the new, whole), but not while it is being built, changed
        or written in place by an upload: the copy would take a half-made file."""
        if self.busy.get(name) in (Busy.BUILDING, Busy.CHANGING, Busy.WRITING):
            self.check_not_busy(name)


def remove_leftovers(volumes: VolumeDir) -> None:
    """Delete the upload temporaries a crash left in ``volumes`` (see
    ``VolumeDir.remove_stale_temps``), failing in the words of a directory not read."""
    try:
        volumes.remove_stale_temps()
    except OSError as exc:
        raise system_error(f"cannot read directory '{volumes.path}'", exc) from None


def _make_parents(path: str) -> None:
    """The folders down to ``path`` made as glib's g_mkdir_with_parents makes them for
    libvirt (mode 0777 under the umask), failing in its words with its errno: ENOTDIR
    where something else is in the way."""
    prefixes = [path[:i] for i in range(1, len(path)) if path[i] == "/"] + [path]
    for prefix in prefixes:
        if not os.path.exists(prefix):
            try:
                os.mkdir(prefix, 0o777)
            except FileExistsError:
                pass
            except OSError as exc:
                # glib goes on past a missing folder above the last (the next mkdir fails).
                if exc.errno != errno.ENOENT or prefix == path:
                    raise system_error(f"cannot create path '{path}'", exc, STORAGE) from None
        elif not os.path.isdir(prefix):
            raise system_error(f"cannot create path '{path}'", errno.ENOTDIR, STORAGE)
