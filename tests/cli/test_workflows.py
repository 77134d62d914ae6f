"""Issue 12 from the command line, against a real daemon: submit --after/--after-any, --delay/--at,
--every/--cron (schedules) and --on-finish; --batch with '@after' lines, across its requests;
restart (--edit, --failed), edit, schedule list/rm; what show, list and wait say of waiting and
scheduled tasks. Each one's happy path, and one bad input each: one ``taskerctl: error:`` line,
no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tasker.v1 import tasker_pb2 as pb
from taskerctl import _submit
from taskerctl.cli import dispatch
from tests.cli.test_cli import submit_id, tc, tc_all
from tests.cli.test_control import add, ended, error, running
from tests.client.test_control import until
from tests.conftest import Daemon


def get(d: Daemon, task_id: int) -> pb.Task:
    return d.stub.Get(pb.GetRequest(id=task_id, output=True), timeout=5)


def ids_of(p: subprocess.CompletedProcess[str]) -> list[int]:
    assert p.returncode == 0, p.stderr
    return [int(line) for line in p.stdout.split()]


def gate(tmp_path: Path, status: int) -> list[str]:
    """A command that ends with ``status`` once the test touches ``tmp_path/go``."""
    go = tmp_path / "go"
    return ["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done; exit {status}"]


def test_after_and_after_any(shared: Daemon, tmp_path: Path) -> None:
    (first,) = add(shared, gate(tmp_path, 3))
    f = str(first)
    after, after_any, both, bad, unknown = tc_all(
        shared,
        ["submit", "--after", f, "true"],
        ["submit", "--after-any", f"{f},{f}", "--", "echo", "anyway"],
        ["submit", "--after", f, "--after-any", f, "true"],
        ["submit", "--after", "x", "true"],
        ["submit", "--after", "999999", "true"],
    )
    dependant, anyway = submit_ids = ids_of(after) + ids_of(after_any)
    assert get(shared, dependant).state == pb.TASK_STATE_WAITING
    shown, listed = tc_all(shared, ["show", str(dependant)], ["list", "-s", "waiting"])
    assert f"state             waiting on {first}\n" in shown.stdout, shown.stdout
    assert "after             " + f in shown.stdout
    assert f"waiting on {first}" in listed.stdout, listed.stdout
    error(both, 2, "--after-any")
    error(bad, 2, "'x'")
    error(unknown, 2, "tasks[0].after")  # INVALID_ARGUMENT from the daemon
    (tmp_path / "go").touch()
    waited = tc(shared, "wait", str(dependant))
    assert waited.returncode == 125 and f"dependency {first}" in waited.stderr, waited.stderr
    assert ended(shared, anyway).state == pb.TASK_STATE_SUCCEEDED, submit_ids


def test_delay_at_and_wait_on_a_scheduled_task(shared: Daemon) -> None:
    soon = (datetime.now() + timedelta(minutes=2)).strftime("%H:%M")
    delayed, at, epoch, bad_delay, bad_at, both = tc_all(
        shared,
        ["submit", "--delay", "1h", "true"],
        ["submit", "--at", soon, "true"],
        ["submit", "--json", "--at", str(int(time.time()) + 3600), "true"],
        ["submit", "--delay", "soon", "true"],
        ["submit", "--at", "25:00", "true"],
        ["submit", "--delay", "1s", "--at", soon, "true"],
    )
    later = ids_of(delayed)[0]
    for task_id in (later, ids_of(at)[0], json.loads(epoch.stdout)["id"]):
        t = get(shared, task_id)
        assert t.state == pb.TASK_STATE_SCHEDULED and t.spec.HasField("start_at")
    t = get(shared, later)
    assert 3590 < t.spec.start_at.ToSeconds() - time.time() <= 3600
    error(bad_delay, 2, "--delay")
    error(bad_at, 2, "25:00")
    error(both, 2, "--delay or --at")
    shown, listed = tc_all(shared, ["show", "--json", str(later)], ["list", "-s", "scheduled"])
    assert json.loads(shown.stdout)["state"] == "scheduled"
    assert json.loads(shown.stdout)["start_at"] is not None
    assert "scheduled until" in listed.stdout
    # wait on a scheduled task names it on stderr, and waits until it is due and ends.
    waited = tc(shared, "submit", "--wait", "--delay", "0.6s", "--", "sh", "-c", "exit 6")
    assert waited.returncode == 6, waited.stderr
    env = {**os.environ, "TASKER_SOCKET": str(shared.socket)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskerctl", "wait", str(later)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith(f"taskerctl: task {later} is scheduled (until "), line
        shared.stub.Cancel(pb.CancelRequest(all=True, states=[pb.TASK_STATE_SCHEDULED]), timeout=5)
        assert proc.wait(10) == 125
    finally:
        proc.kill()
        proc.wait()


def test_on_finish(shared: Daemon, tmp_path: Path) -> None:
    mark = tmp_path / "finished"
    p = tc(shared, "submit", "--wait", "--on-finish", f"touch {mark}", "true")
    assert p.returncode == 0, p.stderr
    until(mark.exists)
    error(tc(shared, "submit", "--on-finish"), 2, "--on-finish")


def test_schedules_every_cron_list_rm(shared: Daemon) -> None:
    every, cron, as_json, bad_cron, with_wait, lone_overlap, zero = tc_all(
        shared,
        ["submit", "--every", "1h", "--delay", "1h", "-l", "w=s", "--", "echo", "hi"],
        ["submit", "--cron", "*/5 * * * *", "--no-overlap", "true"],
        ["submit", "--json", "--every", "2h", "--overlap", "--at", "23:59", "true"],
        ["submit", "--cron", "every tuesday", "true"],
        ["submit", "--every", "1h", "--wait", "true"],
        ["submit", "--overlap", "true"],
        ["submit", "--every", "0", "true"],
    )
    (hourly,) = ids_of(every)
    assert every.stderr.startswith(f"taskerctl: schedule {hourly}: every 1h, next at "), (
        every.stderr
    )
    (five,) = ids_of(cron)
    doc = json.loads(as_json.stdout)
    assert doc["overlap"] is True and doc["every"] == 7200 and doc["next_at"] is not None
    error(bad_cron, 2, "cron")
    error(with_wait, 2, "--wait")
    error(lone_overlap, 2, "--every or --cron")
    error(zero, 2, "--every")
    text, listed = tc_all(shared, ["schedule", "list"], ["schedule", "ls", "--json"])
    header = text.stdout.splitlines()[0].split()
    assert header == ["ID", "COMMAND", "WHEN", "NEXT", "LAST", "TASK", "SUBMITTED", "SKIPPED"]
    assert "echo hi" in text.stdout and "cron */5 * * * *, no overlap" in text.stdout
    found = {s["id"]: s for s in json.loads(listed.stdout)}
    assert found[hourly]["labels"] == {"w": "s"} and found[five]["cron"] == "*/5 * * * *"
    removed, again, bad_id = tc_all(
        shared, ["schedule", "rm", str(hourly)], ["schedule", "remove", "--json", str(five)],
        ["schedule", "rm", "x"],
    )  # fmt: skip
    assert removed.stdout == f"schedule {hourly} removed\n", removed.stderr
    assert json.loads(again.stdout) == {"removed": five}
    error(bad_id, 2, "schedule id")
    error(tc(shared, "schedule", "rm", str(hourly)), 1, f"schedule {hourly}")
    tc(shared, "schedule", "rm", str(doc["id"]))


def test_batch_after_references(shared: Daemon, tmp_path: Path) -> None:
    script = tmp_path / "batch"
    script.write_text(
        "# a pipeline\n"
        "sleep 0.2; echo one\n"
        "\n"
        "@after 1 echo two\n"
        "@after-any 1,2  exit 1\n"
        "@after 3 echo never\n"
    )
    p = tc(shared, "submit", "--batch", str(script))
    one, two, three, four = ids_of(p)
    assert list(get(shared, two).spec.after_tasks) == [0]  # the same request: by place
    done = {i: ended(shared, i) for i in (one, two, three, four)}
    assert done[two].started_at.ToNanoseconds() >= done[one].ended_at.ToNanoseconds()
    assert done[three].state == pb.TASK_STATE_FAILED and done[three].spec.after_any
    assert done[four].state == pb.TASK_STATE_CANCELLED and str(three) in done[four].error
    batch = ("submit", "--batch", "-")
    later = tc(shared, *batch, input="true\n@after 2 true\n")
    mixed = tc(shared, *batch, "--after", str(one), input="@after-any 1 x\n")
    bare = tc(shared, *batch, input="true\n@after 1\n")
    error(later, 2, "line 2", "not the number of an earlier command")
    error(mixed, 2, "line 1", "--after")
    error(bare, 2, "line 2", "no command")


def test_batch_references_across_requests(
    shared: Daemon,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reference to a line of an earlier request is sent as that line's id (after), one in the
    same request as its place (after_tasks): 2 lines a request here, 1,000 in real life."""
    monkeypatch.setattr(_submit, "BATCH_SIZE", 2)
    script = tmp_path / "batch"
    script.write_text("sleep 0.2\ntrue\n@after 1,2 echo three\n@after 3,1 echo four\n")
    status = dispatch(["--socket", str(shared.socket), "submit", "--batch", str(script)])
    assert status == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    third, fourth = get(shared, ids[2]), get(shared, ids[3])
    assert (list(third.spec.after), list(third.spec.after_tasks)) == ([ids[0], ids[1]], [])
    assert (list(fourth.spec.after), list(fourth.spec.after_tasks)) == ([ids[0]], [0])
    assert ended(shared, ids[3]).state == pb.TASK_STATE_SUCCEEDED
    assert (
        ended(shared, ids[2]).started_at.ToNanoseconds()
        >= get(shared, ids[0]).ended_at.ToNanoseconds()
    )


