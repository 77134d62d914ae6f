"""The API level a client announces, shared by taskerd and the clients.

Level 2 added the task states PAUSED and STASHED (and the ``state_changed`` event), level 3
WAITING and SCHEDULED. A client sends ``tasker-api: 3`` in its call metadata to receive them
all; to a call that announces less (or nothing), taskerd shows each newer state as the
nearest one such a client knows (PAUSED as RUNNING; STASHED, WAITING and SCHEDULED as
QUEUED), and below level 2 sends no ``state_changed`` event.
"""

from __future__ import annotations

#: The metadata key, and the level this package's proto speaks.
KEY = "tasker-api"
LEVEL = 3
#: Call metadata that announces it (gRPC metadata: a sequence of key/value pairs).
METADATA: tuple[tuple[str, str], ...] = ((KEY, str(LEVEL)),)
