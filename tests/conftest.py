"""Shared fixtures: a real taskerd on a temporary socket and state directory."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tasker.api import METADATA
from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerd import cgroups
from taskerd.cgroups import read_file
from taskerd.procs import state_key

ROOT = Path(__file__).resolve().parent.parent


class _Announce(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Sends the API level on every call, as taskerctl does (see tasker.api)."""

    def _with_level(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), *METADATA])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_level(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_level(details), request)


class Daemon:
    """A real ``taskerd`` process, started with ``python -m taskerd``."""

    #: Test daemons stop fast: a running task gets little time before it is stopped.
    BASE_CONFIG = 'stop_timeout = "3s"\nkill_grace = "1s"\n'

    def __init__(
        self, tmp: Path, *args: str, env: dict[str, str] | None = None, config: str = ""
    ) -> None:
        self.dir = tmp
        self.config_path = tmp / "taskerd.toml"
        overridden = {line.split("=")[0].strip() for line in config.splitlines() if "=" in line}
        base = [
            ln for ln in self.BASE_CONFIG.splitlines() if ln.split("=")[0].strip() not in overridden
        ]
        self.config = "\n".join(base) + "\n" + config
        self.socket = tmp / "run" / "taskerd.sock"
        self.state_dir = tmp / "state"
        self.args = list(args)
        self.env = env
        self.log_path = tmp / "taskerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.TaskerStub | None = None

    @property
    def target(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        """The daemon's argv; writes its config file."""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        return [
            sys.executable, "-m", "taskerd",
            "--socket", str(self.socket),
            "--state-dir", str(self.state_dir),
            "--log-level", "debug",
            "--config", str(self.config_path),
            *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> Daemon:
        env = dict(os.environ if self.env is None else self.env)
        env.pop("NOTIFY_SOCKET", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"taskerd exited {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    self.stub.Stats(pb.StatsRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"taskerd not ready after {timeout}s:\n{self.log()}")

    @property
    def stub(self) -> pb_grpc.TaskerStub:
        if self._stub is None:
            self._channel = grpc.insecure_channel(self.target)
            self._stub = pb_grpc.TaskerStub(grpc.intercept_channel(self._channel, _Announce()))
        return self._stub

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None

    def kill9(self) -> None:
        """SIGKILL the daemon, as a crash would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_channel()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the daemon and wait for it to exit; returns its exit status."""
        self._close_channel()
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def restart(self) -> Daemon:
        self.stop()
        return self.start()

    def come_back(self, how: str) -> Daemon:
        """Start again after a ``"restart"`` (a clean stop) or a ``"kill9"`` (a crash)."""
        if how == "kill9":
            self.kill9()
            return self.start()
        assert how == "restart", how
        return self.restart()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[type[Daemon]]:
    """Factory: ``make_daemon("--workers", "1", config="max_retries = 0")`` starts a daemon
    (flags, plus TOML lines added to ``Daemon.BASE_CONFIG``) that is stopped after the test."""
    started: list[Daemon] = []

    def factory(
        *args: str, env: dict[str, str] | None = None, config: str = "", start: bool = True
    ) -> Daemon:
        d = Daemon(tmp_path / f"d{len(started)}", *args, env=env, config=config)
        d.dir.mkdir(parents=True, exist_ok=True)
        started.append(d)
        return d.start() if start else d

    yield factory  # type: ignore[misc]
    for d in started:
        put_away(d)


def put_away(d: Daemon) -> None:
    """Stop a test's daemon (kill it if it will not stop) and remove its cgroups."""
    try:
        d.stop()
    except Exception:
        if d.proc is not None:
            d.proc.kill()
    remove_cgroups(d.state_dir)


def remove_cgroups(state_dir: Path) -> None:
    """Remove the (empty) cgroup subtree of a daemon that a test killed and never restarted:
    a daemon removes its own on a clean stop, but a ``kill -9`` leaves it for the next start."""
    try:
        tree = os.path.join(cgroups.own_cgroup_dir(), cgroups.SUBTREE_PREFIX + state_key(state_dir))
    except OSError:  # no cgroup v2 here
        return
    if os.path.isdir(tree):
        cgroups.remove(tree)


@pytest.fixture
def daemon(make_daemon: type[Daemon]) -> Daemon:
    """A started daemon with 2 workers."""
    return make_daemon("--workers", "2")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A started daemon with 4 workers, shared by a module's tests (one per test is slow)."""
    with running(Daemon(tmp_path_factory.mktemp("daemon"), "--workers", "4")) as d:
        yield d


@contextlib.contextmanager
def running(d: Daemon) -> Iterator[Daemon]:
    """Start ``d``, and :func:`put_away` it on the way out: for a daemon that outlives one
    test."""
    d.start()
    try:
        yield d
    finally:
        put_away(d)


# ------------------------------------------------------------------ processes left behind

#: Set in pytest's environment for the session, so inherited by the daemons, CLIs and examples the
#: tests start (and by tasks that get the daemon's environment): one of the ways a process left
#: behind is known to be this run's, and not another test run's on the same machine.
SESSION_VAR = "TASKER_TEST_SESSION"
_TOKEN_VAR = "TASKER_RUN_TOKEN"  # taskerd.procs.TOKEN_VAR: every task process carries one
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_test_spans: list[tuple[float, float, str]] = []  # (start, end) in seconds since boot, nodeid
_running: dict[str, float] = {}


@dataclass(frozen=True, slots=True)
class Proc:
    """A live process as /proc shows it; ``start`` (clock ticks after boot) tells it apart from a
    later process that reuses its pid."""

    pid: int
    ppid: int = field(compare=False)  # at the time it was seen: an orphan gets a new parent
    start: int

    def alive(self) -> bool:
        """True while this very process exists and is not a zombie."""
        now = proc(self.pid)
        return now is not None and now.start == self.start

    def environ(self) -> bytes:
        """Its environment as ``\\0NAME=value\\0...`` (a leading NUL, for exact-name searches)."""
        return b"\0" + read_file(f"/proc/{self.pid}/environ")

    def describe(self) -> str:
        cmd = read_file(f"/proc/{self.pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
        try:
            cwd = os.readlink(f"/proc/{self.pid}/cwd")
        except OSError:
            cwd = "?"
        now = proc(self.pid)
        parent = now.ppid if now is not None and now.start == self.start else self.ppid
        return f"pid {self.pid} (ppid {parent}) `{cmd.strip()[:160]}` in {cwd}"


def proc(pid: int) -> Proc | None:
    """Process ``pid``, or None when it is gone or a zombie (dead, just not reaped)."""
    data = read_file(f"/proc/{pid}/stat")
    close = data.rfind(b")")
    if close < 0:
        return None
    fields = data[close + 2 :].split()  # state ppid pgrp session ... starttime is the 20th
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return Proc(pid, int(fields[1]), int(fields[19]))


def processes() -> list[Proc]:
    """Every live process."""
    found = (proc(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return [p for p in found if p is not None]


def processes_with_env(name: str, prefix: str) -> list[Proc]:
    """Live processes whose environment sets ``name`` to a value starting with ``prefix``."""
    key = f"\0{name}={prefix}".encode()
    return [p for p in processes() if key in p.environ()]


def kill_processes(procs: Iterable[Proc], timeout: float = 5.0) -> list[Proc]:
    """SIGKILL each of ``procs`` still alive and wait (up to ``timeout``) until they are dead.

    Returns those that were still alive. Only ever pass processes the tests started.
    """
    hit = [p for p in procs if p.alive()]
    for p in hit:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in hit) and time.monotonic() < deadline:
        time.sleep(0.02)
    me = os.getpid()
    for p in hit:
        if p.ppid == me:  # our own child: reap it, so no zombie waits for the session's end
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
    return hit


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def pytest_configure(config: pytest.Config) -> None:
    os.environ[SESSION_VAR] = f"{os.getpid()}-{secrets.token_hex(6)}"


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _running[nodeid] = _boottime()


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    _test_spans.append((_running.pop(nodeid, 0.0), _boottime(), nodeid))


def _started_during(p: Proc) -> str:
    """The test that was running when ``p`` started (setup and teardown included)."""
    at = p.start / _CLK_TCK
    now = _boottime()  # the last test is still open: the session is torn down in its teardown
    for start, end, nodeid in [*((s, now, n) for n, s in _running.items()), *_test_spans[::-1]]:
        if start - 0.02 <= at <= end + 0.02:
            return nodeid
    return "no test (between tests, or in a session fixture)"


def left_behind(basetemp: Path) -> list[Proc]:
    """Live processes this session started and left: descendants of pytest, and the adopted
    orphans of daemons it killed, found by the session's variable, by a run token of an
    in-process run, or by a working directory in the session's temporary directory."""
    me = os.getpid()
    procs = {p.pid: p for p in processes()}
    ancestors = {me}
    pid = me
    while pid in procs and pid > 1:
        pid = procs[pid].ppid
        ancestors.add(pid)
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    descendants: set[int] = set()
    todo = list(children.get(me, ()))
    while todo:
        pid = todo.pop()
        if pid not in descendants:
            descendants.add(pid)
            todo += children.get(pid, ())
    keys = [f"\0{SESSION_VAR}={os.environ.get(SESSION_VAR, '-')}\0".encode()]
    runner = sys.modules.get("taskerd.procs")  # in-process runs (tests/daemon/test_runner.py)
    token_prefix = getattr(runner, "token_prefix", None)
    if callable(token_prefix):
        keys.append(f"\0{_TOKEN_VAR}={token_prefix()}".encode())
    root = str(basetemp.resolve())
    left: list[Proc] = []
    for p in procs.values():
        if p.pid in ancestors:
            continue
        if p.pid in descendants:
            left.append(p)
            continue
        env = p.environ()
        if any(key in env for key in keys):
            left.append(p)
            continue
        try:
            cwd = os.readlink(f"/proc/{p.pid}/cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + "/"):
            left.append(p)
    return sorted(left, key=lambda p: p.pid)


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After every other fixture is torn down: fail the session if the tests left any process
    running (task processes orphaned by a killed daemon, a daemon never stopped...), and kill
    them so that nothing lingers."""
    yield
    left = left_behind(tmp_path_factory.getbasetemp())
    if not left:
        return
    by_test: dict[str, list[str]] = {}
    for p in left:
        by_test.setdefault(_started_during(p), []).append(p.describe())
    kill_processes(left)
    lines = [f"{len(left)} processes left running by the tests (now killed):"]
    for nodeid, described in by_test.items():
        lines.append(f"  started during {nodeid}:")
        lines += [f"    {d}" for d in described]
    pytest.fail("\n".join(lines), pytrace=False)
