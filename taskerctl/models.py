"""The models both clients return, and the types of their arguments.

``TaskState`` and ``Priority`` are derived from the proto enums, so they can never drift from the
contract; a number this client does not know (a newer daemon's state) becomes a member named
``UNKNOWN_<n>`` rather than an error. :class:`TaskResult`, :class:`TaskEvent`, :class:`Group`,
:class:`Stats`, :class:`Metrics` and :class:`Schedule` are frozen dataclasses built from the proto
messages. Requests are built in :mod:`taskerctl._core`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict

from google.protobuf import duration_pb2

from tasker.durations import format_duration, parse_duration
from tasker.v1 import tasker_pb2 as pb


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

        @classmethod
        def _missing_(cls, value: object) -> Any:
            """A number the proto this client was built with does not name (a newer daemon's
            state): a member ``UNKNOWN_<n>`` that compares as the number, made once."""
            if not isinstance(value, int) or isinstance(value, bool):
                return None
            member = int.__new__(cls, value)
            member._name_ = f"UNKNOWN_{value}"
            member._value_ = value
            return cls._value2member_map_.setdefault(value, member)

    TaskState = _Named("TaskState", _members(pb.TaskState, "TASK_STATE_"), module=__name__)
    TaskState.__doc__ = "A task's state, from ``tasker.v1.TaskState`` without its prefix."
    Priority = _Named("Priority", _members(pb.Priority, "PRIORITY_"), module=__name__)
    Priority.__doc__ = "A task's priority, from ``tasker.v1.Priority`` without its prefix."

#: States of a task that has not ended: it may still run (stashed, queued, waiting for its
#: dependencies, scheduled for later), or runs (paused too).
LIVE_STATES: frozenset[TaskState] = frozenset(
    TaskState[name] for name in ("QUEUED", "RUNNING", "PAUSED", "STASHED", "WAITING", "SCHEDULED")
)
#: States a task never leaves (a state this client does not know is in neither set).
TERMINAL_STATES: frozenset[TaskState] = frozenset(
    s for s in TaskState if s not in LIVE_STATES and s.name != "UNSPECIFIED"
)
#: Priority names accepted by ``priority=`` and ``--priority``, lowest first.
PRIORITY_NAMES: tuple[str, ...] = tuple(p.name.lower() for p in Priority if p.name != "UNSPECIFIED")
#: State names accepted by ``list(states=...)`` and ``--state``.
STATE_NAMES: tuple[str, ...] = tuple(s.name.lower() for s in TaskState if s.name != "UNSPECIFIED")


def parse_id(value: object, what: str = "task") -> int:
    """A task's (or, ``what``, a schedule's) id from its text: a whole number from 1 that fits
    in 64 bits; ValueError otherwise."""
    text = str(value).strip()
    if text.isdecimal() and 0 < int(text) < 1 << 64:
        return int(text)
    raise ValueError(f"{value!r} is not a {what} id (ids are whole numbers from 1)")


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


def parse_time(value: datetime | float | str, now: datetime | None = None) -> datetime:
    """A point in time, as an aware datetime, from:

    * a datetime (a naive one is local time);
    * a number: seconds since the epoch (a string of digits too: ``"1767225600"``);
    * ``"HH:MM"`` or ``"HH:MM:SS"``: local time, today, or tomorrow when it has passed today;
    * an ISO 8601 date and time (``"2026-12-24T18:00"``, ``"2026-12-24 18:00+01:00"``): local
      time without an offset.

    ``now`` (aware; default: now) is what ``HH:MM`` counts from. Raises ValueError (TypeError
    for another type).
    """
    if isinstance(value, datetime):
        return value.astimezone()  # a naive datetime is local time
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not a time: {value!r}")
    text = value.strip() if isinstance(value, str) else value
    try:
        seconds = float(text)
    except ValueError:
        return _parse_clock(str(text), now)
    if seconds != seconds or abs(seconds) > 253_402_300_799:  # NaN, or past the year 9999
        raise ValueError(f"invalid time {value!r}: out of range")
    return datetime.fromtimestamp(seconds, UTC).astimezone()


def _parse_clock(text: str, now: datetime | None) -> datetime:
    """``HH:MM[:SS]`` (the next such time), or ISO 8601."""
    parts = text.split(":")
    if 2 <= len(parts) <= 3 and all(p.isdecimal() and len(p) <= 2 for p in parts):
        hour, minute, second = (int(p) for p in (*parts, "0")[:3])
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError(f"invalid time {text!r}: use HH:MM from 00:00 to 23:59")
        start = (now or datetime.now(UTC)).astimezone()
        at = start.replace(hour=hour, minute=minute, second=second, microsecond=0)
        if at <= start:  # passed today: tomorrow, at the same local time
            at = (at.replace(tzinfo=None) + timedelta(days=1)).astimezone()
        return at
    try:
        return datetime.fromisoformat(text).astimezone()
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use HH:MM, an ISO 8601 date and time "
            "(2026-12-24T18:00) or seconds since the epoch"
        ) from None


def _seconds(msg: Any, field: str) -> float | None:
    if not msg.HasField(field):
        return None
    d: duration_pb2.Duration = getattr(msg, field)
    return d.seconds + d.nanos / 1e9


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time(msg: Any, field: str) -> datetime | None:
    # Exactly ``Timestamp.ToDatetime(tzinfo=UTC)``, at a third of its cost: a wait maps
    # thousands of records.
    if not msg.HasField(field):
        return None
    ts = getattr(msg, field)
    return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


#: Enum members by proto number: a dict look-up is cheaper than ``TaskState(n)``.
_STATES: dict[int, TaskState] = {s.value: s for s in TaskState}
_PRIORITIES: dict[int, Priority] = {p.value: p for p in Priority}


def _state(number: int) -> TaskState:
    state = _STATES.get(number)
    return TaskState(number) if state is None else state


def _priority(number: int) -> Priority:
    priority = _PRIORITIES.get(number or Priority.NORMAL)
    return Priority(number) if priority is None else priority


Command: TypeAlias = str | Sequence[str]


def command_line(argv: Sequence[str], shell: bool) -> str:
    """A task's command as one line: a shell task's script as it is, else the argv
    shell-quoted; :func:`command_words` reads it back."""
    return argv[0] if shell and len(argv) == 1 else shlex.join(argv)


def command_words(line: str, *, script: bool) -> list[str]:
    """The argv of a command line as :func:`command_line` writes it: ``script`` when it is a
    shell task's one-word script (kept whole, but for the white space around it), else
    shell-quoted words (ValueError for an unbalanced quote). Empty for a blank line."""
    if script:
        return [line.strip()] if line.strip() else []
    return shlex.split(line)


class SpecOptions(TypedDict, total=False):
    """What a task runs, and how: the keywords of ``add_schedule`` (and, with
    :class:`TaskOptions`' own, of ``submit``); :func:`taskerctl._core.build_spec` says what each
    means."""

    priority: str | int
    timeout: float | str | None
    queue_timeout: float | str | None
    once: bool
    retries: int
    max_requeues: int | None
    env: Mapping[str, str] | None
    cwd: str | os.PathLike[str] | None
    stdin: bytes | str | None
    labels: Mapping[str, str] | None
    shell: bool
    group: str | None
    on_finish: str | None


class TaskOptions(SpecOptions, total=False):
    """The keywords of ``submit`` and its kin: :class:`SpecOptions`, and when the task may start
    (dependencies, a time); :func:`taskerctl._core.build_spec` says what each means."""

    after: int | Iterable[int] | None
    after_any: bool
    start_at: datetime | float | str | None
    delay: float | str | None


class ScheduleOptions(SpecOptions, total=False):
    """The keywords of ``add_schedule``: :class:`SpecOptions` for its tasks, and when they come:
    ``every`` so long or at each match of ``cron`` (one of them), the first at ``start_at``,
    an occurrence due while the previous task runs skipped unless ``overlap``."""

    every: float | str | None
    cron: str | None
    overlap: bool
    start_at: datetime | float | str | None


class EditOptions(TypedDict, total=False):
    """The keywords of ``edit`` (and of a ``restart`` spec given as a dict): each one given
    replaces that field of the task; see :func:`taskerctl._core.edit_spec`."""

    cmd: Command
    argv: Sequence[str]
    shell: bool
    env: Mapping[str, str] | None
    cwd: str | os.PathLike[str] | None
    stdin: bytes | str | None
    priority: str | int
    timeout: float | str | None
    queue_timeout: float | str | None
    labels: Mapping[str, str] | None
    retries: int
    max_requeues: int | None
    on_finish: str | None


#: ``on_result(result)``: called as each task of a wait finishes.
ResultCallback: TypeAlias = Callable[["TaskResult"], object]


class WaitOptions(TypedDict, total=False):
    """The keywords of ``wait_many`` and ``wait_all``.

    ``output``: the results carry the tasks' output (default False). ``timeout``: seconds the
    client waits at most (:class:`~taskerctl.DeadlineExceeded`); it never limits the tasks.
    ``on_result(result)``: called as each task finishes (in the calling thread, or task).
    """

    output: bool
    timeout: float | None
    on_result: ResultCallback | None


#: What ``submit_many`` accepts per item: a command, a ready ``TaskSpec``, or ``submit`` kwargs
#: (with ``cmd``) that override the call's shared options.
SpecLike: TypeAlias = str | Sequence[str] | pb.TaskSpec | Mapping[str, Any]


class RestartOptions(TypedDict, total=False):
    """The keywords of ``restart``: ``failed``, also every task that ended FAILED; ``specs``, one
    per id, what they run instead (see :func:`taskerctl._core.restart`)."""

    failed: bool
    specs: Iterable[SpecLike] | None


#: ``on_output(stream, data)``: ``stream`` is ``"stdout"`` or ``"stderr"``.
OutputCallback: TypeAlias = Callable[[str, bytes], object]


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
    #: Failed attempts run again at most this many times (``TaskSpec.retries``).
    retries: int
    #: The group whose queue and slots run it.
    group: str = "default"
    #: A stashed task's planned enqueue (``enqueue(ids, delay=...)``); None otherwise.
    enqueue_at: datetime | None = None
    #: Its dependencies (ids), whether any ending of theirs will do (else all must succeed),
    #: and those a WAITING task still waits on.
    after: tuple[int, ...] = ()
    after_any: bool = False
    waiting_on: tuple[int, ...] = ()
    #: Not started before this time (SCHEDULED until then); None: as soon as it can.
    start_at: datetime | None = None
    #: A shell command run after it ended (``TaskSpec.on_finish``); "" for none.
    on_finish: str = ""
    #: The task this one re-runs (``restart``), and the schedule that submitted it; None: none.
    restarted_from: int | None = None
    schedule_id: int | None = None
    #: Who submitted it: the name of the token of a call over TCP; "" over the Unix socket.
    submitted_by: str = ""
    #: The Dask worker that runs (ran) its last attempt; "" when taskerd ran it itself.
    node: str = ""

    @classmethod
    def from_proto(cls, task: pb.Task) -> TaskResult:
        """Build from a ``pb.Task``."""
        spec = task.spec
        return cls(
            id=task.id,
            state=_state(task.state),
            argv=tuple(spec.argv),
            shell=spec.shell,
            priority=_priority(spec.priority),
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
            retries=spec.retries,
            group=task.group or spec.group or "default",
            enqueue_at=_time(task, "enqueue_at"),
            after=tuple(spec.after),
            after_any=spec.after_any,
            waiting_on=tuple(task.waiting_on),
            start_at=_time(spec, "start_at"),
            on_finish=spec.on_finish,
            restarted_from=task.restarted_from or None,
            schedule_id=task.schedule_id or None,
            submitted_by=task.submitted_by,
            node=task.node,
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
        return command_line(self.argv, self.shell)

    @property
    def exit_status(self) -> int:
        """The status ``taskerctl`` exits with for this task.

        ===========================  =====
        SUCCEEDED                    0
        FAILED, exited with N        N
        FAILED, killed by signal N   128+N
        FAILED, spawn failed         127
        FAILED, no status of its own 122 (interrupted in its last allowed attempt, ...)
        TIMED_OUT                    124
        CANCELLED                    125
        LOST                         123
        not ended: queued, running,  1
        paused, stashed, waiting or
        scheduled
        ===========================  =====

        A task that has not ended has no outcome yet: its status is 1 whatever holds it.
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
            if self.error.startswith("spawn failed"):
                return 127
            return 122
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
    """Something that happened to a task: ``kind`` is queued, started, output, retrying,
    state_changed (paused, resumed, stashed, waiting, scheduled: ``state`` and ``reason``) or
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
    state: TaskState | None = None

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
            base["priority"] = _priority(ev.queued.priority)
        elif kind == "started":
            base.update(pid=ev.started.pid, worker=ev.started.worker, attempt=ev.started.attempt)
        elif kind == "output":
            base["stream"] = "stderr" if ev.output.stream == pb.OUTPUT_STREAM_STDERR else "stdout"
            base["data"] = ev.output.data
        elif kind == "retrying":
            base.update(attempt=ev.retrying.attempt, reason=ev.retrying.reason)
        elif kind == "finished":
            base["result"] = TaskResult.from_proto(ev.finished.task)
        elif kind == "state_changed":
            base.update(state=_state(ev.state_changed.state), reason=ev.state_changed.reason)
        return cls(**base)


def _fields_from(cls: Any, msg: Any, durations: Iterable[str] = ()) -> dict[str, Any]:
    durs = set(durations)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        out[f.name] = _seconds(msg, f.name) if f.name in durs else getattr(msg, f.name)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    """A worker of the Dask cluster behind a group on Dask (``tasker.v1.Node``)."""

    name: str
    address: str
    slots: int


@dataclasses.dataclass(frozen=True, slots=True)
class Group:
    """A named queue with its own slots, and its tasks now (``tasker.v1.Group``)."""

    name: str
    #: Base slots, and the burst ceiling.
    parallel: int
    max_parallel: int
    #: Starts no task while paused.
    paused: bool
    running: int
    queued: int
    paused_tasks: int
    stashed: int
    #: Slots alive now, and how many of them are burst slots.
    workers: int
    burst_workers: int
    #: Tasks per second: submitted to the group, and started by it.
    arrival_rate: float
    drain_rate: float
    max_queue: int

    @classmethod
    def from_proto(cls, msg: pb.Group) -> Group:
        """Build from a ``pb.Group``."""
        return cls(**_fields_from(cls, msg))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


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
    #: Tasks paused and stashed now.
    paused: int = 0
    stashed: int = 0
    #: Each group (only the one asked for, with ``stats(group=...)``).
    groups: tuple[Group, ...] = ()
    #: Tasks waiting for their dependencies, and scheduled for later, now.
    waiting: int = 0
    scheduled: int = 0
    #: The Dask cluster's workers, when a group runs on one.
    nodes: tuple[Node, ...] = ()

    @classmethod
    def from_proto(cls, msg: pb.StatsResponse) -> Stats:
        """Build from a ``pb.StatsResponse``."""
        fields = _fields_from(cls, msg, ["uptime"])
        fields["groups"] = tuple(Group.from_proto(g) for g in msg.groups)
        fields["nodes"] = tuple(Node(n.name, n.address, n.slots) for n in msg.nodes)
        return cls(**fields)

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


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring schedule (``tasker.v1.Schedule``): a new task from its spec at every
    occurrence, ``every`` so many seconds or at each match of ``cron``."""

    id: int
    argv: tuple[str, ...]
    shell: bool
    group: str
    labels: dict[str, str]
    #: The period in seconds, or a cron expression in local time; one of them is set.
    every: float | None
    cron: str
    #: Also submit an occurrence while the previous one runs (else it is skipped).
    overlap: bool
    #: When the next occurrence is due.
    next_at: datetime | None
    #: The task of the last occurrence (None: none yet); occurrences submitted and skipped.
    last_task_id: int | None
    submitted: int
    skipped: int
    created_at: datetime | None

    @classmethod
    def from_proto(cls, msg: pb.Schedule) -> Schedule:
        """Build from a ``pb.Schedule``."""
        return cls(
            id=msg.id,
            argv=tuple(msg.task.argv),
            shell=msg.task.shell,
            group=msg.task.group or "default",
            labels=dict(msg.task.labels),
            every=_seconds(msg, "every"),
            cron=msg.cron,
            overlap=msg.overlap,
            next_at=_time(msg, "next_at"),
            last_task_id=msg.last_task_id or None,
            submitted=msg.submitted,
            skipped=msg.skipped,
            created_at=_time(msg, "created_at"),
        )

    @property
    def command(self) -> str:
        """The command as one shell-quoted line."""
        return command_line(self.argv, self.shell)

    @property
    def when(self) -> str:
        """``every 5m`` or ``cron */5 * * * *``."""
        return f"cron {self.cron}" if self.cron else f"every {fmt_seconds(self.every)}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["argv"] = list(self.argv)
        for key in ("next_at", "created_at"):
            d[key] = None if d[key] is None else d[key].isoformat()
        return d


def fmt_seconds(value: float | None) -> str:
    """``format_duration`` that shows ``-`` for unset."""
    return "-" if value is None else format_duration(value)
