"""On-finish hooks (taskerd.hooks) against real processes: environment, failures, timeouts,
concurrency, the bounded backlog and shutdown."""

from __future__ import annotations

import asyncio
import logging
import secrets
import statistics
import time
from pathlib import Path

import pytest

from tasker.v1 import tasker_pb2 as pb
from taskerd.hooks import Finished, HookRunner
from tests.conftest import processes_with_env

pytestmark = pytest.mark.timeout(30)


def end(task_id: int, command: str = "", **kw: object) -> Finished:
    values: dict[str, object] = {
        "state": pb.TASK_STATE_SUCCEEDED,
        "exit_code": 0,
        "signal": None,
        "group": "default",
        "run_seconds": 0.5,
        "labels": {},
    }
    values.update(kw)
    return Finished(task_id=task_id, command=command, **values)  # type: ignore[arg-type]


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "taskerd" and r.levelno >= logging.WARNING and text in r.getMessage()
    ]


async def wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def test_environment_and_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOKS_DAEMON_VAR", "from-daemon")
    runner = HookRunner(
        f'env > {tmp_path}/global.$TASKER_TASK_ID; echo global >> {tmp_path}/order.$TASKER_TASK_ID',
        timeout=5, concurrency=4,
    )  # fmt: skip
    runner.finished(
        end(
            7,
            f"env > {tmp_path}/own.7; echo own >> {tmp_path}/order.7",
            state=pb.TASK_STATE_FAILED,
            exit_code=3,
            group="gpu",
            run_seconds=1.5,
            labels={"team": "core", "build-id.x": "a b=c"},
        )
    )
    runner.finished(
        end(8, state=pb.TASK_STATE_CANCELLED, exit_code=None, signal=None, run_seconds=None)
    )
    runner.finished(end(9, state=pb.TASK_STATE_FAILED, exit_code=None, signal=9))
    await runner.close(grace=10)
    assert runner.stats.ran == 4 and runner.stats.failed == 0 and runner.stats.dropped == 0

    own, glob = read_env(tmp_path / "own.7"), read_env(tmp_path / "global.7")
    assert own.pop("TASKER_RUN_TOKEN") != glob.pop("TASKER_RUN_TOKEN")  # one per hook, as tasks
    assert own == glob
    assert (tmp_path / "order.7").read_text() == "own\nglobal\n"  # the task's own hook first
    assert own["HOOKS_DAEMON_VAR"] == "from-daemon"
    assert own["TASKER_TASK_ID"] == "7"
    assert own["TASKER_STATE"] == "FAILED"
    assert own["TASKER_EXIT_CODE"] == "3"
    assert own["TASKER_SIGNAL"] == ""
    assert own["TASKER_GROUP"] == "gpu"
    assert own["TASKER_DURATION"] == "1.500"
    assert own["TASKER_LABEL_TEAM"] == "core"
    assert own["TASKER_LABEL_BUILD_ID_X"] == "a b=c"

    never = read_env(tmp_path / "global.8")
    assert never["TASKER_STATE"] == "CANCELLED"
    assert never["TASKER_EXIT_CODE"] == never["TASKER_SIGNAL"] == never["TASKER_DURATION"] == ""
    assert not any(k.startswith("TASKER_LABEL_") for k in never)
    killed = read_env(tmp_path / "global.9")
    assert (killed["TASKER_EXIT_CODE"], killed["TASKER_SIGNAL"]) == ("", "9")


async def test_nothing_to_run_does_nothing() -> None:
    runner = HookRunner("", timeout=5, concurrency=2)
    for i in range(100):
        runner.finished(end(i))
    assert runner.stats.pending == 0 and not runner._workers
    await runner.close(grace=1)
    assert runner.stats.ran == runner.stats.dropped == 0


