""":class:`SyncTaskManager`: a thread-safe facade for plain threaded code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar, Unpack

from taskerd.engine.config import Config, SubmitOptions
from taskerd.engine.handle import TaskHandle
from taskerd.engine.manager import TaskFn, TaskManager
from taskerd.engine.metrics import Metrics, Stats

R = TypeVar("R")
E = TypeVar("E")
T = TypeVar("T")


class SyncTaskManager(Generic[R, E]):
    """Drive a :class:`TaskManager` from threads.

    ``SyncTaskManager(config)`` owns a loop in a background thread (started by :meth:`start`
    or ``with``); ``SyncTaskManager(manager, loop)`` wraps a started manager running on
    ``loop`` in another thread. Every method is thread-safe and blocks the calling thread, so
    never call them on the manager's own loop thread.
    """

    def __init__(
        self,
        config: Config[R] | TaskManager[R, E],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if isinstance(config, TaskManager):
            if loop is None:
                raise ValueError("loop is required when wrapping a TaskManager")
            self.manager: TaskManager[R, E] = config
            self._loop = loop
            self._owns_loop = False
        else:
            self.manager = TaskManager(config)
            self._loop = asyncio.new_event_loop()
            self._owns_loop = True
        self._thread: threading.Thread | None = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._owns_loop and self._thread is None:
            coro.close()
            raise RuntimeError("SyncTaskManager is not started")
        if self._thread is not None and threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("SyncTaskManager methods must not be called on its loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start(self) -> None:
        """Start the loop thread (if owned) and the manager."""
        if not self._owns_loop or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="taskerd-engine-loop", daemon=True
        )
        self._thread.start()
        self._call(self.manager.start())

    def submit(
        self,
        fn: TaskFn[R, E],
        **options: Unpack[SubmitOptions],
    ) -> TaskHandle[E]:
        """Submit and return the handle (``block=True`` waits for room, see TaskManager.submit)."""
        return self._call(self.manager.submit(fn, **options))

    def queue_task(
        self,
        fn: TaskFn[R, E],
        **options: Unpack[SubmitOptions],
    ) -> E:
        """Submit and block until the result (or raise the task's error)."""
        return self.submit(fn, **options).result()

    def queue_task_with_callback(
        self,
        fn: TaskFn[R, E],
        callback: Callable[[E | None, BaseException | None], Any],
        **options: Unpack[SubmitOptions],
    ) -> TaskHandle[E]:
        """Submit; ``callback(result, error)`` is later called once on the loop thread."""

        async def go() -> TaskHandle[E]:
            return self.manager.queue_task_with_callback(fn, callback, **options)

        return self._call(go())

    def run_task(self, fn: TaskFn[R, E], *, timeout: float | None = None) -> E:
        """Run ``fn`` now, bypassing the queue (see TaskManager.run_task)."""
        return self._call(self.manager.run_task(fn, timeout=timeout))

    def cancel(self, handle: TaskHandle[E]) -> bool:
        """Cancel a task (same as ``handle.cancel()``)."""
        return handle.cancel()

    def stats(self) -> Stats:
        """See TaskManager.stats."""

        async def go() -> Stats:
            return self.manager.stats()

        return self._call(go())

    def metrics(self) -> Metrics:
        """See TaskManager.metrics."""

        async def go() -> Metrics:
            return self.manager.metrics()

        return self._call(go())

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the manager (see TaskManager.stop), then the owned loop thread. Idempotent."""
        if self._owns_loop and self._thread is None:
            return
        self._call(self.manager.stop(drain=drain, timeout=timeout))
        self._close_loop()

    def kill(self) -> None:
        """Kill the manager (see TaskManager.kill), then the owned loop thread. Idempotent."""
        if self._owns_loop and self._thread is None:
            return
        self._call(self.manager.kill())
        self._close_loop()

    def _close_loop(self) -> None:
        if not self._owns_loop or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None
        self._loop.close()

    def __enter__(self) -> SyncTaskManager[R, E]:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
