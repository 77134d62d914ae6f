"""Prometheus ``/metrics`` (``metrics_address``), in the text format of ``prometheus-client``.

Almost everything is read at scrape time from what the daemon already counts (the daemon's and
each group's :class:`~taskerd.groups.Counters`, each group's ``engine.stats()``, O(groups)): a
custom collector in a registry of its own, so the task path pays nothing for it. Only three
histograms take observations as things happen, each into plain bucket counters with one writer
(no lock): a task's wait and run times on the loop thread as its end is announced
(:meth:`Metrics.ended`), and each journal COMMIT's duration on the journal thread
(``Store.on_commit``).

The endpoint is an asyncio server on the daemon's loop (no thread): ``GET /metrics`` answers
``generate_latest`` of the registry, anything else 404 (405 for other methods). Labels are
bounded: state, priority, group, reason and worker kind; never a task id or a task's labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import platform
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from tasker.addresses import split_address
from tasker.v1 import tasker_pb2 as pb
from taskerd import engine
from taskerd.core import _version

if TYPE_CHECKING:
    from taskerd.attempt import Ending
    from taskerd.core import Core
    from taskerd.live import Live

__all__ = [
    "COMMIT_BUCKETS",
    "TASK_BUCKETS",
    "Buckets",
    "Metrics",
    "MetricsServer",
    "parse_address",
    "serve",
]

log = logging.getLogger("taskerd.prom")

#: Upper bounds (seconds) of the task wait and run histograms: from a ``true`` to hours.
TASK_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0, 1800.0, 3600.0, 10800.0,
)  # fmt: skip
#: Upper bounds (seconds) of the journal commit histogram.
COMMIT_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
#: Rejection reasons of ``tasker_submit_rejected_total``.
REASONS = ("queue_full", "shutting_down", "journal")
#: The largest request head (request line and headers) the endpoint reads.
MAX_HEAD = 16 << 10
#: How long a connection may stay idle (or take to send a request head) before it is closed.
IDLE_TIMEOUT = 30.0
#: Connections served at once; more are answered 503 and closed.
MAX_CONNECTIONS = 32

_STATES = (
    ("succeeded", pb.TASK_STATE_SUCCEEDED),
    ("failed", pb.TASK_STATE_FAILED),
    ("timed_out", pb.TASK_STATE_TIMED_OUT),
    ("cancelled", pb.TASK_STATE_CANCELLED),
    ("lost", pb.TASK_STATE_LOST),
)
_PRIORITIES = tuple((p.name.lower(), p) for p in engine.Priority)


class Buckets:
    """A histogram's counts, observed by one thread without a lock and read at scrape time.

    ``counts[i]`` holds the observations in ``(bounds[i-1], bounds[i]]`` (the last one: above
    every bound); they are made cumulative only when scraped. A scrape on another thread than
    the observer's copies the counts in one step, so ``_count`` always equals the ``+Inf``
    bucket; ``_sum`` may be one observation ahead or behind.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bounds must be increasing")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (seconds)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The histogram as a metric family, cumulative buckets and ``+Inf``."""
        counts = self.counts.copy()
        total = self.sum
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
            running += n
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), running))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


