"""StorageRegistry: the daemon's directory pools and their volumes, one method per procedure.

All methods are synchronous and thread-safe: the RPC layer may run the slow
ones (volume create/clone/wipe/resize, pool start) in worker threads. A
registry lock guards the bookkeeping; long file work runs outside it while the
volume is marked busy, so other requests are not held up. Short file work (a
definition written, a pool's sizes read, a directory listed) runs under it, so
the event loop never waits for it: it answers the methods that touch no file
(the lookups and lists of pools, their flags) only when ``lock_at_once`` takes
the lock; ``daemon/dispatch.py`` names them (``memory``), and they are to stay
free of file work.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from virtvol.protocol.constants import VolWipeAlgorithm
from virtvol.protocol.errors import ErrorCode, ErrorDomain, ErrorReport, check_flags
from virtvol.sparse import files as sparse_files
from virtvol.sparse.writer import MAX_OFFSET

from .buildrules import check_new_file, check_new_image
from .configstore import ConfigStore
from .flags import (
    LIST_POOLS_ACTIVITY,
    LIST_POOLS_ALL,
    LIST_POOLS_AUTOSTART,
    LIST_POOLS_PERSISTENCE,
    LIST_POOLS_TYPES,
    ListPoolsFlags,
    PoolCreateFlags,
    PoolDefineFlags,
    PoolXMLFlags,
    VolCreateFlags,
    VolDeleteFlags,
    VolInfoFlags,
    VolResizeFlags,
    VolStreamFlags,
)
from .model import PoolEvent, PoolInfo, PoolRef, PoolState, VolumeInfo, VolumeRef, VolumeType
from .names import check_new_volume_name
from .pool import Busy, Pool, PoolJob, remove_leftovers
from .poolxml import PoolDefinition, PoolRuntime, clean_path, format_pool_xml, parse_pool_xml
from .rbdtransfer import RbdReader, RbdWriter
from .rbdvolumes import RbdVolumes, Stopping
from .reports import (
    clone_name_taken,
    no_pool_named,
    no_pool_with_uuid,
    no_volume_with_key,
    no_volume_with_path,
    pool_already_active,
    pool_has_jobs,
    pool_not_active,
    pool_still_active,
    storage_error,
    system_error,
    uuid_text,
    volume_exists,
)
from .runningstore import RunningStore
from .secrets import SecretStore, UsageType
from .transfer import UnreadableVolume, VolumeReader, VolumeWriter
from .volumes import OtherFile, VolumeDir, backing_store
from .volxml import (
    format_rbd_volume_xml,
    format_volume_xml,
    parse_volume_xml,
    volume_sizes,
    volume_type,
)
from .xmldoc import escape

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .backend import ChunkReader, ChunkWriter
    from .probe import ImageHeader

log = logging.getLogger(__name__)

# Seconds a daemon's stop waits for its rbd pools' removals of leftovers to give up
# (each stops at its next object; one stuck on a cluster that stopped answering does not).
_SWEEP_WAIT = 5.0

STORAGE = ErrorDomain.STORAGE
STREAMS_DOMAIN = ErrorDomain.STREAMS


class StorageRegistry:
    """Directory pools defined in (and persisted under) ``state_dir``.

    Args:
        state_dir: where pool definitions live (``<state_dir>/pools``).
        sync_uploads: fdatasync whole-volume uploads before they replace the
            volume (crash-safe "old or new content"); see ``transfer``.
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, sync_uploads: bool = True) -> None:
        self._store = ConfigStore(state_dir)
        # What the running directory pools run with, for the next start (``load``).
        self._running = RunningStore(state_dir)
        self._restored = False
        self._pools: dict[str, Pool] = {}
        self._lock = threading.RLock()
        self._sync_uploads = sync_uploads
        # libvirt's secret objects: the keys rbd pools authenticate with.
        self.secrets = SecretStore(os.path.join(state_dir, "secrets"))
        # Told of every pool event, from whichever thread made it, in the order they
        # happen (the daemon passes them to the clients that registered for them).
        self.on_event: Callable[[PoolRef, PoolEvent], None] | None = None
        # Set when the daemon stops: rbd pool starts waiting for their cluster give up.
        self._stopping = Stopping()

    def lock_at_once(self) -> bool:
        """Take the registry's lock if no other thread holds it, without waiting: True if
        taken, then given back with ``unlock``. For the event loop, which must not wait
        for a thread that holds it across file work (a frozen file system holds that
        thread, and would hold every client with the loop)."""
        return self._lock.acquire(blocking=False)

    def unlock(self) -> None:
        """Give back the lock ``lock_at_once`` took."""
        self._lock.release()

    def _tell(self, ref: PoolRef, event: PoolEvent) -> None:
        if self.on_event is not None:
            self.on_event(ref, event)

    # ------------------------------------------------------------------
    # Lifecycle of the registry itself

    def load(self) -> None:
        """Restore persisted pools and start those marked autostart.

        The first time (the daemon's start), the directory pools that ran before the
        daemon stopped, in this boot, come back as they ran (``RunningStore``): a
        transient one is defined again, and a persistent one defined anew meanwhile runs
        with what it ran with until it stops; ``start_present_directories`` starts them.
        A pool that fails to start is logged and stays defined but inactive.
        """
        self.secrets.load()
        with self._lock:
            for stored in self._store.load():
                if stored.definition.name in self._pools:
                    continue
                pool = Pool(stored.definition, stored.definition)
                pool.autostart = stored.autostart
                self._pools[pool.name] = pool
            if not self._restored:
                self._restored = True
                for ran in self._running.load():
                    known = self._pools.get(ran.name)
                    if known is None and all(p.uuid != ran.uuid for p in self._pools.values()):
                        self._pools[ran.name] = Pool(ran, None)
                    elif known is not None and known.uuid == ran.uuid:
                        known.live = ran
                    else:  # its name or UUID is another pool's now: it cannot run again
                        log.warning("forgetting what pool %r ran with: it clashes", ran.name)
                        self._running.remove(ran.name)
            for pool in list(self._pools.values()):
                if pool.autostart and not pool.active:
                    if pool.job is not None:
                        _log_not_started(pool.name, pool.job)
                        continue
                    self._start_unbuilt(pool, "autostart")

    def start_present_directories(self) -> None:
        """Start every directory pool whose folder is there, autostart or not, as libvirtd
        does when it starts (its directory backend's check takes a folder that exists
        for a running pool): after a restart of the daemon, the pools that ran serve as
        before (a destroyed one runs again too, as with libvirtd). Only at the daemon's
        start, not on a reload (libvirtd's reload only autostarts). A pool that fails to
        start is logged and stays inactive, a transient one (restored by ``load``)
        vanishes; rbd pools start only by autostart."""
        with self._lock:
            for pool in self._sorted_pools():
                # No client is connected yet, so no pool has a job under way.
                if pool.active or pool.live.rbd is not None:
                    continue
                if os.path.isdir(pool.live.target):
                    self._start_unbuilt(pool, "start")
                else:
                    self._not_restored(pool)

    def _start_unbuilt(self, pool: Pool, what: str) -> None:
        """Start ``pool`` as the daemon starts or reloads (nothing built: a folder held by
        another running pool is refused by ``_claim_directory``) and record what it runs
        with; one that fails is logged (``what``: the start's kind) and forgets it."""
        try:
            pool.start(build=False, secrets=self.secrets)
            self._claim_directory(pool)
            self._now_running(pool)
        except Exception as exc:
            log.error("cannot %s storage pool %r: %s", what, pool.name, exc)
            self._not_restored(pool)

    def _not_restored(self, pool: Pool) -> None:
        """A pool that did not start at the daemon's start: what it ran with before is
        forgotten, as libvirtd forgets it. A transient one vanishes; a persistent one
        goes back to its definition (it ran with another, defined anew while it ran)."""
        self._running.remove(pool.name)
        if not pool.persistent:
            if self._pools.get(pool.name) is pool:
                del self._pools[pool.name]
        elif pool.config is not None:
            pool.live = pool.config

    def _now_running(self, pool: Pool) -> None:
        """Record what the directory pool just started runs with, for the next start."""
        if pool.live.rbd is None:
            self._running.save(pool.live)

    def ensure_pool(self, name: str, path: str | os.PathLike[str]) -> PoolRef:
        """Define (persistently, with autostart), build and start pool ``name`` at ``path``.

        Idempotent, for the daemon's ``--pool NAME=DIR`` option: an existing pool
        of that name keeps its UUID; its target is updated if it changed.
        """
        target = clean_path(os.path.abspath(os.fspath(path)))
        with self._lock:
            existing = self._pools.get(name)
            if existing is not None and existing.live.target != target and existing.active:
                self.destroy_pool(existing.ref)
            existing = self._pools.get(name)
            if existing is not None and existing.config is not None:
                # Its permissions stay as defined; only the folder moves.
                definition = replace(existing.config, target=target, rbd=None)
            else:
                definition = parse_pool_xml(
                    f"<pool type='dir'><name>{escape(name)}</name>"
                    f"<target><path>{escape(target)}</path></target></pool>"
                )
            # Stored as it is already: nothing to write (the state dir may be full).
            if existing is not None and existing.config == definition:
                ref = PoolRef(name, definition.uuid)
            else:
                ref = self._define(definition)
            pool = self._pools[name]
            if not pool.autostart:
                self.set_pool_autostart(ref, True)
            if pool.job is not None:
                _log_not_started(name, pool.job)
            elif not pool.active:
                self._check_free_path(pool)
                pool.start(build=True)
                self._claim_directory(pool)
                self._now_running(pool)
            return ref

    def give_up_starts(self) -> None:
        """The daemon is stopping: rbd pool starts still waiting for their cluster (up to
        librados' 30 s timeout) fail now, so that their workers are free for the stop."""
        self._stopping.set()

    def close(self) -> None:
        """Close every pool directory (the daemon is stopping); definitions stay. One a
        call still works in is closed once that call is done (``VolumeDir.hold``). The
        removals of a crash's leftovers in rbd pools give up at their next object, and
        are waited for only so long (what they did not remove, the next start does)."""
        self.give_up_starts()
        stopped = []
        with self._lock:
            for pool in self._pools.values():
                if pool.volumes is not None:
                    pool.volumes.close()
                    pool.volumes = None
                if pool.rbd is not None:
                    pool.rbd.close()
                    stopped.append(pool.rbd)
                    pool.rbd = None
        deadline = time.monotonic() + _SWEEP_WAIT
        for images in stopped:
            if not images.wait_for_sweep(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "stopping: the removal of leftovers in Ceph pool '%s' still runs", images.path
                )

    # ------------------------------------------------------------------
    # Finding pools

    def _pool(self, ref: PoolRef) -> Pool:
        """The pool a wire reference names: by UUID, as libvirt does."""
        for pool in self._pools.values():
            if pool.uuid == ref.uuid:
                return pool
        raise no_pool_with_uuid(ref.uuid, ref.name)

    def _pool_named(self, name: str) -> Pool:
        pool = self._pools.get(name)
        if pool is None:
            raise no_pool_named(name)
        return pool

    def lookup_pool_by_name(self, name: str) -> PoolRef:
        """STORAGE_POOL_LOOKUP_BY_NAME."""
        with self._lock:
            return self._pool_named(name).ref

    def lookup_pool_by_uuid(self, uuid: bytes) -> PoolRef:
        """STORAGE_POOL_LOOKUP_BY_UUID (16 raw bytes)."""
        with self._lock:
            for pool in self._pools.values():
                if pool.uuid == uuid:
                    return pool.ref
            raise no_pool_with_uuid(uuid)

    def lookup_pool_by_volume(self, volume: VolumeRef) -> PoolRef:
        """STORAGE_POOL_LOOKUP_BY_VOLUME: the pool named by ``volume.pool``."""
        with self._lock:
            return self._pool_named(volume.pool).ref

    # ------------------------------------------------------------------
    # Listing pools

    def lookup_pool_by_target_path(self, path: str) -> PoolRef:
        """STORAGE_POOL_LOOKUP_BY_TARGET_PATH: the running directory pool at ``path``
        (repeated and trailing slashes aside, as libvirt compares)."""
        cleaned = clean_path(path)
        with self._lock:
            for pool in self._sorted_pools():
                if (
                    pool.active
                    and pool.live.rbd is None
                    and clean_path(pool.live.target) == cleaned
                ):
                    return pool.ref
        detail = f"no storage pool with matching target path '{path}'"
        if cleaned != path:
            detail += f" ({cleaned})"
        raise storage_error(ErrorCode.NO_STORAGE_POOL, detail)

    def num_active_pools(self) -> int:
        """CONNECT_NUM_OF_STORAGE_POOLS."""
        with self._lock:
            return sum(pool.active for pool in self._pools.values())

    def list_active_pool_names(self, maxnames: int) -> list[str]:
        """CONNECT_LIST_STORAGE_POOLS: at most ``maxnames`` names."""
        with self._lock:
            return [p.name for p in self._sorted_pools() if p.active][: max(maxnames, 0)]

    def num_defined_pools(self) -> int:
        """CONNECT_NUM_OF_DEFINED_STORAGE_POOLS (inactive pools)."""
        with self._lock:
            return sum(not pool.active for pool in self._pools.values())

    def list_defined_pool_names(self, maxnames: int) -> list[str]:
        """CONNECT_LIST_DEFINED_STORAGE_POOLS: inactive pools, at most ``maxnames``."""
        with self._lock:
            return [p.name for p in self._sorted_pools() if not p.active][: max(maxnames, 0)]

    def list_all_pools(self, flags: int = 0) -> list[PoolRef]:
        """CONNECT_LIST_ALL_STORAGE_POOLS with libvirt's filter groups.

        Within a group (activity, persistence, autostart, type) bits are ORed;
        groups are ANDed; an empty group does not filter.
        """
        _check_flags(flags, LIST_POOLS_ALL, "storageConnectListAllStoragePools")
        wanted = ListPoolsFlags(flags)
        with self._lock:
            return [p.ref for p in self._sorted_pools() if _pool_matches(p, wanted)]

    def _sorted_pools(self) -> list[Pool]:
        return sorted(self._pools.values(), key=lambda pool: pool.name)

    # ------------------------------------------------------------------
    # Defining, starting and stopping pools

    def define_pool_xml(self, xml: str, flags: int = 0) -> PoolRef:
        """STORAGE_POOL_DEFINE_XML: add or update a persistent pool (not started)."""
        _check_flags(flags, PoolDefineFlags.VALIDATE, "storagePoolDefineXML")
        definition = parse_pool_xml(xml)
        if "\n" in definition.name:
            # libvirt's define refuses it once the XML is read (pool-create takes it).
            raise ErrorReport.raised(
                ErrorCode.XML_DETAIL, ErrorDomain.XML, "invalid char in name: \n"
            )
        with self._lock:
            ref = self._define(definition)
            self._tell(ref, PoolEvent.DEFINED)
            return ref

    def _define(self, definition: PoolDefinition) -> PoolRef:
        existing = self._check_duplicate(definition)
        self._store.save(definition)
        if existing is None:
            pool = Pool(definition, definition)
            self._pools[pool.name] = pool
        else:
            existing.config = definition
            if not existing.active and existing.job is None:
                existing.live = definition
        return PoolRef(definition.name, definition.uuid)

    def _check_duplicate(self, definition: PoolDefinition) -> Pool | None:
        """libvirt's duplicate rules, in its order: no two pools may share a target
        directory (a pool of the same name aside), then same UUID must mean same name
        and vice versa. Returns the pool of that name and UUID, if any."""
        identity = _directory_identity(definition.target)
        for other in self._pools.values():
            if other.name == definition.name:
                continue
            targets = {other.live.target} | ({other.config.target} if other.config else set())
            # The same directory by another spelling ("pool/.", "a/../pool", a symlink) too:
            # two pools over one directory would defeat each other's "in use" checks.
            same_directory = identity is not None and identity in {
                _directory_identity(target) for target in targets
            }
            if definition.target in targets or same_directory:
                raise _source_conflict(other)
        same_uuid = next((p for p in self._pools.values() if p.uuid == definition.uuid), None)
        if same_uuid is not None and same_uuid.name != definition.name:
            raise storage_error(
                ErrorCode.OPERATION_FAILED,
                f"pool '{same_uuid.name}' is already defined with uuid {uuid_text(same_uuid.uuid)}",
            )
        same_name = self._pools.get(definition.name)
        if same_name is not None and same_uuid is None:
            raise storage_error(
                ErrorCode.OPERATION_FAILED,
                f"pool '{same_name.name}' already exists with uuid {uuid_text(same_name.uuid)}",
            )
        return same_name

    def _claim_directory(self, pool: Pool, *, clear: bool = True) -> None:
        """Refuse to run a pool over a directory another running pool already serves
        (a definition made before its directory existed escapes ``_check_duplicate``),
        then, with ``clear``, clear what a crash left there; the pool is stopped if either
        fails. Without ``clear`` the caller clears it once it has let go of the lock
        (``_clear_leftovers``)."""
        identity = pool.directory_identity()
        if identity is None:  # an rbd pool: no directory (its source was checked at define)
            return
        other = self._running_pool_at(identity, pool)
        if other is not None:
            pool.stop()
            raise _source_conflict(other)
        if not clear:
            return
        try:
            pool.remove_stale_temps()
        except BaseException:
            pool.stop()
            raise

    def _clear_leftovers(self, pool: Pool) -> None:
        """Remove what a crash left in the running pool's directory (upload temporaries no
        running upload holds) without holding the lock: removing a file waits while the
        file system is frozen (a snapshot), and a large one takes the kernel a while to
        free, which no call about another pool is to wait for. A directory that cannot be
        read then is logged and the pool kept: a leftover costs space, not the pool, and
        the next refresh tries again."""
        with self._lock:
            if pool.volumes is None:
                return  # stopped meanwhile
            view = pool.volumes.view()
        with view:
            try:
                remove_leftovers(view)
            except ErrorReport as exc:
                log.warning("storage pool '%s': %s", pool.name, exc.message)

    def _running_pool_at(self, identity: tuple[int, int] | None, pool: Pool) -> Pool | None:
        """The running pool other than ``pool`` serving the directory of ``identity``."""
        if identity is None:
            return None
        for other in self._pools.values():
            if other is not pool and other.active and other.directory_identity() == identity:
                return other
        return None

    def _check_free_path(self, pool: Pool) -> None:
        """Refuse, before anything is built or changed there, a pool whose path leads to a
        running pool's directory now (``_claim_directory`` checks again once it is open)."""
        other = self._running_pool_at(_directory_identity(pool.live.target), pool)
        if other is not None:
            raise _source_conflict(other)

    def create_pool_xml(self, xml: str, flags: int = 0) -> PoolRef:
        """STORAGE_POOL_CREATE_XML: define a transient pool and start it.

        The transient pool vanishes when destroyed. A pool defined under the same
        name and UUID is started with this definition instead, as libvirt does (it
        runs with it until it stops); an active one is refused.
        """
        _check_flags(flags, _CREATE_FLAGS, "storagePoolCreateXML")
        definition = parse_pool_xml(xml)
        with self._lock:
            existing = self._check_duplicate(definition)
            if existing is not None and existing.active:
                raise storage_error(
                    ErrorCode.OPERATION_INVALID, f"pool is already active as '{existing.name}'"
                )
            if existing is not None:
                existing.check_no_job()
            pool = Pool(definition, None) if existing is None else existing
            if definition.rbd is not None:
                # Before the live definition changes: nothing puts a defined pool's back.
                _check_no_format(pool, flags)
            pool.live = definition
            if definition.rbd is None:
                try:
                    self._start(pool, flags)
                    self._claim_directory(pool, clear=False)
                except BaseException:
                    pool.stop()  # a defined pool goes back to its persisted definition
                    raise
                self._pools[pool.name] = pool
                self._now_running(pool)
                self._tell(pool.ref, PoolEvent.STARTED)
            else:
                pool.job = PoolJob.STARTING
                self._pools[pool.name] = pool
        if definition.rbd is None:
            self._clear_leftovers(pool)
        else:
            self._start_rbd(pool)
        return pool.ref

    def start_pool(self, ref: PoolRef, flags: int = 0) -> None:
        """STORAGE_POOL_CREATE: start a defined pool; WITH_BUILD creates its directory."""
        _check_flags(flags, _CREATE_FLAGS, "storagePoolCreate")
        with self._lock:
            pool = self._pool(ref)
            if pool.active:
                raise pool_already_active(pool.name)
            pool.check_no_job()
            directory = pool.live.rbd is None
            if directory:
                self._start(pool, flags)
                self._claim_directory(pool, clear=False)
                self._now_running(pool)
                self._tell(pool.ref, PoolEvent.STARTED)
            else:
                _check_no_format(pool, flags)
                pool.job = PoolJob.STARTING
        if directory:
            self._clear_leftovers(pool)
        else:
            self._start_rbd(pool)

    def build_pool(self, ref: PoolRef, flags: int = 0) -> None:
        """STORAGE_POOL_BUILD: make an inactive pool's directory (an rbd pool has nothing
        to make, and libvirt's rbd backend takes the call as done)."""
        with self._lock:
            pool = self._inactive(ref, pool_already_active)
            if pool.live.rbd is not None:
                self._tell(pool.ref, PoolEvent.CREATED)
                return
            # A path that leads to a running pool's folder now: the build would give that
            # folder this definition's owner and mode.
            self._check_free_path(pool)
            pool.job = PoolJob.BUILDING
        self._run_job(pool, lambda: pool.build(flags), PoolEvent.CREATED)

    def delete_pool(self, ref: PoolRef, flags: int = 0) -> None:
        """STORAGE_POOL_DELETE: remove an inactive pool's empty directory."""
        with self._lock:
            pool = self._inactive(ref, pool_still_active)
            if pool.live.rbd is not None:
                raise storage_error(ErrorCode.NO_SUPPORT, "pool does not support pool deletion")
            # Nor may it remove a running pool's folder, empty, from under that pool.
            self._check_free_path(pool)
            pool.job = PoolJob.DELETING
        self._run_job(pool, lambda: pool.delete_directory(flags), PoolEvent.DELETED)

    def _run_job(self, pool: Pool, work: Callable[[], None], done: PoolEvent) -> None:
        """Do ``work``, the ``job`` the caller marked on the inactive pool, without the lock:
        making or removing a folder waits while its file system is frozen (a snapshot),
        and no call about another pool is to wait with it. A definition made meanwhile is
        the pool's afterwards, as it would have been at once (``_define``). ``done`` is
        told once the work succeeded, before the lock lets a start or an undefine of the
        pool in, so that clients hear of them in the order they happened."""
        succeeded = False
        try:
            work()
            succeeded = True
        finally:
            with self._lock:
                pool.job = None
                if pool.config is not None and not pool.active:
                    pool.live = pool.config
                if succeeded:
                    self._tell(pool.ref, done)

    def _inactive(self, ref: PoolRef, refusal: Callable[[str], ErrorReport]) -> Pool:
        """The pool, or ``refusal`` (libvirt's words for the call) of a running one."""
        pool = self._pool(ref)
        if pool.active:
            raise refusal(pool.name)
        pool.check_no_job()
        return pool

    def _start(self, pool: Pool, flags: int) -> None:
        _check_no_format(pool, flags)
        self._check_free_path(pool)
        pool.start(build=bool(flags & PoolCreateFlags.WITH_BUILD), secrets=self.secrets)

    def _start_rbd(self, pool: Pool) -> None:
        """Connect an rbd pool marked ``PoolJob.STARTING`` without holding the lock: a
        monitor that does not answer takes librados' timeout (30 s), which no other call
        waits for."""
        try:
            volumes, runtime = pool.connect_rbd(self.secrets, self._stopping)
        except BaseException:
            with self._lock:
                pool.job = None
                pool.stop()  # a defined pool goes back to its persisted definition
                if not pool.persistent and self._pools.get(pool.name) is pool:
                    del self._pools[pool.name]  # a transient pool that did not start
            raise
        with self._lock:
            pool.job = None
            pool.rbd, pool.runtime = volumes, runtime
            self._tell(pool.ref, PoolEvent.STARTED)

    def destroy_pool(self, ref: PoolRef) -> None:
        """STORAGE_POOL_DESTROY: stop the pool; a transient one disappears."""
        with self._lock:
            pool = self._pool(ref)
            if pool.rbd is None:
                pool.opened_directory()
            # A volume read as the source of a clone into another pool is this pool's job
            # too, as libvirtd counts it on both pools.
            if pool.busy or pool.cloning:
                raise pool_has_jobs(pool.name)
            self._stop(pool)

    def _stop(self, pool: Pool) -> None:
        """Stop the pool; a transient one disappears."""
        ref = pool.ref  # the name and UUID it ran under, before the definition reverts
        pool.stop()
        self._running.remove(pool.name)
        self._tell(ref, PoolEvent.STOPPED)
        if not pool.persistent and self._pools.get(pool.name) is pool:
            del self._pools[pool.name]

    def undefine_pool(self, ref: PoolRef) -> None:
        """STORAGE_POOL_UNDEFINE: forget an inactive persistent pool (its files stay)."""
        with self._lock:
            pool = self._pool(ref)
            if pool.active:
                raise pool_still_active(pool.name)
            pool.check_no_job()
            self._store.remove(pool.name)
            del self._pools[pool.name]
            self._tell(pool.ref, PoolEvent.UNDEFINED)

    def refresh_pool(self, ref: PoolRef, flags: int = 0) -> None:
        """STORAGE_POOL_REFRESH: re-read sizes and drop upload temporaries left by a crash.

        A pool whose path names another directory now (see ``Pool.active_volumes``) takes
        that one, once no operation runs in the old one; one it cannot open stops the pool,
        as libvirt stops a pool whose refresh fails (a transient pool then vanishes).
        """
        _check_flags(flags, 0, "storagePoolRefresh")
        with self._lock:
            pool = self._pool(ref)
            directory = pool.rbd is None
            if directory and not pool.opened_directory().in_place():
                if pool.busy or pool.cloning:
                    raise pool_has_jobs(pool.name)
                try:
                    pool.reopen()
                    self._claim_directory(pool, clear=False)  # cleared below
                except BaseException:
                    self._stop(pool)
                    raise
        if directory:
            self._clear_leftovers(pool)
        self._definition_and_sizes(pool)
        with self._lock:
            # Stopped meanwhile (its sizes are the last read): refused as libvirtd refuses
            # a refresh that comes after the stop, and no refresh told after the stop's.
            if not pool.active:
                raise pool_not_active(pool.name)
            self._tell(pool.ref, PoolEvent.REFRESHED)

    # ------------------------------------------------------------------
    # Pool properties

    def pool_info(self, ref: PoolRef) -> PoolInfo:
        """STORAGE_POOL_GET_INFO: state and sizes (last known ones for an inactive pool)."""
        with self._lock:
            pool = self._pool(ref)
        _, running, runtime = self._definition_and_sizes(pool)
        state = PoolState.RUNNING if running else PoolState.INACTIVE
        if runtime is None:
            return PoolInfo(state, 0, 0, 0)
        return PoolInfo(state, runtime.capacity, runtime.allocation, runtime.available)

    def pool_xml(self, ref: PoolRef, flags: int = 0) -> str:
        """STORAGE_POOL_GET_XML_DESC; INACTIVE gives the definition the next start uses."""
        _check_flags(flags, PoolXMLFlags.INACTIVE, "storagePoolGetXMLDesc")
        with self._lock:
            pool = self._pool(ref)
            config = pool.config
            # Any definition made while it runs, even one like the running one, as libvirt's.
            if flags & PoolXMLFlags.INACTIVE and config is not None and config is not pool.live:
                return format_pool_xml(config, None)
        live, _, runtime = self._definition_and_sizes(pool)
        return format_pool_xml(live, runtime)

    def _definition_and_sizes(self, pool: Pool) -> tuple[PoolDefinition, bool, PoolRuntime | None]:
        """The pool's definition, whether it is running, and its sizes (read anew when it
        is, the last known ones otherwise), as one answer whatever stops the pool
        meanwhile. An rbd pool's sizes come from its cluster without holding the lock,
        since a cluster that stopped answering takes librados' timeout (30 s), which no
        other call waits for."""
        with self._lock:
            live = pool.live
            images = pool.rbd
            if images is None:
                if pool.active:
                    return live, True, pool.refresh_runtime()
                return live, False, pool.runtime
            # Taken now: a stop drops them when the pool was defined anew meanwhile.
            last_read = pool.runtime
        try:
            runtime = images.runtime()
        except ErrorReport:
            with self._lock:
                if pool.rbd is not images:
                    # Stopped since (the connection went with it): the call answers as of
                    # when it found the pool running, with the sizes last read.
                    return live, True, last_read
            raise
        with self._lock:
            if pool.rbd is images:
                pool.runtime = runtime
        return live, True, runtime

    def pool_autostart(self, ref: PoolRef) -> bool:
        """STORAGE_POOL_GET_AUTOSTART."""
        with self._lock:
            return self._pool(ref).autostart

    def set_pool_autostart(self, ref: PoolRef, autostart: bool) -> None:
        """STORAGE_POOL_SET_AUTOSTART; transient pools have nowhere to record it."""
        with self._lock:
            pool = self._pool(ref)
            if not pool.persistent:
                raise storage_error(ErrorCode.INTERNAL_ERROR, "pool has no config file")
            self._store.set_autostart(pool.name, autostart)
            pool.autostart = autostart

    def pool_is_active(self, ref: PoolRef) -> bool:
        """STORAGE_POOL_IS_ACTIVE."""
        with self._lock:
            return self._pool(ref).active

    def pool_is_persistent(self, ref: PoolRef) -> bool:
        """STORAGE_POOL_IS_PERSISTENT."""
        with self._lock:
            return self._pool(ref).persistent

    # ------------------------------------------------------------------
    # Listing and finding volumes

    def num_volumes(self, ref: PoolRef) -> int:
        """STORAGE_POOL_NUM_OF_VOLUMES."""
        return len(self._volume_names(ref))

    def _volume_names(self, ref: PoolRef) -> list[str]:
        with self._lock:
            pool = self._pool(ref)
            if pool.rbd is None:
                return pool.active_volumes().names()
            images = pool.rbd
        return images.names()

    def list_volume_names(self, ref: PoolRef, maxnames: int) -> list[str]:
        """STORAGE_POOL_LIST_VOLUMES: at most ``maxnames`` names, sorted."""
        return self._volume_names(ref)[: max(maxnames, 0)]

    def list_all_volumes(self, ref: PoolRef, flags: int = 0) -> list[VolumeRef]:
        """STORAGE_POOL_LIST_ALL_VOLUMES (no flags defined)."""
        _check_flags(flags, 0, "storagePoolListAllVolumes")
        with self._lock:
            pool = self._pool(ref)
            images = pool.rbd
            if images is None:
                volumes = pool.active_volumes()
                return [VolumeRef(pool.name, n, volumes.volume_path(n)) for n in volumes.names()]
        return [VolumeRef(pool.name, n, images.volume_path(n)) for n in images.names()]

    def lookup_volume_by_name(self, ref: PoolRef, name: str) -> VolumeRef:
        """STORAGE_VOL_LOOKUP_BY_NAME; the pool must be active."""
        with self._lock:
            pool = self._pool(ref)
            images = pool.rbd
            view = pool.active_volumes().view() if images is None else None
        if view is not None:  # its entry is looked at outside the lock (``VolumeDir.view``)
            with view:
                view.require(name)
                return VolumeRef(pool.name, name, view.volume_path(name))
        assert images is not None
        images.require(name)  # a cluster round trip: outside the lock
        return VolumeRef(pool.name, name, images.volume_path(name))

    def lookup_volume_by_key(self, key: str) -> VolumeRef:
        """STORAGE_VOL_LOOKUP_BY_KEY: the key is the volume's absolute path, compared exactly."""
        with self._lock:
            candidates = self._directories_holding(key)
            rbd_pools = self._rbd_pools()
        found = _volume_at(candidates, key) or _image_at(rbd_pools, key)
        if found is None:
            raise no_volume_with_key(key)
        return found

    def lookup_volume_by_path(self, path: str) -> VolumeRef:
        """STORAGE_VOL_LOOKUP_BY_PATH: like the key, after collapsing repeated slashes."""
        cleaned = clean_path(path)
        with self._lock:
            candidates = self._directories_holding(cleaned)
            rbd_pools = self._rbd_pools()
        found = _volume_at(candidates, cleaned) or _image_at(rbd_pools, cleaned)
        if found is None:
            raise no_volume_with_path(path, cleaned)
        return found

    def _directories_holding(self, path: str) -> list[tuple[str, VolumeDir]]:
        """The running directory pools whose path is ``path``'s folder, in name order, each
        with a view of its directory (``VolumeDir.view``): the entry is looked at outside
        the lock, by ``_volume_at``, which closes the views."""
        directory = path.rpartition("/")[0] or "/"
        return [
            (pool.name, pool.volumes.view())
            for pool in self._sorted_pools()
            if pool.volumes is not None and pool.volumes.path == directory
        ]

    def _rbd_pools(self) -> list[tuple[str, RbdVolumes]]:
        return [(pool.name, pool.rbd) for pool in self._sorted_pools() if pool.rbd is not None]

    # ------------------------------------------------------------------
    # Volume properties

    def volume_info(self, volume: VolumeRef, flags: int = 0) -> VolumeInfo:
        """STORAGE_VOL_GET_INFO(_FLAGS): capacity is what the file's header says (a qcow2
        image's virtual size) or else its size; allocation the blocks in use, or the file
        size with GET_PHYSICAL."""
        _check_flags(flags, VolInfoFlags.GET_PHYSICAL, "storageVolGetInfoFlags")
        with self._lock:
            pool = self._volume_pool(volume)
            images = pool.rbd
            view = pool.active_volumes().view() if images is None else None
        if images is not None:
            capacity, allocation = images.info(volume.name)
            if flags & VolInfoFlags.GET_PHYSICAL:
                allocation = capacity
            return VolumeInfo(VolumeType.NETWORK, capacity, allocation)
        assert view is not None
        with view:  # the volume is looked at outside the lock (``VolumeDir.view``)
            st = view.require(volume.name)
            header = view.header(volume.name, st)
        capacity, allocation, physical = volume_sizes(st, header)
        if flags & VolInfoFlags.GET_PHYSICAL:
            allocation = physical
        return VolumeInfo(volume_type(header), capacity, allocation)

    def volume_xml(self, volume: VolumeRef, flags: int = 0) -> str:
        """STORAGE_VOL_GET_XML_DESC."""
        _check_flags(flags, 0, "storageVolGetXMLDesc")
        with self._lock:
            pool = self._volume_pool(volume)
            images = pool.rbd
        if images is not None:
            capacity, allocation = images.info(volume.name)
            return format_rbd_volume_xml(
                volume.name, images.volume_path(volume.name), capacity, allocation
            )
        with self._lock:
            view = self._volume_pool(volume).active_volumes().view()
        # The volume and its backing file, which may be anywhere (a mount that stopped
        # answering too), are looked at outside the lock.
        with view:
            st = view.require(volume.name)
            header = view.header(volume.name, st)
            path, directory = view.volume_path(volume.name), view.path
        backing = backing_store(directory, header)
        return format_volume_xml(
            volume.name, path, st, header, backing, self._volume_secret(path, header)
        )

    def _volume_secret(self, path: str, header: ImageHeader) -> bytes | None:
        """The UUID of the secret whose usage (type volume) is the encrypted volume's path,
        spelled exactly as its XML's <path>. libvirtd keeps the first one it finds until
        the pool's next refresh; the secret store as it is now is answered here, so a
        secret undefined or replaced is never named."""
        if header.encryption is None:
            return None
        found = self.secrets.find_by_usage(UsageType.VOLUME, path)
        return None if found is None else found.uuid

    def volume_path(self, volume: VolumeRef) -> str:
        """STORAGE_VOL_GET_PATH."""
        with self._lock:
            pool = self._volume_pool(volume)
            images = pool.rbd
            view = pool.active_volumes().view() if images is None else None
        if view is not None:  # looked at outside the lock (``VolumeDir.view``)
            with view:
                view.require(volume.name)
                return view.volume_path(volume.name)
        assert images is not None
        images.require(volume.name)
        return images.volume_path(volume.name)

    def _volume_pool(self, volume: VolumeRef) -> Pool:
        """The pool of a wire volume reference (found by the pool's name, as libvirt does)."""
        return self._pool_named(volume.pool)

    # ------------------------------------------------------------------
    # Creating and changing volumes

    def create_volume_xml(self, ref: PoolRef, xml: str, flags: int = 0) -> VolumeRef:
        """STORAGE_VOL_CREATE_XML: a raw file, sparse except for the requested allocation
        (which defaults to the capacity, as in libvirt), or a sub-directory (format dir);
        what else the XML asks for is refused once its name is checked (``buildrules``)."""
        _check_flags(
            flags, VolCreateFlags.PREALLOC_METADATA | VolCreateFlags.VALIDATE, "storageVolCreateXML"
        )
        with self._lock:  # libvirtd reads the definition only once the pool is found active
            pool = self._pool(ref)
            if pool.rbd is None:
                pool.active_volumes()
        request = parse_volume_xml(xml)
        prealloc_metadata = bool(flags & VolCreateFlags.PREALLOC_METADATA)
        with self._building(ref, request.name) as (pool, volumes, _):
            if isinstance(volumes, VolumeDir):
                check_new_file(request, prealloc_metadata=prealloc_metadata)
            else:
                check_new_image(request, prealloc_metadata=prealloc_metadata)
            volumes.create(request)
        return VolumeRef(pool.name, request.name, volumes.volume_path(request.name))

    def create_volume_xml_from(
        self, ref: PoolRef, xml: str, source: VolumeRef, flags: int = 0
    ) -> VolumeRef:
        """STORAGE_VOL_CREATE_XML_FROM: a copy of ``source``, from the same pool or, for a
        directory pool, from another directory pool (libvirt's directory backend copies a
        file from wherever its path is; an rbd image is copied within its pool only).

        Capacity may be omitted (the source's size is used) and is never below
        the source's size. Only the source's data is copied: holes stay holes, unless
        the allocation asked for (the capacity when none is) is at least the source's
        size, which is then allocated first, as libvirt does (``VolumeDir.create_from``).
        """
        _check_flags(flags, _CLONE_FLAGS, "storageVolCreateXMLFrom")
        with self._lock:  # libvirtd finds the pool named, then the source's, before the XML
            self._pool(ref)
            self._volume_pool(source)
        request = parse_volume_xml(xml, capacity_required=False)
        prealloc_metadata = bool(flags & VolCreateFlags.PREALLOC_METADATA)
        with self._lock:
            source_pool = self._volume_pool(source)
            if source_pool.rbd is None:  # an rbd pool finds out when it opens the image
                source_pool.active_volumes().require(source.name)
            source_pool.check_can_clone(source.name)
        with self._building(ref, request.name, source=source) as (pool, volumes, origin):
            if origin is not volumes and not (
                isinstance(volumes, VolumeDir) and isinstance(origin, VolumeDir)
            ):
                raise storage_error(
                    ErrorCode.OPERATION_UNSUPPORTED,
                    "cloning a volume from another pool is not supported",
                )
            try:
                if isinstance(volumes, VolumeDir):
                    assert isinstance(origin, VolumeDir)
                    check_new_file(
                        request,
                        prealloc_metadata=prealloc_metadata,
                        source=origin.source_header(source.name),
                    )
                    volumes.create_from(
                        request,
                        source.name,
                        reflink=bool(flags & VolCreateFlags.REFLINK),
                        origin=origin,
                    )
                else:  # an rbd image is copied; block sharing is a file system's
                    check_new_image(request, prealloc_metadata=prealloc_metadata)
                    volumes.create_from(request, source.name)
            except ErrorReport as exc:
                if exc.code is ErrorCode.STORAGE_VOL_EXIST:  # made meanwhile, outside the daemon
                    raise clone_name_taken(request.name) from None
                raise
        return VolumeRef(pool.name, request.name, volumes.volume_path(request.name))

    @contextmanager
    def _building(
        self, ref: PoolRef, name: str, *, source: VolumeRef | None = None
    ) -> Iterator[tuple[Pool, VolumeDir | RbdVolumes, VolumeDir | RbdVolumes]]:
        """Reserve a new volume name while its file is being made, outside the lock: the
        pool, its volumes and the volumes of the clone's ``source``'s pool (its own
        volumes when there is no source, or the source is in the same pool).

        A clone's ``source`` is held in use meanwhile, as libvirt holds it: a wipe,
        resize or upload there would leave the copy part old, part new; and its pool's
        directory stays open, whatever stops that pool.
        """
        with self._lock:
            pool = self._pool(ref)
            volumes = pool.rbd or pool.active_volumes()
            origin_pool = pool if source is None else self._volume_pool(source)
            origin = (
                volumes
                if origin_pool is pool
                else (origin_pool.rbd or origin_pool.active_volumes())
            )
            check_new_volume_name(name, volumes.path)
            other = volumes.other_file(name) if isinstance(volumes, VolumeDir) else None
            # A name being built, uploaded to or changed is a volume that exists.
            if (
                name in pool.busy
                or other is OtherFile.LISTED_AS_VOLUME
                or (isinstance(volumes, VolumeDir) and volumes.stat(name) is not None)
            ):
                raise volume_exists(name) if source is None else clone_name_taken(name)
            if source is not None:
                origin_pool.check_can_clone(source.name)
            if other is OtherFile.PATH_TAKEN:
                # libvirt looks for anything at the new volume's path before making it.
                raise storage_error(
                    ErrorCode.OPERATION_INVALID,
                    f"volume target path '{volumes.volume_path(name)}' already exists",
                )
            pool.busy[name] = Busy.BUILDING
            if source is not None:
                origin_pool.cloning[source.name] += 1
            _hold(volumes)
            if origin is not volumes:
                _hold(origin)
        try:
            yield pool, volumes, origin
        finally:
            with self._lock:
                pool.busy.pop(name, None)
                if source is not None:
                    origin_pool.cloning[source.name] -= 1
                    if not origin_pool.cloning[source.name]:
                        del origin_pool.cloning[source.name]
            _let_go(volumes)
            if origin is not volumes:
                _let_go(origin)

    @contextmanager
    def _changing(self, volume: VolumeRef) -> Iterator[VolumeDir | RbdVolumes]:
        """Hold an existing volume busy while it is changed, outside the lock."""
        with self._lock:
            pool = self._volume_pool(volume)
            volumes = pool.rbd or pool.active_volumes()
            if not isinstance(volumes, RbdVolumes):  # images are checked as they are opened
                volumes.require(volume.name)
            pool.check_not_busy(volume.name)
            pool.busy[volume.name] = Busy.CHANGING
            _hold(volumes)
        try:
            yield volumes
        finally:
            with self._lock:
                pool.busy.pop(volume.name, None)
            _let_go(volumes)

    def delete_volume(self, volume: VolumeRef, flags: int = 0) -> None:
        """STORAGE_VOL_DELETE: remove the file (no flags are supported for files) or the
        rbd image, as libvirt's rbd backend does: with WITH_SNAPSHOTS its snapshots first,
        and ZEROED taken, with a warning, for a plain removal."""
        with self._changing(volume) as volumes:
            # libvirtd's backends check them once the volume is found, and found free.
            if isinstance(volumes, RbdVolumes):
                _check_flags(flags, _RBD_DELETE_FLAGS, "virStorageBackendRBDDeleteVol")
                if flags & VolDeleteFlags.ZEROED:
                    log.warning("rbd pools do not support zeroed removal of volumes")
                volumes.delete(
                    volume.name, with_snapshots=bool(flags & VolDeleteFlags.WITH_SNAPSHOTS)
                )
            else:
                _check_flags(flags, 0, "virStorageBackendVolDeleteLocal")
                volumes.delete(volume.name)

    def wipe_volume(self, volume: VolumeRef, flags: int = 0) -> None:
        """STORAGE_VOL_WIPE: the volume reads as zeros afterwards, same size and, as in
        libvirt, no blocks if it was sparse, all of them if it was fully allocated."""
        _check_flags(flags, 0, "storageVolWipePattern")
        with self._changing(volume) as volumes:
            volumes.wipe(volume.name)

    def wipe_volume_pattern(self, volume: VolumeRef, algorithm: int, flags: int = 0) -> None:
        """STORAGE_VOL_WIPE_PATTERN: the zero algorithm is ``wipe_volume`` (libvirt's wipe
        is this call with it); in a directory pool the others would need scrub, which
        virtvold does not run; an rbd pool discards for trim, as libvirt's does."""
        _check_flags(flags, 0, "storageVolWipePattern")
        if algorithm >= len(VolWipeAlgorithm):
            raise storage_error(
                ErrorCode.INVALID_ARG, f"wiping algorithm {algorithm} not supported"
            )
        if algorithm == VolWipeAlgorithm.ZERO:
            self.wipe_volume(volume)
            return
        with self._changing(volume) as volumes:
            if isinstance(volumes, RbdVolumes):
                # libvirt's rbd backend discards the whole image for trim (the zero wipe
                # here frees whole objects too) and knows no other pattern.
                if algorithm != VolWipeAlgorithm.TRIM:
                    volumes.require(volume.name)  # libvirtd looks the volume up first
                    raise storage_error(ErrorCode.INVALID_ARG, f"unsupported algorithm {algorithm}")
                volumes.wipe(volume.name)
                return
            volumes.check_wipeable(volume.name)
            if algorithm == VolWipeAlgorithm.TRIM:
                raise storage_error(
                    ErrorCode.ARGUMENT_UNSUPPORTED, "'trim' algorithm not supported"
                )
            raise storage_error(
                ErrorCode.ARGUMENT_UNSUPPORTED,
                f"wiping algorithm {algorithm} needs scrub, which virtvold does not run",
            )

    def resize_volume(self, volume: VolumeRef, capacity: int, flags: int = 0) -> None:
        """STORAGE_VOL_RESIZE with ALLOCATE / DELTA / SHRINK, under libvirt's rules.

        Shrinking needs SHRINK and may not go below the current allocation;
        DELTA makes ``capacity`` relative; ALLOCATE preallocates the new part.
        """
        if capacity == 0 and not flags & (VolResizeFlags.DELTA | VolResizeFlags.SHRINK):
            # libvirt's API refuses it before the driver looks at the flags, in its words
            # for an invalid argument (no "invalid argument: " before them).
            raise ErrorReport(
                ErrorCode.INVALID_ARG,
                STORAGE,
                "capacity in virStorageVolResize cannot be zero without 'delta' or 'shrink'"
                " flags set",
            )
        _check_flags(flags, _RESIZE_FLAGS, "storageVolResize")
        with self._changing(volume) as volumes:
            volumes.resize(
                volume.name,
                capacity,
                delta=bool(flags & VolResizeFlags.DELTA),
                shrink=bool(flags & VolResizeFlags.SHRINK),
                allocate=bool(flags & VolResizeFlags.ALLOCATE),
            )

    # ------------------------------------------------------------------
    # Transfers

    def open_volume_download(
        self, volume: VolumeRef, offset: int, length: int, flags: int = 0
    ) -> ChunkReader:
        """``open_download`` for a volume of any pool type (an rbd image or a file)."""
        with self._lock:
            pool = self._volume_pool(volume)
            images = pool.rbd
            if images is not None and pool.busy.get(volume.name) is Busy.BUILDING:
                pool.check_not_busy(volume.name)
        if images is None:
            return self._open_file_download(volume, offset, length, flags)
        _check_flags(flags, VolStreamFlags.SPARSE, "storageVolDownload")
        return RbdReader(images, volume.name, offset, length)

    def _open_file_download(
        self, volume: VolumeRef, offset: int, length: int, flags: int
    ) -> ChunkReader:
        """``open_download``, or for a sub-directory a stream that fails its first read,
        as libvirt's does (the call itself succeeds)."""
        with self._lock:
            volumes = self._volume_pool(volume).active_volumes()
            directory = volumes.is_directory(volume.name)
            path = volumes.volume_path(volume.name)
        if directory:
            _check_flags(flags, VolStreamFlags.SPARSE, "storageVolDownload")
            return UnreadableVolume(
                system_error(f"Unable to read {path}", errno.EISDIR, STREAMS_DOMAIN)
            )
        return self.open_download(volume, offset, length, flags)

    def open_volume_upload(
        self, volume: VolumeRef, offset: int, length: int, flags: int = 0
    ) -> ChunkWriter:
        """``open_upload`` for a volume of any pool type (an rbd image or a file)."""
        with self._lock:
            images = self._volume_pool(volume).rbd
        if images is None:
            return self.open_upload(volume, offset, length, flags)
        _check_flags(flags, VolStreamFlags.SPARSE, "storageVolUpload")
        return self._open_rbd_upload(volume, offset, length)

    def open_download(
        self, volume: VolumeRef, offset: int, length: int, flags: int = 0
    ) -> VolumeReader:
        """STORAGE_VOL_DOWNLOAD: a reader of ``[offset, offset+length)`` (length 0: to EOF).

        With the SPARSE flag the reader reports holes; without it holes are read
        as zero data. The caller must ``close()`` the reader.
        """
        _check_flags(flags, VolStreamFlags.SPARSE, "storageVolDownload")
        with self._lock:
            pool = self._volume_pool(volume)
            volumes = pool.active_volumes()
            if pool.busy.get(volume.name) is Busy.BUILDING:
                pool.check_not_busy(volume.name)
            fd = volumes.open(volume.name, os.O_RDONLY, stream=True)
        try:
            _seek_to(fd, offset, volumes.volume_path(volume.name))
            return VolumeReader(fd, offset, length, sparse=bool(flags & VolStreamFlags.SPARSE))
        except BaseException:
            os.close(fd)
            raise

    def open_upload(
        self, volume: VolumeRef, offset: int, length: int, flags: int = 0
    ) -> VolumeWriter:
        """STORAGE_VOL_UPLOAD: a writer for the stream; the volume is busy until
        ``commit()`` or ``abort()``.

        offset 0 and length 0 replace the whole volume atomically (keeping its
        size and its bytes past the stream's end when the stream is shorter, as
        libvirt's in-place write does); otherwise the stream writes in place
        from ``offset`` and may not exceed a non-zero ``length``.
        """
        _check_flags(flags, VolStreamFlags.SPARSE, "storageVolUpload")
        whole = offset == 0 and length == 0
        with self._lock:
            pool = self._volume_pool(volume)
            volumes = pool.active_volumes()
            volumes.require(volume.name)
            pool.check_not_busy(volume.name)
            # Reserved before its files are opened, which is done outside the lock: making
            # the temporary waits while the pool's file system is frozen (a snapshot), and
            # no call about another volume or pool is to wait with it.
            pool.busy[volume.name] = Busy.UPLOADING if whole else Busy.WRITING
            # Until ``finish``, which may run after the pool stopped (a stream let go of
            # as the daemon stops): it renames or removes the temporary there.
            volumes.hold()
        try:
            temp, fd, keep = _open_upload_files(volumes, volume.name, offset, whole=whole)
        except BaseException:
            with self._lock:
                pool.busy.pop(volume.name, None)
            volumes.let_go()
            raise

        # The volume as the upload found it: written by another daemon (or a guest gone
        # since) before the upload's end, it is not to be replaced (``VolumeDir.replace``).
        # Taken below, where a failing stat closes the files and frees the volume.
        found: os.stat_result | None = None

        def finish(success: bool, *, opened: bool = True) -> Callable[[], None] | None:
            release = None
            try:
                if temp is not None:
                    release = _settle_upload_temp(volumes, temp, volume.name, success, found)
            finally:
                try:
                    with self._lock:
                        pool.busy.pop(volume.name, None)
                        if opened and release is None:
                            tell_refreshed()
                finally:
                    volumes.let_go()
            if release is None or not opened:
                return release
            replaced = release

            def release_then_tell() -> None:
                # Told once the replaced file is let go of: its blocks are free then, and
                # the pool's sizes read on the event count them so.
                try:
                    replaced()
                finally:
                    with self._lock:
                        tell_refreshed()

            return release_then_tell

        def tell_refreshed() -> None:
            # libvirtd refreshes the pool once an upload's stream ends, finished or
            # aborted, and tells the refresh event: clients that show the pool's volumes
            # (virt-manager) read their sizes again on it. It passes over the refresh, and
            # tells nothing, while a volume of the pool is being built or cloned (an
            # async job of the pool's).
            if Busy.BUILDING not in pool.busy.values():
                self._tell(pool.ref, PoolEvent.REFRESHED)

        try:
            # A preallocated volume's space stays reserved, as libvirtd's in-place
            # write leaves it: holes and zeros of the stream are allocated there.
            old = os.fstat(fd if keep is None else keep)
            if keep is not None:
                found = old
            return VolumeWriter(
                fd,
                offset,
                length,
                finish=finish,
                sync=temp is not None and self._sync_uploads,
                writeback=temp is not None,
                keep=keep,
                path=volumes.volume_path(volume.name),
                reserve=old.st_size if sparse_files.fully_allocated(old) else 0,
            )
        except BaseException:
            os.close(fd)
            if keep is not None:
                os.close(keep)
            finish(False, opened=False)
            raise

    def _open_rbd_upload(self, volume: VolumeRef, offset: int, length: int) -> RbdWriter:
        """STORAGE_VOL_UPLOAD into an rbd pool (see ``open_upload`` and ``rbdtransfer``)."""
        with self._lock:
            pool = self._volume_pool(volume)
            # Taken again with the volume held busy, which keeps a stop out from here: one
            # since the caller's look leaves the pool stopped (its connection may still
            # serve a download), or running on another connection.
            images = pool.rbd
            if images is None:
                raise pool_not_active(pool.name)
            pool.check_not_busy(volume.name)
            whole = offset == 0 and length == 0  # else written in place
            pool.busy[volume.name] = Busy.UPLOADING if whole else Busy.WRITING
        temp: str | None = None

        def finish(success: bool) -> Callable[[], None] | None:
            try:
                if temp is None:
                    return None
                if success:  # a failed swap removes the upload image where that is safe
                    return images.replace(temp, volume.name)
                images.remove_temp(temp)
                return None
            finally:
                with self._lock:
                    pool.busy.pop(volume.name, None)

        try:
            if whole:
                temp = images.create_upload_temp(volume.name)
                return RbdWriter(images, temp, 0, 0, fresh=True, finish=finish, keep=volume.name)
            return RbdWriter(images, volume.name, offset, length, fresh=False, finish=finish)
        except BaseException:
            finish(False)
            raise


