"""The million-task benchmark (issue 10): taskerd with 1,000,000 tasks queued.

One daemon (1 worker, held by its first ``sleep 3600`` task, so nothing drains) and one journal,
each figure beside a baseline measured in the same run, on the same daemon with a handful of
tasks queued:

1. fill: N tasks queued through pipelined batched Submits (``--batch`` tasks per request,
   ``--inflight`` requests in flight, sync stub on threads), specs as the clients build them
   (``submit_requests``: argv, cwd, the client's environment once per request), vs raw sqlite3
   inserts of the same batch size; goal >= 50,000/s;
2. RSS of the daemon with N queued vs with a handful (and at checkpoints: bytes per task);
   goal <= 600 MiB;
3. restart with N queued: STOP shutdown, then from process start to SERVING (Stats answers) and
   to the first task started (``Get`` shows it RUNNING with a pid), vs the same with a handful
   queued; goal < 5 s. The stop time is reported too;
4. latency with N in the journal: ``Stats``, the first page of ``List`` as ``taskerctl list``
   asks for it (51 tasks) and ``Get`` of a random id as ``taskerctl show`` asks for it: p50
   and p99 over sequential calls; goal p50 < 5 ms and <= 1.5x the handful daemon. Measured
   once the daemon is at rest after the fill (its journal truncates the WAL two seconds after
   the last write, a checkpoint of hundreds of MiB that would otherwise share the two cores).

Run: ``.venv/bin/python bench/scale.py [--quick | --tasks N] [--profile DIR]`` (a few minutes
at 1M on 2 cores; ``--quick`` is 20,000 tasks). ``--profile DIR`` runs the daemon under cProfile:
``fill.prof`` (the process that is filled) and ``restart.prof`` (the one restarted with N
queued). Prints figures and a summary; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchDaemon, Row, cpu_seconds, percentile, rate, summary, verdict
from store_floor import raw_insert_rate

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerctl import _core as core

HOLD = ["sleep", "3600"]  # every task: the first one holds the only worker, the rest stay queued
HANDFUL = 10  # tasks of the baseline daemon (the first one running)
LIST_LIMIT = 50  # ``taskerctl list``'s default --limit (it asks for one more)
FILL_GOAL = 50_000.0
RSS_GOAL_MIB = 600.0
RESTART_GOAL = 5.0
LATENCY_GOAL = 0.005
LATENCY_RATIO = 1.5


@dataclass
class Restart:
    """A STOP shutdown and a start again, timed."""

    stop: float
    serving: float
    first_start: float


Stub = pb_grpc.TaskerStub


CHANNELS: list[grpc.Channel] = []  # closed at the end of the run


def channel(d: BenchDaemon) -> Stub:
    """A sync stub to ``d`` with the clients' channel options (64 MiB messages)."""
    chan = grpc.insecure_channel(d.target, options=core.CHANNEL_OPTIONS)
    CHANNELS.append(chan)
    return pb_grpc.TaskerStub(chan)


def batch_request(size: int) -> pb.SubmitRequest:
    """One Submit of ``size`` ``sleep 3600`` tasks, built as ``Client.submit_many`` builds it."""
    [request] = core.submit_requests([HOLD] * size, {}, size)
    return request


def client_build_rate(size: int) -> float:
    """Specs/s the client side builds with ``submit_requests`` (informational)."""
    n = max(size, 20_000)
    t0 = time.perf_counter()
    for _ in core.submit_requests([HOLD] * n, {}, size):
        pass
    return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------- 1. fill


def fill(stub: Stub, n: int, batch: int, inflight: int, sample: list[int]) -> float:
    """Queue ``n`` tasks, ``inflight`` Submits of ``batch`` at a time; the seconds it took.

    One id per response goes to ``sample`` (for random Gets).
    """
    full, rest = divmod(n, batch)
    requests = [batch_request(batch)] * full + ([batch_request(rest)] if rest else [])
    lock = threading.Lock()
    errors: list[BaseException] = []

    def sender() -> None:
        while True:
            with lock:
                if not requests or errors:
                    return
                request = requests.pop()
            try:
                ids = stub.Submit(request, timeout=120).ids
            except grpc.RpcError as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                sample.append(random.choice(ids))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=sender) for _ in range(inflight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"Submit failed: {errors[0]}")
    return elapsed


# ---------------------------------------------------------------------------------- 3. restart


def wait_started(stub: Stub, first: int, timeout: float = 120.0) -> None:
    """Poll ``Get(first)`` until that task is RUNNING with a pid."""
    deadline = time.monotonic() + timeout
    request = pb.GetRequest(id=first)
    while time.monotonic() < deadline:
        task = stub.Get(request, timeout=30)
        if task.state == pb.TASK_STATE_RUNNING and task.pid:
            return
        if task.state not in (pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING):
            raise RuntimeError(f"task {first} ended {pb.TaskState.Name(task.state)}")
        time.sleep(0.002)
    raise RuntimeError(f"task {first} not started after {timeout}s")