async def test_failures_are_logged_and_the_runner_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="taskerd")
    marker = secrets.token_hex(8)
    runner = HookRunner("", timeout=0.3, concurrency=1)
    runner.finished(end(1, "echo first >&2; echo boom >&2; exit 3"))
    runner.finished(end(2, "bad\0command"))  # cannot start (NUL byte)
    # Ignores SIGTERM, and leaves a child in its group: both must die by SIGKILL.
    runner.finished(end(3, "trap '' TERM; sleep 30 & sleep 30; wait", labels={"mark": marker}))
    runner.finished(end(4, "kill -KILL $$"))
    runner.finished(end(5, f"touch {tmp_path}/after"))
    t0 = time.monotonic()
    await runner.close(grace=10)
    assert time.monotonic() - t0 < 4
    assert (tmp_path / "after").exists()
    assert runner.stats.ran == 5 and runner.stats.failed == 4 and runner.stats.dropped == 0

    (failed,) = warnings(caplog, "task 1 failed")
    assert "exit status 3" in failed and "first" in failed and "boom" in failed
    (spawn,) = warnings(caplog, "task 2 failed")
    assert "cannot start" in spawn
    (timed_out,) = warnings(caplog, "task 3 failed")
    assert "timed out after" in timed_out
    (signalled,) = warnings(caplog, "task 4 failed")
    assert "killed by signal 9" in signalled
    assert not warnings(caplog, "task 5")
    assert processes_with_env("TASKER_LABEL_MARK", marker) == []


async def test_concurrency_is_bounded(tmp_path: Path) -> None:
    runner = HookRunner(
        f"date +%s.%N > {tmp_path}/start.$TASKER_TASK_ID; sleep 0.3; "
        f"date +%s.%N > {tmp_path}/end.$TASKER_TASK_ID",
        timeout=5, concurrency=2,
    )  # fmt: skip
    t0 = time.monotonic()
    for i in range(10):
        runner.finished(end(i))
    most = 0
    while runner.stats.pending or runner.stats.running:
        most = max(most, runner.stats.running)
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - t0
    await runner.close(grace=1)
    assert runner.stats.ran == 10 and runner.stats.failed == 0
    assert most == 2
    assert elapsed >= 1.5
    # What the hooks themselves saw: never more than 2 of them between start and end.
    spans = [
        (float((tmp_path / f"start.{i}").read_text()), float((tmp_path / f"end.{i}").read_text()))
        for i in range(10)
    ]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2


async def test_finished_is_fast_and_drops_beyond_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = HookRunner("true", timeout=5, concurrency=4, pending=10_000)
    times = []
    for i in range(10_000):  # no await: the workers cannot take any before the loop runs
        t = time.perf_counter_ns()
        runner.finished(end(i))
        times.append(time.perf_counter_ns() - t)
    assert runner.stats.pending == 10_000 and runner.stats.dropped == 0
    for i in range(10_000, 10_050):
        t = time.perf_counter_ns()
        runner.finished(end(i))
        times.append(time.perf_counter_ns() - t)
    median, worst = statistics.median(times) / 1000, max(times) / 1000
    print(f"finished(): median {median:.2f} us, max {worst:.1f} us")
    assert median < 200  # O(1), not O(pending): the figures belong to a bench, not a test
    assert runner.stats.pending == 10_000 and runner.stats.dropped == 50
    assert len(warnings(caplog, "dropping hooks")) == 1  # one warning for the whole burst
    await runner.close(grace=0)
    assert runner.stats.pending == 0
    assert runner.stats.dropped + runner.stats.ran == 10_050 and not runner._workers
    assert warnings(caplog, "shutting down")


async def test_close_kills_running_hooks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = secrets.token_hex(8)
    runner = HookRunner(
        f"touch {tmp_path}/started.$TASKER_TASK_ID; sleep 30 & sleep 30",
        timeout=60, concurrency=2,
    )  # fmt: skip
    for i in range(3):
        runner.finished(end(i, labels={"mark": marker}))
    await wait_for(lambda: len(list(tmp_path.glob("started.*"))) == 2)
    assert len(processes_with_env("TASKER_LABEL_MARK", marker)) >= 4  # 2 hooks, 2 sleeps each
    t0 = time.monotonic()
    await runner.close(grace=0.2)
    assert time.monotonic() - t0 < 3
    assert processes_with_env("TASKER_LABEL_MARK", marker) == []
    assert runner.stats.running == 0 and runner.stats.pending == 0
    assert runner.stats.dropped == 1 and runner.stats.ran == 0
    (line,) = warnings(caplog, "shutting down")
    assert "killed 2 running hooks, dropped 1 pending" in line
    runner.finished(end(9))  # after close: dropped, nothing runs
    assert runner.stats.dropped == 2 and not runner._workers
