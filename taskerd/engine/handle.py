"""The task record: :class:`TaskHandle` (returned to callers) and :class:`TaskState`."""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from taskerd.engine.config import Priority

if TYPE_CHECKING:
    from asyncio import TimerHandle

    from taskerd.engine.context import TaskContext
    from taskerd.engine.manager import TaskManager, Worker

E = TypeVar("E")
_EVENT_LOCK = threading.Lock()

# Where a QUEUED task sits.
IN_QUEUE = 0
IN_WAITLIST = 1  # waiting for room in a full queue (block=True)
HELD = 2  # kept by a worker for a retry because the queue was full
NOWHERE = 3


class TaskState(enum.IntEnum):
    """Lifecycle of a task. States after RUNNING are terminal."""

    QUEUED = 0
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    TIMED_OUT = 4
    CANCELLED = 5


QUEUED = TaskState.QUEUED
RUNNING = TaskState.RUNNING


class TaskHandle(Generic[E]):
    """A submitted task: await it, or use :meth:`result` from another thread.

    Awaiting a handle never cancels the task; :meth:`cancel` does. The handle is also the
    engine's internal record of the task (hence the private slots).
    """

    __slots__ = (
        "_attempt",
        "_btimer",
        "_callbacks",
        "_ctx",
        "_enqueued",
        "_error",
        "_event",
        "_fn",
        "_is_async",
        "_loc",
        "_manager",
        "_max_retries",
        "_once",
        "_priority",
        "_qtimer",
        "_result",
        "_started",
        "_state",
        "_submitted",
        "_timeout",
        "_timer",
        "_waiters",
        "_worker",
        "id",
    )

    def __init__(
        self,
        manager: TaskManager[Any, E],
        task_id: int,
        fn: Callable[[TaskContext, Any], Awaitable[E] | E],
        is_async: bool,
        priority: Priority,
        timeout: float | None,
        once: bool,
        max_retries: int,
        now: float,
    ) -> None:
        self._manager = manager
        self.id = task_id
        self._fn = fn
        self._is_async = is_async
        self._priority = priority
        self._timeout = timeout
        self._once = once
        self._max_retries = max_retries
        self._attempt = 0
        self._state = QUEUED
        self._loc = NOWHERE
        self._result: E | None = None
        self._error: BaseException | None = None
        self._submitted = now
        self._enqueued = now
        self._started = 0.0
        self._timer: TimerHandle | None = None
        self._qtimer: TimerHandle | None = None
        self._btimer: TimerHandle | None = None
        self._ctx: TaskContext | None = None
        self._worker: Worker[Any, E] | None = None
        self._waiters: list[asyncio.Future[None]] | None = None
        self._event: threading.Event | None = None
        self._callbacks: list[Callable[[TaskHandle[E]], Any]] | None = None

    @property
    def state(self) -> TaskState:
        """The current :class:`TaskState`."""
        return self._state

    @property
    def priority(self) -> Priority:
        """The task's priority level (as submitted, or as set by ``set_priority``)."""
        return self._priority

    @property
    def suspended(self) -> bool:
        """True while the running task's timeout clock is stopped (``suspend``)."""
        return self in self._manager._suspended

    @property
    def attempt(self) -> int:
        """Attempts started so far (1-based once running)."""
        return self._attempt

    @property
    def held(self) -> bool:
        """A retry kept by its worker (the queue was full) rather than queued."""
        return self._loc == HELD

    def done(self) -> bool:
        """True once the task reached a terminal state."""
        return self._state > RUNNING

    def cancel(self) -> bool:
        """Cancel the task; False if it already ended. Safe from any thread.

        A queued task leaves the queue at once; a running one has its context cancelled
        (reason USER) and, if async, its coroutine cancelled. The caller gets TaskCancelled.
        """
        if self._state > RUNNING:
            return False
        return self._manager._cancel_from_any_thread(self)

    def exception(self) -> BaseException | None:
        """The task's error, None if it succeeded; InvalidStateError while not done."""
        if self._state <= RUNNING:
            raise asyncio.InvalidStateError(f"task {self.id} is not done")
        return self._error

    def result(self, timeout: float | None = None) -> E:
        """Block the calling thread until done, then return the result or raise the error.

        For threads other than the manager's loop thread. Raises TimeoutError after
        ``timeout`` seconds (the task is not cancelled).
        """
        if self._state <= RUNNING:
            self._manager._check_not_loop_thread("TaskHandle.result()")
            event = self._event
            if event is None:
                with _EVENT_LOCK:
                    event = self._event
                    if event is None:
                        event = self._event = threading.Event()
            # The loop sets the state before reading _event: one side sees the other.
            if self._state <= RUNNING and not event.wait(timeout):
                raise TimeoutError(f"task {self.id} not done after {timeout}s")
        return self._outcome()

    def add_done_callback(self, callback: Callable[[TaskHandle[E]], Any]) -> None:
        """Call ``callback(handle)`` on the loop once done (soon, if already done).

        Safe from any thread. Exceptions from the callback are logged.
        """
        self._manager._add_done_callback(self, callback)

    def _outcome(self) -> E:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def __await__(self) -> Generator[Any, None, E]:
        if self._state <= RUNNING:
            fut: asyncio.Future[None] = self._manager._loop.create_future()
            if self._waiters is None:
                self._waiters = [fut]
            else:
                self._waiters.append(fut)
            yield from fut.__await__()
        return self._outcome()

    def __repr__(self) -> str:
        return f"<TaskHandle id={self.id} {self._state.name} priority={self._priority.name}>"
