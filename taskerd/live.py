"""What the daemon holds in memory for a task that is queued or running, and the records and
events built from it.

For a task in memory, memory is the truth: the journal may lag behind it (RUNNING is written
late for short tasks) or run ahead of it (a terminal state committed but not yet taken in).
A task leaves memory in the same loop step as its terminal state is counted and announced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from tasker.v1 import tasker_pb2 as pb
from taskerd import engine
from taskerd.groups import Group
from taskerd.runner import Capture, Exit, Spawned
from taskerd.store import task_record

State: TypeAlias = pb.TaskState.ValueType
QUEUED = pb.TASK_STATE_QUEUED
RUNNING = pb.TASK_STATE_RUNNING
SUCCEEDED = pb.TASK_STATE_SUCCEEDED
FAILED = pb.TASK_STATE_FAILED
TIMED_OUT = pb.TASK_STATE_TIMED_OUT
CANCELLED = pb.TASK_STATE_CANCELLED
LOST = pb.TASK_STATE_LOST
PAUSED = pb.TASK_STATE_PAUSED
STASHED = pb.TASK_STATE_STASHED
WAITING = pb.TASK_STATE_WAITING
SCHEDULED = pb.TASK_STATE_SCHEDULED
TERMINAL = frozenset((SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, LOST))
#: The live states: a task in one of them is in memory.
LIVE = frozenset((QUEUED, RUNNING, PAUSED, STASHED, WAITING, SCHEDULED))


def state_name(state: int) -> str:
    """A state's name without its prefix ("SUCCEEDED"), or its number if the proto names none."""
    try:
        return pb.TaskState.Name(state)[11:]  # type: ignore[arg-type]
    except ValueError:
        return str(state)


#: Live states held out of the queue: nothing of them runs, and room in the queue is kept.
HELD = frozenset((STASHED, WAITING, SCHEDULED))
#: Live states in which an attempt runs (its processes exist, or are being spawned).
ACTIVE = frozenset((RUNNING, PAUSED))

#: The engine's outcome for a task: its result, or the error it ended with.
Outcome: TypeAlias = tuple[Exit | None, BaseException | None]


@dataclass(slots=True)
class Extra:
    """What few live tasks have, kept apart so that a plain task pays one pointer for all of it
    (a million queued tasks are held in memory)."""

    # A stashed task's planned Enqueue, or a scheduled one's start; the timer that does it.
    enqueue_at: float | None = None
    start_at: float | None = None  # TaskSpec.start_at
    timer: asyncio.TimerHandle | None = None
    after_any: bool = False  # its dependencies release it however they end
    on_finish: str = ""  # its own on-finish hook
    restarted_from: int = 0
    schedule_id: int = 0
    submitted_by: str = ""  # the name of the token that submitted it ("": the Unix socket)
    queue_timeout: float | None = None  # TaskSpec.queue_timeout
    run_task: asyncio.Task[None] | None = None  # a Run: started at once, bypassing the queue
    ended: asyncio.Future[None] | None = None  # made by whoever waits for the end


@dataclass(slots=True, eq=False)
class Live:
    """A task that is live: queued, running, paused or stashed."""

    id: int
    group: Group
    priority: int
    queued_at: float
    timeout: float | None
    attempts: int
    once: bool = False
    labels: Mapping[str, str] | None = None
    state: State = QUEUED
    seq: int = 0
    handle: engine.TaskHandle[Exit] | None = None
    pid: int = 0
    worker: int = 0
    started_at: float | None = None
    capture: Capture | None = None
    run: Spawned | None = None  # the current attempt's main process, its token and cgroup
    started_write: asyncio.TimerHandle | None = None
    # The spec as submitted, kept while the queue is short to spare a journal read at start;
    # ``env`` is the request's shared environment, for a spec without its own.
    spec: pb.TaskSpec | None = None
    env: Mapping[str, str] | None = None
    cancel_reason: str = ""  # set when a client cancelled it: the sentence it ends with
    # How the task ends: the engine's outcome, and whether an attempt's process may still run.
    outcome: Outcome | None = None
    in_attempt: bool = False
    finishing: bool = False
    extra: Extra | None = None  # what few tasks have, in one object (see ``more``)

    def more(self) -> Extra:
        """The task's :class:`Extra`, made on first use."""
        if self.extra is None:
            self.extra = Extra()
        return self.extra

    @property
    def queue_timeout(self) -> float | None:
        """How long it may wait for a start (TaskSpec.queue_timeout)."""
        return self.extra.queue_timeout if self.extra is not None else None

    @queue_timeout.setter
    def queue_timeout(self, value: float | None) -> None:
        if value is not None or self.extra is not None:
            self.more().queue_timeout = value

    @property
    def run_task(self) -> asyncio.Task[None] | None:
        """A Run's own task: started at once, bypassing the queue (None for queued tasks)."""
        return self.extra.run_task if self.extra is not None else None

    @run_task.setter
    def run_task(self, value: asyncio.Task[None] | None) -> None:
        self.more().run_task = value

    @property
    def ended(self) -> asyncio.Future[None] | None:
        """Made by whoever waits for the task's end (Cancel); set when it leaves memory."""
        return self.extra.ended if self.extra is not None else None

    @ended.setter
    def ended(self, value: asyncio.Future[None] | None) -> None:
        self.more().ended = value

    @property
    def on_finish(self) -> str:
        """The task's own on-finish hook ("" for none)."""
        return self.extra.on_finish if self.extra is not None else ""

    def matches(
        self, states: frozenset[int], labels: Mapping[str, str], group: Group | None = None
    ) -> bool:
        """Whether a List with these filters (empty: any) selects this task."""
        if states and self.state not in states:
            return False
        if group is not None and self.group is not group:
            return False
        if labels:
            own = self.labels or {}
            return all(own.get(k) == v for k, v in labels.items())
        return True


