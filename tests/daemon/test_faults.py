"""Faults at the daemon's seams, injected for real: timeouts that land mid-start, a KILL while
at-most-once tasks start, Submits racing a shutdown, a full disk under the journal, clients
that give up mid-call, and reads racing fast tasks. Each test failed before its fix."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon
from tests.daemon.util import TERMINAL, poll_state, spec, submit, wait

QUEUED, RUNNING = pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING
LIVE = {QUEUED, RUNNING}


def journal_ids(d: Daemon) -> set[int]:
    """Every task id in the daemon's journal, read from the SQLite file itself."""
    with sqlite3.connect(d.state_dir / "journal.sqlite3") as db:
        return {r[0] for r in db.execute("SELECT id FROM tasks")}


def test_once_tasks_with_tiny_timeouts_all_end(make_daemon: type[Daemon]) -> None:
    # A timeout that lands while an at-most-once task's RUNNING is being made durable used to
    # leave the task RUNNING forever (and its waiters with it).
    d = make_daemon("--workers", "4")
    ids = submit(d.stub, *[spec("sleep", "5", once=True, timeout=0.001) for _ in range(20)])
    done = wait(d.stub, *ids, timeout=20)
    assert {t.state for t in done.values()} == {pb.TASK_STATE_TIMED_OUT}
    stats = d.stub.Stats(pb.StatsRequest(), timeout=5)
    assert (stats.running, stats.queued, stats.timed_out) == (0, 0, 20)


@pytest.mark.parametrize("round_", range(3))
def test_kill_while_once_tasks_start_does_not_hang(make_daemon: type[Daemon], round_: int) -> None:
    d = make_daemon("--workers", "8", config="max_workers = 8")
    submit(d.stub, *[spec("true", once=True) for _ in range(400)])
    time.sleep(0.1 + 0.1 * round_)  # workers are busy making RUNNING durable
    d.stub.Shutdown(pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_KILL), timeout=5)
    assert d.proc is not None
    assert d.proc.wait(15) == 0


def test_submits_racing_a_shutdown_leave_no_ghosts(make_daemon: type[Daemon]) -> None:
    # A Submit answered with anything but OK must leave nothing behind; every OK'd id exists.
    d = make_daemon("--workers", "2")
    told: list[int] = []
    refused = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        nonlocal refused
        channel = grpc.insecure_channel(d.target)
        stub = d.stub.__class__(channel)
        try:
            while not stop.is_set():
                req = pb.SubmitRequest(tasks=[spec("sleep", "30") for _ in range(50)])
                try:
                    ids = list(stub.Submit(req, timeout=10).ids)
                except grpc.RpcError as err:
                    assert err.code() in (
                        grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.UNAVAILABLE,
                    ), err
                    with lock:
                        refused += 1
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        return
                    continue
                with lock:
                    told.extend(ids)
        finally:
            channel.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    d.stub.Shutdown(pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_STOP), timeout=5)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert d.proc is not None and d.proc.wait(30) == 0
    assert told and refused
    assert journal_ids(d) == set(told)


def test_retries_never_push_the_queue_past_max_queue(make_daemon: type[Daemon]) -> None:
    d = make_daemon(
        "--workers", "2",
        config="max_workers = 2\nmax_queue = 1\nunhealthy_exit_codes = [3]\nmax_retries = 2\n"
        'on_create = "sleep 0.5"',  # a replaced worker comes back slowly
    )  # fmt: skip
    for command in ("sleep 0.3; exit 3", "sleep 1.5"):
        [started] = submit(d.stub, spec("sh", "-c", command))
        poll_state(d.stub, started, {RUNNING})
    submit(d.stub, spec("sleep", "1"))  # the queue is full now: 1/1
    highest = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        stats = d.stub.Stats(pb.StatsRequest(), timeout=5)
        highest = max(highest, stats.queued)
        time.sleep(0.005)
    assert highest <= 1