def test_batch_references_across_a_real_chunk_boundary(shared: Daemon, tmp_path: Path) -> None:
    """1,002 lines: the last one refers to the first (the request before) and to the 1,001st (its
    own request). Queued in a paused group, so that none of them runs."""
    shared.stub.AddGroup(pb.AddGroupRequest(name="w-big"), timeout=5)
    shared.stub.Pause(pb.PauseRequest(groups=["w-big"]), timeout=5)
    script = tmp_path / "batch"
    script.write_text("true\n" * 1001 + "@after 1,1001 true\n")
    try:
        ids = ids_of(tc(shared, "submit", "--batch", str(script), "-g", "w-big"))
        assert len(ids) == 1002
        last = get(shared, ids[-1])
        assert (list(last.spec.after), list(last.spec.after_tasks)) == ([ids[0]], [0])
        assert last.state == pb.TASK_STATE_WAITING and set(last.waiting_on) == {ids[0], ids[1000]}
    finally:
        shared.stub.RemoveGroup(pb.RemoveGroupRequest(name="w-big", force=True), timeout=10)


def _editor(tmp_path: Path, text: str) -> dict[str, str]:
    """An $EDITOR that writes ``text`` into the file it is given."""
    script = tmp_path / "editor"
    script.write_text(f"#!/bin/sh\ncat > \"$1\" <<'EOF'\n{text}EOF\n")
    script.chmod(0o755)
    return {"EDITOR": str(script)}


