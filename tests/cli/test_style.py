"""One house style: one parser and one help layout for every command, the global options in the
same places everywhere, --json honoured by every command, -V, and completion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.test_cli import submit_id, tc, tc_all
from tests.conftest import Daemon

COMMANDS = (
    ["submit"], ["run"], ["list"], ["ls"], ["show"], ["logs"], ["wait"], ["cancel"], ["clean"],
    ["stats"], ["metrics"], ["daemon", "status"], ["daemon", "stop"], ["daemon", "drain"],
    ["daemon", "kill"],
)  # fmt: skip


def test_one_help_layout_for_every_command() -> None:
    runs = tc_all(None, ["--help"], ["daemon", "--help"], *[[*c, "--help"] for c in COMMANDS])
    for args, p in zip([[], ["daemon"], *COMMANDS], runs, strict=True):
        out = p.stdout
        assert p.returncode == 0 and p.stderr == "", (args, p.stderr)
        assert out.startswith(f"Usage: taskerctl {' '.join(args)}".rstrip() + " "), (args, out)
        for foreign in ("╭", "│", "<bool>", "<int>", "<list", "<str>", "{ID}", "[required]"):
            assert foreign not in out, (args, foreign)
        if args and args != ["daemon"]:  # a command: its own options, then the global ones
            assert "\nGlobal options (also before the command):\n  --socket PATH" in out, args
            assert "  --json " in out and "  -h, --help " in out
    helps = dict(zip(["root", "daemon", *(" ".join(c) for c in COMMANDS)], runs, strict=True))
    submit = helps["submit"].stdout
    assert submit.startswith("Usage: taskerctl submit [OPTIONS] [--] COMMAND [ARG]...\n")
    for row in (
        "-t, --timeout DUR",
        "-e, --env K=V",
        "--retries N",
        "--max-requeues N",
        "-p, --priority PRIO",
        "--batch FILE",
        "--detach-on-interrupt",
        "--no-stdin",
    ):
        assert row in submit, row  # fmt: skip
    assert "Exit status:" in submit and "122" in submit
    assert helps["show"].stdout.startswith("Usage: taskerctl show [OPTIONS] ID\n")
    assert "-n, --limit N" in helps["list"].stdout and "--interval DUR" in helps["stats"].stdout
    root = helps["root"].stdout
    assert "-V, --version" in root and "--show-completion" in root and "  list, ls " in root


def test_global_options_after_every_command(shared: Daemon, tmp_path: Path) -> None:
    """--socket and --json work after the command name, for every command (`stats --socket`
    was refused), and --json makes stdout one JSON document."""
    task_id = submit_id(shared, "--", "true")
    s = str(shared.socket)
    cases = (
        ["submit", "--socket", s, "--json", "true"],
        ["run", "--socket", s, "--json", "true"],
        ["list", "--socket", s, "--json", "-n", "1"],
        ["show", str(task_id), "--socket", s, "--json"],
        ["logs", str(task_id), "--socket", s, "--json"],
        ["logs", "-f", str(task_id), "--socket", s, "--json"],
        ["wait", str(task_id), "--socket", s, "--json"],
        ["cancel", str(task_id), "--socket", s, "--json"],
        ["clean", "--older-than", "1d", "--socket", s, "--json"],
        ["stats", "--socket", s, "--json"],
        ["metrics", "--socket", s, "--json"],
        ["daemon", "status", "--socket", s, "--json"],
        ["--socket", s, "--json", "logs", str(task_id)],
        ["--socket", s, "--json", "cancel", str(task_id)],
        ["--json", "--socket", s, "clean", "--older-than", "1d"],
    )
    # TASKER_SOCKET names no daemon: only the options reach it.
    for args, p in zip(cases, tc_all(tmp_path / "none.sock", *cases), strict=True):
        assert p.returncode == 0, (args, p.stderr)
        json.loads(p.stdout)  # one document, nothing else
    logs = json.loads(tc(shared, "--json", "logs", str(task_id)).stdout)
    assert logs == {
        "id": task_id, "state": "succeeded", "stdout": "", "stdout_truncated": False,
        "stderr": "", "stderr_truncated": False,
    }  # fmt: skip


def test_json_follow_keeps_the_output_in_the_document(shared: Daemon) -> None:
    """`submit --json -f` printed the task's output and the JSON on the same stdout."""
    script = "echo out; echo err >&2; exit 3"
    followed, ran = tc_all(
        shared,
        ["submit", "--json", "-f", "--shell", "--", script],
        ["--json", "run", "--shell", "--", script],
    )
    for p in (followed, ran):
        doc = json.loads(p.stdout)
        assert p.returncode == 3 and doc["exit_status"] == 3, p.stderr
        assert (doc["stdout"], doc["stderr"]) == ("out\n", "err\n")


def test_json_daemon_stop(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1")
    p = tc(d, "daemon", "stop", "--json")
    assert p.returncode == 0 and json.loads(p.stdout) == {"shutdown": "stop"}
    assert d.proc is not None and d.proc.wait(20) == 0


def test_bare_group_prints_its_help_once() -> None:
    root, daemon = tc_all(None, [], ["daemon"])
    assert root.returncode == daemon.returncode == 2
    assert root.stdout.count("Usage: taskerctl") == 1 and "Commands:" in root.stdout
    assert daemon.stdout.count("Usage: taskerctl daemon") == 1 and "status" in daemon.stdout


def test_version_flags(shared: Daemon) -> None:
    long, short = tc_all(None, ["--version"], ["-V"])
    assert long.returncode == short.returncode == 0
    assert long.stdout == short.stdout and long.stdout.startswith("taskerctl ")
    from tasker.v1 import tasker_pb2 as pb

    version = shared.stub.Stats(pb.StatsRequest(), timeout=5).version
    for flag in ("--version", "-V"):
        p = subprocess.run(
            [sys.executable, "-m", "taskerd", flag], capture_output=True, text=True, timeout=30
        )
        assert (p.returncode, p.stdout) == (0, f"taskerd {version}\n"), p.stderr


def test_completion(tmp_path: Path) -> None:
    """The documented path: `taskerctl --show-completion bash` prints a script to source."""
    script = tc(None, "--show-completion", "bash")
    assert script.returncode == 0 and "_TASKERCTL_COMPLETE" in script.stdout
    env = {"_TASKERCTL_COMPLETE": "bash_complete", "COMP_WORDS": "taskerctl su", "COMP_CWORD": "1"}
    words = tc(None, env=env)
    assert words.returncode == 0 and "submit" in words.stdout, words.stderr
    bad = tc(None, "--show-completion", "tcsh")
    assert bad.returncode == 2 and "use bash, zsh or fish" in bad.stderr
