"""Ctrl-C in `run`, `--wait` and `-f` (F11), `stats --watch` without a terminal (F14), and piped
standard input passed to `run`, `--wait` and `-f`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from tasker.v1 import tasker_pb2 as pb
from tests.cli.test_cli import submit_id, tc, tc_all
from tests.cli.test_results import wait_for
from tests.conftest import Daemon


def start(d: Daemon, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TASKER_SOCKET": str(d.socket)}
    return subprocess.Popen(
        [sys.executable, "-m", "taskerctl", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip


def running_with(d: Daemon, label: str, timeout: float = 15) -> int:
    """The id of the one task labelled ``t=label``, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = d.stub.List(pb.ListRequest(labels={"t": label}), timeout=5)
        if resp.tasks and resp.tasks[0].state == pb.TASK_STATE_RUNNING:
            return int(resp.tasks[0].id)
        time.sleep(0.05)
    raise AssertionError(f"no running task labelled t={label}")


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, out, err


def test_ctrl_c_cancels_the_task(shared: Daemon) -> None:
    """F11: Ctrl-C on `run -- sleep 30` printed no id (and left the task running before the
    daemon cancelled abandoned Runs); `--wait` and `-f` left it running silently."""
    procs = {
        "run": start(shared, "run", "-l", "t=int-run", "--", "sleep", "30"),
        "wait": start(shared, "submit", "--wait", "-l", "t=int-wait", "--", "sleep", "30"),
        "follow": start(shared, "submit", "-f", "-l", "t=int-follow", "--", "sleep", "30"),
    }
    for name, proc in procs.items():
        task_id = running_with(shared, f"int-{name}")
        code, _, err = interrupt(proc)
        assert code == 130, (name, err)
        said = (f"taskerctl: interrupted: task {task_id} cancelled\n",)
        if name == "run":  # interrupted before the call's first event: the id is not known yet
            said += ("taskerctl: interrupted: the task is cancelled\n",)
        assert err.endswith(said), (name, err)
        wait_for(shared, task_id, pb.TASK_STATE_CANCELLED)


def test_ctrl_c_can_detach(shared: Daemon) -> None:
    """--detach-on-interrupt: Ctrl-C leaves the task running, and says how to find it."""
    for mode in ("--wait", "-f"):
        label = f"int-detach{mode}"
        proc = start(shared, "submit", mode, "--detach-on-interrupt", "-l", f"t={label}",
                     "--", "sleep", "30")  # fmt: skip
        task_id = running_with(shared, label)
        code, _, err = interrupt(proc)
        assert code == 130
        assert err.endswith(f"interrupted: task {task_id} goes on (taskerctl wait {task_id})\n")
        time.sleep(0.3)
        assert wait_for(shared, task_id, pb.TASK_STATE_RUNNING)
        assert tc(shared, "cancel", str(task_id)).returncode == 0


def test_ctrl_c_stops_a_wait_and_a_follow_not_their_task(shared: Daemon) -> None:
    task_id = submit_id(shared, "-l", "t=int-logs", "--", "sleep", "30")
    wait_for(shared, task_id, pb.TASK_STATE_RUNNING)
    for args in (["wait", str(task_id)], ["logs", "-f", str(task_id)]):
        proc = start(shared, *args)
        time.sleep(1)
        code, _, err = interrupt(proc)
        assert code == 130, (args, err)
        assert err.startswith("taskerctl: interrupted"), (args, err)
    assert wait_for(shared, task_id, pb.TASK_STATE_RUNNING)
    assert tc(shared, "cancel", str(task_id)).returncode == 0


def read_lines(proc: subprocess.Popen[str], count: int, timeout: float) -> list[str]:
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if len(lines) >= count:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return lines


def test_stats_watch_prints_a_line_per_interval_when_piped(shared: Daemon) -> None:
    """F14: `stats --watch` printed nothing without a terminal."""
    for args in (["stats", "--watch", "--interval", "200ms"], ["--json", "stats", "-w"]):
        proc = start(shared, *args)
        try:
            lines = read_lines(proc, 3, timeout=15)
        finally:
            code, _, err = interrupt(proc)
        assert len(lines) == 3, (args, lines, err)
        assert code == 0 and err == ""
        if "--json" in args:
            assert all("queue_capacity" in json.loads(line) for line in lines)
        else:
            assert all(" running " in line and " queued " in line for line in lines)


def test_piped_stdin_reaches_the_task(shared: Daemon) -> None:
    """`echo hi | taskerctl run -- cat` printed nothing."""
    ran = tc(shared, "run", "--", "cat", input="hi\n")
    assert (ran.returncode, ran.stdout) == (0, "hi\n"), ran.stderr
    followed = tc(shared, "submit", "-f", "--", "cat", input="via follow\n")
    assert followed.stdout == "via follow\n"
    waited = tc(shared, "submit", "--wait", "--", "cat", input="via wait\n")
    assert waited.returncode == 0
    off = tc(shared, "run", "--no-stdin", "--", "cat", input="not passed\n")
    assert (off.returncode, off.stdout) == (0, "")
    plain = tc(shared, "submit", "--", "cat", input="not read\n")  # returns at once: not passed
    logs, waited_logs = tc_all(
        shared, ["logs", "-f", plain.stdout.strip()], ["logs", waited.stdout.strip()]
    )
    assert logs.stdout == "" and waited_logs.stdout == "via wait\n"
    binary = subprocess.run(
        [sys.executable, "-m", "taskerctl", "run", "--", "od", "-An", "-tx1"],
        input=bytes(range(256)), capture_output=True, timeout=30,
        env={**os.environ, "TASKER_SOCKET": str(shared.socket)},
    )  # fmt: skip
    assert binary.stdout.split() == [f"{i:02x}".encode() for i in range(256)]


def test_a_stop_after_interrupted_calls_ends_at_once(make_daemon: type[Daemon]) -> None:
    """After Ctrl-C on `run`, `--wait` and `-f`, a stop hung until killed: an abandoned Run
    was cancelled twice in the engine (its call, then its task), and the second cancel skipped
    the engine's bookkeeping, so the stop waited for that run forever."""
    d = make_daemon("--workers", "4")
    test_ctrl_c_cancels_the_task(d)
    began = time.monotonic()
    assert d.stop(timeout=15) == 0
    assert time.monotonic() - began < 5