def test_restart(shared: Daemon, tmp_path: Path) -> None:
    (done,) = add(shared, ["sh", "-c", "echo $0; exit 5", "first"])
    assert ended(shared, done).exit_code == 5
    d = str(done)
    again, as_json, failed, nothing, edit_failed = tc_all(
        shared, ["restart", d], ["restart", "--json", d], ["restart", "--failed"], ["restart"],
        ["restart", "--edit", "--failed"],
    )  # fmt: skip
    (new,) = ids_of(again)
    (other,) = json.loads(as_json.stdout)["ids"]
    assert ended(shared, new).exit_code == 5 and get(shared, new).restarted_from == done
    assert get(shared, new).stdout == b"first\n"
    assert done in {get(shared, i).restarted_from for i in ids_of(failed)}
    error(nothing, 2, "--failed")
    error(edit_failed, 2, "--edit")
    shown, listed = tc_all(shared, ["show", str(new)], ["list", "-n", "20"])
    assert f"restarted_from    {done}\n" in shown.stdout, shown.stdout
    assert f"restart of {done}" in listed.stdout
    (live,) = add(shared, ["sleep", "30"])
    error(tc(shared, "restart", str(live), d), 1, f"task {live}")
    shared.stub.Cancel(pb.CancelRequest(id=live), timeout=5)
    assert ended(shared, other).exit_code == 5

    edited = tc(shared, "restart", "--edit", d, env=_editor(tmp_path, "echo 'edited  words'\n"))
    (new,) = ids_of(edited)
    assert ended(shared, new).state == pb.TASK_STATE_SUCCEEDED
    t = get(shared, new)
    assert (list(t.spec.argv), t.stdout) == (["echo", "edited  words"], b"edited  words\n")
    unchanged = tc(shared, "restart", "--edit", d, env={"EDITOR": "true"})
    error(unchanged, 1, "not changed")
    unbalanced = tc(shared, "restart", "--edit", d, env=_editor(tmp_path, "echo 'oops\n"))
    error(unbalanced, 2, "quotation")


