"""The raw spawn floor, and the runner measured against it.

``spawn_floor(n, concurrency)`` is the rate of bare ``asyncio.create_subprocess_exec("true")``
runs (with the pidfd child watcher), the ceiling any Tasker throughput is compared to.
Run as a script it prints the floor and ``run_command(["true"])`` at concurrency 2 and 8, and
their ratio, measured interleaved in the same process::

    .venv/bin/python bench/spawn_floor.py [--n 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from taskerd.runner import Capture, install_child_watcher, run_command


async def _rate(one: Callable[[], Awaitable[object]], n: int, concurrency: int) -> float:
    """Run ``one`` ``n`` times with ``concurrency`` workers; return runs per second."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - t0)


async def _bare_true() -> None:
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()


async def _runner_true() -> None:
    await run_command(["true"], capture=Capture(1 << 16))


async def spawn_floor(n: int, concurrency: int) -> float:
    """Tasks/s of ``asyncio.create_subprocess_exec("true")`` at ``concurrency`` (pidfd watcher)."""
    install_child_watcher()
    return await _rate(_bare_true, n, concurrency)


async def runner_rate(n: int, concurrency: int) -> float:
    """Tasks/s of ``run_command(["true"])`` at ``concurrency``."""
    install_child_watcher()
    return await _rate(_runner_true, n, concurrency)


async def _main(n: int, rounds: int) -> None:
    for concurrency in (2, 8):
        floors: list[float] = []
        runs: list[float] = []
        await spawn_floor(100, concurrency)  # warm up
        await runner_rate(100, concurrency)
        for _ in range(rounds):
            floors.append(await spawn_floor(n, concurrency))
            runs.append(await runner_rate(n, concurrency))
        floor, runner = max(floors), max(runs)
        print(
            f"concurrency {concurrency}: floor {floor:7.0f}/s  run_command {runner:7.0f}/s  "
            f"ratio {runner / floor:.2f}"
        )


def main() -> None:
    """Command-line entry: print floor, runner rate and ratio at concurrency 2 and 8."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(_main(args.n, args.rounds))


if __name__ == "__main__":
    main()
