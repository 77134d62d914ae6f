"""Reading task events, for the daemon and its clients alike."""

from __future__ import annotations

from tasker.v1 import tasker_pb2 as pb


def ended_ids(event: pb.TaskEvent) -> list[int]:
    """The tasks whose end ``event`` reports (``finished`` or ``finished_many``); else none."""
    kind = event.WhichOneof("kind")
    if kind == "finished":
        return [event.task_id]
    if kind == "finished_many":
        return [t.id for t in event.finished_many.tasks]
    return []
