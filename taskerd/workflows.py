"""Dependencies between tasks: what each WAITING task waits for, and what an end releases.

A waiting task is held out of the queue (its room in the queue kept) until every dependency
has ended: it is queued once they all SUCCEEDED (or ended at all, with ``after_any``), and it
ends CANCELLED "dependency N ended FAILED" as soon as one of them ends any other way; its own
dependants then follow in turn. Each end costs O(its dependants), so a chain of 10,000 tasks and
a fan-in of 10,000 into one are linear.

Cycles cannot form: a task may only depend on tasks that exist when it is submitted, or on
earlier tasks of its own request, and dependencies never change afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from tasker.v1 import tasker_pb2 as pb
from taskerd.live import Live, state_name

SUCCEEDED = pb.TASK_STATE_SUCCEEDED


class Holds:
    """The dependency graph of the live WAITING tasks.

    ``release(live)`` is called for a task whose dependencies are all satisfied, and
    ``fail(live, reason)`` for one whose dependency ended otherwise; both on the loop, in the
    step in which the deciding end is known.
    """

    __slots__ = ("_dependents", "_fail", "_pending", "_release")

    def __init__(self, release: Callable[[Live], None], fail: Callable[[Live, str], None]) -> None:
        self._pending: dict[int, set[int]] = {}  # waiting task -> dependencies not ended
        self._dependents: dict[int, list[Live]] = {}  # dependency -> tasks waiting on it
        self._release = release
        self._fail = fail

    def __contains__(self, task_id: int) -> bool:
        return task_id in self._pending

    def waiting_on(self, task_id: int) -> list[int]:
        """The dependencies of a waiting task that have not ended, in id order."""
        return sorted(self._pending.get(task_id, ()))

    def add(self, live: Live, live_deps: Iterable[int], ended: Iterable[tuple[int, int]]) -> None:
        """A task waits for ``live_deps`` (live now: their ends are told to :meth:`ended`),
        after the dependencies in ``ended`` (id, terminal state) that had already ended."""
        pending = set(live_deps)
        pending.discard(live.id)
        self._pending[live.id] = pending
        for dep in pending:
            self._dependents.setdefault(dep, []).append(live)
        for dep, state in ended:
            if not self._satisfied(live, dep, state):
                return
        if not pending:
            self._done(live)

    def resolve(self, live: Live, ended: Iterable[tuple[int, int]]) -> None:
        """Dependencies of a waiting task that were found ended since :meth:`add`."""
        if live.id in self._pending:
            for dep, state in ended:
                self._pending[live.id].discard(dep)
                if not self._satisfied(live, dep, state):
                    return
            if not self._pending.get(live.id, True):
                self._done(live)

    def ended(self, task_id: int, state: int) -> None:
        """Any task ended: its waiting dependants go on, or end."""
        dependants = self._dependents.pop(task_id, None)
        if not dependants:
            return
        for live in dependants:
            pending = self._pending.get(live.id)
            if pending is None:
                continue  # ended meanwhile (cancelled, or another dependency failed)
            pending.discard(task_id)
            if self._satisfied(live, task_id, state) and not pending:
                self._done(live)

    def forget(self, live: Live) -> None:
        """A waiting task ended (or left the graph): drop what it waited for."""
        pending = self._pending.pop(live.id, None)
        for dep in pending or ():
            waiting = self._dependents.get(dep)
            if waiting is not None:
                with contextlib.suppress(ValueError):
                    waiting.remove(live)
                if not waiting:
                    del self._dependents[dep]

    def _satisfied(self, live: Live, dep: int, state: int) -> bool:
        """Whether ``dep`` ending in ``state`` lets ``live`` go on; if not, it ends."""
        if state == SUCCEEDED or (live.extra is not None and live.extra.after_any):
            return True
        self.forget(live)
        self._fail(live, f"cancelled: dependency {dep} ended {state_name(state)}")
        return False

    def _done(self, live: Live) -> None:
        self.forget(live)
        self._release(live)