class Metrics:
    """The daemon's Prometheus metrics: a registry of their own over ``core``.

    Made, it attaches to ``core`` (``core.prom``: the end of every task is observed, and
    ``shutting_down`` rejections counted), to its journal (``store.on_commit``) and to the
    journal writes of submissions (``journal`` rejections); :meth:`close` detaches it.
    """

    def __init__(self, core: Core, *, process: bool = True) -> None:
        if core.prom is not None:
            raise RuntimeError("this core already has Prometheus metrics")
        self.core = core
        self.wait = Buckets(TASK_BUCKETS)
        self.run = Buckets(TASK_BUCKETS)
        self.commit = Buckets(COMMIT_BUCKETS)
        #: Submitted tasks refused, by reason; ``queue_full`` is the core's own count.
        self.refused = {"shutting_down": 0, "journal": 0}
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        if process:  # process_*: CPU, memory, open files (read from /proc at scrape time)
            ProcessCollector(registry=self.registry)
        self._attach()

    def _attach(self) -> None:
        core = self.core
        core.prom = self
        core.store.on_commit = self.commit.observe

    def close(self) -> None:
        """Detach from the core and its journal. Idempotent."""
        core = self.core
        if core.prom is self:
            core.prom = None
        if core.store.on_commit == self.commit.observe:
            core.store.on_commit = None

    # ---- observations (the task path: plain counters, no lock) -----------------------------

    def ended(self, live: Live, ending: Ending) -> None:
        """A task's end was announced: its wait (queued to started) and run (started to ended)
        times, if it ran (its last attempt's start)."""
        started = live.started_at
        if started is None:
            return
        wait = started - live.queued_at
        self.wait.observe(wait if wait > 0.0 else 0.0)
        run = ending.now - started
        self.run.observe(run if run > 0.0 else 0.0)

    def rejected(self, reason: str, tasks: int) -> None:
        """Count ``tasks`` submitted tasks refused for ``reason`` (``shutting_down``)."""
        self.refused[reason] += tasks

    # ---- scrape ----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The metrics in the Prometheus text format (0.0.4)."""
        return generate_latest(self.registry)

    def families(self) -> Iterator[Metric]:
        """Every tasker_* family, as it is now (O(groups))."""
        core = self.core
        groups = list(core.groups.values())
        total = CounterMetricFamily(
            "tasker_tasks", "Tasks that reached each terminal state since the daemon started.",
            labels=["state", "group"],
        )  # fmt: skip
        retried = CounterMetricFamily(
            "tasker_tasks_retried", "Failed attempts run again (TaskSpec.retries).",
            labels=["group"],
        )  # fmt: skip
        queued = GaugeMetricFamily(
            "tasker_tasks_queued", "Tasks in the queue, waiting for a worker.",
            labels=["priority", "group"],
        )  # fmt: skip
        running = GaugeMetricFamily(
            "tasker_tasks_running", "Tasks running (not paused).", labels=["group"]
        )
        paused = GaugeMetricFamily("tasker_tasks_paused", "Running tasks paused.", labels=["group"])
        held = GaugeMetricFamily(
            "tasker_tasks_held", "Tasks held out of the queue: stashed, waiting for dependencies, "
            "or scheduled for later.", labels=["state", "group"],
        )  # fmt: skip
        capacity = GaugeMetricFamily(
            "tasker_queue_capacity", "The bound on each group's queue (max_queue).",
            labels=["group"],
        )  # fmt: skip
        workers = GaugeMetricFamily(
            "tasker_workers", "Workers: base slots, live burst workers, live idle workers, and "
            "live workers in all (active).", labels=["kind", "group"],
        )  # fmt: skip
        ceiling = GaugeMetricFamily(
            "tasker_workers_max", "The burst ceiling of each group (max_parallel).",
            labels=["group"],
        )  # fmt: skip
        group_paused = GaugeMetricFamily(
            "tasker_group_paused", "1 while the group is paused.", labels=["group"]
        )
        for group in groups:
            name = group.name
            c = group.counters
            s = group.engine.stats()
            by_state = c.by_state
            for label, state in _STATES:
                total.add_metric([label, name], by_state.get(state, 0))
            retried.add_metric([name], c.retried)
            by_priority = s.queued_by_priority
            for label, priority in _PRIORITIES:
                queued.add_metric([label, name], by_priority.get(priority, 0))
            running.add_metric([name], c.running)
            paused.add_metric([name], c.paused)
            held.add_metric(["stashed", name], c.stashed)
            held.add_metric(["waiting", name], c.waiting)
            held.add_metric(["scheduled", name], c.scheduled)
            capacity.add_metric([name], group.max_queue)
            workers.add_metric(["base", name], s.base_workers)
            workers.add_metric(["burst", name], s.burst_workers)
            workers.add_metric(["idle", name], s.idle_workers)
            workers.add_metric(["active", name], s.active_workers)
            ceiling.add_metric([name], s.max_workers)
            group_paused.add_metric([name], 1.0 if group.paused else 0.0)
        yield from (total, retried, queued, running, paused, held, capacity, workers, ceiling,
                    group_paused)  # fmt: skip
        rejected = CounterMetricFamily(
            "tasker_submit_rejected", "Submitted tasks refused: the queue was full, the daemon "
            "was shutting down, or the journal failed.", labels=["reason"],
        )  # fmt: skip
        rejected.add_metric(["queue_full"], core.counters.rejected)
        for reason in ("shutting_down", "journal"):
            rejected.add_metric([reason], self.refused[reason])
        yield rejected
        yield self.wait.family(
            "tasker_task_wait_seconds", "From submission (queued_at) to the last attempt's start, "
            "of each task that ran, observed as it ends (a stashed, waiting or scheduled task's "
            "hold counts)."
        )  # fmt: skip
        yield self.run.family(
            "tasker_task_run_seconds", "From started (the last attempt's start) to ended, of "
            "each task that ran."
        )  # fmt: skip
        yield self.commit.family(
            "tasker_journal_commit_seconds", "Time in each journal COMMIT (group commit: one "
            "for many writes)."
        )  # fmt: skip
        info = GaugeMetricFamily(
            "tasker_build_info", "Always 1: the version of taskerd and of Python.",
            labels=["version", "python"],
        )  # fmt: skip
        info.add_metric([_version(), platform.python_version()], 1.0)
        yield info
        shutting = GaugeMetricFamily(
            "tasker_shutting_down", "1 once a shutdown has begun (no new task is accepted)."
        )
        shutting.add_metric([], 1.0 if core.shutdown_mode is not None else 0.0)
        yield shutting
        if core.dask is not None:  # a group runs on Dask: its workers (a few, named)
            nodes = GaugeMetricFamily(
                "tasker_cluster_slots", "Slots of each worker of the Dask cluster.",
                labels=["node"],
            )  # fmt: skip
            for node in core.dask.nodes:
                nodes.add_metric([node.name], float(node.slots))
            yield nodes


