"""taskerd benchmarks over gRPC, each figure beside a baseline measured in the same run.

1. accept rate (journal committed): 64 single-task Submits in flight, and 1,000-task batches,
   vs raw sqlite3 committed inserts (1 row and 1,000 rows per transaction), sync normal and full;
2. end to end: 2,000 ``true`` tasks with 2 and 8 workers vs ``spawn_floor`` and task-spooler;
3. idle submit-to-start latency (client send time to the Started event's time);
4. RSS with 100,000 queued tasks, and Stats latency full vs empty.

Run: ``.venv/bin/python bench/daemon.py [--quick]``. Prints figures and a summary; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchDaemon, Row, cpu_seconds, percentile, rate, summary, verdict
from spawn_floor import spawn_floor
from store_floor import SYNCS, raw_insert_rate

from tasker.events import ended_ids
from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerctl._core import submit_requests

GATE = "while [ ! -e {} ]; do sleep 0.005; done"


@dataclass(frozen=True)
class Sizes:
    """How much work each section does (full run or ``--quick``)."""

    raw_seconds: float
    single_seconds: float
    batches: int
    e2e: int
    latency: int
    memory: int
    stats_calls: int
    drain: int  # jobs in the pre-filled drain, gates included (tsp holds at most ~1,000)


FULL = Sizes(1.0, 2.0, 20, 2000, 200, 100_000, 200, 900)
QUICK = Sizes(0.2, 0.5, 2, 100, 20, 3000, 30, 60)


def spec(*argv: str, shell: bool = False) -> pb.TaskSpec:
    """A task with the client's whole environment, as the CLI sends it."""
    return pb.TaskSpec(argv=list(argv), shell=shell, env=dict(os.environ))


def aio_stub(d: BenchDaemon) -> tuple[grpc.aio.Channel, pb_grpc.TaskerStub]:
    """An asyncio channel and stub to ``d`` (64 MiB messages both ways)."""
    options = [("grpc.max_send_message_length", 64 << 20),
               ("grpc.max_receive_message_length", 64 << 20)]  # fmt: skip
    channel = grpc.aio.insecure_channel(d.target, options=options)
    return channel, pb_grpc.TaskerStub(channel)


class Firehose:
    """Every task's end, as the clients wait (``finished_only`` and ``batch``, as
    ``Client.wait_many`` and ``taskerctl wait`` ask); call ``ready`` before relying on it."""

    def __init__(self, stub: pb_grpc.TaskerStub) -> None:
        request = pb.StreamResultsRequest(finished_only=True, batch=True)
        self.call = stub.StreamResults(request)
        self.events: AsyncIterator[pb.TaskEvent] = self.call.__aiter__()

    async def ready(self, stub: pb_grpc.TaskerStub) -> None:
        """Submit a probe task and read until it finished: the firehose is then subscribed."""
        [probe] = (await stub.Submit(pb.SubmitRequest(tasks=[spec("true")]))).ids
        async for event in self.events:
            if probe in ended_ids(event):
                return

    async def finish_count(self, ids: set[int]) -> float:
        """Read until every task in ``ids`` finished; return the perf_counter time then."""
        left = set(ids)
        async for event in self.events:
            left.difference_update(ended_ids(event))
            if not left:
                break
        return time.perf_counter()

    def close(self) -> None:
        """Cancel the stream."""
        self.call.cancel()


# ---------------------------------------------------------------------------------- 1. accept


async def single_rate(stub: pb_grpc.TaskerStub, one: pb.TaskSpec | None, seconds: float) -> float:
    """Tasks/s of single-task Submits, 64 in flight, during ``seconds``; with ``one`` None,
    calls/s of ``Stats`` the same way (the gRPC round-trip ceiling of this client and machine)."""
    stop = time.perf_counter() + seconds
    done = 0

    async def caller() -> None:
        nonlocal done
        request = pb.SubmitRequest(tasks=[one] if one is not None else [])
        while time.perf_counter() < stop:
            if one is None:
                await stub.Stats(pb.StatsRequest())
            else:
                await stub.Submit(request)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(64)))
    return done / (time.perf_counter() - t0)


