"""Typed client errors, and THE one mapping from gRPC status codes to them.

Every error raised by :class:`~taskerctl.Client` and :class:`~taskerctl.AsyncClient` subclasses
:class:`TaskerError`. Each error class carries the CLI ``exit_code`` it maps to.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskerctl.models import TaskResult

# Exit codes of taskerctl for errors that are not a task's own outcome.
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE
EXIT_FELL_BEHIND = 74  # EX_IOERR: a stream was dropped for reading too slowly
EXIT_QUEUE_FULL = 75  # EX_TEMPFAIL
EXIT_NOPERM = 77  # EX_NOPERM: no token, an unknown one, or a role that may not


class TaskerError(Exception):
    """Base of every taskerctl error."""

    exit_code: int = EXIT_OTHER

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The gRPC status code name (``"NOT_FOUND"``...), when the error came from the daemon.
        self.code = code


class DaemonUnavailable(TaskerError):
    """The daemon is not reachable on the socket (or at the TCP address)."""

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, socket: Path | str, detail: str = "", *, code: str | None = None) -> None:
        from shlex import quote

        from tasker.paths import default_socket_path

        if isinstance(socket, str) and not socket.startswith("/"):  # host:port
            super().__init__(f"taskerd is not reachable at {socket}: {detail}", code=code)
            self.socket = Path(socket)
            self.detail = detail
            return
        if Path(socket) == default_socket_path():
            how = "`taskerd &` or `systemctl --user start taskerd`"
        else:  # the daemon must be told the same socket
            how = f"`taskerd --socket {quote(str(socket))} &`"
        msg = f"taskerd is not running on {socket} (start it with {how})"
        super().__init__(msg, code=code)
        self.socket = Path(socket)
        self.detail = detail


class QueueFull(TaskerError):
    """The daemon's queue is full (RESOURCE_EXHAUSTED); retry later."""

    exit_code = EXIT_QUEUE_FULL


class StreamFellBehind(TaskerError):
    """The daemon ended an event stream this client read too slowly (ABORTED).

    Only streams end this way (StreamResults, Run, and the waits built on them): "stream fell
    behind: more than 4 MiB unread". Watched tasks go on (a Run task ends with its call); watch
    again, or read the output the daemon kept with ``get(id, output=True)``.
    """

    exit_code = EXIT_FELL_BEHIND


class JournalFailed(TaskerError):
    """The daemon is up but its journal failed (an I/O error): nothing was kept; retry later."""

    exit_code = EXIT_QUEUE_FULL


class TaskNotFound(TaskerError):
    """No task has that id (NOT_FOUND)."""


class InvalidTask(TaskerError, ValueError):
    """A request field is bad; ``field`` names it as the daemon does, e.g. ``tasks[0].timeout``.

    Raised for the daemon's INVALID_ARGUMENT, and by the client itself for a value that cannot
    even make a request (``timeout="abc"``, ``priority="urgent"``, ``retries=-1``). Also a
    ``ValueError``.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, field: str = "", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class ShuttingDown(TaskerError):
    """The daemon is shutting down (FAILED_PRECONDITION "taskerd is shutting down")."""

    exit_code = EXIT_UNAVAILABLE


class Unauthenticated(TaskerError):
    """A TCP listener wants a token this client did not send, or does not know it."""

    exit_code = EXIT_NOPERM


class PermissionDenied(TaskerError):
    """The token's role may not do this (PERMISSION_DENIED); nothing was changed."""

    exit_code = EXIT_NOPERM


class WrongState(TaskerError):
    """A task or group is not in a state the request applies to (FAILED_PRECONDITION): pausing
    a task that is not running, a new priority for a running one, removing an unfinished one,
    adding a group that exists... The message says which and why; nothing was changed."""


class Unsupported(TaskerError):
    """The daemon does not know the request (UNIMPLEMENTED): it is older than this client."""


class DeadlineExceeded(TaskerError, TimeoutError):
    """An RPC deadline (``rpc_timeout``) or a client-side wait limit passed.

    This is about the client waiting, not about the task's own ``timeout``.
    """


class TaskEnded(TaskerError):
    """Base of the errors for a task that ended in a state other than SUCCEEDED."""

    def __init__(self, result: TaskResult) -> None:
        super().__init__(f"task {result.id} {result.describe()}")
        self.result = result

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        """The task's CLI exit status (see :attr:`TaskResult.exit_status`)."""
        return self.result.exit_status


class TaskFailed(TaskEnded):
    """The task FAILED (non-zero exit, signal, spawn failure) or was LOST."""


class TaskTimedOut(TaskEnded, TimeoutError):
    """The task ran past its timeout or did not start within its queue_timeout."""


class TaskCancelled(TaskEnded):
    """The task was cancelled."""


_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*):")


def parse_field(message: str) -> str:
    """The field an INVALID_ARGUMENT message starts with (``tasks[0].timeout: ...``), or ``""``."""
    m = _FIELD.match(message)
    return m.group(1) if m else ""


def from_rpc_error(err: Any, socket: Path | str) -> TaskerError:
    """Map a ``grpc.RpcError`` (sync or aio) to the matching :class:`TaskerError`."""
    code_obj = err.code() if callable(getattr(err, "code", None)) else None
    code = getattr(code_obj, "name", "UNKNOWN")
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    details = details or code
    if code == "UNAVAILABLE":
        if details.startswith("journal:"):  # the daemon is up; its journal failed
            return JournalFailed(details, code=code)
        return DaemonUnavailable(socket, details, code=code)
    if code == "RESOURCE_EXHAUSTED":
        return QueueFull(details, code=code)
    if code == "ABORTED":
        return StreamFellBehind(details, code=code)
    if code == "NOT_FOUND":
        return TaskNotFound(details, code=code)
    if code == "INVALID_ARGUMENT":
        return InvalidTask(details, field=parse_field(details), code=code)
    if code == "FAILED_PRECONDITION":
        if details.startswith("taskerd is shutting down"):
            return ShuttingDown(details, code=code)
        return WrongState(details, code=code)
    if code == "UNAUTHENTICATED":
        return Unauthenticated(f"unauthenticated: {details}", code=code)
    if code == "PERMISSION_DENIED":
        return PermissionDenied(f"permission denied: {details}", code=code)
    if code == "UNIMPLEMENTED":
        return Unsupported(f"this taskerd does not support the request ({details})", code=code)
    if code == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"deadline exceeded waiting for taskerd ({details})", code=code)
    return TaskerError(f"{code.lower()}: {details}", code=code)


def ended_error(result: TaskResult) -> TaskEnded:
    """The exception for a task that did not succeed."""
    name = result.state.name
    if name == "TIMED_OUT":
        return TaskTimedOut(result)
    if name == "CANCELLED":
        return TaskCancelled(result)
    return TaskFailed(result)
