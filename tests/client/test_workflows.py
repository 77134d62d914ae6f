"""Issue 12, the clients' side of workflows, against a real daemon: dependencies (``after``,
``after_any``, ``after_items`` across batches), start times (``start_at``, ``delay``), restart (with
new specs), edit, and schedules; both clients. Then what needs no daemon: bad keywords name their
field before any RPC, times, and the new fields of the models."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tasker.v1 import tasker_pb2 as pb
from taskerctl import AsyncClient, Client, Schedule, TaskState
from taskerctl.errors import InvalidTask, TaskNotFound, WrongState
from taskerctl.models import LIVE_STATES, TERMINAL_STATES, TaskResult, parse_time
from tests.client import test_control as control
from tests.client.test_control import running, until
from tests.conftest import Daemon

SLEEP = ["sleep", "30"]


@pytest.fixture
def client(shared: Daemon) -> Iterator[Client]:
    """A blocking client of the module's daemon (the async test makes its own)."""
    c = Client(shared.socket)
    yield c
    c.close()


def _started(r: TaskResult) -> datetime:
    assert r.started_at is not None, r
    return r.started_at


def _ended(r: TaskResult) -> datetime:
    assert r.ended_at is not None, r
    return r.ended_at


# -- the blocking client ------------------------------------------------------------------------


def test_after_waits_for_success_else_cancels(client: Client) -> None:
    first = client.submit("sleep 0.3; exit 3", shell=True)
    ok = client.submit("sleep 0.2", shell=True)
    dependant = client.submit(["true"], after=[first.id])
    chained = client.submit(["true"], after=[ok.id, first.id], after_any=True)
    then = client.submit(["echo", "then"], after=ok.id)  # one id will do
    waiting = client.get(dependant.id)
    assert waiting.state == TaskState.WAITING and waiting.waiting_on == (first.id,)
    assert waiting.after == (first.id,) and not waiting.done and waiting.exit_status == 1
    assert client.get(chained.id).after_any
    gone = client.wait(dependant.id, timeout=10)
    assert gone.state == TaskState.CANCELLED and str(first.id) in gone.error, gone.error
    anyway = client.wait(chained.id, timeout=10)
    assert anyway.ok and _started(anyway) >= _ended(client.get(first.id))
    done = client.wait(then.id, timeout=10)
    assert done.ok and done.stdout == b"then\n" and _started(done) >= _ended(client.get(ok.id))


def test_submit_many_after_items_across_batches(client: Client) -> None:
    items: list[Any] = [
        "sleep 0.2",
        {"cmd": "echo b", "after_items": [0]},  # the same request: after_tasks
        {"cmd": "echo c", "after_items": [0, 1]},  # in the request before: after, by id
        {"cmd": "echo d", "after_items": 2},  # the same request again
    ]
    ids = [h.id for h in client.submit_many(items, batch_size=2, shell=True)]
    assert client.get(ids[2]).after == (ids[0], ids[1])  # the earlier request's, by their ids
    assert client.get(ids[3]).after == ()
    results = client.wait_many(ids, timeout=10)
    assert all(r.ok for r in results), results
    for before, after in ((0, 1), (1, 2), (2, 3)):
        assert _started(results[after]) >= _ended(results[before])


def test_start_at_and_delay(client: Client) -> None:
    later = client.submit(["true"], delay="1h")
    r = client.get(later.id)
    assert r.state == TaskState.SCHEDULED and r.start_at is not None and not r.done
    assert timedelta(minutes=59) < r.start_at - datetime.now(UTC) <= timedelta(hours=1)
    at = time.time() + 0.5
    soon = client.submit(["true"], start_at=at)
    assert client.get(soon.id).state == TaskState.SCHEDULED
    done = client.wait(soon.id, timeout=10)
    assert done.ok and _started(done).timestamp() >= at - 0.05
    assert client.wait(client.submit(["true"], start_at=datetime.now() - timedelta(1)).id).ok
    assert client.cancel(later.id)