async def accept(tmp: Path, sizes: Sizes) -> list[Row]:
    """Accepted tasks/s, single (64 in flight) and batched, vs raw sqlite3, per sync mode."""
    rows: list[Row] = []
    one = spec("true")
    # As taskerctl's batches: the environment once per request, not once per task.
    batch = pb.SubmitRequest(env=dict(os.environ), tasks=[pb.TaskSpec(argv=["true"])] * 1000)
    for sync in SYNCS:
        raw1 = raw_insert_rate(tmp / "raw.db", sync, 1, seconds=sizes.raw_seconds)
        raw1000 = raw_insert_rate(tmp / "raw.db", sync, 1000, seconds=sizes.raw_seconds)
        d = BenchDaemon(tmp / f"accept-{sync}", workers=1, config=f'journal_sync = "{sync}"')
        with d:
            d.start()
            channel, stub = aio_stub(d)
            async with channel:
                await stub.Submit(pb.SubmitRequest(tasks=[spec("sleep", "3600")]))  # holds worker
                single = await single_rate(stub, one, sizes.single_seconds)
                rpc = await single_rate(stub, None, sizes.single_seconds / 2)
                t0 = time.perf_counter()
                for _ in range(sizes.batches):
                    await stub.Submit(batch)
                batched = sizes.batches * 1000 / (time.perf_counter() - t0)
        print(f"accept [{sync:6}] single x64 in flight {rate(single):>12}  "
              f"raw sqlite 1 row/txn {rate(raw1):>12}  ratio {single / raw1:5.2f}; "
              f"Stats x64 (gRPC ceiling) {rate(rpc)}, ratio {single / rpc:4.2f}")  # fmt: skip
        print(f"accept [{sync:6}] batch of 1,000      {rate(batched):>12}  "
              f"raw sqlite 1,000/txn {rate(raw1000):>12}  ratio {batched / raw1000:5.2f}  "
              f"(goal >= 20,000/s: {verdict(batched >= 20_000)})")  # fmt: skip
        rows.append(
            Row(
                f"accept single x64 ({sync})",
                rate(single),
                f"raw 1/txn {rate(raw1)}",
                single / raw1,
            )
        )
        rows.append(Row(f"  same vs Stats x64 ({sync})", rate(single), f"Stats calls {rate(rpc)}",
                        single / rpc))  # fmt: skip
        rows.append(Row(f"accept batch 1k ({sync})", rate(batched),
                        f"raw 1k/txn {rate(raw1000)}", batched / raw1000, ">= 20,000/s",
                        batched >= 20_000))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------- 2. e2e


async def taskerd_e2e(
    tmp: Path, workers: int, n: int, drain_jobs: int
) -> tuple[float, float, float]:
    """(end-to-end tasks/s from first submit, drain tasks/s of a pre-filled queue, the daemon's
    CPU seconds per task over that drain)."""
    d = BenchDaemon(tmp / f"e2e-{workers}", workers=workers)
    with d:
        d.start()
        channel, stub = aio_stub(d)
        async with channel:
            hose = Firehose(stub)
            await hose.ready(stub)
            # Specs as the clients build them: the caller's cwd and environment.
            requests = list(submit_requests(["true"] * n, {}, 500))
            t0 = time.perf_counter()
            ids: set[int] = set()
            waiter = asyncio.ensure_future(_finish_after(hose, ids, requests, stub))
            end = await waiter
            e2e = n / (end - t0)

            # drain: gate every worker on a file, pre-fill the queue, open the gate
            drain_n = drain_jobs - workers
            go = d.dir / "go"
            gates = (await stub.Submit(pb.SubmitRequest(
                tasks=[spec(GATE.format(go), shell=True)] * workers))).ids  # fmt: skip
            while (await stub.Stats(pb.StatsRequest())).running < workers:
                await asyncio.sleep(0.01)
            [fill] = submit_requests(["true"] * drain_n, {}, drain_n)  # as clients build it
            filled = await stub.Submit(fill)
            cpu0 = cpu_seconds(d.pid)
            go.touch()
            t0 = time.perf_counter()
            end = await hose.finish_count({*gates, *filled.ids})
            drain = drain_n / (end - t0)
            cpu = (cpu_seconds(d.pid) - cpu0) / drain_n
            hose.close()
    return e2e, drain, cpu


async def _finish_after(
    hose: Firehose, ids: set[int], requests: list[pb.SubmitRequest], stub: pb_grpc.TaskerStub
) -> float:
    """Submit ``requests`` while counting finished events; the time the last one finished."""
    finished: set[int] = set()
    submitted = asyncio.Event()

    async def submit() -> None:
        for request in requests:
            ids.update((await stub.Submit(request)).ids)
        submitted.set()

    sender = asyncio.ensure_future(submit())
    async for event in hose.events:
        finished.update(ended_ids(event))
        if submitted.is_set() and ids <= finished:
            break
    await sender
    return time.perf_counter()


