"""Workflows against a real daemon: dependencies, delayed starts, schedules, restart, edit and
on-finish hooks, and what of them survives a restart and a ``kill -9``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon
from tests.daemon.util import code, dur, poll_state, spec, submit, until, wait

MakeDaemon = Callable[..., Daemon]
OK, FAILED, CANCELLED = pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED
QUEUED, RUNNING = pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING
WAITING, SCHEDULED = pb.TASK_STATE_WAITING, pb.TASK_STATE_SCHEDULED


def at(seconds_from_now: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int((time.time() + seconds_from_now) * 1e9))
    return stamp


def get(d: Daemon, task_id: int) -> pb.Task:
    return d.stub.Get(pb.GetRequest(id=task_id), timeout=5)


@pytest.fixture
def d(make_daemon: MakeDaemon) -> Daemon:
    return make_daemon("--workers", "2")


# ----------------------------------------------------------------- dependencies


def test_a_dependant_waits_then_runs(d: Daemon) -> None:
    stub = d.stub
    first = submit(stub, spec("sleep", "0.4"))[0]
    second = submit(stub, spec("true", after=[first]))[0]
    waiting = get(d, second)
    assert waiting.state == WAITING and list(waiting.waiting_on) == [first]
    assert stub.Stats(pb.StatsRequest()).waiting == 1
    done = wait(stub, first, second)
    assert done[second].state == OK
    assert done[second].started_at.ToNanoseconds() >= done[first].ended_at.ToNanoseconds()


def test_a_failed_dependency_cancels_its_dependants_transitively(d: Daemon) -> None:
    stub = d.stub
    first = submit(stub, spec("sh", "-c", "sleep 0.2; exit 3"))[0]
    second = submit(stub, spec("true", after=[first]))[0]
    third = submit(stub, spec("true", after=[second]))[0]
    either = submit(stub, spec("true", after=[first], after_any=True))[0]
    done = wait(stub, first, second, third, either)
    assert done[first].state == FAILED
    assert done[second].state == CANCELLED and f"dependency {first} ended FAILED" in (
        done[second].error
    )
    assert done[third].state == CANCELLED and f"dependency {second} ended CANCELLED" in (
        done[third].error
    )
    assert done[either].state == OK  # after_any: however it ended
    assert not done[second].HasField("started_at")


def test_a_pipeline_in_one_request(d: Daemon) -> None:
    stub = d.stub
    log = d.dir / "order"
    step = "echo $STEP >> " + str(log)
    ids = list(stub.Submit(pb.SubmitRequest(tasks=[
        spec("sleep 0.5; " + step, shell=True, env={"STEP": "build"}),
        spec(step, shell=True, env={"STEP": "test"}, after_tasks=[0]),
        spec(step, shell=True, env={"STEP": "deploy"}, after_tasks=[1]),
    ])).ids)  # fmt: skip
    assert list(get(d, ids[2]).waiting_on) == [ids[1]]
    assert {t.state for t in wait(stub, *ids).values()} == {OK}
    assert log.read_text().split() == ["build", "test", "deploy"]


def test_dependencies_that_ended_count_at_once(d: Daemon) -> None:
    stub = d.stub
    good, bad = submit(stub, spec("true"), spec("false"))
    wait(stub, good, bad)
    ran = submit(stub, spec("true", after=[good]))[0]
    never = submit(stub, spec("true", after=[good, bad]))[0]
    done = wait(stub, ran, never)
    assert done[ran].state == OK
    assert done[never].state == CANCELLED and f"dependency {bad} ended FAILED" in done[never].error


def test_bad_dependencies_are_refused(d: Daemon) -> None:
    stub = d.stub
    status, message = code(lambda: submit(stub, spec("true", after=[10**6])))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("tasks[0].after:")
    status, message = code(lambda: submit(stub, spec("true", after_tasks=[0])))  # itself
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("tasks[0].after_tasks:")
    request = pb.SubmitRequest(tasks=[spec("true", after_tasks=[1]), spec("true")])  # a later one
    status, message = code(lambda: stub.Submit(request))
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("tasks[0].after_tasks:")
    assert stub.Stats(pb.StatsRequest()).waiting == 0  # nothing accepted


def test_a_long_chain_and_a_wide_fan_in(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--workers", "4")
    stub = d.stub
    n = 1_000
    chain = [spec("true")] + [spec("true", after_tasks=[i]) for i in range(n - 1)]
    t0 = time.monotonic()
    ids = list(stub.Submit(pb.SubmitRequest(tasks=chain), timeout=30).ids)
    fan = list(stub.Submit(pb.SubmitRequest(tasks=[spec("true")] * n), timeout=30).ids)
    last = submit(stub, spec("true", after=fan))[0]
    done = wait(stub, *ids, *fan, last, timeout=120)
    assert {t.state for t in done.values()} == {OK}
    starts = [done[i].started_at.ToNanoseconds() for i in ids]
    assert starts == sorted(starts)
    assert time.monotonic() - t0 < 60


# ----------------------------------------------------------------- delayed starts


def test_a_delayed_task_is_scheduled_until_its_time(d: Daemon) -> None:
    stub = d.stub
    later = submit(stub, spec("true", start_at=at(0.8)))[0]
    past = submit(stub, spec("true", start_at=at(-60)))[0]
    task = get(d, later)
    assert task.state == SCHEDULED and task.spec.HasField("start_at")
    assert stub.Stats(pb.StatsRequest()).scheduled == 1
    done = wait(stub, later, past)
    assert done[past].state == OK
    assert done[later].started_at.ToNanoseconds() >= task.spec.start_at.ToNanoseconds()


@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_waiting_and_scheduled_tasks_survive(make_daemon: MakeDaemon, how: str) -> None:
    d = make_daemon("--workers", "1", config='stop_timeout = "0s"\n')  # first is stopped
    stub = d.stub
    first = submit(stub, spec("sleep", "1"))[0]
    poll_state(stub, first, {RUNNING})
    second = submit(stub, spec("true", after=[first]))[0]
    doomed = submit(stub, spec("true", after=[first]))[0]
    stub.Cancel(pb.CancelRequest(id=doomed))
    later = submit(stub, spec("true", start_at=at(4.0)))[0]
    both = submit(stub, spec("true", after=[second], start_at=at(1.0)))[0]
    t0 = time.monotonic()
    d.come_back(how)
    stub = d.stub
    assert get(d, second).state == WAITING and list(get(d, second).waiting_on) == [first]
    if time.monotonic() - t0 < 3.5:  # else its time came while the daemon started
        assert get(d, later).state == SCHEDULED
    done = wait(stub, first, second, later, both, timeout=30)
    assert {t.state for t in done.values()} == {OK}
    assert done[later].started_at.ToNanoseconds() >= get(d, later).spec.start_at.ToNanoseconds()
    assert done[both].started_at.ToNanoseconds() >= done[second].ended_at.ToNanoseconds()


# ----------------------------------------------------------------- schedules


def test_a_schedule_submits_and_skips_overlapping_occurrences(d: Daemon) -> None:
    stub = d.stub
    made = stub.AddSchedule(pb.AddScheduleRequest(task=spec("sleep", "1.6"), every=dur(1)))
    assert made.id > 0 and made.HasField("next_at")
    until(lambda: stub.ListSchedules(pb.ListSchedulesRequest()).schedules[0].skipped >= 1,
          timeout=10, what="a skipped occurrence")  # fmt: skip
    sched = stub.ListSchedules(pb.ListSchedulesRequest()).schedules[0]
    assert sched.submitted >= 1 and sched.last_task_id
    assert get(d, sched.last_task_id).schedule_id == made.id
    stub.RemoveSchedule(pb.RemoveScheduleRequest(id=made.id))
    assert list(stub.ListSchedules(pb.ListSchedulesRequest()).schedules) == []
    assert code(lambda: stub.RemoveSchedule(pb.RemoveScheduleRequest(id=made.id)))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    stub.Cancel(pb.CancelRequest(all=True))


def test_schedules_are_checked(d: Daemon) -> None:
    stub = d.stub
    status, message = code(
        lambda: stub.AddSchedule(pb.AddScheduleRequest(task=spec("true"), cron="61 * * * *"))
    )
    assert status == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("cron:")
    status, message = code(lambda: stub.AddSchedule(pb.AddScheduleRequest(task=spec("true"))))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("every:")
    request = pb.AddScheduleRequest(task=spec("true"), every=dur(0.1))
    assert code(lambda: stub.AddSchedule(request))[0] == grpc.StatusCode.INVALID_ARGUMENT
    hourly = stub.AddSchedule(pb.AddScheduleRequest(task=spec("true"), cron="0 * * * *"))
    assert 0 < hourly.next_at.seconds - time.time() <= 3600


def test_a_schedule_survives_kill9(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--workers", "1")
    made = d.stub.AddSchedule(
        pb.AddScheduleRequest(task=spec("true"), every=dur(3600), start_at=at(1.0))
    )
    d.kill9()
    d.start()
    until(lambda: d.stub.ListSchedules(pb.ListSchedulesRequest()).schedules[0].submitted == 1,
          timeout=10, what="the occurrence")  # fmt: skip
    sched = d.stub.ListSchedules(pb.ListSchedulesRequest()).schedules[0]
    assert sched.id == made.id and sched.next_at.seconds > time.time() + 3000
    assert wait(d.stub, sched.last_task_id)[sched.last_task_id].state == OK


# ----------------------------------------------------------------- restart and edit


def test_restart_runs_finished_tasks_again(d: Daemon) -> None:
    stub = d.stub
    first = submit(stub, spec("sh", "-c", "echo $X; exit 2", env={"X": "hi"}, labels={"k": "v"}))[0]
    wait(stub, first)
    [again] = stub.Restart(pb.RestartRequest(ids=[first])).ids
    done = wait(stub, again)[again]
    assert done.restarted_from == first and done.state == FAILED
    assert dict(done.spec.labels) == {"k": "v"}
    assert get(d, again).spec.env["X"] == "hi"
    every = stub.Restart(pb.RestartRequest(failed=True)).ids
    assert len(every) == 2  # both failed ones
    wait(stub, *every)
    running = submit(stub, spec("sleep", "30"))[0]
    status, message = code(lambda: stub.Restart(pb.RestartRequest(ids=[running])))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "RUNNING" in message
    edited = pb.TaskSpec(argv=["true"])
    [fixed] = stub.Restart(pb.RestartRequest(ids=[first], specs=[edited])).ids
    assert wait(stub, fixed)[fixed].state == OK
    stub.Cancel(pb.CancelRequest(id=running))


def test_edit_changes_a_task_that_has_not_started(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--workers", "1")
    stub = d.stub
    blocker = submit(stub, spec("sleep", "30"))[0]
    poll_state(stub, blocker, {RUNNING})
    queued = submit(stub, spec("false"))[0]
    change = pb.EditRequest(
        id=queued, spec=pb.TaskSpec(argv=["true"], priority=pb.PRIORITY_HIGH),
        update_mask=FieldMask(paths=["argv", "priority"]),
    )  # fmt: skip
    task = stub.Edit(change)
    assert list(task.spec.argv) == ["true"] and task.spec.priority == pb.PRIORITY_HIGH
    regroup = pb.EditRequest(
        id=queued, spec=pb.TaskSpec(group="x"), update_mask=FieldMask(paths=["group"])
    )
    status, message = code(lambda: stub.Edit(regroup))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("update_mask:")
    started = pb.EditRequest(
        id=blocker, spec=pb.TaskSpec(argv=["true"]), update_mask=FieldMask(paths=["argv"])
    )
    status, _ = code(lambda: stub.Edit(started))
    assert status == grpc.StatusCode.FAILED_PRECONDITION
    stub.Cancel(pb.CancelRequest(id=blocker))
    assert wait(stub, queued)[queued].state == OK  # the edited command ran


# ----------------------------------------------------------------- on-finish hooks


def test_on_finish_hooks_see_the_end_and_never_slow_the_queue(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    out = tmp_path / "hooks"
    out.mkdir()
    seen = "$TASKER_STATE $TASKER_EXIT_CODE $TASKER_GROUP $TASKER_LABEL_TEAM"
    hook = f'echo "{seen}" > {out}/$TASKER_TASK_ID; sleep 0.3'
    d = make_daemon("--workers", "2", config=f"on_finish = '{hook}'\non_finish_concurrency = 1\n")
    stub = d.stub
    own = submit(stub, spec("true", on_finish=f"touch {out}/own; exit 7"))[0]
    assert wait(stub, own)[own].state == OK  # its hook fails: that changes nothing
    until(lambda: (out / "own").exists(), what="the task's own hook")
    tasks = [spec("sh", "-c", f"exit {i % 2}", labels={"team": "a"}) for i in range(10)]
    ids = submit(stub, *tasks)
    done = wait(stub, *ids)
    # 10 hooks of 0.3 s each run one at a time: the tasks did not wait for them.
    assert not all((out / str(i)).exists() for i in ids)
    assert done[ids[1]].state == FAILED
    until(lambda: all((out / str(i)).exists() for i in ids), what="the daemon's hooks")
    assert (out / str(ids[0])).read_text().split() == ["SUCCEEDED", "0", "default", "a"]
