"""Checks every field of an incoming request. Each failure names its field (``tasks[i].argv``)."""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tasker.v1 import tasker_pb2 as pb
from taskerd.config import GROUP_NAME
from taskerd.errors import InvalidArgument, NotFound, quote

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
MAX_HOOK = 64 << 10  # bytes of a task's on_finish command
MAX_EPOCH = 253_402_300_799  # 9999-12-31T23:59:59Z
#: The journal's (SQLite's) largest integer: no task has a larger id.
MAX_ID = 2**63 - 1
#: Linux's PATH_MAX, counting the final NUL: no longer path can be a working directory.
MAX_PATH = 4096
#: google.protobuf.Duration's range (10,000 years).
MAX_DURATION_SECONDS = 315_576_000_000

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


def _seconds(field: str, d: Duration) -> float:
    """A well-formed Duration in seconds: in range, and nanos under a second, of seconds' sign."""
    s, n = d.seconds, d.nanos
    in_range = -MAX_DURATION_SECONDS <= s <= MAX_DURATION_SECONDS and -1e9 < n < 1e9
    if not in_range or s > 0 > n or s < 0 < n:
        raise InvalidArgument(field, "not a valid Duration")
    return s + n / 1e9


def _duration(field: str, d: Duration) -> None:
    seconds = _seconds(field, d)
    if seconds <= 0:
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
        raise InvalidArgument(field, f"bad variable name {quote(bad)}")
    size = _size(names) + _size(_joined(field, variables.values())) + 2 * len(variables)
    if size > MAX_ARG_ENV_BYTES:
        raise InvalidArgument(field, "over 1 MiB")
    return size


def labels(field: str, values: Mapping[str, str]) -> None:
    """Labels, or label filters: at most 64; keys 1 to 63 characters, values at most 256."""
    if not values:
        return
    if len(values) > MAX_LABELS:
        raise InvalidArgument(field, f"at most {MAX_LABELS}")
    for key, value in values.items():
        if not 1 <= len(key) <= MAX_LABEL_KEY:
            raise InvalidArgument(field, f"key {quote(key)} must be 1 to 63 characters")
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(field, f"value of {quote(key)} over 256 characters")
    _joined(field, values)
    _joined(field, values.values())


def spec(
    s: pb.TaskSpec, where: str, shared_env: int = 0, good_cwd: str = "", index: int = 0
) -> None:
    """Validate one task spec; ``where`` prefixes field names (``tasks[3]``).

    ``shared_env`` is the size of the environment the task gets when its own is empty (the
    Submit request's ``env``): it counts toward the 1 MiB of argv and env. ``good_cwd`` is a
    cwd already found good (the previous task's, in a batch). ``index`` is the task's place in
    its request (``after_tasks`` may only name earlier ones).
    """
    argv = s.argv
    if not argv or not argv[0] or len(argv) > MAX_ARGV_ITEMS:
        problem = f"at most {MAX_ARGV_ITEMS} items" if argv and argv[0] else "must not be empty"
        raise InvalidArgument(f"{where}.argv", problem)
    joined = "\n".join(argv)
    if "\0" in joined:
        raise InvalidArgument(f"{where}.argv", "must not contain NUL bytes")
    size = _size(joined) + 1
    size += env(f"{where}.env", s.env) if s.env else shared_env
    if size > MAX_ARG_ENV_BYTES:
        raise InvalidArgument(f"{where}.argv", "argv and env together exceed 1 MiB")
    if s.cwd and s.cwd != good_cwd:
        cwd = _joined(f"{where}.cwd", [s.cwd])
        if not os.path.isabs(cwd):
            raise InvalidArgument(f"{where}.cwd", f"must be an absolute path, got {quote(cwd)}")
        if _size(cwd) >= MAX_PATH:
            raise InvalidArgument(f"{where}.cwd", f"longer than PATH_MAX ({MAX_PATH} bytes)")
        if not _isdir(cwd):
            raise InvalidArgument(f"{where}.cwd", f"no such directory: {quote(cwd)}")
    if len(s.stdin) > MAX_STDIN_BYTES:
        raise InvalidArgument(f"{where}.stdin", "at most 1 MiB")
    priority(f"{where}.priority", s.priority)
    if s.HasField("timeout"):
        _duration(f"{where}.timeout", s.timeout)
    if s.HasField("queue_timeout"):
        _duration(f"{where}.queue_timeout", s.queue_timeout)
    if s.HasField("max_retries") and s.max_retries > MAX_RETRIES:
        raise InvalidArgument(f"{where}.max_retries", f"at most {MAX_RETRIES}")
    if s.retries:
        if s.retries > MAX_RETRIES:
            raise InvalidArgument(f"{where}.retries", f"at most {MAX_RETRIES}")
        if s.once:
            raise InvalidArgument(f"{where}.retries", "an at-most-once task is never run again")
    if s.labels:
        labels(f"{where}.labels", s.labels)
    if s.group and GROUP_NAME.fullmatch(s.group) is None:
        raise InvalidArgument(f"{where}.group", f"no group named {quote(s.group)}")
    if s.after or s.after_tasks or s.HasField("start_at") or s.on_finish:
        _workflow(s, where, index)