def restart(d: BenchDaemon, first: int, profile: Path | None) -> tuple[Restart, Stub]:
    """STOP-shutdown ``d`` and start it again; ``first`` is the task that should start first."""
    stopped = d.stop(timeout=300)
    d.profile = profile
    t0 = time.perf_counter()
    d.start(timeout=600)
    serving = time.perf_counter() - t0
    stub = channel(d)
    wait_started(stub, first)
    return Restart(stopped, serving, time.perf_counter() - t0), stub


# ---------------------------------------------------------------------------------- 4. latency


def timed(call: Callable[[], object], calls: int) -> list[float]:
    """Wall seconds of ``calls`` sequential calls (after 10 unrecorded ones)."""
    for _ in range(10):
        call()
    samples: list[float] = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return samples


def latencies(stub: Stub, ids: list[int], calls: int) -> dict[str, list[float]]:
    """Stats, the first page of ``taskerctl list``, and ``taskerctl show`` of a random id."""
    list_call = next(core.list_tasks(None, None, LIST_LIMIT + 1))
    stats = pb.StatsRequest()
    rng = random.Random(10)

    def get() -> object:
        show = next(core.get(rng.choice(ids), True))  # ``show`` always asks for the output
        return stub.Get(show.request, timeout=30)

    return {
        "Stats": timed(lambda: stub.Stats(stats, timeout=30), calls),
        f"List first page ({LIST_LIMIT + 1})": timed(
            lambda: stub.List(list_call.request, timeout=30), calls
        ),
        "Get random id": timed(get, calls),
    }


# ---------------------------------------------------------------------------------- run


def settle(pid: int, timeout: float = 60.0, step: float = 0.5) -> float:
    """Wait until the daemon uses under a tenth of a core over ``step`` seconds (at most
    ``timeout``, after a first 2.5 s for the journal's idle checkpoint to begin); the seconds
    waited."""
    t0 = time.monotonic()
    time.sleep(2.5)
    while time.monotonic() - t0 < timeout:
        used = cpu_seconds(pid)
        time.sleep(step)
        if cpu_seconds(pid) - used < 0.1 * step:
            break
    return time.monotonic() - t0


