"""Control of a running queue against a real daemon: groups, pause and resume, priorities, the
stash, remove, signals, and what survives a restart and a ``kill -9``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from tests.conftest import ROOT, Daemon
from tests.daemon.util import TERMINAL, code, dur, poll_state, spec, submit, until, wait, wait_gone

MakeDaemon = Callable[..., Daemon]
QUEUED, RUNNING = pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING
PAUSED, STASHED = pb.TASK_STATE_PAUSED, pb.TASK_STATE_STASHED


def group(stub: object, name: str) -> pb.Group:
    groups = {g.name: g for g in stub.ListGroups(pb.ListGroupsRequest(), timeout=5).groups}  # type: ignore[attr-defined]
    return groups[name]


def proc_state(pid: int) -> str:
    """The one-letter state of a process (T: stopped)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def d(make_daemon: MakeDaemon) -> Iterator[Daemon]:
    daemon = make_daemon("--workers", "2")
    yield daemon
    stub = daemon.stub
    stub.Cancel(pb.CancelRequest(all=True), timeout=10)


# ----------------------------------------------------------------- groups


def test_groups_have_their_own_slots_and_are_refused_where_wrong(d: Daemon) -> None:
    stub = d.stub
    assert [g.name for g in stub.ListGroups(pb.ListGroupsRequest()).groups] == ["default"]
    made = stub.AddGroup(pb.AddGroupRequest(name="solo", parallel=1))
    assert (made.parallel, made.max_parallel) == (1, 1)
    assert code(lambda: stub.AddGroup(pb.AddGroupRequest(name="solo")))[0] == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    status, message = code(lambda: stub.AddGroup(pb.AddGroupRequest(name="bad name")))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("name:")
    status, message = code(lambda: submit(stub, spec("true", group="nope")))
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("tasks[0].group:") and "nope" in message

    # solo runs one at a time; default's two slots are its own.
    a, b = submit(stub, spec("sleep", "30", group="solo"), spec("sleep", "30", group="solo"))
    c = submit(stub, spec("sleep", "30"))[0]
    poll_state(stub, a, {RUNNING})
    poll_state(stub, c, {RUNNING})
    assert stub.Get(pb.GetRequest(id=b)).state == QUEUED
    assert stub.Get(pb.GetRequest(id=b)).group == "solo"
    g = group(stub, "solo")
    assert (g.running, g.queued) == (1, 1)

    # Filters by group: List, Stats, StreamResults(all_live) and Cancel.
    listed = stub.List(pb.ListRequest(group="solo")).tasks
    assert sorted(t.id for t in listed) == [a, b]
    stats = stub.Stats(pb.StatsRequest(group="solo"))
    assert (stats.running, stats.queued, [x.name for x in stats.groups]) == (1, 1, ["solo"])
    assert stub.Stats(pb.StatsRequest()).running == 2
    assert code(lambda: stub.Stats(pb.StatsRequest(group="nope")))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    # rm: refused while it holds tasks, default never; force cancels them.
    status, message = code(lambda: stub.RemoveGroup(pb.RemoveGroupRequest(name="solo")))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "2 unfinished" in message
    assert code(lambda: stub.RemoveGroup(pb.RemoveGroupRequest(name="default")))[0] == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    watching = pb.StreamResultsRequest(all_live=True, group="solo", finished_only=True)
    stream = stub.StreamResults(watching, timeout=20)
    removed = stub.RemoveGroup(pb.RemoveGroupRequest(name="solo", force=True), timeout=20)
    assert removed.cancelled == 2
    ended = {e.task_id: e.finished.task.state for e in stream}
    assert ended == {a: pb.TASK_STATE_CANCELLED, b: pb.TASK_STATE_CANCELLED}
    assert stub.Get(pb.GetRequest(id=c)).state == RUNNING  # another group's task goes on
    assert [g.name for g in stub.ListGroups(pb.ListGroupsRequest()).groups] == ["default"]


