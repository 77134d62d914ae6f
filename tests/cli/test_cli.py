"""Every taskerctl command, run as a subprocess against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import Daemon


def tc(
    daemon: Daemon | Path | None,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m taskerctl ARGS`` with TASKER_SOCKET pointing at ``daemon``; stdin is
    ``input``, else /dev/null (``run``, ``--wait`` and ``--follow`` pass piped stdin on)."""
    full = dict(os.environ)
    full.pop("TASKER_SOCKET", None)
    if daemon is not None:
        full["TASKER_SOCKET"] = str(daemon.socket if isinstance(daemon, Daemon) else daemon)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "taskerctl", *args],
        capture_output=True,
        text=True,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        env=full,
        timeout=timeout,
    )


def tc_all(
    daemon: Daemon | Path | None, *argvs: Sequence[str]
) -> list[subprocess.CompletedProcess[str]]:
    """Run several independent invocations at once (each is mostly interpreter start-up)."""
    with ThreadPoolExecutor(len(argvs)) as pool:
        return list(pool.map(lambda a: tc(daemon, *a), argvs))


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    lines = p.stderr.strip().splitlines()
    assert lines and lines[0].startswith("taskerctl: error: "), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def submit_id(shared: Daemon, *args: str) -> int:
    p = tc(shared, "submit", *args)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.strip())


def test_submit_prints_id_and_show_json(shared: Daemon) -> None:
    task_id = submit_id(shared, "--priority", "high", "--timeout", "5s", "-l", "k=v", "echo", "hi")
    assert tc(shared, "wait", str(task_id)).returncode == 0
    full, global_json, text, submitted = tc_all(
        shared,
        ["show", str(task_id), "--json", "--output"],
        ["--json", "show", str(task_id)],
        ["show", str(task_id)],
        ["submit", "--json", "true"],
    )
    shown = json.loads(full.stdout)
    assert shown["id"] == task_id and shown["state"] == "succeeded"
    assert shown["priority"] == "high" and shown["timeout"] == 5 and shown["labels"] == {"k": "v"}
    assert shown["argv"] == ["echo", "hi"] and shown["stdout"] == "hi\n"
    assert json.loads(global_json.stdout)["id"] == task_id
    assert "succeeded" in text.stdout and "echo" in text.stdout
    assert json.loads(submitted.stdout)["id"] > task_id


def test_options_end_at_the_command(shared: Daemon) -> None:
    # -c belongs to sh; a trailing --wait is an argument of sh ($0), not ours.
    p = tc(shared, "submit", "sh", "-c", "exit 3", "--wait")
    assert p.returncode == 0 and p.stdout.strip().isdigit()
    assert tc(shared, "wait", p.stdout.strip()).returncode == 3
    assert tc(shared, "submit", "--wait", "sh", "-c", "exit 3").returncode == 3
    assert tc(shared, "submit", "--wait", "--", "sh", "-c", "exit 3").returncode == 3
    assert tc(shared, "--socket", str(shared.socket), "submit", "--wait", "true").returncode == 0


def test_exit_codes_of_tasks(shared: Daemon) -> None:
    timed_out, killed, missing = tc_all(
        shared,
        ["submit", "--wait", "-t", "300ms", "sleep", "10"],
        ["submit", "--wait", "sh", "-c", "kill -TERM $$"],
        ["submit", "--wait", "no-such-command-xyz"],
    )
    assert (timed_out.returncode, killed.returncode, missing.returncode) == (124, 143, 127)
    task_id = submit_id(shared, "sleep", "30")
    c = tc(shared, "cancel", str(task_id))
    assert c.returncode == 0 and f"{task_id} cancelled" in c.stdout
    w, again, unknown = tc_all(
        shared, ["wait", str(task_id)], ["cancel", str(task_id)], ["cancel", "999999999"]
    )
    assert w.returncode == 125 and "cancelled" in w.stderr
    assert "already finished" in again.stdout or "cancelled" in again.stdout
    assert unknown.returncode == 1


