"""The priority queue: one deque per level, O(1) counters and lazy skipping of dead entries."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from taskerd.engine.config import Priority
from taskerd.engine.handle import IN_QUEUE, NOWHERE, QUEUED, TaskHandle

LEVELS = tuple(Priority)
TOP = max(LEVELS)


class JobQueue:
    """Queued tasks by priority: higher level first, FIFO within a level.

    Removing a task (cancel, queue timeout) only updates the counters via :meth:`forget`; its
    entry is skipped when it reaches the front. With ``aging``, a task counts one level higher
    for every ``aging`` seconds it has waited since submission (capped at CRITICAL).
    """

    __slots__ = ("_aging", "_levels", "counts", "size")

    def __init__(self, aging: float | None) -> None:
        self._aging = aging
        self._levels: list[deque[TaskHandle[Any]]] = [deque() for _ in LEVELS]
        self.counts = [0] * len(LEVELS)
        self.size = 0

    def push(self, job: TaskHandle[Any], *, front: bool = False) -> None:
        """Add a QUEUED task at the back (or front, for retries) of its level."""
        job._loc = IN_QUEUE
        level = self._levels[job._priority]
        if front:
            level.appendleft(job)
        else:
            level.append(job)
        self.counts[job._priority] += 1
        self.size += 1

    def forget(self, job: TaskHandle[Any]) -> None:
        """Account for a queued task that left the queue otherwise (its entry is skipped)."""
        job._loc = NOWHERE
        self.counts[job._priority] -= 1
        self.size -= 1

    def pop(self) -> TaskHandle[Any] | None:
        """Remove and return the next task to start, or None."""
        if not self.size:
            return None
        if self._aging is None:
            for priority in (3, 2, 1, 0):
                level = self._levels[priority]
                while level:
                    job = level.popleft()
                    if job._state is QUEUED and job._loc == IN_QUEUE:
                        self.forget(job)
                        return job
            return None
        return self._pop_aged(time.monotonic())

    def pop_thread_task(self) -> TaskHandle[Any] | None:
        """Like :meth:`pop`, but only if the next task is a thread task (never with aging)."""
        if not self.size or self._aging is not None:
            return None
        for priority in (3, 2, 1, 0):
            level = self._levels[priority]
            while level:
                job = level[0]
                if job._state is QUEUED and job._loc == IN_QUEUE:
                    if job._is_async:
                        return None
                    level.popleft()
                    self.forget(job)
                    return job
                level.popleft()
        return None

    def _pop_aged(self, now: float) -> TaskHandle[Any] | None:
        aging = self._aging
        assert aging is not None
        best: deque[TaskHandle[Any]] | None = None
        best_key = (-1, 0.0)
        for priority in (3, 2, 1, 0):
            level = self._levels[priority]
            while level and not (level[0]._state is QUEUED and level[0]._loc == IN_QUEUE):
                level.popleft()
            if level:
                head = level[0]
                effective = min(TOP, priority + int((now - head._submitted) / aging))
                key = (effective, -head._submitted)
                if key > best_key:
                    best, best_key = level, key
        if best is None:
            return None
        job = best.popleft()
        self.forget(job)
        return job

    def move(self, jobs: list[TaskHandle[Any]], priority: Priority) -> None:
        """Move live queued ``jobs`` (distinct, none at ``priority`` yet) to ``priority``.

        They are placed as if submitted at that level at their original time: by task id
        among the level's entries, except that retries at the level's front stay first. Their
        old entries are removed, not left dead (a move back must not revive them); the levels
        touched lose their dead entries too. O(n + k log k) for n entries and k jobs.
        """
        if not jobs:
            return
        moving = set(jobs)
        counts = self.counts
        for source in {job._priority for job in jobs}:
            level = self._levels[source]
            kept = [job for job in level if job not in moving and _live(job)]
            level.clear()
            level.extend(kept)
        for job in jobs:
            counts[job._priority] -= 1
            job._priority = priority
        counts[priority] += len(jobs)
        target = self._levels[priority]
        existing = [job for job in target if _live(job)]
        incoming = sorted(jobs, key=_task_id)
        merged: list[TaskHandle[Any]] = []
        i = 0
        while i < len(existing) and existing[i]._attempt > 0:  # retries at the front
            merged.append(existing[i])
            i += 1
        j = 0
        for job in existing[i:]:
            while j < len(incoming) and incoming[j].id < job.id:
                merged.append(incoming[j])
                j += 1
            merged.append(job)
        merged.extend(incoming[j:])
        target.clear()
        target.extend(merged)

    def drain(self) -> Iterator[TaskHandle[Any]]:
        """Remove and yield every live queued task (for stop and kill)."""
        for level in reversed(self._levels):
            while level:
                job = level.popleft()
                if job._state is QUEUED and job._loc == IN_QUEUE:
                    self.forget(job)
                    yield job

    def by_priority(self) -> dict[Priority, int]:
        """Live queued counts per level."""
        return {p: self.counts[p] for p in LEVELS}


def _live(job: TaskHandle[Any]) -> bool:
    return job._state is QUEUED and job._loc == IN_QUEUE


def _task_id(job: TaskHandle[Any]) -> int:
    return job.id
