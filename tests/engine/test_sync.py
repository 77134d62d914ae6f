"""SyncTaskManager from plain threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from taskerd.engine import Config, SyncTaskManager, TaskContext, TaskManager, TaskTimeout

from .conftest import Resources, engine_threads


def test_sync_manager_from_threads() -> None:
    res = Resources()
    config = Config(on_create=res.create, on_destroy=res.destroy, worker_count=2)
    results: list[int] = []
    errors: list[BaseException] = []

    def square(ctx: TaskContext, r: str) -> int:
        return ctx.task_id * ctx.task_id

    async def slow(ctx: TaskContext, r: str) -> None:
        await asyncio.sleep(5)

    with SyncTaskManager[str, int](config) as sm:

        def client() -> None:
            try:
                for _ in range(20):
                    handle = sm.submit(square)
                    results.append(handle.result(5) - handle.id * handle.id)
                results.append(sm.queue_task(lambda ctx, r: 1) - 1)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and results == [0] * 84
        with pytest.raises(TaskTimeout):
            sm.queue_task(slow, timeout=0.05)
        got: list[object] = []
        done = threading.Event()
        sm.queue_task_with_callback(square, lambda r, e: (got.append(r), done.set()))
        assert done.wait(5) and isinstance(got[0], int)
        assert sm.run_task(lambda ctx, r: 5) == 5
        handle = sm.submit(slow)
        time.sleep(0.02)
        assert sm.cancel(handle) and not handle.cancel()
        assert sm.stats().base_workers == 2 and sm.metrics().completed >= 84
    assert res.live() == set()
    assert engine_threads() == []


def test_sync_manager_wraps_running_manager() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        res = Resources()
        manager: TaskManager[str, str] = TaskManager(Config(on_create=res.create, worker_count=1))
        asyncio.run_coroutine_threadsafe(manager.start(), loop).result()
        sm = SyncTaskManager(manager, loop)
        assert sm.queue_task(lambda ctx, r: r) == "r0"
        sm.stop()
        assert loop.is_running()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
