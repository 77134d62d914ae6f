"""What the commands say is true, and nothing is silent: truncated output, absent values,
the daemon's status, exit statuses and the one line that says why, retries, list's limit."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tasker.v1 import tasker_pb2 as pb
from tests.cli.test_cli import submit_id, tc, tc_all
from tests.conftest import Daemon


def wait_for(d: Daemon, task_id: int, state: int, timeout: float = 15) -> pb.Task:
    deadline = time.monotonic() + timeout
    while True:
        task = d.stub.Get(pb.GetRequest(id=task_id), timeout=5)
        if task.state == state or time.monotonic() > deadline:
            assert task.state == state, task
            return task
        time.sleep(0.02)


def test_truncated_output_is_said(make_daemon: type[Daemon]) -> None:
    """F5: `show` said stdout_truncated False for a capped output; `logs` printed the first
    output_limit bytes with no sign that the rest was dropped."""
    d = make_daemon("--workers", "1", config="output_limit = 100")
    task_id = submit_id(d, "--wait", "--shell", "--", "head -c 1000 /dev/zero | tr '\\0' x")
    shown, text, logs, only_err = tc_all(
        d, ["show", "--json", str(task_id)], ["show", str(task_id)], ["logs", str(task_id)],
        ["logs", "--stderr", str(task_id)],
    )  # fmt: skip
    record = json.loads(shown.stdout)
    assert record["stdout_truncated"] is True and record["stderr_truncated"] is False
    assert "stdout" not in record  # output only with --output
    assert "stdout_truncated  yes" in text.stdout
    assert logs.returncode == 0 and logs.stdout == "x" * 100
    assert logs.stderr == (
        f"taskerctl: task {task_id}: only the first 100 bytes of its stdout were kept "
        "(the daemon's output_limit); the rest was dropped\n"
    )
    assert only_err.stderr == ""  # the stream not asked for is not reported


def test_absent_means_absent_and_show_reads_as_text(make_daemon: type[Daemon]) -> None:
    """F6: a queued task showed exit_status 1, pid 0, worker 0; show printed Python reprs."""
    d = make_daemon("--workers", "1", "--max-workers", "1")
    running = submit_id(d, "--", "sleep", "30")
    wait_for(d, running, pb.TASK_STATE_RUNNING)
    queued = submit_id(d, "--label", "k=v", "--", "echo", "it's late")
    as_json, as_text, listed, run_json = tc_all(
        d, ["show", "--json", str(queued)], ["show", str(queued)], ["list", "--json"],
        ["show", "--json", str(running)],
    )  # fmt: skip
    record = json.loads(as_json.stdout)
    assert record["state"] == "queued"
    for key in ("pid", "worker", "exit_status", "exit_code", "signal", "started_at", "run"):
        assert record[key] is None, key
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rows[queued]["pid"] is None and rows[queued]["exit_status"] is None
    started = json.loads(run_json.stdout)
    assert started["pid"] > 0 and started["worker"] == 1 and started["exit_status"] is None
    text = dict(line.split(None, 1) for line in as_text.stdout.splitlines())
    assert text["argv"] == "echo 'it'\"'\"'s late'"  # shell-quoted: what to type
    for key in ("pid", "worker", "exit_status", "exit_code", "signal", "error", "started_at"):
        assert text[key] == "-", key
    assert text["labels"] == "k=v" and text["shell"] == "no"
    assert "None" not in as_text.stdout and "[" not in as_text.stdout
    assert tc(d, "cancel", "--all").returncode == 0


def test_daemon_status_json_keeps_the_flag_and_the_count(shared: Daemon) -> None:
    """F7: `--json daemon status` printed "running": 0, the count overwriting the flag."""
    task_id = submit_id(shared, "--", "sleep", "30")
    wait_for(shared, task_id, pb.TASK_STATE_RUNNING)
    doc = json.loads(tc(shared, "--json", "daemon", "status").stdout)
    stats = shared.stub.Stats(pb.StatsRequest(), timeout=5)
    assert doc["up"] is True and doc["running"] == stats.running >= 1
    assert doc["socket"] == str(shared.socket)
    assert tc(shared, "cancel", str(task_id)).returncode == 0


def test_daemon_status_json_when_down(tmp_path: Path) -> None:
    p = tc(tmp_path / "none.sock", "daemon", "status", "--json")
    assert p.returncode == 69
    assert json.loads(p.stdout) == {"socket": str(tmp_path / "none.sock"), "up": False}


def crash_while_running(d: Daemon, *task_ids: int) -> None:
    """kill -9 the daemon once the tasks are journaled RUNNING; start it again."""
    for task_id in task_ids:
        wait_for(d, task_id, pb.TASK_STATE_RUNNING)
    time.sleep(0.5)  # journaled RUNNING (after 100 ms of running)
    d.kill9()
    d.start()


def test_failed_without_an_exit_status_is_not_127(make_daemon: type[Daemon]) -> None:
    """A FAILED task with no exit code ("interrupted during its last allowed attempt") exited
    127, "command not found"."""
    d = make_daemon("--workers", "1", config="max_retries = 0")
    task_id = submit_id(d, "--", "sleep", "30")
    crash_while_running(d, task_id)
    waited, shown = tc_all(d, ["wait", str(task_id)], ["show", "--json", str(task_id)])
    assert waited.returncode == 122, waited.stderr
    assert waited.stderr == (
        f"taskerctl: task {task_id} failed: interrupted during its last allowed attempt, "
        "and stopped\n"
    )
    assert json.loads(shown.stdout)["exit_status"] == 122
    missing = tc(d, "submit", "--wait", "--", "no-such-command-xyz")
    assert missing.returncode == 127  # could not be started: still 127


def test_max_requeues_is_the_old_retries(make_daemon: type[Daemon]) -> None:
    """--max-requeues N is TaskSpec.max_retries (what --retries used to mean): re-queues after
    an attempt lost to a crash, over the daemon's max_retries."""
    d = make_daemon("--workers", "2", config="max_retries = 1")
    kept = submit_id(d, "--max-requeues", "1", "--", "sleep", "30")
    failed = submit_id(d, "--max-requeues", "0", "--", "sleep", "30")
    crash_while_running(d, kept, failed)
    assert tc(d, "wait", str(failed)).returncode == 122
    assert wait_for(d, kept, pb.TASK_STATE_RUNNING).attempts == 2  # run again
    assert tc(d, "cancel", str(kept)).returncode == 0


