"""Control of a running queue: groups and their slots, pause and resume, priorities, the stash,
removal of finished tasks, and signals.

Each verb checks the whole request first (an unknown task is NOT_FOUND, a task in the wrong
state FAILED_PRECONDITION, and then nothing changed), journals what must survive a restart, and
only then changes memory and tells the watchers, in one loop step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Collection, Sequence

from tasker.v1 import tasker_pb2 as pb
from taskerd import procs
from taskerd.core import ENGINE_PRIORITY, Core, journal_failure
from taskerd.errors import InvalidArgument, NotFound, NotNow, ShuttingDown
from taskerd.groups import Group, check_name, check_slots
from taskerd.live import (
    ACTIVE,
    HELD,
    LIVE,
    PAUSED,
    QUEUED,
    RUNNING,
    STASHED,
    Live,
    State,
    state_name,
)
from taskerd.store import JournalError

log = logging.getLogger("taskerd")

#: Signals Signal refuses: stopping and continuing a task is Pause and Resume.
_JOB_CONTROL = frozenset(
    (signal.SIGSTOP, signal.SIGCONT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
)
#: How long RemoveGroup(force) waits for the group's cancelled tasks to end, past kill_grace.
REMOVE_WAIT = 5.0


async def lives(core: Core, ids: Sequence[int], states: Collection[State], verb: str) -> list[Live]:
    """The live tasks ``ids``, each in one of ``states``: NOT_FOUND for an unknown id,
    FAILED_PRECONDITION naming the first task in another state."""
    unique = list(dict.fromkeys(ids))
    gone = [i for i in unique if i not in core.live]
    if gone:
        try:
            known = await core.store.get_many(gone, light=True)
        except JournalError as exc:
            raise journal_failure(exc) from None
        for task_id in gone:
            if task_id not in core.live:
                if task_id not in known:
                    raise NotFound(task_id)
                state = known[task_id].state
                if state not in LIVE:
                    raise NotNow(f"task {task_id} is {state_name(state)}: {verb}")
    chosen = [core.live[i] for i in unique if i in core.live]
    for live in chosen:
        if live.state not in states or live.outcome is not None:
            raise NotNow(f"task {live.id} is {state_name(live.state)}: {verb}")
    return chosen


# ----------------------------------------------------------------- groups


async def add_group(core: Core, name: str, parallel: int, max_parallel: int) -> pb.Group:
    """Create a group (durable) and start its engine."""
    name = check_name("name", name)
    if core.shutdown_mode is not None:
        raise ShuttingDown()
    if name in core.groups:
        raise NotNow(f"group {name} exists")
    parallel = parallel or 1
    max_parallel = max_parallel or parallel
    check_slots(parallel, max_parallel)
    group = core.new_group(name, parallel, max_parallel, core.config.max_queue)
    try:
        await core.save_group(group)
    except BaseException:
        del core.groups[name]
        raise
    await group.engine.start()
    log.info("group %s added: %d slots, up to %d", name, parallel, max_parallel)
    return group.record()


async def remove_group(core: Core, name: str, force: bool) -> int:
    """Remove a group; with ``force``, cancel its unfinished tasks first. Returns how many
    were cancelled."""
    group = core.group(check_name("name", name), "name")
    if group is core.default:
        raise NotNow("the group default cannot be removed")
    ids = [i for i, live in core.live.items() if live.group is group]
    if ids and not force:
        raise NotNow(
            f"group {group.name} has {len(ids)} unfinished tasks: cancel them, or remove it "
            "with force"
        )
    group.removing = True  # no new task joins it from here on
    try:
        if ids:
            await core.cancel(ids, reason=f"cancelled: its group {group.name} was removed")
            deadline = time.monotonic() + core.config.kill_grace + REMOVE_WAIT
            while group.unfinished() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if group.unfinished():
                raise NotNow(f"group {group.name}: {group.unfinished()} tasks still ending")
        try:
            await core.store.delete_group(group.name)
        except JournalError as exc:
            raise journal_failure(exc) from None
    except BaseException:
        group.removing = False
        raise
    del core.groups[group.name]
    await group.engine.stop(drain=False)
    log.info("group %s removed (%d tasks cancelled)", group.name, len(ids))
    return len(ids)


def list_groups(core: Core) -> list[pb.Group]:
    """Every group, by name."""
    return [core.groups[name].record() for name in sorted(core.groups)]


async def set_parallel(core: Core, name: str, parallel: int, max_parallel: int | None) -> pb.Group:
    """Change a group's slots now (durably); running tasks are never stopped."""
    group = core.group(check_name("group", name))
    if max_parallel is None:
        max_parallel = max(group.max_parallel, parallel)
    check_slots(parallel, max_parallel)
    before = (group.parallel, group.max_parallel)
    group.engine.set_workers(parallel, max_parallel)
    try:
        await core.save_group(group)
    except BaseException:
        group.engine.set_workers(*before)
        raise
    log.info("group %s: %d slots, up to %d", group.name, parallel, max_parallel)
    return group.record()


