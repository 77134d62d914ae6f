"""The API level a client announces, shared by taskerd and the clients.

Level 2 added the task states PAUSED and STASHED (and the ``state_changed`` event). A client
sends ``tasker-api: 2`` in its call metadata to receive them; to a call without it, taskerd
shows a paused task as RUNNING and a stashed one as QUEUED, the states clients before them
know, and sends no ``state_changed`` event.
"""

from __future__ import annotations

#: The metadata key, and the level this package's proto speaks.
KEY = "tasker-api"
LEVEL = 2
#: Call metadata that announces it (gRPC metadata: a sequence of key/value pairs).
METADATA: tuple[tuple[str, str], ...] = ((KEY, str(LEVEL)),)