def test_restart_and_new_specs(client: Client) -> None:
    original = client.submit(["sh", "-c", "echo $0; exit 4", "first"], labels={"w": "r"})
    assert client.wait(original.id, timeout=10).exit_code == 4
    (again,) = client.restart([original.id])
    r = client.wait(again.id, timeout=10)
    assert (r.exit_code, r.stdout, r.restarted_from) == (4, b"first\n", original.id)
    assert r.labels == {"w": "r"} and client.get(original.id).restarted_from is None
    changed = client.restart(
        [original.id, again.id], specs=[{"cmd": ["echo", "new"], "timeout": "5s"}, ["true"]]
    )
    new, plain = client.wait_many([h.id for h in changed], output=True, timeout=10)
    assert new.ok and new.stdout == b"new\n" and new.timeout == 5 and new.labels == {"w": "r"}
    assert plain.ok and plain.restarted_from == again.id
    failed = {h.id for h in client.restart(failed=True)}  # every FAILED one, ours among them
    assert {client.get(i).restarted_from for i in failed} >= {original.id, again.id}
    client.wait_many(failed, timeout=10)
    live = client.submit(SLEEP)
    with pytest.raises(WrongState, match=str(live.id)):
        client.restart([live.id])
    client.cancel(live.id)
    with pytest.raises(TaskNotFound):
        client.restart([10**12])
    assert client.restart([]) == []  # nothing asked: no request


def test_edit_a_task_that_has_not_started(client: Client) -> None:
    h = client.submit(["echo", "old"], delay="1h", labels={"a": "1"})
    r = client.edit(
        h.id, cmd="echo edited", priority="high", timeout="1m", labels={"b": "2"}, env={"X": "y"}
    )
    assert r.id == h.id and r.state == TaskState.SCHEDULED
    assert (r.argv, r.priority.name, r.timeout, r.labels) == (
        ("echo", "edited"), "HIGH", 60, {"b": "2"},
    )  # fmt: skip
    assert client.edit(h.id, timeout=None).timeout is None  # None: no limit
    stashed = client.submit(["true"], stashed=True)
    assert client.edit(stashed.id, argv=["echo", "s"], shell=False).argv == ("echo", "s")
    client.enqueue([stashed.id])
    assert client.wait(stashed.id, timeout=10).stdout == b"s\n"
    with pytest.raises(WrongState):
        client.edit(stashed.id, priority="low")  # finished
    live = client.submit(SLEEP)
    running(client, live.id)
    with pytest.raises(WrongState, match="RUNNING"):
        client.edit(live.id, priority="low")
    client.cancel_many([live.id, h.id])


def test_schedules_add_list_skip_remove(client: Client) -> None:
    s = client.add_schedule("sleep 1.6", shell=True, every="1s", labels={"s": "1"})
    assert isinstance(s, Schedule) and (s.every, s.cron, s.overlap) == (1.0, "", False)
    assert s.labels == {"s": "1"} and s.command == "sleep 1.6" and s.next_at is not None
    c = client.add_schedule(["true"], cron="*/5 * * * *", start_at=time.time() + 3600)
    assert c.cron == "*/5 * * * *" and c.when == "cron */5 * * * *" and c.every is None
    until(lambda: _one(client, s.id).skipped >= 1, timeout=10)  # the first still runs
    now = _one(client, s.id)
    assert now.submitted >= 1 and now.last_task_id is not None
    task = client.get(now.last_task_id)
    assert task.schedule_id == s.id and task.labels == {"s": "1"}
    assert [x.id for x in client.schedules()] == sorted(x.id for x in client.schedules())
    client.remove_schedule(s.id)
    client.remove_schedule(c.id)
    assert s.id not in [x.id for x in client.schedules()]
    with pytest.raises(TaskNotFound, match="schedule"):
        client.remove_schedule(s.id)
    with pytest.raises(InvalidTask) as bad:
        client.add_schedule("true", cron="every tuesday")
    assert bad.value.field == "cron"
    client.cancel_many(labels={"s": "1"})


def _one(client: Client, schedule_id: int) -> Schedule:
    (found,) = [x for x in client.schedules() if x.id == schedule_id]
    return found


# -- the asyncio client: the same surface -------------------------------------------------------


