"""Prometheus scrape benchmarks (issue 13): what ``/metrics`` costs the task path, each figure
beside a baseline measured in the same run.

1. On a daemon with 2 workers and ``metrics_address`` set: the drain rate of 3,000 ``true`` tasks
   (``--quick``: 100) pre-filled behind two gate tasks (as ``bench/control.py`` does), with a
   scraper GETting ``/metrics`` every 100 ms from the gates' submission to the last end, vs
   the same drain with no scraper, on the same daemon, after one unrecorded drain, in the order
   ABBA BAAB..., ten reps (``--quick``: one): the rates are the medians of each side, the ratio
   the median of each rep's scraped/not-scraped pair (adjacent drains: the machine's drift
   cancels); goal >= 0.95x. On a 2-CPU machine two drains with no scraper at all differ by up
   to 5-8% (medians of eight), hence the pairing and the reps. The scrapes' own latency during
   the drains is shown.
2. One daemon with 1 worker held by a ``sleep 3600`` task and 100,000 ``true`` tasks queued
   behind it (``--quick``: 5,000): the scrape latency p50 (sequential GETs on one keep-alive
   connection) vs the same at 0 queued before the fill, and the daemon CPU per scrape; the
   metrics are read at scrape time in O(groups), so the queue's size should not show.
3. In this process: what a task's end pays for the wait and run histograms (two observations
   into plain bucket counters), vs the same into ``prometheus_client`` Histograms.

The endpoint is the daemon's (``metrics_address``, wired in ``taskerd.server``): if the daemon
does not answer on it, the scrape rows say "skipped" and why, and the run still exits 0.

Run: ``.venv/bin/python bench/scrape.py [--quick]``. Prints figures and a summary; asserts
nothing about speed (only that every task ran and each scrape parsed).
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BenchDaemon,
    Row,
    cpu_seconds,
    percentile,
    rate,
    sized_main,
    timed_sections,
    verdict,
)
from control import batches, drain, expect, ms, submit, us
from daemon import Firehose, aio_stub

from tasker.api import METADATA
from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerctl import _core as core
from taskerd import prom

DRAIN_GOAL = 0.95
SCRAPE_EVERY = 0.1  # seconds between the scraper's GETs
HOLD = ["sleep", "3600"]
#: How long the daemon may take, once its socket answers, to answer on /metrics.
ENDPOINT_WAIT = 3.0
WIRING = "metrics_address not served (taskerd/server.py wiring?)"


@dataclass(frozen=True)
class Sizes:
    """How much work each section does (full run or ``--quick``)."""

    drain: int  # ``true`` tasks per drain
    drain_reps: int  # drains per side
    queued: int  # tasks queued behind the held worker (section 2)
    scrapes: int  # sequential scrapes per point (section 2)


FULL = Sizes(3000, 10, 100_000, 200)
QUICK = Sizes(100, 1, 5_000, 20)


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    """GET /metrics on one keep-alive connection, as Prometheus does; each answer is parsed
    (outside the timing) to check it is the text format."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.size = 0

    def once(self) -> float:
        """Seconds of one GET (request sent to body read)."""
        t0 = time.perf_counter()
        self.conn.request("GET", "/metrics")
        response = self.conn.getresponse()
        body = response.read()
        took = time.perf_counter() - t0
        if response.status != 200:
            raise RuntimeError(f"/metrics answered {response.status}: {body[:200]!r}")
        self.size = len(body)
        return took

    def check(self) -> dict[str, float]:
        """One scrape, parsed: ``tasker_tasks_queued`` summed, and the number of families."""
        self.conn.request("GET", "/metrics")
        text = self.conn.getresponse().read().decode()
        families = list(text_string_to_metric_families(text))
        queued = sum(
            s.value for f in families if f.name == "tasker_tasks_queued" for s in f.samples
        )
        return {"queued": queued, "families": len(families)}

    def close(self) -> None:
        self.conn.close()


def endpoint(port: int) -> Scraper | None:
    """A scraper of the daemon's /metrics, or None if nothing answers there."""
    deadline = time.monotonic() + ENDPOINT_WAIT
    while True:
        scraper = Scraper(port)
        try:
            scraper.once()
            return scraper
        except (OSError, http.client.HTTPException):
            scraper.close()
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


