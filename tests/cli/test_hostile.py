"""F4: never a traceback. Every command, given hostile arguments, says what is wrong in one line
on stderr and exits 1 (an error) or 2 (a usage error)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cli.test_cli import submit_id, tc, tc_all
from tests.conftest import Daemon

HUGE = "99999999999999999999999"


def hostile(task_id: int, bad_batch: Path) -> list[list[str]]:
    t = str(task_id)
    return [
        # ids that no request can carry
        ["show", HUGE], ["logs", HUGE], ["logs", "-f", HUGE], ["cancel", HUGE], ["wait", HUGE],
        ["wait", t, HUGE], ["show", "0"], ["show", "--", "-1"], ["show", "1.5"], ["show", "x"],
        ["show", "99999999"], ["logs", "99999999"], ["cancel", "99999999"],
        ["wait", "99999999"], ["show"], ["logs"], ["cancel"], ["wait"],
        # numbers and durations out of range or malformed
        ["submit", "--retries", "-1", "--", "true"], ["submit", "--retries", HUGE, "true"],
        ["submit", "--retries", "101", "true"], ["submit", "--max-requeues", "-1", "true"],
        ["submit", "--once", "--retries", "1", "true"],
        ["submit", "--timeout", "-5s", "true"], ["submit", "--timeout", "0", "true"],
        ["submit", "--timeout", "1e400", "true"], ["submit", "--timeout", "nan", "true"],
        ["submit", "--timeout", "31d", "true"], ["submit", "--queue-timeout", "5x", "true"],
        ["run", "--timeout", HUGE + "s", "true"],
        ["stats", "--watch", "--interval", "abc"], ["stats", "--interval", "0"],
        ["stats", "--watch", "--interval", "-1s"],
        ["clean", "--older-than", HUGE + "999999s"], ["clean", "--older-than", "-1s"],
        ["clean", "--older-than", "soon"],
        ["list", "-n", "0"], ["list", "-n", "-1"], ["list", "-n", "abc"], ["list", "-n", HUGE],
        # names, pairs, files, commands
        ["submit", "--priority", "urgent", "true"], ["submit", "--priority", "", "true"],
        ["submit", "-e", "NOEQUALS", "true"], ["submit", "-e", "=v", "true"],
        ["submit", "-l", "=v", "true"], ["submit", "-l", "k" * 100 + "=v", "true"],
        ["list", "--state", "bogus"], ["list", "-l", "novalue"], ["cancel", "--state", "failed"],
        ["cancel", "--label", "x"], ["submit", "--batch", str(bad_batch)],
        ["submit", "--batch", "/nonexistent/jobs"], ["submit", "--batch", "/"],
        ["submit", "--batch", "-", "true"], ["submit", "--wait", "--batch", "-"],
        ["submit"], ["run"], ["submit", "--"], ["run", "--cwd", "/nonexistent", "true"],
        ["submit", "--cwd", "relative/nowhere", "true"], ["submit", "--bogus", "true"],
        ["show", t, "extra"], ["metrics", "extra"], ["daemon", "bogus"], ["bogus"],
        ["--show-completion", "tcsh"], ["stats", "--json", "--json", "--bogus"],
    ]  # fmt: skip


def check(args: list[str], p: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in p.stderr, (args, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskerctl: error: "), (args, p.stderr)
    assert p.returncode in (1, 2), (args, p.returncode, p.stderr)


def test_hostile_arguments_one_line_never_a_traceback(shared: Daemon, tmp_path: Path) -> None:
    bad_batch = tmp_path / "bad.txt"
    bad_batch.write_bytes(b"echo fine\n\xff\xfe not utf-8\n")
    task_id = submit_id(shared, "--", "true")
    cases = hostile(task_id, bad_batch)
    for start in range(0, len(cases), 16):  # 2 cores: not all at once
        chunk = cases[start : start + 16]
        for args, p in zip(chunk, tc_all(shared, *chunk), strict=True):
            check(args, p)
    # piped: a batch that is not UTF-8, stdin over 1 MiB
    env = {**os.environ, "TASKER_SOCKET": str(shared.socket)}
    piped = subprocess.run(
        [sys.executable, "-m", "taskerctl", "submit", "--batch", "-"],
        input=b"true\n\xff\n", capture_output=True, env=env, timeout=30,
    )  # fmt: skip
    check(["submit", "--batch", "-"], subprocess.CompletedProcess(
        piped.args, piped.returncode, piped.stdout.decode(), piped.stderr.decode()
    ))  # fmt: skip
    big = "x" * ((1 << 20) + 1)
    for args in (["run", "--", "cat"], ["submit", "--wait", "--", "cat"]):
        p = tc(shared, *args, input=big)
        check(args, p)
        assert "--no-stdin" in p.stderr and p.returncode == 1


def test_no_daemon_one_line(tmp_path: Path) -> None:
    cases = (["show", "1"], ["logs", "-f", "1"], ["wait", "--all"], ["cancel", "--all"],
             ["stats", "--watch"], ["clean"], ["daemon", "stop"], ["list", "--json"])  # fmt: skip
    for args, p in zip(cases, tc_all(tmp_path / "none.sock", *cases), strict=True):
        assert p.returncode == 69, (args, p.stderr)
        assert p.stderr.count("\n") == 1 and "taskerd is not running" in p.stderr, p.stderr
