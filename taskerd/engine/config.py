"""Configuration, priorities and cancellation reasons."""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar

from taskerd.engine.metrics import MetricsCollector

R = TypeVar("R")


class Priority(enum.IntEnum):
    """Task priority: a higher level always starts first; FIFO within a level."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3


class SubmitOptions(TypedDict, total=False):
    """The keywords of every submission method (see ``TaskManager.queue_task_async``)."""

    priority: Priority | int
    timeout: float | None
    queue_timeout: float | None
    once: bool
    max_retries: int | None
    block: bool
    block_timeout: float | None


class CancelReason(enum.Enum):
    """Why a task's context was cancelled."""

    USER = "user"
    TIMEOUT = "timeout"
    STOP = "stop"
    KILL = "kill"


def _positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass
class Config(Generic[R]):
    """Engine settings. ``None`` defaults are resolved in ``__post_init__``.

    ``on_create()`` / ``on_destroy(resource)`` may be plain functions (called on the loop) or
    coroutine functions. ``check_health(exc)`` returning False marks the worker unhealthy.
    ``aging``: seconds of waiting after which a queued task counts one priority level higher.
    ``resource_pool_size``: how many spare resources retiring burst workers keep for reuse.
    ``on_finish(handle, fn)``: called on the loop, a step after each task ends, with the
    function it was submitted with: one hook for every task, where a done callback per task
    would cost memory per queued task. ``on_retry(task_id, error)``: called on the loop when a
    task is queued again after an unhealthy worker.
    """

    on_create: Callable[[], R | Awaitable[R]]
    on_destroy: Callable[[R], Any] | None = None
    worker_count: int = 4
    max_worker_count: int | None = None
    burst_interval: float = 0.1
    max_retries: int = 3
    check_health: Callable[[BaseException], bool] | None = None
    resource_pool_size: int | None = None
    max_queue_size: int | None = None
    logger: logging.Logger | None = None
    collector: MetricsCollector | None = None
    aging: float | None = None
    thread_pool_size: int | None = None
    on_finish: Callable[[Any, Any], None] | None = None
    on_retry: Callable[[int, BaseException], None] | None = None

    def __post_init__(self) -> None:
        if not callable(self.on_create):
            raise ValueError(f"on_create must be callable, got {self.on_create!r}")
        if self.on_destroy is not None and not callable(self.on_destroy):
            raise ValueError(f"on_destroy must be callable or None, got {self.on_destroy!r}")
        if self.check_health is not None and not callable(self.check_health):
            raise ValueError(f"check_health must be callable or None, got {self.check_health!r}")
        for name in ("worker_count", "max_worker_count", "max_queue_size", "thread_pool_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an int, got {value!r}")
        _positive("worker_count", self.worker_count, allow_none=False)
        if self.max_worker_count is None:
            self.max_worker_count = 2 * self.worker_count
        if self.max_worker_count < self.worker_count:
            raise ValueError(
                f"max_worker_count must be >= worker_count ({self.worker_count}), "
                f"got {self.max_worker_count}"
            )
        _positive("burst_interval", self.burst_interval, allow_none=False)
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ValueError(f"max_retries must be an int, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.resource_pool_size is None:
            self.resource_pool_size = self.worker_count
        if not isinstance(self.resource_pool_size, int) or self.resource_pool_size < 0:
            raise ValueError(f"resource_pool_size must be >= 0, got {self.resource_pool_size!r}")
        _positive("max_queue_size", self.max_queue_size)
        _positive("aging", self.aging)
        _positive("thread_pool_size", self.thread_pool_size)
        if self.collector is not None:
            for method in ("record_arrival", "record_start", "record_completion"):
                if not callable(getattr(self.collector, method, None)):
                    raise ValueError(f"collector must implement {method}, got {self.collector!r}")
