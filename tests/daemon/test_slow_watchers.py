"""Slow watchers: a stream that is not read costs the daemon a bounded amount of memory.

A watcher's backlog is bounded in bytes (4 MiB); one that falls further behind is dropped and its
stream ends ABORTED ("stream fell behind: ..."), which the client maps to StreamFellBehind (exit
74), not to QueueFull (75). A watcher that reads gets every byte, meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerd.events import EventHub, WatcherTooSlow
from tests.conftest import Daemon
from tests.daemon.util import TERMINAL, spec, submit

MiB = 1 << 20
FELL_BEHIND = "stream fell behind: more than 4 MiB unread"


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def stalled(d: Daemon, task_id: int) -> tuple[grpc.Channel, grpc.Call]:
    """A client of its own with a StreamResults(output) stream that it does not read (yet)."""
    channel = grpc.insecure_channel(d.target)
    call = pb_grpc.TaskerStub(channel).StreamResults(
        pb.StreamResultsRequest(ids=[task_id], output=True), timeout=60
    )
    call.initial_metadata()  # the first event was sent: the daemon has subscribed the watcher
    return channel, call


def read_all(call: grpc.Call) -> tuple[int, grpc.RpcError | None]:
    """Output bytes the stream delivers, and the error it ends with (None: OK)."""
    got = 0
    try:
        for event in call:
            got += len(event.output.data)
    except grpc.RpcError as err:
        return got, err
    return got, None


def wait_terminal(d: Daemon, ids: list[int], pid: int, timeout: float = 30) -> float:
    """Poll until every task is terminal; return the peak RSS (MiB) of ``pid`` meanwhile."""
    peak = rss_mib(pid)
    deadline = time.monotonic() + timeout
    left = set(ids)
    while left:
        assert time.monotonic() < deadline, f"tasks {sorted(left)} still running"
        peak = max(peak, rss_mib(pid))
        left = {i for i in left if d.stub.Get(pb.GetRequest(id=i), timeout=5).state not in TERMINAL}
        time.sleep(0.02)
    return max(peak, rss_mib(pid))


@pytest.mark.timeout(60)
def test_unread_streams_keep_daemon_memory_bounded(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """3 tasks print 200 MiB each; 2 clients never read, a `taskerctl logs -f` is SIGSTOPped.

    Before the byte bound each such watcher pinned up to 10,000 chunks of 64 KiB (~600 MiB).
    """
    d = make_daemon("--workers", "3", "--max-workers", "3")
    assert d.proc is not None
    gate = tmp_path / "gate"
    script = f"echo hello; until [ -e {gate} ]; do sleep 0.01; done; head -c 200M /dev/zero"
    ids = submit(d.stub, *[spec(script, shell=True)] * 3)
    raw = [stalled(d, task_id) for task_id in ids[:2]]
    env = {**os.environ, "TASKER_SOCKET": str(d.socket)}
    cli = subprocess.Popen(
        [sys.executable, "-m", "taskerctl", "logs", "-f", str(ids[2])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == b"hello\n"  # it follows the task
        cli.send_signal(signal.SIGSTOP)
        before = rss_mib(d.proc.pid)
        gate.touch()
        peak = wait_terminal(d, ids, d.proc.pid)
        # Measured: 10 to 15 MiB more (3 backlogs of 4 MiB, gRPC's buffers); 615 before the fix.
        assert peak - before < 64, f"daemon RSS grew {before:.0f} -> {peak:.0f} MiB"
        for channel, call in raw:
            got, err = read_all(call)
            channel.close()
            assert err is not None, f"a never-read stream got all {got} bytes"
            assert (err.code(), err.details()) == (grpc.StatusCode.ABORTED, FELL_BEHIND)
            assert got < 16 * MiB  # what gRPC had in flight when the watcher was dropped
    finally:
        cli.send_signal(signal.SIGCONT)
        out, err_text = cli.communicate(timeout=30)
    assert len(out) < 16 * MiB  # then it was dropped
    assert cli.returncode == 74, err_text  # StreamFellBehind, not QueueFull's 75
    assert err_text.decode().splitlines() == [f"taskerctl: error: {FELL_BEHIND}"]


PACED = """\
import hashlib, os, sys, time
h, block = hashlib.sha256(), os.urandom(1 << 16)
for i in range(384):  # 24 MiB at ~8 MB/s, well within what a reader takes
    data = block[i:] + block[:i]
    h.update(data)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    time.sleep(0.008)
