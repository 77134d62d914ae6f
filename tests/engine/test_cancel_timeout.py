"""Timeouts and cancellation, for async and thread tasks."""

from __future__ import annotations

import asyncio
import time

import pytest

from taskerd.engine import CancelReason, TaskCancelled, TaskContext, TaskState, TaskTimeout

from .conftest import Resources, make, until

LATE = 0.05  # the caller must be answered within 50 ms of the deadline


async def test_async_timeout_answers_at_deadline_and_worker_awaits_cleanup() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1) as m:
        await asyncio.sleep(0.02)
        seen: list[object] = []
        cleaned = asyncio.Event()

        async def stubborn(ctx: TaskContext, r: str) -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append(ctx.reason)
                await asyncio.sleep(0.3)  # slow cleanup, e.g. killing a process group
                cleaned.set()
                raise

        start = time.monotonic()
        with pytest.raises(TaskTimeout) as info:
            await m.queue_task(stubborn, timeout=0.2)
        late = time.monotonic() - start - 0.2
        assert -0.005 <= late < LATE, late
        assert isinstance(info.value, TimeoutError)
        assert not cleaned.is_set()
        await until(lambda: seen == [CancelReason.TIMEOUT])
        assert not cleaned.is_set()

        async def after(ctx: TaskContext, r: str) -> bool:
            return cleaned.is_set()

        assert await m.queue_task(after)  # the worker waited for the cleanup first
        assert m.metrics().timed_out == 1


async def test_thread_task_ignoring_ctx_is_answered_at_deadline() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1) as m:
        await asyncio.sleep(0.02)

        def ignores(ctx: TaskContext, r: str) -> str:
            time.sleep(0.4)
            return "too late"

        start = time.monotonic()
        handle = m.queue_task_async(ignores, timeout=0.1)
        with pytest.raises(TaskTimeout):
            await handle
        assert time.monotonic() - start - 0.1 < LATE
        assert handle.state is TaskState.TIMED_OUT
        assert m.stats().running == 0 and m.stats().idle_workers == 0  # slot still held


async def test_thread_wait_cancelled_sees_cancel() -> None:
    async with make(Resources()) as m:
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def cooperative(ctx: TaskContext, r: str) -> tuple[bool, bool, CancelReason | None]:
            early = ctx.wait_cancelled(0.01)
            loop.call_soon_threadsafe(started.set)
            late = ctx.wait_cancelled(5)
            return early, late, ctx.reason

        handle = m.queue_task_async(cooperative)
        await started.wait()
        assert handle.cancel()
        with pytest.raises(TaskCancelled):
            await handle
        assert handle.state is TaskState.CANCELLED

        result: list[object] = []

        def record(ctx: TaskContext, r: str) -> None:
            result.append(ctx.wait_cancelled(5))
            result.append(ctx.reason)
            result.append(ctx.remaining() is not None and ctx.remaining() < 0.5)  # type: ignore[operator]

        with pytest.raises(TaskTimeout):
            await m.queue_task(record, timeout=0.05)
        await until(lambda: len(result) == 3)
        assert result == [True, CancelReason.TIMEOUT, True]


async def test_cancel_queued_is_immediate_and_running_async_is_cancelled() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1) as m:
        reasons: list[object] = []

        async def long(ctx: TaskContext, r: str) -> None:
            try:
                await ctx.wait_cancelled_async(10)
                await asyncio.sleep(10)
            finally:
                reasons.append(ctx.reason)

        running = m.queue_task_async(long)
        queued = m.queue_task_async(long)
        await until(lambda: running.state is TaskState.RUNNING)
        assert m.stats().queued == 1
        assert queued.cancel() and not queued.cancel()
        assert queued.state is TaskState.CANCELLED and m.stats().queued == 0
        with pytest.raises(TaskCancelled):
            await queued
        assert running.cancel()
        with pytest.raises(TaskCancelled):
            await running
        await until(lambda: reasons == [CancelReason.USER])
        assert m.metrics().cancelled == 2


async def test_caller_cancellation_cancels_task() -> None:
    async with make(Resources(), worker_count=1) as m:
        reasons: list[object] = []

        async def long(ctx: TaskContext, r: str) -> None:
            try:
                await asyncio.sleep(10)
            finally:
                reasons.append(ctx.reason)

        waiter = asyncio.ensure_future(m.queue_task(long))
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await until(lambda: reasons == [CancelReason.USER])


async def test_wait_cancelled_async_times_out() -> None:
    async with make(Resources()) as m:

        async def short(ctx: TaskContext, r: str) -> bool:
            return await ctx.wait_cancelled_async(0.01)

        assert await m.queue_task(short) is False
