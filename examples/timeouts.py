"""Timeouts: a task's run time limit, its queue time limit, and how long the client waits.

Run: TASKER_SOCKET=/path/to/taskerd.sock python examples/timeouts.py
"""

from __future__ import annotations

from taskerctl import Client, DeadlineExceeded, TaskTimedOut


def main() -> None:
    with Client(rpc_timeout=10) as client:  # rpc_timeout: deadline of each RPC, not of tasks
        # 1. timeout: the task is stopped when it runs too long (durations or seconds).
        try:
            client.queue_task(["sleep", "10"], timeout="300ms")
        except TaskTimedOut as err:
            print(f"task {err.result.id}: {err.result.state.name}: {err.result.error}")

        # 2. queue_timeout: give up on a task that has not started in time. The daemon has
        #    workers free here, so this one starts at once and succeeds.
        r = client.queue_task(["true"], queue_timeout=5)
        print(f"task {r.id}: started after {r.wait or 0:.3f}s, {r.state.name}")

        # 3. wait(timeout=...): the client stops waiting; the task keeps running.
        handle = client.submit(["sleep", "2"])
        try:
            handle.wait(timeout=0.2)
        except DeadlineExceeded:
            print(f"task {handle.id}: still {handle.get_state().name} after waiting 0.2s")
        handle.cancel()
        print(f"task {handle.id}: {handle.wait(10).state.name}")


if __name__ == "__main__":
    main()
