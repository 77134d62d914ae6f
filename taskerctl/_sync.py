"""The blocking client, :class:`Client`. Its twin is :class:`taskerctl.AsyncClient`."""

from __future__ import annotations

import builtins
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc

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
Callback = Callable[[TaskResult | None, BaseException | None], object]
_UNSET: Any = object()


class TaskHandle:
    """A submitted task: ``id``, live ``state``, ``wait()``, ``cancel()``, ``events()``."""

    def __init__(self, client: Client, task_id: int) -> None:
        self.client = client
        self.id = task_id

    def __repr__(self) -> str:
        return f"TaskHandle(id={self.id})"

    @property
    def state(self) -> TaskState:
        """The task's state, fetched from the daemon."""
        return self.client.get(self.id).state

    def wait(self, timeout: float | None = None) -> TaskResult:
        """Block until the task is terminal (StreamResults, no polling) and return its result.

        ``timeout`` limits the wait (:class:`DeadlineExceeded`), not the task.
        """
        return self.client._wait(self.id, timeout=timeout)

    def result(self, timeout: float | None = None) -> TaskResult:
        """Like :meth:`wait`, but raise ``TaskFailed``/``TaskTimedOut``/``TaskCancelled`` unless
        the task SUCCEEDED."""
        return _check(self.wait(timeout))

    def cancel(self) -> bool:
        """Cancel the task; False when it had already finished."""
        return self.client.cancel(self.id)

    def events(self, output: bool = True) -> Iterator[TaskEvent]:
        """Iterate the task's events (with output chunks when ``output``) until it finishes."""
        return self.client.stream_results([self.id], output=output)


def _check(result: TaskResult) -> TaskResult:
    if not result.ok:
        raise ended_error(result)
    return result


