"""A task's life from its start to its end: one :class:`Attempt` per run, and the one ending.

An engine worker calls an ``Attempt``: it reads the spec, marks the task RUNNING, journals it
(durably first for an at-most-once task), spawns the command, journals what identifies the run,
and waits for it. All of that sits in one ``try/finally``, so whatever ends it (the command's
exit, a timeout, a cancel, a KILL, a journal failure) the finally notes that no process of the
task runs any more and hands over to :func:`conclude`.

A task ends when both are known: the engine's outcome for it and that no attempt's process is
still running. :func:`conclude` then journals the terminal state (retrying with backoff while the
journal fails) and, in the loop step in which that write is answered, takes the task out of
memory, counts it and tells its watchers: exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from tasker.durations import format_duration
from tasker.v1 import tasker_pb2 as pb
from taskerd import engine, procs
from taskerd.config import DaemonConfig
from taskerd.dask.spec import Job, NodeLost
from taskerd.events import EventHub
from taskerd.live import (
    ACTIVE,
    CANCELLED,
    FAILED,
    LOST,
    PAUSED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    Live,
    Outcome,
    State,
    event,
    output_into,
    state_name,
)
from taskerd.runner import Capture, Exit, Spawned, SpawnError, run_command, task_environment
from taskerd.store import JournalError, Run, Store, task_record

log = logging.getLogger("taskerd")

#: A non-once task's RUNNING state is journaled this long after it starts (if still running).
STARTED_WRITE_DELAY = 0.1
#: A terminal state the journal refused is written again after this long, doubling up to a cap.
FINISH_RETRY = (0.05, 5.0)


class Unhealthy(Exception):
    """The command exited with one of ``unhealthy_exit_codes``: its worker is replaced."""

    def __init__(self, result: Exit) -> None:
        super().__init__(f"exited with status {result.exit_code} (unhealthy worker)")
        self.result = result


class Host(Protocol):
    """What an attempt needs of the daemon (the :class:`~taskerd.core.Core`)."""

    config: DaemonConfig
    store: Store
    hub: EventHub

    def move(self, live: Live, state: State) -> None:
        """Change a live task's state, keeping the counts by state right."""

    def settle(self, live: Live) -> None:
        """End the task if its outcome is known and no attempt of it runs."""

    def failed_attempt(self, live: Live, reason: str) -> None:
        """An attempt failed and the task runs again at once (``TaskSpec.retries``)."""

    def ended(self, live: Live, ending: Ending) -> None:
        """The task's end is announced: what follows from it (dependants, hooks)."""


