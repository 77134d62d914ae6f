"""A seeded random schedule: every task ends exactly once and everybody hears it once."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import pytest

from taskerd.engine import (
    Config,
    Priority,
    QueueFull,
    Retry,
    ShuttingDown,
    TaskContext,
    TaskError,
    TaskHandle,
    TaskManager,
)

from .conftest import Resources, assert_nothing_left

SEEDS = int(os.environ.get("ENGINE_STRESS_SEEDS", "12"))  # raise for a longer soak


class Broken(Exception):
    """An unhealthy error."""


class Outcomes:
    """A collector that counts terminal records per task."""

    def __init__(self) -> None:
        self.arrived: set[int] = set()
        self.ended: Counter[int] = Counter()
        self.retry_before_start: list[int] = []
        self.started: Counter[int] = Counter()
        self.retried: Counter[int] = Counter()

    def record_arrival(self, task_id: int) -> None:
        assert task_id not in self.arrived
        self.arrived.add(task_id)

    def record_start(self, task_id: int, wait: float) -> None:
        self.started[task_id] += 1
        assert self.started[task_id] == self.retried[task_id] + 1

    def record_completion(self, task_id: int, duration: float) -> None:
        self.ended[task_id] += 1

    def record_failure(self, task_id: int, error: BaseException, duration: float) -> None:
        self.ended[task_id] += 1

    def record_retry(self, task_id: int, error: BaseException) -> None:
        self.retried[task_id] += 1

    def record_rejection(self) -> None:
        pass


async def quick(ctx: TaskContext, r: str) -> str:
    return "quick"


async def sleepy(ctx: TaskContext, r: str) -> str:
    await asyncio.sleep(random.random() * 0.03)
    return "sleepy"


async def stubborn(ctx: TaskContext, r: str) -> str:
    try:
        await asyncio.sleep(random.random() * 0.05)
    finally:
        await asyncio.sleep(0.005)
    return "stubborn"


def thread_quick(ctx: TaskContext, r: str) -> str:
    return "thread"


def thread_coop(ctx: TaskContext, r: str) -> str:
    ctx.wait_cancelled(random.random() * 0.03)
    return "coop"


async def failing(ctx: TaskContext, r: str) -> None:
    raise ValueError("fail")


async def retrying(ctx: TaskContext, r: str) -> str:
    if ctx.attempt < 2:
        raise Retry(ValueError("again"))
    return "retried"


def unhealthy(ctx: TaskContext, r: str) -> None:
    raise Broken("broken")


KINDS = [quick, sleepy, stubborn, thread_quick, thread_coop, failing, retrying, unhealthy]


async def run_schedule(seed: int) -> None:
    rng = random.Random(seed)
    res = Resources()
    outcomes = Outcomes()
    m: TaskManager[str, Any] = TaskManager(
        Config(
            on_create=res.create,
            on_destroy=res.destroy,
            worker_count=rng.randint(1, 3),
            max_worker_count=rng.randint(3, 5),
            burst_interval=0.01,
            max_retries=rng.randint(0, 2),
            check_health=lambda exc: not isinstance(exc, Broken),
            max_queue_size=rng.choice([None, 5, 20]),
            collector=outcomes,
            aging=rng.choice([None, 0.01]),
        )
    )
    await m.start()
    handles: list[TaskHandle[Any]] = []
    heard: Counter[int] = Counter()
    callbacks: Counter[int] = Counter()
    waiters: list[asyncio.Future[Any]] = []

    def options() -> dict[str, Any]:
        return {
            "priority": rng.choice(list(Priority)),
            "timeout": rng.choice([None, None, 0.01, 0.05]),
            "queue_timeout": rng.choice([None, None, 0.02]),
            "once": rng.random() < 0.2,
        }

    async def submitter(n: int) -> None:
        for _ in range(n):
            fn = rng.choice(KINDS)
            style = rng.randrange(4)
            try:
                if style == 0:
                    handle = m.queue_task_async(fn, **options())
                elif style == 1:
                    handle = m.queue_task_async(fn, block=True, block_timeout=0.05, **options())
                elif style == 2:
                    box: list[int] = []

                    def cb(result: Any, error: BaseException | None, box: list[int] = box) -> None:
                        callbacks[box[0]] += 1

                    handle = m.queue_task_with_callback(fn, cb, **options())
                    box.append(handle.id)
                else:
                    waiter = asyncio.ensure_future(m.queue_task(fn, **options()))
                    waiters.append(waiter)
                    await asyncio.sleep(0)
                    continue
            except (QueueFull, ShuttingDown):
                await asyncio.sleep(0)
                continue
            handle.add_done_callback(lambda h: heard.__setitem__(h.id, heard[h.id] + 1))
            handles.append(handle)
            if rng.random() < 0.15:
                asyncio.get_running_loop().call_later(rng.random() * 0.02, handle.cancel)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.005)

    subs = [asyncio.ensure_future(submitter(rng.randint(20, 60))) for _ in range(3)]
    await asyncio.sleep(rng.random() * 0.1)
    ending = rng.randrange(4)
    if ending == 0:
        await m.stop()
    elif ending == 1:
        await m.stop(drain=False)
    elif ending == 2:
        await m.stop(timeout=0.02)
    else:
        await m.kill()
    await asyncio.gather(*subs)
    results = await asyncio.gather(*waiters, return_exceptions=True)
    for result in results:
        assert isinstance(result, str | TaskError | ValueError | Broken), result
    await asyncio.sleep(0)
    for handle in handles:
        assert handle.done(), handle
    assert all(heard[h.id] == 1 for h in handles)
    assert all(count == 1 for count in callbacks.values())
    assert outcomes.arrived == set(outcomes.ended) and set(outcomes.ended.values()) <= {1}
    assert {h.id for h in handles} <= outcomes.arrived
    assert res.live() == set()
    stats = m.stats()
    assert stats.queued == 0 and stats.running == 0 and stats.active_workers == 0
    assert_nothing_left()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("seed", range(SEEDS))
async def test_random_schedule(seed: int) -> None:
    start = time.monotonic()
    await run_schedule(seed)
    assert time.monotonic() - start < 10