class Client:
    """Blocking Tasker client over the daemon's Unix socket; thread-safe, a context manager.

    ``socket`` defaults to ``$TASKER_SOCKET``, else the daemon's default path.
    ``rpc_timeout`` is the default deadline of unary RPCs (seconds); it never limits tasks.
    ``max_workers`` sizes the thread pool behind ``queue_task_async`` and callbacks.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        rpc_timeout: float | None = DEFAULT_RPC_TIMEOUT,
        max_workers: int = 32,
    ) -> None:
        self.socket: Path = Path(os.path.abspath(client_socket_path(socket)))
        self.rpc_timeout = rpc_timeout
        self._channel = grpc.insecure_channel(
            channel_target(self.socket), options=list(CHANNEL_OPTIONS)
        )
        self._stub = pb_grpc.TaskerStub(self._channel)
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and let pending background waits finish."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._channel.close()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_workers, "taskerctl")
            return self._pool

    def _deadline(self, rpc_timeout: float | None) -> float | None:
        return self.rpc_timeout if rpc_timeout is _UNSET else rpc_timeout

    def _call(self, method: Callable[..., T], request: Any, rpc_timeout: Any) -> T:
        try:
            return method(request, timeout=self._deadline(rpc_timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err, self.socket) from None

    def _stream(
        self, method: Callable[..., Any], request: Any, timeout: float | None
    ) -> Iterator[pb.TaskEvent]:
        call = method(request, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc_error(err, self.socket) from None
        finally:
            call.cancel()

    # -- submitting -------------------------------------------------------------------------

    def submit(
        self,
        cmd: Command,
        *,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[TaskOptions],
    ) -> TaskHandle:
        """Submit one task; returns once the daemon has journaled it.

        ``cmd`` is an argv list, or a string (``shell=True``: run by ``/bin/sh -c``; else
        ``shlex.split``). ``env=None`` sends a copy of ``os.environ``; ``cwd=None`` the current
        directory. ``timeout``/``queue_timeout`` take seconds or duration strings (``"5s"``).
        """
        spec = build_spec(cmd, **options)
        resp = self._call(self._stub.Submit, pb.SubmitRequest(tasks=[spec]), rpc_timeout)
        return TaskHandle(self, resp.ids[0])

    def submit_many(
        self,
        items: Iterable[SpecLike],
        *,
        batch_size: int = 1000,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[TaskOptions],
    ) -> builtins.list[TaskHandle]:
        """Submit many tasks, one Submit RPC per ``batch_size`` (at most 10,000) tasks.

        Items are commands, ``pb.TaskSpec`` or dicts of ``submit`` kwargs with ``cmd``;
        ``options`` are ``submit`` kwargs shared by all items. Each batch is all or nothing.
        """
        handles: builtins.list[TaskHandle] = []
        for request in submit_requests(items, options, batch_size):
            resp = self._call(self._stub.Submit, request, rpc_timeout)
            handles.extend(TaskHandle(self, i) for i in resp.ids)
        return handles

    def queue_task(
        self, cmd: Command, *, wait_timeout: float | None = None, **kw: Any
    ) -> TaskResult:
        """Submit and block until the result: the TaskResult if SUCCEEDED, else raise
        ``TaskFailed`` (with ``.result``), ``TaskTimedOut`` or ``TaskCancelled``.

        ``kw`` are :meth:`submit`'s options.
        """
        return self.submit(cmd, **kw).result(wait_timeout)

    def queue_task_async(self, cmd: Command, **kw: Any) -> Future[TaskResult]:
        """:meth:`queue_task` in a client thread; returns a ``concurrent.futures.Future``."""
        return self._executor().submit(self.queue_task, cmd, **kw)

    def queue_task_with_callback(
        self, cmd: Command, *, callback: Callback, **kw: Any
    ) -> Future[TaskResult]:
        """Like :meth:`queue_task_async`, and call ``callback(result, error)`` exactly once on a
        client thread: ``(result, None)`` on success, ``(result or None, error)`` otherwise."""
        future = self.queue_task_async(cmd, **kw)

        def done(f: Future[TaskResult]) -> None:
            err = f.exception()
            result = f.result() if err is None else getattr(err, "result", None)
            try:
                callback(result, err)
            except Exception:
                log.exception("taskerctl: task callback raised")

        future.add_done_callback(done)
        return future

    # -- running at once --------------------------------------------------------------------

    def run_stream(self, cmd: Command, **kw: Any) -> Iterator[TaskEvent]:
        """Run at once (Run RPC, bypassing the queue) and iterate its events, output included;
        the last is ``finished``. ``kw`` are :meth:`submit`'s options (no ``rpc_timeout``)."""
        req = pb.RunRequest(task=build_spec(cmd, **kw))
        for ev in self._stream(self._stub.Run, req, None):
            yield TaskEvent.from_proto(ev)

    def run(
        self, cmd: Command, *, on_output: OutputCallback | None = None, **kw: Any
    ) -> TaskResult:
        """Run at once via the Run RPC and return the TaskResult (whatever its state).

        ``on_output(stream, data)`` sees output chunks live (``stream`` is stdout or stderr).
        """
        return _collect_run(self.run_stream(cmd, **kw), on_output)

    # -- watching ---------------------------------------------------------------------------

    def stream_results(
        self,
        ids: Iterable[int] | None = None,
        output: bool = False,
        *,
        finished_only: bool = False,
        timeout: float | None = None,
    ) -> Iterator[TaskEvent]:
        """Iterate events of ``ids`` (every task, live, when None) until they all finish;
        ``finished_only`` keeps just each task's final event."""
        req = pb.StreamResultsRequest(
            ids=list(ids or ()), output=output, finished_only=finished_only
        )
        for ev in self._stream(self._stub.StreamResults, req, timeout):
            yield TaskEvent.from_proto(ev)

    def _wait(self, task_id: int, timeout: float | None) -> TaskResult:
        try:
            for ev in self.stream_results(
                [task_id], output=True, finished_only=True, timeout=timeout
            ):
                if ev.kind == "finished" and ev.result is not None and ev.task_id == task_id:
                    return ev.result
        except DeadlineExceeded:
            raise DeadlineExceeded(f"task {task_id} not finished after {timeout}s") from None
        raise DaemonUnavailable(self.socket, "event stream ended before the task finished")

    def wait(self, task_id: int, timeout: float | None = None) -> TaskResult:
        """Block until task ``task_id`` is terminal and return its result."""
        return self._wait(task_id, timeout)

    # -- inspecting and managing ------------------------------------------------------------

    def get(
        self, task_id: int, output: bool = False, *, rpc_timeout: float | None = _UNSET
    ) -> TaskResult:
        """One task's record (with stdout/stderr when ``output``)."""
        task = self._call(self._stub.Get, pb.GetRequest(id=task_id, output=output), rpc_timeout)
        return TaskResult.from_proto(task)

    def handle(self, task_id: int) -> TaskHandle:
        """A handle for an existing task id (no RPC)."""
        return TaskHandle(self, task_id)

    def list(
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
            resp = self._call(self._stub.List, req, rpc_timeout)
            out.extend(TaskResult.from_proto(t) for t in resp.tasks[: limit - len(out)])
            if not resp.next_page_token:
                break
            req.page_token = resp.next_page_token
        return out

    def cancel(self, task_id: int, *, rpc_timeout: float | None = _UNSET) -> bool:
        """Cancel a task; False when it had already finished. Raises TaskNotFound."""
        return self.cancel_many([task_id], rpc_timeout=rpc_timeout)[task_id]

    def cancel_many(
        self, task_ids: Iterable[int], *, rpc_timeout: float | None = _UNSET
    ) -> dict[int, bool]:
        """Cancel tasks in one step: the queued ones leave the queue before any running one is
        stopped. Maps each id to whether it was cancelled (False: it had already finished).
        Raises TaskNotFound, and then none was cancelled."""
        resp = self._call(self._stub.Cancel, cancel_request(task_ids), rpc_timeout)
        return cancel_results(resp)

    def stats(self, *, rpc_timeout: float | None = _UNSET) -> Stats:
        """Workers, queue and counts right now."""
        return Stats.from_proto(self._call(self._stub.Stats, pb.StatsRequest(), rpc_timeout))

    def metrics(self, *, rpc_timeout: float | None = _UNSET) -> Metrics:
        """Rates, latencies and totals since the daemon started."""
        resp = self._call(self._stub.Metrics, pb.MetricsRequest(), rpc_timeout)
        return Metrics.from_proto(resp)

    def clean(
        self, older_than: float | str | None = None, *, rpc_timeout: float | None = _UNSET
    ) -> int:
        """Remove finished tasks (that ended at least ``older_than`` ago); returns how many."""
        req = older_than_request(older_than)
        resp: pb.CleanResponse = self._call(self._stub.Clean, req, rpc_timeout)
        return resp.removed

    def shutdown(self, mode: str = "stop", *, rpc_timeout: float | None = _UNSET) -> None:
        """Stop the daemon: ``stop``, ``drain`` (finish the queue first) or ``kill``."""
        req = pb.ShutdownRequest(mode=shutdown_mode(mode))
        self._call(self._stub.Shutdown, req, rpc_timeout)


def _collect_run(events: Iterable[TaskEvent], on_output: OutputCallback | None) -> TaskResult:
    collector = RunCollector(on_output)
    for ev in events:
        result = collector.feed(ev)
        if result is not None:
            return result
    raise TaskerError("the Run stream ended before the task finished")


__all__ = ["Client", "TaskHandle"]
