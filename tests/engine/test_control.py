"""Runtime controls: set_workers, pause/resume, suspend/unsuspend and set_priority."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from taskerd.engine import Priority, TaskContext, TaskHandle, TaskState, TaskTimeout
from taskerd.engine.queue import JobQueue

from .conftest import Resources, assert_nothing_left, make, until

pytestmark = pytest.mark.timeout(10)


def gated(gate: asyncio.Event, started: list[int] | None = None) -> Any:
    async def hold(ctx: TaskContext, r: str) -> int:
        if started is not None:
            started.append(ctx.task_id)
        await gate.wait()
        return ctx.worker_id

    return hold


# ----------------------------------------------------------------- set_workers


async def test_set_workers_raise_spawns_at_once_and_lower_retires() -> None:
    res = Resources()
    m = make(res, worker_count=1, max_worker_count=2)
    async with m:
        m.set_workers(3, 4)
        stats = m.stats()
        assert (stats.base_workers, stats.max_workers, stats.active_workers) == (3, 4, 3)
        gate = asyncio.Event()
        started: list[int] = []
        busy = [m.queue_task_async(gated(gate, started)) for _ in range(2)]
        await until(lambda: len(started) == 2 and m.stats().idle_workers == 1)

        m.set_workers(1, 1)  # the idle one goes now, one busy one after its task
        assert m.stats().base_workers == 1 and m.stats().max_workers == 1
        await until(lambda: m.stats().active_workers == 2)
        assert all(h.state is TaskState.RUNNING for h in busy)
        gate.set()
        assert len({await h for h in busy}) == 2  # both ran to the end on their workers
        await until(lambda: m.stats().active_workers == 1)
        assert m.stats().burst_workers == 0
        assert await m.queue_task(gated(gate)) is not None
    assert res.live() == set()
    assert_nothing_left()


async def test_set_workers_before_start_and_validation() -> None:
    res = Resources()
    m = make(res, worker_count=1, max_worker_count=1)
    m.set_workers(3, 3)
    for base, top in ((0, 1), (3, 2), (True, 3), (2, 2.5)):
        with pytest.raises(ValueError):
            m.set_workers(base, top)  # type: ignore[arg-type]
    async with m:
        assert m.stats().active_workers == 3 and m.stats().base_workers == 3
    assert_nothing_left()


async def test_set_workers_reuses_burst_workers() -> None:
    res = Resources()
    m = make(res, worker_count=1, max_worker_count=4, burst_interval=0.01)
    async with m:
        gate = asyncio.Event()
        handles = [m.queue_task_async(gated(gate)) for _ in range(8)]
        try:
            await until(lambda: m.stats().burst_workers == 3 and m.stats().running == 4)
        except AssertionError:
            gate.set()
            raise AssertionError(m.stats()) from None
        assert len(res.created) == 4

        m.set_workers(3, 4)  # two burst workers become base ones: nothing new is made
        stats = m.stats()
        assert (stats.base_workers, stats.burst_workers, stats.active_workers) == (3, 1, 4)
        assert len(res.created) == 4

        m.set_workers(3, 3)  # no room for burst: the busy burst worker ends after its task
        assert m.stats().active_workers == 4
        gate.set()
        await asyncio.gather(*handles)
        await until(lambda: m.stats().active_workers == 3 and m.stats().burst_workers == 0)
    assert res.live() == set()
    assert_nothing_left()


# ----------------------------------------------------------------- pause / resume


async def test_pause_holds_queued_work_and_resume_starts_it() -> None:
    res = Resources()
    m = make(res, worker_count=2, max_worker_count=6, burst_interval=0.01)
    async with m:
        gate = asyncio.Event()
        running = m.queue_task_async(gated(gate))
        await until(lambda: running.state is TaskState.RUNNING)
        m.pause()
        assert m.paused
        started: list[int] = []
        queued = [m.queue_task_async(gated(gate, started)) for _ in range(10)]
        expiring = m.queue_task_async(gated(gate), queue_timeout=0.03)
        await asyncio.sleep(0.08)
        stats = m.stats()
        assert started == [] and stats.queued == 10 and stats.burst_workers == 0
        assert expiring.state is TaskState.TIMED_OUT  # queue timeouts still fire
        with pytest.raises(TaskTimeout):
            await expiring
        gate.set()
        await running  # running work is not affected
        await asyncio.sleep(0.03)
        assert started == []

        m.resume()
        assert not m.paused
        await asyncio.sleep(0.01)
        assert len(started) == 10  # at once
        await asyncio.gather(*queued)
    assert_nothing_left()


async def test_pause_stops_thread_lanes() -> None:
    m = make(Resources(), worker_count=1, max_worker_count=1)
    async with m:
        release = threading.Event()
        ran: list[int] = []

        def first(ctx: TaskContext, r: str) -> None:
            release.wait(5)
            ran.append(ctx.task_id)

        def later(ctx: TaskContext, r: str) -> None:
            ran.append(ctx.task_id)

        a = m.queue_task_async(first)
        await until(lambda: a.state is TaskState.RUNNING)
        b = m.queue_task_async(later)
        m.pause()
        release.set()
        await a
        await asyncio.sleep(0.05)
        assert ran == [a.id] and b.state is TaskState.QUEUED
        m.resume()
        await b
        assert ran == [a.id, b.id]
    assert_nothing_left()


async def test_stop_drains_a_paused_manager() -> None:
    m = make(Resources(), worker_count=1)
    async with m:
        m.pause()
        handles = [m.queue_task_async(_quick) for _ in range(3)]
    assert [h.state for h in handles] == [TaskState.SUCCEEDED] * 3
    assert_nothing_left()


async def _quick(ctx: TaskContext, r: str) -> int:
    return ctx.task_id


# ----------------------------------------------------------------- suspend / unsuspend


async def test_suspend_stops_the_timeout_clock() -> None:
    async with make(Resources(), worker_count=1) as m:
        contexts: list[TaskContext] = []

        async def slow(ctx: TaskContext, r: str) -> None:
            contexts.append(ctx)
            await asyncio.sleep(10)

        handle = m.queue_task_async(slow, timeout=0.15)
        await until(lambda: bool(contexts))
        await asyncio.sleep(0.05)
        assert m.suspend(handle) and m.suspend(handle)  # idempotent
        assert handle.suspended and contexts[0].deadline is None
        await asyncio.sleep(0.25)  # well past the original deadline
        assert handle.state is TaskState.RUNNING

        before = time.monotonic()
        assert m.unsuspend(handle) and m.unsuspend(handle)
        assert not handle.suspended
        left = contexts[0].remaining()
        assert left is not None and 0.05 < left <= 0.11
        with pytest.raises(TaskTimeout):
            await handle
        took = time.monotonic() - before
        assert 0.05 < took < 0.2, took
        assert not m.suspend(handle) and not m.unsuspend(handle)  # ended: no-op


async def test_suspend_is_a_noop_for_tasks_not_running() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1) as m:
        gate = asyncio.Event()
        running = m.queue_task_async(gated(gate))
        queued = m.queue_task_async(_quick, timeout=0.05)
        await until(lambda: running.state is TaskState.RUNNING)
        assert not m.suspend(queued) and not m.unsuspend(queued)
        assert not queued.suspended
        assert m.suspend(running) and m.unsuspend(running)  # no timeout: nothing to arm
        gate.set()
        await running
        assert await queued == queued.id  # its own timeout starts when it runs


async def test_suspend_a_thread_task() -> None:
    async with make(Resources(), worker_count=1) as m:
        release = threading.Event()

        def blocking(ctx: TaskContext, r: str) -> str:
            release.wait(5)
            return "done"

        handle = m.queue_task_async(blocking, timeout=0.1)
        await until(lambda: handle.state is TaskState.RUNNING)
        assert m.suspend(handle)
        await asyncio.sleep(0.2)
        release.set()
        assert await handle == "done"


# ----------------------------------------------------------------- set_priority


async def test_set_priority_places_tasks_by_id_in_the_new_level() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1) as m:
        gate = asyncio.Event()
        hold = m.queue_task_async(gated(gate))
        await until(lambda: hold.state is TaskState.RUNNING)
        order: list[int] = []

        async def record(ctx: TaskContext, r: str) -> None:
            order.append(ctx.task_id)

        plan = [Priority.NORMAL, Priority.LOW, Priority.NORMAL, Priority.LOW, Priority.NORMAL]
        a, b, c, d, e = (m.queue_task_async(record, priority=p) for p in plan)
        low = m.queue_task_async(record, priority=Priority.LOW)
        assert m.set_priority([c], Priority.LOW) == [c]  # and back: no duplicate entry
        assert m.set_priority([c], Priority.NORMAL) == [c]
        e.cancel()  # a dead entry in the target level
        moved = m.set_priority([d, b, hold, e, d], Priority.NORMAL)
        assert moved == [d, b]  # running, ended and repeated handles are ignored
        assert b.priority is Priority.NORMAL
        by = m.stats().queued_by_priority
        assert by[Priority.NORMAL] == 4 and by[Priority.LOW] == 1 and m.stats().queued == 5
        assert m.set_priority([low], Priority.CRITICAL) == [low]
        gate.set()
        await asyncio.gather(a, b, c, d, low)
        assert order == [low.id, a.id, b.id, c.id, d.id]
        assert m.stats().queued == 0


async def test_set_priority_ignores_foreign_handles_and_moves_waitlisted() -> None:
    res = Resources()
    async with make(res, worker_count=1, max_worker_count=1, max_queue_size=1) as m:
        async with make(res, worker_count=1) as other:
            foreign: TaskHandle[Any] = other.queue_task_async(_quick)
            assert m.set_priority([foreign], Priority.HIGH) == []
            await foreign
        gate = asyncio.Event()
        hold = m.queue_task_async(gated(gate))
        await until(lambda: hold.state is TaskState.RUNNING)
        queued = m.queue_task_async(_quick, priority=Priority.LOW)
        waiting = m.queue_task_async(_quick, priority=Priority.LOW, block=True)
        assert m.set_priority([waiting, queued], Priority.HIGH) == [waiting, queued]
        assert m.stats().queued_by_priority[Priority.HIGH] == 1
        gate.set()
        await asyncio.gather(queued, waiting)
        assert waiting.priority is Priority.HIGH


async def test_set_priority_many() -> None:
    """A big batch keeps the counts and order right (and runs every task once)."""
    async with make(Resources(), worker_count=1, max_worker_count=1) as m:
        m.pause()
        order: list[int] = []

        async def record(ctx: TaskContext, r: str) -> None:
            order.append(ctx.task_id)

        handles = [m.queue_task_async(record, priority=i % 4) for i in range(2000)]
        moved = m.set_priority(handles[::3], Priority.HIGH)
        assert len(moved) == len(handles[::3])
        highs = sorted({h.id for h in handles if h.priority is Priority.HIGH})
        assert m.stats().queued_by_priority[Priority.HIGH] == len(highs)
        m.resume()
        await asyncio.gather(*handles)
        assert len(order) == 2000
        crit = [h.id for h in handles if h.priority is Priority.CRITICAL]
        assert order[: len(crit)] == crit
        assert order[len(crit) : len(crit) + len(highs)] == highs


def test_queue_move_keeps_retries_first_and_drops_dead_entries() -> None:
    queue = JobQueue(None)

    def job(task_id: int, priority: Priority, attempt: int = 0) -> TaskHandle[Any]:
        handle: TaskHandle[Any] = TaskHandle(
            None,  # type: ignore[arg-type]  # the queue never touches the manager
            task_id,
            _quick,
            True,
            priority,
            None,
            False,
            0,
            0.0,
        )
        handle._attempt = attempt
        return handle

    retry = job(9, Priority.NORMAL, attempt=1)
    normal = [job(i, Priority.NORMAL) for i in (2, 5, 8)]
    low = [job(i, Priority.LOW) for i in (1, 3, 6, 7)]
    for handle in normal + low:
        queue.push(handle)
    queue.push(retry, front=True)
    low[2]._state = TaskState.CANCELLED  # dead: forgotten, entry left behind
    queue.forget(low[2])
    queue.move([low[3], low[0], low[1]], Priority.NORMAL)
    assert queue.counts[Priority.LOW] == 0 and queue.counts[Priority.NORMAL] == 7
    assert queue.size == 7
    popped = [queue.pop() for _ in range(8)]
    assert [h.id for h in popped if h is not None] == [9, 1, 2, 3, 5, 7, 8]
    assert popped[-1] is None
