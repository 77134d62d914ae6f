"""What a client that predates an API level sees (see :mod:`tasker.api`).

A call's client announces its level with ``tasker-api: N`` in its metadata (none: level 1). To
a client below level 3, a waiting or scheduled task shows QUEUED; below level 2, a paused task
also shows RUNNING and a stashed one QUEUED, and its streams carry no ``state_changed`` event
(taskerctl before them fails on a state it does not know).
"""

from __future__ import annotations

from typing import Any

from tasker import api
from tasker.v1 import tasker_pb2 as pb

#: Each state, as a client of each older level sees it.
_SEEN: dict[int, dict[int, pb.TaskState.ValueType]] = {
    1: {
        pb.TASK_STATE_PAUSED: pb.TASK_STATE_RUNNING,
        pb.TASK_STATE_STASHED: pb.TASK_STATE_QUEUED,
        pb.TASK_STATE_WAITING: pb.TASK_STATE_QUEUED,
        pb.TASK_STATE_SCHEDULED: pb.TASK_STATE_QUEUED,
    },
    2: {
        pb.TASK_STATE_WAITING: pb.TASK_STATE_QUEUED,
        pb.TASK_STATE_SCHEDULED: pb.TASK_STATE_QUEUED,
    },
}


def level(context: Any) -> int:
    """The API level the call's client announced (1 if none)."""
    for key, value in context.invocation_metadata() or ():
        if key == api.KEY:
            return min(int(value), api.LEVEL) if value.isdigit() and value != "0" else 1
    return 1


def state(value: pb.TaskState.ValueType, seen_by: int) -> pb.TaskState.ValueType:
    """A state as a client of level ``seen_by`` knows it."""
    return _SEEN[seen_by].get(value, value) if seen_by in _SEEN else value


def tasks(records: Any, seen_by: int) -> None:
    """Rewrite task records (or CancelResponse results) in place for a client of level
    ``seen_by``."""
    if seen_by in _SEEN:
        for record in records:
            record.state = state(record.state, seen_by)


def shown(event: pb.TaskEvent, seen_by: int) -> bool:
    """Whether a client of level ``seen_by`` gets this event (below 2, no ``state_changed``; a
    finished task is never in a newer state)."""
    return seen_by >= 2 or event.WhichOneof("kind") != "state_changed"
