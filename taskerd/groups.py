"""Groups: named queues, each with its own slots, its own engine and its own counts.

Every task belongs to one group; ``default`` always exists. A group is one
:class:`~taskerd.engine.TaskManager`: its base workers are the group's ``parallel`` slots and
its burst ceiling ``max_parallel``, so priorities, FIFO, timeouts, ``max_queue``, at-most-once
and the engine's metrics hold per group. There is no ceiling over all groups: each group's
slots are its own (``default`` takes the daemon's ``workers`` and ``max_workers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from tasker.v1 import tasker_pb2 as pb
from taskerd import engine
from taskerd.config import DEFAULT_GROUP, GROUP_NAME, MAX_PARALLEL
from taskerd.dask.spec import Executor
from taskerd.errors import InvalidArgument
from taskerd.runner import Exit

__all__ = ["DEFAULT_GROUP", "MAX_PARALLEL", "Counters", "Group", "check_name", "check_slots"]

State: TypeAlias = pb.TaskState.ValueType
_TERMINAL = (
    pb.TASK_STATE_SUCCEEDED,
    pb.TASK_STATE_FAILED,
    pb.TASK_STATE_TIMED_OUT,
    pb.TASK_STATE_CANCELLED,
    pb.TASK_STATE_LOST,
)


@dataclass(slots=True)
class Counters:
    """Tasks in memory by state; terminal states reached and submissions rejected since start."""

    queued: int = 0
    running: int = 0
    paused: int = 0
    stashed: int = 0
    waiting: int = 0
    scheduled: int = 0
    by_state: dict[State, int] = field(default_factory=lambda: dict.fromkeys(_TERMINAL, 0))
    rejected: int = 0
    retried: int = 0  # failed attempts run again (``TaskSpec.retries``)

    def add(self, state: State, n: int) -> None:
        """Count ``n`` tasks into a live state (negative: out of it)."""
        if state == pb.TASK_STATE_QUEUED:
            self.queued += n
        elif state == pb.TASK_STATE_RUNNING:
            self.running += n
        elif state == pb.TASK_STATE_PAUSED:
            self.paused += n
        elif state == pb.TASK_STATE_STASHED:
            self.stashed += n
        elif state == pb.TASK_STATE_WAITING:
            self.waiting += n
        elif state == pb.TASK_STATE_SCHEDULED:
            self.scheduled += n


@dataclass(slots=True, eq=False)
class Group:
    """A named queue with its own slots (its engine) and counts."""

    name: str
    engine: engine.TaskManager[str, Exit]
    max_queue: int
    paused: bool = False
    counters: Counters = field(default_factory=Counters)
    declared: bool = False  # its slots come from the configuration (applied at each start)
    removing: bool = False  # RemoveGroup is ending its tasks: it takes no new one
    executor: Executor | None = None  # where its attempts run when not here (Dask)

    @property
    def parallel(self) -> int:
        """Base slots."""
        return self.engine.stats().base_workers

    @property
    def max_parallel(self) -> int:
        """The burst ceiling."""
        return self.engine.stats().max_workers

    def unfinished(self) -> int:
        """Tasks of the group that have not ended."""
        c = self.counters
        return c.queued + c.running + c.paused + c.stashed + c.waiting + c.scheduled

    def record(self) -> pb.Group:
        """The group as the API shows it."""
        s = self.engine.stats()
        c = self.counters
        return pb.Group(
            name=self.name,
            parallel=s.base_workers,
            max_parallel=s.max_workers,
            paused=self.paused,
            running=c.running,
            queued=c.queued,
            paused_tasks=c.paused,
            stashed=c.stashed,
            workers=s.active_workers,
            burst_workers=s.burst_workers,
            arrival_rate=s.arrival_rate,
            drain_rate=s.drain_rate,
            max_queue=self.max_queue,
        )


def check_name(field: str, name: str) -> str:
    """A group name as given (empty: ``default``); INVALID_ARGUMENT naming ``field`` if bad."""
    if not name:
        return DEFAULT_GROUP
    if GROUP_NAME.fullmatch(name) is None:
        raise InvalidArgument(field, "a group name is 1 to 64 letters, digits, '-', '_' or '.'")
    return name


def check_slots(parallel: int, max_parallel: int) -> None:
    """INVALID_ARGUMENT unless 1 <= parallel <= max_parallel <= MAX_PARALLEL."""
    if not 1 <= parallel <= MAX_PARALLEL:
        raise InvalidArgument("parallel", f"must be between 1 and {MAX_PARALLEL}")
    if not parallel <= max_parallel <= MAX_PARALLEL:
        raise InvalidArgument("max_parallel", f"must be between parallel and {MAX_PARALLEL}")