def test_parallel_changes_slots_at_runtime_without_killing(d: Daemon) -> None:
    stub = d.stub
    stub.AddGroup(pb.AddGroupRequest(name="g", parallel=1))
    ids = submit(stub, *[spec("sleep", "30", group="g") for _ in range(3)])
    poll_state(stub, ids[0], {RUNNING})
    raised = stub.SetParallel(pb.SetParallelRequest(group="g", parallel=3))
    assert raised.parallel == 3 and raised.max_parallel == 3
    for task_id in ids:
        poll_state(stub, task_id, {RUNNING})
    lowered = stub.SetParallel(pb.SetParallelRequest(group="g", parallel=1, max_parallel=1))
    assert (lowered.parallel, lowered.max_parallel) == (1, 1)
    time.sleep(0.3)
    assert all(stub.Get(pb.GetRequest(id=i)).state == RUNNING for i in ids)  # none killed
    status, message = code(lambda: stub.SetParallel(pb.SetParallelRequest(group="g")))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("parallel:")
    # As the extra tasks end, their slots go; a new task waits for the one slot left.
    stub.Cancel(pb.CancelRequest(ids=ids[1:]), timeout=10)
    wait(stub, *ids[1:])
    more = submit(stub, spec("sleep", "30", group="g"))[0]
    time.sleep(0.3)
    assert stub.Get(pb.GetRequest(id=more)).state == QUEUED
    assert group(stub, "g").workers == 1