def _log_not_started(name: str, job: PoolJob) -> None:
    """A reload leaves a pool whose folder is being made or removed (or an rbd pool still
    connecting) as it is: started now, it could run over a folder removed a moment later."""
    log.warning("storage pool '%s' not started: it is %s", name, job.value)


def _hold(volumes: VolumeDir | RbdVolumes) -> None:
    """Keep a directory pool's descriptor open for a call working in it outside the lock
    (an rbd pool keeps its connection for each of its calls: ``RbdVolumes.acquire``)."""
    if isinstance(volumes, VolumeDir):
        volumes.hold()


def _let_go(volumes: VolumeDir | RbdVolumes) -> None:
    """The end of ``_hold``."""
    if isinstance(volumes, VolumeDir):
        volumes.let_go()


def _volume_at(candidates: list[tuple[str, VolumeDir]], path: str) -> VolumeRef | None:
    """The volume at ``path`` in the first of ``candidates`` (pool name and directory view)
    that holds it and still serves its path; every view is closed."""
    name = path.rpartition("/")[2]
    found = None
    for pool_name, view in candidates:
        with view:
            if found is None and view.stat(name) and view.in_place():
                found = VolumeRef(pool_name, name, view.volume_path(name))
    return found


def _image_at(rbd_pools: list[tuple[str, RbdVolumes]], key: str) -> VolumeRef | None:
    """The rbd volume whose key (``<ceph pool>/<image>``) is ``key``, if any."""
    ceph_pool, _, image = key.partition("/")
    for pool_name, images in rbd_pools:
        if images.path == ceph_pool and images.exists(image):
            return VolumeRef(pool_name, image, images.volume_path(image))
    return None


