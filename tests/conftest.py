"""Shared fixtures: a real taskerd on a temporary socket and state directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent


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
            self._stub = pb_grpc.TaskerStub(self._channel)
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
        try:
            d.stop()
        except Exception:
            if d.proc is not None:
                d.proc.kill()


@pytest.fixture
def daemon(make_daemon: type[Daemon]) -> Daemon:
    """A started daemon with 2 workers."""
    return make_daemon("--workers", "2")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A started daemon with 4 workers, shared by a module's tests (one per test is slow)."""
    d = Daemon(tmp_path_factory.mktemp("daemon"), "--workers", "4")
    d.start()
    yield d
    try:
        d.stop()
    except Exception:
        if d.proc is not None:
            d.proc.kill()
