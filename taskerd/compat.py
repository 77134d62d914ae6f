"""What a client that predates an API level sees (see :mod:`tasker.api`).

A call without ``tasker-api: 2`` in its metadata comes from a client that knows neither PAUSED
nor STASHED (taskerctl before them fails on a state it does not know): its answers show a
paused task as RUNNING and a stashed one as QUEUED, and its streams carry no ``state_changed``
event.
"""

from __future__ import annotations

from typing import Any

from tasker import api
from tasker.v1 import tasker_pb2 as pb

#: Each state of level 2, as a level 1 client sees it.
_LEVEL_1 = {
    pb.TASK_STATE_PAUSED: pb.TASK_STATE_RUNNING,
    pb.TASK_STATE_STASHED: pb.TASK_STATE_QUEUED,
}


def old_client(context: Any) -> bool:
    """Whether the call's client announced no API level of 2 or more."""
    for key, value in context.invocation_metadata() or ():
        if key == api.KEY:
            return not (value.isdigit() and int(value) >= 2)
    return True


def state(value: pb.TaskState.ValueType) -> pb.TaskState.ValueType:
    """A state as a level 1 client knows it."""
    return _LEVEL_1.get(value, value)


def tasks(records: Any) -> None:
    """Rewrite task records (or CancelResponse results) in place for a level 1 client."""
    for record in records:
        record.state = state(record.state)


def shown(event: pb.TaskEvent) -> bool:
    """Whether a level 1 client gets this event (not a ``state_changed``; a finished task is
    never paused or stashed)."""
    return event.WhichOneof("kind") != "state_changed"