def _directory_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the directory at ``path``, None when there is none (yet)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _source_conflict(other: Pool) -> ErrorReport:
    return storage_error(
        ErrorCode.OPERATION_FAILED, f"Storage source conflict with pool: '{other.name}'"
    )


def _seek_to(fd: int, offset: int, path: str) -> None:
    """Refuse a stream offset the file cannot be positioned at, as libvirt does: it seeks
    the stream's file there first (an offset of 2^63 or more, or past the file system's
    largest file, is EINVAL)."""
    if offset == 0:
        return
    try:
        if offset > MAX_OFFSET:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        os.lseek(fd, offset, os.SEEK_SET)
    except OSError as exc:
        raise system_error(f"Unable to seek {path} to {offset}", exc, STREAMS_DOMAIN) from None


def _open_upload_files(
    volumes: VolumeDir, name: str, offset: int, *, whole: bool
) -> tuple[str | None, int, int | None]:
    """The files of an upload into volume ``name``, which the caller holds busy: for a
    ``whole`` one, the hidden temporary (its name and descriptor) and the volume open for
    reading, to keep its end; otherwise no temporary and the volume open for writing in
    place at ``offset``."""
    if not whole:
        fd = volumes.open_to_change(
            name, write_only_will_do=True, refuse_unshared_writers=True, stream=True
        )
        try:
            _seek_to(fd, offset, volumes.volume_path(name))
        except BaseException:
            os.close(fd)
            raise
        return None, fd, None
    # Replacing the file needs only the directory's permission; libvirt writes in place,
    # so a volume it may not write (read-only, another user's) is refused there, and here
    # too. Its end is read to be kept: held open from here, while the volume is busy, so
    # it is the file the rename replaces.
    os.close(volumes.open(name, os.O_WRONLY, stream=True))
    keep = volumes.open(name, os.O_RDONLY, stream=True)
    try:
        volumes.check_not_written_elsewhere(name, keep)
        temp, fd = volumes.create_upload_temp(name)
    except BaseException:
        os.close(keep)
        raise
    return temp, fd, keep


