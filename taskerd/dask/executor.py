"""The daemon side of Tasker on Dask: a group's attempts run on a Dask cluster.

taskerd stays the scheduler of record: a group bound to Dask (``executor = "dask"``) has as many
slots as the cluster's workers advertise (their ``slots`` resource, summed), so its engine hands
Dask a task only when a remote slot is free, and Dask's own queue never reorders priorities.
Dask decides only where a run goes.

Each attempt is one ``client.submit`` of :func:`taskerd.dask.worker.run_task` under a fresh run
key. Its events (started, output, finished, in order by ``seq``) arrive on this daemon's topic
and feed the same capture and watchers as a local run; its result gives the same ``Exit``. The
result is taken from the finished event when it comes first (fetching the future's data is one
more round trip, through the scheduler to the worker, before the slot is handed on). How the
cluster's failures map to Tasker's states:

- the worker died before the run started: Dask runs it elsewhere (the claim is still free),
  and the attempt is not counted;
- the worker died after it started: the run's second execution finds its claim taken and
  does not spawn. An at-most-once task ends LOST; another is re-queued, the attempt counted
  (``engine.Retry``, up to its max_retries);
- the scheduler is lost: every run in flight is handled so too (a daemon crash's rule), and
  the client reconnects; runs of the old connection are ended on every worker
  (:func:`~taskerd.dask.worker.end_runs`) once it is back, as after a taskerd restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from tasker.v1 import tasker_pb2 as pb
from taskerd import engine
from taskerd.config import DaemonConfig
from taskerd.dask.spec import (
    REVOKED,
    FinishedEvent,
    Job,
    NodeLost,
    OutputEvent,
    RunResult,
    RunSpec,
    StartedEvent,
    to_exit,
)
from taskerd.runner import Capture, Exit, Spawned, SpawnError

log = logging.getLogger("taskerd")

#: The worker resource one run takes.
SLOTS = "slots"
#: How often the cluster's workers and slots are read.
POLL = 1.0
#: After a run's result, how long its last events may still take to arrive.
EVENTS_GRACE = 2.0
#: Seconds to reach the scheduler (at start, and again after losing it).
CONNECT_TIMEOUT = 20
#: How many times one attempt may be handed to Dask again when it never started.
MAX_DISPATCHES = 20
TOKEN_PREFIX = "dask:"


@dataclass(slots=True, eq=False)
class _Run:
    """A run in flight: its events put in order and fed to the attempt."""

    capture: Capture
    on_spawn: Callable[[Spawned], None]
    run_key: str
    seq: int = 0  # the last event fed
    early: dict[int, dict[str, Any]] = field(default_factory=dict)
    started: bool = False
    node: str = ""
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    wanted: int = 0  # the seq the result says is the last one
    finished: asyncio.Future[RunResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def take(self, msg: dict[str, Any]) -> None:
        self.early[int(msg["seq"])] = msg
        while (nxt := self.early.pop(self.seq + 1, None)) is not None:
            self.seq += 1
            if nxt["type"] == "started":
                started: StartedEvent = nxt  # type: ignore[assignment]
                self.started, self.node = True, started["node"]
                token = TOKEN_PREFIX + self.run_key
                self.on_spawn(Spawned(started["pid"], 0, token, "", 0, node=started["node"]))
            elif nxt["type"] == "finished":
                end: FinishedEvent = nxt  # type: ignore[assignment]
                if not self.finished.done():
                    self.finished.set_result(end["result"])
            else:
                out: OutputEvent = nxt  # type: ignore[assignment]
                self.capture.feed(out["stream"], out["data"])
        if self.wanted and self.seq >= self.wanted:
            self.caught_up.set()


class DaskExecutor:
    """Runs attempts on a Dask cluster; one per daemon (see the module's docstring)."""

    @classmethod
    def from_config(cls, config: DaemonConfig) -> DaskExecutor:
        """The executor of ``config``'s dask_* keys (TLS when dask_tls_ca is set)."""
        security = None
        if config.dask_tls_ca:
            from distributed.security import Security

            security = Security(  # type: ignore[no-untyped-call]
                tls_ca_file=config.dask_tls_ca,
                tls_client_cert=config.dask_tls_cert or None,
                tls_client_key=config.dask_tls_key or None,
                require_encryption=True,
            )
        return cls(config.dask_scheduler, config.dask_scheduler_file, security)

    def __init__(self, scheduler: str, scheduler_file: str, security: Any = None) -> None:
        self.scheduler = scheduler
        self.scheduler_file = scheduler_file
        self.security = security
        self.client: Any = None
        self.epoch = ""  # this connection's runs (a new one after a reconnect)
        self.topic = ""
        self._connected = asyncio.Event()  # dispatch waits while the scheduler is lost
        self._known: set[str] = set()  # worker addresses whose other runs were ended
        self.nodes: list[pb.Node] = []  # the cluster's workers, as Stats shows them
        self.on_slots: Callable[[int], None] = lambda slots: None
        self._runs: dict[str, _Run] = {}
        self._dispatched = 0
        self._poller: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    @property
    def slots(self) -> int:
        """The cluster's slots: the sum of its workers' ``slots`` resource."""
        return sum(n.slots for n in self.nodes)

    async def start(self) -> None:
        """Connect, install the claims plugin, listen for events, end runs of an earlier
        taskerd, and keep the slot count current (and the connection: see :meth:`_watch`)."""
        await self._connect()
        self._poller = asyncio.get_running_loop().create_task(self._watch())
        log.info("dask: connected to %s, %d workers, %d slots",
                 self.client.scheduler.address, len(self.nodes), self.slots)  # fmt: skip

    async def _connect(self) -> None:
        """A client of the scheduler, and this connection's epoch: its own topic, the claims
        plugin, and no run of another epoch left on any worker."""
        from distributed import Client

        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close(timeout=2)
        where: dict[str, Any] = (
            {"scheduler_file": self.scheduler_file} if self.scheduler_file
            else {"address": self.scheduler}
        )  # fmt: skip
        self.client = await Client(  # type: ignore[no-untyped-call]
            **where, security=self.security, asynchronous=True, name="taskerd",
            set_as_default=False, timeout=CONNECT_TIMEOUT,
        )  # fmt: skip
        await self._new_epoch()

    async def _new_epoch(self) -> None:
        """Runs of the connection before this one must not go on: a new epoch, its topic, and
        every run of another epoch ended on every worker; the claims plugin (a scheduler that
        came back has none)."""
        from taskerd.dask import claims

        claims.quicken(getattr(self.client, "scheduler_comm", None))
        await claims.register(self.client)
        if self.topic:
            self.client.unsubscribe_topic(self.topic)
        self.epoch = secrets.token_hex(6)
        self.topic = f"tasker-{self.epoch}"
        self.client.subscribe_topic(self.topic, self._on_event)
        self._known = set()
        await self._poll()
        self._connected.set()

    async def close(self) -> None:
        """Stop watching and disconnect (runs in flight were ended by the engine before)."""
        if self._poller is not None:
            self._poller.cancel()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close(timeout=5)

    async def _poll(self) -> None:
        """Read the workers and slots; end other epochs' runs on workers not seen before
        (a worker that joined, or came back)."""
        from taskerd.dask.worker import end_runs_except

        info = await self.client.scheduler.identity(n_workers=-1)
        nodes = [
            pb.Node(name=str(w.get("name", address)), address=address,
                    slots=int((w.get("resources") or {}).get(SLOTS, 0)))
            for address, w in sorted(info.get("workers", {}).items())
        ]  # fmt: skip
        new = [n.address for n in nodes if n.address not in self._known]
        self._known = {n.address for n in nodes}  # one that leaves and comes back is new
        if new:
            ours = [k for k in self._runs if k.startswith(f"tasker-{self.epoch}-")]
            ended = await self.client.run(end_runs_except, ours, workers=new, on_error="return")
            count = sum(len(v) for v in ended.values() if isinstance(v, list))
            if count:
                log.warning("dask: ended %d runs that are not in flight (of an earlier taskerd, "
                            "connection, or of a worker that was lost)", count)  # fmt: skip
        before, self.nodes = self.slots, nodes
        if self.slots != before:
            self.on_slots(self.slots)

    async def _watch(self) -> None:
        """Every POLL: the workers and slots; a lost scheduler (no dispatch meanwhile), and a
        new connection once it is back."""
        while True:
            await asyncio.sleep(POLL)
            try:
                if self.client.status == "running":
                    if not self._connected.is_set():
                        await self._new_epoch()
                        log.info("dask: reconnected to the scheduler")
                    else:
                        await self._poll()
                    continue
                if self._connected.is_set():
                    log.error("dask: lost the scheduler; tasks wait for it to come back")
                    self._connected.clear()
                if self.client.status not in ("connecting", "newly-created"):
                    await self._connect()  # the client gave up: a new one
                    log.info("dask: connected to the scheduler again")
            except Exception as exc:  # a failed reconnection: try again next time
                if self._connected.is_set():
                    log.error("dask: the scheduler is unreachable: %r", exc)
                    self._connected.clear()

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        run = self._runs.get(str(msg.get("run_key", "")))
        if run is not None:
            run.take(msg)

    async def run(self, job: Job, capture: Capture, on_spawn: Callable[[Spawned], None]) -> Exit:
        """Run one attempt on the cluster; its processes are gone when this returns or raises.

        Raises :class:`NodeLost` (at-most-once) or ``engine.Retry`` (others) when its worker or
        the scheduler was lost after it started, ``SpawnError`` when it could not start,
        ``engine.TaskTimeout`` when the worker timed it out.
        """
        for _ in range(MAX_DISPATCHES):
            outcome = await self._dispatch(job, capture, on_spawn)
            if outcome is not None:
                return outcome
        raise SpawnError(f"not started: handed to Dask {MAX_DISPATCHES} times, never run")

    async def _dispatch(
        self, job: Job, capture: Capture, on_spawn: Callable[[Spawned], None]
    ) -> Exit | None:
        """One hand-over to Dask; None when it never started and may go again uncounted."""
        from taskerd.dask.worker import cancel, run_task

        await self._connected.wait()
        self._dispatched += 1
        run_key = f"tasker-{self.epoch}-{job.task_id}-{job.attempt}-{self._dispatched}"
        spec = RunSpec(
            task_id=job.task_id, attempt=job.attempt, run_key=run_key, argv=job.argv,
            topic=self.topic, env=job.env, env_add=job.extras, cwd=job.cwd, stdin=job.stdin,
            shell=job.shell, timeout=job.timeout, kill_grace=job.kill_grace,
            output_limit=job.output_limit, once=job.once, epoch=self.epoch,
        )  # fmt: skip
        run = self._runs[run_key] = _Run(capture, on_spawn, run_key)
        future = self.client.submit(
            run_task, spec.to_dict(), key=run_key, resources={SLOTS: 1}, pure=False, retries=0
        )
        try:
            result = await _result(run, future)
        except asyncio.CancelledError:  # cancelled or timed out here: end it there first
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cancel(self.client, run_key), job.kill_grace + 5)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(future), job.kill_grace + 5)
            self._release(run_key)  # its revocation
            raise
        except Exception as exc:  # KilledWorker, a lost scheduler (OSError, cancelled future)
            await self._lost(job, run, run_key, exc)
            return None
        finally:
            self._runs.pop(run_key, None)
            future.release()  # the key is forgotten, and with it the claim
        run.wanted = result["last_seq"]
        if run.seq < run.wanted:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run.caught_up.wait(), EVENTS_GRACE)
        if not result["claimed"]:
            holder = result["claimed_by"]
            if holder and holder != REVOKED:  # a second execution: the first one's worker died
                _gone(job, run, f"worker {holder} was lost after it started")
            if not holder:  # it could not claim: the scheduler is new (no plugin yet) or gone
                log.warning("task %d: %s; handing it to Dask again", job.task_id,
                            result["error"])  # fmt: skip
                self._connected.clear()  # until the watcher has set this connection up again
                return None
            raise SpawnError(result["error"] or "not started")
        ended = to_exit(result)
        if ended is None:
            raise SpawnError(result["error"] or "not started")
        if run.seq < run.wanted:  # events missed: the result has what was kept
            capture.stdout[:] = result["stdout"]
            capture.stderr[:] = result["stderr"]
        capture.stdout_truncated = result["stdout_truncated"]
        capture.stderr_truncated = result["stderr_truncated"]
        capture.exit = ended
        if result["timed_out"]:
            raise engine.TaskTimeout(f"timed out on {result['node']}")
        return ended

    def _release(self, run_key: str) -> None:
        """Forget a revoked claim, in the background (a revocation outlives its Dask key)."""
        from taskerd.dask import claims

        async def release() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(claims.call(self.client, "tasker_release", [run_key]), 10)

        task = asyncio.get_running_loop().create_task(release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _lost(self, job: Job, run: _Run, run_key: str, cause: BaseException) -> None:
        """A run whose worker or scheduler was lost: None to hand it over again if it never
        started (its claim is revoked first, so it never will); else LOST (at most once) or a
        counted retry. With the scheduler gone, it may have started."""
        from distributed.client import FutureCancelledError

        from taskerd.dask import claims

        if isinstance(cause, FutureCancelledError) and self._connected.is_set():
            log.error("dask: lost the scheduler; tasks wait for it to come back")
            self._connected.clear()  # (not cancelled by us: the connection was lost)
        started = run.started
        if not started:
            try:
                held = await asyncio.wait_for(
                    claims.call(self.client, "tasker_revoke", [run_key]), 10
                )
                started = bool(held.get(run_key))
                self._release(run_key)
            except Exception:
                started = True
        if not started:
            log.warning("task %d: %s before it started; handing it to Dask again",
                        job.task_id, cause)  # fmt: skip
            return None
        _gone(job, run, f"its Dask worker or the scheduler was lost ({cause!r})")


async def _result(run: _Run, future: Any) -> RunResult:
    """The run's result: from its finished event (every event before it fed) if that comes
    first, else from the future, which also raises what Dask had (a lost worker, ...)."""
    if not run.finished.done():
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not settled.done():
                settled.set_result(None)

        def on_done(_: Any) -> None:  # on Dask's callback thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle)

        future.add_done_callback(on_done)
        try:
            either: list[asyncio.Future[Any]] = [run.finished, settled]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
    if run.finished.done():
        return run.finished.result()
    result: RunResult = await future
    return result


def _gone(job: Job, run: _Run, why: str) -> NoReturn:
    """The attempt's run started and its worker (or the scheduler) was lost: LOST for an
    at-most-once task, else a counted retry."""
    lost = NodeLost(f"{why}{f' (on {run.node})' if run.node else ''}")
    if job.once:
        raise lost
    raise engine.Retry(lost)