class Background:
    """A thread scraping every ``SCRAPE_EVERY`` seconds until stopped; its latencies."""

    def __init__(self, port: int) -> None:
        self.scraper = Scraper(port)
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t = self.scraper.once()
                self.times.append(t)
                self._stop.wait(max(0.0, SCRAPE_EVERY - t))
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.scraper.close()
        if self.error is not None:
            raise RuntimeError(f"the scraper failed: {self.error!r}")


# ---------------------------------------------------------------------------------- 1. drain


async def drains(tmp: Path, sizes: Sizes) -> list[Row]:
    """The drain with the scraper vs without, on one daemon, alternated."""
    port = free_port()
    d = BenchDaemon(tmp / "drain", workers=2, config=f'metrics_address = "127.0.0.1:{port}"')
    figure = f"drain {sizes.drain:,} true, scraped every 100 ms"
    got: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    latencies: list[float] = []
    with d:
        d.start()
        probe = endpoint(port)
        if probe is None:
            print(f"drain: SKIPPED: nothing answers on http://127.0.0.1:{port}/metrics: {WIRING}")
            return [Row(figure, "skipped", WIRING, None, f">= {DRAIN_GOAL}x not scraped")]
        probe.close()
        channel, stub = aio_stub(d)
        async with channel:
            hose = Firehose(stub)
            await hose.ready(stub)
            await drain(d, stub, hose, "default", sizes.drain, 0)  # warm-up, not counted
            run = 0
            for rep in range(sizes.drain_reps):
                order = (False, True) if rep % 4 in (0, 3) else (True, False)  # ABBA BAAB
                for scraped in order:
                    run += 1
                    if scraped:
                        with Background(port) as bg:
                            got[True].append(await drain(d, stub, hose, "default", sizes.drain,
                                                         run))  # fmt: skip
                        latencies += bg.times
                    else:
                        got[False].append(await drain(d, stub, hose, "default", sizes.drain, run))
            hose.close()
    (base, base_cpu), (mine, mine_cpu) = (
        (statistics.median(r for r, _ in got[s]), statistics.median(c for _, c in got[s]))
        for s in (False, True)
    )
    # Each rep's two drains ran next to each other: their ratio cancels the machine's drift.
    ratio = statistics.median(on / off for (on, _), (off, _) in zip(got[True], got[False],
                                                                     strict=True))  # fmt: skip
    every = {s: ", ".join(rate(r) for r, _ in got[s]) for s in got}
    p50 = statistics.median(latencies)
    print(f"drain {sizes.drain:,} pre-filled true, 2 workers, {sizes.drain_reps} reps, medians: "
          f"scraped every {SCRAPE_EVERY * 1e3:.0f} ms {rate(mine)} ({every[True]}), daemon CPU "
          f"{mine_cpu * 1e3:.3f} ms/task; not scraped {rate(base)} ({every[False]}), "
          f"{base_cpu * 1e3:.3f} ms/task; ratio (median of each rep's pair) {ratio:.2f} "
          f"(goal >= {DRAIN_GOAL}x: {verdict(ratio >= DRAIN_GOAL)}); {len(latencies)} scrapes "
          f"during the drains, p50 "
          f"{ms(p50)}, max {ms(max(latencies))}")  # fmt: skip
    return [
        Row(figure, rate(mine), f"not scraped {rate(base)}", ratio, f">= {DRAIN_GOAL}x",
            ratio >= DRAIN_GOAL),
        Row("  daemon CPU per task, scraped drain", f"{mine_cpu * 1e3:.3f} ms",
            f"not scraped {base_cpu * 1e3:.3f} ms", mine_cpu / base_cpu),
        Row("  scrape p50 during the drains", ms(p50), f"{len(latencies)} scrapes", None),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- 2. queued


def scrape_times(scraper: Scraper, n: int) -> list[float]:
    """Seconds of ``n`` sequential scrapes (after 5 unrecorded ones)."""
    for _ in range(5):
        scraper.once()
    return [scraper.once() for _ in range(n)]


def queued(tmp: Path, sizes: Sizes) -> list[Row]:
    """Scrape latency at 0 and at ``sizes.queued`` queued tasks, and CPU per scrape."""
    port = free_port()
    n = sizes.queued
    figure = f"scrape p50, {n:,} queued"
    d = BenchDaemon(tmp / "queued", workers=1, max_queue=n + 100,
                    config=f'metrics_address = "127.0.0.1:{port}"')  # fmt: skip
    with d:
        d.start()
        scraper = endpoint(port)
        if scraper is None:
            print(f"queued: SKIPPED: nothing answers on http://127.0.0.1:{port}/metrics: {WIRING}")
            return [Row(figure, "skipped", WIRING, None)]
        chan = grpc.insecure_channel(d.target, options=list(core.CHANNEL_OPTIONS))
        try:
            stub = pb_grpc.TaskerStub(chan)
            [hold] = core.submit_requests([HOLD], {}, 1)
            submit(stub, hold)
            empty = scrape_times(scraper, sizes.scrapes)
            t0 = time.perf_counter()
            for request in batches(n, {}):
                submit(stub, request)
            fill = time.perf_counter() - t0
            stats = stub.Stats(pb.StatsRequest(), timeout=30, metadata=METADATA)
            expect("queued", stats.queued, n)
            seen = scraper.check()
            expect("tasker_tasks_queued in the scrape", int(seen["queued"]), n)
            print(f"fill: {n:,} tasks queued behind 1 held worker in {fill:.1f} s = "
                  f"{rate(n / fill)}", flush=True)  # fmt: skip
            cpu0 = cpu_seconds(d.pid)
            full = scrape_times(scraper, sizes.scrapes)
            cpu = (cpu_seconds(d.pid) - cpu0) / (sizes.scrapes + 5)
            size = scraper.size
        finally:
            scraper.close()
            chan.close()
    p50, e50 = statistics.median(full), statistics.median(empty)
    print(f"scrape ({sizes.scrapes} sequential GETs, one connection, {size:,} bytes, "
          f"{int(seen['families'])} families): at {n:,} queued p50 {ms(p50)} p99 "
          f"{ms(percentile(full, 0.99))}, daemon CPU {ms(cpu)} per scrape; at 0 queued p50 "
          f"{ms(e50)} p99 {ms(percentile(empty, 0.99))}")  # fmt: skip
    return [
        Row(figure, ms(p50), f"0 queued {ms(e50)}", p50 / e50),
        Row("  daemon CPU per scrape, queued", ms(cpu), f"{size:,} bytes a scrape", None),
    ]


# ---------------------------------------------------------------------------------- 3. observe


def observe_cost() -> list[Row]:
    """What a task's end pays for the histograms (in this process, the daemon's code): the
    two observations of ``Metrics.ended``, vs the same into ``prometheus_client`` Histograms
    (which take a lock each)."""
    wait, run = prom.Buckets(prom.TASK_BUCKETS), prom.Buckets(prom.TASK_BUCKETS)
    registry = CollectorRegistry()
    their_wait = Histogram("w_seconds", "w", buckets=prom.TASK_BUCKETS, registry=registry)
    their_run = Histogram("r_seconds", "r", buckets=prom.TASK_BUCKETS, registry=registry)
    n = 200_000
    values = [(i % 997) / 50.0 for i in range(n)]

    def ours() -> None:
        for v in values:
            wait.observe(v)
            run.observe(v)

    def theirs() -> None:
        for v in values:
            their_wait.observe(v)
            their_run.observe(v)

    mine = min(timeit.repeat(ours, number=1, repeat=3)) / n
    base = min(timeit.repeat(theirs, number=1, repeat=3)) / n
    print(f"histogram observations per task end (wait + run): {us(mine)} (prometheus_client "
          f"Histogram.observe x2: {us(base)})")  # fmt: skip
    return [Row("observe wait+run per task end", us(mine), f"prometheus_client {us(base)}",
                mine / base)]  # fmt: skip


# ---------------------------------------------------------------------------------- main


def run(sizes: Sizes) -> list[Row]:
    """Every section, in order; the summary rows."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as d:
        tmp = Path(d)
        sections: Sequence[tuple[str, Callable[[], list[Row]]]] = (
            ("drain", lambda: asyncio.run(drains(tmp, sizes))),
            ("queued", lambda: queued(tmp, sizes)),
            ("observe", observe_cost),
        )
        rows += timed_sections(sections)
    return rows


def main() -> None:
    """Command-line entry."""
    sized_main(__doc__, run, FULL, QUICK, "small sizes, for a smoke test")


if __name__ == "__main__":
    main()
