"""The daemon's request errors, each with the gRPC status code it is answered with."""

from __future__ import annotations

import grpc

#: How much of a value an error message quotes: a message quotes what the client sent, and
#: grpcio's client drops a status whose metadata passes 16 KiB.
MAX_QUOTE = 64
#: The most UTF-8 bytes of any status message (percent-encoded, each may take three).
MAX_DETAILS = 1024


def quote(value: str) -> str:
    """``repr(value)``, or for a long value the repr of its start, ``...`` and its length."""
    if len(value) <= MAX_QUOTE:
        return repr(value)
    return f"{value[:MAX_QUOTE]!r}... ({len(value)} characters)"


def clip(details: str) -> str:
    """A status message cut to ``MAX_DETAILS`` bytes of UTF-8 (then ``...``)."""
    data = details.encode("utf-8", "backslashreplace")  # a lone surrogate cannot be sent
    if len(data) <= MAX_DETAILS:
        return data.decode()
    return data[: MAX_DETAILS - 3].decode("utf-8", "ignore") + "..."


class RequestError(Exception):
    """A request the daemon refuses; ``code`` is the gRPC status sent back."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(RequestError):
    """A field is bad. The message starts with the field's path: ``tasks[2].timeout: ...``."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(RequestError):
    """No task has that id."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} not found")


class QueueFull(RequestError):
    """Backpressure: the queue is at ``max_queue``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, queued: int, capacity: int, where: str = "") -> None:
        super().__init__(f"queue full ({queued}/{capacity}){where}")


class ShuttingDown(RequestError):
    """The daemon has begun to stop and takes no new work."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self) -> None:
        super().__init__("taskerd is shutting down")


class JournalFull(RequestError):
    """The journal's disk is full: nothing of the request was kept."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self) -> None:
        super().__init__("journal: disk full")


class JournalUnavailable(RequestError):
    """The journal failed (an I/O error): nothing of the request was kept; try again later."""

    code = grpc.StatusCode.UNAVAILABLE


class NotNow(RequestError):
    """The task or group is not in a state the verb applies to; the message says why."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(RequestError):
    """The caller's role may not do this (a submit token, to another's task)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class DaskUnavailable(Exception):
    """The Dask scheduler of a group on Dask cannot be reached at start (not a request's)."""
