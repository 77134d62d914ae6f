"""The daemon's core: every verb of the API over the engine, the journal and the runner.

A task's life: ``submit`` reserves room in the engine (the one admission check: queue bound and
shutdown), journals the specs (group commit) and queues them; an engine worker runs an
:class:`~taskerd.attempt.Attempt`; :func:`~taskerd.attempt.conclude` journals the end and only
then tells the watchers. Nothing here speaks gRPC: the service turns requests into these calls
and ``RequestError`` into status codes.

One truth: a task in :attr:`Core.live` is as memory says; any other task is as the journal
says. Reads go to the journal thread, and resume after memory has taken in every commit they
saw (see :mod:`taskerd.store`), so Get, List, Stats and the event stream agree.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import gc
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

from google.protobuf.duration_pb2 import Duration

from tasker.v1 import tasker_pb2 as pb
from taskerd import engine, procs
from taskerd.attempt import Attempt, Ending, Unhealthy, announce, conclude, decide, write
from taskerd.config import MAX_PARALLEL, DaemonConfig
from taskerd.errors import (
    DaskUnavailable,
    InvalidArgument,
    JournalFull,
    JournalUnavailable,
    NotFound,
    QueueFull,
    RequestError,
    ShuttingDown,
)
from taskerd.events import MANY_MAX, EventHub, Watcher
from taskerd.groups import DEFAULT_GROUP, Counters, Group
from taskerd.heap import Heap
from taskerd.hooks import Finished, HookRunner
from taskerd.live import (
    ACTIVE,
    CANCELLED,
    FAILED,
    HELD,
    LIVE,
    LOST,
    PAUSED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    STASHED,
    SUCCEEDED,
    TERMINAL,
    TIMED_OUT,
    WAITING,
    Live,
    State,
    backlog,
    event,
    held_reason,
    record,
    state_name,
)
from taskerd.runner import Exit, run_hook
from taskerd.store import JournalError, Rare, Store, UnfinishedRow
from taskerd.workflows import Holds

log = logging.getLogger("taskerd")

NORMAL = pb.PRIORITY_NORMAL
#: Up to this many live tasks, specs stay in memory from submission to start.
KEEP_SPECS = 10_000
RECOVERY_PAGE = 20_000  # tasks read from the journal per step of recovery
#: How long Cancel waits for the queued tasks' CANCELLED to be journaled before answering.
ENDED_WAIT = 5.0
#: Ended tasks per ``finished_many`` event (StreamResultsRequest.batch).
BATCH = MANY_MAX
#: How long a shutdown lets on-finish hooks that still run (or wait) go on.
HOOKS_GRACE = 5.0
DASK_CONNECT = 30.0  # seconds to reach the Dask scheduler at start
#: How often a read is tried again when a task changed under it (see ``Core.get``).
READ_TRIES = 5

ENGINE_PRIORITY = {
    pb.PRIORITY_UNSPECIFIED: engine.Priority.NORMAL,
    pb.PRIORITY_LOW: engine.Priority.LOW,
    pb.PRIORITY_NORMAL: engine.Priority.NORMAL,
    pb.PRIORITY_HIGH: engine.Priority.HIGH,
    pb.PRIORITY_CRITICAL: engine.Priority.CRITICAL,
}


def seconds(d: Duration) -> float:
    """A Duration as float seconds."""
    return d.seconds + d.nanos / 1e9


def journal_failure(exc: JournalError) -> RequestError:
    """The status a request gets when the journal refused it."""
    return JournalFull() if exc.full else JournalUnavailable(str(exc))


@dataclass(slots=True)
class Plan:
    """How the tasks of a request begin: each one's first state and dependencies (ids, or
    ``-(k + 1)`` for the k-th task of the request), and the states of those read from the
    journal."""

    states: list[State] = field(default_factory=list)
    deps: list[list[int]] = field(default_factory=list)
    known: dict[int, int] = field(default_factory=dict)


#: The rare fields of a task that has none (a held task of the default group, with no time).
_PLAIN = Rare(None, None, None, 0, 0, "")


def _holds_any(specs: Sequence[pb.TaskSpec]) -> bool:
    """Whether any spec has dependencies or a start time (the plain path has neither)."""
    return any(spec.after or spec.after_tasks or spec.HasField("start_at") for spec in specs)


def _all_succeeded(ids: Iterable[int], known: Mapping[int, int]) -> bool:
    return all(known.get(i) == SUCCEEDED for i in ids)


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancel did to one task."""

    id: int
    cancelled: bool
    state: State


