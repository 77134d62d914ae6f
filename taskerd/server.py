"""``taskerd`` start-up: configuration, the socket, the journal, the gRPC server, and signals."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import grp
import logging
import os
import signal
import socket
import stat
import sys
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tasker.peers import peer_path
from tasker.v1 import tasker_pb2 as pb
from taskerd import auth, procs, prom
from taskerd import config as configuration
from taskerd.config import DaemonConfig
from taskerd.core import Core
from taskerd.errors import DaskUnavailable
from taskerd.logs import setup_logging
from taskerd.notify import notify
from taskerd.peers import Peers
from taskerd.runner import become_subreaper, install_child_watcher, reap_orphans_forever
from taskerd.schedules import Scheduler
from taskerd.service import Service, add_to_server
from taskerd.store import JournalOpenError, Store

log = logging.getLogger("taskerd")

MAX_MESSAGE = 64 << 20
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tasker"].full_name
#: The journal's file name in the state directory.
JOURNAL = "journal.sqlite3"
#: How urgent each shutdown mode is: a stop under way can only be escalated.
_URGENCY = {pb.SHUTDOWN_MODE_DRAIN: 0, pb.SHUTDOWN_MODE_STOP: 1, pb.SHUTDOWN_MODE_KILL: 2}


class StartupError(Exception):
    """The daemon cannot start; the message says why, in one line."""


def _socket_answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _socket_gid(config: DaemonConfig) -> int | None:
    """The id of ``socket_group``, or None when the socket is not shared."""
    if not config.socket_group:
        return None
    try:
        return grp.getgrnam(config.socket_group).gr_gid
    except KeyError:
        raise StartupError(f"socket_group: no group {config.socket_group!r}") from None


def prepare_socket(config: DaemonConfig) -> None:
    """Check that the socket's directory is the daemon user's alone, and clear a stale socket.

    A directory the daemon creates (or one named ``tasker``, which it owns) gets mode 0700, or
    0750 with ``socket_group``; only one it created gets that group. A directory that another
    user owns, or that group or others may write to, is refused. Nothing else is touched.
    """
    path = config.socket
    directory = path.parent
    gid = _socket_gid(config)
    mode = 0o700 if gid is None else 0o750
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=mode)
        created = True
    except FileExistsError:
        created = False
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(f"{directory} is not a directory")
    if info.st_uid != os.getuid():
        raise StartupError(
            f"socket directory {directory} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.getuid()}); refusing to use it"
        )
    if created or directory.name == "tasker":
        os.chmod(directory, mode)
    elif info.st_mode & 0o022:
        raise StartupError(
            f"socket directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); refusing to use it"
        )
    if gid is not None:
        if created:
            os.chown(directory, -1, gid)
        elif info.st_gid != gid:
            log.warning(
                "socket_group: %s is not in group %s, so the group may not reach the socket; "
                "left as it is", directory, config.socket_group,
            )  # fmt: skip
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise StartupError(f"{path} exists and is not a socket; refusing to touch it")
    if _socket_answers(path):
        raise StartupError(f"another taskerd is already serving on {path}")
    log.info("removing stale socket %s", path)
    path.unlink()


def _make_private(path: Path, mode: int) -> None:
    """Remove any permission of ``path`` beyond ``mode``, saying so when there was one."""
    current = stat.S_IMODE(os.stat(path).st_mode)
    if current & ~mode:
        os.chmod(path, mode)
        log.warning("%s was mode %04o: made it %04o", path, current, mode)


def _private_file(path: Path) -> None:
    """Create ``path`` (empty) readable and writable by the daemon's user alone, or make it so."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    _make_private(path, 0o600)


def lock_state_dir(state_dir: Path) -> IO[bytes]:
    """Make the state directory private (0700) and hold an exclusive lock on it until exit."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _make_private(state_dir, 0o700)
    lock = state_dir / "taskerd.lock"
    _private_file(lock)
    handle = open(lock, "ab")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise StartupError(
                f"another taskerd is using the state directory {state_dir}"
            ) from None
        raise
    return handle


def make_journal_private(state_dir: Path) -> None:
    """Create the journal 0600 before SQLite opens it, and tighten journal files that are looser.

    SQLite gives the ``-wal`` and ``-shm`` files it creates the main file's mode (and owner), so
    every task's argv, environment and output stays readable by the daemon's user alone.
    """
    _private_file(state_dir / JOURNAL)
    for suffix in ("-wal", "-shm"):
        with suppress(FileNotFoundError):
            _make_private(state_dir / f"{JOURNAL}{suffix}", 0o600)


def _grpc_server(
    service: Service, health_servicer: Any, interceptors: list[Any] | None = None
) -> Any:
    """A ``grpc.aio.Server`` with the Tasker service, health checks and reflection."""
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    add_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME],
        server,
    )  # fmt: skip
    return server


def _read_pem(key: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StartupError(f"{key} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise StartupError(f"{key} {path}: not a PEM file")
    return data


class Certificates:
    """The TCP listeners' TLS material (``tls_cert``, ``tls_key``, ``tls_client_ca``), read
    again by :meth:`reload` (SIGHUP): connections made after it get the new files (grpc's
    certificate fetcher); those open go on as they are. Whether clients must show a
    certificate (``tls_client_ca`` set or not) is fixed at start."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self._next: Any = None  # read by reload(), not yet handed to grpc

    def _read(self) -> Any:
        config = self.config
        key = _read_pem("tls_key", config.tls_key)
        if stat.S_IMODE(os.stat(config.tls_key).st_mode) & 0o077:
            log.warning("tls_key %s is readable by group or others", config.tls_key)
        chain = _read_pem("tls_cert", config.tls_cert)
        ca = _read_pem("tls_client_ca", config.tls_client_ca) if config.tls_client_ca else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def credentials(self) -> Any:
        """The listeners' credentials (StartupError if a file is missing or not PEM)."""
        return grpc.dynamic_ssl_server_credentials(
            self._read(), self._fetch, require_client_authentication=bool(self.config.tls_client_ca)
        )

    def _fetch(self) -> Any:
        """grpc asks before each new connection (on its own threads): None keeps the current."""
        config, self._next = self._next, None
        return config

    def reload(self) -> None:
        """Read the files again for the next connections (StartupError: the current stay)."""
        self._next = self._read()


