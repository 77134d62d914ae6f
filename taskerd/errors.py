"""The daemon's request errors, each with the gRPC status code it is answered with."""

from __future__ import annotations

import grpc


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

    def __init__(self, queued: int, capacity: int) -> None:
        super().__init__(f"queue full ({queued}/{capacity})")


class ShuttingDown(RequestError):
    """The daemon has begun to stop and takes no new work."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self) -> None:
        super().__init__("taskerd is shutting down")