class Core:
    """The daemon's verbs. Create with ``await Core.start(config, store)``."""

    def __init__(self, config: DaemonConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.hub = EventHub()
        self.heap = Heap()
        self.live: dict[int, Live] = {}
        self.counters = Counters()
        self.started = time.time()
        self.shutdown_mode: pb.ShutdownMode.ValueType | None = None
        self._admitting = 0  # requests between their admission check and their queueing
        self._admitted = asyncio.Event()
        self._admitted.set()
        self._finishing: set[asyncio.Future[Any]] = set()  # ends being journaled
        # Ends of tasks that never ran, gathered in this step: (state, error) -> the tasks.
        self._unrun: dict[tuple[State, str], list[tuple[Live, Ending]]] = {}
        # Dependencies of the waiting tasks; held tasks moving on in this step, by their target.
        self.holds = Holds(self.advance, self._dependency_failed)
        #: Called (and awaited) as a shutdown begins, before the engines stop: the scheduler.
        self.before_stop: list[Callable[[], Awaitable[None]]] = []
        self.hooks = HookRunner(
            config.on_finish, timeout=config.on_finish_timeout,
            concurrency=config.on_finish_concurrency,
        )  # fmt: skip
        self._advancing: dict[State, list[Live]] = {}
        self._closed = asyncio.Event()
        self._stopping_runs: asyncio.Task[None] | None = None
        self._attempt_fn = self._attempt  # one bound method, so the engine sees the same fn
        self.groups: dict[str, Group] = {}
        self.prom: Any = None  # a taskerd.prom.Metrics while /metrics is served
        self.dask: Any = None  # the taskerd.dask.executor.DaskExecutor of a group on Dask
        self.default = self.new_group(
            DEFAULT_GROUP, config.workers, config.burst_workers, config.max_queue, declared=True
        )

    def new_group(
        self, name: str, parallel: int, max_parallel: int, max_queue: int, *,
        paused: bool = False, declared: bool = False,
    ) -> Group:  # fmt: skip
        """A group with its own engine (started by the caller), known from now on."""
        manager: engine.TaskManager[str, Exit] = engine.TaskManager(
            engine.Config(
                on_create=self._create_resource,
                on_destroy=self._destroy_resource,
                worker_count=parallel,
                max_worker_count=max_parallel,
                burst_interval=self.config.burst_interval,
                max_queue_size=max_queue,
                max_retries=self.config.max_retries,
                check_health=lambda exc: not isinstance(exc, Unhealthy),
                logger=logging.getLogger("taskerd.engine"),
                on_finish=self._on_done,
                on_retry=self.on_retry,
            )
        )
        if paused:
            manager.pause()
        group = Group(name, manager, max_queue, paused=paused, declared=declared)
        self.groups[name] = group
        return group

    @classmethod
    async def start(cls, config: DaemonConfig, store: Store) -> Core:
        """End what a crashed daemon left running, then start the groups' engines and resume
        the journal's unfinished tasks."""
        core = cls(config, store)
        await core._end_previous_runs()
        await core._load_groups()
        await core._connect_dask()
        for group in core.groups.values():
            await group.engine.start()
        if core.dask is not None:
            core.dask.on_slots(core.dask.slots)
        await core._recover()
        return core

    async def _connect_dask(self) -> None:
        """Connect to the Dask cluster of the group whose executor is "dask", if any, and
        give that group the cluster's slots (kept current as workers come and go)."""
        names = self.config.on_dask()
        if not names:
            return
        from taskerd.dask.executor import DaskExecutor

        config = self.config
        executor = DaskExecutor.from_config(config)
        try:
            await asyncio.wait_for(executor.start(), DASK_CONNECT)
        except (OSError, TimeoutError, ValueError, RuntimeError) as exc:
            await executor.close()
            where = config.dask_scheduler or config.dask_scheduler_file
            raise DaskUnavailable(f"dask: cannot connect to {where}: {exc!r}") from None
        group = self.groups[names[0]]
        group.executor = executor

        def resize(slots: int) -> None:
            n = min(max(1, slots), MAX_PARALLEL)
            if (group.parallel, group.max_parallel) != (n, n):
                group.engine.set_workers(n, n)
                log.info("group %s: %d slots on the Dask cluster", group.name, slots)

        executor.on_slots = resize
        self.dask = executor

    async def _load_groups(self) -> None:
        """The journal's groups; those the configuration declares take its slots (each start)."""
        config = self.config
        for row in await self.store.groups():
            if row.name == DEFAULT_GROUP:
                if row.paused:
                    self.default.paused = True
                    self.default.engine.pause()
                continue
            declared = config.groups.get(row.name)
            if declared is not None:
                parallel, ceiling = declared.parallel, declared.ceiling
                max_queue = declared.max_queue or config.max_queue
            else:
                parallel, ceiling = row.parallel, row.max_parallel
                max_queue = row.max_queue or config.max_queue
            self.new_group(
                row.name, parallel, ceiling, max_queue, paused=bool(row.paused),
                declared=declared is not None,
            )  # fmt: skip
        for name, declared in config.groups.items():
            if name not in self.groups:
                self.new_group(
                    name, declared.parallel, declared.ceiling,
                    declared.max_queue or config.max_queue, declared=True,
                )  # fmt: skip
                await self.save_group(self.groups[name])

    async def save_group(self, group: Group) -> None:
        """Journal a group's slots and pause."""
        try:
            await self.store.save_group(
                group.name, parallel=group.parallel, max_parallel=group.max_parallel,
                paused=group.paused,
                max_queue=None if group.max_queue == self.config.max_queue else group.max_queue,
            )  # fmt: skip
        except JournalError as exc:
            raise journal_failure(exc) from None

    def group(self, name: str, where: str = "group") -> Group:
        """The group named ``name`` (empty: default); INVALID_ARGUMENT naming ``where`` if none."""
        group = self.groups.get(name or DEFAULT_GROUP)
        if group is None or group.removing:
            raise InvalidArgument(where, f"no group named {name!r}")
        return group

    # ----------------------------------------------------------------- worker resources

    async def _create_resource(self) -> str:
        if not self.config.on_create:
            return ""
        return await run_hook(self.config.on_create)

    async def _destroy_resource(self, resource: str) -> None:
        if self.config.on_destroy:
            await run_hook(self.config.on_destroy, env={**os.environ, "TASKER_RESOURCE": resource})

    # ----------------------------------------------------------------- recovery

    async def _end_previous_runs(self) -> None:
        """Before anything runs again: end every process an earlier daemon left running."""
        runs = await self.store.runs()
        identities = [
            procs.RunIdentity(pid=r.pid, pgid=r.pgid, start_time=r.start_time, token=r.token)
            for r in runs
            if r.pid > 0 and r.pgid > 0  # a Dask run's (pgid 0) are ended on its worker
        ]
        ended = await procs.end_previous_runs(identities, grace=self.config.kill_grace)
        if ended:
            log.warning("ended %d processes left running by an earlier taskerd", ended)

    async def _recover(self) -> None:
        # Every object made here lives on: the cycle collector would walk them all again and
        # again (a quarter of the time at a million).
        collecting = gc.isenabled()
        gc.disable()
        try:
            await self._recover_journal()
        finally:
            # Nor walk them all once it resumes (0.7 s at a million), nor at every full
            # collection later: what exists now is set aside for good. Finished tasks are still
            # freed (by reference counting: their cycles are broken as they end).
            gc.freeze()
            if collecting:
                gc.enable()

    async def _recover_journal(self) -> None:
        """Resume the journal: queued tasks in order, interrupted ones re-queued or LOST.

        The journal is read page by page, as plain rows; each spec is parsed only as its task
        is queued. Every task is queued in one step, so the engine starts none of them before
        it knows them all (their priorities decide).
        """
        t0 = time.perf_counter()
        rows: list[UnfinishedRow] = []
        rare: dict[int, Rare] = {}
        # Plain rows, page by page; the next page is read while this one is taken in.
        reading = asyncio.ensure_future(self.store.unfinished_page(limit=RECOVERY_PAGE))
        try:
            while (page := await reading).rows:
                reading = asyncio.ensure_future(
                    self.store.unfinished_page(after=page.rows[-1][0], limit=RECOVERY_PAGE)
                )
                rows += page.rows
                rare |= page.rare
        finally:
            reading.cancel()
        read = time.perf_counter() - t0
        groups, default = self.groups, self.default

        def group_of(task_id: int) -> Group:
            name = rare[task_id].group if task_id in rare else None
            if name is None:
                return default
            if name not in groups:  # cannot happen: a group with tasks is never removed
                log.error("task %d: no group named %r; it runs in default", task_id, name)
            return groups.get(name, default)

        parse = pb.TaskSpec.FromString
        lost: list[int] = []
        failed: list[int] = []
        requeue: list[int] = []
        for task_id, state, _, attempts, blob in rows:
            if state == RUNNING:
                spec = parse(blob)
                if spec.once:
                    lost.append(task_id)
                elif attempts > self._max_retries(spec):
                    failed.append(task_id)
                else:
                    requeue.append(task_id)
        now = time.time()
        if lost:
            await self.store.mark_finished_many(
                lost, state=LOST, ended_at=now,
                error="interrupted: the daemon stopped while it ran, and it was stopped; "
                "an at-most-once task is not run again",
            )  # fmt: skip
            self._count_ended(lost, LOST, group_of)
        if failed:
            await self.store.mark_finished_many(
                failed, state=FAILED, ended_at=now,
                error="interrupted during its last allowed attempt, and stopped",
            )  # fmt: skip
            self._count_ended(failed, FAILED, group_of)
        if requeue:
            await self.store.requeue(requeue)
        ended = {*lost, *failed}
        if ended:
            rows = [row for row in rows if row[0] not in ended]
        # Room for every resumed task, accepted before: over the bound too.
        others = Counter(group_of(i) for i in rare)
        others[default] += len(rows) - len(rare)
        for group, count in others.items():
            if count:
                group.engine.reserve(count, force=True)
        # What the held tasks wait for, read before any of them enters memory: their timers
        # and dependencies then start in one step.
        held_ids = [row[0] for row in rows if row[1] in HELD]
        deps = await self.store.deps_of(held_ids) if held_ids else {}
        known: dict[int, int] = {}
        if deps:  # the states of the dependencies that are not being resumed here
            resumed_ids = {row[0] for row in rows}
            outside = sorted({d for ds in deps.values() for d in ds} - resumed_ids)
            known = await self.store.states_of(outside) if outside else {}
        mono = time.monotonic()
        held: list[tuple[Live, list[int]]] = []
        queued: dict[Group, int] = dict.fromkeys(groups.values(), 0)
        enqueue = self._enqueue
        special = 0  # rows resumed by _resume_rare, which counts them
        for task_id, state, queued_at, attempts, blob in rows:
            if task_id in rare or state in HELD:  # (a held task of default, with no time)
                special += 1
                self._resume_rare(task_id, state, queued_at, attempts, parse(blob),
                                  group_of(task_id), rare.get(task_id, _PLAIN), deps, held,
                                  queued)  # fmt: skip
            else:
                enqueue(task_id, parse(blob), queued_at, attempts, default, submitted=mono)
        queued[default] += len(rows) - special
        self._count_queued(queued)
        for live, ids in held:
            pending = [d for d in ids if d in self.live]
            # A dependency gone from the journal had ended before it was removed: satisfied.
            gone = [(d, known.get(d, SUCCEEDED)) for d in ids if d not in self.live]
            if ids:
                self.holds.add(live, pending, gone)
            elif live.state == WAITING:  # nothing left to wait for
                self.advance(live)
        if rows or ended:
            log.info(
                "recovered journal: %d queued, %d re-queued, %d lost, %d failed, in %.2f s "
                "(%.2f s reading)", len(rows) - len(requeue), len(requeue), len(lost),
                len(failed), time.perf_counter() - t0, read,
            )  # fmt: skip

    def _resume_rare(
        self, task_id: int, state: int, queued_at: float, attempts: int, spec: pb.TaskSpec,
        group: Group, rare: Rare, deps: Mapping[int, list[int]],
        held: list[tuple[Live, list[int]]], queued: dict[Group, int],
    ) -> None:  # fmt: skip
        """Recovery of a task with more than a plain row: held, of another group, or linked."""
        if state in HELD:
            live = self._hold(task_id, spec, queued_at, group, state,  # type: ignore[arg-type]
                              enqueue_at=rare.enqueue_at)  # fmt: skip
            held.append((live, deps.get(task_id, [])))
        else:
            self._enqueue(task_id, spec, queued_at, attempts, group, submitted=time.monotonic())
            live = self.live[task_id]
            queued[group] += 1
        if rare.restarted_from or rare.schedule_id or rare.submitted_by:
            extra = live.more()
            extra.restarted_from, extra.schedule_id = rare.restarted_from, rare.schedule_id
            extra.submitted_by = rare.submitted_by

    def _count_ended(self, ids: list[int], state: State, group_of: Callable[[int], Group]) -> None:
        """Count tasks that recovery ended, in the daemon's and their groups' counts."""
        self.counters.by_state[state] += len(ids)
        for task_id in ids:
            group_of(task_id).counters.by_state[state] += 1

    def max_retries_left(self, live: Live) -> int:
        """How many more times the engine may re-queue the task (its spec is in memory)."""
        assert live.spec is not None
        return max(0, self._max_retries(live.spec) - live.attempts)

    def _max_retries(self, spec: pb.TaskSpec) -> int:
        return spec.max_retries if spec.HasField("max_retries") else self.config.max_retries

    # ----------------------------------------------------------------- admission

    def _admit(self, wanted: Mapping[Group, int]) -> None:
        """The one admission check: shutdown, then room in each group's queue (reserved for
        the counts ``wanted``; none for a Run, which bypasses the queue)."""
        if self.shutdown_mode is not None:
            if self.prom is not None:
                self.prom.rejected("shutting_down", sum(wanted.values()) or 1)  # 1: a Run
            raise ShuttingDown()
        reserved: list[tuple[Group, int]] = []
        try:
            for group, count in wanted.items():
                group.engine.reserve(count)
                reserved.append((group, count))
        except engine.QueueFull:
            for done, count in reserved:
                done.engine.release(count)
            total = sum(wanted.values())
            self.counters.rejected += total
            for g, count in wanted.items():
                g.counters.rejected += count
            c = group.counters
            where = "" if group is self.default else f" in group {group.name}"
            raise QueueFull(c.queued + c.stashed, group.max_queue, where) from None
        except engine.ShuttingDown:
            for done, count in reserved:
                done.engine.release(count)
            if self.prom is not None:
                self.prom.rejected("shutting_down", sum(wanted.values()))
            raise ShuttingDown() from None
        self._admitting += 1
        self._admitted.clear()

    def _admission_over(self) -> None:
        self._admitting -= 1
        if not self._admitting:
            self._admitted.set()

    async def _journal_new(
        self, specs: Sequence[pb.TaskSpec], now: float, env: Mapping[str, str] | None,
        *, plan: Plan | None = None, restarted_from: Sequence[int] | None = None,
        schedule_id: int = 0, by: str = "",
    ) -> list[int]:  # fmt: skip
        """Journal new tasks; if the caller gives up meanwhile, nothing of them is kept."""
        add = self.store.queue_add(
            specs, now=now, env=env,
            states=plan.states if plan is not None else None,
            deps=plan.deps if plan is not None and any(plan.deps) else None,
            restarted_from=restarted_from, schedule_id=schedule_id, submitted_by=by,
        )  # fmt: skip
        try:
            return await asyncio.shield(add)
        except asyncio.CancelledError:
            # Nobody will be told these ids: take back what was written.
            try:
                ids = await add
            except JournalError:
                raise asyncio.CancelledError() from None
            await asyncio.shield(self.store.discard(ids))
            raise
        except JournalError as exc:
            if self.prom is not None:
                self.prom.refused["journal"] += len(specs)
            raise journal_failure(exc) from None

    def _groups_of(self, specs: Sequence[pb.TaskSpec]) -> list[Group]:
        """Each spec's group; INVALID_ARGUMENT "tasks[i].group" for an unknown one."""
        groups, default = self.groups, self.default
        chosen = []
        for i, spec in enumerate(specs):
            name = spec.group
            group = groups.get(name) if name else default
            if group is None or group.removing:
                raise InvalidArgument(f"tasks[{i}].group", f"no group named {name!r}")
            chosen.append(group)
        return chosen

    async def submit(
        self,
        specs: Sequence[pb.TaskSpec],
        *,
        env: Mapping[str, str] | None = None,
        stashed: bool = False,
        restarted_from: Sequence[int] | None = None,
        schedule_id: int = 0,
        by: str = "",
    ) -> list[int]:
        """Admit, journal and queue (or hold) the (validated) specs; answers with their ids.

        ``env`` is the environment of the specs whose own env is empty. Any error means that
        none of them exists. ``restarted_from`` links each to the task it re-runs, and
        ``schedule_id`` to the schedule that submitted it; ``by`` names the token that
        submitted them ("": the Unix socket).
        """
        groups = self._groups_of(specs)
        plan = await self._plan(specs, stashed) if stashed or _holds_any(specs) else None
        wanted: dict[Group, int] = {}
        for group in groups:
            wanted[group] = wanted.get(group, 0) + 1
        self._admit(wanted)
        try:
            now = time.time()
            # A plain dict, copied once per request: each run copies it again, and a protobuf
            # map copies thirty times slower.
            env = dict(env) if env else None
            try:
                ids = await self._journal_new(
                    specs, now, env, plan=plan, restarted_from=restarted_from,
                    schedule_id=schedule_id, by=by,
                )  # fmt: skip
            except BaseException:
                for group, count in wanted.items():
                    group.engine.release(count)
                raise
            if plan is None:
                keep = len(self.live) < KEEP_SPECS
                mono = time.monotonic()
                for task_id, spec, group in zip(ids, specs, groups, strict=True):
                    self._enqueue(task_id, spec, now, 0, group, keep=keep, env=env,
                                  submitted=mono)  # fmt: skip
                self._count_queued(wanted)
            else:
                self._admit_planned(plan, ids, specs, groups, now, env)
            if restarted_from or schedule_id or by:
                for i, task_id in enumerate(ids):
                    extra = self.live[task_id].more()
                    extra.restarted_from = restarted_from[i] if restarted_from else 0
                    extra.schedule_id, extra.submitted_by = schedule_id, by
        finally:
            self._admission_over()
        if len(ids) == 1:
            log.info("task %d accepted: %s", ids[0], _describe(specs[0]))
        else:
            log.info("tasks %d..%d accepted (%d)", ids[0], ids[-1], len(ids))
        return ids

    async def _plan(self, specs: Sequence[pb.TaskSpec], stashed: bool) -> Plan:
        """Each task's first state and dependencies; INVALID_ARGUMENT "tasks[i].after" for a
        dependency on no task. Dependencies that ended count as they ended."""
        known: dict[int, int] = {}
        named = {d for spec in specs for d in spec.after}
        was_live = {d for d in named if d in self.live}  # may end during the read below
        wanted = named - was_live
        if wanted:
            try:
                known = await self.store.states_of(sorted(wanted))
            except JournalError as exc:
                raise journal_failure(exc) from None
        plan = Plan()
        now = time.time()
        for i, spec in enumerate(specs):
            for dep in spec.after:
                if dep not in was_live and dep not in known:
                    raise InvalidArgument(f"tasks[{i}].after", f"no task {dep}")
            deps = [*spec.after, *(-(k + 1) for k in spec.after_tasks)]
            if stashed:
                state = STASHED
            elif spec.HasField("start_at") and spec.start_at.ToNanoseconds() / 1e9 > now:
                state = SCHEDULED
            elif deps and not (not spec.after_tasks and _all_succeeded(spec.after, known)):
                state = WAITING
            else:
                state = QUEUED
            plan.states.append(state)
            plan.deps.append(deps)
        plan.known = known
        return plan

    def _admit_planned(
        self, plan: Plan, ids: Sequence[int], specs: Sequence[pb.TaskSpec],
        groups: Sequence[Group], now: float, env: Mapping[str, str] | None,
    ) -> None:  # fmt: skip
        """Journaled tasks of a planned request enter memory: queued, or held (their
        dependencies registered once all of the request are in memory)."""
        mono = time.monotonic()
        held: list[tuple[Live, list[int]]] = []
        queued: dict[Group, int] = {}
        for task_id, spec, group, state, deps in zip(
            ids, specs, groups, plan.states, plan.deps, strict=True
        ):
            if state == QUEUED:
                self._enqueue(task_id, spec, now, 0, group, keep=True, env=env, submitted=mono)
                queued[group] = queued.get(group, 0) + 1
            else:
                live = self._hold(task_id, spec, now, group, state, env=env)
                if deps:
                    held.append((live, [d if d > 0 else ids[-d - 1] for d in deps]))
        self._count_queued(queued)
        late: list[tuple[Live, list[int]]] = []
        for live, deps in held:
            pending = [d for d in deps if d in self.live]
            ended = [(d, plan.known[d]) for d in deps if d not in self.live and d in plan.known
                     and plan.known[d] in TERMINAL]  # fmt: skip
            gone = [d for d in deps if d not in self.live and plan.known.get(d) not in TERMINAL]
            self.holds.add(live, pending, ended)
            if gone:  # live when read, ended since: their ends are in the journal now
                late.append((live, gone))
        if late:
            self._background(self._resolve_late(late))

    async def _resolve_late(self, late: list[tuple[Live, list[int]]]) -> None:
        states = await self.store.states_of(sorted({d for _, deps in late for d in deps}))
        for live, deps in late:
            self.holds.resolve(live, [(d, states[d]) for d in deps if d in states])

    def _enqueue(
        self,
        task_id: int,
        spec: pb.TaskSpec,
        queued_at: float,
        attempts: int,
        group: Group,
        *,
        keep: bool = False,
        env: Mapping[str, str] | None = None,
        submitted: float | None = None,
    ) -> None:
        """Queue a journaled task in room reserved for it; ``keep`` holds its full spec (and
        shared ``env``) in memory; ``submitted`` as for the engine (one per request). The
        caller counts it (:meth:`_count_queued`): thousands at a time."""
        has = spec.HasField
        live = Live(
            task_id, group, spec.priority or NORMAL, queued_at,
            seconds(spec.timeout) if has("timeout") else None, attempts, once=spec.once, seq=1,
        )  # fmt: skip
        if has("queue_timeout"):
            live.queue_timeout = seconds(spec.queue_timeout)
        if spec.on_finish:
            live.more().on_finish = spec.on_finish
        if spec.labels:
            live.labels = dict(spec.labels)
        if keep:
            live.spec, live.env = spec, env
        self._queue(live, spec, submitted)
        self.live[task_id] = live
        if self.hub.watched(task_id):
            self.publish_queued(live)

    def _count_queued(self, counts: Mapping[Group, int]) -> None:
        """Count tasks that ``_enqueue`` queued, by group."""
        for group, count in counts.items():
            self.counters.queued += count
            group.counters.queued += count

    def _hold(
        self, task_id: int, spec: pb.TaskSpec, queued_at: float, group: Group, state: State,
        *, env: Mapping[str, str] | None = None, enqueue_at: float | None = None,
    ) -> Live:  # fmt: skip
        """A journaled task enters memory held out of the queue (STASHED, WAITING or
        SCHEDULED), its spec kept: it is queued from memory."""
        has = spec.HasField
        live = Live(
            task_id, group, spec.priority or NORMAL, queued_at,
            seconds(spec.timeout) if has("timeout") else None, 0,
            once=spec.once, labels=dict(spec.labels) if spec.labels else None,
            state=state, spec=spec, env=env,
        )  # fmt: skip
        if has("queue_timeout"):
            live.queue_timeout = seconds(spec.queue_timeout)
        extra = live.more()
        extra.after_any, extra.on_finish = spec.after_any, spec.on_finish
        if has("start_at"):
            extra.start_at = spec.start_at.ToNanoseconds() / 1e9
        self.live[task_id] = live
        self.counters.add(state, 1)
        group.counters.add(state, 1)
        self.state_changed(live, state, held_reason(state))
        if enqueue_at is not None:
            self.plan_enqueue(live, enqueue_at)
        elif state == SCHEDULED:
            assert extra.start_at is not None
            self._timer(live, extra.start_at)
        return live

    def _timer(self, live: Live, at: float) -> None:
        extra = live.more()
        if extra.timer is not None:
            extra.timer.cancel()
        delay = max(0.0, at - time.time())
        extra.timer = asyncio.get_running_loop().call_later(delay, self._due, live)

    def plan_enqueue(self, live: Live, at: float) -> None:
        """Enqueue a stashed task at ``at`` (epoch seconds; the journal holds the time)."""
        live.more().enqueue_at = at
        self._timer(live, at)

    def _due(self, live: Live) -> None:
        """A held task's timer: a stashed task's planned Enqueue, or a scheduled one's start."""
        live.more().timer = None
        if self.live.get(live.id) is not live:
            return
        if live.state == STASHED:
            self._background(self.enqueue_stashed([live]))
        else:
            self.advance(live)

    async def enqueue_stashed(self, lives: Sequence[Live]) -> None:
        """Stashed tasks move on (queued, or SCHEDULED/WAITING for what they still wait for),
        journaled before the answer."""
        moves = [(v, self._target(v)) for v in lives if self.live.get(v.id) is v
                 and v.state == STASHED and v.outcome is None]  # fmt: skip
        for live, _ in moves:
            extra = live.more()
            if extra.timer is not None:
                extra.timer.cancel()
                extra.timer = None
            extra.enqueue_at = None
        by_state: dict[State, list[Live]] = {}
        for live, target in moves:
            by_state.setdefault(target, []).append(live)
        for target, chosen in by_state.items():
            try:
                await self.store.set_state([v.id for v in chosen], target)
            except JournalError as exc:
                raise journal_failure(exc) from None
            self._moved(chosen, target)

    def _target(self, live: Live) -> State:
        """Where a held task goes next: SCHEDULED before its start, WAITING while any of its
        dependencies has not ended, else QUEUED."""
        start = live.extra.start_at if live.extra is not None else None
        if start is not None and start > time.time():
            return SCHEDULED
        if live.id in self.holds:
            return WAITING
        return QUEUED

    def advance(self, live: Live) -> None:
        """A held task's time came, or its dependencies were satisfied: journal its next state
        (several tasks of one step in one write), then move it."""
        if self.live.get(live.id) is not live or live.state not in (WAITING, SCHEDULED):
            return
        if live.outcome is not None or self.shutdown_mode is not None:
            return  # a stopping daemon starts nothing more: the next start decides again
        target = self._target(live)
        if target == live.state:
            return
        if target == SCHEDULED:
            assert live.extra is not None and live.extra.start_at is not None
            self._timer(live, live.extra.start_at)
            return
        if not self._advancing:
            asyncio.get_running_loop().call_soon(self._write_advances)
        self._advancing.setdefault(target, []).append(live)

    def _write_advances(self) -> None:
        moves, self._advancing = self._advancing, {}
        for target, lives in moves.items():
            try:
                written = self.store.set_state([v.id for v in lives], target)
            except Exception:  # the journal is closed: the next start decides again
                log.exception("%d held tasks could not move on", len(lives))
                continue
            self._finishing.add(written)
            written.add_done_callback(partial(self._advanced, lives, target))

    def _advanced(self, lives: list[Live], target: State, written: asyncio.Future[Any]) -> None:
        self._finishing.discard(written)
        if written.cancelled() or written.exception() is not None:
            if not written.cancelled():
                log.error("held tasks could not move on: %s", written.exception())
            return  # still held in the journal: the next start decides again
        self._moved(lives, target)

    def _moved(self, lives: Sequence[Live], target: State) -> None:
        """Held tasks whose next state is journaled take it (unless they ended meanwhile)."""
        mono = time.monotonic()
        for live in lives:
            if self.live.get(live.id) is not live or live.outcome is not None:
                continue
            if self.shutdown_mode is not None and target == QUEUED:
                continue  # journaled queued: the next start queues it
            if live.state not in HELD or live.state == target:
                continue
            self.move(live, target)
            if target == QUEUED:
                assert live.spec is not None
                self._queue(live, live.spec, mono)
                live.seq += 1
                self.publish_queued(live)
            else:
                self.state_changed(live, target, held_reason(target))
            again = self._target(live)  # a dependency ended, or time passed, meanwhile
            if again != target and target != QUEUED:
                self.advance(live)

    def _dependency_failed(self, live: Live, reason: str) -> None:
        """A dependency of a held task ended otherwise than it needed: the task ends."""
        if self.live.get(live.id) is live and live.outcome is None and live.state in HELD:
            live.cancel_reason = reason
            self.unstash(live, engine.TaskCancelled(reason))

    def _queue(self, live: Live, spec: pb.TaskSpec, submitted: float | None) -> None:
        """Hand a task to its group's engine, in room reserved for it."""
        remaining = None
        if live.queue_timeout is not None:
            remaining = max(1e-3, live.queue_timeout - (time.time() - live.queued_at))
        retries = self._max_retries(spec)
        handle = live.group.engine.queue_task_async(
            self._attempt_fn,
            priority=ENGINE_PRIORITY[spec.priority],
            timeout=live.timeout,
            queue_timeout=remaining,
            once=live.once,
            max_retries=max(0, retries - live.attempts),
            reserved=True,
            task_id=live.id,
            submitted=submitted,
        )
        live.handle = handle

    def _adopt(self, live: Live) -> None:
        """A journaled task enters memory, QUEUED."""
        self.live[live.id] = live
        self.counters.queued += 1
        live.group.counters.queued += 1
        live.seq += 1
        self.publish_queued(live)

    def publish_queued(self, live: Live) -> None:
        """Tell the task's watchers it is queued (at its priority), as ``live.seq``."""
        if self.hub.watched(live.id):
            queued = pb.TaskEvent.Queued(priority=live.priority)  # type: ignore[arg-type]
            seq = live.seq
            self.hub.publish(live.id, lambda _: event(live.id, seq, queued=queued))

    # ----------------------------------------------------------------- run now

    async def run(self, spec: pb.TaskSpec, *, by: str = "") -> tuple[int, Watcher]:
        """Journal the task and start it at once, bypassing the queue; returns its id and a
        watcher of it. Whoever called it must cancel it (``abandon``) if it stops watching.
        ``by``: as for :meth:`submit`."""
        [group] = self._groups_of([spec])
        self._admit({})
        try:
            now = time.time()
            [task_id] = await self._journal_new([spec], now, None, by=by)
            live = Live(
                task_id,
                group,
                spec.priority or NORMAL,
                now,
                seconds(spec.timeout) if spec.HasField("timeout") else None,
                0,
                once=spec.once,
                labels=dict(spec.labels) if spec.labels else None,
                spec=spec,
            )
            if spec.on_finish:
                live.more().on_finish = spec.on_finish
            if by:
                live.more().submitted_by = by
            watcher = self.hub.subscribe([task_id], output=True)
            self._adopt(live)
            live.run_task = asyncio.get_running_loop().create_task(self._run_now(live))
        finally:
            self._admission_over()
        log.info("task %d accepted to run now: %s", task_id, _describe(spec))
        return task_id, watcher

    async def _run_now(self, live: Live) -> None:
        result: Exit | None = None
        error: BaseException | None = None
        try:
            result = await live.group.engine.run_task(
                Attempt(self, live), timeout=live.timeout, task_id=live.id
            )
        except asyncio.CancelledError:
            error = engine.TaskCancelled("cancelled")
        except BaseException as exc:
            error = exc
        live.outcome = (result, error)
        self.settle(live)

    # ----------------------------------------------------------------- the end of a task

    def move(self, live: Live, state: State) -> None:
        """Change a live task's state, keeping the counts right; a terminal state takes it out
        of memory, counted."""
        if state in TERMINAL:
            self._leave(live)
            self.counters.by_state[state] += 1
            live.group.counters.by_state[state] += 1
            live.state = state
            return
        self._uncount(live)
        live.state = state
        self.counters.add(state, 1)
        live.group.counters.add(state, 1)

    def _uncount(self, live: Live) -> None:
        self.counters.add(live.state, -1)
        live.group.counters.add(live.state, -1)

    def _leave(self, live: Live) -> None:
        """Take a task out of memory (and its count), and tell whoever waits for that."""
        self._uncount(live)
        self.live.pop(live.id, None)
        if live.ended is not None and not live.ended.done():
            live.ended.set_result(None)

    async def _attempt(self, ctx: engine.TaskContext, resource: str) -> Exit:
        """The engine's function for every queued task: one attempt of the task ``ctx`` names
        (one function for all, rather than an object per queued task)."""
        return await Attempt(self, self.live[ctx.task_id])(ctx, resource)

    def _on_done(self, handle: engine.TaskHandle[Exit], _fn: object) -> None:
        """The engine's hook for every task that ended."""
        live = self.live.get(handle.id)
        if live is None or live.run_task is not None:  # a Run: its coroutine takes the outcome
            return
        error = handle.exception()
        live.outcome = (None if error is not None else handle.result(), error)
        self.settle(live)

    def settle(self, live: Live) -> None:
        """End the task once its outcome is known and no attempt of it runs (at most once)."""
        if live.outcome is None or live.in_attempt or live.finishing:
            return
        live.finishing = True
        mode = self.shutdown_mode
        stopping = mode == pb.SHUTDOWN_MODE_STOP or (
            mode == pb.SHUTDOWN_MODE_DRAIN and live.group.paused
        )
        try:
            ending = decide(live, live.outcome, stopping=stopping)
            if ending is None:  # left in the journal for the next start (a STOP shutdown)
                self._let_go(live, ended=False)
            elif ending.spec is None and self.hub.watched(live.id):
                self._background(self._conclude(live, ending, None))
            elif (live.state == QUEUED or live.state in HELD) and live.capture is None:
                # It never ran (a cancel, a kill, a queue timeout): such ends of this step go
                # to the journal together, one statement for thousands.
                self._never_ran(live, ending)
            else:
                # Most ends: the write is queued now and the end announced in the step that
                # takes in its commit, with no task of its own.
                written = write(self, live, ending)
                self._finishing.add(written)
                written.add_done_callback(partial(self._written, live, ending))
        except Exception:  # a bug: the task stays unfinished in the journal, for the next start
            log.exception("task %d: its end could not be recorded", live.id)
            self._let_go(live, ended=False)

    def _never_ran(self, live: Live, ending: Ending) -> None:
        if not self._unrun:
            loop = asyncio.get_running_loop()
            gathering = loop.create_future()  # a stop waits for these ends too
            self._finishing.add(gathering)
            loop.call_soon(self._write_unrun, gathering)
        self._unrun.setdefault((ending.state, ending.message), []).append((live, ending))

    def _write_unrun(self, gathering: asyncio.Future[None]) -> None:
        groups, self._unrun = self._unrun, {}
        try:
            for (state, message), ends in groups.items():
                now = ends[0][1].now
                for _, ending in ends:
                    ending.now = now  # one end time for the group, as journaled
                ids = [live.id for live, _ in ends]
                try:
                    written = self.store.mark_finished_many(
                        ids, state=state, ended_at=now, error=message
                    )
                except Exception:  # the journal is closed: unfinished, for the next start
                    log.exception("%d task ends could not be recorded", len(ends))
                    for live, _ in ends:
                        self._let_go(live, ended=False)
                    continue
                self._finishing.add(written)
                written.add_done_callback(partial(self._unrun_written, ends))
        finally:
            self._finishing.discard(gathering)
            if not gathering.done():
                gathering.set_result(None)

    def _unrun_written(
        self, ends: list[tuple[Live, Ending]], written: asyncio.Future[None]
    ) -> None:
        for live, ending in ends:
            self._written(live, ending, written)

    def _written(self, live: Live, ending: Ending, written: asyncio.Future[None]) -> None:
        self._finishing.discard(written)
        if written.cancelled():  # a stop gave up on it: unfinished in the journal
            return
        error = written.exception()
        if isinstance(error, JournalError):
            self._background(self._conclude(live, ending, error))  # retried with backoff
            return
        if error is not None:
            log.error("task %d: its end could not be recorded: %r", live.id, error)
            self._let_go(live, ended=False)
            return
        announce(self, live, ending)
        self._let_go(live, ended=True)

    async def _conclude(self, live: Live, ending: Ending, failed: JournalError | None) -> None:
        try:
            await conclude(self, live, ending, failed)
        except Exception:  # a bug: the task stays unfinished in the journal, for the next start
            log.exception("task %d: its end could not be recorded", live.id)
            self._let_go(live, ended=False)
            return
        self._let_go(live, ended=True)

    def _let_go(self, live: Live, *, ended: bool) -> None:
        """After the end (or a stop that leaves the task to the next start, uncounted)."""
        # Let go of the output now: the handle and its callbacks make a cycle with ``live``,
        # which only a full garbage collection would break.
        if live.capture is not None:
            self.heap.note(len(live.capture.stdout) + len(live.capture.stderr))
        live.capture = None
        live.handle = None
        if not ended:
            self._leave(live)

    def ended(self, live: Live, ending: Ending) -> None:
        """A task's end was announced: its waiting dependants go on (or end), hooks run."""
        if self.prom is not None:  # its wait and run times, for /metrics
            self.prom.ended(live, ending)
        self.holds.ended(live.id, ending.state)
        if self.hooks.command or (live.extra is not None and live.extra.on_finish):
            result = ending.result
            self.hooks.finished(Finished(
                live.id, ending.state,
                result.exit_code if result else None, result.signal if result else None,
                live.group.name,
                ending.now - live.started_at if live.started_at is not None else None,
                live.labels or {}, live.on_finish,
            ))  # fmt: skip

    def failed_attempt(self, live: Live, reason: str) -> None:
        """An attempt failed and runs again at once (``TaskSpec.retries``): count, announce."""
        self.counters.retried += 1
        live.group.counters.retried += 1
        live.seq += 1
        seq = live.seq
        retrying = pb.TaskEvent.Retrying(attempt=live.attempts, reason=reason)
        self.hub.publish(live.id, lambda _: event(live.id, seq, retrying=retrying))
        log.warning("task %d failed attempt %d (%s); running it again", live.id, live.attempts,
                    reason)  # fmt: skip

    def on_retry(self, task_id: int, error: BaseException) -> None:
        """The engine re-queued a task after an unhealthy worker."""
        live = self.live.get(task_id)
        if live is None:
            return
        if live.handle is None or not live.handle.held:
            self.move(live, QUEUED)
            self._background(self._journal_retry(live))
        # else its worker keeps it (the queue is full) and runs it again once replaced: it stays
        # RUNNING, and the queue bound holds.
        live.seq += 1
        seq = live.seq
        retrying = pb.TaskEvent.Retrying(attempt=live.attempts, reason=str(error))
        self.hub.publish(live.id, lambda _: event(live.id, seq, retrying=retrying))
        log.warning("task %d retrying after attempt %d: %s", live.id, live.attempts, error)

    async def _journal_retry(self, live: Live) -> None:
        try:
            await self.store.requeue([live.id], attempts=[live.attempts])
        except JournalError as exc:  # the next RUNNING or terminal write corrects the row
            log.error("task %d: cannot journal its retry: %s", live.id, exc)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that shutdown waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    # ----------------------------------------------------------------- queries

    async def get(self, task_id: int, *, output: bool = False) -> pb.Task:
        """The task as it is now: from memory while it is live, else from the journal."""
        for tries_left in range(READ_TRIES - 1, -1, -1):
            row = await self.store.get(task_id, output=output)
            live = self.live.get(task_id)
            if row is None:
                raise NotFound(task_id)
            if live is not None:
                return self.record(live, row, output=output)
            if row.state in TERMINAL or not tries_left:
                return row
            # Neither in memory nor ended: it is being admitted, or it went live and ended
            # after this read. Read again.
            await asyncio.sleep(0)
        raise AssertionError("unreachable")

    def record(self, live: Live, row: pb.Task, *, output: bool = False) -> pb.Task:
        """A live task's record (see :func:`taskerd.live.record`), with what it waits on."""
        task = record(live, row, output=output)
        if live.state in HELD and live.id in self.holds:
            task.waiting_on.extend(self.holds.waiting_on(live.id))
        return task

    async def list(
        self, *, states: Collection[int], labels: Mapping[str, str], limit: int,
        before_id: int | None, group: str = "",
    ) -> builtins.list[pb.Task]:  # fmt: skip
        """A page of tasks, newest first, as they are now (see ``get``).

        Live tasks come from memory, ended ones from the journal, in one consistent instant:
        the read resumes once memory has taken in every commit it saw.
        """
        wanted = frozenset(states)
        live_wanted = wanted & LIVE if wanted else LIVE
        ended_wanted = wanted & TERMINAL if wanted else TERMINAL
        chosen_group = self.group(group) if group else None
        rows: dict[int, pb.Task] = {}
        for tries_left in range(READ_TRIES - 1, -1, -1):
            chosen = self._live_page(live_wanted, labels, limit, before_id, chosen_group)
            need = [i for i in chosen if i not in rows]
            read = await self.store.list_page(
                states=ended_wanted, labels=labels, limit=limit, before_id=before_id, ids=need,
                group=group or None,
            )  # fmt: skip
            rows.update(read.by_id)
            # Memory now matches what the journal read saw: choose again, from both.
            chosen = self._live_page(live_wanted, labels, limit, before_id, chosen_group)
            if tries_left and any(i not in rows for i in chosen):
                continue  # a task went live meanwhile: fetch its row too
            page = [self.record(self.live[i], rows[i]) for i in chosen if i in rows]
            page += (t for t in read.terminal if t.id not in self.live)
            page.sort(key=lambda t: t.id, reverse=True)
            return page[:limit]
        raise AssertionError("unreachable")

    def _live_page(
        self, states: frozenset[int], labels: Mapping[str, str], limit: int, before: int | None,
        group: Group | None,
    ) -> builtins.list[int]:  # fmt: skip
        """Ids of up to ``limit`` live tasks in ``states`` with ``labels``, below ``before``,
        newest first (memory holds them in id order)."""
        if not states or limit <= 0:
            return []
        chosen: builtins.list[int] = []
        for task_id in reversed(self.live):
            if before is not None and task_id >= before:
                continue
            if self.live[task_id].matches(states, labels, group):
                chosen.append(task_id)
                if len(chosen) >= limit:
                    break
        return chosen

    async def watch(
        self,
        ids: Sequence[int],
        *,
        output: bool,
        finished_only: bool = False,
        batch: bool = False,
    ) -> tuple[Watcher, builtins.list[pb.TaskEvent]]:
        """Subscribe to tasks and get their past events; NotFound for an unknown id.

        The watcher subscribes first, and the live tasks' past is taken from memory in the same
        loop step: from then on their events reach the watcher. Then the other tasks are read
        from the journal: those that had ended give their ``finished`` event. No event is
        missed or seen twice. An ended task's past ``finished`` event comes without its
        output: the caller fetches that with :meth:`with_output` as it sends the event, one
        task at a time. With ``batch`` (``finished_only`` without output), the ended tasks
        come ``BATCH`` to a ``finished_many`` event.
        """
        if not ids:
            every = self.hub.subscribe(
                None, output=output, finished_only=finished_only, batch=batch
            )
            return every, []
        unique = list(dict.fromkeys(ids))
        watcher = self.hub.subscribe(
            unique, output=output, finished_only=finished_only, batch=batch
        )
        past: builtins.list[pb.TaskEvent] = []
        others: builtins.list[int] = []
        for task_id in unique:
            live = self.live.get(task_id)
            if live is None:
                others.append(task_id)
            elif not finished_only:
                past.extend(backlog(live, output=output))
        try:
            light = batch and finished_only and not output  # ``finished_many``: light records
            ended = await self.store.get_many(others, light=light) if others else {}
        except BaseException:
            watcher.close()
            raise
        done: builtins.list[pb.Task] = []
        for task_id in others:
            task = ended.get(task_id)
            if task is None:
                watcher.close()
                raise NotFound(task_id)
            if task.state in TERMINAL:  # else it went live after subscribing: events follow
                done.append(task)
        if batch and finished_only and not output:
            for at in range(0, len(done), BATCH):
                many = pb.TaskEvent.FinishedMany(tasks=done[at : at + BATCH])
                past.append(event(done[at].id, 0, finished_many=many))
        else:
            past += (event(t.id, 0, finished=pb.TaskEvent.Finished(task=t)) for t in done)
        return watcher, past

    async def with_output(self, past: pb.TaskEvent) -> pb.TaskEvent:
        """A past ``finished`` event from :meth:`watch`, with the task's output."""
        task = await self.store.get(past.task_id, output=True)
        if task is None:  # cleaned meanwhile: what was read is all there is
            return past
        done = event(past.task_id, past.seq, finished=pb.TaskEvent.Finished(task=task))
        done.time.CopyFrom(past.time)
        return done

    def select(
        self, states: Collection[int], labels: Mapping[str, str], group: str = ""
    ) -> builtins.list[int]:
        """Ids of the live tasks in ``states`` (empty: any live state) with ``labels``, of
        ``group`` (empty: any)."""
        wanted = frozenset(states) & LIVE if states else LIVE
        chosen = self.group(group) if group else None
        return [i for i, live in self.live.items() if live.matches(wanted, labels, chosen)]

    def submitter(self, task_id: int) -> str | None:
        """Who submitted a live task (a token's name; "": the Unix socket), None if not live."""
        live = self.live.get(task_id)
        if live is None:
            return None
        return live.extra.submitted_by if live.extra is not None else ""

    async def cancel(
        self, ids: Sequence[int], *, reason: str = "cancelled"
    ) -> builtins.list[CancelResult]:
        """Cancel tasks, all at once: the queued ones leave the queue first, then the running
        ones are stopped. NotFound (and nothing cancelled) if any id is unknown. Answers once
        the queued ones' CANCELLED is journaled."""
        unique = list(dict.fromkeys(ids))
        known = await self.store.get_many([i for i in unique if i not in self.live])
        for task_id in unique:
            if task_id not in self.live and task_id not in known:
                raise NotFound(task_id)
        lives = [self.live[i] for i in unique if i in self.live]
        queued = [live for live in lives if live.state == QUEUED or live.state in HELD]
        running = [live for live in lives if live.state in ACTIVE]
        results: dict[int, CancelResult] = {}
        for live in (*queued, *running):
            if live.outcome is not None:  # ending already
                results[live.id] = CancelResult(live.id, False, live.state)
                continue
            live.cancel_reason = live.cancel_reason or reason
            was = live.state
            if was == PAUSED:  # its processes must run to take the SIGTERM
                self.wake(live, "resumed to be cancelled")
            if was in HELD:
                self.unstash(live, engine.TaskCancelled(live.cancel_reason))
            elif live.handle is not None:
                live.handle.cancel()
            elif live.run_task is not None:
                live.run_task.cancel()
            never_ran = was == QUEUED or was in HELD
            results[live.id] = CancelResult(live.id, True, CANCELLED if never_ran else RUNNING)
            log.info("task %d cancel requested (%s)", live.id, state_name(was))
        await self._ended([live for live in queued if results[live.id].cancelled])
        answer: builtins.list[CancelResult] = []
        for task_id in unique:
            if task_id in results:
                answer.append(results[task_id])
            else:
                answer.append(CancelResult(task_id, False, known[task_id].state))
        return answer

    def unstash(self, live: Live, error: BaseException) -> None:
        """End a held task that never ran, giving back the room reserved for it."""
        self.holds.forget(live)
        if live.extra is not None and live.extra.timer is not None:
            live.extra.timer.cancel()
            live.extra.timer = None
        live.group.engine.release(1)
        live.outcome = (None, error)
        self.settle(live)

    def wake(self, live: Live, reason: str) -> None:
        """A paused task runs again: SIGCONT to its processes, its timeout clock goes on."""
        if live.run is not None:
            procs.signal_run(live.run.pgid, live.run.token, signal.SIGCONT, live.run.cgroup)
        if live.handle is not None:
            live.group.engine.unsuspend(live.handle)
        self.move(live, RUNNING)
        self.state_changed(live, RUNNING, reason)

    def state_changed(self, live: Live, state: State, reason: str) -> None:
        """Tell the task's watchers of a state change (pause, resume)."""
        live.seq += 1
        if self.hub.watched(live.id):
            seq = live.seq
            changed = pb.TaskEvent.StateChanged(state=state, reason=reason)
            self.hub.publish(live.id, lambda _: event(live.id, seq, state_changed=changed))

    async def _ended(self, lives: Iterable[Live]) -> None:
        """Wait until these tasks are out of memory (their end is journaled and announced)."""
        loop = asyncio.get_running_loop()
        waits = []
        for live in lives:
            if self.live.get(live.id) is live:
                if live.ended is None:
                    live.ended = loop.create_future()
                waits.append(live.ended)
        if waits:  # bounded: a journal that keeps failing delays the end, not the answer
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*waits)), ENDED_WAIT)

    async def abandon(self, task_id: int) -> None:
        """The client of a Run went away: its task is cancelled, unless already ending."""
        live = self.live.get(task_id)
        if live is not None and live.outcome is None:
            log.info("task %d: its Run call was abandoned; cancelling it", task_id)
            await self.cancel([task_id], reason="cancelled: its Run call was abandoned")

    def stats(self, group: str = "") -> pb.StatsResponse:
        """Workers, queue and counts now, of the daemon or of one group; O(groups)."""
        groups = [self.group(group)] if group else list(self.groups.values())
        c = groups[0].counters if group else self.counters
        engines = [g.engine.stats() for g in groups]
        by = {p: sum(s.queued_by_priority.get(p, 0) for s in engines) for p in engine.Priority}
        capacity = sum(g.max_queue for g in groups)
        return pb.StatsResponse(
            base_workers=sum(s.base_workers for s in engines),
            max_workers=sum(s.max_workers for s in engines),
            active_workers=sum(s.active_workers for s in engines),
            burst_workers=sum(s.burst_workers for s in engines),
            running=c.running + c.paused,
            available_resources=sum(s.available_resources for s in engines),
            queued_low=by[engine.Priority.LOW],
            queued_normal=by[engine.Priority.NORMAL],
            queued_high=by[engine.Priority.HIGH],
            queued_critical=by[engine.Priority.CRITICAL],
            queued=c.queued,
            queue_capacity=capacity,
            queue_usage=(c.queued + c.stashed) / capacity,
            paused=c.paused,
            stashed=c.stashed,
            waiting=c.waiting,
            scheduled=c.scheduled,
            groups=[g.record() for g in groups],
            nodes=self.dask.nodes if self.dask is not None else (),
            succeeded=c.by_state[SUCCEEDED],
            failed=c.by_state[FAILED],
            timed_out=c.by_state[TIMED_OUT],
            cancelled=c.by_state[CANCELLED],
            lost=c.by_state[LOST],
            rejected=c.rejected,
            uptime=_duration(time.time() - self.started),
            version=_version(),
            shutting_down=self.shutdown_mode is not None,
        )

    def metrics(self, group: str = "") -> pb.MetricsResponse:
        """Rates and timings from the engines (of every group, or of one); totals from the
        tasks' terminal states."""
        if group:
            chosen = self.group(group)
            m = chosen.engine.metrics()
            c = chosen.counters
            arrival, completion = m.arrival_rate, m.completion_rate
        else:
            c = self.counters
            m = self.default.engine.metrics()
            each = [g.engine.metrics() for g in self.groups.values()]
            arrival = sum(x.arrival_rate for x in each)
            completion = sum(x.completion_rate for x in each)
            if len(each) > 1:  # timings over all groups: the group that ran the most
                m = max(each, key=lambda x: x.completed + x.failed)
        by = c.by_state
        ended = sum(by.values())
        return pb.MetricsResponse(
            arrival_rate=arrival,
            completion_rate=completion,
            exec_avg=_duration(m.exec_avg),
            exec_min=_duration(m.exec_min),
            exec_max=_duration(m.exec_max),
            exec_p50=_duration(m.exec_p50),
            exec_p95=_duration(m.exec_p95),
            exec_p99=_duration(m.exec_p99),
            wait_avg=_duration(m.wait_avg),
            completed=ended,
            failed=by[FAILED],
            retried=m.retried + c.retried,
            timed_out=by[TIMED_OUT],
            cancelled=by[CANCELLED],
            rejected=c.rejected,
            success_rate=by[SUCCEEDED] / ended if ended else 0.0,
            failure_rate=(ended - by[SUCCEEDED]) / ended if ended else 0.0,
        )

    async def clean(self, older_than: float | None) -> int:
        """Remove finished tasks from the journal."""
        try:
            removed = await self.store.clean(older_than=older_than, now=time.time())
        except JournalError as exc:
            raise journal_failure(exc) from None
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
        """Stop in ``mode`` (STOP, DRAIN or KILL). A later call may escalate: DRAIN to STOP,
        and anything to KILL."""
        current = self.shutdown_mode
        if current is not None:
            if _RANK[mode] > _RANK[current]:
                self.shutdown_mode = mode
                log.warning("shutdown escalated to %s", pb.ShutdownMode.Name(mode)[14:])
                await self._stop_engine(mode)
            await self._closed.wait()
            return
        self.shutdown_mode = mode
        log.info("shutting down (%s)", pb.ShutdownMode.Name(mode)[14:])
        for stop in self.before_stop:
            await stop()
        log.debug("shutdown: waiting for %d admissions", self._admitting)
        await self._admitted.wait()  # requests already admitted are queued (and answered OK)
        log.debug("shutdown: stopping the engines")
        await self._stop_engine(mode)
        # Run tasks bypass the queue: they get the same treatment as running ones.
        runs = {live.run_task for live in self.live.values() if live.run_task is not None}
        if runs:
            log.debug("shutdown: stopping %d Run tasks", len(runs))
            await self._stop_runs(runs)
        log.debug("shutdown: waiting for %d ends to be journaled", len(self._finishing))
        # Ends still being journaled: a journal that keeps failing cannot hold the stop forever;
        # what is not written stays unfinished in the journal, for the next start.
        grace = self.config.stop_timeout
        while self._finishing:
            _, late = await asyncio.wait(list(self._finishing), timeout=grace)
            if late:
                log.error("%d task ends could not be journaled; left for the next start", len(late))
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            grace = 1.0
        if self.dask is not None:
            await self.dask.close()
        self.hub.close()
        await self.hooks.close(HOOKS_GRACE)
        self._closed.set()

    async def _stop_engine(self, mode: pb.ShutdownMode.ValueType) -> None:
        # Paused tasks run again, to finish (DRAIN) or to take their SIGTERM; stashed ones
        # stay in the journal for the next start.
        for live in list(self.live.values()):
            if live.state == PAUSED:
                self.wake(live, "resumed: the daemon is stopping")
        groups = list(self.groups.values())
        if mode == pb.SHUTDOWN_MODE_KILL:
            for live in list(self.live.values()):
                if live.run_task is not None:
                    live.run_task.cancel()
            await asyncio.gather(*(g.engine.kill() for g in groups))
            return
        # A DRAIN finishes the queues of running groups; a paused group's queue stays in the
        # journal, as a STOP leaves it.
        await asyncio.gather(*(
            g.engine.stop(drain=True)
            if mode == pb.SHUTDOWN_MODE_DRAIN and not g.paused
            else g.engine.stop(drain=False, timeout=self.config.stop_timeout)
            for g in groups
        ))  # fmt: skip

    async def _stop_runs(self, runs: set[asyncio.Task[None]]) -> None:
        """Run tasks end as running tasks do in the current mode (which may escalate)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.stop_timeout
        pending = runs
        while pending:
            mode = self.shutdown_mode
            if mode == pb.SHUTDOWN_MODE_KILL or (
                mode != pb.SHUTDOWN_MODE_DRAIN and loop.time() >= deadline
            ):
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return
            _, pending = await asyncio.wait(pending, timeout=0.2)


_RANK = {
    pb.SHUTDOWN_MODE_DRAIN: 0,
    pb.SHUTDOWN_MODE_STOP: 1,
    pb.SHUTDOWN_MODE_KILL: 2,
}


def _duration(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def _describe(spec: pb.TaskSpec) -> str:
    text = " ".join(spec.argv)
    return text if len(text) <= 80 else text[:77] + "..."


@cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tasker")
    except PackageNotFoundError:
        return "unknown"
