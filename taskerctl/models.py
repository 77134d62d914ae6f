"""Models shared by the sync and async clients, and the request building they share.

``TaskState`` and ``Priority`` are derived from the proto enums, so they can never drift from the
contract. :class:`TaskResult`, :class:`TaskEvent`, :class:`Stats` and :class:`Metrics` are frozen
dataclasses built from the proto messages.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict, cast

from google.protobuf import duration_pb2, timestamp_pb2

from tasker.v1 import tasker_pb2 as pb
from taskerctl.durations import format_duration, parse_duration


def _members(enum_type: Any, prefix: str) -> dict[str, int]:
    return {name.removeprefix(prefix): value for name, value in enum_type.items()}


if TYPE_CHECKING:
    # For type checkers only: members come from the proto at run time, any name is a member.
    class _StateMeta(enum.EnumMeta):
        def __getattr__(cls, name: str) -> TaskState: ...

    class _PriorityMeta(enum.EnumMeta):
        def __getattr__(cls, name: str) -> Priority: ...

    class TaskState(enum.IntEnum, metaclass=_StateMeta):
        """A task's state, from ``tasker.v1.TaskState`` without its prefix (``SUCCEEDED``...)."""

    class Priority(enum.IntEnum, metaclass=_PriorityMeta):
        """A task's priority, from ``tasker.v1.Priority`` (``LOW``, ``NORMAL``...)."""

else:

    class _Named(enum.IntEnum):
        """Prints as its name (``SUCCEEDED``), compares as the proto's number."""

        def __str__(self) -> str:
            return self.name

    TaskState = _Named("TaskState", _members(pb.TaskState, "TASK_STATE_"), module=__name__)
    TaskState.__doc__ = "A task's state, from ``tasker.v1.TaskState`` without its prefix."
    Priority = _Named("Priority", _members(pb.Priority, "PRIORITY_"), module=__name__)
    Priority.__doc__ = "A task's priority, from ``tasker.v1.Priority`` without its prefix."

#: States a task never leaves.
TERMINAL_STATES: frozenset[TaskState] = frozenset(
    s for s in TaskState if s.name not in ("UNSPECIFIED", "QUEUED", "RUNNING")
)
#: Priority names accepted by ``priority=`` and ``--priority``, lowest first.
PRIORITY_NAMES: tuple[str, ...] = tuple(p.name.lower() for p in Priority if p.name != "UNSPECIFIED")
#: State names accepted by ``list(states=...)`` and ``--state``.
STATE_NAMES: tuple[str, ...] = tuple(s.name.lower() for s in TaskState if s.name != "UNSPECIFIED")


def parse_priority(value: str | int) -> Priority:
    """``"high"`` / ``"HIGH"`` / ``Priority.HIGH`` / ``3`` → :class:`Priority`."""
    if isinstance(value, str):
        try:
            return Priority[value.strip().upper()]
        except KeyError:
            raise ValueError(
                f"invalid priority {value!r}: use one of {', '.join(PRIORITY_NAMES)}"
            ) from None
    return Priority(int(value))


def parse_state(value: str | int) -> TaskState:
    """``"failed"`` / ``TaskState.FAILED`` / ``4`` → :class:`TaskState`."""
    if isinstance(value, str):
        try:
            return TaskState[value.strip().upper().replace("-", "_")]
        except KeyError:
            raise ValueError(
                f"invalid state {value!r}: use one of {', '.join(STATE_NAMES)}"
            ) from None
    return TaskState(int(value))


