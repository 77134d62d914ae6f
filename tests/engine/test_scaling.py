"""The bursting rule (``burst_target``) on synthetic rates, and the scaler applying it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskerd.engine import TaskContext
from taskerd.engine.scaling import burst_target

from .conftest import Resources, assert_nothing_left, make, until

# base 2, ceiling 8 (max_workers 10), interval 0.1 s unless a case says otherwise.
DEFAULTS: dict[str, Any] = {
    "per_worker_rate": 10.0,
    "backlog": 100,
    "base": 2,
    "burst": 0,
    "max_workers": 10,
    "interval": 0.1,
}

CASES = [
    # (name, arrival_rate, drain_rate, overrides, expected burst workers)
    ("no deficit, no burst", 20.0, 20.0, {}, 0),
    ("deficit of one worker's throughput", 30.0, 20.0, {}, 1),
    ("exact multiple is not rounded up", 40.0, 20.0, {}, 2),
    ("part of a worker rounds up", 41.0, 20.0, {}, 3),
    ("a tiny deficit still adds one", 20.5, 20.0, {}, 1),
    ("rising deficit grows further", 80.0, 20.0, {"burst": 2}, 8),
    ("added on top of the current burst", 50.0, 40.0, {"burst": 3}, 4),
    ("ceiling caps", 1000.0, 20.0, {}, 8),
    ("ceiling caps the current burst too", 1000.0, 20.0, {"burst": 8}, 8),
    ("a lowered ceiling trims", 0.0, 0.0, {"burst": 8, "max_workers": 5}, 3),
    ("no more new workers than waiting tasks", 1000.0, 0.0, {"backlog": 2}, 2),
    ("zero arrivals never burst", 0.0, 0.0, {}, 0),
    ("zero arrivals, slow drain: still no burst", 0.0, 1.0, {}, 0),
    ("zero arrivals keep the burst draining a backlog", 0.0, 5.0, {"burst": 4}, 4),
    ("draining keeps up, backlog left: keep", 20.0, 30.0, {"burst": 4}, 4),
    ("surplus gone: all retire", 20.0, 30.0, {"burst": 4, "backlog": 0}, 0),
    ("idle: all retire", 0.0, 0.0, {"burst": 4, "backlog": 0}, 0),
    ("arrivals outpace, nothing waits: keep", 30.0, 20.0, {"burst": 4, "backlog": 0}, 4),
    ("arrivals outpace, nothing waits: no growth", 30.0, 20.0, {"backlog": 0}, 0),
    ("unknown throughput: one per task of growth", 50.0, 10.0, {"per_worker_rate": None}, 4),
    ("unknown throughput, one task grew", 10.0, 0.0, {"per_worker_rate": None}, 1),
    ("zero throughput counts as unknown", 50.0, 10.0, {"per_worker_rate": 0.0}, 4),
    (
        "unknown throughput, longer interval",
        50.0,
        10.0,
        {"per_worker_rate": None, "interval": 1},
        8,
    ),
    ("slow tasks: Little's law", 2.0, 0.0, {"per_worker_rate": 0.5}, 4),
    ("no room above base", 1000.0, 0.0, {"max_workers": 2}, 0),
]


@pytest.mark.parametrize(
    ("arrival", "drain", "overrides", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_burst_target(
    arrival: float, drain: float, overrides: dict[str, Any], expected: int
) -> None:
    args = {**DEFAULTS, **overrides}
    assert burst_target(arrival_rate=arrival, drain_rate=drain, **args) == expected


def test_target_stays_in_range() -> None:
    for arrival in (0.0, 0.3, 7.0, 55.5, 1e6):
        for drain in (0.0, 3.0, 60.0):
            for rate in (None, 0.01, 1.0, 1e6):
                for backlog in (0, 1, 50):
                    for burst in (0, 3, 12):
                        got = burst_target(
                            arrival_rate=arrival,
                            drain_rate=drain,
                            per_worker_rate=rate,
                            backlog=backlog,
                            base=2,
                            burst=burst,
                            max_workers=10,
                            interval=0.05,
                        )
                        assert 0 <= got <= 8
                        if arrival <= drain and backlog:
                            assert got == min(burst, 8)  # never grows without a deficit


async def test_static_backlog_without_arrivals_never_bursts() -> None:
    """Tasks queued during a pause drain slowly afterwards: no arrivals, so no burst."""
    res = Resources()
    m = make(res, worker_count=1, max_worker_count=6, burst_interval=0.01)
    async with m:

        async def work(ctx: TaskContext, r: str) -> None:
            await asyncio.sleep(0.01)

        m.pause()
        handles = [m.queue_task_async(work) for _ in range(12)]
        await asyncio.sleep(0.05)  # the arrivals are measured while paused: no burst then
        assert m.stats().burst_workers == 0 and m.stats().arrival_rate == 0.0
        m.resume()
        seen = 0
        while not all(h.done() for h in handles):
            seen = max(seen, m.stats().burst_workers)
            await asyncio.sleep(0.002)
        assert seen == 0
    assert_nothing_left()


async def test_arrival_stream_bursts_by_rate_then_retires() -> None:
    """Arrivals twice what the base drains add about one worker, not the ceiling; they retire."""
    res = Resources()
    m = make(res, worker_count=1, max_worker_count=8, burst_interval=0.02)
    async with m:

        async def work(ctx: TaskContext, r: str) -> None:
            await asyncio.sleep(0.02)  # one worker drains ~50/s

        handles = []
        peak = 0
        rates = 0.0
        for _ in range(30):  # ~100/s for 0.3 s
            handles.append(m.queue_task_async(work))
            await asyncio.sleep(0.01)
            stats = m.stats()
            peak = max(peak, stats.burst_workers)
            rates = max(rates, min(stats.arrival_rate, stats.drain_rate))
        await asyncio.gather(*handles)
        assert 1 <= peak <= 5, peak  # the ceiling is 7
        assert rates > 0
        await until(lambda: m.stats().burst_workers == 0, timeout=3)
        assert m.stats().active_workers == 1
    assert res.live() == set()
    assert_nothing_left()
