"""The per-attempt :class:`TaskContext` handed to every task function."""

from __future__ import annotations

import asyncio
import threading
import time

from taskerd.engine.config import CancelReason, Priority

_CREATE_LOCK = threading.Lock()


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


class TaskContext:
    """What a running task can see: its identity, its deadline and whether it was cancelled.

    Cancellation is cooperative for thread tasks: poll :meth:`cancelled` or block in
    :meth:`wait_cancelled`. Async tasks are additionally cancelled the asyncio way.
    """

    __slots__ = (
        "_event",
        "_loop",
        "_reason",
        "_waiters",
        "attempt",
        "deadline",
        "priority",
        "task_id",
        "worker_id",
    )

    def __init__(
        self,
        task_id: int,
        attempt: int,
        worker_id: int,
        priority: Priority,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.worker_id = worker_id
        self.priority = priority
        self.deadline = deadline
        self._loop = loop
        self._reason: CancelReason | None = None
        self._event: threading.Event | None = None
        self._waiters: list[asyncio.Future[bool]] | None = None

    @property
    def reason(self) -> CancelReason | None:
        """Why the task was cancelled, or None while it is not."""
        return self._reason

    def cancelled(self) -> bool:
        """True once the task has been cancelled (user, timeout, stop or kill)."""
        return self._reason is not None

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or None without a timeout."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block the calling thread until cancelled or ``timeout``; True if cancelled.

        Meant for thread tasks; never call it on the event loop's thread.
        """
        if self._reason is not None:
            return True
        event = self._event
        if event is None:
            with _CREATE_LOCK:
                event = self._event
                if event is None:
                    event = self._event = threading.Event()
            # _cancel sets the reason before reading _event: one of us sees the other.
            if self._reason is not None:
                return True
        return event.wait(timeout)

    async def wait_cancelled_async(self, timeout: float | None = None) -> bool:
        """Wait on the loop until cancelled or ``timeout``; True if cancelled.

        Never swallows a CancelledError thrown into the caller.
        """
        if self._reason is not None:
            return True
        fut: asyncio.Future[bool] = self._loop.create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, _resolve, fut, False)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            self._waiters.remove(fut)

    def _cancel(self, reason: CancelReason) -> None:
        """Mark cancelled and wake every waiter (loop thread only)."""
        if self._reason is not None:
            return
        self._reason = reason
        event = self._event
        if event is not None:
            event.set()
        if self._waiters:
            for fut in self._waiters:
                _resolve(fut, True)

    def __repr__(self) -> str:
        return (
            f"TaskContext(task_id={self.task_id}, attempt={self.attempt}, "
            f"worker_id={self.worker_id}, reason={self._reason})"
        )
