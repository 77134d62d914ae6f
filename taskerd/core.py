"""The daemon's core: every verb of the API over the engine, the journal and the runner.

A task's life: ``submit`` journals it (group commit) and queues it in the engine; a worker calls
``_execute``, which runs the command through the runner; when the engine answers the task's handle,
``_finish`` journals the terminal state and only then tells the watchers. Nothing here speaks gRPC:
the service turns requests into these calls and ``RequestError`` into status codes.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import signal as signals
import time
from collections.abc import Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, TypeAlias

from google.protobuf.duration_pb2 import Duration

from tasker.v1 import tasker_pb2 as pb
from taskerctl.durations import format_duration
from taskerd import engine
from taskerd.config import DaemonConfig
from taskerd.errors import NotFound, QueueFull, ShuttingDown
from taskerd.events import EventHub, Watcher
from taskerd.runner import Capture, Exit, SpawnError, run_command, run_hook
from taskerd.store import Store, task_record

log = logging.getLogger("taskerd")

State: TypeAlias = pb.TaskState.ValueType
NORMAL = pb.PRIORITY_NORMAL
QUEUED = pb.TASK_STATE_QUEUED
RUNNING = pb.TASK_STATE_RUNNING
SUCCEEDED = pb.TASK_STATE_SUCCEEDED
FAILED = pb.TASK_STATE_FAILED
TIMED_OUT = pb.TASK_STATE_TIMED_OUT
CANCELLED = pb.TASK_STATE_CANCELLED
LOST = pb.TASK_STATE_LOST
TERMINAL = (SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, LOST)
#: A non-once task's RUNNING state is journaled this long after it starts (if still running).
STARTED_WRITE_DELAY = 0.1
#: Up to this many live tasks, specs stay in memory from submission to start.
KEEP_SPECS = 10_000

_PRIORITY = {
    pb.PRIORITY_UNSPECIFIED: engine.Priority.NORMAL,
    pb.PRIORITY_LOW: engine.Priority.LOW,
    pb.PRIORITY_NORMAL: engine.Priority.NORMAL,
    pb.PRIORITY_HIGH: engine.Priority.HIGH,
    pb.PRIORITY_CRITICAL: engine.Priority.CRITICAL,
}


def seconds(d: Duration) -> float:
    """A Duration as float seconds."""
    return d.seconds + d.nanos / 1e9


class Unhealthy(Exception):
    """The command exited with one of ``unhealthy_exit_codes``: its worker is replaced."""

    def __init__(self, result: Exit) -> None:
        super().__init__(f"exited with status {result.exit_code} (unhealthy worker)")
        self.result = result


@dataclass(slots=True, eq=False)
class Live:
    """What the daemon keeps in memory for a task that is queued or running."""

    id: int
    priority: int
    queued_at: float
    timeout: float | None
    queue_timeout: float | None
    attempts: int
    state: State = QUEUED
    seq: int = 0
    handle: engine.TaskHandle[Exit] | None = None
    run_task: asyncio.Task[None] | None = None
    pid: int = 0
    worker: int = 0
    started_at: float | None = None
    capture: Capture | None = None
    once: bool = False
    started_write: asyncio.TimerHandle | None = None
    # The spec as submitted, kept while the queue is short to spare a journal read at start;
    # ``env`` is the request's shared environment, for a spec without its own.
    spec: pb.TaskSpec | None = None
    env: Mapping[str, str] | None = None
    attempt_done: asyncio.Event | None = None
    cancel_requested: bool = False


@dataclass(slots=True)
class Counters:
    """Terminal states reached and submissions rejected since the daemon started."""

    by_state: dict[State, int] = field(default_factory=lambda: dict.fromkeys(TERMINAL, 0))
    rejected: int = 0


class Core:
    """The daemon's verbs. Create with ``await Core.start(config, store)``."""

    def __init__(self, config: DaemonConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.hub = EventHub()
        self.live: dict[int, Live] = {}
        self.counters = Counters()
        self.started = time.time()
        self.shutdown_mode: pb.ShutdownMode.ValueType | None = None
        self._engine_ids: dict[int, int] = {}
        self._reserved = 0
        self._finishing: set[asyncio.Task[None]] = set()
        self._unhealthy = frozenset(config.unhealthy_exit_codes)
        self._closed = asyncio.Event()
        self.engine: engine.TaskManager[str, Exit] = engine.TaskManager(
            engine.Config(
                on_create=self._create_resource,
                on_destroy=self._destroy_resource,
                worker_count=config.workers,
                max_worker_count=config.burst_workers,
                max_retries=config.max_retries,
                check_health=lambda exc: not isinstance(exc, Unhealthy),
                logger=logging.getLogger("taskerd.engine"),
                collector=_RetryListener(self),
            )
        )

    @classmethod
    async def start(cls, config: DaemonConfig, store: Store) -> Core:
        """Start the engine and recover the journal's unfinished tasks."""
        core = cls(config, store)
        await core.engine.start()
        await core._recover()
        return core

    # ----------------------------------------------------------------- worker resources

    async def _create_resource(self) -> str:
        if not self.config.on_create:
            return ""
        return await run_hook(self.config.on_create)

    async def _destroy_resource(self, resource: str) -> None:
        if self.config.on_destroy:
            await run_hook(self.config.on_destroy, env={**os.environ, "TASKER_RESOURCE": resource})

    # ----------------------------------------------------------------- recovery

    async def _recover(self) -> None:
        """Resume the journal: queued tasks in order, interrupted ones re-queued or LOST."""
        lost: list[int] = []
        failed: list[int] = []
        resumed: list[pb.Task] = []
        for task in self.store.unfinished():
            if task.state == RUNNING and task.spec.once:
                lost.append(task.id)
            elif task.state == RUNNING and task.attempts > self._max_retries(task.spec):
                failed.append(task.id)
            else:
                resumed.append(task)
        now = time.time()
        if lost:
            await self.store.mark_finished_many(
                lost, state=LOST, ended_at=now,
                error="the daemon stopped while it ran; an at-most-once task is not run again",
            )  # fmt: skip
            self.counters.by_state[LOST] += len(lost)
        if failed:
            await self.store.mark_finished_many(
                failed, state=FAILED, ended_at=now,
                error="the daemon stopped during its last allowed attempt",
            )  # fmt: skip
            self.counters.by_state[FAILED] += len(failed)
        requeue = [t.id for t in resumed if t.state == RUNNING]
        if requeue:
            await self.store.requeue(requeue)
        for task in resumed:
            self._enqueue(task.id, task.spec, task.queued_at.ToNanoseconds() / 1e9, task.attempts)
        if lost or failed or resumed:
            log.info(
                "recovered journal: %d queued, %d re-queued, %d lost, %d failed",
                len(resumed) - len(requeue), len(requeue), len(lost), len(failed),
            )  # fmt: skip

    def _max_retries(self, spec: pb.TaskSpec) -> int:
        return spec.max_retries if spec.HasField("max_retries") else self.config.max_retries

    # ----------------------------------------------------------------- submit

    def _check_open(self) -> None:
        if self.shutdown_mode is not None:
            raise ShuttingDown()

    async def submit(
        self, specs: Sequence[pb.TaskSpec], *, env: Mapping[str, str] | None = None
    ) -> list[int]:
        """Journal the (validated) specs, then queue them; answers with their ids.

        ``env`` is the environment of the specs whose own env is empty.
        """
        self._check_open()
        queued = self.engine.stats().queued + self._reserved
        if queued + len(specs) > self.config.max_queue:
            self.counters.rejected += len(specs)
            raise QueueFull(queued, self.config.max_queue)
        self._reserved += len(specs)
        try:
            now = time.time()
            ids = await self.store.add(specs, now=now, env=env)
        finally:
            self._reserved -= len(specs)
        keep = len(self.live) < KEEP_SPECS
        for task_id, spec in zip(ids, specs, strict=True):
            self._enqueue(task_id, spec, now, 0, keep=keep, env=env)
        if len(ids) == 1:
            log.info("task %d accepted: %s", ids[0], _describe(specs[0]))
        else:
            log.info("tasks %d..%d accepted (%d)", ids[0], ids[-1], len(ids))
        return ids

    def _enqueue(
        self,
        task_id: int,
        spec: pb.TaskSpec,
        queued_at: float,
        attempts: int,
        *,
        keep: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Queue a journaled task; ``keep`` holds its full spec (and shared ``env``) in memory."""
        timeout = seconds(spec.timeout) if spec.HasField("timeout") else None
        queue_timeout = remaining = None
        if spec.HasField("queue_timeout"):
            queue_timeout = seconds(spec.queue_timeout)
            remaining = max(1e-3, queue_timeout - (time.time() - queued_at))
        live = Live(task_id, spec.priority or NORMAL, queued_at, timeout, queue_timeout, attempts)
        live.once = spec.once
        if keep:
            live.spec, live.env = spec, env
        self.live[task_id] = live
        execute = self._execute

        async def run(ctx: engine.TaskContext, resource: str) -> Exit:
            return await execute(live, ctx, resource)

        handle = self.engine.queue_task_async(
            run,
            priority=_PRIORITY[spec.priority],
            timeout=timeout,
            queue_timeout=remaining,
            once=live.once,
            max_retries=max(0, self._max_retries(spec) - attempts),
        )
        live.handle = handle
        self._engine_ids[handle.id] = task_id
        handle.add_done_callback(partial(self._on_done, live))
        self._publish_queued(live)

    # ----------------------------------------------------------------- run

    async def run(self, spec: pb.TaskSpec) -> Watcher:
        """Journal the task and start it at once, bypassing the queue; returns its watcher."""
        self._check_open()
        now = time.time()
        [task_id] = await self.store.add([spec], now=now)
        live = Live(
            id=task_id,
            priority=spec.priority or pb.PRIORITY_NORMAL,
            queued_at=now,
            timeout=seconds(spec.timeout) if spec.HasField("timeout") else None,
            queue_timeout=None,
            attempts=0,
            once=spec.once,
            spec=spec,
        )
        self.live[task_id] = live
        watcher = self.hub.subscribe([task_id], output=True)
        self._publish_queued(live)
        log.info("task %d accepted to run now: %s", task_id, _describe(spec))
        live.run_task = asyncio.create_task(self._run_now(live))
        return watcher

    async def _run_now(self, live: Live) -> None:
        result: Exit | None = None
        error: BaseException | None = None
        try:
            result = await self.engine.run_task(partial(self._execute, live), timeout=live.timeout)
        except asyncio.CancelledError:
            error = engine.TaskCancelled("cancelled")
        except BaseException as exc:
            error = exc
        await self._finish(live, result, error)

    # ----------------------------------------------------------------- execute

    async def _execute(self, live: Live, ctx: engine.TaskContext, resource: str) -> Exit:
        """One attempt: run the command with the task's environment. Runs on a worker."""
        spec = live.spec
        if spec is None:
            spec = live.spec = self.store.spec(live.id)
            if spec is None:  # cleaned while queued: cannot happen for live tasks; never crash
                raise SpawnError(f"task {live.id} vanished from the journal")
        live.attempts += 1
        live.state = RUNNING
        live.worker = ctx.worker_id + 1  # 1-based; 0 is a temporary resource (Run)
        live.pid = 0
        live.started_at = time.time()
        done = live.attempt_done = asyncio.Event()
        variables = spec.env or live.env
        env = dict(variables) if variables else dict(os.environ)
        env["TASKER_TASK_ID"] = str(live.id)
        env["TASKER_WORKER_ID"] = str(live.worker)
        env["TASKER_ATTEMPT"] = str(live.attempts)
        if live.timeout is not None:
            env["TASKER_DEADLINE"] = f"{live.started_at + live.timeout:.3f}"
        if resource:
            env["TASKER_RESOURCE"] = resource
        live.capture = Capture(self.config.output_limit, on_chunk=partial(self._on_output, live))
        if live.once:  # at most once: RUNNING must be durable before the command can start
            self.store.mark_started(
                live.id, attempt=live.attempts, pid=0, worker=live.worker,
                started_at=live.started_at,
            )  # fmt: skip
            await self.store.flush()
        try:
            result = await run_command(
                list(spec.argv),
                shell=spec.shell,
                env=env,
                cwd=spec.cwd or None,
                stdin=spec.stdin,
                capture=live.capture,
                kill_grace=self.config.kill_grace,
                on_spawn=partial(self._on_spawn, live),
            )
        finally:
            done.set()
        if result.exit_code in self._unhealthy:
            raise Unhealthy(result)
        return result

    def _on_spawn(self, live: Live, pid: int) -> None:
        live.pid = pid
        if live.once:
            self._journal_started(live)
        else:
            # Most tasks are short: their finish records the start too, in one write. A crash
            # before this write re-runs the task without counting the attempt.
            loop = asyncio.get_running_loop()
            live.started_write = loop.call_later(STARTED_WRITE_DELAY, self._journal_started, live)
        live.seq += 1
        seq = live.seq
        self.hub.publish(
            live.id,
            lambda _: _event(
                live.id, seq,
                started=pb.TaskEvent.Started(pid=pid, worker=live.worker, attempt=live.attempts),
            ),
        )  # fmt: skip
        log.info("task %d started: pid %d, worker %d, attempt %d", live.id, pid, live.worker,
                  live.attempts)  # fmt: skip

    def _journal_started(self, live: Live) -> None:
        live.started_write = None
        if live.state == RUNNING and live.started_at is not None:
            self.store.mark_started(
                live.id, attempt=live.attempts, pid=live.pid, worker=live.worker,
                started_at=live.started_at,
            )  # fmt: skip

    def _on_output(self, live: Live, stream: int, data: bytes) -> None:
        live.seq += 1
        if not self.hub.watched(live.id, output=True):
            return
        seq = live.seq
        self.hub.publish(
            live.id,
            lambda _: _event(live.id, seq, output=pb.TaskEvent.Output(stream=stream, data=data)),  # type: ignore[arg-type]
            is_output=True,
        )

    def _publish_queued(self, live: Live) -> None:
        live.seq += 1
        if not self.hub.watched(live.id):
            return
        seq = live.seq
        self.hub.publish(
            live.id,
            lambda _: _event(live.id, seq, queued=pb.TaskEvent.Queued(priority=live.priority)),  # type: ignore[arg-type]
        )

    def on_retry(self, engine_id: int, error: BaseException) -> None:
        """The engine re-queued a task after an unhealthy worker."""
        task_id = self._engine_ids.get(engine_id)
        live = self.live.get(task_id) if task_id is not None else None
        if live is None:
            return
        live.state = QUEUED
        self._background(self.store.requeue([live.id], attempts=[live.attempts]))
        live.seq += 1
        seq = live.seq
        reason = str(error)
        self.hub.publish(
            live.id,
            lambda _: _event(
                live.id, seq, retrying=pb.TaskEvent.Retrying(attempt=live.attempts, reason=reason)
            ),
        )
        log.warning("task %d retrying after attempt %d: %s", live.id, live.attempts, reason)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that shutdown waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    # ----------------------------------------------------------------- finish

    def _on_done(self, live: Live, handle: engine.TaskHandle[Exit]) -> None:
        self._engine_ids.pop(handle.id, None)
        error = handle.exception()
        result = None if error is not None else handle.result()
        self._background(self._finish(live, result, error))

    def _classify(
        self, live: Live, result: Exit | None, error: BaseException | None
    ) -> tuple[State, str] | None:
        """The terminal state and error sentence; None to leave the task in the journal."""
        if error is None:
            assert result is not None
            if result.exit_code == 0:
                return SUCCEEDED, ""
            if result.exit_code is not None:
                return FAILED, f"exited with status {result.exit_code}"
            return FAILED, f"killed by signal {result.signal} ({_signame(result.signal)})"
        if isinstance(error, engine.TaskTimeout):
            if live.state == QUEUED and live.queue_timeout is not None:
                return TIMED_OUT, f"did not start within {format_duration(live.queue_timeout)}"
            return TIMED_OUT, f"timed out after {format_duration(live.timeout or 0)}"
        stopping = self.shutdown_mode == pb.SHUTDOWN_MODE_STOP and not live.cancel_requested
        if isinstance(error, engine.ShuttingDown) or (
            isinstance(error, engine.TaskCancelled) and stopping
        ):
            return None  # a STOP shutdown: the journal keeps it for the next start
        if isinstance(error, engine.Killed) or (
            isinstance(error, engine.TaskCancelled) and not live.cancel_requested
        ):
            return CANCELLED, "cancelled: the daemon was killed"
        if isinstance(error, engine.TaskCancelled):
            return CANCELLED, "cancelled"
        if isinstance(error, SpawnError):
            return FAILED, str(error)
        if isinstance(error, Unhealthy):
            return FAILED, f"{error}; no retries left"
        log.error("task %d failed inside the daemon: %r", live.id, error, exc_info=error)
        return FAILED, f"internal error: {error!r}"

    async def _finish(self, live: Live, result: Exit | None, error: BaseException | None) -> None:
        """Journal the terminal state, then tell the watchers."""
        if live.attempt_done is not None:
            await live.attempt_done.wait()  # a cancelled command may still be dying
        if isinstance(error, Unhealthy):
            result = error.result
        outcome = self._classify(live, result, error)
        if result is None and live.capture is not None:
            result = live.capture.exit  # how a timed-out or cancelled command died
        if outcome is None:
            self.live.pop(live.id, None)
            return
        state, message = outcome
        capture = live.capture
        now = time.time()
        if live.started_write is not None:  # the finish records the start
            live.started_write.cancel()
            live.started_write = None
        await self.store.mark_finished(
            live.id,
            state=state,
            ended_at=now,
            error=message,
            exit_code=result.exit_code if result else None,
            signal=result.signal if result else None,
            attempts=live.attempts,
            started_at=live.started_at,
            pid=live.pid or None,
            worker=live.worker if live.pid else None,
            stdout=bytes(capture.stdout) if capture else b"",
            stderr=bytes(capture.stderr) if capture else b"",
            stdout_truncated=capture.stdout_truncated if capture else False,
            stderr_truncated=capture.stderr_truncated if capture else False,
        )
        self.live.pop(live.id, None)
        self.counters.by_state[state] += 1
        live.state = state
        live.seq += 1
        seq = live.seq

        def make(output: bool) -> pb.TaskEvent:
            if live.spec is None:  # it never started: the journal has the spec
                task = self.store.get(live.id, output=output) or pb.Task(id=live.id, state=state)
            else:
                task = task_record(
                    live.id, state=state, queued_at=live.queued_at, started_at=live.started_at,
                    ended_at=now, attempts=live.attempts, pid=live.pid, worker=live.worker,
                    exit_code=result.exit_code if result else None,
                    signal=result.signal if result else None, error=message, spec=live.spec,
                )  # fmt: skip
                if output and capture is not None:
                    task.stdout, task.stderr = bytes(capture.stdout), bytes(capture.stderr)
                    task.stdout_truncated = capture.stdout_truncated
                    task.stderr_truncated = capture.stderr_truncated
            return _event(live.id, seq, finished=pb.TaskEvent.Finished(task=task))

        self.hub.publish(live.id, make, is_final=True)
        took = format_duration(now - live.started_at) if live.started_at else "-"
        log.info("task %d %s in %s%s", live.id, pb.TaskState.Name(state)[11:], took,
                 f": {message}" if message else "")  # fmt: skip

    # ----------------------------------------------------------------- queries

    def get(self, task_id: int, *, output: bool = False) -> pb.Task:
        """The task's record, with live state overlaid for a running task."""
        task = self.store.get(task_id, output=output)
        if task is None:
            raise NotFound(task_id)
        live = self.live.get(task_id)
        if live is not None:
            _overlay(task, live, output=output)
        return task

    def list(
        self, *, states: Collection[int], labels: Mapping[str, str], limit: int,
        before_id: int | None,
    ) -> builtins.list[pb.Task]:  # fmt: skip
        """A page of records, newest first."""
        tasks = self.store.list(states=states, labels=labels, limit=limit, before_id=before_id)
        for task in tasks:
            live = self.live.get(task.id)
            if live is not None:
                _overlay(task, live, output=False)
        return tasks

    def watch(
        self, ids: Sequence[int], *, output: bool, finished_only: bool = False
    ) -> tuple[Watcher, builtins.list[pb.TaskEvent]]:
        """Subscribe to tasks and get their past events; NotFound for an unknown id.

        Subscribing and reading the past happen without yielding to the loop, so no event is
        missed or seen twice.
        """
        if not ids:
            return self.hub.subscribe(None, output=output, finished_only=finished_only), []
        past: builtins.list[pb.TaskEvent] = []
        found: list[tuple[int, Live | None]] = []
        for task_id in dict.fromkeys(ids):
            live = self.live.get(task_id)
            if live is None and self.store.get(task_id) is None:
                raise NotFound(task_id)
            found.append((task_id, live))
        watcher = self.hub.subscribe(
            [i for i, _ in found], output=output, finished_only=finished_only
        )
        for task_id, live in found:
            if live is not None:
                if not finished_only:
                    past.extend(_backlog(live, output=output))
                continue
            task = self.store.get(task_id, output=output)
            if task is None:  # cleaned just now
                raise NotFound(task_id)
            if task.state in TERMINAL:
                past.append(_event(task_id, 0, finished=pb.TaskEvent.Finished(task=task)))
        return watcher, past

    def cancel(self, task_id: int) -> tuple[bool, State]:
        """Cancel a queued or running task; (cancelled, state right after)."""
        live = self.live.get(task_id)
        if live is None:
            task = self.store.get(task_id)
            if task is None:
                raise NotFound(task_id)
            return False, task.state
        live.cancel_requested = True
        if live.handle is not None:
            live.handle.cancel()
        elif live.run_task is not None:
            live.run_task.cancel()
        log.info("task %d cancel requested (%s)", task_id, pb.TaskState.Name(live.state)[11:])
        return True, CANCELLED if live.state == QUEUED else live.state

    def stats(self) -> pb.StatsResponse:
        """Workers, queue and counts now; O(1)."""
        s = self.engine.stats()
        by = s.queued_by_priority
        c = self.counters.by_state
        return pb.StatsResponse(
            base_workers=s.base_workers,
            max_workers=s.max_workers,
            active_workers=s.active_workers,
            burst_workers=s.burst_workers,
            running=s.running,
            available_resources=s.available_resources,
            queued_low=by.get(engine.Priority.LOW, 0),
            queued_normal=by.get(engine.Priority.NORMAL, 0),
            queued_high=by.get(engine.Priority.HIGH, 0),
            queued_critical=by.get(engine.Priority.CRITICAL, 0),
            queued=s.queued,
            queue_capacity=self.config.max_queue,
            queue_usage=s.queued / self.config.max_queue,
            succeeded=c[SUCCEEDED],
            failed=c[FAILED],
            timed_out=c[TIMED_OUT],
            cancelled=c[CANCELLED],
            lost=c[LOST],
            rejected=self.counters.rejected,
            uptime=_duration(time.time() - self.started),
            version=_version(),
            shutting_down=self.shutdown_mode is not None,
        )

    def metrics(self) -> pb.MetricsResponse:
        """The engine's metrics."""
        m = self.engine.metrics()
        return pb.MetricsResponse(
            arrival_rate=m.arrival_rate,
            completion_rate=m.completion_rate,
            exec_avg=_duration(m.exec_avg),
            exec_min=_duration(m.exec_min),
            exec_max=_duration(m.exec_max),
            exec_p50=_duration(m.exec_p50),
            exec_p95=_duration(m.exec_p95),
            exec_p99=_duration(m.exec_p99),
            wait_avg=_duration(m.wait_avg),
            completed=m.completed,
            failed=m.failed,
            retried=m.retried,
            timed_out=m.timed_out,
            cancelled=m.cancelled,
            rejected=self.counters.rejected,
            success_rate=m.success_rate,
            failure_rate=m.failure_rate,
        )

    async def clean(self, older_than: float | None) -> int:
        """Remove finished tasks from the journal."""
        removed = await self.store.clean(older_than=older_than, now=time.time())
        log.info("cleaned %d finished tasks", removed)
        return removed

    async def prune_forever(self, interval: float = 60.0) -> None:
        """Retention in the background: keep_finished and keep_for."""
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.store.prune(
                    keep_finished=self.config.keep_finished,
                    keep_for=self.config.keep_for,
                    now=time.time(),
                )
            except Exception:
                log.exception("retention failed")
            else:
                if removed:
                    log.info("retention removed %d finished tasks", removed)

    # ----------------------------------------------------------------- shutdown

    async def shutdown(self, mode: pb.ShutdownMode.ValueType) -> None:
        """Stop in ``mode`` (STOP, DRAIN or KILL). A later call may escalate to KILL."""
        if self.shutdown_mode is not None:
            if mode == pb.SHUTDOWN_MODE_KILL and self.shutdown_mode != pb.SHUTDOWN_MODE_KILL:
                self.shutdown_mode = mode
                log.warning("shutdown escalated to KILL")
                for live in list(self.live.values()):
                    if live.run_task is not None:
                        live.run_task.cancel()
                await self.engine.kill()
            await self._closed.wait()
            return
        self.shutdown_mode = mode
        log.info("shutting down (%s)", pb.ShutdownMode.Name(mode)[14:])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.stop_timeout
        if mode == pb.SHUTDOWN_MODE_KILL:
            await self.engine.kill()
        elif mode == pb.SHUTDOWN_MODE_DRAIN:
            await self.engine.stop(drain=True)
        else:
            await self.engine.stop(drain=False, timeout=self.config.stop_timeout)
        # Run tasks bypass the queue: they get the same treatment as running ones.
        runs = {live.run_task for live in self.live.values() if live.run_task is not None}
        if runs:
            if mode == pb.SHUTDOWN_MODE_KILL:
                for task in runs:
                    task.cancel()
            limit = None if mode == pb.SHUTDOWN_MODE_DRAIN else max(0, deadline - loop.time())
            _, late = await asyncio.wait(runs, timeout=limit)
            for task in late:
                task.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
        while self._finishing:
            await asyncio.gather(*list(self._finishing), return_exceptions=True)
        self.hub.close()
        self._closed.set()


class _RetryListener:
    """Hears the engine's retries, so the daemon can journal and announce them."""

    def __init__(self, core: Core) -> None:
        self._core = core

    def record_arrival(self, task_id: int) -> None:
        pass

    def record_start(self, task_id: int, wait: float) -> None:
        pass

    def record_completion(self, task_id: int, duration: float) -> None:
        pass

    def record_failure(self, task_id: int, error: BaseException, duration: float) -> None:
        pass

    def record_retry(self, task_id: int, error: BaseException) -> None:
        self._core.on_retry(task_id, error)

    def record_rejection(self) -> None:
        pass


def _event(task_id: int, seq: int, **kind: Any) -> pb.TaskEvent:
    event = pb.TaskEvent(task_id=task_id, seq=seq, **kind)
    event.time.FromNanoseconds(time.time_ns())
    return event


def _backlog(live: Live, *, output: bool) -> list[pb.TaskEvent]:
    """Events a late watcher of a live task missed, rebuilt from what the daemon holds."""
    events = [_event(live.id, 1, queued=pb.TaskEvent.Queued(priority=live.priority))]  # type: ignore[arg-type]
    if live.state == RUNNING and live.pid:
        events.append(
            _event(live.id, 2, started=pb.TaskEvent.Started(
                pid=live.pid, worker=live.worker, attempt=live.attempts))
        )  # fmt: skip
        if output and live.capture is not None:
            for stream, data in ((pb.OUTPUT_STREAM_STDOUT, live.capture.stdout),
                                 (pb.OUTPUT_STREAM_STDERR, live.capture.stderr)):  # fmt: skip
                if data:
                    out = pb.TaskEvent.Output(stream=stream, data=bytes(data))
                    events.append(_event(live.id, len(events) + 1, output=out))
    return events


def _overlay(task: pb.Task, live: Live, *, output: bool) -> None:
    """Bring a journal record up to date with what the daemon knows in memory."""
    task.state = live.state
    task.attempts = live.attempts
    if live.state == RUNNING and live.started_at is not None:
        task.started_at.FromNanoseconds(int(live.started_at * 1e9))
        task.pid = live.pid
        task.worker = live.worker
        if output and live.capture is not None:
            task.stdout = bytes(live.capture.stdout)
            task.stderr = bytes(live.capture.stderr)
            task.stdout_truncated = live.capture.stdout_truncated
            task.stderr_truncated = live.capture.stderr_truncated


def _duration(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def _describe(spec: pb.TaskSpec) -> str:
    text = " ".join(spec.argv)
    return text if len(text) <= 80 else text[:77] + "..."


def _signame(number: int | None) -> str:
    try:
        return signals.Signals(number or 0).name
    except ValueError:
        return "unknown"


@cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tasker")
    except PackageNotFoundError:
        return "unknown"
