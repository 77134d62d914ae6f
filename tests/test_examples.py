"""Each program in examples/ runs against a real daemon, quickly, and prints what it shows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Daemon

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon (4 workers) for the module's examples."""
    d = Daemon(tmp_path_factory.mktemp("daemon"), "--workers", "4")
    d.start()
    yield d
    d.stop()


def run_example(daemon: Daemon, name: str, *args: str) -> str:
    env = dict(os.environ, TASKER_SOCKET=str(daemon.socket))
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t0 < 10, f"{name} is too slow for an example"
    return p.stdout


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("async_submit.py", ["succeeded", "gather: 4 succeeded, failed ids [", "callback: ok"]),
        ("graceful_cancel.py", ["CANCELLED", "TIMED_OUT", "got TERM, cleaning up"]),
        ("timeouts.py", ["TIMED_OUT", "SUCCEEDED", "still RUNNING after waiting", "CANCELLED"]),
        ("batch.py", ["200/200 succeeded", "printed 39601"]),
        ("web_server.py", ["POST /jobs -> {'id':", "succeeded 'offloaded\\n'"]),
        ("queue_with_context.py", ["'request_id': 'req-7f3a'", "request req-7f3a for ada"]),
    ],
)
def test_example(shared: Daemon, name: str, expected: list[str]) -> None:
    args = ["--selftest"] if name == "web_server.py" else []
    out = run_example(shared, name, *args)
    for text in expected:
        assert text in out, out


def test_backpressure_retries_on_queue_full(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1", "--max-queue", "2")
    out = run_example(d, "backpressure.py", "8")
    assert "8/8 succeeded" in out
    full = int(out.rsplit("full ", 1)[1].split()[0])
    assert full > 0, out


def test_every_example_is_tested() -> None:
    tested = {
        "async_submit.py", "graceful_cancel.py", "timeouts.py", "batch.py",
        "web_server.py", "queue_with_context.py", "backpressure.py",
    }  # fmt: skip
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.timeout(90)  # beyond the 45 s bound below, so the demo gets to stop its daemon
def test_demo_sh(tmp_path: Path) -> None:
    """``make run``: examples/demo.sh starts a taskerd of its own on a private socket (in a
    directory it makes under $TMPDIR), runs its workload through taskerctl, stops the daemon and
    removes its directory."""
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("TASKER_SOCKET", None)  # the demo sets its own
    t0 = time.monotonic()
    p = subprocess.Popen(
        ["bash", str(EXAMPLES / "demo.sh")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = p.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        p.terminate()  # the demo's trap stops its daemon
        try:
            out, _ = p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
        pytest.fail(f"demo.sh still running after 45s:\n{out}")
    took = time.monotonic() - t0
    assert p.returncode == 0, out
    for text in [
        "they started in this order: critical high normal low",
        "tick 3",
        ": exit 124",  # the task that timed out
        ": exit 125",  # the one cancelled
        "taskerd exited cleanly",
    ]:
        assert text in out, out
    assert took < 30, f"demo.sh took {took:.1f}s"
    assert not list(tmp_path.iterdir()), "demo.sh left its directory behind"