def tsp_e2e(tmp: Path, tsp: str, slots: int, n: int, drain_jobs: int) -> tuple[float, float]:
    """task-spooler: (one ``tsp true`` call per job, end to end; drain of a pre-filled queue of
    ``drain_jobs - slots`` jobs). Output goes to files, tsp's default. task-spooler holds one
    waiting client process per queued job and refuses more than 1,000 (its MAXCONN)."""
    base = tmp / f"tsp-{slots}"
    base.mkdir()
    env = dict(os.environ, TS_SOCKET=str(base / "sock"), TMPDIR=str(base))

    def ts(*args: str) -> None:
        subprocess.run([tsp, *args], env=env, stdout=subprocess.DEVNULL, check=True)

    def wait_idle() -> float:
        ts("-w")
        while True:
            out = subprocess.run([tsp, "-l"], env=env, capture_output=True, text=True).stdout
            if not any(s in out for s in (" running ", " queued ", " allocating ")):
                return time.perf_counter()
            time.sleep(0.005)

    ts("-S", str(slots))
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            ts("true")
        e2e = n / (wait_idle() - t0)
        ts("-C")  # forget the finished jobs
        go = base / "go"
        for _ in range(slots):
            ts("-B", "sh", "-c", GATE.format(go))
        drain_n = drain_jobs - slots
        try:
            for _ in range(drain_n):
                ts("-B", "true")  # -B: fail rather than block when the queue is full
        finally:
            go.touch()
        t0 = time.perf_counter()
        drain = drain_n / (wait_idle() - t0)
    finally:
        subprocess.run([tsp, "-K"], env=env, stderr=subprocess.DEVNULL, check=False)
    return e2e, drain


async def end_to_end(tmp: Path, sizes: Sizes) -> list[Row]:
    """2,000 ``true`` tasks end to end at 2 and 8 workers, vs the spawn floor and tsp."""
    rows: list[Row] = []
    tsp = shutil.which("tsp")
    n = sizes.e2e
    for workers in (2, 8):
        await spawn_floor(min(n, 200), workers)  # warm up
        floor = await spawn_floor(n, workers)
        e2e, drain, cpu = await taskerd_e2e(tmp, workers, n, sizes.drain)
        ratio = e2e / floor
        print(
            f"e2e [{workers} workers] {n:,} true: taskerd {rate(e2e):>9}  spawn floor "
            f"{rate(floor):>9}  ratio {ratio:4.2f} (goal >= 0.85: {verdict(ratio >= 0.85)})"
        )
        rows.append(
            Row(
                f"e2e {n:,} true (cwd+env), {workers} workers",
                rate(e2e),
                f"spawn floor {rate(floor)}",
                ratio,
                ">= 0.85x floor",
                ratio >= 0.85,
            )
        )
        print(f"  daemon CPU per task over the drain: {cpu * 1e3:.3f} ms (goal <= 0.45 ms)")
        rows.append(Row(f"daemon CPU per true task, drain, {workers} workers",
                        f"{cpu * 1e3:.3f} ms", "", None, "<= 0.45 ms", cpu <= 0.45e-3))  # fmt: skip
        if tsp is None:
            print("  task-spooler: not installed (apt-get install task-spooler)")
            continue
        ts_e2e, ts_drain = tsp_e2e(tmp, tsp, workers, n, sizes.drain)
        drain_n = sizes.drain - workers
        print(f"  vs tsp, one `tsp true` process per job, end to end: taskerd {rate(e2e)}  "
              f"tsp {rate(ts_e2e)}  ratio {e2e / ts_e2e:4.2f} "
              f"(goal > 1: {verdict(e2e > ts_e2e)})")  # fmt: skip
        print(
            f"  drain of a pre-filled queue of {drain_n} (gates opened at t0): "
            f"taskerd {rate(drain)}  tsp {rate(ts_drain)}  ratio {drain / ts_drain:4.2f}"
        )
        rows.append(Row(f"e2e vs tsp, {workers} slots (tsp per-job calls)", rate(e2e),
                        f"tsp {rate(ts_e2e)}", e2e / ts_e2e, "> tsp", e2e > ts_e2e))  # fmt: skip
        rows.append(Row(f"drain {drain_n} pre-filled (cwd+env), {workers} slots", rate(drain),
                        f"tsp {rate(ts_drain)}", drain / ts_drain, ">= 1.3x tsp",
                        drain >= 1.3 * ts_drain))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------- 3. latency


