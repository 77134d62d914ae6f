"""Signals: SIGTERM and SIGINT stop, from start-up on; the DRAIN -> STOP -> KILL ladder; SIGHUP."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon
from tests.daemon.util import alive, poll_state, spec, submit, wait, wait_gone

#: ``python -c`` this instead of ``-m taskerd``: the real daemon, with start-up held up for 3 s
#: after $SLOW_CLASS.$SLOW_METHOD (Store.open, Core.start) returns; $SLOW_MARKER says when.
SLOW_START = """
import asyncio, os, pathlib
from taskerd import server
cls = getattr(server, os.environ["SLOW_CLASS"])
original = getattr(cls, os.environ["SLOW_METHOD"])
async def slow(*args, **kwargs):
    result = await original(*args, **kwargs)
    pathlib.Path(os.environ["SLOW_MARKER"]).touch()
    await asyncio.sleep(3)
    return result
setattr(cls, os.environ["SLOW_METHOD"], slow)
server.main()
"""


def _start_slowly(d: Daemon, where: str) -> subprocess.Popen[bytes]:
    """Start ``d`` with start-up held up in ``where``; returns once it is held there."""
    marker = d.dir / "in-start-up"
    cls, method = where.split(".")
    env = {**os.environ, "SLOW_CLASS": cls, "SLOW_METHOD": method, "SLOW_MARKER": str(marker)}
    env.pop("NOTIFY_SOCKET", None)
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(
            [d.command()[0], "-c", SLOW_START, *d.command()[3:]],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=d.dir,
        )  # fmt: skip
    deadline = time.monotonic() + 15
    while not marker.exists():
        assert d.proc.poll() is None, d.log()
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.02)
    return d.proc


def _stdout(d: Daemon, task_id: int) -> bytes:
    return d.stub.Get(pb.GetRequest(id=task_id, output=True), timeout=5).stdout


def _exits(proc: subprocess.Popen[bytes], d: Daemon, timeout: float = 15) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"taskerd still running after {timeout}s:\n{d.log()}") from None


def test_sigterm_while_the_journal_opens_stops_before_recovery(
    make_daemon: type[Daemon], tmp_path: Path
) -> None:
    """Exit 0 without recovering or serving; the queued task waits in the journal."""
    marker = tmp_path / "ran"
    d = make_daemon("--workers", "1")
    blocker, queued = submit(d.stub, spec("sleep", "30", once=True), spec("touch", str(marker)))
    pid = poll_state(d.stub, blocker, {pb.TASK_STATE_RUNNING}).pid
    d.kill9()
    os.killpg(pid, signal.SIGKILL)  # the task the crash left behind (in its own process group)
    proc = _start_slowly(d, "Store.open")
    proc.send_signal(signal.SIGTERM)
    assert _exits(proc, d) == 0, d.log()
    log = d.log()
    assert "SIGTERM: stopping gracefully" in log and log.rstrip().endswith("taskerd stopped")
    assert "recovered journal" not in log and "serving on" not in log
    assert not d.socket.exists() and not marker.exists()
    d.start()
    assert wait(d.stub, queued)[queued].state == pb.TASK_STATE_SUCCEEDED
    assert marker.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_recovery_stops_before_serving(
    make_daemon: type[Daemon], signum: signal.Signals
) -> None:
    d = make_daemon(start=False)
    proc = _start_slowly(d, "Core.start")
    proc.send_signal(signum)
    assert _exits(proc, d) == 0, d.log()
    log = d.log()
    assert f"{signum.name}: stopping gracefully" in log and "shutting down (STOP)" in log
    assert "serving on" not in log and log.rstrip().endswith("taskerd stopped")
    assert not d.socket.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_gracefully(
    make_daemon: type[Daemon], tmp_path: Path, signum: signal.Signals
) -> None:
    """The running task may finish, the queued one stays for the next start; exit 0."""
    marker = tmp_path / "ran"
    d = make_daemon("--workers", "1")
    running, queued = submit(
        d.stub, spec("sh", "-c", "sleep 0.5; echo finished"), spec("touch", str(marker))
    )
    poll_state(d.stub, running, {pb.TASK_STATE_RUNNING})
    assert d.proc is not None
    d.proc.send_signal(signum)
    assert _exits(d.proc, d) == 0, d.log()
    assert not marker.exists()
    d.start()
    done = wait(d.stub, running, queued)
    assert done[running].state == pb.TASK_STATE_SUCCEEDED and _stdout(d, running) == b"finished\n"
    assert done[queued].state == pb.TASK_STATE_SUCCEEDED and marker.exists()


def test_sigterm_during_drain_escalates_to_stop(make_daemon: type[Daemon], tmp_path: Path) -> None:
    """The running task is stopped after stop_timeout; the queued one is not run but kept.

    Needs ``Core.shutdown(STOP)`` to escalate a DRAIN under way.
    """
    marker = tmp_path / "ran"
    d = make_daemon("--workers", "1", config='stop_timeout = "1s"\n')
    running, queued = submit(d.stub, spec("sleep", "30", once=True), spec("touch", str(marker)))
    poll_state(d.stub, running, {pb.TASK_STATE_RUNNING})
    d.stub.Shutdown(pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_DRAIN), timeout=5)
    time.sleep(0.5)
    assert d.proc is not None and d.proc.poll() is None, "draining: the sleep goes on"
    d.proc.send_signal(signal.SIGTERM)
    assert _exits(d.proc, d) == 0, d.log()
    assert "SIGTERM while draining: stopping gracefully instead" in d.log()
    assert not marker.exists()
    d.start()
    assert wait(d.stub, queued)[queued].state == pb.TASK_STATE_SUCCEEDED and marker.exists()


@pytest.mark.parametrize("drain", [False, True], ids=["stop", "drain"])
def test_another_signal_kills(make_daemon: type[Daemon], drain: bool) -> None:
    """STOP waits stop_timeout (60 s here) for a running task; one more signal kills it now."""
    d = make_daemon("--workers", "1", config='stop_timeout = "60s"\n')
    (task,) = submit(d.stub, spec("sleep", "60"))
    pid = poll_state(d.stub, task, {pb.TASK_STATE_RUNNING}).pid
    assert d.proc is not None
    if drain:
        d.stub.Shutdown(pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_DRAIN), timeout=5)
    d.proc.send_signal(signal.SIGTERM)  # to STOP, from DRAIN too
    time.sleep(0.5)
    assert d.proc.poll() is None and alive(pid), "graceful: the task may go on"
    d.proc.send_signal(signal.SIGINT)
    assert _exits(d.proc, d, timeout=10) == 0, d.log()
    assert "SIGINT again: killing" in d.log()
    wait_gone([pid])


def test_sighup_is_ignored(make_daemon: type[Daemon]) -> None:
    """Closing the terminal of a ``taskerd &`` neither stops it nor its tasks."""
    d = make_daemon("--workers", "1")
    (task,) = submit(d.stub, spec("sh", "-c", "sleep 1; echo survived"))
    poll_state(d.stub, task, {pb.TASK_STATE_RUNNING})
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert d.proc.poll() is None, d.log()
    assert wait(d.stub, task)[task].state == pb.TASK_STATE_SUCCEEDED
    assert _stdout(d, task) == b"survived\n"
    assert not d.stub.Stats(pb.StatsRequest(), timeout=5).shutting_down
    assert d.stop() == 0
    assert "SIGHUP: ignored" in d.log()