def _check_no_format(pool: Pool, flags: int) -> None:
    if flags & (PoolCreateFlags.WITH_BUILD_OVERWRITE | PoolCreateFlags.WITH_BUILD_NO_OVERWRITE):
        # Both ask to format a source device, which neither pool type has.
        raise storage_error(
            ErrorCode.OPERATION_INVALID,
            f"No source device specified when formatting pool '{pool.name}'",
        )


def _check_flags(flags: int, supported: int, function: str) -> None:
    # int(): inverting an IntFlag member only flips the bits the enum defines,
    # which would hide unknown flags from the check.
    check_flags(flags, int(supported), function, STORAGE)


def _settle_upload_temp(
    volumes: VolumeDir,
    temp: str,
    name: str,
    success: bool,
    kept_from: os.stat_result | None = None,
) -> Callable[[], None] | None:
    """Put a finished whole-volume upload in place, or throw it away.

    On success, returns what frees the replaced content (see ``VolumeDir.replace``;
    ``kept_from``: the volume as the upload found it).
    """
    if not success:
        volumes.remove_temp(temp)
        return None
    try:
        return volumes.replace(temp, name, kept_from=kept_from)
    except ErrorReport:  # the volume's metadata could not be taken again
        volumes.remove_temp(temp)
        raise
    except OSError as exc:
        volumes.remove_temp(temp)
        raise storage_error(
            ErrorCode.OPERATION_FAILED, f"cannot replace volume '{name}': {exc.strerror}"
        ) from None


