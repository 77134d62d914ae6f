"""The hot-path shortcuts keep the contract: batched callbacks and thread replies, cached
coroutine checks, and priority order while a worker drains tasks that never yield."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any

import pytest

from taskerd.engine import (
    Killed,
    Priority,
    TaskCancelled,
    TaskContext,
    TaskHandle,
    TaskState,
    TaskTimeout,
)

from .conftest import Resources, assert_nothing_left, make, until
from .test_stress import Outcomes


async def test_every_callback_runs_once_in_order_despite_a_raising_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[int] = []
    async with make(Resources(), worker_count=1) as m:

        async def echo(ctx: TaskContext, r: str) -> int:
            return ctx.task_id

        def record(handle: TaskHandle[Any]) -> None:
            seen.append(handle.id)
            if handle.id % 7 == 0:
                raise ZeroDivisionError("callback bug")

        handles = [m.queue_task_async(echo) for _ in range(200)]
        for handle in handles:
            handle.add_done_callback(record)
        with caplog.at_level(logging.ERROR, logger="taskerd.engine"):
            for handle in handles:
                assert await handle == handle.id
            for _ in range(3):
                await asyncio.sleep(0)
    assert seen == [h.id for h in handles]  # one worker: completion order is submission order
    logged = [r for r in caplog.records if "callback for task" in r.getMessage()]
    assert len(logged) == len([h for h in handles if h.id % 7 == 0])
    assert_nothing_left()


async def test_thread_replies_reach_the_right_callers() -> None:
    loop_thread = threading.get_ident()

    def work(n: int, ctx: TaskContext, r: str) -> int:
        assert threading.get_ident() != loop_thread
        if n % 5 == 0:
            raise ValueError(n)
        return n * n

    async with make(Resources(), worker_count=4, max_retries=0) as m:
        handles = [m.queue_task_async(functools.partial(work, n)) for n in range(1, 400)]
        for n, handle in enumerate(handles, start=1):
            if n % 5 == 0:
                with pytest.raises(ValueError, match=str(n)):
                    await handle
            else:
                assert await handle == n * n
        assert m.metrics().completed == len([n for n in range(1, 400) if n % 5])
    assert_nothing_left()


async def test_same_function_object_reused_or_alternated_runs_the_right_way() -> None:
    loop_thread = threading.get_ident()

    async def on_loop(ctx: TaskContext, r: str) -> bool:
        return threading.get_ident() == loop_thread

    def in_thread(ctx: TaskContext, r: str) -> bool:
        return threading.get_ident() == loop_thread

    async with make(Resources()) as m:
        order = [on_loop, on_loop, in_thread, in_thread, on_loop, in_thread]
        handles = [m.queue_task_async(fn) for fn in order]
        assert [await h for h in handles] == [fn is on_loop for fn in order]


async def test_draining_worker_takes_the_highest_priority_next() -> None:
    ran: list[tuple[Priority, int]] = []
    async with make(Resources(), worker_count=1) as m:
        gate = asyncio.Event()

        async def blocker(ctx: TaskContext, r: str) -> None:
            await gate.wait()

        def make_task(i: int) -> Any:
            async def task(ctx: TaskContext, r: str) -> None:
                ran.append((ctx.priority, i))
                if i == 0:  # submitted while the worker drains: must go before the rest
                    m.queue_task_async(make_task(100), priority=Priority.CRITICAL)

            return task

        first = m.queue_task_async(blocker)
        await asyncio.sleep(0.01)
        handles = [m.queue_task_async(make_task(i), priority=Priority.LOW) for i in range(5)]
        handles.append(m.queue_task_async(make_task(50), priority=Priority.HIGH))
        gate.set()
        await first
        for handle in handles:
            await handle
    assert ran[0] == (Priority.HIGH, 50)
    assert ran[1] == (Priority.LOW, 0)
    assert ran[2] == (Priority.CRITICAL, 100)
    assert [i for _, i in ran[3:]] == [1, 2, 3, 4]


async def test_thread_lane_keeps_priority_order_and_yields_to_async_tasks() -> None:
    ran: list[str] = []
    release = threading.Event()
    async with make(Resources(), worker_count=1) as m:

        def first(ctx: TaskContext, r: str) -> None:
            release.wait(5)
            ran.append("low0")

        def low(name: str) -> Any:
            def task(ctx: TaskContext, r: str) -> None:
                ran.append(name)

            return task

        async def urgent_async(ctx: TaskContext, r: str) -> None:
            ran.append("async-high")

        handles = [m.queue_task_async(first, priority=Priority.LOW)]
        handles += [m.queue_task_async(low(f"low{i}"), priority=Priority.LOW) for i in (1, 2)]
        await until(lambda: m.stats().running == 1)
        # Queued while the thread runs low0: the lane must take these next, in this order.
        handles.append(m.queue_task_async(urgent_async, priority=Priority.HIGH))
        handles.append(m.queue_task_async(low("sync-critical"), priority=Priority.CRITICAL))
        release.set()
        for handle in handles:
            await handle
        assert m.stats().running == 0 and m.metrics().completed == 5
    assert ran == ["low0", "sync-critical", "async-high", "low1", "low2"]


async def test_thread_lane_tasks_cancel_time_out_and_count_like_others() -> None:
    release = threading.Event()
    outcomes = Outcomes()
    async with make(Resources(), worker_count=1, collector=outcomes) as m:

        def gate(ctx: TaskContext, r: str) -> str:
            release.wait(5)
            return "gate"

        def patient(ctx: TaskContext, r: str) -> Any:
            return ctx.wait_cancelled(5), ctx.reason

        def quick(ctx: TaskContext, r: str) -> int:
            return ctx.task_id

        first = m.queue_task_async(gate)
        timed = m.queue_task_async(patient, timeout=0.1)
        dropped = m.queue_task_async(quick)
        cancelled = m.queue_task_async(patient)
        last = m.queue_task_async(quick)
        await until(lambda: m.stats().running == 1)
        assert dropped.cancel()
        release.set()
        assert await first == "gate"
        with pytest.raises(TaskTimeout):
            await timed  # taken by the lane; its deadline still holds
        await until(lambda: cancelled.state is TaskState.RUNNING)
        assert cancelled.cancel()
        with pytest.raises(TaskCancelled):
            await cancelled
        assert await last == last.id
        with pytest.raises(TaskCancelled):
            await dropped
        await until(lambda: m.stats().running == 0)
        metrics = m.metrics()
        assert (metrics.completed, metrics.timed_out, metrics.cancelled) == (2, 1, 2)
    ended = {h.id for h in (first, timed, dropped, cancelled, last)}
    assert set(outcomes.ended) == ended and set(outcomes.ended.values()) == {1}
    assert set(outcomes.started) == ended - {dropped.id}
    assert_nothing_left()


async def test_kill_stops_a_thread_lane() -> None:
    release = threading.Event()
    started: list[int] = []
    async with make(Resources(), worker_count=1) as m:

        def task(ctx: TaskContext, r: str) -> None:
            started.append(ctx.task_id)
            release.wait(5)

        handles = [m.queue_task_async(task) for _ in range(5)]
        await until(lambda: len(started) == 1)
        killing = asyncio.ensure_future(m.kill())
        await asyncio.sleep(0.01)
        release.set()
        await killing
        for handle in handles:
            with pytest.raises(Killed):
                await handle
    assert started == [handles[0].id]
    assert_nothing_left()