# ----------------------------------------------------------------- pause and resume


def _groups(core: Core, names: Sequence[str], every: bool) -> list[Group]:
    if every:
        return list(core.groups.values())
    chosen = [core.group(check_name(f"groups[{i}]", n), f"groups[{i}]") for i, n in
              enumerate(names)]  # fmt: skip
    return list(dict.fromkeys(chosen))


async def _journal_paused(core: Core, groups: Sequence[Group], paused: bool) -> None:
    """Journal the groups whose pause this changes; on failure, memory stays as it was."""
    changed = [g for g in groups if g.paused != paused]
    for group in changed:
        group.paused = paused
    try:
        for group in changed:
            await core.save_group(group)
    except BaseException:
        for group in changed:
            group.paused = not paused
        raise


def _local(live: Live, verb: str) -> None:
    """FAILED_PRECONDITION for a task whose group runs it on Dask: no signal reaches it."""
    if live.group.executor is not None:
        raise NotNow(
            f"task {live.id} runs on the Dask cluster (group {live.group.name}): it cannot be "
            f"{verb}; cancel it, or pause its group (which then starts no task)"
        )


def _stop(core: Core, live: Live, reason: str) -> None:
    """SIGSTOP a running task's processes and stop its timeout clock."""
    run = live.run
    if run is not None:  # else it is being spawned: stopped as it starts (see Attempt)
        procs.signal_run(run.pgid, run.token, signal.SIGSTOP, run.cgroup)
    if live.handle is not None:
        live.group.engine.suspend(live.handle)
    core.move(live, PAUSED)
    core.state_changed(live, PAUSED, reason)
    log.info("task %d paused (%s)", live.id, reason)


async def pause(
    core: Core, ids: Sequence[int], names: Sequence[str], every: bool, wait: bool
) -> list[int]:
    """Pause groups (and, unless ``wait``, their running tasks) and running tasks."""
    if not ids and not names and not every:
        raise InvalidArgument("ids", "name tasks or groups to pause, or set all")
    groups = _groups(core, names, every)
    tasks = await lives(core, ids, (RUNNING,), "only a running task can be paused (stash a "
                        "queued one)")  # fmt: skip
    for live in tasks:
        if live.run_task is not None:
            raise NotNow(f"task {live.id} runs bound to its Run call: it cannot be paused")
        _local(live, "paused")
    await _journal_paused(core, groups, True)
    paused: list[int] = []
    for group in groups:
        group.engine.pause()
        if not wait and group.executor is None:  # a group on Dask: its running tasks finish
            for live in list(core.live.values()):
                if (live.group is group and live.state == RUNNING and live.run_task is None
                        and live.outcome is None):  # fmt: skip
                    _stop(core, live, f"paused with its group {group.name}")
                    paused.append(live.id)
        log.info("group %s paused%s", group.name, " (its running tasks finish)" if wait else "")
    for live in tasks:
        if live.state == RUNNING:
            _stop(core, live, "paused")
            paused.append(live.id)
    return paused


async def resume(core: Core, ids: Sequence[int], names: Sequence[str], every: bool) -> list[int]:
    """Resume groups (with their paused tasks) and paused tasks."""
    if not ids and not names and not every:
        raise InvalidArgument("ids", "name tasks or groups to resume, or set all")
    groups = _groups(core, names, every)
    tasks = await lives(core, ids, (PAUSED,), "only a paused task can be resumed")
    await _journal_paused(core, groups, False)
    chosen = set(groups)
    resumed: list[int] = []
    for group in groups:
        group.engine.resume()
        log.info("group %s resumed", group.name)
    for live in list(core.live.values()):
        if live.state == PAUSED and (live.group in chosen or live in tasks):
            core.wake(live, "resumed")
            resumed.append(live.id)
    return resumed