class Attempt:
    """One run of one task's command; the engine calls it with the worker's context."""

    __slots__ = ("host", "live")

    def __init__(self, host: Host, live: Live) -> None:
        self.host = host
        self.live = live

    async def __call__(self, ctx: engine.TaskContext, resource: str) -> Exit:
        live, host = self.live, self.host
        live.in_attempt = True
        try:
            spec = live.spec
            if spec is None:
                spec = live.spec = await host.store.spec(live.id)
                if spec is None:  # cleaned while queued: cannot happen for live tasks
                    raise SpawnError(f"task {live.id} vanished from the journal")
            host.move(live, RUNNING)
            live.worker = ctx.worker_id + 1  # 1-based; 0 is a temporary resource (Run)
            deadline = None if live.timeout is None else time.time() + live.timeout
            failures = 0
            while True:
                live.attempts += 1
                live.pid = 0
                live.run = None
                live.started_at = time.time()
                live.capture = Capture(
                    host.config.output_limit, on_chunk=partial(_output, host, live)
                )
                if live.once:  # at most once: RUNNING must be durable before the command starts
                    self._journal_started()
                    await host.store.flush()
                variables = spec.env or live.env or {}
                extras = self._extras(resource, deadline)
                executor = live.group.executor
                if executor is None:
                    result = await run_command(
                        list(spec.argv),
                        shell=spec.shell,
                        env=task_environment(variables, extras),
                        cwd=spec.cwd or None,
                        stdin=spec.stdin,
                        capture=live.capture,
                        kill_grace=host.config.kill_grace,
                        on_spawn=self._spawned,
                    )
                else:
                    result = await executor.run(
                        self._job(spec, dict(variables), extras, deadline), live.capture,
                        self._spawned,
                    )  # fmt: skip
                if result.exit_code in host.config.unhealthy_exit_codes:
                    raise Unhealthy(result)
                if not _failed(result) or failures >= spec.retries:
                    return result
                failures += 1  # run it again, at once, in the same slot (and the same timeout)
                if live.started_write is not None:
                    live.started_write.cancel()
                    live.started_write = None
                host.failed_attempt(live, _how(result))
        finally:
            live.in_attempt = False
            host.settle(live)

    def _job(
        self, spec: pb.TaskSpec, env: dict[str, str], extras: dict[str, str],
        deadline: float | None,
    ) -> Job:  # fmt: skip
        """The attempt as an executor other than this host's runs it."""
        live, config = self.live, self.host.config
        return Job(
            task_id=live.id, attempt=live.attempts, argv=list(spec.argv), shell=spec.shell,
            env=env, extras=extras, cwd=spec.cwd or None, stdin=spec.stdin, once=live.once,
            timeout=None if deadline is None else max(0.0, deadline - time.time()),
            kill_grace=config.kill_grace, output_limit=config.output_limit,
        )  # fmt: skip

    def _extras(self, resource: str, deadline: float | None) -> dict[str, str]:
        """The TASKER_* variables of the attempt's environment."""
        live = self.live
        env = {}
        env["TASKER_TASK_ID"] = str(live.id)
        env["TASKER_WORKER_ID"] = str(live.worker)
        env["TASKER_ATTEMPT"] = str(live.attempts)
        if deadline is not None:
            env["TASKER_DEADLINE"] = f"{deadline:.3f}"
        if resource:
            env["TASKER_RESOURCE"] = resource
        return env

    def _spawned(self, spawned: Spawned) -> None:
        live, host = self.live, self.host
        live.pid = spawned.pid
        live.run = spawned
        if live.state == PAUSED and not spawned.node:  # paused while it was being spawned
            procs.signal_run(spawned.pgid, spawned.token, signal.SIGSTOP, spawned.cgroup)
        if live.once:
            self._journal_started()
        else:
            # Most tasks are short: their finish records the start too, in one write. A crash
            # before this write re-runs the task without counting the attempt (recovery still
            # ends the first run's processes: they carry this daemon's token).
            loop = asyncio.get_running_loop()
            live.started_write = loop.call_later(STARTED_WRITE_DELAY, self._journal_started)
        live.seq += 1
        started = pb.TaskEvent.Started(pid=live.pid, worker=live.worker, attempt=live.attempts)
        host.hub.publish(live.id, partial(_stamped, live.id, live.seq, started=started))
        log.info(
            "task %d started: pid %d, worker %d, attempt %d",
            live.id, live.pid, live.worker, live.attempts,
        )  # fmt: skip

    def _journal_started(self) -> None:
        live = self.live
        live.started_write = None
        if live.state in ACTIVE and live.started_at is not None:
            self.host.store.mark_started(
                live.id, attempt=live.attempts, pid=live.pid, worker=live.worker,
                started_at=live.started_at, run=_identity(live), node=node_of(live),
            )  # fmt: skip


def node_of(live: Live) -> str:
    """The Dask worker of the task's current (or last) attempt; "" for a run here."""
    return live.run.node if live.run is not None else ""


def _identity(live: Live) -> Run | None:
    """What the journal keeps to find the current attempt's processes after a crash."""
    s = live.run
    return None if s is None else Run(live.id, s.pid, s.pgid, s.start_time, s.token)


