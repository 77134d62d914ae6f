"""The worker side of Tasker on Dask: ``dask worker --preload taskerd.dask.worker``.

The daemon submits one coroutine per attempt::

    client.submit(run_task, spec.to_dict(), key=spec.run_key, resources={"slots": 1},
                  pure=False, retries=0)

:func:`run_task` runs on the worker's event loop (a coroutine function, so no thread is held),
and runs the command with :func:`taskerd.runner.run_command`: the local runner's session and
process group, token, kill grace, output cap and environment rules, without cgroups (there is
no daemon state directory on a worker). How a run goes:

1. It registers under its ``run_key`` in the worker's registry (for :func:`cancel_run` and
   :func:`end_runs`).
2. It claims ``run_key`` on the scheduler (:mod:`taskerd.dask.claims`), unless the spec says
   not to (``claim`` false and not ``once``). A lost claim returns at once, nothing spawned.
3. It spawns; a :class:`~taskerd.dask.spec.StartedEvent` goes to ``topic``, then the output as
   :class:`~taskerd.dask.spec.OutputEvent` batches (flushed at 32 KiB or after 100 ms).
4. ``timeout`` is enforced here: every process of the run gets SIGTERM, SIGKILL after
   ``kill_grace``, as a cancel does.
5. It logs a :class:`~taskerd.dask.spec.FinishedEvent` (the daemon takes the end from it, a
   hop sooner than from the future) and returns a :class:`~taskerd.dask.spec.RunResult`
   (:func:`~taskerd.dask.spec.to_exit` gives the local ``Exit``).

Cancel: ``client.run(cancel_run, run_key, workers=[address])`` on the worker that holds it
(:func:`cancel` finds it through the claim and also revokes the claim, so a run still on its
way to a worker never starts). A second cancel sends SIGKILL at once.

After a daemon restart: ``client.run(end_runs, new_epoch)`` on every worker ends the runs of
other epochs, and waits until their processes are gone.

The worker process becomes a child subreaper and reaps adopted orphans every second, as the
daemon does, so a descendant that escaped its run's group is still found and killed when its
run ends. A worker that closes cancels its runs (the same ending). A worker killed outright
(``kill -9``; its nanny dying; SIGTERM to the ``dask worker`` process group, which the worker
process does not handle) cannot: its keeper (:mod:`taskerd.dask.keeper`) ends them.

``cwd``: the runner steps into it around the spawn (Python 3.11's posix_spawn cannot chdir),
so code on the worker's other threads must not use relative paths.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from taskerd.dask import claims
from taskerd.dask.keeper import Keeper
from taskerd.dask.spec import (
    NODE_VAR,
    STDOUT,
    FinishedEvent,
    OutputEvent,
    RunResult,
    RunSpec,
    StartedEvent,
)
from taskerd.runner import (
    Capture,
    Exit,
    Spawned,
    SpawnError,
    become_subreaper,
    reap_orphans_forever,
    run_command,
    task_environment,
)

if TYPE_CHECKING:
    from distributed import Client, Worker

__all__ = [
    "FLUSH_BYTES",
    "FLUSH_DELAY",
    "PLUGIN",
    "TaskerWorker",
    "cancel",
    "cancel_run",
    "dask_setup",
    "end_runs",
    "end_runs_except",
    "run_task",
]

log = logging.getLogger("taskerd")

PLUGIN = "tasker"
"""The name of :class:`TaskerWorker` in ``worker.plugins``."""
FLUSH_BYTES = 32 * 1024
"""Output is sent as soon as this much is pending..."""
FLUSH_DELAY = 0.1
"""...or this many seconds after the first pending byte, whichever comes first."""
_END_MARGIN = 5.0  # end_runs waits up to the longest kill_grace plus this


class _Events:
    """A run's events on its topic: numbered from 1, output batched."""

    __slots__ = ("handle", "loop", "pending", "seq", "size", "spec", "worker")

    def __init__(self, worker: Worker, spec: RunSpec) -> None:
        self.worker = worker
        self.spec = spec
        self.loop = asyncio.get_running_loop()
        self.seq = 0
        self.pending: list[tuple[int, bytearray]] = []
        self.size = 0
        self.handle: asyncio.TimerHandle | None = None

    def started(self, pid: int, node: str, address: str) -> None:
        spec = self.spec
        self.seq += 1
        msg: StartedEvent = {
            "type": "started", "run_key": spec.run_key, "task_id": spec.task_id,
            "attempt": spec.attempt, "seq": self.seq, "pid": pid, "node": node,
            "address": address, "time": time.time(),
        }  # fmt: skip
        self.worker.log_event(spec.topic, msg)

    def output(self, stream: int, data: bytes) -> None:
        pending = self.pending
        if pending and pending[-1][0] == stream:
            pending[-1][1].extend(data)
        else:
            pending.append((stream, bytearray(data)))
        self.size += len(data)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.handle is None:
            self.handle = self.loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        pending, self.pending, self.size = self.pending, [], 0
        spec = self.spec
        for stream, data in pending:
            self.seq += 1
            msg: OutputEvent = {
                "type": "output", "run_key": spec.run_key, "task_id": spec.task_id,
                "attempt": spec.attempt, "seq": self.seq, "stream": stream, "data": bytes(data),
            }  # fmt: skip
            self.worker.log_event(spec.topic, msg)

    def finished(self, result: RunResult) -> None:
        """The last event: the result without its output (see FinishedEvent)."""
        self.flush()
        msg: FinishedEvent = {
            "type": "finished", "run_key": self.spec.run_key, "seq": self.seq + 1,
            "result": {**result, "stdout": b"", "stderr": b""},
        }  # fmt: skip
        self.worker.log_event(self.spec.topic, msg)


