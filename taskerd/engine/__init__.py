"""taskerd.engine: the asyncio scheduling core (no gRPC, SQLite or subprocess code)."""

from taskerd.engine.config import CancelReason, Config, Priority, SubmitOptions
from taskerd.engine.context import TaskContext
from taskerd.engine.errors import (
    Killed,
    QueueFull,
    Retry,
    ShuttingDown,
    TaskCancelled,
    TaskError,
    TaskTimeout,
)
from taskerd.engine.handle import TaskHandle, TaskState
from taskerd.engine.manager import TaskManager
from taskerd.engine.metrics import Metrics, MetricsCollector, Stats
from taskerd.engine.sync import SyncTaskManager

__all__ = [
    "CancelReason",
    "Config",
    "Killed",
    "Metrics",
    "MetricsCollector",
    "Priority",
    "QueueFull",
    "Retry",
    "ShuttingDown",
    "Stats",
    "SubmitOptions",
    "SyncTaskManager",
    "TaskCancelled",
    "TaskContext",
    "TaskError",
    "TaskHandle",
    "TaskManager",
    "TaskState",
    "TaskTimeout",
]