def test_every_failure_says_why(shared: Daemon) -> None:
    """F10: `submit --wait -- nonexistent` exited 127 silently (so did -f and run), and
    `run -t 1s -- sleep 5` exited 124 silently. A task's own exit status after its own output
    (run, -f) needs no line; after --wait, which shows no output, it gets one."""
    waited, followed, ran, timed_out, own, own_waited = tc_all(
        shared,
        ["submit", "--wait", "--", "no-such-command-xyz"],
        ["submit", "-f", "--", "no-such-command-xyz"],
        ["run", "--", "no-such-command-xyz"],
        ["run", "-t", "300ms", "--", "sleep", "5"],
        ["run", "--", "sh", "-c", "echo oops >&2; exit 4"],
        ["submit", "--wait", "--", "sh", "-c", "exit 4"],
    )
    for p in (waited, followed, ran):
        assert p.returncode == 127
        line = p.stderr.splitlines()[-1]
        assert line.startswith("taskerctl: task ") and line.endswith(
            " failed: spawn failed: no-such-command-xyz: No such file or directory"
        ), p.stderr
    assert timed_out.returncode == 124
    assert timed_out.stderr.endswith(" timed out: timed out after 300ms\n"), timed_out.stderr
    assert (own.returncode, own.stderr) == (4, "oops\n")
    assert own_waited.returncode == 4 and own_waited.stderr.endswith(" exited with status 4\n")


def test_logs_follow_exits_with_the_task_status(shared: Daemon) -> None:
    """F13: `logs -f` of a task that exited 2 exited 0."""
    task_id = submit_id(shared, "--", "sh", "-c", "sleep 0.3; echo done; exit 2")
    live, late = tc(shared, "logs", "-f", str(task_id)), tc(shared, "logs", "-f", str(task_id))
    for p in (live, late):
        assert (p.returncode, p.stdout) == (2, "done\n"), p.stderr


def test_shell_joins_the_words(shared: Daemon) -> None:
    """F9: `submit --shell -- echo hello` ran `sh -c echo hello` (hello became $0)."""
    task_id = submit_id(shared, "--wait", "--shell", "--", "echo", "hello", "'big  world'")
    assert tc(shared, "logs", str(task_id)).stdout == "hello big  world\n"
    one = submit_id(shared, "--wait", "--shell", "--", "echo $((1 + 2))")
    assert tc(shared, "logs", str(one)).stdout == "3\n"


def test_retries_and_max_requeues(shared: Daemon, tmp_path: Path) -> None:
    """`--retries 2 -- false` made one attempt: --retries is TaskSpec.retries now; the old
    meaning (re-queues after a lost attempt) is --max-requeues."""
    log = tmp_path / "attempts"
    p = tc(shared, "submit", "--wait", "--retries", "2", "--max-requeues", "1", "--shell", "--",
           f"echo $TASKER_ATTEMPT >> {log}; exit 3")  # fmt: skip
    assert p.returncode == 3
    assert log.read_text().split() == ["1", "2", "3"]
    task_id = int(p.stdout)
    record = json.loads(tc(shared, "show", "--json", str(task_id)).stdout)
    assert (record["attempts"], record["retries"]) == (3, 2)
    slow = tc(shared, "submit", "-f", "--retries", "1", "--", "sh", "-c", "sleep 0.3; exit 5")
    assert slow.returncode == 5
    assert "attempt 1 failed (exited with status 5); it runs again\n" in slow.stderr


def test_list_says_when_rows_were_cut(shared: Daemon) -> None:
    """`list` did not say that rows were cut at the default limit of 50; `-n 0` and `-n -1`
    printed an empty table silently."""
    lines = "true\n" * 51
    assert tc(shared, "submit", "--batch", "-", "-l", "grp=cut", input=lines).returncode == 0
    default, two, all_, json_cut, zero, negative = tc_all(
        shared,
        ["list", "-l", "grp=cut"],
        ["list", "-l", "grp=cut", "-n", "2"],
        ["list", "-l", "grp=cut", "-n", "51"],
        ["list", "-l", "grp=cut", "-n", "3", "--json"],
        ["list", "-n", "0"],
        ["list", "-n", "-1"],
    )
    note = "taskerctl: showing the newest {} tasks; there are more (--limit N)\n"
    assert len(default.stdout.splitlines()) == 51 and default.stderr == note.format(50)
    assert len(two.stdout.splitlines()) == 3 and two.stderr == note.format(2)
    assert len(all_.stdout.splitlines()) == 52 and all_.stderr == ""
    assert len(json.loads(json_cut.stdout)) == 3 and json_cut.stderr == note.format(3)
    for p in (zero, negative):
        assert p.returncode == 2 and p.stdout == ""
        assert "is not a whole number from 1" in p.stderr