def to_seconds(value: float | str | None) -> float | None:
    """Seconds from a number or a duration string (``"5s"``), via the shared parser."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value)
    return float(value)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _seconds(msg: Any, field: str) -> float | None:
    if not msg.HasField(field):
        return None
    d: duration_pb2.Duration = getattr(msg, field)
    return d.seconds + d.nanos / 1e9


def _time(msg: Any, field: str) -> datetime | None:
    if not msg.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(msg, field)
    return ts.ToDatetime(tzinfo=UTC)


Command: TypeAlias = str | Sequence[str]


class TaskOptions(TypedDict, total=False):
    """The keywords of ``submit`` and its kin; see :func:`build_spec` for what each means."""

    priority: str | int
    timeout: float | str | None
    queue_timeout: float | str | None
    once: bool
    retries: int | None
    env: Mapping[str, str] | None
    cwd: str | os.PathLike[str] | None
    stdin: bytes | str | None
    labels: Mapping[str, str] | None
    shell: bool


def build_spec(
    cmd: Command,
    *,
    priority: str | int = "normal",
    timeout: float | str | None = None,
    queue_timeout: float | str | None = None,
    once: bool = False,
    retries: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: bytes | str | None = None,
    labels: Mapping[str, str] | None = None,
    shell: bool = False,
) -> pb.TaskSpec:
    """Build a ``TaskSpec``: the one place client arguments become a request.

    A string ``cmd`` runs via ``/bin/sh -c`` with ``shell=True``, else is ``shlex.split``.
    ``env=None`` sends a copy of ``os.environ`` and ``cwd=None`` the current directory, as a user
    expects from ``nohup cmd``.
    """
    if isinstance(cmd, str):
        argv = [cmd] if shell else shlex.split(cmd)
    else:
        argv = [os.fspath(a) for a in cmd]
    spec = pb.TaskSpec(
        argv=argv,
        shell=shell,
        env=dict(os.environ if env is None else env),
        cwd=os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd(),
        priority=cast("pb.Priority.ValueType", parse_priority(priority).value),
        once=once,
        labels=dict(labels or {}),
    )
    if stdin:
        spec.stdin = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
    t = to_seconds(timeout)
    if t is not None:
        spec.timeout.CopyFrom(_duration(t))
    qt = to_seconds(queue_timeout)
    if qt is not None:
        spec.queue_timeout.CopyFrom(_duration(qt))
    if retries is not None:
        spec.max_retries = retries
    return spec


#: What ``submit_many`` accepts per item: a command, a ready ``TaskSpec``, or ``submit`` kwargs
#: (with ``cmd``) that override the call's shared options.
SpecLike: TypeAlias = str | Sequence[str] | pb.TaskSpec | Mapping[str, Any]


def submit_requests(
    items: Iterable[SpecLike], options: Mapping[str, Any], batch_size: int
) -> Iterator[pb.SubmitRequest]:
    """Lazily turn ``submit_many`` items into Submit requests of at most ``batch_size`` tasks.

    ``options`` are ``submit`` kwargs shared by all items. Their environment (by default a copy of
    ``os.environ``) travels once per request, in ``SubmitRequest.env``, not once per task.
    """
    shared = dict(options)
    env = shared.pop("env", None)
    env = dict(os.environ if env is None else env)
    if shared.get("cwd") is None:
        shared["cwd"] = os.getcwd()
    size = max(1, min(batch_size, 10_000))
    request = pb.SubmitRequest(env=env)
    for item in items:
        if isinstance(item, pb.TaskSpec):
            request.tasks.append(item)
        elif isinstance(item, Mapping):
            merged = {"env": {}, **shared, **item}
            request.tasks.append(build_spec(merged.pop("cmd"), **merged))
        else:
            request.tasks.append(build_spec(item, **shared, env={}))
        if len(request.tasks) >= size:
            yield request
            request = pb.SubmitRequest(env=env)
    if request.tasks:
        yield request


def shutdown_mode(mode: str) -> pb.ShutdownMode.ValueType:
    """``"stop" | "drain" | "kill"`` → ``pb.ShutdownMode`` value."""
    try:
        return pb.ShutdownMode.Value("SHUTDOWN_MODE_" + mode.upper())
    except ValueError:
        raise ValueError(f"invalid shutdown mode {mode!r}: use stop, drain or kill") from None


def older_than_request(older_than: float | str | None) -> pb.CleanRequest:
    """A ``CleanRequest`` for tasks that ended at least ``older_than`` ago (None: all)."""
    req = pb.CleanRequest()
    s = to_seconds(older_than)
    if s is not None:
        req.older_than.CopyFrom(_duration(s))
    return req


@dataclasses.dataclass(frozen=True, slots=True)
class TaskResult:
    """One task's record (``tasker.v1.Task``), with times as datetimes and durations in seconds."""

    id: int
    state: TaskState
    argv: tuple[str, ...]
    shell: bool
    priority: Priority
    labels: dict[str, str]
    cwd: str
    exit_code: int | None
    signal: int | None
    error: str
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    attempts: int
    pid: int
    worker: int
    queued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    wait: float | None
    run: float | None
    timeout: float | None
    once: bool

    @classmethod
    def from_proto(cls, task: pb.Task) -> TaskResult:
        """Build from a ``pb.Task``."""
        spec = task.spec
        return cls(
            id=task.id,
            state=TaskState(task.state),
            argv=tuple(spec.argv),
            shell=spec.shell,
            priority=Priority(spec.priority or Priority.NORMAL),
            labels=dict(spec.labels),
            cwd=spec.cwd,
            exit_code=task.exit_code if task.HasField("exit_code") else None,
            signal=task.signal if task.HasField("signal") else None,
            error=task.error,
            stdout=task.stdout,
            stderr=task.stderr,
            stdout_truncated=task.stdout_truncated,
            stderr_truncated=task.stderr_truncated,
            attempts=task.attempts,
            pid=task.pid,
            worker=task.worker,
            queued_at=_time(task, "queued_at"),
            started_at=_time(task, "started_at"),
            ended_at=_time(task, "ended_at"),
            wait=_seconds(task, "wait"),
            run=_seconds(task, "run"),
            timeout=_seconds(spec, "timeout"),
            once=spec.once,
        )

    @property
    def done(self) -> bool:
        """True once the task is in a terminal state."""
        return self.state in TERMINAL_STATES

    @property
    def ok(self) -> bool:
        """True when the task SUCCEEDED."""
        return self.state == TaskState.SUCCEEDED

    @property
    def command(self) -> str:
        """The command as one shell-quoted line."""
        return self.argv[0] if self.shell and len(self.argv) == 1 else shlex.join(self.argv)

    @property
    def exit_status(self) -> int:
        """The status ``taskerctl`` exits with for this task.

        ===========================  =====
        SUCCEEDED                    0
        FAILED, exited with N        N
        FAILED, killed by signal N   128+N
        FAILED, spawn failed         127
        TIMED_OUT                    124
        CANCELLED                    125
        LOST                         123
        still queued or running      1
        ===========================  =====
        """
        name = self.state.name
        if name == "SUCCEEDED":
            return 0
        if name == "TIMED_OUT":
            return 124
        if name == "CANCELLED":
            return 125
        if name == "LOST":
            return 123
        if name == "FAILED":
            if self.signal:
                return 128 + self.signal
            if self.exit_code is not None:
                return self.exit_code or 1
            return 127
        return 1

    def describe(self) -> str:
        """A short human phrase for the outcome: ``"succeeded"``, ``"failed: exit status 3"``."""
        name = self.state.name.lower().replace("_", " ")
        if self.error:
            return f"{name}: {self.error}"
        if self.exit_code is not None and not self.ok:
            return f"{name}: exit status {self.exit_code}"
        return name

    def to_json(self, *, output: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (bytes decoded as UTF-8 with replacement; output only if asked)."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("stdout", "stderr"):
                if output:
                    d[f.name] = v.decode(errors="replace")
                continue
            if isinstance(v, enum.Enum):
                v = v.name.lower()
            elif isinstance(v, datetime):
                v = v.isoformat()
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        d["exit_status"] = self.exit_status
        return d


@dataclasses.dataclass(frozen=True, slots=True)
class TaskEvent:
    """Something that happened to a task: ``kind`` is queued, started, output, retrying or
    finished; only that kind's fields are set."""

    task_id: int
    seq: int
    time: datetime | None
    kind: str
    priority: Priority | None = None
    pid: int | None = None
    worker: int | None = None
    attempt: int | None = None
    stream: str | None = None  # "stdout" | "stderr"
    data: bytes = b""
    reason: str = ""
    result: TaskResult | None = None

    @classmethod
    def from_proto(cls, ev: pb.TaskEvent) -> TaskEvent:
        """Build from a ``pb.TaskEvent``."""
        kind = ev.WhichOneof("kind") or ""
        base: dict[str, Any] = {
            "task_id": ev.task_id,
            "seq": ev.seq,
            "time": _time(ev, "time"),
            "kind": kind,
        }
        if kind == "queued":
            base["priority"] = Priority(ev.queued.priority or Priority.NORMAL)
        elif kind == "started":
            base.update(pid=ev.started.pid, worker=ev.started.worker, attempt=ev.started.attempt)
        elif kind == "output":
            base["stream"] = "stderr" if ev.output.stream == pb.OUTPUT_STREAM_STDERR else "stdout"
            base["data"] = ev.output.data
        elif kind == "retrying":
            base.update(attempt=ev.retrying.attempt, reason=ev.retrying.reason)
        elif kind == "finished":
            base["result"] = TaskResult.from_proto(ev.finished.task)
        return cls(**base)


def _fields_from(cls: Any, msg: Any, durations: Iterable[str] = ()) -> dict[str, Any]:
    durs = set(durations)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        out[f.name] = _seconds(msg, f.name) if f.name in durs else getattr(msg, f.name)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """Workers, queue and counts right now (``tasker.v1.StatsResponse``; uptime in seconds)."""

    base_workers: int
    max_workers: int
    active_workers: int
    burst_workers: int
    running: int
    available_resources: int
    queued_low: int
    queued_normal: int
    queued_high: int
    queued_critical: int
    queued: int
    queue_capacity: int
    queue_usage: float
    succeeded: int
    failed: int
    timed_out: int
    cancelled: int
    lost: int
    rejected: int
    uptime: float | None
    version: str
    shutting_down: bool

    @classmethod
    def from_proto(cls, msg: pb.StatsResponse) -> Stats:
        """Build from a ``pb.StatsResponse``."""
        return cls(**_fields_from(cls, msg, ["uptime"]))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


_METRIC_DURATIONS = ("exec_avg", "exec_min", "exec_max", "exec_p50", "exec_p95", "exec_p99")


@dataclasses.dataclass(frozen=True, slots=True)
class Metrics:
    """Rates (tasks/s), latencies (seconds) and totals (``tasker.v1.MetricsResponse``)."""

    arrival_rate: float
    completion_rate: float
    exec_avg: float | None
    exec_min: float | None
    exec_max: float | None
    exec_p50: float | None
    exec_p95: float | None
    exec_p99: float | None
    wait_avg: float | None
    completed: int
    failed: int
    retried: int
    timed_out: int
    cancelled: int
    rejected: int
    success_rate: float
    failure_rate: float

    @classmethod
    def from_proto(cls, msg: pb.MetricsResponse) -> Metrics:
        """Build from a ``pb.MetricsResponse``."""
        return cls(**_fields_from(cls, msg, [*_METRIC_DURATIONS, "wait_avg"]))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def fmt_seconds(value: float | None) -> str:
    """``format_duration`` that shows ``-`` for unset."""
    return "-" if value is None else format_duration(value)


#: gRPC channel options used by both clients: 64 MiB messages both ways.
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
)
#: The default RPC deadline in seconds for unary calls (not for waits or streams).
DEFAULT_RPC_TIMEOUT = 30.0