def test_edit(shared: Daemon, tmp_path: Path) -> None:
    later, plain, script = (
        submit_id(shared, "--delay", "1h", "-l", "a=1", "--", "echo", "old"),
        submit_id(shared, "--delay", "1h", "--", "echo", "plain"),
        submit_id(shared, "--delay", "1h", "--shell", "--", "echo", "one;", "echo", "two"),
    )
    t = str(later)
    changed, as_json, words, shell_words = tc_all(
        shared,
        ["edit", t, "--priority", "high", "--timeout", "1m", "-l", "b=2", "-e", "X=y"],
        ["edit", "--json", t, "--command", "echo 'new one'"],
        ["edit", str(script), "--", "echo", "three;", "echo", "four"],
        ["edit", str(plain), "--shell", "--", "echo", "a", "&&", "echo", "b"],
    )
    assert changed.stdout == f"{t} edited: priority, timeout, env, labels\n", changed.stderr
    doc = json.loads(as_json.stdout)
    assert doc["id"] == later and doc["argv"] == ["echo", "new one"], doc
    task = get(shared, later)
    assert task.spec.priority == pb.PRIORITY_HIGH and task.spec.timeout.seconds == 60
    assert dict(task.spec.labels) == {"b": "2"} and task.spec.env["X"] == "y"
    assert words.returncode == 0, words.stderr
    assert list(get(shared, script).spec.argv) == ["echo three; echo four"]  # stays a script
    assert shell_words.returncode == 0, shell_words.stderr
    shell = get(shared, plain).spec
    assert (list(shell.argv), shell.shell) == (["echo a && echo b"], True)

    by_editor = tc(shared, "edit", t, env=_editor(tmp_path, "echo 'from  editor'\n"))
    assert by_editor.stdout == f"{t} edited: argv\n", by_editor.stderr
    assert list(get(shared, later).spec.argv) == ["echo", "from  editor"]
    by_editor = tc(shared, "edit", str(script), env=_editor(tmp_path, "echo from editor\n"))
    assert list(get(shared, script).spec.argv) == ["echo from editor"]  # a shell task's script
    (live,) = add(shared, ["sleep", "30"])
    running(shared, live)
    on_running, bad_quote, both, unchanged = tc_all(
        shared,
        ["edit", str(live), "-p", "low"],
        ["edit", t, "--no-shell", "--command", "echo 'oops"],
        ["edit", t, "--command", "x", "--", "y"],
        ["edit", "999999", "-p", "low"],
    )
    error(on_running, 1, "RUNNING")
    error(bad_quote, 2, "--command")
    error(both, 2, "--command")
    error(unchanged, 1, "999999")
    shared.stub.Cancel(pb.CancelRequest(ids=[live, later, plain, script]), timeout=5)


NEW_COMMANDS = (["restart"], ["edit"], ["schedule"], ["schedule", "list"], ["schedule", "rm"])


def test_help_of_the_new_commands() -> None:
    helps = tc_all(None, ["submit", "--help"], *[[*a, "--help"] for a in NEW_COMMANDS])
    for args, p in zip([["submit"], *NEW_COMMANDS], helps, strict=True):
        assert p.returncode == 0 and p.stdout.startswith(f"Usage: taskerctl {' '.join(args)} ")
        if args != ["schedule"]:
            assert "Global options (also before the command):" in p.stdout, args
    submit = helps[0].stdout
    for row in ("--after ID[,ID...]", "--after-any ID[,ID...]", "--delay DUR", "--at TIME",
                "--every DUR", "--cron EXPR", "--overlap / --no-overlap", "--on-finish CMD",
                "'@after N[,N...] CMD'"):  # fmt: skip
        assert row in submit, row
    root = tc(None, "--help").stdout
    assert "restart" in root and "edit" in root and "schedule" in root
