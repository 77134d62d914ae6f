"""The :class:`TaskManager`: workers, dispatch, timeouts, retries, bursting and shutdown.

Everything here runs on one event loop; only the few methods documented as thread-safe may
be called from other threads. Workers are long-lived asyncio tasks that pull from the
:class:`JobQueue`; an idle worker parks on a future and is woken by a submission. A task's
caller is answered the moment its outcome is known (deadline, cancel, stop) even if the
task's code is still running: the worker waits for that code to really end before it takes
another task.

Retries (``Retry`` raised, or an error that ``check_health`` calls unhealthy) are re-queued
at the FRONT of their priority level. If the queue is full at that moment, the worker (or its
replacement) keeps the task and runs it again next, so the queue bound is never exceeded.

Bursting follows :func:`taskerd.engine.scaling.burst_target`. The runtime controls
(``set_workers``, ``pause``/``resume``, ``suspend``/``unsuspend``, ``set_priority``) are for
the loop thread; none of them cancels a running task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from inspect import CO_COROUTINE
from types import FunctionType
from typing import Any, Generic, TypeVar, Unpack

from taskerd.engine.config import CancelReason, Config, Priority, SubmitOptions
from taskerd.engine.context import TaskContext
from taskerd.engine.errors import (
    Killed,
    QueueFull,
    Retry,
    ShuttingDown,
    TaskCancelled,
    TaskError,
    TaskTimeout,
)
from taskerd.engine.handle import (
    HELD,
    IN_QUEUE,
    IN_WAITLIST,
    NOWHERE,
    QUEUED,
    RUNNING,
    TaskHandle,
    TaskState,
)
from taskerd.engine.metrics import Metrics, MetricsCollector, MetricsRecorder, Stats
from taskerd.engine.queue import JobQueue
from taskerd.engine.scaling import burst_target

R = TypeVar("R")
E = TypeVar("E")

TaskFn = Callable[[TaskContext, R], Awaitable[E] | E]

# Kinds of records thread lanes hand back to the loop.
REPLY = 0  # the lane ended: answer the worker with the last task's outcome
DONE = 1  # a task the lane ran succeeded (the lane went on)
STARTED = 2  # the lane started another queued task

# Signals a parked worker is woken with.
WAKE = 0
RETIRE = 1
REPLACE = 2

_monotonic = time.monotonic

RETIRE_AFTER = 3  # burst workers retire once the rule said so this many intervals in a row
CREATE_BACKOFF = (0.05, 2.0)  # first and longest wait between failed on_create calls

SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
TIMED_OUT = TaskState.TIMED_OUT
CANCELLED = TaskState.CANCELLED


class Worker(Generic[R, E]):
    """One long-lived worker holding one resource."""

    __slots__ = (
        "borrowed",
        "burst",
        "cancel_requested",
        "creating",
        "current",
        "held",
        "id",
        "job",
        "resource",
        "retire",
        "task",
        "wake",
    )

    def __init__(self, worker_id: int, burst: bool) -> None:
        self.id = worker_id
        self.burst = burst
        self.resource: R | None = None
        self.task: asyncio.Task[None] | None = None
        self.wake: asyncio.Future[int] | None = None
        self.retire = False  # end before taking another task (after any held retry)
        self.job: TaskHandle[E] | None = None  # the task being executed (thread or async)
        self.current: TaskHandle[E] | None = None  # set only while awaiting a coroutine
        self.cancel_requested = False
        self.held: TaskHandle[E] | None = None
        self.creating = False
        self.borrowed = False


_async_call: dict[type, bool] = {}  # classes whose instances are called: is __call__ async


def _is_coroutine_function(fn: Any) -> bool:
    kind = type(fn)
    if kind is FunctionType:
        return bool(fn.__code__.co_flags & CO_COROUTINE)
    known = _async_call.get(kind)
    if known is not None:
        return known
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ makes an async callable
    )
    if type(kind.__dict__.get("__call__")) is FunctionType:
        _async_call[kind] = is_async  # a class of ours with its own __call__: fixed per class
    return is_async


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def _to_the_end(task: asyncio.Future[Any]) -> bool:
    """Wait until ``task`` is done, however often this is cancelled meanwhile; whether it was
    (the caller re-raises that once its own step is over). The task's outcome is its own."""
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            interrupted = True
    return interrupted


