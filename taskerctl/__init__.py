"""taskerctl: the Tasker client and CLI.

``from taskerctl import Client, AsyncClient``. Imports are lazy (module ``__getattr__``), so
``import taskerctl.cli`` does not load gRPC or the models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Client": "taskerctl._sync",
    "TaskHandle": "taskerctl._sync",
    "AsyncClient": "taskerctl._async",
    "AsyncTaskHandle": "taskerctl._async",
    "TaskResult": "taskerctl.models",
    "TaskEvent": "taskerctl.models",
    "TaskState": "taskerctl.models",
    "Priority": "taskerctl.models",
    "Stats": "taskerctl.models",
    "Metrics": "taskerctl.models",
    "Group": "taskerctl.models",
    "Schedule": "taskerctl.models",
    "TaskerError": "taskerctl.errors",
    "DaemonUnavailable": "taskerctl.errors",
    "QueueFull": "taskerctl.errors",
    "TaskNotFound": "taskerctl.errors",
    "InvalidTask": "taskerctl.errors",
    "ShuttingDown": "taskerctl.errors",
    "StreamFellBehind": "taskerctl.errors",
    "JournalFailed": "taskerctl.errors",
    "DeadlineExceeded": "taskerctl.errors",
    "TaskFailed": "taskerctl.errors",
    "TaskTimedOut": "taskerctl.errors",
    "TaskCancelled": "taskerctl.errors",
    "WrongState": "taskerctl.errors",
    "Unsupported": "taskerctl.errors",
    "Unauthenticated": "taskerctl.errors",
    "PermissionDenied": "taskerctl.errors",
}

__all__ = [
    "AsyncClient",
    "AsyncTaskHandle",
    "Client",
    "DaemonUnavailable",
    "DeadlineExceeded",
    "Group",
    "InvalidTask",
    "JournalFailed",
    "Metrics",
    "PermissionDenied",
    "Priority",
    "QueueFull",
    "Schedule",
    "ShuttingDown",
    "Stats",
    "StreamFellBehind",
    "TaskCancelled",
    "TaskEvent",
    "TaskFailed",
    "TaskHandle",
    "TaskNotFound",
    "TaskResult",
    "TaskState",
    "TaskTimedOut",
    "TaskerError",
    "Unauthenticated",
    "Unsupported",
    "WrongState",
]

if TYPE_CHECKING:
    from taskerctl._async import AsyncClient, AsyncTaskHandle
    from taskerctl._sync import Client, TaskHandle
    from taskerctl.errors import (
        DaemonUnavailable,
        DeadlineExceeded,
        InvalidTask,
        JournalFailed,
        PermissionDenied,
        QueueFull,
        ShuttingDown,
        StreamFellBehind,
        TaskCancelled,
        TaskerError,
        TaskFailed,
        TaskNotFound,
        TaskTimedOut,
        Unauthenticated,
        Unsupported,
        WrongState,
    )
    from taskerctl.models import (
        Group,
        Metrics,
        Priority,
        Schedule,
        Stats,
        TaskEvent,
        TaskResult,
        TaskState,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskerctl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
