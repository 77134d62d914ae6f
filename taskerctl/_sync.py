"""The blocking client, :class:`Client`; its twin is :class:`taskerctl.AsyncClient`.

Only the transport is here: requests are built, and answers mapped, in :mod:`taskerctl._core`.
"""

from __future__ import annotations

import builtins
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc

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
Callback = Callable[[TaskResult | None, BaseException | None], object]


class TaskHandle(core.BaseHandle["Client"]):
    """A submitted task: ``id``, ``wait()``, ``result()``, ``cancel()``, ``events()`` and
    ``get_state()``. Only its methods ask the daemon."""

    def get_state(self) -> TaskState:
        """The task's state now, asked of the daemon (one Get)."""
        return self.client.get(self.id).state

    @property
    def state(self) -> TaskState:
        """Deprecated: use :meth:`get_state` (a property should not make an RPC)."""
        core.deprecated("TaskHandle.state", "TaskHandle.get_state()")
        return self.get_state()

    def wait(self, timeout: float | None = None) -> TaskResult:
        """Block until the task is terminal (StreamResults, no polling) and return its result,
        with its output.

        ``timeout`` limits the wait (:class:`DeadlineExceeded`), not the task.
        """
        return self.client.wait(self.id, timeout)

    def result(self, timeout: float | None = None) -> TaskResult:
        """Like :meth:`wait`, but raise ``TaskFailed``/``TaskTimedOut``/``TaskCancelled`` unless
        the task SUCCEEDED."""
        return core.succeeded(self.wait(timeout))

    def cancel(self) -> bool:
        """Cancel the task; False when it had already finished."""
        return self.client.cancel(self.id)

    def events(self, output: bool = True) -> Iterator[TaskEvent]:
        """Iterate the task's events (with output chunks when ``output``) until it finishes."""
        return self.client.stream_results([self.id], output=output)


