"""Tasker on Dask against bare Dask and against Tasker alone, on one machine (issue 14).

A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (``--nthreads 2
--resources slots=2``, as in ``tests/cluster``: 4 slots), and one taskerd whose group
``cluster`` runs on them (``executor = "dask"``) while its ``default`` group has 4 local slots.
2,000 ``true`` tasks (``--quick``: 200), timed from the first submission to the last end, four
ways, in the same run:

* Tasker on Dask: ``Client.submit_many(..., group="cluster")`` (specs as the client builds
  them, 1,000 a request) and ``wait_many``;
* Tasker, local: the same into ``default`` (4 local slots);
* bare Dask: ``client.submit`` of a function that runs ``subprocess.run(["true"])``, with
  ``resources={"slots": 1}``, and ``gather``;
* the worker side alone: ``client.submit`` of :func:`taskerd.dask.worker.run_task` (claim,
  events, result), without taskerd.

Each way runs twice, interleaved (A B C D A B C D), after one unrecorded warm-up of each; the
figure is the better of the two: wall time per task in ms (4 slots run at once), and the ratio
to bare Dask. Goal (issue 14): Tasker on Dask within 1.5x of bare Dask. The dispatch overhead
per task is Tasker-on-Dask's time per task minus bare Dask's.

Then one task at a time (200, ``--quick``: 50; the first 10 unrecorded), the latency from the
hand-over to the result, p50: bare ``client.submit``, ``run_task``, and taskerd's executor
(:class:`taskerd.dask.executor.DaskExecutor` in this process, no gRPC). Bare Dask queues a whole
batch on its workers at once; taskerd hands over a task only when a slot is free (so that Dask
never reorders its priorities), so its drain is bounded by this latency divided by the slots.

Run: ``.venv/bin/python bench/cluster.py [--quick]``. Asserts only that every task ran.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BenchDaemon, Row, sized_main, timed_sections  # noqa: E402
from taskerctl import Client, TaskState  # noqa: E402
from taskerd.dask import claims  # noqa: E402
from taskerd.dask.spec import RunSpec  # noqa: E402
from taskerd.dask.worker import run_task  # noqa: E402
from tests.cluster.conftest import Cluster  # noqa: E402

GOAL = 1.5
SLOTS = 4


def bare(_: int) -> int:
    """What bare Dask runs per task."""
    return subprocess.run(["true"], check=False).returncode


def drain_bare(client: Any, n: int, rep: str) -> None:
    futures = [
        client.submit(bare, i, key=f"bare-{rep}-{i}", resources={"slots": 1}, pure=False)
        for i in range(n)
    ]
    assert client.gather(futures) == [0] * n


def drain_worker_side(client: Any, n: int, rep: str) -> None:
    futures = []
    for i in range(n):
        key = f"side-{rep}-{i}"
        spec = RunSpec(task_id=i, attempt=1, run_key=key, argv=["true"], topic="bench")
        futures.append(
            client.submit(
                run_task, spec.to_dict(), key=key, resources={"slots": 1}, pure=False, retries=0
            )
        )
    results = client.gather(futures)
    assert all(r["started"] and r["exit_code"] == 0 for r in results), results[:3]


def drain_tasker(tasker: Client, n: int, group: str) -> None:
    handles = tasker.submit_many([["true"]] * n, group=group)
    results = tasker.wait_many([h.id for h in handles], timeout=600)
    assert {r.state for r in results} == {TaskState.SUCCEEDED}, {r.state for r in results}


def measure(n: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp) / "cluster")
        cluster.dir.mkdir()
        try:
            cluster.start()
            client = cluster.client
            claims.register(client)
            config = (
                f'dask_scheduler = "{cluster.address}"\n'
                f'[groups.cluster]\nexecutor = "dask"\nmax_queue = {2 * n}\n'
            )
            with BenchDaemon(Path(tmp) / "taskerd", workers=SLOTS, config=config) as daemon:
                daemon.start(timeout=60)
                with Client(daemon.socket) as tasker:
                    while tasker.stats(group="cluster").base_workers != SLOTS:
                        time.sleep(0.1)
                    ways: dict[str, Callable[[str], None]] = {
                        "bare": lambda rep: drain_bare(client, n, rep),
                        "tasker-dask": lambda rep: drain_tasker(tasker, n, "cluster"),
                        "tasker-local": lambda rep: drain_tasker(tasker, n, "default"),
                        "worker-side": lambda rep: drain_worker_side(client, n, rep),
                    }
                    best: dict[str, float] = {}
                    for rep in ("warm", "1", "2"):
                        for name, drain in ways.items():
                            began = time.perf_counter()
                            drain(rep)
                            took = time.perf_counter() - began
                            if rep != "warm":
                                best[name] = min(best.get(name, took), took)
        finally:
            cluster.stop()
    ms = {name: took / n * 1000 for name, took in best.items()}
    for name, value in ms.items():
        print(f"  {name:14} {value:6.2f} ms/task  {value / ms['bare']:5.2f}x bare Dask")
    ratio = ms["tasker-dask"] / ms["bare"]
    return [
        Row(f"{n:,} `true` through 2 Dask workers x 2 slots, Tasker on Dask",
            f"{ms['tasker-dask']:.2f} ms/task", f"bare Dask: {ms['bare']:.2f} ms/task", ratio,
            f"<= {GOAL}x", ratio <= GOAL),
        Row("  the same, Tasker with 4 local slots", f"{ms['tasker-local']:.2f} ms/task",
            f"bare Dask: {ms['bare']:.2f} ms/task", ms["tasker-local"] / ms["bare"]),
        Row("  the worker side alone (run_task, no taskerd)", f"{ms['worker-side']:.2f} ms/task",
            f"bare Dask: {ms['bare']:.2f} ms/task", ms["worker-side"] / ms["bare"]),
        Row("  dispatch overhead of Tasker on Dask",
            f"{ms['tasker-dask'] - ms['bare']:.2f} ms/task", "", None),
    ]  # fmt: skip


async def _latencies(address: str, n: int) -> dict[str, float]:
    """p50 seconds from hand-over to result, one task at a time, three ways."""
    from taskerd.dask.executor import DaskExecutor
    from taskerd.dask.spec import Job
    from taskerd.runner import Capture

    executor = DaskExecutor(address, "")
    await executor.start()
    client = executor.client
    took: dict[str, list[float]] = {"bare": [], "run_task": [], "executor": []}
    try:
        for i in range(n + 10):
            began = time.perf_counter()
            await client.submit(bare, i, pure=False, resources={"slots": 1})
            took["bare"].append(time.perf_counter() - began)
            spec = RunSpec(task_id=i, attempt=1, run_key=f"lat-{i}", argv=["true"], topic="b")
            began = time.perf_counter()
            await client.submit(run_task, spec.to_dict(), key=spec.run_key, pure=False,
                                resources={"slots": 1})  # fmt: skip
            took["run_task"].append(time.perf_counter() - began)
            job = Job(i, 1, ["true"], False, {}, {}, None, b"", False, None, 1.0, 1 << 20)
            began = time.perf_counter()
            await executor.run(job, Capture(1 << 20), lambda _: None)
            took["executor"].append(time.perf_counter() - began)
    finally:
        await executor.close()
    return {name: statistics.median(values[10:]) for name, values in took.items()}


def latency(n: int) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp))
        try:
            cluster.start()
            p50 = asyncio.run(_latencies(cluster.address, n))
        finally:
            cluster.stop()
    base = p50["bare"]
    return [
        Row("one `true` at a time: hand-over to result p50, taskerd's executor",
            f"{p50['executor'] * 1000:.2f} ms", f"bare Dask: {base * 1000:.2f} ms",
            p50["executor"] / base),
        Row("  the worker side alone (run_task)", f"{p50['run_task'] * 1000:.2f} ms",
            f"bare Dask: {base * 1000:.2f} ms", p50["run_task"] / base),
    ]  # fmt: skip


def run(n: int) -> list[Row]:
    return timed_sections([
        ("Tasker on Dask", lambda: measure(n)),
        ("one task at a time", lambda: latency(max(50, n // 10))),
    ])  # fmt: skip


if __name__ == "__main__":
    sized_main(__doc__, run, 2000, 200, "200 tasks, for a smoke test")
