"""The hot-path shortcuts keep the contract: batched callbacks and thread replies, cached
coroutine checks, and priority order while a worker drains tasks that never yield."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any

import pytest

from taskerd.engine import Priority, TaskContext, TaskHandle

from .conftest import Resources, assert_nothing_left, make


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
