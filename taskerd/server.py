"""``taskerd`` start-up: configuration, the socket, the journal, the gRPC server, and signals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import grp
import io
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerd import config as configuration
from taskerd.config import DaemonConfig
from taskerd.core import Core
from taskerd.notify import notify
from taskerd.runner import become_subreaper, install_child_watcher, reap_orphans_forever
from taskerd.service import Service
from taskerd.store import Store

log = logging.getLogger("taskerd")

MAX_MESSAGE = 64 << 20
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tasker"].full_name


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


def prepare_socket(config: DaemonConfig) -> None:
    """Make the socket's directory private, and clear a stale socket; never touch anything else."""
    path = config.socket
    directory = path.parent
    group = config.socket_group
    directory.mkdir(parents=True, exist_ok=True, mode=0o750 if group else 0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(f"{directory} is not a directory")
    if info.st_uid == os.getuid() and directory.name == "tasker":
        os.chmod(directory, 0o750 if group else 0o700)
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


def lock_state_dir(state_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on the state directory for the daemon's lifetime."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = open(state_dir / "taskerd.lock", "ab")  # noqa: SIM115 - held until exit
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


def _secure_socket(config: DaemonConfig) -> None:
    if config.socket_group:
        try:
            gid = grp.getgrnam(config.socket_group).gr_gid
        except KeyError:
            raise StartupError(f"socket_group: no group {config.socket_group!r}") from None
        os.chown(config.socket, -1, gid)
        os.chown(config.socket.parent, -1, gid)
        os.chmod(config.socket, 0o660)
    else:
        os.chmod(config.socket, 0o600)


class Daemon:
    """One running taskerd: the server, the core, and the way they stop."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.stopping = asyncio.Event()
        self.mode = pb.SHUTDOWN_MODE_STOP
        self._signals = 0
        self._shutdown_task: asyncio.Task[None] | None = None
        self.core: Core | None = None

    def request_shutdown(self, mode: pb.ShutdownMode.ValueType) -> None:
        """Begin to stop (Shutdown RPC or a signal); a second request escalates to KILL."""
        if self.core is None:
            return
        if self._shutdown_task is None:
            self.mode = mode
            notify("STOPPING=1")
            self._shutdown_task = asyncio.get_running_loop().create_task(self.core.shutdown(mode))
            self._shutdown_task.add_done_callback(lambda _: self.stopping.set())
        elif mode == pb.SHUTDOWN_MODE_KILL:
            asyncio.get_running_loop().create_task(self.core.shutdown(mode))

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("%s: stopping gracefully (again to kill)", name)
            self.request_shutdown(pb.SHUTDOWN_MODE_STOP)
        else:
            log.warning("%s again: killing", name)
            self.request_shutdown(pb.SHUTDOWN_MODE_KILL)

    async def serve(self) -> None:
        """Run until shut down."""
        config = self.config
        install_child_watcher()
        if not become_subreaper():
            log.warning("could not become a child subreaper; escaped descendants go to init")
        store = await Store.open(config.state_dir / "journal.sqlite3", sync=config.journal_sync)  # type: ignore[arg-type]
        try:
            self.core = core = await Core.start(config, store)
            server = grpc.aio.server(
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE),
                    ("grpc.max_send_message_length", MAX_MESSAGE),
                    ("grpc.so_reuseport", 0),
                ]
            )
            pb_grpc.add_TaskerServicer_to_server(Service(core, self.request_shutdown), server)
            health_servicer = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(
                [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME],
                server,
            )  # fmt: skip
            old_umask = os.umask(0o177)
            try:
                server.add_insecure_port(f"unix:{config.socket}")
                await server.start()
            finally:
                os.umask(old_umask)
            _secure_socket(config)
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
            background = [
                loop.create_task(core.prune_forever()),
                loop.create_task(reap_orphans_forever()),
            ]
            log.info(
                "taskerd serving on %s (workers %d..%d, queue %d, journal %s)",
                config.socket, config.workers, config.burst_workers, config.max_queue,
                config.state_dir / "journal.sqlite3",
            )  # fmt: skip
            gc.freeze()  # what start-up made lives as long as the daemon: never scan it again
            notify("READY=1")
            await self.stopping.wait()
            for name in ("", SERVICE_NAME):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            for task in background:
                task.cancel()
            await server.stop(grace=1.0)
        finally:
            await store.close()
            with suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(config.socket).st_mode):
                    config.socket.unlink()
        log.info("taskerd stopped")


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """One line per event on stderr, flushed a few times a second rather than per line.

    A flush is a write system call; at thousands of tasks per second, flushing every line costs
    the event loop as much as spawning the tasks does.
    """

    INTERVAL = 0.2

    def __init__(self) -> None:
        # sys.stderr is line-buffered (a write call per line): give the handler a buffered one.
        stream = io.TextIOWrapper(
            open(sys.stderr.fileno(), "wb", buffering=1 << 16, closefd=False),  # noqa: SIM115
            encoding="utf-8",
            errors="backslashreplace",
        )
        super().__init__(stream)
        self._dirty = threading.Event()
        threading.Thread(target=self._flusher, name="log-flush", daemon=True).start()

    def flush(self) -> None:  # called by emit() for every record
        self._dirty.set()

    def _flusher(self) -> None:
        while True:
            self._dirty.wait()
            time.sleep(self.INTERVAL)
            self._dirty.clear()
            self.flush_now()

    def flush_now(self) -> None:
        with self.lock or contextlib.nullcontext(), suppress(ValueError, OSError):
            self.stream.flush()

    def close(self) -> None:
        self.flush_now()
        super().close()


class _Formatter(logging.Formatter):
    """The standard line, with the date and time formatted once a second, not once a line."""

    _second = -1
    _stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S",
                                                              self.converter(second))  # fmt: skip
        return f"{self._stamp},{int(record.msecs):03d}"


def setup_logging(level: str) -> None:
    """One line per event on stderr, with its level."""
    # As the logging docs advise when speed matters: the lines name no source file, so the
    # logger need not walk the stack to find one, nor look up threads and processes.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = StderrHandler()
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def main(argv: list[str] | None = None) -> None:
    """The ``taskerd`` command."""
    config, print_only = configuration.from_args(argv)
    if print_only:
        sys.stdout.write(config.to_toml())
        return
    setup_logging(config.log_level)
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
