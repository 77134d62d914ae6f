from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from taskerd.engine import (
    Config,
    Priority,
    TaskContext,
    TaskError,
    TaskHandle,
    TaskManager,
    TaskState,
)

from .conftest import Resources, assert_nothing_left, make


async def test_async_and_thread_tasks_get_context_and_resource() -> None:
    res = Resources()
    loop_thread = threading.get_ident()
    async with make(res) as m:

        async def on_loop(ctx: TaskContext, r: str) -> tuple[str, int, int, bool]:
            return r, ctx.attempt, ctx.worker_id, threading.get_ident() == loop_thread

        def in_thread(ctx: TaskContext, r: str) -> tuple[str, bool, Priority]:
            return r, threading.get_ident() == loop_thread, ctx.priority

        r, attempt, worker_id, same = await m.queue_task(on_loop)
        assert r in res.created and attempt == 1 and worker_id in (0, 1) and same
        r, same, prio = await m.queue_task(in_thread, priority=Priority.HIGH)
        assert r in res.created and not same and prio is Priority.HIGH
    assert sorted(res.destroyed) == sorted(res.created) == ["r0", "r1"]
    assert_nothing_left()


async def test_errors_reach_the_caller() -> None:
    async with make(Resources(), max_retries=0) as m:

        async def boom(ctx: TaskContext, r: str) -> None:
            raise KeyError("k")

        def boom_sync(ctx: TaskContext, r: str) -> None:
            raise ValueError("v")

        with pytest.raises(KeyError):
            await m.queue_task(boom)
        with pytest.raises(ValueError, match="v"):
            await m.queue_task(boom_sync)
        assert m.metrics().failed == 2


async def test_handle_api() -> None:
    async with make(Resources()) as m:
        gate = asyncio.Event()

        async def wait_gate(ctx: TaskContext, r: str) -> int:
            await gate.wait()
            return 7

        h1 = m.queue_task_async(wait_gate)
        h2 = m.queue_task_async(wait_gate)
        assert h2.id > h1.id
        seen: list[TaskHandle[Any]] = []
        h1.add_done_callback(seen.append)
        await asyncio.sleep(0.01)
        assert h1.state is TaskState.RUNNING and not h1.done()
        with pytest.raises(asyncio.InvalidStateError):
            h1.exception()
        with pytest.raises(RuntimeError):
            h1.result()  # would block the loop
        from_thread: list[int] = []
        t = threading.Thread(target=lambda: from_thread.append(h1.result(timeout=5)))
        t.start()
        gate.set()
        assert await h1 == 7 and await h1 == 7
        assert h1.state is TaskState.SUCCEEDED and h1.exception() is None
        await asyncio.to_thread(t.join)
        assert from_thread == [7]
        await asyncio.sleep(0)
        assert seen == [h1]
        assert not h1.cancel()
        assert await h2 == 7


async def test_callback_called_once_off_the_worker_path(caplog: pytest.LogCaptureFixture) -> None:
    async with make(Resources()) as m:
        calls: list[tuple[Any, Any]] = []
        done = asyncio.Event()

        async def ok(ctx: TaskContext, r: str) -> str:
            return "ok"

        async def bad(ctx: TaskContext, r: str) -> None:
            raise RuntimeError("bad")

        def sync_cb(result: Any, error: BaseException | None) -> None:
            calls.append((result, error))

        async def async_cb(result: Any, error: BaseException | None) -> None:
            await asyncio.sleep(0)
            calls.append((result, type(error)))
            done.set()

        def raising_cb(result: Any, error: BaseException | None) -> None:
            raise ZeroDivisionError("callback bug")

        m.queue_task_with_callback(ok, sync_cb)
        m.queue_task_with_callback(bad, async_cb, max_retries=0)
        with caplog.at_level(logging.ERROR, logger="taskerd.engine"):
            m.queue_task_with_callback(ok, raising_cb)
            await asyncio.wait_for(done.wait(), 5)
            await asyncio.sleep(0.01)
        assert ("ok", None) in calls and (None, RuntimeError) in calls and len(calls) == 2
        assert "callback" in caplog.text
        assert await m.queue_task(ok) == "ok"  # workers survived the raising callback


async def test_run_task_uses_idle_or_temporary_resource() -> None:
    res = Resources()
    m = make(res, worker_count=1)
    async with m:
        await asyncio.sleep(0.02)

        async def which(ctx: TaskContext, r: str) -> str:
            return r

        assert await m.run_task(which) == "r0"  # the idle worker's resource
        gate = asyncio.Event()

        async def hold(ctx: TaskContext, r: str) -> None:
            await gate.wait()

        busy = m.queue_task_async(hold)
        await asyncio.sleep(0.01)
        assert await m.run_task(which) == "r1"  # no idle worker: a temporary one
        assert "r1" in res.destroyed
        gate.set()
        await busy
        assert await m.queue_task(which) == "r0"
    assert_nothing_left()


async def test_not_started_and_sync_on_create_coroutine() -> None:
    async def create() -> str:
        await asyncio.sleep(0)
        return "async-made"

    m: TaskManager[str, str] = TaskManager(Config(on_create=create, worker_count=1))

    async def which(ctx: TaskContext, r: str) -> str:
        return r

    with pytest.raises(RuntimeError, match="not started"):
        m.queue_task_async(which)
    async with m:
        assert await m.queue_task(which) == "async-made"


@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt])
async def test_base_exception_in_a_task_is_its_error_not_the_workers(
    kind: type[BaseException],
) -> None:
    res = Resources()
    async with make(res) as m:

        async def on_loop(ctx: TaskContext, r: str) -> None:
            raise kind(3)

        def in_thread(ctx: TaskContext, r: str) -> None:
            raise kind(4)

        for fn in (on_loop, in_thread):
            handle = m.queue_task_async(fn)
            with pytest.raises(TaskError) as err:
                await handle
            assert isinstance(err.value.__cause__, kind)
            assert handle.state is TaskState.FAILED
        assert await m.queue_task(lambda ctx, r: "still serving") == "still serving"
    assert_nothing_left()
