"""The blocking Client against a real daemon."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from tasker.v1 import tasker_pb2 as pb
from taskerctl import (
    Client,
    DaemonUnavailable,
    DeadlineExceeded,
    InvalidTask,
    QueueFull,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskResult,
    TaskState,
    TaskTimedOut,
)
from tests.conftest import Daemon


@pytest.fixture
def client(shared: Daemon) -> Iterator[Client]:
    with Client(shared.socket) as c:
        yield c


def test_submit_wait_get_output(client: Client) -> None:
    h = client.submit(["sh", "-c", "echo out; echo err >&2; exit 0"], labels={"t": "basic"})
    r = h.wait(timeout=20)
    assert r.id == h.id and r.ok and r.exit_code == 0 and r.state == TaskState.SUCCEEDED
    assert r.attempts == 1 and r.labels == {"t": "basic"} and r.run is not None
    assert r.stdout == b"out\n" and r.stderr == b"err\n", "wait() carries the output"
    full = client.get(h.id, output=True)
    assert full.stdout == b"out\n" and full.stderr == b"err\n"
    assert client.get(h.id).stdout == b""
    assert h.get_state() == TaskState.SUCCEEDED


def test_strings_shell_env_and_cwd(
    client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TASKER_TEST_VAR", "from-caller")
    monkeypatch.chdir(tmp_path)
    r1 = client.submit("printf '%s|' 'a b' c").wait(20)
    r2 = client.submit('echo "$TASKER_TEST_VAR" $((2+3)); pwd', shell=True).wait(20)
    r3 = client.submit(["sh", "-c", 'echo "$X"'], env={"X": "only"}, cwd="/").wait(20)
    assert r1.argv == ("printf", "%s|", "a b", "c")
    assert client.get(r1.id, output=True).stdout == b"a b|c|"
    assert client.get(r2.id, output=True).stdout == f"from-caller 5\n{tmp_path}\n".encode()
    assert client.get(r3.id, output=True).stdout == b"only\n" and r3.cwd == "/"


def test_queue_task_outcomes(client: Client) -> None:
    assert client.queue_task(["true"]).ok
    with pytest.raises(TaskFailed) as failed:
        client.queue_task(["sh", "-c", "exit 3"])
    assert failed.value.result.exit_code == 3 and failed.value.exit_code == 3
    with pytest.raises(TaskTimedOut) as timed_out:
        client.queue_task(["sleep", "10"], timeout="300ms")
    assert timed_out.value.result.state == TaskState.TIMED_OUT
    h = client.submit(["sleep", "10"])
    threading.Timer(0.3, h.cancel).start()
    with pytest.raises(TaskCancelled):
        h.result(timeout=20)


def test_queue_task_async_and_callback_exactly_once(client: Client) -> None:
    fut = client.queue_task_async(["sh", "-c", "exit 0"])
    assert isinstance(fut, Future)
    assert fut.result(timeout=20).ok
    bad = client.queue_task_async(["sh", "-c", "exit 4"])
    assert isinstance(bad.exception(timeout=20), TaskFailed)

    calls: list[tuple[TaskResult | None, BaseException | None, str]] = []
    done = threading.Event()

    def callback(result: TaskResult | None, error: BaseException | None) -> None:
        calls.append((result, error, threading.current_thread().name))
        if len(calls) == 2:
            done.set()

    t0 = time.monotonic()
    client.queue_task_with_callback(["sleep", "0.3"], callback=callback)
    client.queue_task_with_callback(["sh", "-c", "exit 5"], callback=callback)
    assert time.monotonic() - t0 < 2  # never blocks the caller on the task
    assert done.wait(20)
    time.sleep(0.3)
    assert len(calls) == 2
    by_ok = sorted(calls, key=lambda c: c[1] is None)
    (fail_result, fail_error, thread), (ok_result, ok_error, _) = by_ok
    assert isinstance(fail_error, TaskFailed) and fail_result is not None
    assert fail_result.exit_code == 5 and ok_error is None and ok_result is not None
    assert thread != threading.main_thread().name


def test_run_with_live_output(client: Client) -> None:
    chunks: list[tuple[str, bytes]] = []
    r = client.run(
        ["sh", "-c", "echo one; echo two >&2; exit 6"],
        on_output=lambda s, d: chunks.append((s, d)),
    )
    assert r.exit_status == 6 and r.stdout == b"one\n" and r.stderr == b"two\n"
    assert b"".join(d for s, d in chunks if s == "stdout") == b"one\n"
    events = list(client.run_stream(["echo", "x"]))
    assert events[-1].kind == "finished" and events[-1].result is not None
    assert any(e.kind == "output" and e.data == b"x\n" for e in events)


def test_events_and_firehose(client: Client) -> None:
    h = client.submit(["sh", "-c", "echo a; sleep 0.2; echo b"])
    events = list(h.events(output=True))
    assert events[-1].kind == "finished"
    out = b"".join(e.data for e in events if e.kind == "output")
    assert out in (b"a\nb\n", b"")  # empty only if it finished before we watched
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)

    seen: list[int] = []
    stream = client.stream_results(None)

    def watch() -> None:
        for ev in stream:
            if ev.kind == "finished":
                seen.append(ev.task_id)
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    time.sleep(0.3)  # let the watcher subscribe: the firehose carries live events only
    slow = client.submit(["sleep", "1"])
    t.join(20)
    assert seen == [slow.id]


def test_list_cancel_stats_metrics_clean(client: Client) -> None:
    hs = client.submit_many([["sleep", "30"]] * 5, labels={"grp": "lcs"}, priority="low")
    hs += client.submit_many(["true", ["true"]], batch_size=1, labels={"grp": "lcs2"})
    ids = [h.id for h in hs]
    assert ids == sorted(ids) and len(set(ids)) == 7
    listed = client.list(labels={"grp": "lcs"}, limit=3)
    assert [t.id for t in listed] == ids[4:1:-1]  # newest first, limited
    assert len(client.list(labels={"grp": "lcs"}, limit=1000)) == 5
    first, token = client.list_page(labels={"grp": "lcs"}, page_size=2)
    second, token2 = client.list_page(labels={"grp": "lcs"}, page_size=2, page_token=token)
    last, end = client.list_page(labels={"grp": "lcs"}, page_size=2, page_token=token2)
    assert [t.id for t in first + second + last] == ids[4::-1] and end == ""
    for h in hs[:5]:
        assert h.cancel() is True
    for h in hs:
        h.wait(20)
    assert client.cancel(hs[0].id) is False
    cancelled = client.list(states=["cancelled"], labels={"grp": "lcs"})
    assert {t.id for t in cancelled} == set(ids[:5])
    stats = client.stats()
    assert stats.cancelled >= 5 and stats.base_workers == 4 and stats.version
    metrics = client.metrics()
    assert metrics.cancelled >= 5 and 0 <= metrics.success_rate <= 1
    removed = client.clean()
    assert removed >= 7
    with pytest.raises(TaskNotFound):
        client.get(ids[0])


def test_errors(client: Client, tmp_path: Path) -> None:
    with pytest.raises(InvalidTask) as bad:
        client.submit(["true"], timeout=-1)
    assert bad.value.field == "tasks[0].timeout"
    with pytest.raises(InvalidTask) as bad_cwd:
        client.submit(["true"], cwd=tmp_path / "missing")
    assert bad_cwd.value.field == "tasks[0].cwd"
    with pytest.raises(TaskNotFound):
        client.cancel(10**12)
    slow = client.submit(["sleep", "5"])
    with pytest.raises(DeadlineExceeded):
        slow.wait(timeout=0.3)
    slow.cancel()
    dead = tmp_path / "dead.sock"
    with Client(dead) as c, pytest.raises(DaemonUnavailable) as err:
        c.stats()
    assert str(dead) in str(err.value) and f"`taskerd --socket {dead} &`" in str(err.value)
    assert err.value.exit_code == 69


def test_shared_across_threads(client: Client) -> None:
    handles: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            h = client.submit(["true"])
            with lock:
                handles.append(h.id)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(set(handles)) == 40
    results = [client.wait(i, timeout=30) for i in handles]
    assert all(r.ok for r in results)


def test_queue_full(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1", "--max-workers", "1", "--max-queue", "2")
    with Client(d.socket) as c:
        hs = []
        with pytest.raises(QueueFull) as err:
            for _ in range(4):
                hs.append(c.submit(["sleep", "30"]))
        assert 2 <= len(hs) <= 3 and "queue full" in str(err.value)
        assert c.stats().rejected >= 1
        for h in hs:
            h.cancel()


def test_shutdown(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "1")
    with Client(d.socket) as c:
        c.shutdown("drain")
    assert d.proc is not None
    assert d.proc.wait(20) == 0


def test_spec_objects_accepted(client: Client) -> None:
    spec = pb.TaskSpec(argv=["sh", "-c", "exit 2"])
    (h,) = client.submit_many([spec])
    assert h.wait(20).exit_code == 2
