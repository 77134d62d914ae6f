"""Async submission: handles, futures, callbacks and asyncio.gather.

Run: TASKER_SOCKET=/path/to/taskerd.sock python examples/async_submit.py
"""

from __future__ import annotations

import asyncio

from taskerctl import AsyncClient, TaskFailed, TaskResult


async def main() -> None:
    async with AsyncClient() as client:
        # A handle: submit returns once the task is journaled; awaiting it waits for the result.
        handle = await client.submit(["sh", "-c", "echo hello from task; sleep 0.2"])
        print("submitted", handle.id, "state", (await handle.get_state()).name)
        result = await handle
        print("task", result.id, result.state.name, "in", f"{result.run:.2f}s")

        # Futures: queue_task_async gives asyncio Tasks; gather them.
        futures = [
            client.queue_task_async(["sh", "-c", f"exit {int(i % 3 == 2)}"]) for i in range(6)
        ]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        ok = sum(isinstance(o, TaskResult) for o in outcomes)
        failed = [o.result.id for o in outcomes if isinstance(o, TaskFailed)]
        print(f"gather: {ok} succeeded, failed ids {failed}")

        # Callbacks: called exactly once, from a task of the client; the caller never blocks.
        done = asyncio.Event()

        def on_done(result: TaskResult | None, error: BaseException | None) -> None:
            print("callback:", "error " + str(error) if error else f"ok, id {result and result.id}")
            done.set()

        client.queue_task_with_callback(["sleep", "0.1"], callback=on_done)
        print("callback registered, doing other work...")
        await asyncio.wait_for(done.wait(), 30)


if __name__ == "__main__":
    asyncio.run(main())
