"""Recurring schedules: a new task from a schedule's spec at each occurrence.

An occurrence is due every ``every`` seconds (on a fixed grid from the first one), or at each
match of a cron expression in local time (``croniter``). Each occurrence submits a task, linked
to the schedule (``Task.schedule_id``), through the same admission as any Submit. Without
``overlap``, an occurrence that comes while the previous occurrence's task has not ended is
skipped, not piled up (``Schedule.skipped`` counts it). The next time is journaled before an
occurrence's task is submitted: a crash in between loses that occurrence, never doubles it.
Occurrences missed while the daemon was down are not caught up one by one: the first due one
runs at start, then the grid goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tasker.v1 import tasker_pb2 as pb
from taskerd import validate
from taskerd.core import Core, journal_failure
from taskerd.errors import InvalidArgument, RequestError
from taskerd.store import JournalError

log = logging.getLogger("taskerd")

MIN_EVERY = 1.0  # seconds
MAX_EVERY = 366 * 86400.0


class ScheduleNotFound(RequestError):
    """No schedule has that id."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, schedule_id: int) -> None:
        super().__init__(f"schedule {schedule_id} not found")


def next_cron(expression: str, after: float) -> float:
    """The first match of a cron expression (local time) after ``after`` (epoch seconds)."""
    from croniter import croniter

    start = datetime.fromtimestamp(after).astimezone()
    return float(croniter(expression, start).get_next(float))


def check_cron(expression: str) -> None:
    """INVALID_ARGUMENT "cron: ..." unless croniter accepts the expression."""
    from croniter import croniter

    if not expression.strip() or not croniter.is_valid(expression):
        raise InvalidArgument("cron", f"not a cron expression: {expression!r}")


