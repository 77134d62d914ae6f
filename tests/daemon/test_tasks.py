"""Running tasks through a real daemon: order, results, timeouts, cancel, output, env."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon
from tests.daemon.util import poll_state, spec, submit, wait, wait_gone


def test_exit_codes_and_output(daemon: Daemon) -> None:
    ok, bad, sig, missing = submit(
        daemon.stub,
        spec("sh", "-c", "echo out; echo err >&2"),
        spec("sh", "-c", "exit 3"),
        spec("sh", "-c", "kill -KILL $$"),
        spec("/no/such/command"),
    )
    done = wait(daemon.stub, ok, bad, sig, missing)
    assert done[ok].state == pb.TASK_STATE_SUCCEEDED and done[ok].exit_code == 0
    assert done[bad].state == pb.TASK_STATE_FAILED and done[bad].exit_code == 3
    assert done[sig].state == pb.TASK_STATE_FAILED and done[sig].signal == 9
    assert not done[sig].HasField("exit_code")
    assert done[missing].state == pb.TASK_STATE_FAILED
    assert "spawn failed" in done[missing].error
    full = daemon.stub.Get(pb.GetRequest(id=ok, output=True))
    assert full.stdout == b"out\n" and full.stderr == b"err\n"
    assert full.attempts == 1 and full.pid > 0
    assert full.HasField("started_at") and full.HasField("ended_at")
    assert daemon.stub.Get(pb.GetRequest(id=ok)).stdout == b""


def test_shell_mode_env_cwd_stdin(daemon: Daemon, tmp_path: Path) -> None:
    [task_id] = submit(
        daemon.stub,
        spec('echo "$0 $1 $GREETING $TASKER_TASK_ID $TASKER_ATTEMPT"; pwd; cat', "zero", "one",
             shell=True, env={"GREETING": "hi", "PATH": os.environ["PATH"]},
             cwd=str(tmp_path), stdin=b"from stdin"),
    )  # fmt: skip
    wait(daemon.stub, task_id)
    task = daemon.stub.Get(pb.GetRequest(id=task_id, output=True))
    lines = task.stdout.decode().splitlines()
    assert lines[0] == f"zero one hi {task_id} 1"
    assert lines[1] == str(tmp_path)
    assert lines[2] == "from stdin"
    assert task.spec.labels == {} and task.spec.cwd == str(tmp_path)


def test_priority_order_with_one_worker(make_daemon: type[Daemon], tmp_path: Path) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    log = tmp_path / "order.log"
    [blocker] = submit(d.stub, spec("sleep", "0.5"))
    poll_state(d.stub, blocker, {pb.TASK_STATE_RUNNING})
    order = [
        ("low1", pb.PRIORITY_LOW), ("norm1", pb.PRIORITY_NORMAL), ("crit1", pb.PRIORITY_CRITICAL),
        ("high1", pb.PRIORITY_HIGH), ("low2", pb.PRIORITY_LOW), ("norm2", pb.PRIORITY_NORMAL),
        ("crit2", pb.PRIORITY_CRITICAL), ("high2", pb.PRIORITY_HIGH),
    ]  # fmt: skip
    ids = submit(
        d.stub,
        *[spec(f"echo {name} >> {log}", shell=True, priority=p) for name, p in order],
    )
    wait(d.stub, blocker, *ids)
    assert log.read_text().split() == [
        "crit1", "crit2", "high1", "high2", "norm1", "norm2", "low1", "low2",
    ]  # fmt: skip


def test_timeout_kills_whole_group(daemon: Daemon, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    [task_id] = submit(
        daemon.stub,
        spec(f"sleep 300 & echo $! >> {pids}; sleep 300 & echo $! >> {pids}; wait",
             shell=True, timeout=0.5),
    )  # fmt: skip
    task = wait(daemon.stub, task_id)[task_id]
    assert task.state == pb.TASK_STATE_TIMED_OUT
    assert "timed out after 500ms" in task.error
    assert task.signal == 15 and not task.HasField("exit_code"), "SIGTERM ended it"
    assert time.monotonic() - started < 8
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    wait_gone([*children, task.pid])


def test_timeout_escalates_to_sigkill(make_daemon: type[Daemon], tmp_path: Path) -> None:
    d = make_daemon("--workers", "1", config='kill_grace = "300ms"\n')
    [task_id] = submit(
        d.stub, spec("trap '' TERM; sleep 300 & wait; wait", shell=True, timeout=0.3)
    )
    started = time.monotonic()
    task = wait(d.stub, task_id)[task_id]
    assert task.state == pb.TASK_STATE_TIMED_OUT
    assert task.signal == 9, "it ignored SIGTERM, so SIGKILL ended it"
    assert time.monotonic() - started < 8
    wait_gone([task.pid])


def test_escapee_via_setsid_is_killed(daemon: Daemon, tmp_path: Path) -> None:
    pidfile = tmp_path / "escapee"
    [task_id] = submit(
        daemon.stub,
        spec(f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' & sleep 300", shell=True,
             timeout=1.0),
    )  # fmt: skip
    wait(daemon.stub, task_id)
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    wait_gone([int(pidfile.read_text())])


def test_cancel_queued_and_running(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    running, queued = submit(d.stub, spec("sleep", "300"), spec("echo", "never"))
    task = poll_state(d.stub, running, {pb.TASK_STATE_RUNNING})
    reply = d.stub.Cancel(pb.CancelRequest(id=queued))
    assert reply.cancelled and reply.state == pb.TASK_STATE_CANCELLED
    reply = d.stub.Cancel(pb.CancelRequest(id=running))
    assert reply.cancelled
    done = wait(d.stub, running, queued)
    assert done[running].state == pb.TASK_STATE_CANCELLED
    assert done[queued].state == pb.TASK_STATE_CANCELLED
    assert not done[queued].HasField("started_at")
    wait_gone([task.pid])
    again = d.stub.Cancel(pb.CancelRequest(id=running))
    assert not again.cancelled and again.state == pb.TASK_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as err:
        d.stub.Cancel(pb.CancelRequest(id=99999))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_queue_timeout(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    blocker, late = submit(d.stub, spec("sleep", "2"), spec("true", queue_timeout=0.3))
    task = wait(d.stub, late)[late]
    assert task.state == pb.TASK_STATE_TIMED_OUT
    assert "did not start" in task.error
    d.stub.Cancel(pb.CancelRequest(id=blocker))


def test_output_truncated_at_limit(make_daemon: type[Daemon], tmp_path: Path) -> None:
    d = make_daemon(config="output_limit = 1000\n")
    [task_id] = submit(d.stub, spec("head -c 5000 /dev/zero", shell=True))
    wait(d.stub, task_id)
    task = d.stub.Get(pb.GetRequest(id=task_id, output=True))
    assert len(task.stdout) == 1000 and task.stdout_truncated and not task.stderr_truncated


def test_unhealthy_exit_code_retries_then_fails(make_daemon: type[Daemon], tmp_path: Path) -> None:
    counter = tmp_path / "count"
    conf = (
        "unhealthy_exit_codes = [42]\n"
        f'on_create = "mktemp -d {tmp_path}/res.XXXX"\n'
        "on_destroy = 'rmdir \"$TASKER_RESOURCE\"'\n"
    )
    d = make_daemon("--workers", "1", "--max-workers", "1", config=conf)
    script = f'echo "$TASKER_RESOURCE" >> {counter}; exit 42'
    retried, once = submit(
        d.stub, spec(script, shell=True, max_retries=2), spec("exit 42", shell=True, once=True)
    )
    done = wait(d.stub, retried, once)
    assert done[retried].state == pb.TASK_STATE_FAILED and done[retried].exit_code == 42
    assert done[retried].attempts == 3
    resources = counter.read_text().split()
    assert len(resources) == 3 and len(set(resources)) == 3, "each retry gets a fresh resource"
    assert done[once].attempts == 1
    assert all(not os.path.exists(r) for r in resources[:2]), "on_destroy ran"


def test_retrying_event_is_streamed(make_daemon: type[Daemon], tmp_path: Path) -> None:
    marker, gate = tmp_path / "marker", tmp_path / "gate"
    d = make_daemon("--workers", "1", config="unhealthy_exit_codes = [42]\n")
    script = (
        f"test -e {marker} && exit 0; until [ -e {gate} ]; do sleep 0.02; done; "
        f"touch {marker}; exit 42"
    )
    [task_id] = submit(d.stub, spec(script, shell=True))
    stream = d.stub.StreamResults(pb.StreamResultsRequest(ids=[task_id]), timeout=20)
    kinds = []
    for event in stream:
        kinds.append(event.WhichOneof("kind"))
        if kinds[-1] == "started" and not gate.exists():
            gate.touch()  # the watcher is in place before the first attempt fails
    assert kinds == ["queued", "started", "retrying", "started", "finished"]
    task = d.stub.Get(pb.GetRequest(id=task_id))
    assert task.state == pb.TASK_STATE_SUCCEEDED and task.attempts == 2


def test_task_environment(daemon: Daemon) -> None:
    [task_id] = submit(
        daemon.stub,
        spec("env", timeout=60.0, env={"ONLY": "this", "PATH": os.environ["PATH"]}),
    )
    wait(daemon.stub, task_id)
    out = daemon.stub.Get(pb.GetRequest(id=task_id, output=True)).stdout.decode()
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert env["ONLY"] == "this" and env["TASKER_TASK_ID"] == str(task_id)
    assert env["TASKER_ATTEMPT"] == "1" and "TASKER_WORKER_ID" in env
    assert abs(float(env["TASKER_DEADLINE"]) - (time.time() + 60)) < 30
    assert "HOME" not in env, "the task's env is exactly the one submitted (plus TASKER_*)"


def test_run_bypasses_queue(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1")
    [blocker] = submit(d.stub, spec("sleep", "300"))
    poll_state(d.stub, blocker, {pb.TASK_STATE_RUNNING})
    events = list(d.stub.Run(pb.RunRequest(task=spec("sh", "-c", "echo now")), timeout=20))
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "finished"
    assert b"".join(e.output.data for e in events if e.HasField("output")) == b"now\n"
    assert events[-1].finished.task.state == pb.TASK_STATE_SUCCEEDED
    assert events[-1].finished.task.stdout == b"now\n"
    d.stub.Cancel(pb.CancelRequest(id=blocker))


def test_list_filters_and_pages(daemon: Daemon) -> None:
    ids = submit(daemon.stub, *[spec("true", labels={"batch": str(i % 2)}) for i in range(7)])
    wait(daemon.stub, *ids)
    page = daemon.stub.List(pb.ListRequest(page_size=3, labels={"batch": "1"}))
    assert [t.id for t in page.tasks] == [ids[5], ids[3], ids[1]]
    rest = daemon.stub.List(pb.ListRequest(page_size=3, labels={"batch": "1"},
                                           page_token=page.next_page_token))  # fmt: skip
    assert [t.id for t in rest.tasks] == [] or rest.next_page_token == ""
    everything = daemon.stub.List(pb.ListRequest(states=[pb.TASK_STATE_SUCCEEDED]))
    assert [t.id for t in everything.tasks] == sorted(ids, reverse=True)


def test_stats_and_metrics(daemon: Daemon) -> None:
    ids = submit(daemon.stub, spec("true"), spec("false"))
    wait(daemon.stub, *ids)
    stats = daemon.stub.Stats(pb.StatsRequest())
    assert stats.succeeded == 1 and stats.failed == 1 and stats.base_workers == 2
    assert stats.queue_capacity == 100_000 and stats.version
    metrics = daemon.stub.Metrics(pb.MetricsRequest())
    assert (metrics.completed, metrics.failed) == (2, 1)  # every end; the failed one


def test_clean(daemon: Daemon) -> None:
    ids = submit(daemon.stub, spec("true"), spec("true"))
    wait(daemon.stub, *ids)
    assert daemon.stub.Clean(pb.CleanRequest()).removed == 2
    with pytest.raises(grpc.RpcError) as err:
        daemon.stub.Get(pb.GetRequest(id=ids[0]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    [new] = submit(daemon.stub, spec("true"))
    assert new > ids[-1], "ids are never reused"


def test_request_env_is_shared_by_tasks_without_their_own(daemon: Daemon) -> None:
    path = os.environ["PATH"]
    request = pb.SubmitRequest(
        env={"SHARED": "yes", "PATH": path},
        tasks=[
            pb.TaskSpec(argv=["sh", "-c", "echo $SHARED-$OWN"]),
            pb.TaskSpec(argv=["sh", "-c", "echo $SHARED-$OWN"], env={"OWN": "mine", "PATH": path}),
        ],
    )
    ids = list(daemon.stub.Submit(request, timeout=10).ids)
    wait(daemon.stub, *ids)
    out = [daemon.stub.Get(pb.GetRequest(id=i, output=True)).stdout for i in ids]
    assert out == [b"yes-\n", b"-mine\n"]
    assert daemon.stub.Get(pb.GetRequest(id=ids[0])).spec.env["SHARED"] == "yes"
    bad = pb.SubmitRequest(env={"A=B": "x"}, tasks=[pb.TaskSpec(argv=["true"])])
    with pytest.raises(grpc.RpcError) as err:
        daemon.stub.Submit(bad, timeout=10)
    assert err.value.details().startswith("env:")
