"""Helpers shared by the bench scripts: a private taskerd, percentiles, CPU time, ratio and goal
lines, and the summary table."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


class BenchDaemon:
    """A real ``python -m taskerd`` on a socket and state directory under ``tmp``.

    ``config`` is TOML text (e.g. ``journal_sync = "full"``). Used as a context manager it
    starts, then stops with a STOP shutdown (queued tasks stay journaled, so stopping is cheap
    at any queue size), falling back to SIGKILL.
    """

    def __init__(
        self, tmp: Path, *, workers: int, max_queue: int = 200_000, config: str = "",
        profile: Path | None = None,
    ) -> None:  # fmt: skip
        self.dir = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.socket = tmp / "run" / "taskerd.sock"
        self.config_path = tmp / "taskerd.toml"
        self.config_path.write_text('stop_timeout = "1s"\nkill_grace = "0.5s"\n' + config + "\n")
        self.args = [
            "--socket", str(self.socket), "--state-dir", str(tmp / "state"),
            "--workers", str(workers), "--max-workers", str(workers),
            "--max-queue", str(max_queue), "--config", str(self.config_path),
            "--log-level", "warning",
        ]  # fmt: skip
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    @property
    def target(self) -> str:
        """The gRPC target of the daemon's socket."""
        return f"unix:{self.socket}"

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> pb_grpc.TaskerStub:
        """Start the daemon; return a sync stub once ``Stats`` answers."""
        prefix = [PY, "-m", "cProfile", "-o", str(self.profile)] if self.profile else [PY]
        log = open(self.dir / "taskerd.log", "wb")  # noqa: SIM115 - owned by the process
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.proc = subprocess.Popen(
            [*prefix, "-m", "taskerd", *self.args], stdout=log, stderr=subprocess.STDOUT,
            cwd=self.dir, env=env,
        )  # fmt: skip
        log.close()
        self.channel = grpc.insecure_channel(self.target)
        stub = pb_grpc.TaskerStub(self.channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"taskerd exited {self.proc.returncode}: {self.log()}")
            if self.socket.exists():
                try:
                    stub.Stats(pb.StatsRequest(), timeout=2)
                    return stub
                except grpc.RpcError:
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"taskerd not ready after {timeout}s: {self.log()}")

    def log(self) -> str:
        """The tail of the daemon's log."""
        return (self.dir / "taskerd.log").read_text(errors="replace")[-4000:]

    def rss_kib(self) -> int:
        """The daemon's resident set size (VmRSS) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 20.0) -> float:
        """STOP-shutdown the daemon; return the seconds it took to exit (SIGKILL past timeout)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.perf_counter()
        try:
            assert self.channel is not None
            pb_grpc.TaskerStub(self.channel).Shutdown(
                pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_STOP), timeout=5
            )
        except grpc.RpcError:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.channel is not None:
            self.channel.close()
        return time.perf_counter() - t0

    def __enter__(self) -> BenchDaemon:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples`` by nearest rank."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def verdict(ok: bool) -> str:
    """``ok`` or ``MISSED``."""
    return "ok" if ok else "MISSED"


def rate(n: float) -> str:
    """A rate with thousands separators."""
    return f"{n:,.0f}/s"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    """One line of the summary table."""

    figure: str
    value: str
    baseline: str
    ratio: float | None
    goal: str = ""
    ok: bool | None = None


def summary(rows: list[Row]) -> None:
    """The compact table: figure, value, baseline, ratio, goal, ok/MISSED."""
    cells = [
        (r.figure, r.value, r.baseline, "-" if r.ratio is None else f"{r.ratio:.2f}", r.goal,
         "" if r.ok is None else verdict(r.ok))
        for r in rows
    ]  # fmt: skip
    head = ("figure", "value", "baseline", "ratio", "goal", "result")
    w = [max(len(c[i]) for c in [head, *cells]) for i in range(5)]
    print("\nSUMMARY")
    for f, v, b, r, g, ok in [head, *cells]:
        print(f"{f:<{w[0]}}  {v:>{w[1]}}  {b:<{w[2]}}  {r:>{w[3]}}  {g:<{w[4]}}  {ok}".rstrip())


S = TypeVar("S")


def sized_main(
    doc: str | None, run: Callable[[S], list[Row]], full: S, quick: S, quick_help: str
) -> None:
    """The command line of a benchmark run at two sizes: ``--quick`` (``quick_help``) or full;
    prints its summary and how long it took. SIGTERM exits cleanly, so its daemons are
    stopped."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    opts = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.perf_counter()
    summary(run(quick if opts.quick else full))
    print(f"total {time.perf_counter() - t0:.1f} s")


def timed_sections(sections: Sequence[tuple[str, Callable[[], list[Row]]]]) -> list[Row]:
    """Run each named section, saying how long it took; all their rows."""
    rows: list[Row] = []
    for name, section in sections:
        started = time.perf_counter()
        rows += section()
        print(f"  ({name}: {time.perf_counter() - started:.1f} s)", flush=True)
    return rows
