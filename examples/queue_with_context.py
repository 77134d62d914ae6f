"""A ``queue_with_context`` helper: tasks inherit the caller's context (request id, user...).

The context lives in a ``contextvars.ContextVar``, so it follows threads' and asyncio tasks' own
contexts. Each task gets it as labels (to filter with ``taskerctl list -l request_id=...``) and as
``TASKER_CTX_*`` environment variables (for the command itself).

Run: TASKER_SOCKET=/path/to/taskerd.sock python examples/queue_with_context.py
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from taskerctl import Client, TaskResult

_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "tasker_ctx", default=None
)


@contextmanager
def task_context(**values: str) -> Iterator[None]:
    """Add ``values`` to the context of every task queued inside the ``with`` block."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **values})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def queue_with_context(client: Client, cmd: str | Sequence[str], **kw: Any) -> TaskResult:
    """``client.queue_task`` with the current context as labels and ``TASKER_CTX_*`` env."""
    ctx = _CONTEXT.get() or {}
    env = dict(kw.pop("env", None) or os.environ)
    env.update({f"TASKER_CTX_{k.upper()}": v for k, v in ctx.items()})
    labels = {**ctx, **(kw.pop("labels", None) or {})}
    return client.queue_task(cmd, env=env, labels=labels, **kw)


def main() -> None:
    with Client() as client, task_context(request_id="req-7f3a", user="ada"):
        r = queue_with_context(
            client, 'echo "request $TASKER_CTX_REQUEST_ID for $TASKER_CTX_USER"', shell=True
        )
        print(f"task {r.id} labels {r.labels}")
        print("output:", client.get(r.id, output=True).stdout.decode().strip())
        tagged = client.list(labels={"request_id": "req-7f3a"})
        print(f"tasks of request req-7f3a: {[t.id for t in tagged]}")


if __name__ == "__main__":
    main()
