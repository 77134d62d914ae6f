"""stop() and kill(): every waiter answered, nothing left behind."""

from __future__ import annotations

import asyncio
import time

import pytest

from taskerd.engine import (
    CancelReason,
    Killed,
    Priority,
    ShuttingDown,
    TaskContext,
    TaskState,
)

from .conftest import Resources, assert_nothing_left, make, until


async def test_stop_drains_queued_and_running() -> None:
    res = Resources()
    m = make(res, worker_count=1, max_worker_count=1)
    await m.start()

    async def work(ctx: TaskContext, r: str) -> int:
        await asyncio.sleep(0.01)
        return ctx.task_id

    def thread_work(ctx: TaskContext, r: str) -> int:
        time.sleep(0.01)
        return ctx.task_id

    handles = [m.queue_task_async(work if i % 2 else thread_work) for i in range(6)]
    await m.stop()
    assert [await h for h in handles] == [h.id for h in handles]
    with pytest.raises(ShuttingDown):
        m.queue_task_async(work)
    await m.stop()  # idempotent
    await m.kill()
    assert res.live() == set() and res.created
    assert_nothing_left()


async def test_stop_without_drain_fails_queued_and_finishes_running() -> None:
    res = Resources()
    m = make(res, worker_count=1, max_worker_count=1)
    await m.start()
    gate = asyncio.Event()

    async def hold(ctx: TaskContext, r: str) -> str:
        await gate.wait()
        return "finished"

    running = m.queue_task_async(hold)
    await until(lambda: running.state is TaskState.RUNNING)
    queued = [m.queue_task_async(hold, priority=Priority.HIGH) for _ in range(3)]
    stopping = asyncio.ensure_future(m.stop(drain=False))
    for h in queued:
        with pytest.raises(ShuttingDown):
            await h
    assert not stopping.done()
    gate.set()
    await stopping
    assert await running == "finished"
    assert res.live() == set()
    assert_nothing_left()


async def test_stop_timeout_cancels_running_with_stop_reason() -> None:
    res = Resources()
    m = make(res, worker_count=2, max_worker_count=2)
    await m.start()
    reasons: list[object] = []

    async def forever(ctx: TaskContext, r: str) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            reasons.append(ctx.reason)

    def forever_thread(ctx: TaskContext, r: str) -> None:
        ctx.wait_cancelled()
        reasons.append(ctx.reason)

    a = m.queue_task_async(forever)
    b = m.queue_task_async(forever_thread)
    c = m.queue_task_async(forever)  # queued behind them
    start = time.monotonic()
    await m.stop(timeout=0.1)
    assert time.monotonic() - start < 2
    for h in (a, b, c):
        with pytest.raises(ShuttingDown):
            await h
    assert reasons == [CancelReason.STOP, CancelReason.STOP]
    assert res.live() == set()
    assert_nothing_left()


async def test_kill_answers_everyone_and_cleans_up() -> None:
    res = Resources()
    m = make(res, worker_count=2, max_worker_count=2)
    await m.start()
    reasons: list[object] = []
    callbacks: list[object] = []

    async def forever(ctx: TaskContext, r: str) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # cleanup awaited by the worker
            reasons.append(ctx.reason)

    def thread(ctx: TaskContext, r: str) -> None:
        ctx.wait_cancelled()
        reasons.append(ctx.reason)

    running = [m.queue_task_async(forever), m.queue_task_async(thread)]
    await until(lambda: m.stats().running == 2)
    queued = [
        m.queue_task_with_callback(forever, lambda r, e: callbacks.append(type(e)))
        for _ in range(3)
    ]
    waiter = asyncio.ensure_future(m.queue_task(forever))
    await asyncio.sleep(0)
    await m.kill()
    for h in [*running, *queued]:
        with pytest.raises(Killed):
            await h
    with pytest.raises(Killed):
        await waiter
    assert sorted(map(str, reasons)) == sorted(map(str, [CancelReason.KILL] * 2))
    assert callbacks == [Killed] * 3
    await m.kill()
    await m.stop()
    assert res.live() == set()
    assert_nothing_left()


async def test_submission_refused_after_kill() -> None:
    m = make(Resources())
    await m.start()
    await m.kill()

    async def noop(ctx: TaskContext, r: str) -> None:
        return None

    with pytest.raises(ShuttingDown):
        await m.queue_task(noop)
    with pytest.raises(ShuttingDown):
        await m.run_task(noop)
    assert m.metrics().rejected == 2
