"""The daemon's lifecycle: start, serve, reload on SIGHUP, stop cleanly on SIGTERM.

Theory of operation: start-up loads the registry, brings up the ``--pool``
pools, opens the listeners (systemd's, else our own), then tells systemd
READY=1. SIGHUP re-reads the config, adds new pools and reloads the TLS
certificates (new connections use them). SIGTERM (or SIGINT)
stops accepting, tells systemd STOPPING=1, closes idle connections, gives
running streams ``shutdown_timeout`` seconds to end, then cancels what is left:
an unfinished upload is aborted, so no half-written file replaces a volume. A further
signal while stopping is only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING

from virtvol.daemon import tcpauth
from virtvol.daemon.config import ConfigError, Overrides, Settings, resolve
from virtvol.daemon.connection import ClientConnection
from virtvol.daemon.context import DaemonContext
from virtvol.daemon.limits import ConnectionLimits, raise_nofile_limit
from virtvol.daemon.listeners import (
    BoundSocket,
    ListenError,
    UnixSocketAccess,
    bind_all,
    from_activation,
)
from virtvol.daemon.statelock import StateDirInUse, StateDirLock, lock_state_dir
from virtvol.daemon.storage import PoolRef, StorageRegistry
from virtvol.daemon.systemd import ActivationError, Notifier, activated_listeners
from virtvol.daemon.tls import TlsFiles, TlsListener, TlsPolicy, TlsSetupError
from virtvol.protocol.errors import ErrorReport

if TYPE_CHECKING:
    from virtvol.daemon.storage.model import PoolEvent

log = logging.getLogger("virtvol.daemon")

_STATUS_PERIOD = 5.0


class StartupError(RuntimeError):
    """The daemon cannot start; the message says why."""


def tls_files(settings: Settings) -> TlsFiles:
    return TlsFiles(
        ca_file=settings.ca_file,
        cert_file=settings.cert_file,
        key_file=settings.key_file,
        crl_file=settings.crl_file,
        no_verify_certificate=settings.tls_no_verify_certificate,
        allowed_dn_list=settings.tls_allowed_dn_list,
    )


def unix_access(settings: Settings) -> UnixSocketAccess:
    return UnixSocketAccess(
        group=settings.unix_sock_group,
        rw_mode=settings.unix_sock_rw_perms,
        ro_mode=settings.unix_sock_ro_perms,
    )


class Daemon:
    def __init__(self, settings: Settings, overrides: Overrides, notifier: Notifier) -> None:
        self.settings = settings
        self._overrides = overrides
        self._notifier = notifier
        self._servers: list[asyncio.Server | TlsListener] = []
        self._bound: list[BoundSocket] = []
        self._stop = asyncio.Event()
        self._tls_policy: TlsPolicy | None = None
        self._state_lock: StateDirLock | None = None
        self._registry = StorageRegistry(
            settings.effective_state_dir(), sync_uploads=settings.sync_uploads
        )
        self.context = DaemonContext(
            registry=self._registry,
            legacy=settings.legacy,
            keepalive_interval=settings.keepalive_interval,
            keepalive_count=settings.keepalive_count,
            limits=ConnectionLimits(
                max_clients=settings.max_clients,
                max_client_requests=settings.max_client_requests,
                max_client_streams=settings.max_client_streams,
                handshake_timeout=settings.handshake_timeout,
            ),
        )

    # -- start ------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._state_lock = lock_state_dir(self.settings.effective_state_dir())
        except StateDirInUse as exc:
            raise StartupError(str(exc)) from None
        try:
            await self._start()
        except BaseException:
            self._release_state_dir()
            raise

    def _tell_connections(self, pool: PoolRef, event: PoolEvent) -> None:
        for connection in list(self.context.connections):
            connection.pool_event(pool, event)

    def _release_state_dir(self) -> None:
        if self._state_lock is not None:
            self._state_lock.release()
            self._state_lock = None

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()

        # Pool events happen in the worker threads; the connections hear of them on the loop.
        def pass_event(pool: PoolRef, event: PoolEvent) -> None:
            # An upload let go of after the stop closed the loop tells its pool's refresh
            # to no connection.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._tell_connections, pool, event)

        self._registry.on_event = pass_event
        fd_limit = raise_nofile_limit()
        try:
            await loop.run_in_executor(self.context.calls, self._load_pools, self.settings)
            await loop.run_in_executor(self.context.calls, self._registry.start_present_directories)
        except (ErrorReport, OSError) as exc:
            raise StartupError(f"cannot set up the storage pools: {exc}") from None
        self._bound = self._open_listeners()
        if any(bound.tls for bound in self._bound):
            try:
                self._tls_policy = self._load_tls(self.settings)
            except TlsSetupError as exc:
                for bound in self._bound:
                    bound.close()
                raise StartupError(f"cannot set up TLS: {exc}") from None
        for bound in self._bound:
            self._servers.append(await self._serve(bound))
        # The descriptor budget counts what is open now: listeners, logs, the state dir.
        self.context.measure_descriptors(fd_limit)
        admission = self.context.admission
        log.info(
            "open-files limit %d: up to %d connections (max_clients %d), %d descriptors"
            " kept for volume files",
            fd_limit,
            min(admission.fd_budget, self.settings.max_clients),
            self.settings.max_clients,
            admission.fd_reserve,
        )
        for bound in self._bound:
            log.info("listening on %s%s", bound.label, " (read-only)" if bound.read_only else "")

    @staticmethod
    def _load_tls(settings: Settings) -> TlsPolicy:
        policy = TlsPolicy.load(tls_files(settings))
        creds = policy.credentials
        log.info(
            "TLS: CA %s, certificate %s, key %s, %s; client certificates %s",
            creds.ca_file,
            creds.cert_file,
            creds.key_file,
            f"revocation list {creds.crl_file}" if creds.crl_file else "no revocation list",
            "required and verified" if policy.verify_clients else "not verified",
        )
        return policy

    def _current_tls_policy(self) -> TlsPolicy:
        assert self._tls_policy is not None
        return self._tls_policy

    def _load_pools(self, settings: Settings) -> None:
        # Keys from the config join the stored secrets before pools autostart with them.
        self._registry.secrets.load()
        for usage, path in settings.ceph_keys.items():
            self._registry.secrets.offer_key_file(usage, path)
        self._registry.load()
        for name, directory in settings.pools.items():
            try:
                self._registry.ensure_pool(name, directory)
            except (ErrorReport, OSError) as exc:
                # A start or a reload goes on with the other pools and the rest of the
                # settings, as libvirtd starts whatever pool fails: a folder that cannot be
                # made now (a mount not there), or one a client has since defined as
                # another pool or given settings the folder cannot take, is no reason to
                # leave every client without a daemon, keep old TLS credentials or leave
                # the pools after it out.
                log.error("cannot set up storage pool '%s': %s", name, exc)

    def _open_listeners(self) -> list[BoundSocket]:
        try:
            activated = activated_listeners()
        except ActivationError as exc:
            raise StartupError(str(exc)) from None
        if activated is not None:
            if self.settings.listen:
                activated.close()
                raise StartupError(
                    "listen addresses (--listen or the config file's listen) cannot be"
                    " combined with systemd socket activation"
                )
            if activated.tcp and not self.settings.plain_tcp_allowed:
                activated.close()
                raise StartupError(tcpauth.refusal("the TCP socket from systemd"))
            bound = from_activation(activated)
            tcpauth.warn_unauthenticated(
                item.label for item in bound if item.label.startswith("systemd-tcp:")
            )
            return bound
        try:
            tcp = tcpauth.check_listen_urls(self.settings)
            bound = bind_all(
                self.settings.effective_listen(),
                unix_access(self.settings),
                private_dirs=self.settings.effective_mode() == "session",
            )
        except (ConfigError, ListenError) as exc:
            raise StartupError(str(exc)) from None
        tcpauth.warn_unauthenticated(tcp)
        return bound

    async def _serve(self, bound: BoundSocket) -> asyncio.Server | TlsListener:
        loop = asyncio.get_running_loop()
        context, label, read_only = self.context, bound.label, bound.read_only

        def factory() -> ClientConnection:
            return ClientConnection(context, label, read_only=read_only)

        if bound.sock.family == socket.AF_UNIX:
            return await loop.create_unix_server(factory, sock=bound.sock)
        if bound.tls:
            listener = TlsListener(
                bound.sock,
                self._current_tls_policy,
                factory,
                in_progress=context.tls_handshakes,
                refusal=context.connection_refusal,
                handshake_timeout=self.settings.handshake_timeout,
                refused=lambda peer, reason: context.admission.refusals.refused(
                    f"{peer} on {label}", reason
                ),
            )
            listener.start()
            return listener
        return await loop.create_server(factory, sock=bound.sock)

    # -- run ----------------------------------------------------------------------------

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        # Ready only now: systemd may send SIGHUP (a reload) or SIGTERM the moment it
        # hears READY=1, and a signal that finds no handler yet ends the process.
        mode = "legacy (no sparse streams)" if self.settings.legacy else "current"
        log.info("virtvold ready, protocol %s", mode)
        self._notifier.ready(self._status())
        watchdog = loop.create_task(self._notifier.watchdog_loop())
        status = loop.create_task(self._report_status())
        try:
            await self._stop.wait()
        finally:
            watchdog.cancel()
            status.cancel()
        # Until the stop is done a further signal must not kill the daemon (an upload's
        # temporary would stay behind) nor reload it; shutdown_timeout bounds the streams'
        # part of the stop (calls in worker threads are let finish: ``stop``).
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signal_while_stopping, sig)
        try:
            await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    @staticmethod
    def _signal_while_stopping(sig: signal.Signals) -> None:
        log.warning("%s while stopping: already stopping", sig.name)

    def request_stop(self) -> None:
        self._stop.set()

    def _status(self) -> str:
        return (
            f"{len(self.context.connections)} connections, "
            f"{self.context.active_streams()} streams, "
            f"{self.context.total_connections} connections served"
        )

    async def _report_status(self) -> None:
        while True:
            await asyncio.sleep(_STATUS_PERIOD)
            self._notifier.status(self._status())

    async def reload(self) -> None:
        """SIGHUP: read the config again and bring up pools that are new in it."""
        self._notifier.reloading()
        try:
            settings = resolve(self._overrides)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.context.calls, self._load_pools, settings)
            if self._tls_policy is not None:
                self._tls_policy = self._load_tls(settings)
            logging.getLogger("virtvol").setLevel(settings.log_level.upper())
            self.settings = settings
            log.info("configuration reloaded: %d pools from the settings", len(settings.pools))
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
        self._notifier.ready(self._status())

    # -- stop -----------------------------------------------------------------------------

    async def stop(self) -> None:
        self._notifier.stopping()
        log.info("stopping: %s", self._status())
        self.context.accepting = False
        for server in self._servers:
            server.close()
        connections = list(self.context.connections)
        for conn in connections:
            if conn.stream_count() == 0:
                conn.close("the daemon is stopping")
        busy = [conn for conn in connections if conn.stream_count()]
        if busy:
            waits = [asyncio.ensure_future(conn.wait_streams()) for conn in busy]
            _, late = await asyncio.wait(waits, timeout=self.settings.shutdown_timeout)
            for waiter in late:
                waiter.cancel()
            if late:
                log.warning("stopping: aborting streams still running after the timeout")
        for conn in list(self.context.connections):
            if conn.stream_count():
                conn.abort("the daemon is stopping")
            else:
                conn.close("the daemon is stopping")
        # Cancelled stream tasks abort their uploads and close their files here.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                for conn in connections:
                    await conn.wait_closed()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        for bound in self._bound:
            bound.close()
        loop = asyncio.get_running_loop()
        self._registry.give_up_starts()  # their workers would hold up the executors' stop
        await loop.run_in_executor(None, self.context.shutdown_executors)
        self._registry.close()
        self._release_state_dir()
        log.info("stopped")
