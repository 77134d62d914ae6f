"""Many tasks, cancels, timeouts and watchers at once: each ends once, each watcher hears once."""

from __future__ import annotations

import random
import threading
from collections import Counter

import grpc

from tasker.v1 import tasker_pb2 as pb
from tests.conftest import Daemon
from tests.daemon.util import TERMINAL, spec, submit, wait

KINDS = [
    lambda: spec("true"),
    lambda: spec("false"),
    lambda: spec("sleep", "0.05"),
    lambda: spec("sleep", "5", timeout=0.1),
    lambda: spec("sleep", "5"),  # cancelled below
    lambda: spec("echo", "out", queue_timeout=0.05),
]


def test_mixed_load_every_task_ends_once(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "3", "--max-workers", "6")
    rng = random.Random(7)
    firehose = d.stub.StreamResults(pb.StreamResultsRequest(), timeout=60)
    finished: Counter[int] = Counter()
    started = threading.Event()

    def read_firehose() -> None:
        started.set()
        try:
            for event in firehose:
                if event.WhichOneof("kind") == "finished":
                    finished[event.task_id] += 1
        except grpc.RpcError:
            pass  # cancelled at the end

    reader = threading.Thread(target=read_firehose)
    reader.start()
    started.wait(5)
    threading.Event().wait(0.2)  # let the firehose subscribe
    ids: list[int] = []
    sleepers: list[int] = []
    for _ in range(12):
        kinds = [rng.randrange(len(KINDS)) for _ in range(10)]
        batch = submit(d.stub, *[KINDS[k]() for k in kinds])
        ids += batch
        sleepers += [i for i, k in zip(batch, kinds, strict=True) if k == 4]
        for task_id in rng.sample(batch, 2):
            d.stub.Cancel(pb.CancelRequest(id=task_id))
    for task_id in sleepers:
        d.stub.Cancel(pb.CancelRequest(id=task_id))
    watched = rng.sample(ids, 30)
    done = wait(d.stub, *ids, timeout=60)
    again = wait(d.stub, *watched, timeout=30)  # late watchers: the final event only
    assert {i: t.state for i, t in again.items()} == {i: done[i].state for i in watched}
    assert all(t.state in TERMINAL for t in done.values())
    deadline = threading.Event()
    for _ in range(100):
        if len(finished) >= len(ids):
            break
        deadline.wait(0.05)
    firehose.cancel()
    reader.join(10)
    assert set(finished) == set(ids)
    assert all(n == 1 for n in finished.values()), "each task finishes exactly once"
    stats = d.stub.Stats(pb.StatsRequest())
    total = stats.succeeded + stats.failed + stats.timed_out + stats.cancelled + stats.lost
    assert total == len(ids) and stats.queued == 0 and stats.running == 0
    states = Counter(pb.TaskState.Name(t.state) for t in done.values())
    assert states["TASK_STATE_CANCELLED"] >= len(sleepers)


def test_kill_shutdown_under_load_leaves_nothing_unfinished(make_daemon: type[Daemon]) -> None:
    d = make_daemon("--workers", "2", "--max-workers", "2")
    ids = submit(d.stub, *[spec("sleep", "0.2") for _ in range(40)])
    watchers = [d.stub.StreamResults(pb.StreamResultsRequest(ids=ids[i::4]), timeout=30)
                for i in range(4)]  # fmt: skip
    threading.Event().wait(0.3)
    d.stub.Shutdown(pb.ShutdownRequest(mode=pb.SHUTDOWN_MODE_KILL))
    seen: Counter[int] = Counter()
    for stream in watchers:
        try:
            for event in stream:
                if event.WhichOneof("kind") == "finished":
                    seen[event.task_id] += 1
        except grpc.RpcError:
            pass  # the daemon went away; the journal is checked below
    assert d.proc is not None and d.proc.wait(20) == 0
    assert all(n == 1 for n in seen.values())
    d.start()
    tasks = {t.id: t for t in d.stub.List(pb.ListRequest(page_size=100)).tasks}
    assert set(tasks) == set(ids)
    assert all(t.state in TERMINAL for t in tasks.values())
    assert any(t.state == pb.TASK_STATE_CANCELLED for t in tasks.values())
    assert set(seen) == set(ids), "every watcher heard every end, even on KILL"
