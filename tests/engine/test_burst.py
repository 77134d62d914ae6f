"""Rate-based bursting adds workers under a backlog and retires them after."""

from __future__ import annotations

import asyncio

from taskerd.engine import TaskContext

from .conftest import Resources, assert_nothing_left, make, until


async def test_burst_workers_come_and_go() -> None:
    res = Resources()
    m = make(res, worker_count=2, max_worker_count=5, burst_interval=0.02, resource_pool_size=1)
    async with m:
        await asyncio.sleep(0.05)
        assert m.stats().burst_workers == 0

        async def work(ctx: TaskContext, r: str) -> int:
            await asyncio.sleep(0.02)
            return ctx.worker_id

        handles = [m.queue_task_async(work) for _ in range(150)]
        await until(lambda: m.stats().active_workers == 5, timeout=3)
        stats = m.stats()
        assert stats.burst_workers == 3 and stats.max_workers == 5
        ids = {await h for h in handles}
        assert ids == {0, 1, 2, 3, 4}
        await until(lambda: m.stats().burst_workers == 0, timeout=3)
        stats = m.stats()
        assert stats.active_workers == 2 and stats.available_resources == 2 + 1
        assert len(res.destroyed) == 2  # one retired resource kept as a spare
        assert m.metrics().completion_rate > 0
    assert res.live() == set()
    assert_nothing_left()