def _workflow(s: pb.TaskSpec, where: str, index: int) -> None:
    """The fields of issue 12: dependencies, start time, on-finish hook."""
    if len(s.after) + len(s.after_tasks) > MAX_BATCH:
        raise InvalidArgument(f"{where}.after", f"at most {MAX_BATCH} dependencies")
    if s.after:
        ids(f"{where}.after", s.after)
    for k in s.after_tasks:
        if k >= index:
            raise InvalidArgument(
                f"{where}.after_tasks",
                f"{k} is not an earlier task of the request (this is {index})",
            )
    if s.HasField("start_at"):
        timestamp(f"{where}.start_at", s.start_at)
    if s.on_finish:
        if len(s.on_finish) > MAX_HOOK:
            raise InvalidArgument(f"{where}.on_finish", "at most 64 KiB")
        if "\0" in s.on_finish:
            raise InvalidArgument(f"{where}.on_finish", "must not contain NUL bytes")


def timestamp(field: str, t: Timestamp) -> float:
    """A time between 1970 and 9999, in epoch seconds."""
    if not (0 <= t.seconds <= MAX_EPOCH and 0 <= t.nanos < 1_000_000_000):
        raise InvalidArgument(field, "not a time between 1970 and 9999")
    return t.seconds + t.nanos / 1e9


def priority(field: str, value: int) -> None:
    """A known Priority."""
    if value not in _PRIORITIES:
        raise InvalidArgument(field, f"unknown value {value}")


def submit(request: pb.SubmitRequest) -> None:
    """Validate a Submit request: 1 to 10,000 good tasks."""
    if not request.tasks:
        raise InvalidArgument("tasks", "at least one task is required")
    if len(request.tasks) > MAX_BATCH:
        raise InvalidArgument("tasks", f"at most {MAX_BATCH} per request")
    shared_env = env("env", request.env)
    good_cwd = ""
    for i, task in enumerate(request.tasks):
        spec(task, f"tasks[{i}]", shared_env, good_cwd, i)
        good_cwd = task.cwd


def ids(field: str, values: Sequence[int], *, required: bool = False) -> None:
    """Ids are positive; at most 10,000 of them (at least one if ``required``). An id past the
    journal's range is NotFound."""
    if not values:
        if required:
            raise InvalidArgument(field, "name at least one task")
        return
    if len(values) > MAX_BATCH:
        raise InvalidArgument(field, f"at most {MAX_BATCH}")
    if (low := min(values)) <= 0:
        raise InvalidArgument(field, f"ids are positive, got {low}")
    if (high := max(values)) > MAX_ID:
        raise NotFound(high)


def states(field: str, values: Collection[int]) -> None:
    """Task states, none of them UNSPECIFIED or unknown."""
    if not _STATES.issuperset(values):
        bad = next(v for v in values if v not in _STATES)
        raise InvalidArgument(field, f"unknown state {bad}")


def page_size(value: int) -> int:
    """0 means the default (100)."""
    if value > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"at most {MAX_PAGE_SIZE}")
    return value or 100


def page_token(token: str) -> int | None:
    """Tokens are the last id of the previous page: ASCII digits, an id in the journal's range."""
    if not token:
        return None
    if len(token) <= len(str(MAX_ID)) and token.isascii() and token.isdigit():
        before = int(token)
        if 0 < before <= MAX_ID:
            return before
    raise InvalidArgument("page_token", "not a token from a previous ListResponse")


def shutdown_mode(value: pb.ShutdownMode.ValueType) -> pb.ShutdownMode.ValueType:
    """A known mode; UNSPECIFIED means STOP."""
    if value not in _MODES:
        raise InvalidArgument("mode", f"unknown value {value}")
    return value or pb.SHUTDOWN_MODE_STOP


def delay(field: str, d: Duration) -> float:
    """A delay in seconds: >= 0, at most 30 days."""
    seconds = _seconds(field, d)
    if seconds < 0:
        raise InvalidArgument(field, "must be >= 0")
    if seconds > MAX_TIMEOUT_SECONDS:
        raise InvalidArgument(field, f"must be at most {MAX_TIMEOUT_SECONDS // 86400} days")
    return seconds


def older_than(d: Duration | None) -> float | None:
    """Clean's age, in seconds; ``None`` (unset) means every finished task."""
    if d is None:
        return None
    seconds = _seconds("older_than", d)
    if seconds < 0:
        raise InvalidArgument("older_than", "must be >= 0")
    return seconds