class _Capture(Capture):
    """The runner's Capture (same cap, same truncation flags), streaming what it keeps."""

    __slots__ = ("events",)

    def __init__(self, limit: int, events: _Events) -> None:
        super().__init__(limit)
        self.events = events

    def feed(self, stream: int, data: bytes) -> None:
        buf = self.stdout if stream == STDOUT else self.stderr
        before = len(buf)
        super().feed(stream, data)
        if len(buf) > before:
            self.events.output(stream, bytes(buf[before:]))


@dataclass(slots=True, eq=False)
class _Live:
    """A run in the worker's registry."""

    spec: RunSpec
    task: asyncio.Task[Exit] | None = None
    spawned: Spawned | None = None
    spawned_at: float | None = None
    cancelled: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


class TaskerWorker(WorkerPlugin):
    """Per worker: the registry of live runs, the keeper, and the orphan reaper."""

    name = PLUGIN
    idempotent = True

    def __init__(self) -> None:
        self.runs: dict[str, _Live] = {}
        self.worker: Worker | None = None
        self.keeper: Keeper | None = None
        self.reaper: asyncio.Task[None] | None = None

    def setup(self, worker: Worker) -> None:
        """Become a subreaper, start the keeper and the reaper."""
        self.worker = worker
        claims.quicken(getattr(worker, "batched_stream", None))
        if not become_subreaper():
            log.warning("not a child subreaper: escaped descendants of a run are not reaped")
        self.keeper = Keeper()
        self.reaper = asyncio.ensure_future(reap_orphans_forever())

    async def teardown(self, worker: Worker) -> None:
        """End every run (the worker closes), then stop the keeper and the reaper."""
        await self.end(None)
        if self.reaper is not None:
            self.reaper.cancel()
        if self.keeper is not None:
            self.keeper.close()

    @property
    def node(self) -> str:
        """This worker's name for TASKER_NODE: its name if it has one, else its address."""
        assert self.worker is not None
        name = self.worker.name
        return self.worker.address if name is None or name == "" else str(name)

    async def run(self, spec: RunSpec) -> RunResult:
        """Claim, spawn, stream, wait; see :func:`run_task`."""
        worker = self.worker
        assert worker is not None
        address, node = worker.address, self.node
        result: RunResult = {
            "run_key": spec.run_key, "task_id": spec.task_id, "attempt": spec.attempt,
            "node": node, "address": address, "claimed": True, "claimed_by": "",
            "started": False, "pid": 0, "exit_code": None, "signal": None,
            "killed_by_us": False, "timed_out": False, "cancelled": False, "error": "",
            "stdout": b"", "stderr": b"", "stdout_truncated": False, "stderr_truncated": False,
            "started_at": None, "ended_at": 0.0, "last_seq": 0,
        }  # fmt: skip
        if spec.run_key in self.runs:
            result["error"] = f"run {spec.run_key} is already running on this worker"
            result["ended_at"] = time.time()
            return result
        live = self.runs[spec.run_key] = _Live(spec)
        events = _Events(worker, spec)
        try:
            await self._run(live, result, events)
        finally:
            del self.runs[spec.run_key]
            live.done.set()
            result["ended_at"] = time.time()
        events.finished(result)
        return result

    async def _run(self, live: _Live, result: RunResult, events: _Events) -> None:
        spec, worker = live.spec, self.worker
        assert worker is not None
        if spec.claimed:
            try:
                reply: claims.ClaimReply | None = await worker.scheduler.tasker_claim(
                    run_key=spec.run_key,
                    worker=worker.address,
                    claimant=claims.new_claimant(worker.address),
                )
            except (OSError, ValueError) as exc:  # the scheduler is gone (CommClosedError...)
                result["claimed"] = False
                result["error"] = f"not started: cannot claim it on the scheduler: {exc}"
                return
            if reply is None:
                result["claimed"] = False
                result["error"] = (
                    "not started: the scheduler has no tasker claims plugin "
                    "(taskerd.dask.claims.register(client), or --preload taskerd.dask.claims)"
                )
                return
            if not reply["ok"]:
                result["claimed"] = False
                result["claimed_by"] = reply["holder"]
                result["error"] = f"not started: claimed elsewhere ({reply['holder']})"
                return
        if live.cancelled:
            result["cancelled"] = True
            result["error"] = "not started: cancelled"
            return
        capture = _Capture(spec.output_limit, events)
        live.task = asyncio.ensure_future(self._spawn_and_wait(live, capture, events))
        try:
            await live.task
        except TimeoutError:
            result["timed_out"] = True
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the worker itself cancels us (it closes): the run was ended all the same
            result["cancelled"] = True
        except SpawnError as exc:
            result["error"] = str(exc)
        finally:
            events.flush()
            if live.spawned is not None and self.keeper is not None:
                self.keeper.forget(live.spawned.token)
        ended = capture.exit
        if ended is not None:
            result["started"] = True
            result["pid"] = ended.pid
            result["exit_code"] = ended.exit_code
            result["signal"] = ended.signal
            result["killed_by_us"] = ended.killed_by_us
            result["started_at"] = live.spawned_at
        result["stdout_truncated"] = capture.stdout_truncated
        result["stderr_truncated"] = capture.stderr_truncated
        if spec.return_output:
            result["stdout"] = bytes(capture.stdout)
            result["stderr"] = bytes(capture.stderr)
        result["last_seq"] = events.seq

    async def _spawn_and_wait(self, live: _Live, capture: _Capture, events: _Events) -> Exit:
        spec, worker = live.spec, self.worker
        assert worker is not None
        node, address = self.node, worker.address

        def spawned(run: Spawned) -> None:
            live.spawned = run
            live.spawned_at = time.time()
            if self.keeper is not None:
                self.keeper.watch(run.pgid, run.token, spec.kill_grace)
            events.started(run.pid, node, address)

        env = task_environment(spec.env, {**spec.env_add, NODE_VAR: node})
        async with asyncio.timeout(spec.timeout):
            return await run_command(
                spec.argv,
                shell=spec.shell,
                env=env,
                cwd=spec.cwd,
                stdin=spec.stdin,
                capture=capture,
                kill_grace=spec.kill_grace,
                on_spawn=spawned,
            )

    def cancel(self, run_key: str) -> bool:
        """Cancel one run (again: SIGKILL now); False if it is not on this worker."""
        live = self.runs.get(run_key)
        if live is None:
            return False
        live.cancel()
        return True

    async def end(
        self, keep_epoch: str | None, keep_keys: Collection[str] | None = None
    ) -> list[str]:
        """Cancel every run not of ``keep_epoch`` (None: all), or (``keep_keys``) every run
        whose key is not one of those, and wait for them to end."""
        ending = [
            live
            for live in self.runs.values()
            if (live.spec.run_key not in keep_keys if keep_keys is not None
                else keep_epoch is None or live.spec.epoch != keep_epoch)
        ]  # fmt: skip
        for live in ending:
            live.cancel()
        if ending:
            grace = max(live.spec.kill_grace for live in ending)
            waits = [asyncio.ensure_future(live.done.wait()) for live in ending]
            _, pending = await asyncio.wait(waits, timeout=grace + _END_MARGIN)
            for waiting in pending:
                waiting.cancel()
        return [live.spec.run_key for live in ending]