async def test_async_workflows(shared: Daemon) -> None:
    async with AsyncClient(shared.socket) as aclient:
        await _async_workflows(aclient)


async def _async_workflows(aclient: AsyncClient) -> None:
    first = await aclient.submit(["sh", "-c", "sleep 0.2; exit 1"])
    dependant = await aclient.submit(["true"], after=[first.id])
    anyway = await aclient.submit(["true"], after=[first.id], after_any=True)
    items: list[Any] = ["true", {"cmd": ["echo", "x"], "after_items": [0]}]
    pair = await aclient.submit_many(items, batch_size=1)
    assert (await aclient.get(pair[1].id)).after == (pair[0].id,)
    assert (await aclient.get(dependant.id)).state == TaskState.WAITING
    assert (await dependant).state == TaskState.CANCELLED
    assert (await anyway).ok and (await pair[1]).stdout == b"x\n"

    later = await aclient.submit(["echo", "a"], delay=3600)
    assert (await aclient.get(later.id)).state == TaskState.SCHEDULED
    edited = await aclient.edit(later.id, cmd=["echo", "b"], retries=2)
    assert edited.argv == ("echo", "b") and edited.retries == 2
    with pytest.raises(WrongState):
        await aclient.restart([later.id])  # not finished
    (again,) = await aclient.restart([first.id], specs=[{"cmd": "exit 0", "shell": True}])
    assert (await again).ok and (await aclient.get(again.id)).restarted_from == first.id

    s = await aclient.add_schedule(["true"], every=3600, overlap=True, start_at="23:59")
    assert s.overlap and s.next_at is not None and s.next_at > datetime.now(UTC)
    assert s.id in [x.id for x in await aclient.schedules()]
    await aclient.remove_schedule(s.id)
    with pytest.raises(TaskNotFound):
        await aclient.remove_schedule(s.id)
    await aclient.cancel(later.id)
    await asyncio.sleep(0)


# -- without a daemon ---------------------------------------------------------------------------

#: Calls that cannot make a request, and the field their InvalidTask names.
BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("submit", (["true"],), {"after": [-1]}, "tasks[0].after"),
    ("submit", (["true"],), {"after": ["3"]}, "tasks[0].after"),
    ("submit", (["true"],), {"start_at": "soon"}, "tasks[0].start_at"),
    ("submit", (["true"],), {"start_at": "25:00"}, "tasks[0].start_at"),
    ("submit", (["true"],), {"delay": "later"}, "tasks[0].start_at"),
    ("submit", (["true"],), {"delay": -5}, "tasks[0].start_at"),
    ("submit", (["true"],), {"delay": 5, "start_at": 1.0}, "tasks[0].start_at"),
    ("submit", (["true"],), {"on_finish": 5}, "tasks[0].on_finish"),
    ("submit_many", (["true", {"cmd": "x", "after_items": [1]}],), {}, "tasks[1].after_tasks"),
    ("submit_many", (["true", {"cmd": "x", "after_items": [-1]}],), {}, "tasks[1].after_tasks"),
    ("restart", (["7"],), {}, "ids"),
    ("restart", ([1, 2],), {"specs": [["true"]]}, "specs"),
    ("restart", ([1],), {"specs": [{"group": "g"}]}, "update_mask"),
    ("restart", ([1],), {"specs": [{"timeout": "x"}]}, "specs[0].timeout"),
    ("edit", (1,), {}, "update_mask"),
    ("edit", (1,), {"after": [2]}, "update_mask"),
    ("edit", (1,), {"timeout": "x"}, "spec.timeout"),
    ("edit", (1,), {"cmd": "a", "argv": ["b"]}, "spec.argv"),
    ("edit", (1,), {"priority": "asap"}, "spec.priority"),
    ("edit", (-1,), {"priority": "low"}, "id"),
    ("add_schedule", ("true",), {}, "every"),
    ("add_schedule", ("true",), {"every": 5, "cron": "* * * * *"}, "every"),
    ("add_schedule", ("true",), {"every": "often"}, "every"),
    ("add_schedule", ("true",), {"cron": 5}, "cron"),
    ("add_schedule", ("true",), {"every": 5, "start_at": "noon"}, "start_at"),
    ("add_schedule", ("true",), {"every": 5, "retries": -1}, "task.retries"),
    ("remove_schedule", (-1,), {}, "id"),
]