class _Collector:
    """The registry's view of :class:`Metrics` (``collect`` at each scrape)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()


# ---- the endpoint ------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str | None, int]:
    """``host:port`` (``[v6]:port``; an empty host: every interface, as None) as (host, port).

    ValueError with a one-line reason if it is not one.
    """
    try:
        return split_address(address)
    except ValueError as exc:
        raise ValueError(f"metrics_address: {exc}") from None


class MetricsServer:
    """The ``/metrics`` endpoint on the running loop. Make it with :func:`serve`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on (the first socket: the port chosen for port 0)."""
        assert self.server is not None and self.server.sockets
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self, host: str | None, port: int) -> None:
        """Listen on ``host:port``; OSError if it cannot."""
        self.server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_HEAD, reuse_address=True
        )

    async def close(self) -> None:
        """Stop listening, end the open connections, detach the metrics. Idempotent."""
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self.metrics.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                await _answer(writer, 503, b"too many connections\n", keep=False)
                return
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.LimitOverrunError:
            with contextlib.suppress(ConnectionError):
                await _answer(writer, 431, b"request head too large\n", keep=False)
        except Exception:  # a bug: this connection ends, the daemon goes on
            log.exception("metrics endpoint: error while answering")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for another."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise
            return False  # closed between requests
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _answer(writer, 400, b"bad request\n", keep=False)
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep = connection == "keep-alive" if version == "HTTP/1.0" else connection != "close"
        if headers.get("content-length", "0").strip() not in ("", "0") or (
            "transfer-encoding" in headers
        ):  # a GET has no body: this one is not for us
            await _answer(writer, 400, b"a request body is not expected\n", keep=False)
            return False
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await _answer(writer, 405, b"method not allowed\n", keep, ("Allow", "GET, HEAD"))
        elif path != "/metrics":
            await _answer(writer, 404, b"not found: the metrics are at /metrics\n", keep)
        else:
            body = self.metrics.render()
            await _answer(writer, 200, body, keep, ("Content-Type", CONTENT_TYPE_PLAIN_0_0_4),
                          head_only=method == "HEAD")  # fmt: skip
        return keep


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}  # fmt: skip


async def _answer(
    writer: asyncio.StreamWriter, status: int, body: bytes, keep: bool,
    *headers: tuple[str, str], head_only: bool = False,
) -> None:  # fmt: skip
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Length: {len(body)}"]
    if not any(name == "Content-Type" for name, _ in headers):
        lines.append("Content-Type: text/plain; charset=utf-8")
    lines += (f"{name}: {value}" for name, value in headers)
    lines.append("Connection: keep-alive" if keep else "Connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()


async def serve(core: Core, address: str, *, process: bool = True) -> MetricsServer:
    """Serve ``core``'s metrics at ``http://address/metrics`` on the running loop.

    ValueError for a malformed address, OSError if it cannot listen (nothing stays attached
    then). ``await server.close()`` stops it.
    """
    host, port = parse_address(address)
    metrics = Metrics(core, process=process)
    server = MetricsServer(metrics)
    try:
        await server.start(host, port)
    except BaseException:
        metrics.close()
        raise
    return server