async def _serve_tcp(
    config: DaemonConfig, service: Service, health_servicer: Any
) -> tuple[Any, auth.Authenticator, Certificates | None]:
    """Start the TCP listeners (config ``listen``): their server, its authenticator and its
    certificates (None: plaintext on loopback)."""
    try:
        tokens = auth.load_tokens(config.tokens_file)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    certificates = Certificates(config) if config.tls_cert else None
    credentials = certificates.credentials() if certificates is not None else None
    authenticator = auth.Authenticator(tokens)
    server = _grpc_server(service, health_servicer, [authenticator])
    for address in config.listen:
        bind = "[::]" + address if address.startswith(":") else address
        try:
            if credentials is None:
                server.add_insecure_port(bind)
            else:
                server.add_secure_port(bind, credentials)
        except RuntimeError as exc:
            raise StartupError(f"listen: cannot listen on {address}: {exc}") from None
    await server.start()
    how = "plaintext (insecure_loopback)" if credentials is None else (
        "mutual TLS" if config.tls_client_ca else "TLS")  # fmt: skip
    log.info("listening on %s, %s, %d tokens", ", ".join(config.listen), how,
             len(tokens.entries))  # fmt: skip
    return server, authenticator, certificates


def _secure_socket(config: DaemonConfig, *paths: Path) -> None:
    """``paths`` (the socket and its side door) for taskerd's user, and ``socket_group``."""
    gid = _socket_gid(config)
    for path in paths:
        if gid is not None:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        else:
            os.chmod(path, 0o600)