def peak_kib(d: BenchDaemon) -> int:
    """The daemon's peak resident set size (VmHWM) in KiB."""
    for line in Path(f"/proc/{d.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def mib(kib: int) -> str:
    """KiB as MiB text."""
    return f"{kib / 1024:.0f} MiB"


def ms(seconds: float) -> str:
    """Seconds as milliseconds text."""
    return f"{seconds * 1e3:.2f} ms"


def run(
    tmp: Path, n: int, batch: int, inflight: int, calls: int, profile: Path | None
) -> list[Row]:
    """Every figure, in the order the daemon's life allows; the summary rows."""
    rows: list[Row] = []
    checkpoints = sorted({c for c in (n // 10, (n * 3) // 10) if 0 < c < n} | {n})
    raw = raw_insert_rate(tmp / "raw.db", "normal", batch, seconds=1.0)
    client_rate = client_build_rate(batch)
    d = BenchDaemon(tmp / "scale", workers=1, max_queue=n + 2 * HANDFUL)
    try:
        # -- the baseline: a handful queued, the first one running
        d.start()
        stub = channel(d)
        handful = list(stub.Submit(batch_request(HANDFUL), timeout=30).ids)
        first = handful[0]
        wait_started(stub, first)
        rss_small = d.rss_kib()
        small = latencies(stub, handful, calls)
        base, stub = restart(d, first, profile / "fill.prof" if profile else None)
        print(f"baseline ({HANDFUL} tasks): RSS {mib(rss_small)}; restart: stop {base.stop:.2f} s, "
              f"SERVING {base.serving:.2f} s, first start {base.first_start:.2f} s",
              flush=True)  # fmt: skip

        # -- 1. fill, pausing at checkpoints for the RSS
        sample: list[int] = []
        elapsed = 0.0
        done = 0
        rss_at: list[tuple[int, int]] = [(0, d.rss_kib())]
        for mark in checkpoints:
            seconds = fill(stub, mark - done, batch, inflight, sample)
            elapsed += seconds
            queued = stub.Stats(pb.StatsRequest(), timeout=60).queued
            rss_at.append((queued, d.rss_kib()))
            print(f"fill {done:>9,} -> {mark:>9,}: {rate((mark - done) / seconds):>11}; "
                  f"{queued:,} queued, RSS {mib(rss_at[-1][1])}", flush=True)  # fmt: skip
            done = mark
        accept = n / elapsed
        queued, rss_full = rss_at[-1]
        peak_fill = peak_kib(d)
        (q0, r0), (q1, r1) = rss_at[0], rss_at[-1]
        per_task = (r1 - r0) * 1024 / max(1, q1 - q0)
        slope = ""
        if len(rss_at) >= 3:
            (qa, ra), (qb, rb) = rss_at[-2], rss_at[-1]
            slope = f", {(rb - ra) * 1024 / max(1, qb - qa):,.0f} B/task from {qa:,} to {qb:,}"
        print(f"fill: {n:,} in {elapsed:.1f} s = {rate(accept)} (batch {batch:,}, {inflight} in "
              f"flight) vs raw sqlite {batch:,}/txn {rate(raw)}; client builds specs at "
              f"{rate(client_rate)}", flush=True)  # fmt: skip
        print(f"RSS: {mib(rss_full)} with {queued:,} queued vs {mib(rss_small)} with "
              f"{HANDFUL}: {per_task:,.0f} B/task overall{slope}", flush=True)  # fmt: skip
        rows.append(Row(f"fill {n:,} (batch {batch:,} x{inflight})", rate(accept),
                        f"raw sqlite {batch:,}/txn {rate(raw)}", accept / raw,
                        f">= {FILL_GOAL:,.0f}/s", accept >= FILL_GOAL))  # fmt: skip
        rows.append(Row(f"RSS with {queued:,} queued", mib(rss_full),
                        f"{HANDFUL} queued {mib(rss_small)}", rss_full / rss_small,
                        f"<= {RSS_GOAL_MIB:.0f} MiB", rss_full / 1024 <= RSS_GOAL_MIB))  # fmt: skip
        rows.append(Row("  RSS per queued task", f"{per_task:,.0f} B", "", None))

        # -- 4. latency with N in the journal, once the daemon is at rest again (the journal
        # thread truncates the WAL two seconds after the last write: a long checkpoint)
        rested = settle(d.pid)
        print(f"the daemon was at rest {rested:.1f} s after the fill")
        full = latencies(stub, sample, calls)
        for name, samples in full.items():
            p50, p99 = statistics.median(samples), percentile(samples, 0.99)
            b50, b99 = statistics.median(small[name]), percentile(small[name], 0.99)
            ok = p50 < LATENCY_GOAL and p50 <= LATENCY_RATIO * b50
            print(f"{name} ({calls} sequential): p50 {ms(p50)} p99 {ms(p99)} at {queued:,} vs "
                  f"p50 {ms(b50)} p99 {ms(b99)} at {HANDFUL} (goal p50 < 5 ms and <= "
                  f"{LATENCY_RATIO}x: {verdict(ok)})", flush=True)  # fmt: skip
            rows.append(Row(f"{name} p50", ms(p50), f"{HANDFUL} queued {ms(b50)}", p50 / b50,
                            f"< 5 ms, <= {LATENCY_RATIO}x", ok))  # fmt: skip
            rows.append(Row(f"{name} p99", ms(p99), f"{HANDFUL} queued {ms(b99)}", p99 / b99))

        # -- 3. restart with N queued
        big, stub = restart(d, first, profile / "restart.prof" if profile else None)
        rss_restarted, peak_restart = d.rss_kib(), peak_kib(d)
        print(f"restart at {queued:,}: stop {big.stop:.2f} s, SERVING {big.serving:.2f} s, "
              f"first start {big.first_start:.2f} s; RSS after it {mib(rss_restarted)}, peak "
              f"{mib(peak_restart)} (the filled daemon's peak: {mib(peak_fill)})",
              flush=True)  # fmt: skip
        for what, value, baseline in (
            ("SERVING", big.serving, base.serving),
            ("first start", big.first_start, base.first_start),
        ):
            rows.append(Row(f"restart to {what} at {queued:,}", f"{value:.2f} s",
                            f"{HANDFUL} queued {baseline:.2f} s", value / baseline,
                            f"< {RESTART_GOAL:.0f} s", value < RESTART_GOAL))  # fmt: skip
        rows.append(Row(f"stop (STOP) at {queued:,}", f"{big.stop:.2f} s",
                        f"{HANDFUL} queued {base.stop:.2f} s", big.stop / base.stop))  # fmt: skip
        rows.append(Row("RSS after the restart", mib(rss_restarted),
                        f"after the fill {mib(rss_full)}", rss_restarted / rss_full))  # fmt: skip
        rows.append(Row("  peak RSS of the restart", mib(peak_restart),
                        f"peak of the fill {mib(peak_fill)}",
                        peak_restart / peak_fill))  # fmt: skip
        final = d.stop(timeout=300)
        print(f"final stop at {queued:,}: {final:.2f} s", flush=True)
    finally:
        d.stop(timeout=300)
        for chan in CHANNELS:
            chan.close()
    return rows


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 tasks, for a smoke test")
    parser.add_argument("--tasks", type=int, default=None, help="tasks to queue (1,000,000)")
    parser.add_argument("--batch", type=int, default=10_000, help="tasks per Submit (10,000)")
    parser.add_argument("--inflight", type=int, default=2, help="Submits in flight (2)")
    parser.add_argument("--calls", type=int, default=None, help="calls per latency (200)")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the daemon into DIR")
    opts = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the daemon is stopped (finally)
    n = opts.tasks or (20_000 if opts.quick else 1_000_000)
    calls = opts.calls or (30 if opts.quick else 200)
    if opts.profile:
        opts.profile.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        rows = run(Path(tmp), n, min(opts.batch, n), opts.inflight, calls, opts.profile)
    summary(rows)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