def test_groups_from_the_configuration(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--workers", "1", config="[groups.gpu]\nparallel = 2\nmax_parallel = 3\n")
    g = group(d.stub, "gpu")
    assert (g.parallel, g.max_parallel) == (2, 3)
    ids = submit(d.stub, spec("true", group="gpu"), spec("true", group="gpu"))
    assert all(t.state == pb.TASK_STATE_SUCCEEDED for t in wait(d.stub, *ids).values())
    metrics = d.stub.Metrics(pb.MetricsRequest(group="gpu"))
    assert metrics.completed == 2
    assert d.stub.Metrics(pb.MetricsRequest(group="default")).completed == 0


# ----------------------------------------------------------------- pause and resume


def test_pausing_a_group_stops_its_tasks_and_its_queue(d: Daemon) -> None:
    stub = d.stub
    stub.AddGroup(pb.AddGroupRequest(name="g", parallel=1))
    first, second = submit(stub, spec("sleep", "30", group="g"), spec("true", group="g"))
    pid = poll_state(stub, first, {RUNNING}).pid
    events = stub.StreamResults(pb.StreamResultsRequest(ids=[first]), timeout=30)
    assert next(events).WhichOneof("kind") == "queued"
    assert next(events).WhichOneof("kind") == "started"

    paused = stub.Pause(pb.PauseRequest(groups=["g"]))
    assert list(paused.paused) == [first]
    assert stub.Get(pb.GetRequest(id=first)).state == PAUSED
    until(lambda: proc_state(pid) == "T", what="SIGSTOP")
    change = next(events)
    assert change.state_changed.state == PAUSED
    assert group(stub, "g").paused and group(stub, "g").paused_tasks == 1
    assert [t.state for t in stub.List(pb.ListRequest(group="g")).tasks] == [QUEUED, PAUSED]
    assert stub.Stats(pb.StatsRequest()).paused == 1

    resumed = stub.Resume(pb.ResumeRequest(groups=["g"]))
    assert list(resumed.resumed) == [first]
    assert next(events).state_changed.state == RUNNING
    until(lambda: proc_state(pid) != "T", what="SIGCONT")
    assert stub.Get(pb.GetRequest(id=first)).state == RUNNING
    stub.Cancel(pb.CancelRequest(id=first))
    assert wait(stub, second)[second].state == pb.TASK_STATE_SUCCEEDED  # the queue goes on


def test_pause_wait_lets_running_tasks_finish(d: Daemon) -> None:
    stub = d.stub
    stub.AddGroup(pb.AddGroupRequest(name="g", parallel=1))
    first, second = submit(stub, spec("sleep", "0.5", group="g"), spec("true", group="g"))
    poll_state(stub, first, {RUNNING})
    assert list(stub.Pause(pb.PauseRequest(groups=["g"], wait=True)).paused) == []
    assert wait(stub, first)[first].state == pb.TASK_STATE_SUCCEEDED
    time.sleep(0.3)
    assert stub.Get(pb.GetRequest(id=second)).state == QUEUED  # the paused queue starts nothing
    stub.Resume(pb.ResumeRequest(all=True))
    assert wait(stub, second)[second].state == pb.TASK_STATE_SUCCEEDED


def test_a_paused_tasks_timeout_clock_stops(d: Daemon) -> None:
    stub = d.stub
    # 1.5 s of run time allowed; 2.5 s of wall time to run; paused for 2 s of it.
    task_id = submit(stub, spec("sleep", "2.5", timeout=1.5))[0]
    poll_state(stub, task_id, {RUNNING})
    time.sleep(0.3)
    stub.Pause(pb.PauseRequest(ids=[task_id]))
    time.sleep(2.0)  # past the timeout, had its clock gone on
    assert stub.Get(pb.GetRequest(id=task_id)).state == PAUSED
    stub.Resume(pb.ResumeRequest(ids=[task_id]))
    done = wait(stub, task_id)[task_id]
    assert done.state == pb.TASK_STATE_SUCCEEDED, done.error


def test_pause_and_resume_refuse_what_they_cannot_do(d: Daemon) -> None:
    stub = d.stub
    finished = submit(stub, spec("true"))[0]
    wait(stub, finished)
    status, message = code(lambda: stub.Pause(pb.PauseRequest(ids=[finished])))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "SUCCEEDED" in message
    assert code(lambda: stub.Pause(pb.PauseRequest(ids=[10**6])))[0] == grpc.StatusCode.NOT_FOUND
    assert code(lambda: stub.Pause(pb.PauseRequest()))[0] == grpc.StatusCode.INVALID_ARGUMENT
    stashed = stub.Submit(pb.SubmitRequest(tasks=[spec("true")], stashed=True)).ids[0]
    assert code(lambda: stub.Pause(pb.PauseRequest(ids=[stashed])))[0] == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert code(lambda: stub.Resume(pb.ResumeRequest(ids=[stashed])))[0] == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert code(lambda: stub.Pause(pb.PauseRequest(groups=["nope"])))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_cancelling_a_paused_task_ends_it_at_once(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--workers", "1", config='kill_grace = "10s"\n')
    stub = d.stub
    task_id = submit(stub, spec("sleep", "30"))[0]
    pid = poll_state(stub, task_id, {RUNNING}).pid
    stub.Pause(pb.PauseRequest(ids=[task_id]))
    until(lambda: proc_state(pid) == "T", what="SIGSTOP")
    t0 = time.monotonic()
    stub.Cancel(pb.CancelRequest(states=[PAUSED]))
    assert wait(stub, task_id)[task_id].state == pb.TASK_STATE_CANCELLED
    assert time.monotonic() - t0 < 5  # SIGTERM took effect: no wait for kill_grace (10 s)


# ----------------------------------------------------------------- priority, stash, remove


def test_priority_moves_queued_tasks_keeping_their_submission_order(d: Daemon) -> None:
    stub = d.stub
    stub.AddGroup(pb.AddGroupRequest(name="g", parallel=1))
    blocker = submit(stub, spec("sleep", "30", group="g"))[0]
    poll_state(stub, blocker, {RUNNING})
    order = "echo $TASK >> " + str(d.dir / "order")
    ids = submit(stub, *[spec(order, shell=True, group="g", env={"TASK": str(i)})
                         for i in range(4)])  # fmt: skip
    stub.SetPriority(pb.SetPriorityRequest(ids=[ids[3], ids[1]], priority=pb.PRIORITY_HIGH))
    assert stub.Get(pb.GetRequest(id=ids[3])).spec.priority == pb.PRIORITY_HIGH
    status, message = code(
        lambda: stub.SetPriority(pb.SetPriorityRequest(ids=[blocker], priority=pb.PRIORITY_LOW))
    )
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "RUNNING" in message
    stub.Cancel(pb.CancelRequest(id=blocker))
    wait(stub, *ids)
    # HIGH first, each level in submission order: 1 and 3 were raised, at their own times.
    assert (d.dir / "order").read_text().split() == ["1", "3", "0", "2"]


def test_stashed_tasks_wait_for_enqueue(d: Daemon) -> None:
    stub = d.stub
    a, b, c = stub.Submit(
        pb.SubmitRequest(tasks=[spec("true"), spec("true"), spec("true")], stashed=True)
    ).ids
    time.sleep(0.2)
    assert {stub.Get(pb.GetRequest(id=i)).state for i in (a, b, c)} == {STASHED}
    assert stub.Stats(pb.StatsRequest()).stashed == 3
    # Waiting for every live task does not wait for stashed ones: they never run by themselves.
    everything = pb.StreamResultsRequest(all_live=True, finished_only=True)
    assert list(stub.StreamResults(everything, timeout=5)) == []
    stub.Enqueue(pb.EnqueueRequest(ids=[a]))
    assert wait(stub, a)[a].state == pb.TASK_STATE_SUCCEEDED
    stub.Enqueue(pb.EnqueueRequest(ids=[b], delay=dur(0.5)))
    planned = stub.Get(pb.GetRequest(id=b))
    assert planned.state == STASHED and planned.HasField("enqueue_at")
    t0 = time.monotonic()
    done = wait(stub, b)[b]
    assert done.state == pb.TASK_STATE_SUCCEEDED and time.monotonic() - t0 > 0.3
    stub.Cancel(pb.CancelRequest(states=[STASHED]))
    assert wait(stub, c)[c].state == pb.TASK_STATE_CANCELLED
    status, message = code(lambda: stub.Enqueue(pb.EnqueueRequest(ids=[a])))
    assert status == grpc.StatusCode.FAILED_PRECONDITION and "stashed" in message


def test_remove_deletes_finished_tasks_only(d: Daemon) -> None:
    stub = d.stub
    done = submit(stub, spec("true"))[0]
    wait(stub, done)
    running = submit(stub, spec("sleep", "30"))[0]
    status, _ = code(lambda: stub.Remove(pb.RemoveRequest(ids=[done, running])))
    assert status == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.Get(pb.GetRequest(id=done)).state == pb.TASK_STATE_SUCCEEDED  # nothing removed
    assert code(lambda: stub.Remove(pb.RemoveRequest(ids=[10**6])))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    assert stub.Remove(pb.RemoveRequest(ids=[done])).removed == 1
    assert code(lambda: stub.Get(pb.GetRequest(id=done)))[0] == grpc.StatusCode.NOT_FOUND


def test_signal_reaches_the_tasks_processes(d: Daemon) -> None:
    stub = d.stub
    script = "trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done"
    task_id = submit(stub, spec(script, shell=True))[0]
    poll_state(stub, task_id, {RUNNING})
    time.sleep(0.2)  # the trap is set
    stub.Signal(pb.SignalRequest(id=task_id, signal="usr1"))
    done = stub.StreamResults(pb.StreamResultsRequest(ids=[task_id], output=True), timeout=10)
    finished = next(e for e in done if e.WhichOneof("kind") == "finished").finished.task
    assert finished.exit_code == 3 and b"got-usr1" in finished.stdout
    status, message = code(lambda: stub.Signal(pb.SignalRequest(id=task_id, signal="TERM")))
    assert status == grpc.StatusCode.FAILED_PRECONDITION
    status, message = code(lambda: stub.Signal(pb.SignalRequest(id=task_id, signal="NOPE")))
    assert status == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("signal:")


# ----------------------------------------------------------------- restart and kill -9


@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_paused_groups_and_stash_survive(make_daemon: MakeDaemon, how: str) -> None:
    d = make_daemon("--workers", "1")
    stub = d.stub
    stub.AddGroup(pb.AddGroupRequest(name="g", parallel=2, max_parallel=3))
    stub.SetParallel(pb.SetParallelRequest(group="g", parallel=3, max_parallel=4))
    stub.Pause(pb.PauseRequest(groups=["g"]))
    queued = submit(stub, spec("true", group="g"))[0]
    stashed = stub.Submit(pb.SubmitRequest(tasks=[spec("true")], stashed=True)).ids[0]
    low = stub.Submit(pb.SubmitRequest(tasks=[spec("true")], stashed=True)).ids[0]
    stub.SetPriority(pb.SetPriorityRequest(ids=[low], priority=pb.PRIORITY_LOW))
    d.come_back(how)
    stub = d.stub
    g = group(stub, "g")
    assert (g.paused, g.parallel, g.max_parallel) == (True, 3, 4)
    time.sleep(0.3)
    assert stub.Get(pb.GetRequest(id=queued)).state == QUEUED
    assert stub.Get(pb.GetRequest(id=stashed)).state == STASHED
    assert stub.Get(pb.GetRequest(id=low)).spec.priority == pb.PRIORITY_LOW
    stub.Resume(pb.ResumeRequest(groups=["g"]))
    stub.Enqueue(pb.EnqueueRequest(ids=[stashed, low]))
    states = {t.state for t in wait(stub, queued, stashed, low).values()}
    assert states == {pb.TASK_STATE_SUCCEEDED}


def test_a_planned_enqueue_survives_kill9(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--workers", "1")
    task_id = d.stub.Submit(pb.SubmitRequest(tasks=[spec("true")], stashed=True)).ids[0]
    d.stub.Enqueue(pb.EnqueueRequest(ids=[task_id], delay=dur(4.0)))
    t0 = time.monotonic()
    d.kill9()
    d.start()
    if time.monotonic() - t0 < 3.5:  # else the time came while the daemon started
        assert d.stub.Get(pb.GetRequest(id=task_id)).state == STASHED
    assert wait(d.stub, task_id, timeout=10)[task_id].state == pb.TASK_STATE_SUCCEEDED


def test_drain_leaves_a_paused_groups_queue_for_the_next_start(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--workers", "1")
    d.stub.AddGroup(pb.AddGroupRequest(name="g"))
    d.stub.Pause(pb.PauseRequest(groups=["g"]))
    held = submit(d.stub, spec("true", group="g"))[0]
    ran = submit(d.stub, spec("true"))[0]
    d.stub.Shutdown(pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_DRAIN))
    assert d.proc is not None and d.proc.wait(15) == 0  # no hang on the paused queue
    d.start()
    assert d.stub.Get(pb.GetRequest(id=ran)).state == pb.TASK_STATE_SUCCEEDED
    assert d.stub.Get(pb.GetRequest(id=held)).state == QUEUED


# ----------------------------------------------------------------- bursting by rate


def test_a_group_bursts_with_its_arrival_rate_and_shrinks_after(make_daemon: MakeDaemon) -> None:
    d = make_daemon("--workers", "1", config='burst_interval = "200ms"\n')
    stub = d.stub
    stub.AddGroup(pb.AddGroupRequest(name="g", parallel=1, max_parallel=6))
    ids: list[int] = []
    peak = 0
    # One slot drains 5 tasks/s of `sleep 0.2`; 25 a second arrive for 2 s.
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        ids += submit(stub, spec("sleep", "0.2", group="g"))
        peak = max(peak, group(stub, "g").workers)
        time.sleep(0.04)
    assert peak > 1, "no burst under a rising arrival rate"
    wait(stub, *ids, timeout=60)
    until(lambda: group(stub, "g").workers == 1, timeout=10, what="burst slots to retire")
    assert group(stub, "g").burst_workers == 0
    # With no arrivals at all, a backlog alone does not burst.
    stub.Pause(pb.PauseRequest(groups=["g"]))
    backlog = submit(stub, *[spec("sleep", "0.2", group="g") for _ in range(10)])
    time.sleep(1.0)  # the rates settle at zero arrivals
    stub.Resume(pb.ResumeRequest(groups=["g"]))
    seen = 0
    for _ in range(10):
        seen = max(seen, group(stub, "g").workers)
        time.sleep(0.1)
    assert seen == 1
    stub.Cancel(pb.CancelRequest(ids=backlog))
    assert all(t.state in TERMINAL for t in wait(stub, *backlog).values())
    assert os.path.exists(d.socket)


def test_a_journal_of_the_previous_version_migrates_at_start(make_daemon: MakeDaemon) -> None:
    """taskerd at 71cffcb wrote it (schema v2), and was killed with task 5 running and 6, 7 and
    9 queued (see tests/data/README.md): a daemon of today starts on it and goes on."""
    d = make_daemon("--workers", "1", start=False)
    d.state_dir.mkdir(parents=True)
    fixture = Path(__file__).resolve().parents[1] / "data" / "journal-v2.sqlite3"
    shutil.copy(fixture, d.state_dir / "journal.sqlite3")
    d.start()
    stub = d.stub
    tasks = {t.id: t for t in stub.List(pb.ListRequest()).tasks}
    assert sorted(tasks) == list(range(1, 10))
    assert {t.group for t in tasks.values()} == {"default"}
    assert tasks[1].state == pb.TASK_STATE_SUCCEEDED
    assert stub.Get(pb.GetRequest(id=1, output=True)).stdout == b"hello\n"
    # Resumed: run again (their working directory, a temporary one then, is gone: they fail).
    assert tasks[9].spec.priority == pb.PRIORITY_LOW and tasks[9].spec.once
    stub.Cancel(pb.CancelRequest(all=True), timeout=10)
    ended = wait(stub, 5, 6, 7, 9)
    assert {t.state for t in ended.values()} <= {pb.TASK_STATE_CANCELLED, pb.TASK_STATE_FAILED}
    assert stub.Remove(pb.RemoveRequest(ids=[1, 2])).removed == 2


OLD = "71cffcb"  # main before PAUSED and STASHED


def test_old_clients_see_paused_as_running_and_stashed_as_queued(d: Daemon, tmp_path: Path) -> None:
    """A client that does not announce API level 2 (tasker.api) gets the states it knows; the
    taskerctl of before them lists and shows such tasks instead of failing on state 8 or 9."""
    stub = d.stub
    running = submit(stub, spec("sleep", "30"))[0]
    poll_state(stub, running, {RUNNING})
    stashed = stub.Submit(pb.SubmitRequest(tasks=[spec("true")], stashed=True)).ids[0]
    stub.Pause(pb.PauseRequest(ids=[running]))
    with grpc.insecure_channel(d.target) as channel:
        old = pb_grpc.TaskerStub(channel)  # no tasker-api metadata: a client of before
        assert old.Get(pb.GetRequest(id=running)).state == RUNNING
        assert old.Get(pb.GetRequest(id=stashed)).state == QUEUED
        assert {t.state for t in old.List(pb.ListRequest()).tasks} == {RUNNING, QUEUED}
        stream = old.StreamResults(pb.StreamResultsRequest(ids=[running]), timeout=10)
        assert [next(stream).WhichOneof("kind") for _ in range(2)] == ["queued", "started"]
        stub.Resume(pb.ResumeRequest(ids=[running]))
        stub.Cancel(pb.CancelRequest(id=running))
        kinds = [e.WhichOneof("kind") for e in stream]
        assert kinds == ["finished"]  # no state_changed for it
    assert stub.Get(pb.GetRequest(id=stashed)).state == STASHED  # a client of now sees it
    src = tmp_path / "old"
    src.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", OLD], capture_output=True, check=False
    )
    if archive.returncode:
        pytest.skip(f"no git history with {OLD} here")
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    env = {**os.environ, "PYTHONPATH": f"{src}:{src / 'protos'}"}
    for args in (["list"], ["show", str(stashed)]):
        shown = subprocess.run(
            [sys.executable, "-m", "taskerctl", "--socket", str(d.socket), *args],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert "queued" in shown.stdout.lower()


def test_a_paused_task_left_by_a_killed_daemon_is_ended_and_requeued(
    make_daemon: MakeDaemon,
) -> None:
    d = make_daemon("--workers", "1", config='kill_grace = "10s"\n')
    stub = d.stub
    stub.AddGroup(pb.AddGroupRequest(name="g"))
    task_id = submit(stub, spec("sleep", "300", group="g"))[0]
    pid = poll_state(stub, task_id, {RUNNING}).pid
    stub.Pause(pb.PauseRequest(groups=["g"]))
    until(lambda: proc_state(pid) == "T", what="SIGSTOP")
    d.kill9()
    t0 = time.monotonic()
    d.start()
    # Its stopped process took the SIGTERM at once, not the SIGKILL 10 s later.
    assert time.monotonic() - t0 < 8
    wait_gone([pid], timeout=5)
    task = d.stub.Get(pb.GetRequest(id=task_id))
    assert task.state == QUEUED and group(d.stub, "g").paused  # re-queued; its group paused
    d.stub.Cancel(pb.CancelRequest(id=task_id))