def _failed(result: Exit) -> bool:
    """Whether an attempt failed on its own: a non-zero exit, or a signal we did not send."""
    if result.exit_code is not None:
        return result.exit_code != 0
    return not result.killed_by_us


def _how(result: Exit) -> str:
    if result.exit_code is not None:
        return f"exited with status {result.exit_code}"
    return f"killed by signal {result.signal} ({_signame(result.signal)})"


def _stamped(task_id: int, seq: int, _with_output: bool, **kind: object) -> pb.TaskEvent:
    return event(task_id, seq, **kind)


def _output(host: Host, live: Live, stream: int, data: bytes) -> None:
    live.seq += 1
    if not host.hub.watched(live.id, output=True):
        return
    out = pb.TaskEvent.Output(stream=stream, data=data)  # type: ignore[arg-type]
    host.hub.publish(live.id, partial(_stamped, live.id, live.seq, output=out), is_output=True)


# --------------------------------------------------------------------------------- the end


def classify(
    live: Live, result: Exit | None, error: BaseException | None, *, stopping: bool
) -> tuple[State, str] | None:
    """The terminal state and error sentence for an outcome; None to leave the task in the
    journal for the next start (a STOP shutdown stopped it)."""
    if error is None:
        assert result is not None
        if result.exit_code == 0:
            return SUCCEEDED, ""
        return FAILED, _how(result)
    if isinstance(error, engine.TaskTimeout):
        if live.state == QUEUED and live.queue_timeout is not None:
            return TIMED_OUT, f"did not start within {format_duration(live.queue_timeout)}"
        return TIMED_OUT, f"timed out after {format_duration(live.timeout or 0)}"
    stopped = stopping and not live.cancel_reason
    if isinstance(error, engine.ShuttingDown) or (
        isinstance(error, engine.TaskCancelled) and stopped
    ):
        return None
    if isinstance(error, engine.Killed) or (
        isinstance(error, engine.TaskCancelled) and not live.cancel_reason
    ):
        return CANCELLED, "cancelled: the daemon was killed"
    if isinstance(error, engine.TaskCancelled):
        return CANCELLED, live.cancel_reason
    if isinstance(error, SpawnError):
        return FAILED, str(error)
    if isinstance(error, JournalError):
        return FAILED, f"not started: {error}"
    if isinstance(error, Unhealthy):
        return FAILED, f"{error}; no retries left"
    if isinstance(error, NodeLost):  # an at-most-once task is not run again; others were
        return (LOST, f"{error}: an at-most-once task is not run again") if live.once else (
            FAILED, f"{error}; no retries left")  # fmt: skip
    log.error("task %d failed inside the daemon: %r", live.id, error, exc_info=error)
    return FAILED, f"internal error: {error!r}"


@dataclass(slots=True)
class Ending:
    """How a task ends, decided: what :func:`write` journals and :func:`announce` tells."""

    state: State
    message: str
    result: Exit | None
    spec: pb.TaskSpec | None
    now: float
    keep_output: bool = True


def decide(live: Live, outcome: Outcome, *, stopping: bool) -> Ending | None:
    """The task's end from the engine's outcome; None to leave it in the journal for the next
    start (a STOP shutdown stopped it)."""
    result, error = outcome
    if isinstance(error, Unhealthy):
        result = error.result
    verdict = classify(live, result, error, stopping=stopping)
    if result is None and live.capture is not None:
        result = live.capture.exit  # how a timed-out or cancelled command died
    if verdict is None:
        return None
    if live.started_write is not None:  # the finish records the start
        live.started_write.cancel()
        live.started_write = None
    return Ending(verdict[0], verdict[1], result, live.spec, time.time())