def _merged(calls: builtins.list[Any]) -> Iterator[pb.TaskEvent]:
    """The events of several streams as they come: one reader thread per stream (none for one)."""
    if len(calls) <= 1:
        for call in calls:
            yield from call
        return
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def read(call: Any) -> None:
        try:
            for event in call:
                inbox.put(event)
        except Exception as err:
            inbox.put(err)
        else:
            inbox.put(None)

    for call in calls:
        threading.Thread(target=read, args=(call,), name="taskerctl-wait", daemon=True).start()
    for _ in calls:  # each reader ends with None or its error
        while (item := inbox.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item


class Client(core.BaseClient):
    """Blocking Tasker client; thread-safe, a context manager.

    ``socket`` defaults to ``$TASKER_SOCKET``, else the daemon's default path. Over TCP instead:
    ``address="host:7700"`` with ``token=`` and, for a private CA, ``tls_ca=`` (a PEM file);
    ``tls_cert=``/``tls_key=`` for mutual TLS (see :class:`taskerctl._core.Remote`).
    ``rpc_timeout`` is the default deadline of unary RPCs (seconds); it never limits tasks.
    ``max_workers`` sizes the thread pool behind ``queue_task_async`` and callbacks.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        rpc_timeout: float | None = core.DEFAULT_RPC_TIMEOUT,
        max_workers: int = 32,
        **remote: Unpack[core.Remote],
    ) -> None:
        super().__init__(socket, rpc_timeout, **remote)
        self._channel = self._open_channel(grpc)
        self._stub = pb_grpc.TaskerStub(self._channel)
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- transport --------------------------------------------------------------------------

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
        self._close_door()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_workers, "taskerctl")
            return self._pool

    def _run(self, op: core.Op[T], rpc_timeout: Any = _UNSET) -> T:
        """Make the calls of a core operation, one after the other; return its result."""
        run = core.Driver(op, self._timeout(rpc_timeout))
        with self._errors():
            while run.call is not None:
                method = getattr(self._stub, run.call.method)
                run.answer(
                    method(
                        run.call.request,
                        timeout=run.timeout,
                        metadata=self._call_metadata(run.call.method),
                    )
                )
        return run.result

    def _stream(self, method: str, request: Any, timeout: float | None) -> Iterator[TaskEvent]:
        for event in self._events(method, request, timeout):
            yield TaskEvent.from_proto(event)

    def _events(self, method: str, request: Any, timeout: float | None) -> Iterator[Any]:
        call = getattr(self._stub, method)(
            request, timeout=timeout, metadata=self._call_metadata(method)
        )
        with self._errors(call):
            yield from call

    def _wait(self, waiter: core.Waiter) -> builtins.list[TaskResult]:
        calls = [
            self._stub.StreamResults(r, timeout=waiter.timeout, metadata=self._metadata)
            for r in waiter.requests
        ]
        with waiter.deadline(), self._errors(*calls):
            for event in _merged(calls):
                waiter.feed(event)
        return waiter.results(self._where)

    # -- submitting -------------------------------------------------------------------------

    def submit(
        self,
        cmd: Command,
        *,
        stashed: bool = False,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[TaskOptions],
    ) -> TaskHandle:
        """Submit one task; returns once the daemon has journaled it.

        ``cmd`` is an argv list, or a string (``shell=True``: run by ``/bin/sh -c``; else
        ``shlex.split``). ``env=None`` sends a copy of ``os.environ``; ``cwd=None`` the current
        directory. ``timeout``/``queue_timeout`` take seconds or duration strings (``"5s"``).
        ``retries=N`` runs a failed attempt again up to N times; ``max_requeues=N`` bounds the
        re-queues after a lost attempt (unhealthy worker, daemon crash). ``group`` names the
        group that runs it (default: ``default``). ``stashed=True``: the task is STASHED, not
        queued, until :meth:`enqueue`. A bad value raises :class:`InvalidTask` naming its field
        (``tasks[0].timeout``).

        Workflows: ``after=[ids]`` keeps it WAITING until they all SUCCEED (it ends CANCELLED if
        one ends otherwise), or with ``after_any=True`` until they have ended, however.
        ``start_at`` (a datetime, epoch seconds, ``"HH:MM"`` or ISO 8601) or ``delay`` (``"10m"``)
        keeps it SCHEDULED until then. ``on_finish="cmd"``: a shell command run after it ended.
        """
        return TaskHandle(self, self._run(core.submit(cmd, options, stashed), rpc_timeout))

    def submit_many(
        self,
        items: Iterable[SpecLike],
        *,
        batch_size: int = 1000,
        stashed: bool = False,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[TaskOptions],
    ) -> builtins.list[TaskHandle]:
        """Submit many tasks, one Submit RPC per ``batch_size`` (at most 10,000) tasks.

        Items are commands, ``pb.TaskSpec`` or dicts of ``submit`` kwargs with ``cmd``;
        ``options`` are ``submit`` kwargs shared by all items. Each batch is all or nothing.
        A dict's ``after_items=[0, 2]`` makes the task depend on earlier items of this call, by
        their place (from 0), as ``after`` does on ids; in any batch.
        """
        ids = self._run(core.submit_many(items, options, batch_size, stashed), rpc_timeout)
        return [TaskHandle(self, i) for i in ids]

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
        return self._stream("Run", core.run_request(cmd, kw), None)

    def run(
        self, cmd: Command, *, on_output: OutputCallback | None = None, **kw: Any
    ) -> TaskResult:
        """Run at once via the Run RPC and return the TaskResult (whatever its state).

        ``on_output(stream, data)`` sees output chunks live (``stream`` is stdout or stderr).
        """
        collector = core.RunCollector(on_output)
        for ev in self.run_stream(cmd, **kw):
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
    ) -> Iterator[TaskEvent]:
        """Iterate events of ``ids`` (at most 10,000; every task, live, when None) until they all
        finish; ``finished_only`` keeps just each task's final event."""
        request = core.stream_request(ids, output, finished_only)
        return self._stream("StreamResults", request, timeout)

    def ends(self, timeout: float | None = None) -> Iterator[builtins.list[TaskResult]]:
        """Every task's end from now on, as it comes: several at once when this reads behind
        (without output). Runs until ``timeout`` (None: for ever) or the daemon stops."""
        for event in self._events("StreamResults", core.ENDS, timeout):
            if ended := core.ended_tasks(event):
                yield ended

    def wait(self, task_id: int, timeout: float | None = None) -> TaskResult:
        """Block until task ``task_id`` is terminal and return its result, with its output.

        ``timeout`` limits the wait (:class:`DeadlineExceeded`), not the task.
        """
        return self._wait(core.Waiter([task_id], output=True, timeout=timeout))[0]

    def wait_many(
        self, ids: Iterable[int], **options: Unpack[WaitOptions]
    ) -> builtins.list[TaskResult]:
        """Block until every task of ``ids`` (any number) is terminal; return their results in
        the order of ``ids``, without repeats.

        One StreamResults call per 10,000 ids, all at once, and no other round trip: an already
        finished task costs one message. An unknown id raises ``TaskNotFound`` at once. Options
        (:class:`~taskerctl.models.WaitOptions`): ``output=False``; ``timeout=None`` limits the
        wait (:class:`DeadlineExceeded`), not the tasks; ``on_result(result)`` is called in this
        thread as each task finishes.
        """
        return self._wait(core.Waiter(ids, **options))

    def wait_all(
        self, *, group: str | None = None, **options: Unpack[WaitOptions]
    ) -> builtins.list[TaskResult]:
        """Block until every task live now (any number; of ``group`` only, when given) is
        terminal; return their results by id. Tasks submitted meanwhile are not waited for.

        One StreamResults call (``all_live``); options as :meth:`wait_many`'s. Its events are
        not bounded by 10,000 ids, so a daemon that cannot send them as fast as the tasks end
        drops it (``StreamFellBehind``); and a daemon that stops ends it as if all had finished.
        """
        return self._wait(core.Waiter(None, group=group, **options))

    # -- inspecting and managing ------------------------------------------------------------

    def get(
        self, task_id: int, output: bool = False, *, rpc_timeout: float | None = _UNSET
    ) -> TaskResult:
        """One task's record (with stdout/stderr when ``output``)."""
        return self._run(core.get(task_id, output), rpc_timeout)

    def handle(self, task_id: int) -> TaskHandle:
        """A handle for an existing task id (no RPC)."""
        return TaskHandle(self, task_id)

    def list(
        self,
        states: Iterable[str | int] | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int = 100,
        *,
        group: str | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> builtins.list[TaskResult]:
        """Up to ``limit`` task records (of ``group`` only, when given), newest first, following
        page tokens."""
        return self._run(core.list_tasks(states, labels, limit, group), rpc_timeout)

    def list_page(
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
        return self._run(core.list_page(states, labels, group, page_size, page_token), rpc_timeout)

    def cancel(self, task_id: int, *, rpc_timeout: float | None = _UNSET) -> bool:
        """Cancel a task; False when it had already finished. Raises TaskNotFound."""
        return self.cancel_many([task_id], rpc_timeout=rpc_timeout)[task_id]

    def cancel_many(
        self,
        ids: Iterable[int] = (),
        *,
        all: bool = False,
        labels: Mapping[str, str] | None = None,
        states: Iterable[str | int] | None = None,
        group: str | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> dict[int, bool]:
        """Cancel tasks in one request, all in one step: the queued ones leave the queue before
        any running one is stopped. Maps each task to whether it was cancelled (False: it had
        already finished).

        The tasks are ``ids`` (at most 10,000), and also, when ``all``, ``labels``, ``states``
        or ``group`` is given, every live task of ``group`` (None: any) that has all of
        ``labels`` and is in one of ``states`` (``"queued"``, ``"running"``, ``"paused"``,
        ``"stashed"``; None: all four). ``all=True`` selects every live task. Raises
        TaskNotFound for an unknown id, and then none was cancelled.
        """
        return self._run(core.cancel(ids, all, labels, states, group), rpc_timeout)

    def stats(self, *, group: str | None = None, rpc_timeout: float | None = _UNSET) -> Stats:
        """Workers, queue and counts right now (of ``group`` only, when given)."""
        return self._run(core.stats(group), rpc_timeout)

    def metrics(self, *, group: str | None = None, rpc_timeout: float | None = _UNSET) -> Metrics:
        """Rates, latencies and totals since the daemon started (of ``group`` only)."""
        return self._run(core.metrics(group), rpc_timeout)

    def clean(
        self, older_than: float | str | None = None, *, rpc_timeout: float | None = _UNSET
    ) -> int:
        """Remove finished tasks (that ended at least ``older_than`` ago); returns how many."""
        return self._run(core.clean(older_than), rpc_timeout)

    def shutdown(self, mode: str = "stop", *, rpc_timeout: float | None = _UNSET) -> None:
        """Stop the daemon: ``stop``, ``drain`` (finish the queue first) or ``kill``."""
        self._run(core.shutdown(mode), rpc_timeout)

    # -- controlling the queue --------------------------------------------------------------
    #
    # A request the task or group is not in a state for raises WrongState (nothing changed);
    # an unknown id TaskNotFound; a bad name or number InvalidTask naming its field.

    def add_group(
        self,
        name: str,
        *,
        parallel: int | None = None,
        max_parallel: int | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> Group:
        """Create a group with ``parallel`` slots (default 1), bursting up to ``max_parallel``
        (default: ``parallel``); WrongState if it exists."""
        return self._run(core.add_group(name, parallel, max_parallel), rpc_timeout)

    def remove_group(
        self, name: str, *, force: bool = False, rpc_timeout: float | None = _UNSET
    ) -> int:
        """Remove a group: WrongState while it holds unfinished tasks, unless ``force``, which
        cancels them first; returns how many it cancelled."""
        return self._run(core.remove_group(name, force), rpc_timeout)

    def groups(self, *, rpc_timeout: float | None = _UNSET) -> builtins.list[Group]:
        """Every group, by name."""
        return self._run(core.groups(), rpc_timeout)

    def set_parallel(
        self,
        parallel: int,
        *,
        group: str | None = None,
        max_parallel: int | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> Group:
        """Change a group's slots (default group: ``default``) now; lowering them stops no
        running task. ``max_parallel`` None leaves the burst ceiling (raised to ``parallel``)."""
        return self._run(core.set_parallel(parallel, group, max_parallel), rpc_timeout)

    def pause(
        self,
        ids: Iterable[int] = (),
        *,
        groups: str | Iterable[str] | None = None,
        all: bool = False,
        wait: bool = False,
        rpc_timeout: float | None = _UNSET,
    ) -> builtins.list[int]:
        """Pause running tasks (SIGSTOP; state PAUSED), and ``groups`` (or ``all`` of them):
        they start no task, and their running tasks are paused too, unless ``wait`` lets them
        finish. Returns the ids of the tasks paused. WrongState for a task that is not running."""
        return self._run(core.pause(ids, groups, all, wait), rpc_timeout)

    def resume(
        self,
        ids: Iterable[int] = (),
        *,
        groups: str | Iterable[str] | None = None,
        all: bool = False,
        rpc_timeout: float | None = _UNSET,
    ) -> builtins.list[int]:
        """Resume paused tasks, and ``groups`` (or ``all``) with their paused tasks; returns the
        ids of the tasks resumed."""
        return self._run(core.resume(ids, groups, all), rpc_timeout)

    def set_priority(
        self, ids: Iterable[int], priority: str | int, *, rpc_timeout: float | None = _UNSET
    ) -> None:
        """Give queued or stashed tasks a new priority; each keeps its submission time within
        the new level. WrongState (nothing changed) if any is running or finished."""
        self._run(core.set_priority(ids, priority), rpc_timeout)

    def enqueue(
        self,
        ids: Iterable[int],
        *,
        delay: float | str | None = None,
        rpc_timeout: float | None = _UNSET,
    ) -> None:
        """Queue stashed tasks, at once or after ``delay`` (seconds or ``"5m"``); WrongState
        (nothing changed) if any is not stashed."""
        self._run(core.enqueue(ids, delay), rpc_timeout)

    def remove(self, ids: Iterable[int], *, rpc_timeout: float | None = _UNSET) -> int:
        """Delete finished tasks from the journal; returns how many. WrongState (nothing
        removed) if any is unfinished."""
        return self._run(core.remove(ids), rpc_timeout)

    def signal(
        self, task_id: int, signal: str | int, *, rpc_timeout: float | None = _UNSET
    ) -> None:
        """Send ``signal`` (``"TERM"``, ``"SIGUSR1"``, ``9``...) to every process of a running
        or paused task; WrongState if it is neither."""
        self._run(core.signal(task_id, signal), rpc_timeout)

    # -- workflows --------------------------------------------------------------------------
    #
    # Dependencies and start times are submit's keywords (after, after_any, start_at, delay).

    def restart(
        self,
        ids: Iterable[int] = (),
        *,
        rpc_timeout: float | None = _UNSET,
        **kw: Unpack[RestartOptions],
    ) -> builtins.list[TaskHandle]:
        """Submit finished tasks again as new tasks (and, with ``failed``, every FAILED one still
        in the journal), each linked to its original (``restarted_from``); their handles, in the
        order of ``ids``, then the failed ones oldest first. WrongState (nothing submitted) if
        any is unfinished.

        ``specs`` (one per id) changes what they run: a ``TaskSpec`` is sent as it is; a dict of
        :meth:`edit` keywords (``{"cmd": ["make", "-j4"], "timeout": "5m"}``), or a command
        alone, changes those fields of a copy of the original's spec (one Get each).
        """
        op = core.restart(ids, kw.get("failed", False), kw.get("specs"))
        new = self._run(op, rpc_timeout)
        return [TaskHandle(self, i) for i in new]

    def edit(
        self, task_id: int, *, rpc_timeout: float | None = _UNSET, **fields: Unpack[EditOptions]
    ) -> TaskResult:
        """Change fields of a task that has not started (queued, stashed, waiting or scheduled);
        returns its record. It keeps its id and its place in the queue. WrongState for a
        running or finished task.

        Each keyword given replaces that field, and means what it means to :meth:`submit`:
        ``cmd`` (or ``argv``), ``shell``, ``env`` (None: your environment), ``cwd``, ``stdin``,
        ``priority``, ``timeout`` (None: no limit), ``queue_timeout``, ``labels``, ``retries``,
        ``max_requeues``, ``on_finish``. Any other raises InvalidTask (``update_mask``).
        """
        return self._run(core.edit(task_id, fields), rpc_timeout)

    def add_schedule(
        self,
        cmd: Command,
        *,
        rpc_timeout: float | None = _UNSET,
        **options: Unpack[ScheduleOptions],
    ) -> Schedule:
        """Create a recurring schedule: a new task from ``cmd`` and ``options`` (:meth:`submit`'s)
        ``every`` so long (seconds or ``"5m"``, at least 1 s) or at each match of ``cron``
        (``"*/5 * * * *"``, local time; the daemon checks it): one of them. The first occurrence
        is at ``start_at`` (default: now; cron: its next match). Without ``overlap``, an
        occurrence due while the previous task has not ended is skipped (``Schedule.skipped``).
        """
        return self._run(core.add_schedule(cmd, options), rpc_timeout)

    def schedules(self, *, rpc_timeout: float | None = _UNSET) -> builtins.list[Schedule]:
        """Every schedule, by id."""
        return self._run(core.schedules(), rpc_timeout)

    def remove_schedule(self, schedule_id: int, *, rpc_timeout: float | None = _UNSET) -> None:
        """Remove a schedule; the tasks it submitted stay. TaskNotFound for an unknown id."""
        self._run(core.remove_schedule(schedule_id), rpc_timeout)


__all__ = ["Client", "TaskHandle"]
