"""On-finish hooks: a shell command run after a task ends, off the queue's critical path.

The daemon's ``on_finish`` (config) runs after every task; a task's own ``TaskSpec.on_finish``
runs after that task. When a task has both, its own hook runs first, then the global one (one
after the other, in the same slot, whatever the first one's result). Each hook gets the daemon's
environment plus:

* ``TASKER_TASK_ID``, ``TASKER_STATE`` (``SUCCEEDED``, ``FAILED``...), ``TASKER_GROUP``;
* ``TASKER_EXIT_CODE`` and ``TASKER_SIGNAL`` (a number; each empty when there is none);
* ``TASKER_DURATION``: seconds of run time (``1.234``), empty if the task never ran;
* ``TASKER_LABEL_<KEY>`` per label (key upper-cased, each non-alphanumeric as ``_``).

Hooks run as tasks do (:func:`taskerd.runner.run_command`: own session, pidfd, cgroup if any);
what a hook leaves running in its group is killed when it exits. Each has ``timeout`` seconds,
after which its whole process group gets SIGTERM, then SIGKILL after
:data:`~taskerd.runner.HOOK_KILL_GRACE`. At most ``concurrency`` hooks run at once. A hook's
failure (non-zero exit, signal, timeout, cannot start) is logged on the ``taskerd`` logger with
the end of its output, and never changes the task's state.

:meth:`HookRunner.finished` is called on the event loop when a task's end is announced: it only
appends to a bounded deque (and may create a worker task); beyond ``pending`` waiting ends, new
ones are dropped and counted, with one warning per burst (a burst ends when the backlog has
drained to half the bound).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from tasker.durations import format_duration
from tasker.v1 import tasker_pb2 as pb
from taskerd.live import state_name
from taskerd.runner import HOOK_KILL_GRACE, Capture, Exit, SpawnError, run_command

__all__ = ["Finished", "HookRunner", "HookStats", "hook_env"]

log = logging.getLogger("taskerd")

OUTPUT_TAIL = 4096
"""Bytes of a hook's output (stdout and stderr, interleaved) kept to log when it fails."""

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


@dataclass(frozen=True, slots=True)
class Finished:
    """A task's end, as hooks see it."""

    task_id: int
    state: pb.TaskState.ValueType
    exit_code: int | None
    signal: int | None
    group: str
    run_seconds: float | None  # None: it never ran
    labels: Mapping[str, str]
    command: str = ""  # the task's own on_finish; "" if none


@dataclass(frozen=True, slots=True)
class HookStats:
    """Counters since start. ``ran`` counts hook commands that ended, ``failed`` included;
    ``dropped`` counts task ends whose hooks never ran (backlog full, or the runner closed)."""

    ran: int
    failed: int
    dropped: int
    pending: int  # task ends waiting for a slot
    running: int  # hook processes running now


def hook_env(end: Finished, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of ``end``'s hooks: ``base`` (default: the daemon's), labels, then the
    task's variables."""
    env = dict(os.environ if base is None else base)
    for key in sorted(end.labels):
        env["TASKER_LABEL_" + _NOT_ALNUM.sub("_", key).upper()] = end.labels[key]
    env.update(
        TASKER_TASK_ID=str(end.task_id),
        TASKER_STATE=state_name(end.state),
        TASKER_EXIT_CODE="" if end.exit_code is None else str(end.exit_code),
        TASKER_SIGNAL="" if end.signal is None else str(end.signal),
        TASKER_GROUP=end.group,
        TASKER_DURATION="" if end.run_seconds is None else f"{end.run_seconds:.3f}",
    )
    return env


