"""Priority order, FIFO, aging, backpressure and queue timeouts."""

from __future__ import annotations

import asyncio
import time

import pytest

from taskerd.engine import Priority, QueueFull, TaskContext, TaskState, TaskTimeout

from .conftest import Resources, make, until


def recorder(order: list[str], name: str):  # type: ignore[no-untyped-def]
    async def run(ctx: TaskContext, r: str) -> str:
        order.append(name)
        return name

    return run


async def blocker(m, gate: asyncio.Event):  # type: ignore[no-untyped-def]
    async def hold(ctx: TaskContext, r: str) -> None:
        await gate.wait()

    handle = m.queue_task_async(hold, priority=Priority.CRITICAL)
    await until(lambda: handle.state is TaskState.RUNNING)
    return handle


async def test_priority_order_and_fifo_within_level() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1) as m:
        gate = asyncio.Event()
        hold = await blocker(m, gate)
        order: list[str] = []
        plan = [
            ("low1", Priority.LOW),
            ("norm1", Priority.NORMAL),
            ("crit1", Priority.CRITICAL),
            ("high1", Priority.HIGH),
            ("low2", Priority.LOW),
            ("norm2", Priority.NORMAL),
            ("high2", Priority.HIGH),
            ("crit2", Priority.CRITICAL),
        ]
        handles = [m.queue_task_async(recorder(order, n), priority=p) for n, p in plan]
        stats = m.stats()
        assert stats.queued == 8 and stats.queued_by_priority[Priority.LOW] == 2
        gate.set()
        await hold
        for h in handles:
            await h
        assert order == ["crit1", "crit2", "high1", "high2", "norm1", "norm2", "low1", "low2"]


async def test_aging_lets_low_run() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1, aging=0.05) as m:
        gate = asyncio.Event()
        hold = await blocker(m, gate)
        order: list[str] = []
        low = m.queue_task_async(recorder(order, "low"), priority=Priority.LOW)
        await asyncio.sleep(0.2)  # LOW has aged past CRITICAL's level
        highs = [
            m.queue_task_async(recorder(order, f"crit{i}"), priority=Priority.CRITICAL)
            for i in range(3)
        ]
        gate.set()
        await hold
        await low
        for h in highs:
            await h
        assert order[0] == "low"


async def test_without_aging_low_waits_behind_high() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1) as m:
        gate = asyncio.Event()
        hold = await blocker(m, gate)
        order: list[str] = []
        low = m.queue_task_async(recorder(order, "low"), priority=Priority.LOW)
        await asyncio.sleep(0.2)
        high = m.queue_task_async(recorder(order, "high"), priority=Priority.HIGH)
        gate.set()
        await hold, await low, await high
        assert order == ["high", "low"]


async def test_backpressure_bound_never_exceeded() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1, max_queue_size=3) as m:
        gate = asyncio.Event()
        hold = await blocker(m, gate)
        order: list[str] = []
        handles = [m.queue_task_async(recorder(order, str(i))) for i in range(3)]
        assert m.stats().queue_usage == 1.0 and m.stats().queue_capacity == 3
        with pytest.raises(QueueFull, match=r"queue full \(3/3\)"):
            m.queue_task_async(recorder(order, "x"))
        assert m.metrics().rejected == 1
        # block=True: waits for room, then succeeds; the bound holds throughout.
        blocked = asyncio.ensure_future(
            m.submit(recorder(order, "blocked"), block=True, block_timeout=5)
        )
        await asyncio.sleep(0)
        async_blocked = m.queue_task_async(recorder(order, "handle-blocked"), block=True)
        with pytest.raises(QueueFull):
            await m.submit(recorder(order, "gives-up"), block=True, block_timeout=0.05)
        assert not blocked.done() and m.stats().queued == 3
        max_seen = 0

        def watch(_: object) -> None:
            nonlocal max_seen
            max_seen = max(max_seen, m.stats().queued)

        for h in handles:
            h.add_done_callback(watch)
        gate.set()
        await hold
        handle = await blocked
        assert await handle == "blocked"
        assert await async_blocked == "handle-blocked"
        assert max_seen <= 3
        assert order == ["0", "1", "2", "blocked", "handle-blocked"]


async def test_queue_timeout_fails_tasks_that_never_started() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1) as m:
        gate = asyncio.Event()
        hold = await blocker(m, gate)
        order: list[str] = []
        start = time.monotonic()
        late = m.queue_task_async(recorder(order, "late"), queue_timeout=0.1)
        fine = m.queue_task_async(recorder(order, "fine"), queue_timeout=5)
        with pytest.raises(TaskTimeout, match="never started"):
            await late
        assert 0.09 <= time.monotonic() - start < 1.0
        assert late.state is TaskState.TIMED_OUT and m.stats().queued == 1
        gate.set()
        await hold
        assert await fine == "fine"
        assert order == ["fine"]


async def test_queue_timeout_does_not_fire_once_started() -> None:
    async with make(Resources(), worker_count=1) as m:

        async def slowish(ctx: TaskContext, r: str) -> str:
            await asyncio.sleep(0.15)
            return "done"

        assert await m.queue_task(slowish, queue_timeout=0.05) == "done"
