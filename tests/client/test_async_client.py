"""The asyncio AsyncClient against a real daemon: the same surface as Client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskerctl import (
    AsyncClient,
    DaemonUnavailable,
    DeadlineExceeded,
    InvalidTask,
    QueueFull,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskResult,
    TaskState,
    TaskTimedOut,
)
from tests.conftest import Daemon


@pytest.fixture
async def client(shared: Daemon) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(shared.socket) as c:
        yield c


async def test_submit_await_handle_get_state(client: AsyncClient) -> None:
    h = await client.submit(["sh", "-c", "echo out; sleep 0.3"])
    assert await h.get_state() in (TaskState.QUEUED, TaskState.RUNNING)
    r = await h
    assert r.ok and r.id == h.id
    assert (await client.get(h.id, output=True)).stdout == b"out\n"
    assert await h.get_state() == TaskState.SUCCEEDED


async def test_queue_task_variants_and_gather(client: AsyncClient) -> None:
    assert (await client.queue_task("true")).ok
    with pytest.raises(TaskFailed) as failed:
        await client.queue_task(["sh", "-c", "exit 3"])
    assert failed.value.result.exit_code == 3
    with pytest.raises(TaskTimedOut):
        await client.queue_task(["sleep", "10"], timeout=0.3)
    tasks = [client.queue_task_async(["sh", "-c", f"exit {i % 2}"]) for i in range(6)]
    assert all(isinstance(t, asyncio.Task) for t in tasks)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, TaskResult) for r in results) == 3
    assert sum(isinstance(r, TaskFailed) for r in results) == 3


async def test_callback_exactly_once(client: AsyncClient) -> None:
    calls: list[tuple[TaskResult | None, BaseException | None]] = []
    both = asyncio.Event()

    async def callback(result: TaskResult | None, error: BaseException | None) -> None:
        calls.append((result, error))
        if len(calls) == 2:
            both.set()

    t0 = time.monotonic()
    client.queue_task_with_callback(["sleep", "0.2"], callback=callback)
    client.queue_task_with_callback(["sh", "-c", "exit 7"], callback=callback)
    assert time.monotonic() - t0 < 1
    await asyncio.wait_for(both.wait(), 20)
    await asyncio.sleep(0.3)
    assert len(calls) == 2
    errors = [e for _, e in calls if e is not None]
    assert len(errors) == 1 and isinstance(errors[0], TaskFailed)
    assert errors[0].result.exit_code == 7


async def test_cancel_run_and_streams(client: AsyncClient) -> None:
    h = await client.submit(["sleep", "10"])
    asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(h.cancel()))
    with pytest.raises(TaskCancelled):
        await h.result(20)
    assert await client.cancel(h.id) is False

    chunks: list[bytes] = []
    r = await client.run(["sh", "-c", "echo a; exit 4"], on_output=lambda s, d: chunks.append(d))
    assert r.exit_status == 4 and r.stdout == b"a\n" and b"".join(chunks) == b"a\n"
    kinds = [e.kind async for e in client.run_stream(["echo", "x"])]
    assert kinds[-1] == "finished" and "output" in kinds

    h2 = await client.submit(["sh", "-c", "echo z"])
    events = [e async for e in h2.events(output=True)]
    assert events[-1].kind == "finished" and events[-1].result is not None

    async def firehose() -> int:
        async for ev in client.stream_results():
            if ev.kind == "finished":
                return ev.task_id
        return -1

    watcher = asyncio.ensure_future(firehose())
    await asyncio.sleep(0.3)  # let the watcher subscribe: the firehose carries live events only
    slow = await client.submit(["sleep", "1"])
    assert await asyncio.wait_for(watcher, 20) == slow.id


async def test_many_list_stats_metrics_clean(client: AsyncClient) -> None:
    hs = await client.submit_many(["true"] * 5, batch_size=2, labels={"grp": "async"})
    await asyncio.gather(*(h.wait(20) for h in hs))
    listed = await client.list(labels={"grp": "async"}, limit=10)
    assert sorted(t.id for t in listed) == [h.id for h in hs]
    page, token = await client.list_page(labels={"grp": "async"}, page_size=3)
    rest, end = await client.list_page(labels={"grp": "async"}, page_size=3, page_token=token)
    assert [t.id for t in page + rest] == [h.id for h in reversed(hs)] and end == ""
    assert (await client.stats()).base_workers == 4
    assert (await client.metrics()).completed >= 5
    assert await client.clean("0s") >= 5
    with pytest.raises(TaskNotFound):
        await client.get(hs[0].id)


async def test_errors(client: AsyncClient, tmp_path: Path) -> None:
    with pytest.raises(InvalidTask) as bad:
        await client.submit(["true"], queue_timeout=-2)
    assert bad.value.field == "tasks[0].queue_timeout"
    slow = await client.submit(["sleep", "5"])
    with pytest.raises(DeadlineExceeded):
        await slow.wait(timeout=0.3)
    await slow.cancel()
    async with AsyncClient(tmp_path / "none.sock") as dead:
        with pytest.raises(DaemonUnavailable):
            await dead.submit(["true"])


async def test_queue_full_and_shutdown(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1", "--max-queue", "2")
    async with AsyncClient(d.socket) as c:
        hs = []
        with pytest.raises(QueueFull):
            for _ in range(4):
                hs.append(await c.submit(["sleep", "30"]))
        await c.shutdown("kill")
    assert d.proc is not None and d.proc.wait(20) == 0


async def test_ends_streams_each_end_once(client: AsyncClient) -> None:
    seen: list[int] = []

    async def read() -> None:
        async for ended in client.ends():
            seen.extend(t.id for t in ended if t.labels.get("grp") == "ends")
            if len(seen) >= 3:
                return

    reader = asyncio.ensure_future(read())
    hs = await client.submit_many([["sleep", "1"]] * 3, labels={"grp": "ends"})
    await asyncio.wait_for(reader, 30)
    assert sorted(seen) == [h.id for h in hs]
