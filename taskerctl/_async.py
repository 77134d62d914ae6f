"""The asyncio client, :class:`AsyncClient`: the twin of :class:`taskerctl.Client`.

Only the transport is here: requests are built, and answers mapped, in :mod:`taskerctl._core`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import inspect
import logging
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
)
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc.aio

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerctl import _core as core
from taskerctl._core import UNSET as _UNSET
from taskerctl.models import (
    Command,
    EditOptions,
    Group,
    Metrics,
    OutputCallback,
    RestartOptions,
    Schedule,
    ScheduleOptions,
    SpecLike,
    Stats,
    TaskEvent,
    TaskOptions,
    TaskResult,
    TaskState,
    WaitOptions,
)

log = logging.getLogger("taskerctl")
T = TypeVar("T")
#: ``callback(result, error)``; may be a plain function or return an awaitable.
AsyncCallback = Callable[[TaskResult | None, BaseException | None], object]


class AsyncTaskHandle(core.BaseHandle["AsyncClient"]):
    """A submitted task: ``id``, ``await handle`` (its result), ``wait()``, ``result()``,
    ``cancel()``, ``events()`` and ``get_state()``. Only its methods ask the daemon."""

    async def get_state(self) -> TaskState:
        """The task's state now, asked of the daemon (one Get)."""
        return (await self.client.get(self.id)).state

    @property
    def state(self) -> Coroutine[Any, Any, TaskState]:
        """Deprecated: use ``await handle.get_state()`` (a property should not make an RPC)."""
        core.deprecated("AsyncTaskHandle.state", "AsyncTaskHandle.get_state()")
        return self.get_state()

    async def wait(self, timeout: float | None = None) -> TaskResult:
        """Wait until the task is terminal (StreamResults, no polling) and return its result,
        with its output."""
        return await self.client.wait(self.id, timeout)

    async def result(self, timeout: float | None = None) -> TaskResult:
        """Like :meth:`wait`, but raise ``TaskFailed``/``TaskTimedOut``/``TaskCancelled`` unless
        the task SUCCEEDED."""
        return core.succeeded(await self.wait(timeout))

    def __await__(self) -> Generator[Any, None, TaskResult]:
        return self.wait().__await__()

    async def cancel(self) -> bool:
        """Cancel the task; False when it had already finished."""
        return await self.client.cancel(self.id)

    def events(self, output: bool = True) -> AsyncIterator[TaskEvent]:
        """Iterate the task's events (with output chunks when ``output``) until it finishes."""
        return self.client.stream_results([self.id], output=output)


