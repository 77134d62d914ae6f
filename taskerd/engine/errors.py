"""Exceptions raised to callers of the engine, and :class:`Retry`, raised by tasks."""

from __future__ import annotations


class TaskError(Exception):
    """Base class of every error the engine itself reports about a task."""


class QueueFull(TaskError):
    """The bounded queue had no room for a submission (message: ``queue full (n/max)``)."""


class ShuttingDown(TaskError):
    """The manager is stopping: the submission was refused or the task was never run."""


class Killed(TaskError):
    """The manager was killed before or while the task ran."""


class TaskTimeout(TaskError, TimeoutError):
    """The task ran past its ``timeout`` or never started within its ``queue_timeout``."""


class TaskCancelled(TaskError):
    """The task was cancelled through its handle (a plain error, not ``CancelledError``)."""


class Retry(Exception):
    """Raise from a task to have it re-queued (counts against ``max_retries``).

    ``cause`` is what the caller gets once retries are exhausted (this ``Retry`` if None).
    """

    def __init__(self, cause: BaseException | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
