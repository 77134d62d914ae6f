"""The asyncio client, :class:`AsyncClient`: the twin of :class:`taskerctl.Client`."""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
import os
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
)
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc
import grpc.aio

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerctl.errors import (
    DaemonUnavailable,
    DeadlineExceeded,
    TaskerError,
    ended_error,
    from_rpc_error,
)
from taskerctl.models import (
    CHANNEL_OPTIONS,
    DEFAULT_RPC_TIMEOUT,
    Command,
    Metrics,
    OutputCallback,
    RunCollector,
    SpecLike,
    Stats,
    TaskEvent,
    TaskOptions,
    TaskResult,
    TaskState,
    build_spec,
    cancel_request,
    cancel_results,
    channel_target,
    list_request,
    older_than_request,
    shutdown_mode,
    submit_requests,
)
from taskerctl.paths import client_socket_path

log = logging.getLogger("taskerctl")
T = TypeVar("T")
#: ``callback(result, error)``; may be a plain function or return an awaitable.
AsyncCallback = Callable[[TaskResult | None, BaseException | None], object]
_UNSET: Any = object()


class AsyncTaskHandle:
    """A submitted task: ``id``, ``await handle.state``, ``await handle`` (its result),
    ``wait()``, ``cancel()``, ``events()``."""

    def __init__(self, client: AsyncClient, task_id: int) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"AsyncTaskHandle(id={self.id})"

    @property
    def state(self) -> Coroutine[Any, Any, TaskState]:
        """The task's state, fetched from the daemon (``await handle.state``)."""
        return self._state()

    async def _state(self) -> TaskState:
        return (await self.client.get(self.id)).state

    async def wait(self, timeout: float | None = None) -> TaskResult:
        """Wait until the task is terminal (StreamResults, no polling) and return its result."""
        return await self.client.wait(self.id, timeout)

    async def result(self, timeout: float | None = None) -> TaskResult:
        """Like :meth:`wait`, but raise ``TaskFailed``/``TaskTimedOut``/``TaskCancelled`` unless
        the task SUCCEEDED."""
        return _check(await self.wait(timeout))

    def __await__(self) -> Generator[Any, None, TaskResult]:
        return self.wait().__await__()

    async def cancel(self) -> bool:
        """Cancel the task; False when it had already finished."""
        return await self.client.cancel(self.id)

    def events(self, output: bool = True) -> AsyncIterator[TaskEvent]:
        """Iterate the task's events (with output chunks when ``output``) until it finishes."""
        return self.client.stream_results([self.id], output=output)


def _check(result: TaskResult) -> TaskResult:
    if not result.ok:
        raise ended_error(result)
    return result