sys.stderr.write(h.hexdigest())
"""


def test_slow_watcher_aborted_while_a_reader_gets_every_byte(
    make_daemon: Callable[..., Daemon],
) -> None:
    d = make_daemon("--workers", "1")
    [task_id] = submit(d.stub, spec(sys.executable, "-c", PACED))
    slow_channel, slow = stalled(d, task_id)
    chunks: list[bytes] = []
    seqs: list[int] = []
    failure: list[grpc.RpcError] = []

    def reader() -> None:
        request = pb.StreamResultsRequest(ids=[task_id], output=True)
        try:
            for event in d.stub.StreamResults(request, timeout=60):
                seqs.append(event.seq)
                if event.output.stream == pb.OUTPUT_STREAM_STDOUT:
                    chunks.append(event.output.data)
        except grpc.RpcError as err:
            failure.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join(60)
    assert not failure, failure[0].details()
    task = d.stub.Get(pb.GetRequest(id=task_id, output=True), timeout=5)
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.error
    data = b"".join(chunks)
    assert len(data) == 24 * MiB
    assert hashlib.sha256(data).hexdigest() == task.stderr.decode()
    assert seqs == sorted(set(seqs))

    got, err = read_all(slow)
    slow_channel.close()
    assert err is not None, f"the never-read stream got all {got} bytes"
    assert (err.code(), err.details()) == (grpc.StatusCode.ABORTED, FELL_BEHIND)
    from taskerctl.errors import EXIT_QUEUE_FULL, StreamFellBehind, from_rpc_error

    mapped = from_rpc_error(err, d.socket)
    assert isinstance(mapped, StreamFellBehind) and str(mapped) == FELL_BEHIND
    assert mapped.exit_code == 74 != EXIT_QUEUE_FULL


def _output(task_id: int, seq: int, stream: pb.OutputStream.ValueType, data: bytes) -> pb.TaskEvent:
    return pb.TaskEvent(
        task_id=task_id, seq=seq, output=pb.TaskEvent.Output(stream=stream, data=data)
    )


def _publish(hub: EventHub, event: pb.TaskEvent) -> None:
    hub.publish(
        event.task_id,
        lambda _: event,
        is_output=event.HasField("output"),
        is_final=event.HasField("finished"),
    )


async def test_backlog_merges_chunks_per_task_and_stream_in_order() -> None:
    hub = EventHub()
    watcher = hub.subscribe([1, 2], output=True)
    out, err = pb.OUTPUT_STREAM_STDOUT, pb.OUTPUT_STREAM_STDERR
    published = [
        _output(1, 1, out, b"a"), _output(2, 1, out, b"x"), _output(1, 2, out, b"b"),
        _output(1, 3, err, b"E"), _output(1, 4, out, b"c"), _output(2, 2, out, b"y"),
        pb.TaskEvent(task_id=2, seq=3, finished=pb.TaskEvent.Finished()),
        pb.TaskEvent(task_id=1, seq=5, finished=pb.TaskEvent.Finished()),
    ]  # fmt: skip
    for event in published:
        _publish(hub, event)
    got = [(e.task_id, e.seq, e.output.stream, e.output.data) async for e in watcher.events()]
    assert got == [
        (1, 2, out, b"ab"),  # merged up to task 1's next stderr chunk; seq of the last one
        (2, 2, out, b"xy"),  # task 2's chunks, merged past task 1's events
        (1, 3, err, b"E"),
        (1, 4, out, b"c"),
        (2, 3, 0, b""),
        (1, 5, 0, b""),
    ]


async def test_backlog_is_bounded_in_bytes_but_takes_one_large_event() -> None:
    hub = EventHub()
    alone = hub.subscribe([1], output=True)
    big = pb.TaskEvent(task_id=1, seq=1, finished=pb.TaskEvent.Finished(
        task=pb.Task(id=1, stdout=b"o" * (6 * MiB))))  # fmt: skip
    _publish(hub, big)
    assert [e.seq async for e in alone.events()] == [1], "larger than the bound, yet alone: taken"

    behind = hub.subscribe([2], output=True)
    for seq in range(1, 81):  # 80 chunks of 64 KiB: 5 MiB
        _publish(hub, _output(2, seq, pb.OUTPUT_STREAM_STDOUT, b"z" * (64 << 10)))
    assert not hub.watched(2), "a dropped watcher is unsubscribed"
    with pytest.raises(WatcherTooSlow) as caught:
        async for _ in behind.events():
            pass
    assert caught.value.code == grpc.StatusCode.ABORTED
    assert str(caught.value) == FELL_BEHIND
