"""Observability: the :class:`MetricsCollector` protocol, the built-in recorder and snapshots."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from taskerd.engine.errors import TaskCancelled, TaskTimeout

if TYPE_CHECKING:
    from taskerd.engine.config import Priority

RATE_WINDOW = 5.0  # rates are measured over roughly the last 5 s
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
    """An O(1) snapshot of workers and queue occupancy.

    ``arrival_rate`` / ``drain_rate``: tasks/s submitted / finished over the scaler's last
    ``burst_interval`` (the rates bursting decided on). ``burst_workers`` counts live burst
    workers, including any finishing a last task before retiring.
    """

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
    arrival_rate: float
    drain_rate: float


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


class _Rates:
    """Arrival and end rates from counter samples taken by the manager's periodic tick."""

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int]] = deque([(time.monotonic(), 0, 0)])

    def sample(self, now: float, arrived: int, ended: int) -> None:
        self._samples.append((now, arrived, ended))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()

    def per_second(self, now: float, arrived: int, ended: int) -> tuple[float, float]:
        then, arrived0, ended0 = self._samples[0]
        span = now - then
        if span <= 0:
            return 0.0, 0.0
        return (arrived - arrived0) / span, (ended - ended0) / span


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


class MetricsRecorder:
    """The built-in collector behind :meth:`TaskManager.metrics`."""

    def __init__(self) -> None:
        self._rates = _Rates()
        self.arrived = 0
        self.ended = 0
        self._exec: deque[float] = deque(maxlen=RESERVOIR)
        self._wait: deque[float] = deque(maxlen=RESERVOIR)
        self.completed = 0
        self.failed = 0
        self.retried = 0
        self.timed_out = 0
        self.cancelled = 0
        self.rejected = 0
        self.exec_total = 0.0  # seconds of every timed run, for the mean task duration
        self.exec_count = 0

    def record_arrival(self, task_id: int) -> None:
        """Count an arrival."""
        self.arrived += 1

    def record_start(self, task_id: int, wait: float) -> None:
        """Sample the queue wait."""
        self._wait.append(wait)

    def record_completion(self, task_id: int, duration: float) -> None:
        """Count a success and sample its duration."""
        self.completed += 1
        self.ended += 1
        self._exec.append(duration)
        self.exec_total += duration
        self.exec_count += 1

    def record_failure(self, task_id: int, error: BaseException, duration: float) -> None:
        """Count a failure, timeout or cancellation."""
        self.ended += 1
        if isinstance(error, TaskCancelled):
            self.cancelled += 1
            return
        self.failed += 1
        if isinstance(error, TaskTimeout):
            self.timed_out += 1
        if duration > 0:
            self._exec.append(duration)
            self.exec_total += duration
            self.exec_count += 1

    def record_retry(self, task_id: int, error: BaseException) -> None:
        """Count a re-queue."""
        self.retried += 1

    def record_rejection(self) -> None:
        """Count a refused submission."""
        self.rejected += 1

    def sample(self) -> None:
        """Take a rate sample (called periodically by the manager)."""
        self._rates.sample(time.monotonic(), self.arrived, self.ended)

    def snapshot(self) -> Metrics:
        """Compute a :class:`Metrics` from the counters and reservoirs."""
        arrival_rate, completion_rate = self._rates.per_second(
            time.monotonic(), self.arrived, self.ended
        )
        ordered = sorted(self._exec)
        waits = list(self._wait)
        ended = self.completed + self.failed
        return Metrics(
            arrival_rate=arrival_rate,
            completion_rate=completion_rate,
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
