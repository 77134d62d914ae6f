"""Backpressure: retry a submission with exponential backoff while the queue is full.

The daemon answers RESOURCE_EXHAUSTED (``QueueFull``) when its queue is at ``--max-queue``.
Try it against a daemon started with ``--max-queue 3``.

Run: TASKER_SOCKET=/path/to/taskerd.sock python examples/backpressure.py [N]
"""

from __future__ import annotations

import random
import sys
import time

from taskerctl import Client, QueueFull, TaskHandle


def submit_with_backoff(
    client: Client, cmd: list[str], *, first: float = 0.05, cap: float = 2.0, tries: int = 20
) -> tuple[TaskHandle, int]:
    """Submit ``cmd``, sleeping first, 2*first, 4*first... (capped, with jitter) on QueueFull.

    Returns the handle and how many times the queue was full.
    """
    delay = first
    for attempt in range(tries):
        try:
            return client.submit(cmd), attempt
        except QueueFull:
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, cap)
    raise QueueFull(f"queue still full after {tries} tries")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    with Client() as client:
        handles, pushed_back = [], 0
        for _ in range(n):
            handle, full = submit_with_backoff(client, ["sleep", "0.1"])
            handles.append(handle)
            pushed_back += full
        results = [h.wait(60) for h in handles]
        print(f"{sum(r.ok for r in results)}/{n} succeeded; the queue was full {pushed_back} times")


if __name__ == "__main__":
    main()