async def _plugin(worker: Worker) -> TaskerWorker:
    """The worker's TaskerWorker, installed now if the preload was not used."""
    plugin = worker.plugins.get(PLUGIN)
    if not isinstance(plugin, TaskerWorker):
        async with _install_lock():
            plugin = worker.plugins.get(PLUGIN)
            if not isinstance(plugin, TaskerWorker):
                await worker.plugin_add(TaskerWorker(), name=PLUGIN)
                plugin = worker.plugins[PLUGIN]
    assert isinstance(plugin, TaskerWorker)
    return plugin


_lock: asyncio.Lock | None = None


def _install_lock() -> asyncio.Lock:
    global _lock
    if _lock is None:
        _lock = asyncio.Lock()
    return _lock


# ------------------------------------------------------------------------- Dask entry points


async def dask_setup(worker: Worker) -> None:
    """``--preload taskerd.dask.worker``: install :class:`TaskerWorker` as the worker starts."""
    await _plugin(worker)


async def run_task(spec: dict[str, Any]) -> RunResult:
    """Run one attempt (a :class:`~taskerd.dask.spec.RunSpec` as a dict) on this worker.

    Returns a :class:`~taskerd.dask.spec.RunResult`; raises only for a bad spec.
    """
    run = RunSpec.from_dict(spec)
    plugin = await _plugin(get_worker())
    return await plugin.run(run)