# ----------------------------------------------------------------- priority and the stash


async def set_priority(core: Core, ids: Sequence[int], priority: pb.Priority.ValueType) -> None:
    """Move queued or stashed tasks to ``priority``, each keeping its submission order."""
    chosen = await lives(core, ids, (QUEUED, *HELD), "only a task that has not started can "
                         "change priority")  # fmt: skip
    level = priority or pb.PRIORITY_NORMAL
    try:
        await core.store.set_priority([v.id for v in chosen], level)
    except JournalError as exc:
        raise journal_failure(exc) from None
    by_group: dict[Group, list[Live]] = {}
    for live in chosen:
        if core.live.get(live.id) is not live or not (live.state == QUEUED or live.state in HELD):
            continue  # it started or ended meanwhile: the journal's end or start corrects it
        live.priority = level
        if live.spec is not None:
            live.spec.priority = level
        if live.state == QUEUED and live.handle is not None:
            by_group.setdefault(live.group, []).append(live)
    for group, queued in by_group.items():
        group.engine.set_priority([v.handle for v in queued if v.handle], ENGINE_PRIORITY[level])
        for live in queued:
            live.seq += 1
            core.publish_queued(live)
    log.info("%d tasks moved to priority %s", len(chosen), pb.Priority.Name(level)[9:])


async def enqueue(core: Core, ids: Sequence[int], delay: float | None) -> None:
    """Queue stashed tasks now, or plan it ``delay`` seconds from now (durably)."""
    chosen = await lives(core, ids, (STASHED,), "only a stashed task can be enqueued")
    if delay is None:
        await core.enqueue_stashed(chosen)
        return
    at = time.time() + delay
    try:
        await core.store.enqueue([v.id for v in chosen], enqueue_at=at)
    except JournalError as exc:
        raise journal_failure(exc) from None
    for live in chosen:
        if core.live.get(live.id) is live and live.state == STASHED:
            core.plan_enqueue(live, at)


# ----------------------------------------------------------------- remove and signal


async def remove(core: Core, ids: Sequence[int]) -> int:
    """Delete finished tasks from the journal; any unfinished one refuses the whole request."""
    unique = list(dict.fromkeys(ids))
    for task_id in unique:
        live = core.live.get(task_id)
        if live is not None:
            raise NotNow(f"task {task_id} is {state_name(live.state)}: only a finished task can be "
                         "removed (cancel it first)")  # fmt: skip
    try:
        known = await core.store.get_many(unique, light=True)
        for task_id in unique:
            if task_id not in known:
                raise NotFound(task_id)
        needed = await core.store.dependents_waiting(unique)
        if needed:
            raise NotNow(f"task {min(needed)} is a dependency of a waiting task: remove it once "
                         "that one has ended")  # fmt: skip
        removed = await core.store.remove(unique)
    except JournalError as exc:
        raise journal_failure(exc) from None
    log.info("removed %d finished tasks", removed)
    return removed


def parse_signal(text: str) -> int:
    """A signal number from a name ("TERM", "SIGUSR1", "hup") or a number ("9")."""
    word = text.strip().upper()
    if word.isdigit():
        number = int(word)
        if number not in {int(s) for s in signal.valid_signals()} or number == 0:
            raise InvalidArgument("signal", f"no signal numbered {text!r}")
    else:
        try:
            number = int(signal.Signals[word if word.startswith("SIG") else "SIG" + word])
        except KeyError:
            raise InvalidArgument("signal", f"no signal named {text!r}") from None
    if number in _JOB_CONTROL:
        raise InvalidArgument("signal", "stop and continue a task with Pause and Resume")
    return number


async def send_signal(core: Core, task_id: int, text: str) -> None:
    """Send a signal to every process of a running or paused task."""
    number = parse_signal(text)
    [live] = await lives(core, [task_id], ACTIVE, "only a running task can be signalled")
    _local(live, "signalled")
    run = live.run
    if run is None:
        raise NotNow(f"task {task_id} is starting: signal it once it runs")
    with contextlib.suppress(ProcessLookupError):
        procs.signal_run(run.pgid, run.token, number, run.cgroup)
    log.info("task %d sent %s", task_id, signal.Signals(number).name)