def write(host: Host, live: Live, ending: Ending) -> asyncio.Future[None]:
    """Queue the terminal state (and the output, unless ``keep_output`` was dropped)."""
    capture, result = live.capture, ending.result
    # The capture's own buffers: the command has ended, nothing feeds them any more.
    out, err = (capture.stdout, capture.stderr) if capture else (b"", b"")
    dropped = not ending.keep_output
    if dropped:
        out = err = b""
    return host.store.mark_finished(
        live.id,
        state=ending.state,
        ended_at=ending.now,
        error=ending.message,
        exit_code=result.exit_code if result else None,
        signal=result.signal if result else None,
        attempts=live.attempts,
        started_at=live.started_at,
        pid=live.pid or None,
        worker=live.worker if live.pid else None,
        stdout=out,
        stderr=err,
        stdout_truncated=bool(capture and (capture.stdout_truncated or dropped)),
        stderr_truncated=bool(capture and (capture.stderr_truncated or dropped)),
        node=node_of(live) or None,
    )


async def conclude(host: Host, live: Live, ending: Ending, failed: JournalError | None) -> None:
    """Journal the end with retries, then announce it: the path of a task whose end needs the
    journal first (its spec, for a watcher) or whose first write failed (``failed``).

    A write the journal refuses is retried with backoff (after the first failure, without the
    output, which is what fills a disk) until it is written or this coroutine is cancelled.
    """
    if ending.spec is None and host.hub.watched(live.id):  # it never started: the journal has it
        with contextlib.suppress(JournalError):
            row = await host.store.get(live.id)
            ending.spec = row.spec if row is not None else None
    delay = FINISH_RETRY[0]
    while True:
        if failed is None:
            try:
                await write(host, live, ending)
                break
            except JournalError as exc:
                failed = exc
        log.error(
            "task %d: cannot journal its end (%s); trying again in %s",
            live.id, failed, format_duration(delay),
        )  # fmt: skip
        capture = live.capture
        if ending.keep_output and capture is not None and (capture.stdout or capture.stderr):
            ending.keep_output = False
            note = f"output not kept: {failed}"
            ending.message = f"{ending.message}; {note}" if ending.message else note
        failed = None
        await asyncio.sleep(delay)
        delay = min(delay * 2, FINISH_RETRY[1])
    announce(host, live, ending)


def announce(host: Host, live: Live, ending: Ending) -> None:
    """The end is committed: out of memory, counted and announced, in this one step."""
    host.move(live, ending.state)
    live.seq += 1
    seq, capture, result, state = live.seq, live.capture, ending.result, ending.state
    spec, keep_output, node = ending.spec, ending.keep_output, node_of(live)
    extra = live.extra
    links = (
        (extra.restarted_from, extra.schedule_id, extra.submitted_by)
        if extra is not None else (0, 0, "")
    )  # fmt: skip

    def make(output: bool) -> pb.TaskEvent:  # called only if someone watches
        task = task_record(
            live.id, state=state, queued_at=live.queued_at, started_at=live.started_at,
            ended_at=ending.now, attempts=live.attempts, pid=live.pid, worker=live.worker,
            exit_code=result.exit_code if result else None,
            signal=result.signal if result else None, error=ending.message,
            spec=spec if spec is not None else pb.TaskSpec(), group=live.group.name,
            restarted_from=links[0], schedule_id=links[1], submitted_by=links[2],
            node=node,
        )  # fmt: skip
        if output and capture is not None and keep_output:
            output_into(task, capture)
        return event(live.id, seq, finished=pb.TaskEvent.Finished(task=task))

    host.hub.publish(live.id, make, is_final=True)
    host.ended(live, ending)
    if log.isEnabledFor(logging.INFO):
        took = format_duration(ending.now - live.started_at) if live.started_at else "-"
        log.info("task %d %s in %s%s", live.id, state_name(state), took,
                 f": {ending.message}" if ending.message else "")  # fmt: skip


def _signame(number: int | None) -> str:
    import signal as signals

    try:
        return signals.Signals(number or 0).name
    except ValueError:
        return "unknown"
