"""Unhealthy workers are replaced; retries, once, Retry and the collector protocol."""

from __future__ import annotations

import asyncio

import pytest

from taskerd.engine import Retry, TaskContext, TaskState

from .conftest import Resources, make


class Broken(Exception):
    """Marks a resource as broken."""


def healthy(exc: BaseException) -> bool:
    return not isinstance(exc, Broken)


class Events:
    """A real MetricsCollector that keeps the event stream."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def record_arrival(self, task_id: int) -> None:
        self.log.append(("arrival", task_id))

    def record_start(self, task_id: int, wait: float) -> None:
        self.log.append(("start", task_id))

    def record_completion(self, task_id: int, duration: float) -> None:
        self.log.append(("completion", task_id))

    def record_failure(self, task_id: int, error: BaseException, duration: float) -> None:
        self.log.append(("failure", task_id))

    def record_retry(self, task_id: int, error: BaseException) -> None:
        self.log.append(("retry", task_id))

    def record_rejection(self) -> None:
        self.log.append(("rejection", 0))


async def test_unhealthy_error_replaces_resource_and_retries() -> None:
    res = Resources()
    events = Events()
    m = make(res, worker_count=1, max_worker_count=1, check_health=healthy, collector=events)
    async with m:
        used: list[tuple[str, int, int]] = []

        async def flaky(ctx: TaskContext, r: str) -> str:
            used.append((r, ctx.attempt, ctx.worker_id))
            if ctx.attempt < 3:
                raise Broken(r)
            return r

        handle = m.queue_task_async(flaky)
        assert await handle == "r2"
        assert used == [("r0", 1, 0), ("r1", 2, 0), ("r2", 3, 0)]
        assert res.destroyed == ["r0", "r1"]
        assert m.metrics().retried == 2
        tid = handle.id
        mine = [e for e, t in events.log if t == tid]
        assert mine == ["arrival", "start", "retry", "start", "retry", "start", "completion"]
    assert res.live() == set()


async def test_retries_exhausted_gives_last_error_and_once_is_not_retried() -> None:
    res = Resources()
    async with make(res, worker_count=1, check_health=healthy, max_retries=1) as m:
        attempts: list[int] = []

        async def always(ctx: TaskContext, r: str) -> None:
            attempts.append(ctx.attempt)
            raise Broken(f"attempt {ctx.attempt}")

        with pytest.raises(Broken, match="attempt 2"):
            await m.queue_task(always)
        assert attempts == [1, 2]
        attempts.clear()
        with pytest.raises(Broken, match="attempt 1"):
            await m.queue_task(always, once=True)
        assert attempts == [1]
        attempts.clear()
        with pytest.raises(Broken, match="attempt 4"):
            await m.queue_task(always, max_retries=3)
        assert attempts == [1, 2, 3, 4]
        # A healthy error is not retried.

        async def plain(ctx: TaskContext, r: str) -> None:
            attempts.append(ctx.attempt)
            raise ValueError("plain")

        attempts.clear()
        with pytest.raises(ValueError):
            await m.queue_task(plain)
        assert attempts == [1]
        assert len(res.destroyed) == 2 + 1 + 4  # every Broken replaced the resource


async def test_retry_requeues_without_replacing_worker() -> None:
    res = Resources()
    async with make(res, worker_count=1, max_retries=2) as m:
        seen: list[tuple[str, int]] = []

        def sync_retry(ctx: TaskContext, r: str) -> str:
            seen.append((r, ctx.attempt))
            if ctx.attempt < 3:
                raise Retry(OSError("transient"))
            return "ok"

        assert await m.queue_task(sync_retry) == "ok"
        assert seen == [("r0", 1), ("r0", 2), ("r0", 3)]
        assert res.destroyed == []

        async def never(ctx: TaskContext, r: str) -> None:
            raise Retry(OSError(f"gave up at {ctx.attempt}"))

        with pytest.raises(OSError, match="gave up at 3"):
            await m.queue_task(never)
        handle = m.queue_task_async(never, once=True)
        with pytest.raises(OSError, match="gave up at 1"):
            await handle
        assert handle.state is TaskState.FAILED
        assert m.metrics().retried == 4


async def test_retry_with_full_queue_keeps_bound() -> None:
    async with make(Resources(), worker_count=1, max_worker_count=1, max_queue_size=1) as m:
        gate = asyncio.Event()
        order: list[str] = []

        async def retry_once(ctx: TaskContext, r: str) -> str:
            order.append(f"retry{ctx.attempt}")
            if ctx.attempt == 1:
                await gate.wait()
                raise Retry()
            return "retried"

        async def other(ctx: TaskContext, r: str) -> str:
            order.append("other")
            return "other"

        first = m.queue_task_async(retry_once)
        await asyncio.sleep(0.01)
        second = m.queue_task_async(other)  # fills the queue
        gate.set()
        assert await first == "retried"
        assert await second == "other"
        assert order == ["retry1", "retry2", "other"]


async def test_on_create_failures_back_off_and_tasks_are_not_lost() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    def create() -> str:
        calls.append(loop.time())
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "ready"

    from taskerd.engine import Config, TaskManager

    m: TaskManager[str, str] = TaskManager(
        Config(on_create=create, worker_count=1, max_worker_count=1)
    )
    async with m:

        async def which(ctx: TaskContext, r: str) -> str:
            return r

        assert await m.queue_task(which) == "ready"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.04 and calls[2] - calls[1] >= 0.08