def _pool_matches(pool: Pool, wanted: ListPoolsFlags) -> bool:
    def group(bits: int, yes: int, value: bool) -> bool:
        chosen = int(wanted) & bits
        return not chosen or bool(chosen & yes if value else chosen & ~yes)

    return (
        group(LIST_POOLS_ACTIVITY, ListPoolsFlags.ACTIVE, pool.active)
        and group(LIST_POOLS_PERSISTENCE, ListPoolsFlags.PERSISTENT, pool.persistent)
        and group(LIST_POOLS_AUTOSTART, ListPoolsFlags.AUTOSTART, pool.autostart)
        and (
            not wanted & LIST_POOLS_TYPES
            or bool(wanted & (ListPoolsFlags.RBD if pool.live.rbd else ListPoolsFlags.DIR))
        )
    )


_CREATE_FLAGS = (
    PoolCreateFlags.WITH_BUILD
    | PoolCreateFlags.WITH_BUILD_OVERWRITE
    | PoolCreateFlags.WITH_BUILD_NO_OVERWRITE
)
_CLONE_FLAGS = VolCreateFlags.PREALLOC_METADATA | VolCreateFlags.REFLINK | VolCreateFlags.VALIDATE
_RESIZE_FLAGS = VolResizeFlags.ALLOCATE | VolResizeFlags.DELTA | VolResizeFlags.SHRINK
_RBD_DELETE_FLAGS = VolDeleteFlags.ZEROED | VolDeleteFlags.WITH_SNAPSHOTS
