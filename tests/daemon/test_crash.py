"""A daemon crash (kill -9) leaves nothing of the last run alive, nor runs a task twice at once.

Each task carries ``TASKER_TEST_MARK`` in its environment, inherited by every process it starts:
that is how the tests find its processes in /proc, and how a finaliser kills whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon, Proc, kill_processes, processes_with_env
from tests.daemon.util import TERMINAL, poll_state, spec, submit, wait

MARK_VAR = "TASKER_TEST_MARK"
MakeDaemon = Callable[..., Daemon]

#: A shell waiting for two children that run 5 minutes unless something stops them.
TWO_SLEEPERS = "sleep 300 & sleep 300 & wait"

#: One attempt holds an exclusive lock on $LOCK while it runs (flock, the shell and sleep all hold
#: the lock's descriptor); a second attempt that finds the lock taken writes OVERLAP and fails.
#: flock's -E tells "lock taken" (99) from the command's own failure (e.g. killed: 137).
LOCKED_RUN = (
    'flock -n -E 99 "$LOCK" sh -c \'echo "start $$" >> "$LOG"; sleep 3; '
    'echo "end $$" >> "$LOG"\'; rc=$?; '
    'if [ $rc -eq 99 ]; then echo "OVERLAP $$" >> "$LOG"; fi; exit $rc'
)
CRASH_ROUNDS = 4
SEED = 4242


@pytest.fixture
def mark() -> Iterator[str]:
    """A value for ``TASKER_TEST_MARK`` unique to the test; at the end, after the daemons are
    stopped (request it before ``make_daemon``), whatever still carries it is killed."""
    value = f"crash-{uuid.uuid4().hex}"
    yield value
    kill_processes(processes_with_env(MARK_VAR, value))


def env(mark: str, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), MARK_VAR: mark, **extra}


def marked(mark: str) -> set[Proc]:
    return set(processes_with_env(MARK_VAR, mark))


def sleepers(procs: set[Proc]) -> set[Proc]:
    """The ``sleep`` processes among ``procs`` (whatever else a task runs them under)."""
    found: set[Proc] = set()
    for p in procs:
        with contextlib.suppress(OSError), open(f"/proc/{p.pid}/cmdline", "rb") as fh:
            if fh.read().split(b"\0")[0] == b"sleep":
                found.add(p)
    return found


def wait_for(check: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def alive(procs: set[Proc]) -> list[str]:
    return [p.describe() for p in sorted(procs, key=lambda p: p.pid) if p.alive()]


@pytest.mark.timeout(90)
def test_crash_kills_the_last_run_and_reruns_only_after(mark: str, make_daemon: MakeDaemon) -> None:
    """kill -9 the daemon while an ordinary and a ``once`` task run (each a shell with two
    children): the restarted daemon stops every process of those attempts, marks the ``once``
    task LOST, runs the other one again, and a graceful stop then leaves nothing behind."""
    d = make_daemon("--workers", "2", "--max-workers", "2")
    again, once = submit(
        d.stub,
        spec(TWO_SLEEPERS, shell=True, env=env(f"{mark}/again")),
        spec(TWO_SLEEPERS, shell=True, env=env(f"{mark}/once"), once=True),
    )
    poll_state(d.stub, again, {pb.TASK_STATE_RUNNING})
    poll_state(d.stub, once, {pb.TASK_STATE_RUNNING})
    started = wait_for(lambda: len(sleepers(marked(mark))) == 4, 10)  # both sleeps of each
    assert started, [p.describe() for p in marked(mark)]
    time.sleep(0.5)  # past the delayed journal write of the ordinary task's start
    first = {kind: marked(f"{mark}/{kind}") for kind in ("again", "once")}
    first_pids = {p.pid for procs in first.values() for p in procs}

    d.kill9()
    d.start()
    problems: list[str] = []

    # (a) nothing of the interrupted attempts survives the restart (a moment allowed to die)
    survivors = first["again"] | first["once"]
    wait_for(lambda: not alive(survivors), 5)
    if alive(survivors):
        problems.append(
            "(a) processes of the attempts interrupted by the crash still run after the "
            "restart:\n    " + "\n    ".join(alive(survivors))
        )

    # (b) the once task is LOST, and says it was interrupted and its processes stopped
    lost = d.stub.Get(pb.GetRequest(id=once), timeout=5)
    if lost.state != pb.TASK_STATE_LOST:
        problems.append(f"(b) the once task is {pb.TaskState.Name(lost.state)}, not LOST")
    words = lost.error.lower()
    if "interrupted" not in words or "stopped" not in words:
        problems.append(
            f"(b) the LOST task's error should say it was interrupted and stopped: {lost.error!r}"
        )
    if marked(f"{mark}/once") - first["once"]:
        problems.append("(b) the once task was run again")

    # (c) the ordinary task runs again: a new attempt, new processes
    def rerun() -> bool:
        task = d.stub.Get(pb.GetRequest(id=again), timeout=5)
        return task.state == pb.TASK_STATE_RUNNING and task.pid not in (0, *first_pids)

    if not wait_for(rerun, 15):
        task = d.stub.Get(pb.GetRequest(id=again), timeout=5)
        problems.append(
            f"(c) the ordinary task did not run again: {pb.TaskState.Name(task.state)}, "
            f"pid {task.pid}, attempts {task.attempts}"
        )
    else:
        task = d.stub.Get(pb.GetRequest(id=again), timeout=5)
        if task.attempts != 2:
            problems.append(f"(c) the re-run is attempt {task.attempts}, not 2")
        if not wait_for(lambda: len(sleepers(marked(f"{mark}/again") - first["again"])) == 2, 10):
            problems.append("(c) the re-run's processes did not show up")

    # (d) a graceful stop leaves nothing of either task
    assert d.stop() == 0, d.log()
    wait_for(lambda: not marked(mark), 5)
    left = [p.describe() for p in marked(mark)]
    if left:
        problems.append(
            "(d) after a graceful stop these still run:\n    " + "\n    ".join(sorted(left))
        )
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(90)
def test_repeated_crashes_never_overlap_two_attempts(
    mark: str, make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """A task that holds an exclusive lock while it runs (3 s), with retries allowed; the daemon
    is killed (-9) and restarted at random points of its runs, one of them right after the start
    (before the start is journaled). No attempt may find the lock of an earlier one still held,
    and the task finishes once, SUCCEEDED."""
    rng = random.Random(SEED)
    delays = [rng.uniform(0.0, 0.08)] + [rng.uniform(0.1, 1.5) for _ in range(CRASH_ROUNDS - 1)]
    rng.shuffle(delays)
    log, lock = tmp_path / "log", tmp_path / "lock"
    d = make_daemon("--workers", "1", "--max-workers", "1")
    [task_id] = submit(
        d.stub,
        spec(LOCKED_RUN, shell=True, max_retries=20,
             env=env(mark, LOG=str(log), LOCK=str(lock))),
    )  # fmt: skip
    attempts_seen: set[int] = set()
    crashes: list[str] = []
    for delay in delays:
        # the next attempt: running with a pid not seen before (or over, which is a failure)
        deadline = time.monotonic() + 20
        while True:
            task = d.stub.Get(pb.GetRequest(id=task_id), timeout=5)
            if task.state in TERMINAL:
                break
            if task.state == pb.TASK_STATE_RUNNING and task.pid and task.pid not in attempts_seen:
                break
            assert time.monotonic() < deadline, f"no new attempt started: {task}"
            time.sleep(0.01)
        if task.state in TERMINAL:
            break
        attempts_seen.add(task.pid)
        time.sleep(delay)
        d.kill9()
        crashes.append(f"kill -9 {delay:.2f}s into the attempt of pid {task.pid}")
        d.start()
    final = wait(d.stub, task_id, timeout=30)[task_id]
    text = log.read_text() if log.exists() else ""
    history = "\n".join(crashes) + "\nlog:\n" + text
    assert "OVERLAP" not in text, (
        f"an attempt ran while an earlier one still held the lock:\n{history}"
    )
    assert final.state == pb.TASK_STATE_SUCCEEDED, f"{final.error!r}\n{history}"
    assert len(crashes) == CRASH_ROUNDS, history
    assert text.count("end ") == 1, f"the task should finish exactly once:\n{history}"
    assert wait_for(lambda: not marked(mark), 5), [p.describe() for p in marked(mark)]