def channel_target(socket: os.PathLike[str] | str) -> str:
    """The gRPC target for a Unix socket: ``unix:`` + absolute path."""
    return "unix:" + os.path.abspath(os.fspath(socket))


def list_request(
    states: Iterable[str | int] | None, labels: Mapping[str, str] | None, page_size: int
) -> pb.ListRequest:
    """A first-page ``ListRequest``."""
    return pb.ListRequest(
        states=[cast("pb.TaskState.ValueType", parse_state(s).value) for s in states or ()],
        labels=dict(labels or {}),
        page_size=max(1, min(page_size, 1000)),
    )


def cancel_request(task_ids: Iterable[int]) -> pb.CancelRequest:
    """One ``CancelRequest`` for all of ``task_ids``."""
    return pb.CancelRequest(ids=list(task_ids))


def cancel_results(resp: pb.CancelResponse) -> dict[int, bool]:
    """Each task asked, mapped to whether this request cancelled it."""
    return {r.id: r.cancelled for r in resp.results}


#: ``on_output(stream, data)``: ``stream`` is ``"stdout"`` or ``"stderr"``.
OutputCallback: TypeAlias = Callable[[str, bytes], object]


class RunCollector:
    """Drives a Run stream for both clients: passes output chunks to ``on_output`` and returns
    the final result with the collected output."""

    def __init__(self, on_output: OutputCallback | None = None) -> None:
        self.on_output = on_output
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []

    def feed(self, ev: TaskEvent) -> TaskResult | None:
        """Take one event; return the result when it is the ``finished`` one."""
        if ev.kind == "output" and ev.stream:
            (self.stderr if ev.stream == "stderr" else self.stdout).append(ev.data)
            if self.on_output is not None:
                self.on_output(ev.stream, ev.data)
        elif ev.kind == "finished" and ev.result is not None:
            r = ev.result
            return dataclasses.replace(
                r,
                stdout=r.stdout or b"".join(self.stdout),
                stderr=r.stderr or b"".join(self.stderr),
            )
        return None
