"""Issue 11 from the command line, against a real daemon: group, parallel, pause, resume,
priority, submit -g/--stashed, enqueue, remove, signal, the -g filters, and logs -f without an id.
Each command's happy path, and one bad input each: one ``taskerctl: error:`` line, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tasker.v1 import tasker_pb2 as pb
from tests.cli.test_cli import one_line_error, submit_id, tc, tc_all
from tests.client.test_control import until
from tests.conftest import Daemon
from tests.daemon.util import poll_state

TERMINAL = {pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_TIMED_OUT,
            pb.TASK_STATE_CANCELLED, pb.TASK_STATE_LOST}  # fmt: skip


def state(d: Daemon, task_id: int) -> int:
    return d.stub.Get(pb.GetRequest(id=task_id), timeout=5).state


def running(d: Daemon, task_id: int) -> pb.Task:
    return poll_state(d.stub, task_id, {pb.TASK_STATE_RUNNING})


def ended(d: Daemon, task_id: int) -> pb.Task:
    return poll_state(d.stub, task_id, TERMINAL)


def add(d: Daemon, *argvs: list[str], group: str = "", stashed: bool = False) -> list[int]:
    """Submit tasks straight to the daemon (setup, not what is tested); their ids."""
    specs = [pb.TaskSpec(argv=argv, group=group) for argv in argvs]
    return list(d.stub.Submit(pb.SubmitRequest(tasks=specs, stashed=stashed), timeout=5).ids)


def error(p: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """``p`` failed with ``code`` and one error line holding ``words``."""
    line = one_line_error(p)
    assert p.returncode == code, (p.returncode, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    for word in words:
        assert word in line, (word, line)


def test_group_add_list_parallel_rm(shared: Daemon) -> None:
    added = tc(shared, "group", "add", "t-g", "--parallel", "2", "--max-parallel", "3")
    assert added.returncode == 0 and added.stdout == "group t-g added: parallel 2, max 3\n"
    (task_id,) = add(shared, ["sleep", "30"], group="t-g")
    text, listed, narrowed, again, bad, zero, unknown, refused, unknown_rm = tc_all(
        shared,
        ["group", "list"],
        ["group", "ls", "--json"],
        ["parallel", "1", "-g", "t-g", "--json"],
        ["group", "add", "t-g"],
        ["group", "add", "no spaces"],
        ["parallel", "0", "-g", "t-g"],
        ["submit", "-g", "t-nosuch", "true"],
        ["group", "rm", "t-g"],
        ["group", "rm", "t-nosuch"],
    )
    header = text.stdout.splitlines()[0]
    assert header.split() == ["NAME", "PARALLEL", "MAX", "RUNNING", "QUEUED", "PAUSED", "STASHED"]
    assert "default" in text.stdout and " t-g " in text.stdout, text.stdout
    groups = {g["name"]: g for g in json.loads(listed.stdout)}
    assert "default" in groups and groups["t-g"]["max_parallel"] == 3
    assert json.loads(narrowed.stdout)["parallel"] == 1
    error(again, 1, "t-g", "exists")  # FAILED_PRECONDITION: one line, exit 1
    error(bad, 2, "name:")  # INVALID_ARGUMENT
    error(zero, 2, "0")
    error(unknown, 2, "tasks[0].group", "t-nosuch")
    error(refused, 1, "t-g")  # it holds a task
    error(unknown_rm, 2, "t-nosuch")
    forced = tc(shared, "group", "rm", "t-g", "--force")
    assert forced.stdout == "group t-g removed, 1 tasks cancelled\n", forced.stderr
    assert ended(shared, task_id).state == pb.TASK_STATE_CANCELLED


def test_pause_resume(shared: Daemon) -> None:
    shared.stub.AddGroup(pb.AddGroupRequest(name="t-p"), timeout=5)
    (task_id,) = add(shared, ["sleep", "30"], group="t-p")
    t = str(task_id)
    running(shared, task_id)
    paused = tc(shared, "pause", t)
    assert paused.returncode == 0 and paused.stdout == f"{t} paused\n", paused.stderr
    shown, listed, twice, nothing, wait_alone = tc_all(
        shared,
        ["show", "--json", t],
        ["list", "-g", "t-p"],
        ["pause", t],
        ["pause"],
        ["pause", "--wait", t],
    )
    assert json.loads(shown.stdout)["state"] == "paused"
    assert json.loads(shown.stdout)["group"] == "t-p"
    assert " paused " in listed.stdout and " t-p " in listed.stdout
    error(twice, 1, f"task {t}")
    error(nothing, 2, "give task ids")
    error(wait_alone, 2, "--wait")
    resumed = tc(shared, "resume", t, "--json")
    assert json.loads(resumed.stdout) == {"resumed": [task_id]}
    assert state(shared, task_id) == pb.TASK_STATE_RUNNING

    group = tc(shared, "pause", "-g", "t-p")
    assert group.stdout == f"group t-p paused\n{t} paused\n", group.stderr
    (queued,) = add(shared, ["true"], group="t-p")
    (info,) = [g for g in shared.stub.ListGroups(pb.ListGroupsRequest()).groups if g.name == "t-p"]
    assert info.paused and info.queued == 1 and state(shared, queued) == pb.TASK_STATE_QUEUED
    again = tc(shared, "resume", "-g", "t-p")
    assert again.stdout == f"group t-p resumed\n{t} resumed\n", again.stderr
    cancelled = tc(shared, "cancel", "-g", "t-p", "--state", "running", "--json")
    assert json.loads(cancelled.stdout) == [{"id": task_id, "cancelled": True}]
    assert ended(shared, queued).state == pb.TASK_STATE_SUCCEEDED
    error(tc(shared, "pause", str(queued)), 1, "SUCCEEDED")  # pausing a finished task
    shared.stub.RemoveGroup(pb.RemoveGroupRequest(name="t-p"), timeout=5)


def test_priority(shared: Daemon) -> None:
    shared.stub.AddGroup(pb.AddGroupRequest(name="t-pr"), timeout=5)
    shared.stub.Pause(pb.PauseRequest(groups=["t-pr"]), timeout=5)
    ids = add(shared, ["true"], ["true"], ["true"], group="t-pr")
    (sleeper,) = add(shared, ["sleep", "30"])
    raised = tc(shared, "priority", str(ids[2]), str(ids[1]), "high")
    assert raised.stdout == f"{ids[2]} priority high\n{ids[1]} priority high\n", raised.stderr
    shared.stub.Resume(pb.ResumeRequest(groups=["t-pr"]), timeout=5)
    done = [ended(shared, i) for i in ids]
    order = [t.id for t in sorted(done, key=lambda t: t.started_at.ToNanoseconds())]
    assert order == [ids[1], ids[2], ids[0]]  # high first, each level in submission order
    assert [t.spec.priority for t in done[1:]] == [pb.PRIORITY_HIGH] * 2
    running(shared, sleeper)
    on_running, bad_level, no_ids = tc_all(
        shared, ["priority", str(sleeper), "low"], ["priority", str(sleeper), "asap"],
        ["priority", "high"],
    )  # fmt: skip
    error(on_running, 1, "RUNNING")
    error(bad_level, 2, "asap")
    error(no_ids, 2)
    shared.stub.Cancel(pb.CancelRequest(id=sleeper), timeout=5)
    shared.stub.RemoveGroup(pb.RemoveGroupRequest(name="t-pr"), timeout=5)


def test_stash_enqueue_remove(shared: Daemon) -> None:
    task_id = submit_id(shared, "--stashed", "echo", "hi")
    t = str(task_id)
    assert state(shared, task_id) == pb.TASK_STATE_STASHED
    shared.stub.AddGroup(pb.AddGroupRequest(name="t-s"), timeout=5)
    unfinished, waiting, not_stashed, later, batch = tc_all(
        shared,
        ["remove", t],
        ["submit", "--stashed", "--wait", "true"],
        ["enqueue", "999999"],
        ["enqueue", t, "--delay", "1h"],
        ["submit", "--batch", "/dev/stdin", "-g", "t-s", "--stashed"],
    )
    error(unfinished, 1, t)
    error(waiting, 2, "--stashed")
    error(not_stashed, 1, "999999")
    assert later.stdout == f"{t} enqueued in 1h\n", later.stderr
    shown, listed = tc_all(shared, ["show", t], ["list", "-s", "stashed"])
    assert "enqueue_at" in shown.stdout and "stashed" in shown.stdout
    assert "stashed until" in listed.stdout
    assert json.loads(tc(shared, "enqueue", t, "--json").stdout) == {
        "enqueued": [task_id], "delay": None,
    }  # fmt: skip
    assert ended(shared, task_id).state == pb.TASK_STATE_SUCCEEDED
    error(tc(shared, "enqueue", t), 1, "stashed")  # ended: not stashed any more
    removed = tc(shared, "remove", t, "--json")
    assert json.loads(removed.stdout) == {"removed": 1}
    assert batch.returncode == 0 and batch.stdout == "", batch.stderr  # an empty batch

    # --batch: the group and --stashed apply to every line.
    p = tc(shared, "submit", "--batch", "-", "-g", "t-s", "--stashed", input="true\nfalse\n")
    ids = [int(i) for i in p.stdout.split()]
    assert len(ids) == 2, p.stderr
    for i in ids:
        got = shared.stub.Get(pb.GetRequest(id=i), timeout=5)
        assert (got.state, got.group) == (pb.TASK_STATE_STASHED, "t-s")
    cancelled = tc(shared, "cancel", "-g", "t-s", "--state", "stashed")
    assert sorted(cancelled.stdout.splitlines()) == sorted(f"{i} cancelled" for i in ids)
    shared.stub.RemoveGroup(pb.RemoveGroupRequest(name="t-s"), timeout=5)


def test_signal(shared: Daemon) -> None:
    script = 'trap "exit 7" USR1; echo ready; while :; do sleep 0.05; done'
    (task_id,) = add(shared, ["sh", "-c", script])
    t = str(task_id)
    got = lambda: shared.stub.Get(pb.GetRequest(id=task_id, output=True), timeout=5)  # noqa: E731
    until(lambda: got().stdout == b"ready\n")
    nope, sent = tc_all(shared, ["signal", t, "NOPE"], ["signal", t, "USR1"])
    error(nope, 2, "signal:")
    assert sent.returncode == 0 and sent.stdout == f"{t} sent USR1\n", sent.stderr
    assert ended(shared, task_id).exit_code == 7
    error(tc(shared, "signal", t, "TERM"), 1, t)  # finished


def test_filters_and_held_waits(shared: Daemon, tmp_path: Path) -> None:
    shared.stub.AddGroup(pb.AddGroupRequest(name="t-f", parallel=2), timeout=5)
    go = tmp_path / "go"
    block = f"while [ ! -e {go} ]; do sleep 0.02; done; exit"
    (other,) = add(shared, ["sleep", "30"])  # default group: not waited for with -g t-f
    mine = add(shared, ["sh", "-c", f"{block} 0"], ["sh", "-c", f"{block} 3"], group="t-f")
    (stashed,) = add(shared, ["true"], group="t-f", stashed=True)
    env = {**os.environ, "TASKER_SOCKET": str(shared.socket)}
    # -g waits for the group's live tasks, but not the stashed one (it never runs by itself);
    # named by its id, a stashed task is waited for.
    waiting = subprocess.Popen(
        [sys.executable, "-m", "taskerctl", "wait", "-g", "t-f", str(stashed), "--json"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        listed, stats, metrics, bad = tc_all(
            shared, ["list", "-g", "t-f", "--json"], ["stats", "-g", "t-f", "--json"],
            ["metrics", "-g", "t-f", "--json"], ["stats", "-g", "t-nosuch"],
        )  # fmt: skip
        # A wait on a stashed task names it first, and ends once it is enqueued and ends.
        assert waiting.stderr is not None
        line = waiting.stderr.readline()
        assert line.startswith(f"taskerctl: task {stashed} is stashed: it runs once enqueued")
        time.sleep(0.3)  # its stream starts right after that line
        go.touch()
        shared.stub.Enqueue(pb.EnqueueRequest(ids=[stashed]), timeout=5)
        out, err = waiting.communicate(timeout=10)
    finally:
        waiting.kill()
        waiting.wait()
        shared.stub.Cancel(pb.CancelRequest(id=other), timeout=5)
    assert waiting.returncode == 1, err  # one of them failed
    results = [(r["id"], r["exit_status"], r["group"]) for r in json.loads(out)]
    assert results == [(mine[0], 0, "t-f"), (mine[1], 3, "t-f"), (stashed, 0, "t-f")]
    assert [t["id"] for t in json.loads(listed.stdout)] == [stashed, *mine[::-1]]
    doc = json.loads(stats.stdout)
    assert [g["name"] for g in doc["groups"]] == ["t-f"] and doc["groups"][0]["parallel"] == 2
    assert doc["stashed"] == 1 and doc["running"] == 2
    assert "completed" in json.loads(metrics.stdout)
    error(bad, 2, "t-nosuch")
    shared.stub.RemoveGroup(pb.RemoveGroupRequest(name="t-f"), timeout=5)


def test_logs_follow_newest_running(shared: Daemon) -> None:
    live = shared.stub.List(pb.ListRequest(states=[pb.TASK_STATE_RUNNING]), timeout=5).tasks
    assert not live, "the tests before left a task running"
    none, no_id = tc_all(shared, ["logs", "-f"], ["logs"])
    error(none, 1, "no task is running")
    assert none.stdout == ""
    error(no_id, 2, "-f")
    older, newest = add(shared, ["sleep", "30"], ["sh", "-c", "echo a; sleep 0.5; echo b; exit 4"])
    running(shared, newest)
    followed = tc(shared, "logs", "-f")
    assert followed.returncode == 4 and followed.stdout == "a\nb\n", followed.stderr
    assert followed.stderr.startswith(f"taskerctl: following task {newest}: sh -c")
    shared.stub.Cancel(pb.CancelRequest(id=older), timeout=5)


NEW_COMMANDS = (
    ["group"], ["group", "add"], ["group", "rm"], ["group", "list"], ["parallel"], ["pause"],
    ["resume"], ["priority"], ["enqueue"], ["remove"], ["signal"],
)  # fmt: skip


def test_help_of_the_new_commands() -> None:
    helps = tc_all(None, *[[*a, "--help"] for a in NEW_COMMANDS])
    for args, p in zip(NEW_COMMANDS, helps, strict=True):
        assert p.returncode == 0 and p.stdout.startswith(f"Usage: taskerctl {' '.join(args)} ")
        if args != ["group"]:
            assert "Global options (also before the command):" in p.stdout, args
    root = tc(None, "--help").stdout
    assert "paused or stashed" in root and "group" in root
