"""Restart and Edit: run finished tasks again as new tasks, and change tasks that have not
started."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from google.protobuf.field_mask_pb2 import FieldMask

from tasker.v1 import tasker_pb2 as pb
from taskerd import validate
from taskerd.control import lives
from taskerd.core import ENGINE_PRIORITY, Core, journal_failure, seconds
from taskerd.errors import InvalidArgument, NotFound, NotNow
from taskerd.live import HELD, QUEUED, Live, state_name
from taskerd.store import JournalError

log = logging.getLogger("taskerd")

#: TaskSpec fields that Edit may change; the others (group, after, once, start_at...) decide
#: where and when a task runs, and are fixed once it is accepted.
EDITABLE = frozenset((
    "argv", "shell", "env", "cwd", "stdin", "priority", "timeout", "queue_timeout", "labels",
    "retries", "max_retries", "on_finish",
))  # fmt: skip
#: What a restart does not carry over: dependencies and a start time belong to the original.
_NOT_RESTARTED = ("after", "after_tasks", "after_any", "start_at")


async def restart(
    core: Core, ids: Sequence[int], failed: bool, specs: Sequence[pb.TaskSpec]
) -> list[int]:
    """Submit finished tasks again as new tasks (linked to their originals); their new ids."""
    chosen = list(dict.fromkeys(ids))
    if specs and len(specs) != len(chosen):
        raise InvalidArgument("specs", f"one per id: {len(chosen)} ids, {len(specs)} specs")
    if failed:
        try:
            every = await core.store.failed_ids(validate.MAX_BATCH)
        except JournalError as exc:
            raise journal_failure(exc) from None
        asked = set(chosen)
        chosen += [i for i in every if i not in asked]
    if not chosen:
        if failed:
            return []
        raise InvalidArgument("ids", "name tasks to restart, or set failed")
    if len(chosen) > validate.MAX_BATCH:
        raise InvalidArgument("ids", f"at most {validate.MAX_BATCH} tasks at once")
    for task_id in chosen:
        live = core.live.get(task_id)
        if live is not None:
            raise NotNow(
                f"task {task_id} is {state_name(live.state)}: only a finished task can be restarted"
            )
    try:
        originals = await core.store.full_specs(chosen)
    except JournalError as exc:
        raise journal_failure(exc) from None
    again: list[pb.TaskSpec] = []
    for i, task_id in enumerate(chosen):
        if task_id not in originals:
            raise NotFound(task_id)
        spec = pb.TaskSpec()
        spec.CopyFrom(specs[i] if i < len(specs) else originals[task_id])
        for name in _NOT_RESTARTED:
            spec.ClearField(name)  # type: ignore[arg-type]
        validate.spec(spec, f"specs[{i}]" if i < len(specs) else f"tasks[{i}]")
        again.append(spec)
    new = await core.submit(again, restarted_from=chosen)
    pairs = ", ".join(f"{old}->{n}" for old, n in zip(chosen, new, strict=True))
    log.info("restarted %d tasks: %s", len(new), pairs)
    return new


async def edit(core: Core, task_id: int, change: pb.TaskSpec, mask: FieldMask) -> pb.Task:
    """Change the fields ``mask`` names of a task that has not started; its record after."""
    paths = list(dict.fromkeys(mask.paths))
    if not paths:
        raise InvalidArgument("update_mask", "name the fields to change")
    for path in paths:
        if path not in EDITABLE:
            raise InvalidArgument(
                "update_mask", f"{path!r} cannot be edited (only {', '.join(sorted(EDITABLE))})"
            )
    [live] = await lives(core, [task_id], (QUEUED, *HELD), "only a task that has not started "
                         "can be edited")  # fmt: skip
    current = await _full_spec(core, live)
    edited = pb.TaskSpec()
    edited.CopyFrom(current)
    FieldMask(paths=paths).MergeMessage(
        change, edited, replace_message_field=True, replace_repeated_field=True
    )
    validate.spec(edited, "spec")
    before = (live.spec, live.env)
    if core.live.get(task_id) is not live or not (live.state == QUEUED or live.state in HELD):
        raise NotNow(f"task {task_id} started meanwhile: only a task that has not started can "
                     "be edited")  # fmt: skip
    _apply(core, live, edited)
    try:
        await core.store.replace_spec(task_id, edited)
    except JournalError as exc:
        if core.live.get(task_id) is live and before[0] is not None:
            _apply(core, live, before[0], env=before[1])
        raise journal_failure(exc) from None
    log.info("task %d edited: %s", task_id, ", ".join(paths))
    return await core.get(task_id)


async def _full_spec(core: Core, live: Live) -> pb.TaskSpec:
    """The task's whole spec (with its environment), from memory or the journal."""
    if live.spec is not None:
        spec = pb.TaskSpec()
        spec.CopyFrom(live.spec)
        if not spec.env and live.env:
            spec.env.update(live.env)
        return spec
    try:
        found = await core.store.full_specs([live.id])
    except JournalError as exc:
        raise journal_failure(exc) from None
    if live.id not in found:
        raise NotFound(live.id)
    return found[live.id]


def _apply(core: Core, live: Live, spec: pb.TaskSpec, env: object = None) -> None:
    """Memory takes an edited spec: what the queue orders and times by follows it."""
    has = spec.HasField
    live.spec = spec
    live.env = env if isinstance(env, dict) else None
    live.timeout = seconds(spec.timeout) if has("timeout") else None
    live.queue_timeout = seconds(spec.queue_timeout) if has("queue_timeout") else None
    live.labels = dict(spec.labels) if spec.labels else None
    if spec.on_finish or live.extra is not None:
        live.more().on_finish = spec.on_finish
    priority = spec.priority or pb.PRIORITY_NORMAL
    moved = priority != live.priority
    live.priority = priority
    handle = live.handle
    if handle is not None and live.state == QUEUED:
        engine = live.group.engine
        engine.retune(handle, timeout=live.timeout, max_retries=core.max_retries_left(live))
        if moved:
            engine.set_priority([handle], ENGINE_PRIORITY[priority])
    if moved or live.state == QUEUED:
        live.seq += 1
        core.publish_queued(live)