class TaskManager(Generic[R, E]):
    """An asyncio task manager: priorities, timeouts, cancellation, retries, backpressure.

    Use ``async with TaskManager(config) as m:`` or ``await m.start()`` / ``await m.stop()``.
    Task functions are ``fn(ctx, resource)``: ``async def`` ones run on the loop, plain ones
    in a bounded thread pool. A thread task that ignores ``ctx`` cannot be interrupted: its
    caller is still answered at the deadline/cancel, but the thread keeps its worker slot until
    the function returns.
    """

    def __init__(self, config: Config[R]) -> None:
        self.config = config
        self._log = config.logger or logging.getLogger("taskerd.engine")
        self._metrics = MetricsRecorder()
        self._extra: MetricsCollector | None = config.collector
        self._queue = JobQueue(config.aging)
        self._cap = config.max_queue_size
        self._base: int = config.worker_count
        self._max_workers: int = config.max_worker_count or 2 * config.worker_count
        self._paused = False
        self._arrival_rate = 0.0  # tasks/s over the scaler's last interval
        self._drain_rate = 0.0
        self._calm = 0  # consecutive intervals the rule asked for fewer burst workers
        self._pool_size: int = config.resource_pool_size or 0
        self._default_retries = config.max_retries
        self._waitlist: deque[TaskHandle[E]] = deque()
        self._waitlisted = 0
        self._reserved = 0  # room promised by reserve() to tasks not queued yet
        self._admission: dict[TaskHandle[E], asyncio.Future[None]] = {}
        self._workers: dict[int, Worker[R, E]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: deque[Worker[R, E]] = deque()
        self._spare: list[R] = []
        self._direct: set[TaskHandle[E]] = set()
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._burst_count = 0
        # Busy workers to retire, base and burst: whichever next finishes a task goes (so that
        # no worker starts a task while another one that is to retire still runs one).
        self._debt = [0, 0]
        # Running tasks whose timeout clock is stopped (suspend): the seconds they have left
        # (inf: no timeout). Rare, so kept here rather than in every handle.
        self._suspended: dict[TaskHandle[E], float] = {}
        self._running = 0
        self._next_id = 1
        self._arrived = 0
        self._finished = 0
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._thread_id = -1
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._scaler: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._draining = True
        self._killed = False
        self._shutdown: asyncio.Task[None] | None = None
        self._deadline: float | None = None  # when a stop stops waiting for running tasks
        self._deadline_changed: asyncio.Future[None] | None = None
        self._last_fn: Any = None
        self._on_finish = config.on_finish
        self._on_retry = config.on_retry
        # Queue mutations and QUEUED -> other transitions hold this: thread lanes pop too.
        self._qlock = threading.Lock()
        self._lanes = 0  # thread lanes that may still claim tasks; no locking while 0
        self._replies: deque[tuple[int, Any, Any, BaseException | None, float]] = deque()
        self._flush_due = False
        self._last_async = False
        self._pending: list[tuple[Callable[[TaskHandle[E]], Any], TaskHandle[E]]] = []

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Create the base workers (resources are created as each worker starts)."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.config.thread_pool_size or self._max_workers, thread_name_prefix="taskerd-engine"
        )
        self._started = True
        for worker_id in range(self._base):
            self._spawn(worker_id, burst=False, first=None)
        self._scaler = self._loop.create_task(
            self._scale_loop(self._loop.time()), name="taskerd-engine-scaler"
        )

    async def __aenter__(self) -> TaskManager[R, E]:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new submissions, finish work, then release every resource. Idempotent.

        ``drain=True`` runs queued tasks; ``drain=False`` fails them with ShuttingDown.
        After ``timeout`` seconds, running tasks are cancelled (reason STOP, callers get
        ShuttingDown) and still-queued ones fail with ShuttingDown.
        """
        if not self._started:
            self._closing = True
            return
        if self._shutdown is None:
            self._closing = True
            self._draining = drain
            if not drain:
                self._fail_queued(ShuttingDown("manager stopped before the task started"))
            self._wake_all()
            self._set_deadline(timeout)
            self._shutdown = self._loop.create_task(self._finish_shutdown())
        elif self._draining and not drain and not self._killed:
            # A drain escalated to a stop: queued tasks fail now, running ones get ``timeout``.
            self._draining = False
            self._fail_queued(ShuttingDown("manager stopped before the task started"))
            self._set_deadline(timeout)
        await asyncio.shield(self._shutdown)

    def _set_deadline(self, timeout: float | None) -> None:
        self._deadline = None if timeout is None else self._loop.time() + timeout
        wake = self._deadline_changed
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def kill(self) -> None:
        """Fail queued tasks with Killed, cancel running ones (reason KILL), release all.

        Every caller is answered at once; this returns once the workers have ended (async
        tasks get CancelledError; a thread task ignoring ``ctx`` delays it until it returns).
        """
        if not self._started:
            self._closing = self._killed = True
            return
        if not self._killed:
            self._killed = True
            self._closing = True
            self._draining = False
            self._fail_queued(Killed("manager killed before the task started"))
            self._abort_running(CancelReason.KILL, Killed("manager killed while the task ran"))
            self._wake_all()
            if self._shutdown is None:
                self._shutdown = self._loop.create_task(self._finish_shutdown())
        assert self._shutdown is not None
        await asyncio.shield(self._shutdown)

    async def _finish_shutdown(self) -> None:
        while self._tasks or self._direct:
            deadline = self._deadline
            remaining = None if deadline is None else deadline - self._loop.time()
            if remaining is not None and remaining <= 0:
                if not self._killed:
                    self._killed = True
                    self._fail_queued(ShuttingDown("manager stop timed out before it started"))
                    self._abort_running(
                        CancelReason.STOP, ShuttingDown("manager stop timed out while it ran")
                    )
                    self._wake_all()
                self._deadline = None
                continue
            waiting: set[asyncio.Future[Any]] = set(self._tasks)
            waiting.update(self._side_tasks)
            if not waiting:
                await asyncio.sleep(0.01)
                continue
            self._deadline_changed = wake = self._loop.create_future()
            waiting.add(wake)
            await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            self._deadline_changed = None
            wake.cancel()
        if self._scaler is not None:
            self._scaler.cancel()
            await asyncio.gather(self._scaler, return_exceptions=True)
        spare, self._spare = self._spare, []
        for resource in spare:
            await self._destroy(resource)
        # Let call_soon'd callbacks run, then wait for async callbacks.
        for _ in range(3):
            await asyncio.sleep(0)
        while self._side_tasks:
            await asyncio.gather(*list(self._side_tasks), return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _wake_all(self) -> None:
        while self._idle:
            self._wake(self._idle.popleft(), WAKE)
        for worker in self._workers.values():
            if worker.creating and self._killed and worker.task is not None:
                worker.task.cancel()

    def _fail_queued(self, error: TaskError) -> None:
        while self._waitlist:
            self._finish(self._waitlist.popleft(), FAILED, None, error)
        with self._qlock:  # closing/killed is set: no lane takes another task after this
            queued = list(self._queue.drain())
        for job in queued:
            self._finish(job, FAILED, None, error)
        for worker in list(self._workers.values()):
            if worker.held is not None:
                self._finish(worker.held, FAILED, None, error)

    def _abort_running(self, reason: CancelReason, error: TaskError) -> None:
        running = [w.job for w in self._workers.values() if w.job is not None]
        running.extend(self._direct)
        for job in running:
            if job is not None and job._state is RUNNING:
                self._cancel_running(job, CANCELLED, error, reason)

    # ----------------------------------------------------------------- submission

    def _check_open(self) -> None:
        if not self._started:
            raise RuntimeError("TaskManager is not started (use start() or async with)")
        if self._closing:
            self._record_rejection()
            raise ShuttingDown("manager is shutting down")

    def _new(
        self,
        fn: TaskFn[R, E],
        priority: Priority | int,
        timeout: float | None,
        queue_timeout: float | None,
        once: bool,
        max_retries: int | None,
        task_id: int | None = None,
        submitted: float | None = None,
    ) -> TaskHandle[E]:
        if priority.__class__ is not Priority:
            priority = Priority(priority)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        if queue_timeout is not None and not queue_timeout > 0:
            raise ValueError(f"queue_timeout must be > 0, got {queue_timeout!r}")
        if max_retries is None:
            max_retries = self._default_retries
        elif max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        if fn is self._last_fn:  # bursts usually submit the same function
            is_async = self._last_async
        else:
            is_async = _is_coroutine_function(fn)
            self._last_fn, self._last_async = fn, is_async
        if task_id is None:
            task_id = self._next_id
            self._next_id = task_id + 1
        job: TaskHandle[E] = TaskHandle(
            self,
            task_id,
            fn,
            is_async,
            priority,
            timeout,
            once,
            max_retries,
            submitted if submitted is not None else _monotonic(),
        )
        self._arrived += 1
        self._metrics.arrived += 1
        if self._extra is not None:
            self._extra.record_arrival(task_id)
        if queue_timeout is not None:
            job._qtimer = self._loop.call_at(
                job._submitted + queue_timeout, self._on_queue_timeout, job
            )
        return job

    def queue_task_async(
        self,
        fn: TaskFn[R, E],
        *,
        priority: Priority | int = Priority.NORMAL,
        timeout: float | None = None,
        queue_timeout: float | None = None,
        once: bool = False,
        max_retries: int | None = None,
        block: bool = False,
        block_timeout: float | None = None,
        reserved: bool = False,
        task_id: int | None = None,
        submitted: float | None = None,
    ) -> TaskHandle[E]:
        """Submit ``fn`` and return its handle at once (call on the loop thread).

        ``reserved`` uses room held by :meth:`reserve`: the queue bound is not checked again.
        ``task_id`` names the task (the caller keeps ids unique); by default the engine counts.
        ``submitted`` is when it was submitted (``time.monotonic()``; by default now): one
        value for a whole batch is one float object in memory, not one per task.

        A full queue raises QueueFull, unless ``block=True``: then the handle is returned at
        once and the task waits for room (up to ``block_timeout``, then it fails with
        QueueFull). Use ``await submit(...)`` to wait for room before getting the handle.
        Raises ShuttingDown once stop()/kill() began.
        """
        if reserved:
            self._reserved -= 1
        if self._closing or not self._started:
            self._check_open()
        cap = self._cap
        if (
            not reserved
            and cap is not None
            and (self._queue.size + self._reserved >= cap or self._waitlisted)
        ):
            if not block:
                self._record_rejection()
                raise QueueFull(f"queue full ({self._queue.size}/{cap})")
            job = self._new(
                fn, priority, timeout, queue_timeout, once, max_retries, task_id, submitted
            )
            job._loc = IN_WAITLIST
            self._waitlist.append(job)
            self._waitlisted += 1
            if block_timeout is not None:
                job._btimer = self._loop.call_at(
                    self._loop.time() + block_timeout, self._on_block_timeout, job
                )
            return job
        job = self._new(fn, priority, timeout, queue_timeout, once, max_retries, task_id, submitted)
        job._enqueued = job._submitted
        self._push(job)
        if self._idle and not self._paused:
            self._wake(self._idle.popleft(), WAKE)
        return job

    def reserve(self, count: int, *, force: bool = False) -> None:
        """Hold room for ``count`` tasks that will be queued with ``reserved=True``.

        The one admission check: raises ShuttingDown once stop()/kill() began, and QueueFull
        if they do not fit beside what is queued and reserved (``force`` skips the bound, for
        tasks that were accepted earlier). Give back what is not used with :meth:`release`.
        """
        if self._closing or not self._started:
            self._check_open()
        cap = self._cap
        if not force and cap is not None:
            held = self._queue.size + self._reserved + self._waitlisted
            if held + count > cap:
                self._record_rejection()
                raise QueueFull(f"queue full ({self._queue.size + self._reserved}/{cap})")
        self._reserved += count

    def release(self, count: int) -> None:
        """Give back room held by :meth:`reserve` that no task will use."""
        self._reserved -= count

    async def submit(
        self,
        fn: TaskFn[R, E],
        **options: Unpack[SubmitOptions],
    ) -> TaskHandle[E]:
        """Like :meth:`queue_task_async`, but with ``block=True`` wait until the task is queued.

        Raises QueueFull if no room appeared within ``block_timeout``.
        """
        job = self.queue_task_async(fn, **options)
        if job._loc == IN_WAITLIST and job._state is QUEUED:
            fut: asyncio.Future[None] = self._loop.create_future()
            self._admission[job] = fut
            try:
                await fut
            except asyncio.CancelledError:
                job.cancel()
                raise
            finally:
                self._admission.pop(job, None)
            if isinstance(job._error, QueueFull):
                raise job._error
        return job

    async def queue_task(
        self,
        fn: TaskFn[R, E],
        **options: Unpack[SubmitOptions],
    ) -> E:
        """Submit ``fn`` and return its result (or raise its error).

        If the awaiting coroutine is cancelled, the task is cancelled too.
        """
        job = self.queue_task_async(fn, **options)
        if job._state <= RUNNING:
            fut: asyncio.Future[None] = self._loop.create_future()
            if job._waiters is None:
                job._waiters = [fut]
            else:
                job._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                job.cancel()
                raise
        return job._outcome()

    def queue_task_with_callback(
        self,
        fn: TaskFn[R, E],
        callback: Callable[[E | None, BaseException | None], Any],
        **options: Unpack[SubmitOptions],
    ) -> TaskHandle[E]:
        """Submit ``fn``; ``callback(result, error)`` is called exactly once when it ends.

        The callback runs via call_soon (never on the worker's path); it may be a coroutine
        function. Its exceptions are logged. A refused submission raises here instead
        (QueueFull, ShuttingDown) and the callback is not called.
        """
        job = self.queue_task_async(fn, **options)

        def deliver(done: TaskHandle[E]) -> Any:
            return callback(done._result, done._error)

        self._add_done_callback(job, deliver)
        return job

    async def run_task(
        self, fn: TaskFn[R, E], *, timeout: float | None = None, task_id: int | None = None
    ) -> E:
        """Run ``fn`` now, bypassing the queue, and return its result.

        Uses an idle worker's resource, else a spare one, else a temporary resource made with
        ``on_create`` and destroyed afterwards. Never retried. Cancelling the awaiting
        coroutine cancels the task. ``task_id`` as for :meth:`queue_task_async`.
        """
        self._check_open()
        job = self._new(fn, Priority.CRITICAL, timeout, None, True, 0, task_id)
        worker: Worker[R, E] | None = None
        temporary = False
        if self._idle:
            worker = self._idle.pop()
            worker.borrowed = True
            resource: Any = worker.resource
            worker_id = worker.id
        elif self._spare:
            resource = self._spare.pop()
            worker_id = -1
        else:
            temporary = True
            worker_id = -1
            try:
                resource = await _maybe_await(self.config.on_create())
            except Exception as exc:
                self._finish(job, FAILED, None, exc)
                raise
        runner: Worker[R, E] = Worker(worker_id, burst=False)
        runner.resource = resource
        self._direct.add(job)
        job._loc = NOWHERE
        healthy = True

        async def execute() -> None:
            nonlocal healthy
            healthy = await self._execute(runner, job)

        task = self._loop.create_task(execute())
        runner.task = task
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        try:
            return await job
        except asyncio.CancelledError:
            job.cancel()
            raise
        finally:
            # The caller may be cancelled again meanwhile (an abandoned Run, then a stop): the
            # bookkeeping must happen all the same, or a stop would wait for this job forever.
            interrupted = await _to_the_end(task)
            self._direct.discard(job)
            if worker is not None:
                worker.borrowed = False
                self._wake(worker, WAKE if healthy else REPLACE)
            elif temporary or not healthy or len(self._spare) >= self._pool_size:
                interrupted |= await _to_the_end(self._loop.create_task(self._destroy(resource)))
            else:
                self._spare.append(resource)
            if interrupted:
                raise asyncio.CancelledError()

    # ----------------------------------------------------------------- queue plumbing

    def _enqueue(self, job: TaskHandle[E], front: bool = False, now: float = 0.0) -> None:
        job._enqueued = now or _monotonic()
        self._push(job, front)
        if self._idle and not self._paused:
            self._wake(self._idle.popleft(), WAKE)

    def _push(self, job: TaskHandle[E], front: bool = False) -> None:
        if self._lanes:  # a thread lane may be popping: take the lock
            with self._qlock:
                self._queue.push(job, front=front)
        else:
            self._queue.push(job, front=front)

    def _pop(self) -> TaskHandle[E] | None:
        if self._lanes:
            with self._qlock:
                return self._queue.pop()
        return self._queue.pop()

    def _wake(self, worker: Worker[R, E], signal: int) -> None:
        fut = worker.wake
        if fut is not None:
            worker.wake = None
            if not fut.done():
                fut.set_result(signal)

    def _room_freed(self) -> None:
        cap = self._cap
        assert cap is not None
        while self._waitlist and self._queue.size < cap:
            job = self._waitlist.popleft()
            if job._state is not QUEUED or job._loc != IN_WAITLIST:
                continue
            self._waitlisted -= 1
            if job._btimer is not None:
                job._btimer.cancel()
                job._btimer = None
            self._enqueue(job)
            fut = self._admission.get(job)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _on_queue_timeout(self, job: TaskHandle[E]) -> None:
        job._qtimer = None
        if job._state is QUEUED and job._attempt == 0:
            waited = _monotonic() - job._submitted
            self._finish(
                job,
                TIMED_OUT,
                None,
                TaskTimeout(f"task {job.id} never started within {waited:.3f}s (queue_timeout)"),
            )

    def _on_block_timeout(self, job: TaskHandle[E]) -> None:
        job._btimer = None
        if job._state is QUEUED and job._loc == IN_WAITLIST:
            cap = self._cap
            self._record_rejection()
            self._finish(job, FAILED, None, QueueFull(f"queue full ({self._queue.size}/{cap})"))

    def _record_rejection(self) -> None:
        self._metrics.record_rejection()
        if self._extra is not None:
            self._extra.record_rejection()

    # ----------------------------------------------------------------- outcomes

    def _finish(
        self,
        job: TaskHandle[E],
        state: TaskState,
        result: E | None,
        error: BaseException | None,
        now: float = 0.0,
    ) -> bool:
        """Move ``job`` to a terminal state and answer everyone who waits on it (once).

        ``now`` is when it ended, if already known.
        """
        old = job._state
        if old > RUNNING:
            return False
        duration = 0.0
        if old is RUNNING:
            self._running -= 1
            self._finished += 1
            duration = (now or _monotonic()) - job._started
            if self._suspended:
                self._suspended.pop(job, None)
        else:
            loc = job._loc
            if loc == IN_QUEUE:
                if self._lanes:
                    with self._qlock:
                        if job._state is not QUEUED:
                            return False  # a thread lane started it meanwhile
                        self._queue.forget(job)
                        job._state = state
                else:
                    self._queue.forget(job)
                if self._waitlist:
                    self._room_freed()
            elif loc == IN_WAITLIST:
                self._waitlisted -= 1
                fut = self._admission.get(job)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            job._loc = NOWHERE
        job._state = state
        job._result = result
        job._error = error
        if job._timer is not None:
            job._timer.cancel()
            job._timer = None
        if job._qtimer is not None:
            job._qtimer.cancel()
            job._qtimer = None
        if job._btimer is not None:
            job._btimer.cancel()
            job._btimer = None
        hook = self._on_finish
        if hook is None:
            job._fn = None  # type: ignore[assignment]  # free references early
        if error is None:
            self._metrics.record_completion(job.id, duration)
            if self._extra is not None:
                self._extra.record_completion(job.id, duration)
        else:
            self._metrics.record_failure(job.id, error, duration)
            if self._extra is not None:
                self._extra.record_failure(job.id, error, duration)
        waiters = job._waiters
        if waiters is not None:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        event = job._event
        if event is not None:
            event.set()
        callbacks = job._callbacks
        if callbacks is not None or hook is not None:
            pending = self._pending
            if not pending:  # one loop callback runs every callback queued until then
                self._loop.call_soon(self._run_pending)
            if hook is not None:
                pending.append((self._run_finish_hook, job))
            if callbacks is not None:
                job._callbacks = None
                for callback in callbacks:
                    pending.append((callback, job))
        return True

    def _run_finish_hook(self, job: TaskHandle[E]) -> None:
        fn, job._fn = job._fn, None  # type: ignore[assignment]  # now free its references
        assert self._on_finish is not None
        self._on_finish(job, fn)

    def _run_pending(self) -> None:
        pending, self._pending = self._pending, []
        for callback, job in pending:
            self._run_callback(callback, job)

    def _run_callback(self, callback: Callable[[TaskHandle[E]], Any], job: TaskHandle[E]) -> None:
        try:
            outcome = callback(job)
        except Exception:
            self._log.exception("callback for task %d raised", job.id)
            return
        if outcome is not None and inspect.isawaitable(outcome):
            task = asyncio.ensure_future(outcome)
            self._side_tasks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("async task callback raised", exc_info=task.exception())

    def _add_done_callback(
        self, job: TaskHandle[E], callback: Callable[[TaskHandle[E]], Any]
    ) -> None:
        if threading.get_ident() != self._thread_id:
            self._loop.call_soon_threadsafe(self._add_done_callback, job, callback)
            return
        if job._state > RUNNING:
            self._loop.call_soon(self._run_callback, callback, job)
        elif job._callbacks is None:
            job._callbacks = [callback]
        else:
            job._callbacks.append(callback)

    def _check_not_loop_thread(self, what: str) -> None:
        if threading.get_ident() == self._thread_id:
            raise RuntimeError(f"{what} would block the event loop; await the handle instead")

    def _cancel_from_any_thread(self, job: TaskHandle[E]) -> bool:
        if threading.get_ident() == self._thread_id:
            return self._cancel(job)
        reply: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def run() -> None:
            reply.set_result(self._cancel(job))

        self._loop.call_soon_threadsafe(run)
        return reply.result()

    def _cancel(self, job: TaskHandle[E]) -> bool:
        if job._state is QUEUED and self._finish(
            job, CANCELLED, None, TaskCancelled(f"task {job.id} cancelled")
        ):
            return True
        if job._state is RUNNING:  # (also if a thread lane started it just now)
            self._cancel_running(
                job, CANCELLED, TaskCancelled(f"task {job.id} cancelled"), CancelReason.USER
            )
            return True
        return False

    def _cancel_running(
        self, job: TaskHandle[E], state: TaskState, error: TaskError, reason: CancelReason
    ) -> None:
        ctx = job._ctx
        worker = job._worker
        self._finish(job, state, None, error)
        if ctx is not None:
            ctx._cancel(reason)
        if worker is not None and worker.current is job and not worker.cancel_requested:
            worker.cancel_requested = True
            assert worker.task is not None
            worker.task.cancel()

    def _on_timeout(self, job: TaskHandle[E]) -> None:
        job._timer = None
        if job._state is RUNNING:
            error = TaskTimeout(f"task {job.id} timed out after {job._timeout}s")
            self._cancel_running(job, TIMED_OUT, error, CancelReason.TIMEOUT)

    # ----------------------------------------------------------------- workers

    def _spawn(
        self, worker_id: int, burst: bool, first: TaskHandle[E] | None, retire: bool = False
    ) -> None:
        worker: Worker[R, E] = Worker(worker_id, burst)
        worker.retire = retire
        self._workers[worker_id] = worker
        if first is not None:
            worker.held = first
            first._loc = HELD
        task = self._loop.create_task(self._worker_main(worker), name=f"taskerd-worker-{worker_id}")
        worker.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _free_id(self) -> int:
        worker_id = 0
        while worker_id in self._workers:
            worker_id += 1
        return worker_id

    async def _acquire(self, worker: Worker[R, E]) -> bool:
        """Give ``worker`` a resource: a spare one, or on_create() retried with backoff."""
        if self._spare:
            worker.resource = self._spare.pop()
            return True
        delay = CREATE_BACKOFF[0]
        worker.creating = True
        try:
            while not self._killed and not (worker.retire and worker.held is None):
                try:
                    worker.resource = await _maybe_await(self.config.on_create())
                    return True
                except Exception:
                    self._log.exception(
                        "on_create failed for worker %d; retrying in %.2fs", worker.id, delay
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, CREATE_BACKOFF[1])
            return False
        finally:
            worker.creating = False

    async def _destroy(self, resource: R) -> None:
        if self.config.on_destroy is None:
            return
        try:
            await _maybe_await(self.config.on_destroy(resource))
        except Exception:
            self._log.exception("on_destroy raised")

    async def _worker_main(self, worker: Worker[R, E]) -> None:
        replaced = False
        has_resource = False
        try:
            has_resource = await self._acquire(worker)
            if not has_resource:
                return
            while True:
                job = worker.held
                if job is None and (worker.retire or self._debt[worker.burst]):
                    if not worker.retire:
                        self._debt[worker.burst] -= 1
                        worker.retire = True
                    return
                if self._paused and not self._closing:  # a stop runs (or fails) queued work
                    job = None  # park, keeping any held retry
                elif job is not None:
                    worker.held = None
                    job._loc = NOWHERE
                    if job._state is not QUEUED:
                        continue
                else:
                    job = self._pop()
                    if job is not None and self._waitlist:
                        self._room_freed()
                if job is None:
                    if self._closing:
                        return
                    fut: asyncio.Future[int] = self._loop.create_future()
                    worker.wake = fut
                    self._idle.append(worker)
                    if await fut == REPLACE:
                        replaced = True
                        return
                    continue
                if not await self._execute(worker, job, True):
                    replaced = True
                    return
        finally:
            if worker.wake is not None:
                with contextlib.suppress(ValueError):
                    self._idle.remove(worker)
                worker.wake = None
            held = worker.held
            if replaced and not self._killed and not (worker.retire and held is None):
                worker.held = None
                self._spawn(worker.id, worker.burst, held, worker.retire)
            else:
                if held is not None:
                    worker.held = None
                    if held._state is QUEUED:
                        self._finish(held, FAILED, None, Killed("worker ended before a retry"))
                if self._workers.get(worker.id) is worker:
                    del self._workers[worker.id]
                    if worker.burst:
                        self._burst_count -= 1
            if has_resource:
                resource = worker.resource
                worker.resource = None
                if (
                    not replaced
                    and (worker.burst or worker.retire)
                    and not self._closing
                    and len(self._spare) < self._pool_size
                ):
                    self._spare.append(resource)  # type: ignore[arg-type]
                else:
                    await self._destroy(resource)  # type: ignore[arg-type]

    def _claim(self, worker: Worker[R, E], job: TaskHandle[E], now: float) -> TaskContext:
        """Mark ``job`` RUNNING on ``worker`` (loop, or a thread lane holding the lock)."""
        job._state = RUNNING
        job._worker = worker
        job._attempt += 1
        if self._suspended:
            self._suspended.pop(job, None)
        job._started = now
        deadline = None if job._timeout is None else now + job._timeout
        ctx = TaskContext(job.id, job._attempt, worker.id, job._priority, deadline, self._loop)
        job._ctx = ctx
        worker.job = job
        return ctx

    def _account_start(self, job: TaskHandle[E]) -> None:
        """The loop-side part of a start: counters, timers and metrics."""
        self._running += 1
        if job._qtimer is not None:
            job._qtimer.cancel()
            job._qtimer = None
        if (
            job._timeout is not None
            and job._state is RUNNING
            and job not in self._suspended  # suspended before this ran
            and job._timer is None
        ):
            job._timer = self._loop.call_at(job._started + job._timeout, self._on_timeout, job)
        wait = job._started - job._enqueued
        self._metrics.record_start(job.id, wait)
        if self._extra is not None:
            self._extra.record_start(job.id, wait)

    async def _execute(self, worker: Worker[R, E], job: TaskHandle[E], lane: bool = False) -> bool:
        """Run one attempt of ``job``; return False if the worker became unhealthy.

        With ``lane``, a thread task's thread may go on with further queued thread tasks
        (see :meth:`_take_for_lane`); the outcome handled here is then the last one's.
        """
        loop = self._loop
        ctx = self._claim(worker, job, _monotonic())
        self._account_start(job)
        error: BaseException | None = None
        result: Any = None
        fn = job._fn
        try:
            if job._is_async:
                worker.current = job
                try:
                    result = await fn(ctx, worker.resource)  # type: ignore[misc]
                finally:
                    worker.current = None
            else:
                assert self._executor is not None
                reply: asyncio.Future[Any] = loop.create_future()
                if lane:
                    self._lanes += 1  # until the loop handles the lane's REPLY
                try:
                    self._executor.submit(
                        self._run_in_thread,
                        reply,
                        job,
                        fn,
                        ctx,
                        worker.resource,
                        worker if lane else None,
                    )
                except BaseException:
                    if lane:
                        self._lanes -= 1
                    raise
                try:
                    result = await reply
                finally:
                    last = worker.job  # the lane may have moved on to later tasks
                    if last is not None:
                        job = last
        except asyncio.CancelledError as exc:
            if not worker.cancel_requested:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    self._cancel_running(  # the worker itself is being torn down
                        job, CANCELLED, Killed("worker cancelled"), CancelReason.KILL
                    )
                    raise
                error = TaskCancelled(f"task {job.id} raised CancelledError")
                error.__cause__ = exc
        except Exception as exc:
            error = exc
        except BaseException as exc:  # SystemExit & co. from a task end the task, not the worker
            error = TaskError(f"task {job.id} raised {exc!r}")
            error.__cause__ = exc
        finally:
            worker.job = None
            job._ctx = None
            if worker.cancel_requested:
                worker.cancel_requested = False
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
        if error is None:
            if job._state is RUNNING:
                self._finish(job, SUCCEEDED, result, None)
            return True
        return self._failed(job, error)

    def _run_in_thread(
        self,
        reply: asyncio.Future[Any],
        job: TaskHandle[E],
        fn: Callable[..., Any],
        ctx: TaskContext,
        resource: Any,
        lane: Worker[R, E] | None,
    ) -> None:
        """Run thread tasks: ``job``, then (with a lane) each queued thread task that is next.

        Outcomes go back in batches (one loop wake-up per batch); the worker's ``reply`` is
        answered with the last task's outcome once the lane ends.
        """
        while True:
            try:
                result = fn(ctx, resource)
                error: BaseException | None = None
            except BaseException as exc:  # handed to the awaiting worker
                result, error = None, exc
            taken = None
            if error is None and lane is not None and not reply.done():
                taken = self._take_for_lane(lane)
            if taken is None:
                self._post(REPLY, (reply, job, lane is not None), result, error, 0.0)
                return
            self._post(DONE, job, result, None, taken[0]._started)
            self._post(STARTED, taken[0], None, None, 0.0)
            job, fn, ctx = taken

    def _take_for_lane(
        self, worker: Worker[R, E]
    ) -> tuple[TaskHandle[E], Callable[..., Any], TaskContext] | None:
        """In a lane's thread: claim the next queued task if it is a thread task, else None.

        Priority order holds: only the task the queue would hand any worker next is taken.
        """
        with self._qlock:
            if (
                self._killed
                or (self._closing and not self._draining)
                or self._waitlist
                or worker.retire
                or self._debt[worker.burst]
                or (self._paused and not self._closing)
            ):
                return None
            job = self._queue.pop_thread_task()
            if job is None:
                return None
            fn = job._fn
            return job, fn, self._claim(worker, job, _monotonic())

    def _post(
        self, kind: int, item: Any, result: Any, error: BaseException | None, when: float
    ) -> None:
        self._replies.append((kind, item, result, error, when))
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon_threadsafe(self._flush_replies)

    def _flush_replies(self) -> None:
        self._flush_due = False  # before draining: a later append schedules another flush
        replies = self._replies
        while replies:
            kind, item, result, error, when = replies.popleft()
            if kind == REPLY:
                reply, job, was_lane = item
                if was_lane:
                    self._lanes -= 1
                if not reply.done():
                    if error is None:
                        reply.set_result(result)
                    else:
                        reply.set_exception(error)
                elif job._state is RUNNING:  # its worker was torn down meanwhile
                    job._ctx = None
                    if error is None:
                        self._finish(job, SUCCEEDED, result, None)
                    else:
                        self._finish(job, FAILED, None, error)
            elif kind == DONE:
                item._ctx = None
                if item._state is RUNNING:
                    self._finish(item, SUCCEEDED, result, None, when)
            else:
                self._account_start(item)
                if self._waitlist:
                    self._room_freed()

    def _failed(self, job: TaskHandle[E], error: BaseException) -> bool:
        healthy = True
        check = self.config.check_health
        if check is not None and not isinstance(error, Retry | TaskError):
            try:
                healthy = bool(check(error))
            except Exception:
                self._log.exception("check_health raised; treating the worker as unhealthy")
                healthy = False
            if not healthy:
                self._log.warning("task %d: unhealthy error %r; replacing worker", job.id, error)
        if job._state is not RUNNING:
            return healthy
        retry = isinstance(error, Retry) or not healthy
        if retry and not job._once and job._attempt <= job._max_retries and not self._killed:
            if self._closing and not self._draining:
                self._finish(job, FAILED, None, ShuttingDown("manager stopped before a retry"))
                return healthy
            self._running -= 1
            self._finished += 1
            job._state = QUEUED
            if job._timer is not None:
                job._timer.cancel()
                job._timer = None
            if self._cap is not None and self._queue.size + self._reserved >= self._cap:
                worker = job._worker
                assert worker is not None
                worker.held = job
                job._loc = HELD
            else:
                self._enqueue(job, front=True)
            self._metrics.record_retry(job.id, error)
            if self._extra is not None:
                self._extra.record_retry(job.id, error)
            if self._on_retry is not None:
                self._on_retry(job.id, error)
            return healthy
        final = error.cause if isinstance(error, Retry) and error.cause is not None else error
        self._finish(job, FAILED, None, final)
        return healthy

    # ----------------------------------------------------------------- runtime controls

    def set_workers(self, base: int, max_workers: int) -> None:
        """Change the base worker count and the ceiling (base + burst) at runtime.

        Raising ``base`` turns burst workers into base ones, then spawns the rest at once.
        Lowering it (or the ceiling below base + burst) retires the extra workers: idle ones
        now, busy ones when their current task ends (a running task is never cancelled).
        Call on the loop thread.
        """
        for name, value in (("base", base), ("max_workers", max_workers)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if base < 1:
            raise ValueError(f"base must be >= 1, got {base}")
        if max_workers < base:
            raise ValueError(f"max_workers must be >= base ({base}), got {max_workers}")
        self._base, self._max_workers = base, max_workers
        executor = self._executor
        if executor is not None and self.config.thread_pool_size is None:
            # Threads are made on demand: let the pool grow with the ceiling.
            executor._max_workers = max(executor._max_workers, max_workers)
        if not self._started or self._closing:
            return
        workers = self._workers.values()
        missing = base - sum(1 for w in workers if not w.burst and not w.retire) + self._debt[0]
        if missing > 0:
            kept = min(self._debt[0], missing)  # workers that were to retire stay
            self._debt[0] -= kept
            missing -= kept
            # Keep workers we have before making new ones: retiring base, burst, retiring burst.
            reuse = sorted(
                (w for w in workers if w.burst or w.retire), key=lambda w: (w.burst, w.retire)
            )
            for worker in reuse[:missing]:
                if worker.burst:
                    worker.burst = False
                    self._burst_count -= 1
                worker.retire = False
                missing -= 1
            for _ in range(missing):
                self._spawn(self._free_id(), burst=False, first=None)
        elif missing < 0:
            self._retire(-missing, burst=False)
        burst = sum(1 for w in self._workers.values() if w.burst and not w.retire)
        self._debt[1] = min(self._debt[1], burst)
        self._retire(burst - self._debt[1] - (max_workers - base), burst=True)

    def retune(self, handle: TaskHandle[E], *, timeout: float | None, max_retries: int) -> bool:
        """Change a QUEUED task's timeout and retry budget (both apply from its next start);
        False (nothing changed) for a task that is not queued here."""
        if handle._manager is not self or handle._state is not QUEUED:
            return False
        handle._timeout = timeout
        handle._max_retries = max_retries
        return True

    def _retire(self, count: int, burst: bool) -> None:
        """Retire ``count`` base or burst workers: idle ones now, busy ones after their task."""
        if count <= 0:
            return
        woken: list[Worker[R, E]] = []
        kept: deque[Worker[R, E]] = deque()
        for worker in self._idle:
            if len(woken) < count and worker.burst is burst and not worker.retire:
                worker.retire = True
                woken.append(worker)
            else:
                kept.append(worker)
        self._idle = kept
        for worker in woken:
            self._wake(worker, RETIRE)
        count -= len(woken)
        if count > 0:
            busy = sum(1 for w in self._workers.values() if w.burst is burst and not w.retire)
            self._debt[burst] = min(self._debt[burst] + count, busy)

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused

    def pause(self) -> None:
        """Start no queued task until :meth:`resume`; running tasks go on.

        Submissions are still accepted and queue timeouts still fire; no burst worker is added.
        ``run_task`` is not affected, and a stop still runs (``drain``) or fails queued tasks.
        """
        with self._qlock:  # a thread lane checks the flag under it
            self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause`: idle workers are woken and take queued tasks at once."""
        if not self._paused:
            return
        self._paused = False
        idle, self._idle = self._idle, deque()
        for worker in idle:
            self._wake(worker, WAKE)

    def suspend(self, handle: TaskHandle[E]) -> bool:
        """Stop a RUNNING task's timeout clock (the caller stops the task itself).

        Its timer is cancelled and the time left remembered; its context's ``deadline`` is
        None meanwhile. Idempotent. False (nothing done) if the task is not running here.
        """
        if handle._manager is not self or handle._state is not RUNNING:
            return False
        if handle in self._suspended:
            return True
        timer = handle._timer
        if timer is not None:
            handle._timer = None
            timer.cancel()
            left = timer.when() - self._loop.time()
        elif handle._timeout is not None:  # a thread lane started it; not armed yet
            left = handle._started + handle._timeout - _monotonic()
        else:
            left = math.inf
        self._suspended[handle] = max(left, 0.0)
        ctx = handle._ctx
        if ctx is not None:
            ctx.deadline = None
        return True

    def unsuspend(self, handle: TaskHandle[E]) -> bool:
        """Restart the timeout clock of a task stopped by :meth:`suspend`, with the time left.

        Idempotent. False (nothing done) if the task is not running here.
        """
        if handle._manager is not self or handle._state is not RUNNING:
            return False
        left = self._suspended.pop(handle, None)
        if left is None:
            return True
        if left != math.inf:
            deadline = _monotonic() + left
            handle._timer = self._loop.call_at(deadline, self._on_timeout, handle)
            ctx = handle._ctx
            if ctx is not None:
                ctx.deadline = deadline
        return True

    def set_priority(
        self, handles: Iterable[TaskHandle[E]], priority: Priority | int
    ) -> list[TaskHandle[E]]:
        """Move QUEUED tasks to ``priority``; return those moved (others are ignored).

        In the queue they are placed as if submitted at that level at their original time (by
        task id); a task waiting for room (``block=True``) just gets the new level. Running,
        ended and held-for-retry tasks are left alone. O(n + k log k) for the whole batch.
        """
        level = Priority(priority)
        moved: list[TaskHandle[E]] = []
        moving: list[TaskHandle[E]] = []
        seen: set[TaskHandle[E]] = set()
        with self._qlock:  # thread lanes pop under it
            for job in handles:
                if job._manager is not self or job._state is not QUEUED or job in seen:
                    continue
                seen.add(job)
                if job._loc == IN_QUEUE:
                    moved.append(job)
                    if job._priority is not level:
                        moving.append(job)
                elif job._loc == IN_WAITLIST:
                    job._priority = level
                    moved.append(job)
            self._queue.move(moving, level)
        return moved

    # ----------------------------------------------------------------- bursting

    async def _scale_loop(self, last: float) -> None:
        """Every ``burst_interval``: measure the rates since ``last`` (start()), then rescale."""
        interval = self.config.burst_interval
        loop = self._loop
        metrics = self._metrics
        last_arrived = last_finished = last_count = 0  # tasks submitted before it first runs count
        last_total = 0.0
        per_worker: float | None = None  # 1 / mean duration of the tasks that ended lately
        while not self._closing:
            await asyncio.sleep(interval)
            if self._closing:
                return
            metrics.sample()
            now = loop.time()
            span = max(now - last, 1e-9)
            self._arrival_rate = (self._arrived - last_arrived) / span
            self._drain_rate = (self._finished - last_finished) / span
            timed = metrics.exec_count - last_count
            if timed:
                per_worker = timed / max(metrics.exec_total - last_total, 1e-6)
            last, last_arrived, last_finished = now, self._arrived, self._finished
            last_total, last_count = metrics.exec_total, metrics.exec_count
            self._rescale(per_worker, span)

    def _rescale(self, per_worker: float | None, span: float) -> None:
        """Apply :func:`burst_target` to the rates just measured over ``span`` seconds."""
        burst = free = 0
        for worker in self._workers.values():
            if worker.retire:
                continue
            if worker.burst:
                burst += 1
            if worker.job is None and not worker.borrowed:
                free += 1  # idle or starting: takes a queued task without any new worker
        burst -= self._debt[1]
        target = burst_target(
            arrival_rate=self._arrival_rate,
            drain_rate=self._drain_rate,
            per_worker_rate=per_worker,
            backlog=max(0, self._queue.size + self._waitlisted - free),
            base=self._base,
            burst=burst,
            max_workers=self._max_workers,
            interval=span,
        )
        if target > burst:
            self._calm = 0
            if self._paused:
                return
            kept = min(self._debt[1], target - burst)  # busy ones that were to retire stay
            self._debt[1] -= kept
            for _ in range(target - burst - kept):
                self._burst_count += 1
                self._spawn(self._free_id(), burst=True, first=None)
        elif target < burst:
            self._calm += 1
            if self._calm >= RETIRE_AFTER:
                self._retire(burst - target, burst=True)
        else:
            self._calm = 0

    # ----------------------------------------------------------------- observability

    def stats(self) -> Stats:
        """An O(1) snapshot of workers and queue occupancy."""
        queued = self._queue.size
        cap = self._cap
        return Stats(
            base_workers=self._base,
            max_workers=self._max_workers,
            active_workers=len(self._workers),
            burst_workers=self._burst_count,
            idle_workers=len(self._idle),
            queued_by_priority=self._queue.by_priority(),
            queued=queued,
            running=self._running,
            available_resources=len(self._idle) + len(self._spare),
            queue_capacity=cap,
            queue_usage=queued / cap if cap else 0.0,
            arrival_rate=self._arrival_rate,
            drain_rate=self._drain_rate,
        )

    def metrics(self) -> Metrics:
        """Rates, execution/wait statistics and totals from the built-in recorder."""
        return self._metrics.snapshot()
