"""Observability: the :class:`MetricsCollector` protocol, the built-in recorder and snapshots."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from taskerd.engine.errors import TaskCancelled, TaskTimeout

if TYPE_CHECKING:
    from taskerd.engine.config import Priority

RATE_BUCKET = 0.5  # seconds per rate bucket
RATE_BUCKETS = 10  # rates are measured over the last ~5 s
RESERVOIR = 2048  # recent samples kept for execution and wait statistics


class MetricsCollector(Protocol):
    """Receives task lifecycle events (on the loop thread; keep it cheap).

    Each task that arrives ends with exactly one ``record_completion`` or ``record_failure``;
    ``record_retry`` is called once per re-queue, before the task can start again.
    """

    def record_arrival(self, task_id: int) -> None: ...
    def record_start(self, task_id: int, wait: float) -> None: ...
    def record_completion(self, task_id: int, duration: float) -> None: ...
    def record_failure(self, task_id: int, error: BaseException, duration: float) -> None: ...
    def record_retry(self, task_id: int, error: BaseException) -> None: ...
    def record_rejection(self) -> None: ...


@dataclass
class Stats:
    """An O(1) snapshot of workers and queue occupancy."""

    base_workers: int
    max_workers: int
    active_workers: int
    burst_workers: int
    idle_workers: int
    queued_by_priority: dict[Priority, int]
    queued: int
    running: int
    available_resources: int
    queue_capacity: int | None
    queue_usage: float


@dataclass
class Metrics:
    """Rates (per second, recent window), execution/wait times (seconds) and totals.

    ``failed`` counts every unsuccessful end except cancellations (timeouts included);
    ``success_rate`` and ``failure_rate`` are over ``completed + failed``.
    """

    arrival_rate: float
    completion_rate: float
    exec_avg: float
    exec_min: float
    exec_max: float
    exec_p50: float
    exec_p95: float
    exec_p99: float
    wait_avg: float
    completed: int
    failed: int
    retried: int
    timed_out: int
    cancelled: int
    rejected: int
    success_rate: float
    failure_rate: float


class _Rate:
    """Event counts in a ring of time buckets."""

    __slots__ = ("_buckets", "_current", "_start")

    def __init__(self) -> None:
        self._buckets = [0] * RATE_BUCKETS
        self._start = time.monotonic()
        self._current = int(self._start / RATE_BUCKET)

    def _advance(self, now: float) -> None:
        index = int(now / RATE_BUCKET)
        steps = index - self._current
        if steps > 0:
            for i in range(1, min(steps, RATE_BUCKETS) + 1):
                self._buckets[(self._current + i) % RATE_BUCKETS] = 0
            self._current = index

    def add(self) -> None:
        now = time.monotonic()
        if int(now / RATE_BUCKET) != self._current:
            self._advance(now)
        self._buckets[self._current % RATE_BUCKETS] += 1

    def per_second(self) -> float:
        now = time.monotonic()
        self._advance(now)
        span = (RATE_BUCKETS - 1) * RATE_BUCKET + (now - self._current * RATE_BUCKET)
        span = min(span, now - self._start)
        return sum(self._buckets) / span if span > 0 else 0.0


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


class MetricsRecorder:
    """The built-in collector behind :meth:`TaskManager.metrics`."""

    def __init__(self) -> None:
        self._arrivals = _Rate()
        self._completions = _Rate()
        self._exec: deque[float] = deque(maxlen=RESERVOIR)
        self._wait: deque[float] = deque(maxlen=RESERVOIR)
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.timed_out = 0
        self.cancelled = 0
        self.rejected = 0

    def record_arrival(self, task_id: int) -> None:
        """Count an arrival."""
        self._arrivals.add()

    def record_start(self, task_id: int, wait: float) -> None:
        """Sample the queue wait."""
        self._wait.append(wait)

    def record_completion(self, task_id: int, duration: float) -> None:
        """Count a success and sample its duration."""
        self.completed += 1
        self._completions.add()
        self._exec.append(duration)

    def record_failure(self, task_id: int, error: BaseException, duration: float) -> None:
        """Count a failure, timeout or cancellation."""
        self._completions.add()
        if isinstance(error, TaskCancelled):
            self.cancelled += 1
            return
        self.failed += 1
        if isinstance(error, TaskTimeout):
            self.timed_out += 1
        if duration > 0:
            self._exec.append(duration)

    def record_retry(self, task_id: int, error: BaseException) -> None:
        """Count a re-queue."""
        self.retried += 1

    def record_rejection(self) -> None:
        """Count a refused submission."""
        self.rejected += 1

    def snapshot(self) -> Metrics:
        """Compute a :class:`Metrics` from the counters and reservoirs."""
        ordered = sorted(self._exec)
        waits = list(self._wait)
        ended = self.completed + self.failed
        return Metrics(
            arrival_rate=self._arrivals.per_second(),
            completion_rate=self._completions.per_second(),
            exec_avg=sum(ordered) / len(ordered) if ordered else 0.0,
            exec_min=ordered[0] if ordered else 0.0,
            exec_max=ordered[-1] if ordered else 0.0,
            exec_p50=_percentile(ordered, 0.50),
            exec_p95=_percentile(ordered, 0.95),
            exec_p99=_percentile(ordered, 0.99),
            wait_avg=sum(waits) / len(waits) if waits else 0.0,
            completed=self.completed,
            failed=self.failed,
            retried=self.retried,
            timed_out=self.timed_out,
            cancelled=self.cancelled,
            rejected=self.rejected,
            success_rate=self.completed / ended if ended else 0.0,
            failure_rate=self.failed / ended if ended else 0.0,
        )
