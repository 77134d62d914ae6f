"""Batch processing: submit many tasks in a few RPCs, then follow them all on one stream.

Run: TASKER_SOCKET=/path/to/taskerd.sock python examples/batch.py [N]
"""

from __future__ import annotations

import sys
import time

from taskerctl import Client


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with Client() as client:
        t0 = time.perf_counter()
        # Shell commands, 100 per Submit RPC; all share the labels.
        handles = client.submit_many(
            (f"echo $(({i} * {i}))" for i in range(n)),
            batch_size=100,
            shell=True,
            labels={"example": "batch"},
        )
        submitted = time.perf_counter() - t0
        ids = [h.id for h in handles]
        # One StreamResults for all of them: no polling.
        finished = {}
        for ev in client.stream_results(ids):
            if ev.kind == "finished" and ev.result is not None:
                finished[ev.task_id] = ev.result
        elapsed = time.perf_counter() - t0
        ok = sum(r.ok for r in finished.values())
        print(f"submitted {n} tasks in {submitted:.2f}s; {ok}/{n} succeeded in {elapsed:.2f}s")
        last = client.get(ids[-1], output=True)
        print(f"task {last.id} printed {last.stdout.decode().strip()}")


if __name__ == "__main__":
    main()