async def _merged(calls: builtins.list[Any]) -> AsyncGenerator[pb.TaskEvent, None]:
    """The events of several streams as they come: one reader task per stream (none for one)."""
    if len(calls) <= 1:
        for call in calls:
            async for event in call:
                yield event
        return
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def read(call: Any) -> None:
        try:
            async for event in call:
                inbox.put_nowait(event)
        except Exception as err:
            inbox.put_nowait(err)
        else:
            inbox.put_nowait(None)

    readers = [asyncio.ensure_future(read(call)) for call in calls]
    try:
        for _ in calls:  # each reader ends with None or its error
            while (item := await inbox.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
    finally:
        for reader in readers:
            reader.cancel()


class AsyncClient(core.BaseClient):
    """asyncio Tasker client; safe to share between tasks of one loop, an async context manager.

    Same arguments and methods as :class:`taskerctl.Client`, as coroutines.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        rpc_timeout: float | None = core.DEFAULT_RPC_TIMEOUT,
        **remote: Unpack[core.Remote],
    ) -> None:
        super().__init__(socket, rpc_timeout, **remote)
        self._channel: grpc.aio.Channel | None = None
        self._stub_: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- transport --------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Let background tasks (``queue_task_async``, callbacks) finish, then close."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub_ = None
        self._close_door()

    @property
    def _stub(self) -> Any:
        # The aio channel binds to the running loop, so it is made on first use.
        if self._stub_ is None:
            self._channel = self._open_channel(grpc.aio)
            self._stub_ = pb_grpc.TaskerStub(self._channel)
        return self._stub_

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, op: core.Op[T], rpc_timeout: Any = _UNSET) -> T:
        """Make the calls of a core operation, one after the other; return its result."""
        run = core.Driver(op, self._timeout(rpc_timeout))
        with self._errors():
            while run.call is not None:
                method = getattr(self._stub, run.call.method)
                run.answer(
                    await method(
                        run.call.request,
                        timeout=run.timeout,
                        metadata=self._call_metadata(run.call.method),
                    )
                )
        return run.result

    async def _stream(
        self, method: str, request: Any, timeout: float | None
    ) -> AsyncIterator[TaskEvent]:
        async for event in self._events(method, request, timeout):
            yield TaskEvent.from_proto(event)

    async def _events(self, method: str, request: Any, timeout: float | None) -> AsyncIterator[Any]:
        call = getattr(self._stub, method)(
            request, timeout=timeout, metadata=self._call_metadata(method)
        )
        with self._errors(call):
            async for event in call:
                yield event

    async def _wait(self, waiter: core.Waiter) -> builtins.list[TaskResult]:
        calls = [
            self._stub.StreamResults(r, timeout=waiter.timeout, metadata=self._metadata)
            for r in waiter.requests
        ]
        with waiter.deadline(), self._errors(*calls):
            async with contextlib.aclosing(_merged(calls)) as events:
                async for event in events:
                    waiter.feed(event)
        return waiter.results(self._where)

    # -- submitting -------------------------------------------------------------------------

    async def submit(
        self,
        cmd: Command,
        *,
        stashed: bool = False,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[TaskOptions],
    ) -> AsyncTaskHandle:
        """Submit one task; returns once the daemon has journaled it (see ``Client.submit``)."""
        task_id = await self._run(core.submit(cmd, options, stashed), rpc_timeout)
        return AsyncTaskHandle(self, task_id)

    async def submit_many(
        self,
        items: Iterable[SpecLike],
        *,
        batch_size: int = 1000,
        stashed: bool = False,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[TaskOptions],
    ) -> builtins.list[AsyncTaskHandle]:
        """Submit many tasks, one Submit RPC per ``batch_size`` tasks, as ``Client.submit_many``."""
        op = core.submit_many(items, options, batch_size, stashed)
        ids = await self._run(op, rpc_timeout)
        return [AsyncTaskHandle(self, i) for i in ids]

    async def queue_task(
        self, cmd: Command, *, wait_timeout: float | None = None, **kw: Any
    ) -> TaskResult:
        """Submit and wait: the TaskResult if SUCCEEDED, else raise ``TaskFailed`` (with
        ``.result``), ``TaskTimedOut`` or ``TaskCancelled``. ``kw`` are :meth:`submit`'s options."""
        handle = await self.submit(cmd, **kw)
        return await handle.result(wait_timeout)

    def queue_task_async(self, cmd: Command, **kw: Any) -> asyncio.Task[TaskResult]:
        """:meth:`queue_task` as an ``asyncio.Task`` (call from within the loop)."""
        return self._spawn(self.queue_task(cmd, **kw))

    def queue_task_with_callback(
        self, cmd: Command, *, callback: AsyncCallback, **kw: Any
    ) -> asyncio.Task[None]:
        """Run :meth:`queue_task` in a task and call ``callback(result, error)`` exactly once from
        it (awaited if it returns an awaitable); never blocks the caller."""

        async def runner() -> None:
            result: TaskResult | None = None
            error: BaseException | None = None
            try:
                result = await self.queue_task(cmd, **kw)
            except Exception as err:
                error = err
                result = getattr(err, "result", None)
            try:
                out = callback(result, error)
                if inspect.isawaitable(out):
                    await out
            except Exception:
                log.exception("taskerctl: task callback raised")

        return self._spawn(runner())

    # -- running at once --------------------------------------------------------------------

    def run_stream(self, cmd: Command, **kw: Any) -> AsyncIterator[TaskEvent]:
        """Run at once (Run RPC) and iterate its events, output included; the last is
        ``finished``."""
        return self._stream("Run", core.run_request(cmd, kw), None)

    async def run(
        self, cmd: Command, *, on_output: OutputCallback | None = None, **kw: Any
    ) -> TaskResult:
        """Run at once via the Run RPC and return the TaskResult (whatever its state);
        ``on_output(stream, data)`` sees output chunks live."""
        collector = core.RunCollector(on_output)
        async for ev in self.run_stream(cmd, **kw):
            if (result := collector.feed(ev)) is not None:
                return result
        raise collector.unfinished()

    # -- watching and waiting ---------------------------------------------------------------

    def stream_results(
        self,
        ids: Iterable[int] | None = None,
        output: bool = False,
        *,
        finished_only: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[TaskEvent]:
        """Iterate events of ``ids`` (at most 10,000; every task, live, when None) until they all
        finish; ``finished_only`` keeps just each task's final event."""
        request = core.stream_request(ids, output, finished_only)
        return self._stream("StreamResults", request, timeout)

    async def ends(self, timeout: float | None = None) -> AsyncIterator[builtins.list[TaskResult]]:
        """Every task's end from now on, as it comes: several at once when this reads behind
        (without output). Runs until ``timeout`` (None: for ever) or the daemon stops."""
        async for event in self._events("StreamResults", core.ENDS, timeout):
            if ended := core.ended_tasks(event):
                yield ended

    async def wait(self, task_id: int, timeout: float | None = None) -> TaskResult:
        """Wait until task ``task_id`` is terminal and return its result, with its output."""
        return (await self._wait(core.Waiter([task_id], output=True, timeout=timeout)))[0]

    async def wait_many(
        self, ids: Iterable[int], **options: Unpack[WaitOptions]
    ) -> builtins.list[TaskResult]:
        """Wait until every task of ``ids`` (any number) is terminal; their results in the order
        of ``ids``, as ``Client.wait_many`` (``on_result`` is called from this task)."""
        return await self._wait(core.Waiter(ids, **options))

    async def wait_all(
        self, *, group: str | None = None, **options: Unpack[WaitOptions]
    ) -> builtins.list[TaskResult]:
        """Wait until every task live now (of ``group`` only, when given) is terminal; their
        results by id, as ``Client.wait_all``."""
        return await self._wait(core.Waiter(None, group=group, **options))

    # -- inspecting and managing ------------------------------------------------------------

    async def get(
        self, task_id: int, output: bool = False, *, rpc_timeout: float | None = _UNSET
    ) -> TaskResult:
        """One task's record (with stdout/stderr when ``output``)."""
        return await self._run(core.get(task_id, output), rpc_timeout)

    def handle(self, task_id: int) -> AsyncTaskHandle:
        """A handle for an existing task id (no RPC)."""
        return AsyncTaskHandle(self, task_id)

    async def list(
        self,
        states: Iterable[str | int] | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int = 100,
        *,
        group: str | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> builtins.list[TaskResult]:
        """Up to ``limit`` task records (of ``group`` only), newest first, following page
        tokens."""
        return await self._run(core.list_tasks(states, labels, limit, group), rpc_timeout)

    async def list_page(
        self,
        states: Iterable[str | int] | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        group: str | None = None,
        page_size: int = 100,
        page_token: str = "",
        rpc_timeout: float | None = _UNSET,
    ) -> tuple[builtins.list[TaskResult], str]:
        """One page of task records (at most 1,000), newest first, and the token of the next
        page ("" after the last): pass it back as ``page_token``, with the same filters."""
        return await self._run(
            core.list_page(states, labels, group, page_size, page_token), rpc_timeout
        )

    async def cancel(self, task_id: int, *, rpc_timeout: float | None = _UNSET) -> bool:
        """Cancel a task; False when it had already finished. Raises TaskNotFound."""
        return (await self.cancel_many([task_id], rpc_timeout=rpc_timeout))[task_id]

    async def cancel_many(
        self,
        ids: Iterable[int] = (),
        *,
        all: bool = False,
        labels: Mapping[str, str] | None = None,
        states: Iterable[str | int] | None = None,
        group: str | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> dict[int, bool]:
        """Cancel ``ids`` and, with ``all``/``labels``/``states``/``group``, every live task
        selected, in one request and one step, as ``Client.cancel_many``."""
        return await self._run(core.cancel(ids, all, labels, states, group), rpc_timeout)

    async def stats(self, *, group: str | None = None, rpc_timeout: float | None = _UNSET) -> Stats:
        """Workers, queue and counts right now (of ``group`` only, when given)."""
        return await self._run(core.stats(group), rpc_timeout)

    async def metrics(
        self, *, group: str | None = None, rpc_timeout: float | None = _UNSET
    ) -> Metrics:
        """Rates, latencies and totals since the daemon started (of ``group`` only)."""
        return await self._run(core.metrics(group), rpc_timeout)

    async def clean(
        self, older_than: float | str | None = None, *, rpc_timeout: float | None = _UNSET
    ) -> int:
        """Remove finished tasks (that ended at least ``older_than`` ago); returns how many."""
        return await self._run(core.clean(older_than), rpc_timeout)

    async def shutdown(self, mode: str = "stop", *, rpc_timeout: float | None = _UNSET) -> None:
        """Stop the daemon: ``stop``, ``drain`` (finish the queue first) or ``kill``."""
        await self._run(core.shutdown(mode), rpc_timeout)

    # -- controlling the queue: as Client's ----------------------------------------------

    async def add_group(
        self,
        name: str,
        *,
        parallel: int | None = None,
        max_parallel: int | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> Group:
        """Create a group, as ``Client.add_group``."""
        return await self._run(core.add_group(name, parallel, max_parallel), rpc_timeout)

    async def remove_group(
        self, name: str, *, force: bool = False, rpc_timeout: float | None = _UNSET
    ) -> int:
        """Remove a group (``force``: cancel its unfinished tasks); how many were cancelled."""
        return await self._run(core.remove_group(name, force), rpc_timeout)

    async def groups(self, *, rpc_timeout: float | None = _UNSET) -> builtins.list[Group]:
        """Every group, by name."""
        return await self._run(core.groups(), rpc_timeout)

    async def set_parallel(
        self,
        parallel: int,
        *,
        group: str | None = None,
        max_parallel: int | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> Group:
        """Change a group's slots now, as ``Client.set_parallel``."""
        return await self._run(core.set_parallel(parallel, group, max_parallel), rpc_timeout)

    async def pause(
        self,
        ids: Iterable[int] = (),
        *,
        groups: str | Iterable[str] | None = None,
        all: bool = False,
        wait: bool = False,
        rpc_timeout: float | None = _UNSET,
    ) -> builtins.list[int]:
        """Pause tasks and groups, as ``Client.pause``; the ids of the tasks paused."""
        return await self._run(core.pause(ids, groups, all, wait), rpc_timeout)

    async def resume(
        self,
        ids: Iterable[int] = (),
        *,
        groups: str | Iterable[str] | None = None,
        all: bool = False,
        rpc_timeout: float | None = _UNSET,
    ) -> builtins.list[int]:
        """Resume tasks and groups, as ``Client.resume``; the ids of the tasks resumed."""
        return await self._run(core.resume(ids, groups, all), rpc_timeout)

    async def set_priority(
        self, ids: Iterable[int], priority: str | int, *, rpc_timeout: float | None = _UNSET
    ) -> None:
        """Give queued or stashed tasks a new priority, as ``Client.set_priority``."""
        await self._run(core.set_priority(ids, priority), rpc_timeout)

    async def enqueue(
        self,
        ids: Iterable[int],
        *,
        delay: float | str | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> None:
        """Queue stashed tasks, at once or after ``delay``, as ``Client.enqueue``."""
        await self._run(core.enqueue(ids, delay), rpc_timeout)

    async def remove(self, ids: Iterable[int], *, rpc_timeout: float | None = _UNSET) -> int:
        """Delete finished tasks from the journal; returns how many."""
        return await self._run(core.remove(ids), rpc_timeout)

    async def signal(
        self, task_id: int, signal: str | int, *, rpc_timeout: float | None = _UNSET
    ) -> None:
        """Send ``signal`` to every process of a running or paused task."""
        await self._run(core.signal(task_id, signal), rpc_timeout)

    # -- workflows: as Client's ----------------------------------------------------------

    async def restart(
        self,
        ids: Iterable[int] = (),
        *,
        rpc_timeout: float | None = _UNSET,
        **kw: Unpack[RestartOptions],
    ) -> builtins.list[AsyncTaskHandle]:
        """Submit finished tasks again (``failed``: and every FAILED one), with ``specs`` (one
        per id) changing what they run, as ``Client.restart``; their handles."""
        op = core.restart(ids, kw.get("failed", False), kw.get("specs"))
        new = await self._run(op, rpc_timeout)
        return [AsyncTaskHandle(self, i) for i in new]

    async def edit(
        self, task_id: int, *, rpc_timeout: float | None = _UNSET, **fields: Unpack[EditOptions]
    ) -> TaskResult:
        """Change the fields given of a task that has not started, as ``Client.edit``."""
        return await self._run(core.edit(task_id, fields), rpc_timeout)

    async def add_schedule(
        self,
        cmd: Command,
        *,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[ScheduleOptions],
    ) -> Schedule:
        """Create a recurring schedule (``every`` or ``cron``), as ``Client.add_schedule``."""
        return await self._run(core.add_schedule(cmd, options), rpc_timeout)

    async def schedules(self, *, rpc_timeout: float | None = _UNSET) -> builtins.list[Schedule]:
        """Every schedule, by id."""
        return await self._run(core.schedules(), rpc_timeout)

    async def remove_schedule(
        self, schedule_id: int, *, rpc_timeout: float | None = _UNSET
    ) -> None:
        """Remove a schedule; the tasks it submitted stay."""
        await self._run(core.remove_schedule(schedule_id), rpc_timeout)


__all__ = ["AsyncCallback", "AsyncClient", "AsyncTaskHandle"]