@dataclass(slots=True, eq=False)
class _Schedule:
    id: int
    spec: pb.TaskSpec
    every: float | None
    cron: str
    overlap: bool
    next_at: float
    last_task: int
    submitted: int
    skipped: int
    created_at: float
    timer: asyncio.TimerHandle | None = None

    def following(self, now: float) -> float:
        """The next occurrence after this one (and after ``now``)."""
        if self.every is not None:
            at = self.next_at + self.every
            if at <= now:  # missed ones are not caught up: next on the grid after now
                at += ((now - at) // self.every + 1) * self.every
            return at
        return next_cron(self.cron, max(now, self.next_at))

    def record(self) -> pb.Schedule:
        made = pb.Schedule(
            id=self.id, task=self.spec, cron=self.cron, overlap=self.overlap,
            last_task_id=self.last_task, submitted=self.submitted, skipped=self.skipped,
        )  # fmt: skip
        if self.every is not None:
            made.every.FromNanoseconds(int(self.every * 1e9))
        made.next_at.FromNanoseconds(int(self.next_at * 1e9))
        made.created_at.FromNanoseconds(int(self.created_at * 1e9))
        return made


class Scheduler:
    """The daemon's schedules, each with a timer for its next occurrence."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._schedules: dict[int, _Schedule] = {}
        self._firing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self) -> None:
        """Load the journal's schedules and arm them (a due one fires at once)."""
        for row in await self.core.store.schedules():
            sched = _Schedule(
                row.id, row.spec, row.every, row.cron, row.overlap, row.next_at,
                row.last_task, row.submitted, row.skipped, row.created_at,
            )  # fmt: skip
            self._schedules[sched.id] = sched
            self._arm(sched)

    def list(self) -> list[pb.Schedule]:
        """Every schedule, by id."""
        return [self._schedules[i].record() for i in sorted(self._schedules)]

    async def add(self, request: pb.AddScheduleRequest) -> pb.Schedule:
        """Validate and journal a new schedule, then arm it."""
        spec = request.task
        validate.spec(spec, "task")
        self.core.group(spec.group, "task.group")
        for name in ("after", "after_tasks"):
            if getattr(spec, name):
                raise InvalidArgument(f"task.{name}", "a schedule's tasks depend on nothing")
        if spec.HasField("start_at"):
            raise InvalidArgument("task.start_at", "give the schedule's start_at instead")
        every: float | None = None
        if request.HasField("every") == bool(request.cron):
            raise InvalidArgument("every", "give either every or cron")
        now = time.time()
        if request.HasField("every"):
            every = validate.delay("every", request.every)
            if not MIN_EVERY <= every <= MAX_EVERY:
                raise InvalidArgument("every", "must be between 1s and 366 days")
        else:
            check_cron(request.cron)
        if request.HasField("start_at"):
            first = validate.timestamp("start_at", request.start_at)
        else:
            first = now if every is not None else next_cron(request.cron, now)
        try:
            schedule_id = await self.core.store.add_schedule(
                spec, every=every, cron=request.cron, overlap=request.overlap, next_at=first,
                now=now,
            )  # fmt: skip
        except JournalError as exc:
            raise journal_failure(exc) from None
        sched = _Schedule(schedule_id, spec, every, request.cron, request.overlap, first, 0, 0,
                          0, now)  # fmt: skip
        self._schedules[schedule_id] = sched
        self._arm(sched)
        log.info("schedule %d added: %s", schedule_id, " ".join(spec.argv)[:80])
        return sched.record()

    async def remove(self, schedule_id: int) -> None:
        """Remove a schedule (its tasks already submitted go on)."""
        sched = self._schedules.get(schedule_id)
        if sched is None:
            raise ScheduleNotFound(schedule_id)
        try:
            await self.core.store.delete_schedule(schedule_id)
        except JournalError as exc:
            raise journal_failure(exc) from None
        self._schedules.pop(schedule_id, None)
        if sched.timer is not None:
            sched.timer.cancel()
        log.info("schedule %d removed", schedule_id)

    async def close(self) -> None:
        """Stop every timer, and wait for occurrences being submitted."""
        self._closed = True
        for sched in self._schedules.values():
            if sched.timer is not None:
                sched.timer.cancel()
        if self._firing:
            await asyncio.gather(*self._firing, return_exceptions=True)

    def _arm(self, sched: _Schedule) -> None:
        if self._closed:
            return
        delay = max(0.0, sched.next_at - time.time())
        sched.timer = asyncio.get_running_loop().call_later(delay, self._fire, sched)

    def _fire(self, sched: _Schedule) -> None:
        sched.timer = None
        if self._closed or self._schedules.get(sched.id) is not sched:
            return
        task = asyncio.get_running_loop().create_task(self._occur(sched))
        self._firing.add(task)
        task.add_done_callback(self._firing.discard)

    async def _occur(self, sched: _Schedule) -> None:
        """One occurrence: submit a task (or skip it), journal the next time, arm again."""
        core = self.core
        now = time.time()
        due, sched.next_at = sched.next_at, sched.following(now)
        busy = not sched.overlap and sched.last_task in core.live
        submitted = skipped = 0
        try:
            await core.store.update_schedule(sched.id, next_at=sched.next_at)
            if busy:
                skipped = 1
                log.info("schedule %d: occurrence skipped, task %d has not ended",
                         sched.id, sched.last_task)  # fmt: skip
            else:
                [sched.last_task] = await core.submit([sched.spec], schedule_id=sched.id)
                submitted = 1
        except (RequestError, JournalError) as exc:  # a full queue, a shutdown, the journal
            skipped = 1
            log.warning("schedule %d: occurrence at %s skipped: %s", sched.id,
                        _when(due), exc)  # fmt: skip
        sched.submitted += submitted
        sched.skipped += skipped
        with contextlib.suppress(JournalError):
            await core.store.update_schedule(
                sched.id, next_at=sched.next_at, last_task=sched.last_task,
                submitted_inc=submitted, skipped_inc=skipped,
            )  # fmt: skip
        if self._schedules.get(sched.id) is sched:
            self._arm(sched)


def _when(at: float) -> str:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(at * 1e9))
    return stamp.ToJsonString()