class Daemon:
    """One running taskerd: the server, the core, and the way they stop."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.stopping = asyncio.Event()
        #: The most urgent shutdown mode asked for so far; None while none was.
        self.mode: pb.ShutdownMode.ValueType | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._escalations: set[asyncio.Task[None]] = set()
        self.core: Core | None = None
        # The TCP listeners' server and authenticator, when config ``listen`` has any.
        self.tcp: Any = None
        self.authenticator: auth.Authenticator | None = None
        self.certificates: Certificates | None = None

    def request_shutdown(self, mode: pb.ShutdownMode.ValueType) -> None:
        """Begin to stop (Shutdown RPC or a signal), or escalate a stop under way.

        DRAIN < STOP < KILL: a request no more urgent than the current mode changes nothing.
        During start-up the mode is only recorded: ``serve`` stops instead of serving.
        """
        if self.mode is not None and _URGENCY[mode] <= _URGENCY[self.mode]:
            return
        if self.mode is None:
            notify("STOPPING=1")
        self.mode = mode
        if self.core is not None:
            self._shut_down(self.core, mode)

    def _shut_down(self, core: Core, mode: pb.ShutdownMode.ValueType) -> None:
        task = asyncio.get_running_loop().create_task(core.shutdown(mode))
        if self._shutdown_task is None:
            self._shutdown_task = task
            task.add_done_callback(lambda _: self.stopping.set())
        else:  # an escalation: the first call still sets ``stopping`` once the core is closed
            self._escalations.add(task)
            task.add_done_callback(self._escalations.discard)

    def _on_signal(self, signum: int) -> None:
        """SIGTERM or SIGINT climb the ladder: to STOP (or from DRAIN to STOP), then to KILL."""
        name = signal.Signals(signum).name
        if self.mode is None:
            log.info("%s: stopping gracefully (again to kill)", name)
            self.request_shutdown(pb.SHUTDOWN_MODE_STOP)
        elif self.mode == pb.SHUTDOWN_MODE_DRAIN:
            log.warning("%s while draining: stopping gracefully instead (again to kill)", name)
            self.request_shutdown(pb.SHUTDOWN_MODE_STOP)
        elif self.mode == pb.SHUTDOWN_MODE_STOP:
            log.warning("%s again: killing", name)
            self.request_shutdown(pb.SHUTDOWN_MODE_KILL)
        else:
            log.warning("%s: already killing", name)

    def _on_sighup(self) -> None:
        """Read the tokens file and the TLS files again (the rest of the configuration needs a
        restart); a file that cannot be used keeps what is in use."""
        if self.authenticator is None:
            log.info("SIGHUP: ignored (no TCP listener to reload; SIGTERM stops taskerd)")
            return
        config = self.config
        try:
            self.authenticator.tokens = tokens = auth.load_tokens(config.tokens_file)
            log.info("SIGHUP: read %d tokens from %s", len(tokens.entries), config.tokens_file)
        except ValueError as exc:
            log.error("SIGHUP: kept the tokens in use: %s", exc)
        if self.certificates is not None:
            try:
                self.certificates.reload()
                log.info("SIGHUP: read tls_cert %s again: new connections use it",
                         config.tls_cert)  # fmt: skip
            except StartupError as exc:
                log.error("SIGHUP: kept the TLS certificate in use: %s", exc)

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    async def serve(self) -> None:
        """Run until shut down. A stop asked for during start-up happens before serving."""
        await self._serve()
        log.info("taskerd stopped")

    async def _serve(self) -> None:
        config = self.config
        self._handle_signals()  # first: a signal during start-up is a request like any other
        install_child_watcher()
        if not become_subreaper():
            log.warning("could not become a child subreaper; escaped descendants go to init")
        make_journal_private(config.state_dir)
        procs.configure(config.state_dir, cgroups=config.cgroups != "off")
        try:
            store = await Store.open(
                config.state_dir / "journal.sqlite3",
                sync=config.journal_sync,  # type: ignore[arg-type]
            )
        except JournalOpenError as exc:
            raise StartupError(str(exc)) from None
        metrics: prom.MetricsServer | None = None
        peers = Peers()
        try:
            if self.mode is not None:  # a signal while the journal opened: do not even recover
                return
            try:
                self.core = core = await Core.start(config, store)
            except DaskUnavailable as exc:
                raise StartupError(str(exc)) from None
            if config.metrics_address:
                try:
                    metrics = await prom.serve(core, config.metrics_address)
                except (ValueError, OSError) as exc:
                    await core.shutdown(pb.SHUTDOWN_MODE_STOP)
                    raise StartupError(f"cannot serve metrics on {config.metrics_address}: "
                                       f"{exc}") from None  # fmt: skip
                log.info("metrics on http://%s/metrics", config.metrics_address)
            scheduler = Scheduler(core)
            await scheduler.start()
            core.before_stop.append(scheduler.close)
            if self.mode is not None:  # a signal during recovery: stop before serving
                self._shut_down(core, self.mode)
                await self.stopping.wait()
                return
            service = Service(core, scheduler, self.request_shutdown, peers)
            health_servicer = health.aio.HealthServicer()
            server = _grpc_server(service, health_servicer)
            try:
                if config.listen:
                    self.tcp, self.authenticator, self.certificates = await _serve_tcp(
                        config, service, health_servicer
                    )
            except StartupError:
                await core.shutdown(pb.SHUTDOWN_MODE_STOP)
                raise
            old_umask = os.umask(0o177)
            try:
                server.add_insecure_port(f"unix:{config.socket}")
                await server.start()
                await peers.start(peer_path(config.socket))
            finally:
                os.umask(old_umask)
            _secure_socket(config, config.socket, peer_path(config.socket))
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            loop = asyncio.get_running_loop()
            background = [
                loop.create_task(core.prune_forever()),
                loop.create_task(core.heap.trim_forever()),
                loop.create_task(reap_orphans_forever()),
            ]
            log.info(
                "taskerd serving on %s (workers %d..%d, queue %d, journal %s)",
                config.socket, config.workers, config.burst_workers, config.max_queue,
                config.state_dir / JOURNAL,
            )  # fmt: skip
            gc.freeze()  # what start-up made lives as long as the daemon: never scan it again
            notify("READY=1")
            await self.stopping.wait()
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            for task in background:
                task.cancel()
            if self.tcp is not None:
                await asyncio.gather(server.stop(grace=1.0), self.tcp.stop(grace=1.0))
            else:
                await server.stop(grace=1.0)
        finally:
            await peers.close()
            if metrics is not None:
                await metrics.close()
            await store.close()
            with suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(config.socket).st_mode):
                    config.socket.unlink()


def main(argv: list[str] | None = None) -> None:
    """The ``taskerd`` command."""
    config, print_only = configuration.from_args(argv)
    if print_only:
        sys.stdout.write(config.to_toml())
        return
    setup_logging(config.log_level, config.log_format)
    # Queued tasks are long-lived objects: with the default thresholds the collector walks all
    # of them again and again while a big batch is accepted. Collect young objects less often.
    gc.set_threshold(50_000, 20, 100)
    try:
        lock = lock_state_dir(config.state_dir)
        prepare_socket(config)
    except (StartupError, OSError) as exc:
        print(f"taskerd: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        asyncio.run(Daemon(config).serve())
    except StartupError as exc:
        print(f"taskerd: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        lock.close()