def record(live: Live, row: pb.Task, *, output: bool = False) -> pb.Task:
    """The task as memory knows it, with the spec of its journal ``row``."""
    running = live.state in ACTIVE and live.started_at is not None
    task = task_record(
        live.id,
        state=live.state,
        queued_at=live.queued_at,
        started_at=live.started_at if running else None,
        ended_at=None,
        attempts=live.attempts,
        pid=live.pid if running else 0,
        worker=live.worker if running else 0,
        exit_code=None,
        signal=None,
        error="",
        spec=row.spec,
    )
    task.group = live.group.name
    task.restarted_from, task.schedule_id = row.restarted_from, row.schedule_id
    task.submitted_by = row.submitted_by
    if running and live.run is not None:
        task.node = live.run.node
    extra = live.extra
    if extra is not None and extra.enqueue_at is not None and live.state == STASHED:
        task.enqueue_at.FromNanoseconds(int(extra.enqueue_at * 1e9))
    if output and running and live.capture is not None:
        output_into(task, live.capture)
    return task


_HELD_REASON = {
    STASHED: "submitted stashed",
    WAITING: "waiting for its dependencies",
    SCHEDULED: "scheduled",
}


def held_reason(state: State) -> str:
    """Why a held task is not queued, for its ``state_changed`` event."""
    return _HELD_REASON[state]


def output_into(task: pb.Task, capture: Capture) -> None:
    """Copy what ``capture`` holds into ``task``'s output fields."""
    task.stdout, task.stderr = bytes(capture.stdout), bytes(capture.stderr)
    task.stdout_truncated = capture.stdout_truncated
    task.stderr_truncated = capture.stderr_truncated


def event(task_id: int, seq: int, **kind: Any) -> pb.TaskEvent:
    """A TaskEvent stamped now."""
    ev = pb.TaskEvent(task_id=task_id, seq=seq, **kind)
    ev.time.FromNanoseconds(time.time_ns())
    return ev


def backlog(live: Live, *, output: bool) -> list[pb.TaskEvent]:
    """Events a late watcher of a live task missed, rebuilt from what the daemon holds."""
    if live.state in HELD:
        held = pb.TaskEvent.StateChanged(state=live.state, reason=_HELD_REASON[live.state])
        return [event(live.id, 1, state_changed=held)]
    events = [event(live.id, 1, queued=pb.TaskEvent.Queued(priority=live.priority))]  # type: ignore[arg-type]
    if live.state in ACTIVE and live.pid:
        started = pb.TaskEvent.Started(pid=live.pid, worker=live.worker, attempt=live.attempts)
        events.append(event(live.id, 2, started=started))
        if output and live.capture is not None:
            for stream, data in (
                (pb.OUTPUT_STREAM_STDOUT, live.capture.stdout),
                (pb.OUTPUT_STREAM_STDERR, live.capture.stderr),
            ):
                if data:
                    out = pb.TaskEvent.Output(stream=stream, data=bytes(data))
                    events.append(event(live.id, len(events) + 1, output=out))
        if live.state == PAUSED:
            paused = pb.TaskEvent.StateChanged(state=PAUSED, reason="paused")
            events.append(event(live.id, len(events) + 1, state_changed=paused))
    return events
