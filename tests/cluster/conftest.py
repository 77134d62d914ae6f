"""A real Dask cluster on 127.0.0.1: one ``dask scheduler`` and two ``dask worker`` processes.

Each worker: ``--nworkers 1 --nthreads 2 --resources slots=2 --preload taskerd.dask.worker``, no
dashboard. Every process of a cluster (and whatever they start) carries a marker variable in
its environment; tearing down kills each process group and then checks, through /proc, that
no process with the marker is left (failing the test run if one is).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DASK = str(Path(sys.executable).parent / "dask")
MARK_VAR = "TASKER_TEST_CLUSTER"
WORKERS = ("w1", "w2")
START_TIMEOUT = 30.0


def marked(mark: str) -> list[int]:
    """Pids of live (non-zombie) processes whose environment carries ``MARK_VAR=mark``."""
    needle = f"\0{MARK_VAR}={mark}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = b"\0" + f.read() + b"\0"
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if needle in env and stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


@dataclass
class Cluster:
    """A running scheduler and its workers, and a ``distributed.Client`` connected to it."""

    dir: Path
    tls: bool = False
    claims_preload: bool = False  # the scheduler loads the claims plugin itself
    mark: str = field(default_factory=lambda: secrets.token_hex(6))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    replaced: list[subprocess.Popen[bytes]] = field(default_factory=list)
    address: str = ""
    client: Any = None
    security: Any = None
    port: int = 0  # the scheduler's (0: any free one)
    env: dict[str, str] = field(default_factory=dict)  # more for every process (DASK_*)

    def _cli_tls(self) -> list[str]:
        if not self.tls:
            return []
        return [
            "--tls-ca-file", str(self.dir / "ca.pem"),
            "--tls-cert", str(self.dir / "cert.pem"),
            "--tls-key", str(self.dir / "key.pem"),
        ]  # fmt: skip

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = {**os.environ, **self.env, MARK_VAR: self.mark}
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 (kept by the child)
        with log:
            self.procs[name] = subprocess.Popen(
                argv, stdout=log, stderr=log, env=env, cwd=self.dir, start_new_session=True
            )

    def start(self) -> None:
        from distributed import Client
        from distributed.security import Security

        if self.tls:
            temporary = Security.temporary()  # type: ignore[no-untyped-call]
            ca = temporary.tls_ca_file  # the PEM contents, not a path
            (self.dir / "ca.pem").write_text(ca)
            (self.dir / "cert.pem").write_text(temporary.tls_client_cert)
            (self.dir / "key.pem").write_text(temporary.tls_client_key)
            self.security = Security(  # type: ignore[no-untyped-call]
                tls_ca_file=str(self.dir / "ca.pem"),
                tls_client_cert=str(self.dir / "cert.pem"),
                tls_client_key=str(self.dir / "key.pem"),
                require_encryption=True,
            )
        self.start_scheduler()
        for name in WORKERS:
            self.start_worker(name)
        self.client = Client(  # type: ignore[no-untyped-call]
            self.address, security=self.security, timeout=START_TIMEOUT
        )
        self.wait_workers()

    def start_scheduler(self) -> None:
        """Start the scheduler (again: on the same port when ``port`` is set)."""
        scheduler_file = self.dir / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        if "scheduler" in self.procs:
            self.replaced.append(self.procs.pop("scheduler"))
        protocol = "tls" if self.tls else "tcp"
        self._spawn(
            "scheduler",
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-dashboard", "--protocol", protocol, "--scheduler-file", str(scheduler_file),
             *self._cli_tls(),
             *(["--preload", "taskerd.dask.claims"] if self.claims_preload else [])],
        )  # fmt: skip
        wait_for(scheduler_file.exists, START_TIMEOUT, "the scheduler did not start")
        self.address = wait_for(
            lambda: json.loads(scheduler_file.read_text() or "{}").get("address"),
            START_TIMEOUT,
            "no scheduler address",
        )

    def start_worker(self, name: str) -> None:
        """Start worker ``name`` (its nanny, which starts the worker process), or again."""
        if name in self.procs:
            self.replaced.append(self.procs.pop(name))
        self._spawn(
            name,
            [DASK, "worker", self.address, "--host", "127.0.0.1", "--name", name,
             "--nworkers", "1", "--nthreads", "2", "--resources", "slots=2",
             "--preload", "taskerd.dask.worker", "--no-dashboard",
             "--local-directory", str(self.dir / name), *self._cli_tls()],
        )  # fmt: skip

    def workers(self) -> dict[str, str]:
        """Worker name -> address, as the scheduler has them now."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        return {str(w["name"]): address for address, w in info.items()}

    def wait_workers(self, timeout: float = START_TIMEOUT) -> dict[str, str]:
        """Wait until every worker is registered (again); return name -> address."""
        return dict(
            wait_for(
                lambda: (w := self.workers()).keys() == set(WORKERS) and w,
                timeout,
                "workers did not register",
            )
        )

    def pid_of(self, name: str) -> int:
        """The pid of worker ``name``'s worker process (not its nanny)."""
        address = self.workers()[name]
        return int(self.client.run(os.getpid, workers=[address])[address])

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)
        procs = [*self.procs.values(), *self.replaced]
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, deadline - time.monotonic()))
            if all(p.poll() is not None for p in procs):
                break
        # Keepers and task processes live in sessions of their own: they must go by themselves.
        try:
            wait_for(lambda: not marked(self.mark), 10.0, "leftover processes")
        except TimeoutError:
            left = marked(self.mark)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail(f"processes left behind by the cluster: {left}")


def _cluster(tmp: Path, tls: bool) -> Iterator[Cluster]:
    cluster = Cluster(tmp, tls=tls, claims_preload=tls)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A plain-TCP cluster shared by a module's tests."""
    yield from _cluster(tmp_path_factory.mktemp("cluster"), tls=False)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The same cluster over TLS (``Security.temporary()`` certificates written to files); its
    scheduler has the claims plugin from ``--preload taskerd.dask.claims``."""
    pytest.importorskip("cryptography")
    yield from _cluster(tmp_path_factory.mktemp("tls-cluster"), tls=True)