@pytest.mark.parametrize(("method", "args", "kw", "field"), BAD_CALLS)
def test_bad_workflow_keywords_name_their_field(
    tmp_path: Path, method: str, args: tuple[Any, ...], kw: dict[str, Any], field: str
) -> None:
    # As issue 11's: a socket nobody serves, so the error must come before any RPC.
    control.test_bad_keywords_name_their_field(tmp_path, method, args, kw, field)


@pytest.mark.parametrize(("method", "args", "kw", "field"), BAD_CALLS)
async def test_bad_workflow_keywords_name_their_field_async(
    tmp_path: Path, method: str, args: tuple[Any, ...], kw: dict[str, Any], field: str
) -> None:
    await control.test_bad_keywords_name_their_field_async(tmp_path, method, args, kw, field)


def test_parse_time() -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).astimezone()
    local = now.replace(hour=13, minute=30, second=0)
    assert parse_time("13:30", now) == local  # later today
    assert parse_time("11:00:05", now).date() == (now + timedelta(days=1)).date()  # tomorrow
    assert parse_time("12:00", now) > now  # exactly now is past: tomorrow
    assert parse_time("1767225600") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time(1767225600.5).timestamp() == 1767225600.5
    assert parse_time("2026-12-24T18:00+01:00") == datetime(2026, 12, 24, 17, tzinfo=UTC)
    naive = datetime(2026, 12, 24, 18)
    assert parse_time("2026-12-24 18:00") == parse_time(naive) == naive.astimezone()
    for bad in ("24:00", "9:75", "soon", "", "nan", "1e30"):
        with pytest.raises(ValueError):
            parse_time(bad)
    with pytest.raises(TypeError):
        parse_time(None)  # type: ignore[arg-type]


def test_new_states_and_fields() -> None:
    assert {TaskState.WAITING, TaskState.SCHEDULED} <= LIVE_STATES
    assert not LIVE_STATES & TERMINAL_STATES
    assert TaskState.WAITING == pb.TASK_STATE_WAITING and TaskState.SCHEDULED == 11
    spec = pb.TaskSpec(argv=["true"], after=[3, 5], after_any=True, on_finish="echo done")
    spec.start_at.FromSeconds(1767225600)
    task = pb.Task(
        id=9, state=pb.TASK_STATE_WAITING, spec=spec, waiting_on=[5], restarted_from=2,
        schedule_id=4,
    )  # fmt: skip
    r = TaskResult.from_proto(task)
    assert (r.after, r.after_any, r.waiting_on, r.on_finish) == ((3, 5), True, (5,), "echo done")
    assert (r.restarted_from, r.schedule_id) == (2, 4) and not r.done and r.exit_status == 1
    assert r.start_at == datetime(2026, 1, 1, tzinfo=UTC)
    doc = json.loads(json.dumps(r.to_json()))
    assert doc["waiting_on"] == [5] and doc["start_at"].startswith("2026-01-01")
    none = TaskResult.from_proto(pb.Task(id=1, state=pb.TASK_STATE_SCHEDULED))
    assert (none.restarted_from, none.schedule_id, none.start_at, none.after) == (None,) * 3 + ((),)

    msg = pb.Schedule(
        id=3, task=pb.TaskSpec(argv=["echo hi"], shell=True), cron="0 * * * *", submitted=2,
        skipped=1, last_task_id=0,
    )  # fmt: skip
    s = Schedule.from_proto(msg)
    assert (s.command, s.when, s.last_task_id, s.every, s.group) == (
        "echo hi", "cron 0 * * * *", None, None, "default",
    )  # fmt: skip
    assert json.loads(json.dumps(s.to_json()))["argv"] == ["echo hi"]
    every = pb.Schedule(id=4, task=pb.TaskSpec(argv=["true"]))
    every.every.FromSeconds(90)
    assert Schedule.from_proto(every).when == "every 1m30s"
