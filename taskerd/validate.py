"""Checks every field of an incoming request. Each failure names its field (``tasks[i].argv``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from google.protobuf.duration_pb2 import Duration

from tasker.v1 import tasker_pb2 as pb
from taskerd.errors import InvalidArgument

MAX_ARGV_ITEMS = 4096
MAX_ENV_ENTRIES = 4096
MAX_ARG_ENV_BYTES = 1 << 20
MAX_STDIN_BYTES = 1 << 20
MAX_TIMEOUT_SECONDS = 30 * 86400
MAX_RETRIES = 100
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_BATCH = 10_000
MAX_PAGE_SIZE = 1000

_PRIORITIES = frozenset(pb.Priority.values())
_STATES = frozenset(pb.TaskState.values()) - {pb.TASK_STATE_UNSPECIFIED}
_MODES = frozenset(pb.ShutdownMode.values())


def _joined(field: str, texts: Iterable[str]) -> str:
    """All of ``texts`` joined by newlines, after checking that none holds a NUL byte."""
    joined = "\n".join(texts)
    if "\0" in joined:
        raise InvalidArgument(field, "must not contain NUL bytes")
    return joined


@lru_cache(maxsize=64)
def _isdir_cached(path: str, _tick: int) -> bool:
    return os.path.isdir(path)


def _isdir(path: str) -> bool:
    """``os.path.isdir``, remembered for a second: a batch names the same cwd a thousand times."""
    return _isdir_cached(path, int(time.monotonic()))


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _duration(field: str, d: Duration) -> None:
    seconds = d.seconds + d.nanos / 1e9
    if not (d.seconds >= 0 and 0 <= d.nanos < 1_000_000_000) or seconds <= 0:
        raise InvalidArgument(field, "must be > 0")
    if seconds > MAX_TIMEOUT_SECONDS:
        raise InvalidArgument(field, f"must be at most {MAX_TIMEOUT_SECONDS // 86400} days")


def env(field: str, variables: Mapping[str, str]) -> int:
    """Check an environment; returns its size in bytes (as the kernel counts it)."""
    if not variables:
        return 0
    if len(variables) > MAX_ENV_ENTRIES:
        raise InvalidArgument(field, f"at most {MAX_ENV_ENTRIES} entries")
    names = _joined(field, variables)
    if "=" in names or "" in variables:
        bad = next(n for n in variables if not n or "=" in n)
        raise InvalidArgument(field, f"bad variable name {bad!r}")
    size = _size(names) + _size(_joined(field, variables.values())) + 2 * len(variables)
    if size > MAX_ARG_ENV_BYTES:
        raise InvalidArgument(field, "over 1 MiB")
    return size


def spec(s: pb.TaskSpec, where: str) -> None:
    """Validate one task spec; ``where`` prefixes field names (``tasks[3]``)."""
    argv = s.argv
    if not argv or not argv[0] or len(argv) > MAX_ARGV_ITEMS:
        problem = f"at most {MAX_ARGV_ITEMS} items" if argv and argv[0] else "must not be empty"
        raise InvalidArgument(f"{where}.argv", problem)
    joined = "\n".join(argv)
    if "\0" in joined:
        raise InvalidArgument(f"{where}.argv", "must not contain NUL bytes")
    size = _size(joined) + 1
    if s.env:
        size += env(f"{where}.env", s.env)
    if size > MAX_ARG_ENV_BYTES:
        raise InvalidArgument(f"{where}.argv", "argv and env together exceed 1 MiB")
    if s.cwd:
        _joined(f"{where}.cwd", [s.cwd])
        if not os.path.isabs(s.cwd):
            raise InvalidArgument(f"{where}.cwd", f"must be an absolute path, got {s.cwd!r}")
        if not _isdir(s.cwd):
            raise InvalidArgument(f"{where}.cwd", f"no such directory: {s.cwd}")
    if len(s.stdin) > MAX_STDIN_BYTES:
        raise InvalidArgument(f"{where}.stdin", "at most 1 MiB")
    if s.priority not in _PRIORITIES:
        raise InvalidArgument(f"{where}.priority", f"unknown value {s.priority}")
    if s.HasField("timeout"):
        _duration(f"{where}.timeout", s.timeout)
    if s.HasField("queue_timeout"):
        _duration(f"{where}.queue_timeout", s.queue_timeout)
    if s.HasField("max_retries") and s.max_retries > MAX_RETRIES:
        raise InvalidArgument(f"{where}.max_retries", f"at most {MAX_RETRIES}")
    if s.labels:
        if len(s.labels) > MAX_LABELS:
            raise InvalidArgument(f"{where}.labels", f"at most {MAX_LABELS}")
        for key, value in s.labels.items():
            if not 1 <= len(key) <= MAX_LABEL_KEY:
                raise InvalidArgument(f"{where}.labels", f"key {key!r} must be 1 to 63 characters")
            if len(value) > MAX_LABEL_VALUE:
                raise InvalidArgument(f"{where}.labels", f"value of {key!r} over 256 characters")
        _joined(f"{where}.labels", s.labels)
        _joined(f"{where}.labels", s.labels.values())


def submit(request: pb.SubmitRequest) -> None:
    """Validate a Submit request: 1 to 10,000 good tasks."""
    if not request.tasks:
        raise InvalidArgument("tasks", "at least one task is required")
    if len(request.tasks) > MAX_BATCH:
        raise InvalidArgument("tasks", f"at most {MAX_BATCH} per request")
    env("env", request.env)
    for i, task in enumerate(request.tasks):
        spec(task, f"tasks[{i}]")


def ids(field: str, values: Sequence[int]) -> None:
    """Ids are positive; at most 10,000 of them."""
    if len(values) > MAX_BATCH:
        raise InvalidArgument(field, f"at most {MAX_BATCH}")
    for v in values:
        if v <= 0:
            raise InvalidArgument(field, f"ids are positive, got {v}")


def states(field: str, values: Iterable[int]) -> None:
    for v in values:
        if v not in _STATES:
            raise InvalidArgument(field, f"unknown state {v}")


def page_size(value: int) -> int:
    """0 means the default (100)."""
    if value > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"at most {MAX_PAGE_SIZE}")
    return value or 100


def page_token(token: str) -> int | None:
    """Tokens are the last id of the previous page."""
    if not token:
        return None
    if not token.isdigit():
        raise InvalidArgument("page_token", "not a token from a previous ListResponse")
    return int(token)


def shutdown_mode(value: pb.ShutdownMode.ValueType) -> pb.ShutdownMode.ValueType:
    if value not in _MODES:
        raise InvalidArgument("mode", f"unknown value {value}")
    return value or pb.SHUTDOWN_MODE_STOP


def older_than(d: Duration | None) -> float | None:
    if d is None:
        return None
    seconds = d.seconds + d.nanos / 1e9
    if seconds < 0:
        raise InvalidArgument("older_than", "must be >= 0")
    return seconds