class AsyncClient:
    """asyncio Tasker client; safe to share between tasks of one loop, an async context manager.

    Same arguments and methods as :class:`taskerctl.Client`, as coroutines.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        rpc_timeout: float | None = DEFAULT_RPC_TIMEOUT,
    ) -> None:
        self.socket: Path = Path(os.path.abspath(client_socket_path(socket)))
        self.rpc_timeout = rpc_timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub_: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- plumbing ---------------------------------------------------------------------------

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

    @property
    def _stub(self) -> Any:
        # The aio channel binds to the running loop, so it is made on first use.
        if self._stub_ is None:
            self._channel = grpc.aio.insecure_channel(
                channel_target(self.socket), options=list(CHANNEL_OPTIONS)
            )
            self._stub_ = pb_grpc.TaskerStub(self._channel)
        return self._stub_

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, name: str, request: Any, rpc_timeout: Any) -> Any:
        timeout = self.rpc_timeout if rpc_timeout is _UNSET else rpc_timeout
        try:
            return await getattr(self._stub, name)(request, timeout=timeout)
        except grpc.RpcError as err:
            raise from_rpc_error(err, self.socket) from None

    async def _stream(
        self, name: str, request: Any, timeout: float | None
    ) -> AsyncIterator[TaskEvent]:
        call = getattr(self._stub, name)(request, timeout=timeout)
        try:
            async for ev in call:
                yield TaskEvent.from_proto(ev)
        except grpc.RpcError as err:
            raise from_rpc_error(err, self.socket) from None
        finally:
            call.cancel()

    # -- submitting -------------------------------------------------------------------------

    async def submit(
        self,
        cmd: Command,
        *,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[TaskOptions],
    ) -> AsyncTaskHandle:
        """Submit one task; returns once the daemon has journaled it (see ``Client.submit``)."""
        spec = build_spec(cmd, **options)
        resp = await self._call("Submit", pb.SubmitRequest(tasks=[spec]), rpc_timeout)
        return AsyncTaskHandle(self, resp.ids[0])

    async def submit_many(
        self,
        items: Iterable[SpecLike],
        *,
        batch_size: int = 1000,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[TaskOptions],
    ) -> builtins.list[AsyncTaskHandle]:
        """Submit many tasks, one Submit RPC per ``batch_size`` tasks, as ``Client.submit_many``."""
        handles: builtins.list[AsyncTaskHandle] = []
        for request in submit_requests(items, options, batch_size):
            resp = await self._call("Submit", request, rpc_timeout)
            handles.extend(AsyncTaskHandle(self, i) for i in resp.ids)
        return handles

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
        return self._stream("Run", pb.RunRequest(task=build_spec(cmd, **kw)), None)

    async def run(
        self, cmd: Command, *, on_output: OutputCallback | None = None, **kw: Any
    ) -> TaskResult:
        """Run at once via the Run RPC and return the TaskResult (whatever its state);
        ``on_output(stream, data)`` sees output chunks live."""
        collector = RunCollector(on_output)
        async for ev in self.run_stream(cmd, **kw):
            result = collector.feed(ev)
            if result is not None:
                return result
        raise TaskerError("the Run stream ended before the task finished")

    # -- watching ---------------------------------------------------------------------------

    def stream_results(
        self,
        ids: Iterable[int] | None = None,
        output: bool = False,
        *,
        finished_only: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[TaskEvent]:
        """Iterate events of ``ids`` (every task, live, when None) until they all finish;
        ``finished_only`` keeps just each task's final event."""
        req = pb.StreamResultsRequest(
            ids=list(ids or ()), output=output, finished_only=finished_only
        )
        return self._stream("StreamResults", req, timeout)

    async def wait(self, task_id: int, timeout: float | None = None) -> TaskResult:
        """Wait until task ``task_id`` is terminal and return its result."""
        try:
            async for ev in self.stream_results(
                [task_id], output=True, finished_only=True, timeout=timeout
            ):
                if ev.kind == "finished" and ev.result is not None and ev.task_id == task_id:
                    return ev.result
        except DeadlineExceeded:
            raise DeadlineExceeded(f"task {task_id} not finished after {timeout}s") from None
        raise DaemonUnavailable(self.socket, "event stream ended before the task finished")

    # -- inspecting and managing ------------------------------------------------------------

    async def get(
        self, task_id: int, output: bool = False, *, rpc_timeout: float | None = _UNSET
    ) -> TaskResult:
        """One task's record (with stdout/stderr when ``output``)."""
        task = await self._call("Get", pb.GetRequest(id=task_id, output=output), rpc_timeout)
        return TaskResult.from_proto(task)

    def handle(self, task_id: int) -> AsyncTaskHandle:
        """A handle for an existing task id (no RPC)."""
        return AsyncTaskHandle(self, task_id)

    async def list(
        self,
        states: Iterable[str | int] | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int = 100,
        *,
        rpc_timeout: float | None = _UNSET,
    ) -> builtins.list[TaskResult]:
        """Up to ``limit`` task records, newest first, following page tokens."""
        req = list_request(states, labels, limit)
        out: builtins.list[TaskResult] = []
        while len(out) < limit:
            resp = await self._call("List", req, rpc_timeout)
            out.extend(TaskResult.from_proto(t) for t in resp.tasks[: limit - len(out)])
            if not resp.next_page_token:
                break
            req.page_token = resp.next_page_token
        return out

    async def cancel(self, task_id: int, *, rpc_timeout: float | None = _UNSET) -> bool:
        """Cancel a task; False when it had already finished. Raises TaskNotFound."""
        return (await self.cancel_many([task_id], rpc_timeout=rpc_timeout))[task_id]

    async def cancel_many(
        self, task_ids: Iterable[int], *, rpc_timeout: float | None = _UNSET
    ) -> dict[int, bool]:
        """Cancel tasks in one step: the queued ones leave the queue before any running one is
        stopped. Maps each id to whether it was cancelled (False: it had already finished).
        Raises TaskNotFound, and then none was cancelled."""
        resp = await self._call("Cancel", cancel_request(task_ids), rpc_timeout)
        return cancel_results(resp)

    async def stats(self, *, rpc_timeout: float | None = _UNSET) -> Stats:
        """Workers, queue and counts right now."""
        return Stats.from_proto(await self._call("Stats", pb.StatsRequest(), rpc_timeout))

    async def metrics(self, *, rpc_timeout: float | None = _UNSET) -> Metrics:
        """Rates, latencies and totals since the daemon started."""
        return Metrics.from_proto(await self._call("Metrics", pb.MetricsRequest(), rpc_timeout))

    async def clean(
        self, older_than: float | str | None = None, *, rpc_timeout: float | None = _UNSET
    ) -> int:
        """Remove finished tasks (that ended at least ``older_than`` ago); returns how many."""
        resp = await self._call("Clean", older_than_request(older_than), rpc_timeout)
        return int(resp.removed)

    async def shutdown(self, mode: str = "stop", *, rpc_timeout: float | None = _UNSET) -> None:
        """Stop the daemon: ``stop``, ``drain`` (finish the queue first) or ``kill``."""
        await self._call("Shutdown", pb.ShutdownRequest(mode=shutdown_mode(mode)), rpc_timeout)


__all__ = ["AsyncCallback", "AsyncClient", "AsyncTaskHandle"]