# ------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, mounted for real (root only)."""
    where = tmp_path / "small"
    where.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)],
            check=True, capture_output=True,
        )  # fmt: skip
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> Path:
    """Fill the file system under ``path`` to the last byte; returns the filler file."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as fh:
        block = b"\0" * 65536
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError:
            pass
        try:
            while True:
                fh.write(b"\0")
                fh.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_refuses_submits_and_delays_ends_until_written(
    make_daemon: type[Daemon], small_disk: Path
) -> None:
    d = make_daemon("--workers", "8", start=False)
    d.state_dir = small_disk / "state"
    d.start()
    slow = [spec("sh", "-c", "sleep 1; head -c 200000 /dev/zero", labels={"k": "slow"})
            for _ in range(6)]  # fmt: skip
    slow.append(spec("sh", "-c", "sleep 1; echo once", once=True, labels={"k": "slow"}))
    ids = submit(d.stub, *slow)
    for i in ids:
        poll_state(d.stub, i, {RUNNING})
    filler = fill(small_disk)
    try:
        # Nothing new is accepted, and nothing of a refused request exists.
        with pytest.raises(grpc.RpcError) as refused:
            d.stub.Submit(
                pb.SubmitRequest(tasks=[spec("true", labels={"k": "refused"})] * 20), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "disk full" in (refused.value.details() or "")
        time.sleep(2.0)  # the tasks end meanwhile; their ends cannot be written
        for i in ids:  # not terminal until written, and Stats agrees
            assert d.stub.Get(pb.GetRequest(id=i), timeout=5).state == RUNNING
        assert d.stub.Stats(pb.StatsRequest(), timeout=5).running == len(ids)
    finally:
        filler.unlink(missing_ok=True)
    done = wait(d.stub, *ids, timeout=30)  # written once there is room again
    assert {t.state for t in done.values()} == {pb.TASK_STATE_SUCCEEDED}
    assert not d.stub.List(pb.ListRequest(labels={"k": "refused"}), timeout=5).tasks
    d.restart()  # nothing ran twice; the once task stays SUCCEEDED
    time.sleep(0.5)
    for i in ids:
        task = d.stub.Get(pb.GetRequest(id=i), timeout=5)
        assert task.state == pb.TASK_STATE_SUCCEEDED and task.attempts == 1


# ------------------------------------------------------------------------- one truth


def test_an_abandoned_run_ends_its_task(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "2")
    rng = random.Random(7)
    for _ in range(30):
        call = d.stub.Run(pb.RunRequest(task=spec("sleep", "30")), timeout=30)
        time.sleep(rng.uniform(0, 0.03))
        call.cancel()
    deadline = time.monotonic() + 15
    while True:
        stats = d.stub.Stats(pb.StatsRequest(), timeout=5)
        live = d.stub.List(pb.ListRequest(states=[QUEUED, RUNNING]), timeout=5).tasks
        if stats.queued == stats.running == 0 and not live:
            break
        assert time.monotonic() < deadline, (stats, [t.id for t in live])
        time.sleep(0.1)
    for task in d.stub.List(pb.ListRequest(page_size=100), timeout=5).tasks:
        assert task.state == pb.TASK_STATE_CANCELLED, task


def test_reads_agree_with_themselves_while_tasks_fly(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "2")
    stop = threading.Event()
    problems: list[str] = []

    def submitter() -> None:
        while not stop.is_set():
            submit(d.stub, *[spec("sh", "-c", "sleep 0.05") for _ in range(5)])
            time.sleep(0.02)

    thread = threading.Thread(target=submitter)
    thread.start()
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for states in ([QUEUED], [RUNNING], [QUEUED, RUNNING]):
                page = d.stub.List(pb.ListRequest(states=states, page_size=50), timeout=5)
                problems += [f"{t.id} {t.state} in {states}" for t in page.tasks
                             if t.state not in states]  # fmt: skip
            for task in d.stub.List(pb.ListRequest(page_size=20), timeout=5).tasks:
                got = d.stub.Get(pb.GetRequest(id=task.id), timeout=5)
                if got.state in LIVE and (got.HasField("ended_at") or got.HasField("exit_code")):
                    problems.append(f"{got.id} live with an end: {got}")
                if got.state in TERMINAL and not got.HasField("ended_at"):
                    problems.append(f"{got.id} ended without ended_at")
    finally:
        stop.set()
        thread.join(10)
    assert not problems, problems[:5]


def test_cancel_many_takes_queued_ones_out_first(make_daemon: type[Daemon], tmp_path: Path) -> None:
    d = make_daemon("--workers", "1", config="max_workers = 1")
    marks = tmp_path / "marks"
    marks.mkdir()
    [running] = submit(d.stub, spec("sleep", "30"))
    poll_state(d.stub, running, {RUNNING})
    queued = submit(d.stub, *[spec("touch", str(marks / str(n))) for n in range(5)])
    resp = d.stub.Cancel(pb.CancelRequest(ids=[running, *queued]), timeout=10)
    assert [r.id for r in resp.results] == [running, *queued]
    assert all(r.cancelled for r in resp.results)
    done = wait(d.stub, running, *queued)
    assert {t.state for t in done.values()} == {pb.TASK_STATE_CANCELLED}
    assert not os.listdir(marks)
    with pytest.raises(grpc.RpcError) as unknown:
        d.stub.Cancel(pb.CancelRequest(ids=[running, 10_000]), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_foreign_journal_is_one_line_and_exit_1(make_daemon: type[Daemon]) -> None:
    d = make_daemon(start=False)
    d.state_dir.mkdir(parents=True, mode=0o700)
    (d.state_dir / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    proc = subprocess.run(d.command(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if "Traceback" in ln or "taskerd:" in ln]
    assert lines and "Traceback" not in proc.stderr, proc.stderr
    shutil.rmtree(d.state_dir)
    d.state_dir.mkdir(parents=True, mode=0o700)
    with sqlite3.connect(d.state_dir / "journal.sqlite3") as db:
        db.execute("CREATE TABLE tasks (name TEXT)")
    proc = subprocess.run(d.command(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "not a taskerd journal" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