async def latency(tmp: Path, sizes: Sizes) -> list[Row]:
    """Idle submit-to-start: client send time to the task's started_at (daemon clock)."""
    d = BenchDaemon(tmp / "latency", workers=2)
    samples: list[float] = []
    with d:
        d.start()
        channel, stub = aio_stub(d)
        async with channel:
            hose = Firehose(stub)
            await hose.ready(stub)
            request = pb.SubmitRequest(tasks=[spec("true")])
            for _ in range(sizes.latency):
                sent = time.time()
                [task_id] = (await stub.Submit(request)).ids
                started = 0.0
                async for event in hose.events:  # finished events only
                    if event.task_id == task_id:
                        started = event.finished.task.started_at.ToNanoseconds() / 1e9
                        break
                samples.append(started - sent)
            hose.close()
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    print(f"idle submit-to-start ({len(samples)} sequential): p50 {p50 * 1e3:.2f} ms  "
          f"p99 {p99 * 1e3:.2f} ms  (goal p50 < 5 ms: {verdict(p50 < 0.005)})")  # fmt: skip
    return [
        Row("submit-to-start p50 (idle)", f"{p50 * 1e3:.2f} ms", "", None, "< 5 ms", p50 < 0.005),
        Row("submit-to-start p99 (idle)", f"{p99 * 1e3:.2f} ms", "", None),
    ]


# ---------------------------------------------------------------------------------- 4. memory


async def stats_p50(stub: pb_grpc.TaskerStub, calls: int) -> float:
    """Median wall time of ``calls`` sequential Stats calls."""
    times: list[float] = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await stub.Stats(pb.StatsRequest())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def memory(tmp: Path, sizes: Sizes) -> list[Row]:
    """RSS and Stats latency with ``sizes.memory`` queued tasks, vs an empty queue."""
    n = sizes.memory
    d = BenchDaemon(tmp / "memory", workers=1, max_queue=n + 10)
    with d:
        d.start()
        channel, stub = aio_stub(d)
        async with channel:
            await stub.Submit(pb.SubmitRequest(tasks=[spec("sleep", "3600")]))
            while (await stub.Stats(pb.StatsRequest())).running < 1:
                await asyncio.sleep(0.01)
            await stats_p50(stub, 20)  # warm up
            empty = await stats_p50(stub, sizes.stats_calls)
            rss_empty = d.rss_kib()
            batch = pb.SubmitRequest(tasks=[spec("true")] * 1000)
            t0 = time.perf_counter()
            for _ in range(n // 1000):
                await stub.Submit(batch)
            fill = n / (time.perf_counter() - t0)
            queued = (await stub.Stats(pb.StatsRequest())).queued
            full = await stats_p50(stub, sizes.stats_calls)
            rss_full = d.rss_kib()
        stop = d.stop()
    per_task = (rss_full - rss_empty) * 1024 / max(1, queued)
    ratio = full / empty
    ok = ratio <= 1.5
    print(f"memory: RSS {rss_empty / 1024:.0f} MiB empty, {rss_full / 1024:.0f} MiB with "
          f"{queued:,} queued = {per_task:,.0f} B/task (filled at {rate(fill)}; STOP took "
          f"{stop:.1f} s)")  # fmt: skip
    print(
        f"Stats p50: {full * 1e3:.2f} ms at {queued:,} queued vs {empty * 1e3:.2f} ms empty, "
        f"ratio {ratio:.2f} (goal independent of queue size, <= 1.5x: {verdict(ok)})"
    )
    return [
        Row(f"RSS with {queued:,} queued", f"{rss_full / 1024:.0f} MiB",
            f"empty {rss_empty / 1024:.0f} MiB", rss_full / rss_empty,
            f"{per_task:,.0f} B/task"),
        Row(f"Stats p50 at {queued:,} queued", f"{full * 1e3:.2f} ms",
            f"empty {empty * 1e3:.2f} ms", ratio, "<= 1.5x", ok),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- main


async def run(sizes: Sizes) -> None:
    """Every section, in order, then the summary."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as d:
        tmp = Path(d)
        for section in (accept, end_to_end, latency, memory):
            started = time.perf_counter()
            rows += await section(tmp, sizes)
            print(f"  ({section.__name__}: {time.perf_counter() - started:.1f} s)", flush=True)
    summary(rows)


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    opts = parser.parse_args()
    t0 = time.perf_counter()
    asyncio.run(run(QUICK if opts.quick else FULL))
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