class _Tail:
    """The last :data:`OUTPUT_TAIL` bytes of a run's output."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def feed(self, stream: int, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * OUTPUT_TAIL:
            del self.data[:-OUTPUT_TAIL]

    def text(self) -> str:
        out = bytes(self.data[-OUTPUT_TAIL:]).decode(errors="replace").strip()
        return f"; output: {out!r}" if out else ""


class HookRunner:
    """Runs on-finish hooks in the background: bounded backlog, bounded concurrency.

    ``command`` is the daemon's ``on_finish`` ("" for none); ``timeout`` applies to each hook
    command; ``pending`` bounds the task ends waiting for a slot.
    """

    def __init__(
        self, command: str, *, timeout: float, concurrency: int, pending: int = 10_000
    ) -> None:
        if concurrency < 1 or pending < 1 or timeout <= 0:
            raise ValueError("timeout must be > 0, concurrency and pending >= 1")
        self.command = command
        self.timeout = timeout
        self.concurrency = concurrency
        self.limit = pending
        self._pending: deque[Finished] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._ran = 0
        self._failed = 0
        self._dropped = 0
        self._running = 0
        self._burst = 0  # drops since the backlog was last below half the bound

    @property
    def stats(self) -> HookStats:
        """A snapshot of the counters."""
        return HookStats(self._ran, self._failed, self._dropped, len(self._pending), self._running)

    def finished(self, end: Finished) -> None:
        """Queue ``end``'s hooks, if it has any. O(1); never blocks; call on the event loop."""
        if not self.command and not end.command:
            return
        if self._closed or len(self._pending) >= self.limit:
            self._dropped += 1
            if not self._closed:
                self._burst += 1
                if self._burst == 1:
                    log.warning(
                        "on_finish: %d task ends already wait for their hooks; dropping hooks "
                        "until the backlog drains (task %d is the first dropped)",
                        len(self._pending), end.task_id,
                    )  # fmt: skip
            return
        self._pending.append(end)
        if len(self._workers) < self.concurrency:
            self._workers.add(asyncio.get_running_loop().create_task(self._work()))

    async def close(self, grace: float) -> None:
        """Stop taking task ends; give running and pending hooks up to ``grace`` seconds, then
        drop what still waits and kill what still runs (SIGTERM, SIGKILL after a short grace)."""
        self._closed = True
        if self._workers and grace > 0:
            await asyncio.wait(set(self._workers), timeout=grace)
        dropped = len(self._pending)
        self._pending.clear()
        self._dropped += dropped
        killed = self._running
        workers = list(self._workers)
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()  # a worker cancelled before its first step never removed itself
        if killed or dropped:
            log.warning(
                "on_finish: shutting down: killed %d running hooks, dropped %d pending task ends",
                killed, dropped,
            )  # fmt: skip

    async def _work(self) -> None:
        """Take task ends from the backlog until it is empty (then the worker ends)."""
        me = asyncio.current_task()
        try:
            while self._pending:
                end = self._pending.popleft()
                if self._burst and len(self._pending) <= self.limit // 2:
                    log.warning("on_finish: backlog drained; %d task ends lost their hooks",
                                self._burst)  # fmt: skip
                    self._burst = 0
                env: dict[str, str] | None = None
                for which, command in (("task's", end.command), ("global", self.command)):
                    if command:
                        env = env if env is not None else hook_env(end)
                        await self._run(end, which, command, env)
        finally:
            # Leave the set in this very step: finished() must never see a worker that is done.
            self._workers.discard(me)

    async def _run(self, end: Finished, which: str, command: str, env: dict[str, str]) -> None:
        """Run one hook command to its end; log its failure. A cancel (close) kills it."""
        tail = _Tail()
        failure = ""
        started = time.monotonic()
        self._running += 1
        try:
            async with asyncio.timeout(self.timeout):
                ended = await run_command(
                    [command], shell=True, env=env, capture=Capture(0, tail.feed),
                    kill_grace=HOOK_KILL_GRACE,
                )  # fmt: skip
            failure = _how(ended)
        except TimeoutError:
            failure = f"timed out after {format_duration(self.timeout)}"
        except SpawnError as e:
            failure = f"cannot start: {e}"
        except Exception as e:  # never let one hook stop the worker
            log.exception("on_finish: %s hook of task %d", which, end.task_id)
            failure = f"error: {e}"
        finally:
            self._running -= 1
        self._ran += 1
        if failure:
            self._failed += 1
            log.warning(
                "on_finish: %s hook of task %d failed: %s%s",
                which, end.task_id, failure, tail.text(),
            )  # fmt: skip
        else:
            log.debug(
                "on_finish: %s hook of task %d done in %.3fs",
                which, end.task_id, time.monotonic() - started,
            )  # fmt: skip


def _how(ended: Exit) -> str:
    """How the hook ended, or "" for a success."""
    if ended.signal is not None:
        return f"killed by signal {ended.signal}"
    return "" if ended.exit_code == 0 else f"exit status {ended.exit_code}"
