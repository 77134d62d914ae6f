"""Engine benchmarks: figures as ratios against baselines measured in the same run.

Run: ``.venv/bin/python bench/engine.py``. Prints, asserts nothing.

Both sides do the same work per item: the async baseline (asyncio.Queue, WORKERS consumers)
resolves a future per item whose done callback reaches the submitter, as the engine's handle
and done callback do; the thread baseline (ThreadPoolExecutor, WORKERS threads) hands each
result back through its future, as awaiting the engine's handle does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
import time
from collections.abc import Callable
from typing import Any

from taskerd.engine import Config, TaskContext, TaskManager

ASYNC_N = 100_000
SYNC_N = 20_000
WORKERS = 8
LATENCY_N = 2_000


def countdown(n: int) -> tuple[asyncio.Event, Callable[[object], None]]:
    """An event set once the returned callback has been called ``n`` times."""
    done = asyncio.Event()
    left = n

    def one_done(_: object) -> None:
        nonlocal left
        left -= 1
        if not left:
            done.set()

    return done, one_done


async def noop_async(ctx: TaskContext, resource: Any) -> None:
    return None


def noop_sync(ctx: TaskContext, resource: Any) -> None:
    return None


def config() -> Config[None]:
    return Config(on_create=lambda: None, worker_count=WORKERS, max_worker_count=WORKERS)


async def baseline_async_queue(n: int) -> float:
    """asyncio.Queue with WORKERS consumers; like the engine, each item's outcome is delivered
    to the submitter through a future whose done callback the loop schedules."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, asyncio.Future[None]]] = asyncio.Queue()

    async def consumer() -> None:
        while True:
            fn, fut = await queue.get()
            try:
                result = await fn(None, None)
            except Exception as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    done, one_done = countdown(n)
    consumers = [asyncio.create_task(consumer()) for _ in range(WORKERS)]
    await asyncio.sleep(0)  # let the consumers park, as the engine's workers do
    start = time.perf_counter()
    for _ in range(n):
        fut: asyncio.Future[None] = loop.create_future()
        fut.add_done_callback(one_done)
        queue.put_nowait((noop_async, fut))
    await done.wait()
    elapsed = time.perf_counter() - start
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    return n / elapsed


async def engine_async(n: int) -> float:
    async with TaskManager[None, None](config()) as manager:
        done, one_done = countdown(n)
        start = time.perf_counter()
        for _ in range(n):
            manager.queue_task_async(noop_async).add_done_callback(one_done)
        await done.wait()
        elapsed = time.perf_counter() - start
    return n / elapsed


def baseline_threads(n: int) -> float:
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        start = time.perf_counter()
        futures = [pool.submit(noop_sync, None, None) for _ in range(n)]  # type: ignore[arg-type]
        for future in futures:
            future.result()
        return n / (time.perf_counter() - start)


async def engine_threads(n: int) -> float:
    async with TaskManager[None, None](config()) as manager:
        start = time.perf_counter()
        handles = [manager.queue_task_async(noop_sync) for _ in range(n)]
        for handle in handles:
            await handle
        return n / (time.perf_counter() - start)


async def latency(n: int) -> tuple[float, float]:
    samples: list[float] = []
    async with TaskManager[None, None](config()) as manager:
        await asyncio.sleep(0.05)  # let the workers park
        for _ in range(n):
            submitted = time.perf_counter()
            started = 0.0

            async def probe(ctx: TaskContext, resource: Any) -> None:
                nonlocal started
                started = time.perf_counter()

            await manager.queue_task(probe)
            samples.append(started - submitted)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def main() -> None:
    base = asyncio.run(baseline_async_queue(ASYNC_N))
    ours = asyncio.run(engine_async(ASYNC_N))
    print(
        f"async throughput: {ours:,.0f} tasks/s vs asyncio.Queue {base:,.0f}/s = "
        f"{ours / base:.2f}x (goal >= 0.5x; {ASYNC_N:,} no-op tasks, {WORKERS} workers)"
    )
    base = baseline_threads(SYNC_N)
    ours = asyncio.run(engine_threads(SYNC_N))
    print(
        f"sync throughput: {ours:,.0f} tasks/s vs ThreadPoolExecutor {base:,.0f}/s = "
        f"{ours / base:.2f}x (goal >= 0.8x; {SYNC_N:,} no-op tasks, {WORKERS} threads)"
    )
    p50, p99 = asyncio.run(latency(LATENCY_N))
    print(
        f"submit-to-start latency (idle manager): p50 {p50 * 1e6:,.0f} us, "
        f"p99 {p99 * 1e6:,.0f} us (goal p99 < 1 ms)"
    )


if __name__ == "__main__":
    main()