def cancel_run(run_key: str, dask_worker: Worker) -> bool:
    """``client.run(cancel_run, run_key, workers=[address])``: end that run's processes
    (SIGTERM, SIGKILL after its kill_grace; at once if already cancelled). Returns at once,
    False if the run is not on this worker; its result says ``cancelled``."""
    plugin = dask_worker.plugins.get(PLUGIN)
    return isinstance(plugin, TaskerWorker) and plugin.cancel(run_key)


async def end_runs(keep_epoch: str | None, dask_worker: Worker) -> list[str]:
    """``client.run(end_runs, epoch)``: end every run of another epoch (None: every run),
    wait until they are over (at most their kill_grace and 5 s); return their run keys."""
    plugin = dask_worker.plugins.get(PLUGIN)
    if not isinstance(plugin, TaskerWorker):
        return []
    return await plugin.end(keep_epoch)


async def end_runs_except(run_keys: list[str], dask_worker: Worker) -> list[str]:
    """``client.run(end_runs_except, keys, workers=[...])``: end every run whose key is not
    one of ``run_keys`` (the daemon's runs in flight), as :func:`end_runs` does; for a worker
    that was lost and came back while its runs were handled as lost."""
    plugin = dask_worker.plugins.get(PLUGIN)
    if not isinstance(plugin, TaskerWorker):
        return []
    return await plugin.end(None, set(run_keys))


async def _cancel(client: Client, run_key: str) -> bool:
    held = await claims.call(client, "tasker_revoke", [run_key])
    holder = held.get(run_key, "")
    # No holder: it never started and now never will, unless its claim was dropped already
    # (its key forgotten): then only asking every worker finds it.
    workers = [holder] if holder else None
    answers = await client._run(cancel_run, run_key, workers=workers, on_error="return")
    return any(answer is True for answer in answers.values())


def cancel(client: Client, run_key: str) -> Any:
    """Cancel a run wherever it is: revoke its claim (so it never starts if it has not), and
    cancel it on the worker that holds it (every worker, if none does). True if it was running.

    Call it before dropping the run's future; call :func:`taskerd.dask.claims.release` once the
    attempt is over, or the revocation stays on the scheduler until Dask forgets the key."""
    return client.sync(_cancel, client, run_key)  # type: ignore[no-untyped-call]
