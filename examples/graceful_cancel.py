"""A context-aware task: it traps SIGTERM and exits cleanly when cancelled or timed out.

Tasker stops a task by sending SIGTERM to its process group, then SIGKILL after the daemon's
kill_grace. A task that traps TERM gets to clean up in between.

Run: TASKER_SOCKET=/path/to/taskerd.sock python examples/graceful_cancel.py
"""

from __future__ import annotations

import time

from taskerctl import Client

# The task: work in a loop; on TERM, clean up (remove its temp file) and exit.
TASK = r"""
tmp=$(mktemp)
trap 'echo "got TERM, cleaning up $tmp"; rm -f "$tmp"; exit 0' TERM
echo "working (temp file $tmp)"
while :; do sleep 0.05; done
"""


def main() -> None:
    with Client() as client:
        handle = client.submit(TASK, shell=True)
        time.sleep(0.5)  # let it start
        handle.cancel()
        result = handle.wait(30)
        out = client.get(handle.id, output=True).stdout.decode()
        print(f"cancelled task {handle.id}: {result.state.name}")
        print(out, end="")

        timed = client.submit(TASK, shell=True, timeout="500ms").wait(30)
        out = client.get(timed.id, output=True).stdout.decode()
        print(f"task {timed.id} with a 500ms timeout: {timed.state.name} ({timed.error})")
        print(out, end="")


if __name__ == "__main__":
    main()
