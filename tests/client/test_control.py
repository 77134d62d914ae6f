"""Issue 11, the clients' side of queue control, against a real daemon: groups, pause and resume,
priorities, stash and enqueue, remove, signal, and the group filters; both clients. Then what
needs no daemon: bad keywords, new states, and how the new errors map."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from taskerctl import (
    AsyncClient,
    Client,
    Group,
    InvalidTask,
    ShuttingDown,
    TaskEvent,
    TaskNotFound,
    TaskState,
    Unsupported,
    WrongState,
)
from taskerctl.errors import from_rpc_error
from taskerctl.models import LIVE_STATES, TERMINAL_STATES, TaskResult
from tests.conftest import Daemon

SLEEP = ["sleep", "30"]


@pytest.fixture
def client(shared: Daemon) -> Iterator[Client]:
    with Client(shared.socket) as c:
        yield c


@pytest.fixture
async def aclient(shared: Daemon) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(shared.socket) as c:
        yield c


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def state_of(client: Client, task_id: int) -> TaskState:
    return client.get(task_id).state


def running(client: Client, task_id: int) -> None:
    until(lambda: state_of(client, task_id) == TaskState.RUNNING)


# -- the blocking client ------------------------------------------------------------------------


def test_groups_add_list_set_parallel_remove(client: Client) -> None:
    g = client.add_group("c-groups", parallel=2, max_parallel=3)
    assert isinstance(g, Group)
    assert (g.name, g.parallel, g.max_parallel, g.paused) == ("c-groups", 2, 3, False)
    names = [x.name for x in client.groups()]
    assert "default" in names and "c-groups" in names and names == sorted(names)
    with pytest.raises(WrongState, match="c-groups"):
        client.add_group("c-groups")
    with pytest.raises(InvalidTask) as bad:
        client.add_group("no spaces allowed")
    assert bad.value.field == "name"
    assert client.set_parallel(1, group="c-groups").parallel == 1
    with pytest.raises(InvalidTask) as zero:
        client.set_parallel(0, group="c-groups")
    assert zero.value.field == "parallel"
    with pytest.raises(InvalidTask) as unknown:
        client.submit(["true"], group="c-nosuch")
    assert unknown.value.field == "tasks[0].group" and "c-nosuch" in str(unknown.value)

    h = client.submit(SLEEP, group="c-groups")
    running(client, h.id)
    r = client.get(h.id)
    assert r.group == "c-groups" and r.enqueue_at is None
    assert [t.id for t in client.list(group="c-groups")] == [h.id]
    assert client.get(client.submit(["true"]).id).group == "default"
    with pytest.raises(WrongState, match="unfinished"):
        client.remove_group("c-groups")
    assert client.remove_group("c-groups", force=True) == 1
    assert client.wait(h.id, timeout=10).state == TaskState.CANCELLED
    assert "c-groups" not in [x.name for x in client.groups()]


def test_pause_and_resume_tasks_and_groups(client: Client) -> None:
    client.add_group("c-pause", parallel=1)
    h = client.submit(SLEEP, group="c-pause")
    running(client, h.id)
    assert client.pause([h.id]) == [h.id]
    assert state_of(client, h.id) == TaskState.PAUSED
    assert client.stats(group="c-pause").paused == 1
    with pytest.raises(WrongState, match="running"):
        client.pause([h.id])  # paused already
    assert client.resume([h.id]) == [h.id]
    assert state_of(client, h.id) == TaskState.RUNNING

    # A paused group pauses its running task, and starts none of its queued ones.
    assert client.pause(groups="c-pause") == [h.id]
    queued = client.submit(["true"], group="c-pause")
    (group,) = [g for g in client.groups() if g.name == "c-pause"]
    assert group.paused and group.paused_tasks == 1 and group.queued == 1
    time.sleep(0.2)
    assert state_of(client, h.id) == TaskState.PAUSED
    assert state_of(client, queued.id) == TaskState.QUEUED
    assert sorted(client.resume(groups=["c-pause"])) == [h.id]
    assert state_of(client, h.id) == TaskState.RUNNING
    assert client.cancel(h.id)
    assert client.wait(queued.id, timeout=10).ok  # the group starts tasks again

    # --wait: the group stops starting tasks, its running one goes on.
    h2 = client.submit(SLEEP, group="c-pause")
    running(client, h2.id)
    assert client.pause(groups=["c-pause"], wait=True) == []
    assert state_of(client, h2.id) == TaskState.RUNNING
    with pytest.raises(WrongState):
        client.pause([queued.id])  # finished
    assert client.pause() == [] and client.resume() == []  # nothing asked: no request
    client.resume(groups="c-pause")
    assert client.remove_group("c-pause", force=True) == 1


def test_set_priority_keeps_submission_order(client: Client) -> None:
    client.add_group("c-prio", parallel=1)
    client.pause(groups="c-prio")
    ids = [h.id for h in client.submit_many([["true"]] * 4, group="c-prio")]
    client.set_priority([ids[3], ids[1]], "high")
    assert [client.get(i).priority.name for i in ids] == ["NORMAL", "HIGH", "NORMAL", "HIGH"]
    client.resume(groups="c-prio")
    results = client.wait_many(ids, timeout=20)
    started = sorted(results, key=lambda r: r.started_at or datetime.max.replace(tzinfo=UTC))
    assert [r.id for r in started] == [ids[1], ids[3], ids[0], ids[2]]
    h = client.submit(SLEEP, group="c-prio")
    running(client, h.id)
    with pytest.raises(WrongState, match="RUNNING"):
        client.set_priority([h.id], "low")
    with pytest.raises(InvalidTask) as bad:
        client.set_priority([h.id], "urgent")
    assert bad.value.field == "priority"
    client.remove_group("c-prio", force=True)


def test_stash_enqueue_remove(client: Client) -> None:
    h = client.submit(["echo", "stashed"], stashed=True)
    assert h.get_state() == TaskState.STASHED
    with pytest.raises(WrongState):
        client.remove([h.id])  # unfinished
    client.enqueue([h.id], delay="1h")
    r = client.get(h.id)
    assert r.state == TaskState.STASHED and r.enqueue_at is not None
    assert timedelta(minutes=59) < r.enqueue_at - datetime.now(UTC) <= timedelta(hours=1)
    client.set_priority([h.id], "critical")  # a stashed task takes a new priority too
    client.enqueue([h.id])
    done = client.wait(h.id, timeout=10)
    assert done.ok and done.stdout == b"stashed\n" and done.priority.name == "CRITICAL"
    with pytest.raises(WrongState, match="stashed"):
        client.enqueue([h.id])
    assert client.remove([h.id]) == 1
    with pytest.raises(TaskNotFound):
        client.get(h.id)
    assert client.remove([]) == 0

    client.add_group("c-stash")
    many = client.submit_many(["true", "false"], stashed=True, group="c-stash")
    assert {state_of(client, m.id) for m in many} == {TaskState.STASHED}
    assert client.stats(group="c-stash").stashed == 2
    cancelled = client.cancel_many(group="c-stash", states=["stashed"])
    assert cancelled == {m.id: True for m in many}
    client.remove_group("c-stash")


def test_signal(client: Client) -> None:
    script = 'trap "echo got; exit 7" USR1; echo ready; while :; do sleep 0.05; done'
    h = client.submit(script, shell=True)
    until(lambda: client.get(h.id, output=True).stdout == b"ready\n")
    with pytest.raises(InvalidTask) as bad:
        client.signal(h.id, "NOPE")
    assert bad.value.field == "signal"
    client.signal(h.id, "usr1")
    r = client.wait(h.id, timeout=10)
    assert r.exit_code == 7 and r.stdout == b"ready\ngot\n"
    with pytest.raises(WrongState):
        client.signal(h.id, "TERM")  # finished
    h2 = client.submit(SLEEP)
    running(client, h2.id)
    client.signal(h2.id, 9)
    assert client.wait(h2.id, timeout=10).signal == 9


def test_group_filters_wait_all_stats_metrics(client: Client) -> None:
    client.add_group("c-filter", parallel=2)
    other = client.submit(SLEEP)  # default group: wait_all(group=...) does not wait for it
    scripts = ["sleep 0.3", "sleep 0.3; exit 3"]  # live when the wait starts
    mine = client.submit_many(scripts, shell=True, group="c-filter")
    results = client.wait_all(group="c-filter", timeout=10)  # else DeadlineExceeded
    assert [r.id for r in results] == [m.id for m in mine]
    assert state_of(client, other.id) in (TaskState.QUEUED, TaskState.RUNNING)
    s = client.stats(group="c-filter")
    assert [g.name for g in s.groups] == ["c-filter"] and s.groups[0].parallel == 2
    assert "c-filter" in [g.name for g in client.stats().groups]
    m = client.metrics(group="c-filter")
    assert m.completed == 2 and m.failed == 1
    assert {t.group for t in client.list(group="c-filter")} == {"c-filter"}
    assert client.cancel_many(group="c-filter") == {}  # none live
    client.cancel(other.id)
    client.remove_group("c-filter")


# -- the asyncio client: the same surface -------------------------------------------------------


async def test_async_control(aclient: AsyncClient) -> None:
    g = await aclient.add_group("a-ctl", parallel=1, max_parallel=2)
    assert (g.parallel, g.max_parallel) == (1, 2)
    assert (await aclient.set_parallel(2, group="a-ctl", max_parallel=4)).max_parallel == 4
    assert "a-ctl" in [x.name for x in await aclient.groups()]
    h = await aclient.submit(SLEEP, group="a-ctl")
    while (await h.get_state()) != TaskState.RUNNING:
        await asyncio.sleep(0.02)

    events: list[TaskEvent] = []

    async def watch() -> None:
        async for ev in aclient.stream_results([h.id]):
            events.append(ev)

    watcher = asyncio.ensure_future(watch())
    await asyncio.sleep(0.2)
    assert await aclient.pause([h.id]) == [h.id]
    assert await aclient.resume(groups=["a-ctl"], all=False) == [h.id]
    with pytest.raises(WrongState):
        await aclient.set_priority([h.id], "high")
    await aclient.signal(h.id, "TERM")
    await asyncio.wait_for(watcher, 10)
    changes = [(e.kind, e.state) for e in events if e.kind == "state_changed"]
    assert changes == [("state_changed", TaskState.PAUSED), ("state_changed", TaskState.RUNNING)]
    assert events[-1].result is not None and events[-1].result.signal == 15

    stashed = await aclient.submit(["true"], stashed=True, group="a-ctl")
    assert (await aclient.get(stashed.id)).state == TaskState.STASHED
    await aclient.enqueue([stashed.id])
    assert (await stashed).ok
    assert await aclient.remove([stashed.id, h.id]) == 2
    assert [t.group for t in await aclient.list(group="a-ctl")] == []
    assert (await aclient.stats(group="a-ctl")).groups[0].name == "a-ctl"
    assert (await aclient.metrics(group="a-ctl")).completed >= 1
    left = await aclient.submit(SLEEP, group="a-ctl")
    assert await aclient.cancel_many(group="a-ctl") == {left.id: True}
    assert [r.id for r in await aclient.wait_all(group="a-ctl", timeout=10)] in ([], [left.id])
    assert await aclient.remove_group("a-ctl") == 0
    with pytest.raises(InvalidTask):
        await aclient.remove_group("a-ctl")  # gone


# -- without a daemon ---------------------------------------------------------------------------

#: Calls that cannot make a request, and the field their InvalidTask names.
BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("submit", (["true"],), {"group": 5}, "tasks[0].group"),
    ("submit_many", (["true", {"cmd": "x", "group": 1}],), {}, "tasks[1].group"),
    ("add_group", (5,), {}, "name"),
    ("add_group", ("g",), {"parallel": -1}, "parallel"),
    ("remove_group", (None,), {}, "name"),
    ("set_parallel", (-1,), {}, "parallel"),
    ("set_parallel", (2,), {"max_parallel": 2**32}, "max_parallel"),
    ("set_parallel", (2,), {"group": 3}, "group"),
    ("pause", (["7"],), {}, "ids"),
    ("pause", (), {"groups": [1]}, "groups"),
    ("resume", ([-1],), {}, "ids"),
    ("set_priority", ([1], "urgent"), {}, "priority"),
    ("enqueue", ([1],), {"delay": "soon"}, "delay"),
    ("remove", ([True],), {}, "ids"),
    ("signal", (1, None), {}, "signal"),
    ("signal", (0.5, "TERM"), {}, "id"),
    ("list", (), {"group": 1}, "group"),
    ("cancel_many", (), {"group": ["g"]}, "group"),
    ("stats", (), {"group": 1}, "group"),
]


@pytest.mark.parametrize(("method", "args", "kw", "field"), BAD_CALLS)
def test_bad_keywords_name_their_field(
    tmp_path: Path, method: str, args: tuple[Any, ...], kw: dict[str, Any], field: str
) -> None:
    # A socket nobody serves: the error comes before any RPC (else DaemonUnavailable).
    with Client(tmp_path / "none.sock") as c, pytest.raises(InvalidTask) as err:
        getattr(c, method)(*args, **kw)
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")


@pytest.mark.parametrize(("method", "args", "kw", "field"), BAD_CALLS)
async def test_bad_keywords_name_their_field_async(
    tmp_path: Path, method: str, args: tuple[Any, ...], kw: dict[str, Any], field: str
) -> None:
    async with AsyncClient(tmp_path / "none.sock") as c:
        with pytest.raises(InvalidTask) as err:
            await getattr(c, method)(*args, **kw)
    assert err.value.field == field


def test_new_states_and_unknown_numbers() -> None:
    live = {"QUEUED", "RUNNING", "PAUSED", "STASHED", "WAITING", "SCHEDULED"}
    assert {s.name for s in LIVE_STATES} == live
    assert not LIVE_STATES & TERMINAL_STATES
    assert TaskState.PAUSED == pb.TASK_STATE_PAUSED and TaskState.STASHED == 9
    for state in (pb.TASK_STATE_PAUSED, pb.TASK_STATE_STASHED):
        r = TaskResult.from_proto(pb.Task(id=1, state=state, group="gpu"))
        assert not r.done and r.exit_status == 1 and r.group == "gpu"
    # A newer daemon's state or priority: a member that compares as its number, not an error.
    future = TaskResult.from_proto(pb.Task(id=2, state=42, spec=pb.TaskSpec(priority=7)))  # type: ignore[arg-type]
    assert future.state == 42 and future.state.name == "UNKNOWN_42" and str(future.state)
    assert future.priority == 7 and not future.done and future.to_json()["state"] == "unknown_42"
    assert TaskState(42) is TaskState(42)
    # An old daemon fills no group: the task is the default group's.
    assert TaskResult.from_proto(pb.Task(id=3)).group == "default"
    ev = TaskEvent.from_proto(
        pb.TaskEvent(
            task_id=4,
            state_changed=pb.TaskEvent.StateChanged(state=pb.TASK_STATE_PAUSED, reason="why"),
        )
    )
    assert (ev.kind, ev.state, ev.reason) == ("state_changed", TaskState.PAUSED, "why")


class _Err(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_failed_precondition_and_unimplemented_map_to_their_errors() -> None:
    pre = grpc.StatusCode.FAILED_PRECONDITION
    wrong = from_rpc_error(_Err(pre, "task 7 is SUCCEEDED: only a running task"), "/s")
    assert type(wrong) is WrongState and wrong.exit_code == 1 and "task 7" in str(wrong)
    down = from_rpc_error(_Err(pre, "taskerd is shutting down"), "/s")
    assert type(down) is ShuttingDown and down.exit_code == 69
    old = from_rpc_error(_Err(grpc.StatusCode.UNIMPLEMENTED, "Method not found!"), "/s")
    assert type(old) is Unsupported and "does not support" in str(old) and old.exit_code == 1