def test_env_cwd_and_caller_environment(shared: Daemon, tmp_path: Path) -> None:
    script = 'test "$FOO" = bar && test "$CALLER" = yes && test "$(pwd)" = "$WANT"'
    p = tc(
        shared,
        "submit", "--wait", "-e", "FOO=bar", "--cwd", str(tmp_path), "--shell", script,
        env={"CALLER": "yes", "WANT": str(tmp_path)},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr


def test_follow_keeps_order_and_streams_apart(shared: Daemon) -> None:
    script = "for i in $(seq 1 20); do echo out$i; echo err$i >&2; sleep 0.02; done; exit 2"
    p = tc(shared, "submit", "--follow", "--shell", script)
    assert p.returncode == 2
    assert p.stdout.splitlines() == [f"out{i}" for i in range(1, 21)]
    err = p.stderr.splitlines()
    assert err[0].isdigit()  # the id goes to stderr, as stdout carries the output
    assert err[1:] == [f"err{i}" for i in range(1, 21)]


def test_run_streams_and_exits_with_code(shared: Daemon) -> None:
    p = tc(shared, "run", "--", "sh", "-c", "echo hi; echo oops >&2; exit 4")
    assert (p.returncode, p.stdout, p.stderr) == (4, "hi\n", "oops\n")
    j = tc(shared, "run", "--json", "echo", "x")
    assert j.returncode == 0 and json.loads(j.stdout)["stdout"] == "x\n"


def test_list_logs_wait_many(shared: Daemon) -> None:
    lines = "".join(f"echo o{i}; echo e{i} >&2\n" for i in range(3))
    ids = [
        int(x)
        for x in tc(shared, "submit", "--batch", "-", "-l", "grp=lw", input=lines).stdout.split()
    ]
    assert len(ids) == 3 and tc(shared, "wait", *map(str, ids)).returncode == 0
    listed, table, none, bad, logs, err_only, followed, all_ = tc_all(
        shared,
        ["list", "--json", "--label", "grp=lw"],
        ["ls", "--label", "grp=lw", "--state", "succeeded"],
        ["--json", "list", "--state", "lost"],
        ["list", "--state", "bogus"],
        ["logs", str(ids[1])],
        ["logs", "--stderr", str(ids[1])],
        ["logs", "-f", str(ids[2])],
        ["wait", "--all"],
    )
    assert [r["id"] for r in json.loads(listed.stdout)] == ids[::-1]
    assert table.returncode == 0 and all(str(i) in table.stdout for i in ids)
    assert "succeeded" in table.stdout
    assert json.loads(none.stdout) == [] and bad.returncode == 2
    assert (logs.stdout, logs.stderr) == ("o1\n", "e1\n")
    assert (err_only.stdout, err_only.stderr) == ("", "e1\n")
    assert (followed.stdout, followed.stderr) == ("o2\n", "e2\n")
    assert all_.returncode == 0


def test_batch_submit(shared: Daemon, tmp_path: Path) -> None:
    batch = tmp_path / "jobs.txt"
    batch.write_text("".join(f"echo job{i} | tr a-z A-Z\n" for i in range(30)) + "\n# comment\n")
    p = tc(shared, "submit", "--batch", str(batch), "-l", "grp=batch")
    ids = [int(x) for x in p.stdout.split()]
    assert p.returncode == 0 and len(ids) == 30 and ids == sorted(ids)
    s = tc(shared, "submit", "--batch", "-", input="true\nexit 1\n")
    a, b = s.stdout.split()
    waited, logs, mixed = tc_all(
        shared, ["wait", *map(str, ids)], ["logs", str(ids[7])], ["wait", a, b]
    )
    assert waited.returncode == 0 and mixed.returncode == 1
    assert logs.stdout in ("JOB7\n", "")  # may still be queued...
    assert tc(shared, "logs", str(ids[7])).stdout == "JOB7\n"  # ...but not after the wait


def test_stats_metrics_clean_daemon_status(shared: Daemon) -> None:
    stats_j, stats_t, metrics_j, metrics_t, status, bad_clean = tc_all(
        shared,
        ["stats", "--json"],
        ["stats"],
        ["--json", "metrics"],
        ["metrics"],
        ["daemon", "status"],
        ["clean", "--older-than", "soon"],
    )
    stats = json.loads(stats_j.stdout)
    assert stats["base_workers"] == 4 and "queued" in stats
    assert "workers" in stats_t.stdout
    assert json.loads(metrics_j.stdout)["completed"] >= 1
    assert "success_rate" in metrics_t.stdout
    assert status.returncode == 0 and str(shared.socket) in status.stdout
    assert bad_clean.returncode == 2
    c = tc(shared, "clean", "--older-than", "0s")
    assert c.returncode == 0 and c.stdout.startswith("removed ")


def test_usage_errors_exit_2(shared: Daemon) -> None:
    cases = (
        ["submit", "--timeout", "5x", "true"],
        ["submit", "--bogus", "true"],
        ["submit", "--priority", "urgent", "true"],
        ["submit"],
        ["submit", "-e", "NOEQUALS", "true"],
        ["show", "notanumber"],
        ["nosuchcommand"],
    )
    for args, p in zip(cases, tc_all(shared, *cases), strict=True):
        assert p.returncode == 2, (args, p.stderr)
        one_line_error(p)
    sub_help, main_help, version = tc_all(None, ["submit", "--help"], ["--help"], ["--version"])
    assert "Exit status" in sub_help.stdout and "--priority" in sub_help.stdout
    assert "124" in main_help.stdout and "submit" in main_help.stdout
    assert version.stdout.startswith("taskerctl ")


def test_no_daemon_exit_69(tmp_path: Path) -> None:
    cases = (["submit", "true"], ["list"], ["daemon", "status"], ["run", "true"])
    for args, p in zip(cases, tc_all(tmp_path / "none.sock", *cases), strict=True):
        assert p.returncode == 69, (args, p.stderr)
        line = one_line_error(p)
        sock = tmp_path / "none.sock"
        assert "taskerd is not running" in line and f"taskerd --socket {sock} &" in line


def test_queue_full_exit_75_and_daemon_stop(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1", "--max-queue", "2")
    codes = [tc(d, "submit", "sleep", "30").returncode for _ in range(2)]
    while codes[-1] == 0 and len(codes) < 6:
        codes.append(tc(d, "submit", "sleep", "30").returncode)
    assert codes[:2] == [0, 0] and codes[-1] == 75, codes
    full = tc(d, "submit", "true")
    assert full.returncode == 75 and "queue full" in one_line_error(full)
    assert tc(d, "daemon", "kill").returncode == 0
    assert d.proc is not None and d.proc.wait(20) == 0


def test_cli_import_is_lazy(tmp_path: Path) -> None:
    """``import taskerctl.cli`` loads nothing heavy; help needs no gRPC; submit needs no rich
    (tables, progress bars), and nothing loads typer (its per-option pydantic coercion costs
    ~100 ms a run): start-up stays close to a minimal gRPC client's."""
    heavy = ("click", "grpc", "pydantic", "rich", "typer")
    code = (
        "import sys, taskerctl.cli\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
        "try:\n"
        "    taskerctl.cli.dispatch(sys.argv[1:])\n"
        "finally:\n"
        f"    print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "TASKER_SOCKET": str(tmp_path / "none.sock")}
    runs = {
        "help": ["submit", "--help"],
        "submit": ["submit", "--", "true"],
    }
    loaded = {}
    for name, args in runs.items():
        out = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
        )
        lines = out.stdout.strip().splitlines()
        loaded[name] = (lines[0], lines[-1])
    assert loaded["help"] == ("[]", "['click']")
    assert loaded["submit"] == ("[]", "['click', 'grpc']")
