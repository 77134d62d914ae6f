"""Chaos: kill -9 the daemon again and again under mixed load, then drain; nothing acknowledged is
lost, nothing unacknowledged appears, no two attempts of a task overlap, an at-most-once task runs
at most once, nothing is left running, and the daemon's memory stays bounded.

Every task runs its body under ``flock -n`` on a lock file of its own, writing ``start`` and
``end`` lines to a file of its own (``$RUNS/<id>``); an attempt that finds the lock of an earlier
attempt still held writes ``OVERLAP`` instead. Every process of the test carries
``TASKER_TEST_MARK`` in its environment. Run with ``-s`` to see the counts; ``TASKER_CHAOS_SEED``
picks another seed.
"""

from __future__ import annotations

import heapq
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from tests.conftest import Daemon, kill_processes, processes_with_env
from tests.daemon.util import TERMINAL, dur

MakeDaemon = Callable[..., Daemon]

SEED = int(os.environ.get("TASKER_CHAOS_SEED", "20240611"))
ROUNDS = 4
SUBMITTERS = 2
MARK_VAR = "TASKER_TEST_MARK"
#: Idle, the daemon holds ~60 MiB. Legitimately on top: captured output (1 MiB per stream, 2 per
#: running task, 6 workers), one stalled watcher's queue (at most every byte of output this run
#: produces, ~10 MiB), gRPC buffers: well under 100 MiB. Four times that is a leak.
RSS_BOUND_MIB = 400
#: Reconnect fast after a restart (gRPC's default backoff starts at 1 s and grows to 2 min).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
]

#: The task's body runs under its lock; "$0" of the inner shell is the task's file.
WRAPPER = (
    'f="$RUNS/$TASKER_TASK_ID"; '
    'flock -n -E 99 "$f.lock" sh -c \'echo "start $TASKER_ATTEMPT $$" >> "$0"; {body}; '
    'rc=$?; echo "end $TASKER_ATTEMPT $$ $rc" >> "$0"; exit $rc\' "$f"; '
    'rc=$?; if [ $rc -eq 99 ]; then echo "OVERLAP $TASKER_ATTEMPT $$" >> "$f"; fi; exit $rc'
)


@dataclass(frozen=True)
class Kind:
    name: str
    body: str
    weight: int
    once: bool = False
    timeout: float | None = None


KINDS = [
    Kind("quick", "true", 25),
    Kind("output", "seq 1 40000; echo to-stderr >&2", 15),  # ~230 KB of stdout
    Kind("children", "sleep 0.2 & sleep 0.1 & wait", 15),
    Kind("fail", "false", 5),
    Kind("once", "sleep 0.3", 10, once=True),
    Kind("slow", "sleep 1.5", 8),  # likely running at a crash: the re-run must wait for it
    Kind("timeout", "sleep 20", 10, timeout=0.4),
    Kind("cancel", "sleep 20", 7),  # cancelled by the canceller, 0.2 to 1.5 s after it is acked
]
WEIGHTS = [k.weight for k in KINDS]


def answer_lost(err: grpc.RpcError) -> bool:
    """True when the call broke (daemon down or killed mid-call): its request may or may not have
    been carried out. False when the daemon answered with an error status."""
    code = err.code()
    if code == grpc.StatusCode.INTERNAL:  # the daemon's own internal errors say so
        return not (err.details() or "").startswith("internal error")
    return code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
    )


def connect(target: str) -> tuple[grpc.Channel, pb_grpc.TaskerStub]:
    channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return channel, pb_grpc.TaskerStub(channel)


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Chaos:
    """The load, the watchers, and what they saw; all shared state under ``lock``."""

    def __init__(self, d: Daemon, mark: str, runs: Path) -> None:
        self.d = d
        self.mark = mark
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), MARK_VAR: mark,
                    "RUNS": str(runs)}  # fmt: skip
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.kinds: dict[str, list[Kind]] = {}  # request -> its tasks' kinds, in order
        self.acked: dict[str, list[int]] = {}  # request -> ids Submit answered with
        self.lost: dict[str, int] = {}  # request -> size, when Submit's answer was lost
        self.refused: dict[str, str] = {}  # request -> the error status Submit answered with
        self.cancels: list[tuple[float, int]] = []  # heap of (when, task id)
        self.cancelled = 0
        # task id -> the states its `finished` events carried, in any stream
        self.seen: defaultdict[int, set[pb.TaskState.ValueType]] = defaultdict(set)
        self.finished_events = 0
        self.dropped = 0  # streams the daemon ended ABORTED: "stream fell behind" (contract)
        self.problems: list[str] = []
        self.calls: set[Any] = set()  # open streams, cancelled at the end
        self.rss_max = 0

    # ---------------------------------------------------------------- helpers

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 200:
                self.problems.append(text)

    def spec(self, kind: Kind, req: str, *, own_env: bool) -> pb.TaskSpec:
        task = pb.TaskSpec(argv=[WRAPPER.format(body=kind.body)], shell=True, once=kind.once,
                           labels={"run": self.mark, "req": req, "kind": kind.name})  # fmt: skip
        if own_env:
            task.env.update(self.env)
        if kind.timeout is not None:
            task.timeout.CopyFrom(dur(kind.timeout))
        return task

    def on_finished(self, event: pb.TaskEvent, this_stream: set[int], where: str) -> None:
        with self.lock:
            self.finished_events += 1
            self.seen[event.task_id].add(event.finished.task.state)
        if event.task_id in this_stream:
            self.problem(f"{where}: task {event.task_id} finished twice in one stream")
        this_stream.add(event.task_id)

    def stream(self, stub: pb_grpc.TaskerStub, request: pb.StreamResultsRequest) -> Any:
        call = stub.StreamResults(request, timeout=120)
        with self.lock:
            self.calls.add(call)
        return call

    def close(self, call: Any) -> None:
        with self.lock:
            self.calls.discard(call)

    # ---------------------------------------------------------------- threads

    def submitter(self, n: int) -> None:
        rng = random.Random(f"{SEED}-submitter-{n}")
        channel, stub = connect(self.d.target)
        i = 0
        while not self.stop.is_set():
            i += 1
            req = f"s{n}-{i}"
            size = 1 if rng.random() < 0.5 else rng.randint(2, 6)
            kinds = rng.choices(KINDS, weights=WEIGHTS, k=size)
            shared = size > 1 and rng.random() < 0.5  # the request's env, carried once
            request = pb.SubmitRequest(
                tasks=[self.spec(k, req, own_env=not shared) for k in kinds],
                env=self.env if shared else {},
            )
            with self.lock:
                self.kinds[req] = kinds
            try:
                ids = list(stub.Submit(request, timeout=5).ids)
            except grpc.RpcError as err:
                if answer_lost(err):
                    with self.lock:
                        self.lost[req] = size
                    channel.close()
                    channel, stub = connect(self.d.target)
                    self.stop.wait(rng.uniform(0.05, 0.15))
                else:
                    with self.lock:
                        self.refused[req] = f"{err.code().name}: {err.details()}"
                continue
            now = time.monotonic()
            with self.lock:
                self.acked[req] = ids
                for task_id, kind in zip(ids, kinds, strict=True):
                    if kind.name == "cancel":
                        heapq.heappush(self.cancels, (now + rng.uniform(0.2, 1.5), task_id))
                    elif rng.random() < 0.04:  # now and then, cancel anything
                        heapq.heappush(self.cancels, (now + rng.uniform(0.0, 1.0), task_id))
            self.stop.wait(rng.uniform(0.1, 0.3))
        channel.close()

    def canceller(self) -> None:
        channel, stub = connect(self.d.target)
        while not self.stop.wait(0.05):
            due: list[int] = []
            with self.lock:
                while self.cancels and self.cancels[0][0] <= time.monotonic():
                    due.append(heapq.heappop(self.cancels)[1])
            for task_id in due:
                try:
                    stub.Cancel(pb.CancelRequest(id=task_id), timeout=5)
                    self.cancelled += 1
                except grpc.RpcError as err:
                    if answer_lost(err):  # try again after the restart
                        with self.lock:
                            heapq.heappush(self.cancels, (time.monotonic() + 0.3, task_id))
                        channel.close()
                        channel, stub = connect(self.d.target)
                    else:
                        self.problem(f"Cancel({task_id}): {err.code().name}: {err.details()}")
        channel.close()

    def firehose(self) -> None:
        """Every task's events, re-opened after each crash."""
        while not self.stop.is_set():
            channel, stub = connect(self.d.target)
            call = self.stream(stub, pb.StreamResultsRequest())
            this_stream: set[int] = set()
            try:
                for event in call:
                    if event.WhichOneof("kind") == "finished":
                        self.on_finished(event, this_stream, "firehose")
            except grpc.RpcError as err:
                self.dropped += err.code() == grpc.StatusCode.ABORTED
            finally:
                self.close(call)
                channel.close()
            self.stop.wait(0.1)

    def watcher(self) -> None:
        """Streams of 20 recent acknowledged tasks, with or without output, until all finish."""
        rng = random.Random(f"{SEED}-watcher")
        channel, stub = connect(self.d.target)
        while not self.stop.is_set():
            with self.lock:
                pool = [i for ids in list(self.acked.values())[-60:] for i in ids]
            if not pool:
                self.stop.wait(0.1)
                continue
            ids = rng.sample(pool, min(20, len(pool)))
            output = rng.random() < 0.5
            call = self.stream(stub, pb.StreamResultsRequest(ids=ids, output=output))
            this_stream: set[int] = set()
            try:
                for event in call:
                    kind = event.WhichOneof("kind")
                    if kind == "finished":
                        self.on_finished(event, this_stream, "watcher")
                    elif kind == "output" and not output:
                        self.problem(f"watcher without output got output of {event.task_id}")
                if this_stream != set(ids) and not self.stop.is_set():
                    self.problem(f"a stream of {sorted(ids)} ended with {sorted(this_stream)}")
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.ABORTED:
                    self.dropped += 1
                elif not answer_lost(err):
                    self.problem(f"StreamResults({ids}): {err.code().name}: {err.details()}")
                channel.close()
                channel, stub = connect(self.d.target)
                self.stop.wait(0.1)
            finally:
                self.close(call)
        channel.close()

    def stalled(self) -> None:
        """A firehose with output that is never read, open across each crash (until the
        daemon drops it for falling behind, or it dies; then another one)."""
        while not self.stop.is_set():
            channel, stub = connect(self.d.target)
            call = self.stream(stub, pb.StreamResultsRequest(output=True))
            while not self.stop.wait(0.1) and not call.done():
                pass
            call.cancel()
            self.close(call)
            channel.close()
            self.stop.wait(0.3)

    def sampler(self) -> None:
        while not self.stop.wait(0.2):
            proc = self.d.proc
            if proc is not None:
                self.rss_max = max(self.rss_max, rss_kib(proc.pid))


@pytest.fixture
def mark() -> Iterator[str]:
    """``TASKER_TEST_MARK``'s value for this test; whatever carries it at the end is killed."""
    value = f"chaos-{uuid.uuid4().hex}"
    yield value
    kill_processes(processes_with_env(MARK_VAR, value))


def list_run(stub: pb_grpc.TaskerStub, labels: dict[str, str]) -> list[pb.Task]:
    tasks: list[pb.Task] = []
    token = ""
    while True:
        page = stub.List(
            pb.ListRequest(labels=labels, page_size=1000, page_token=token), timeout=10
        )
        tasks += page.tasks
        token = page.next_page_token
        if not token:
            return tasks


def wait_terminal(stub: pb_grpc.TaskerStub, ids: list[int], timeout: float) -> set[int]:
    """Wait until every id is terminal; returns those that are not by ``timeout``."""
    deadline = time.monotonic() + timeout
    left = set(ids)
    for lo in range(0, len(ids), 2000):
        chunk = ids[lo : lo + 2000]
        request = pb.StreamResultsRequest(ids=chunk, finished_only=True)
        try:
            for event in stub.StreamResults(request, timeout=max(1.0, deadline - time.monotonic())):
                left.discard(event.task_id)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    return left


@pytest.mark.timeout(150)
def test_kill9_rounds_under_mixed_load(mark: str, make_daemon: MakeDaemon, tmp_path: Path) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    runs = tmp_path / "runs"
    runs.mkdir()
    d = make_daemon("--workers", "4", "--max-workers", "6")
    assert d.proc is not None
    idle_rss = rss_kib(d.proc.pid)
    chaos = Chaos(d, mark, runs)
    threads = [threading.Thread(target=chaos.submitter, args=(n,)) for n in range(SUBMITTERS)]
    helpers = (chaos.canceller, chaos.firehose, chaos.watcher, chaos.stalled, chaos.sampler)
    threads += [threading.Thread(target=t) for t in helpers]
    for t in threads:
        t.start()
    round_rss: list[int] = []
    try:
        for _ in range(ROUNDS):
            time.sleep(rng.uniform(2.0, 3.5))
            assert d.proc is not None
            round_rss.append(rss_kib(d.proc.pid))
            d.kill9()
            time.sleep(rng.uniform(0.0, 0.4))  # the clients keep calling a dead daemon
            d.start()
        time.sleep(1.0)  # load on the last daemon too
    finally:
        chaos.stop.set()
        with chaos.lock:
            calls = list(chaos.calls)
        for call in calls:
            call.cancel()
        for t in threads:
            t.join(15)
    assert not any(t.is_alive() for t in threads), "a load thread hung"
    load_seconds = time.monotonic() - started
    problems = list(chaos.problems)

    # ---- the drain: what exists, cancels that a crash may have undone, then wait for all
    stub = d.stub
    existing = list_run(stub, {"run": mark})
    by_req: defaultdict[str, list[int]] = defaultdict(list)
    for task in existing:
        by_req[task.spec.labels.get("req", "")].append(task.id)
    kind_of: dict[int, Kind] = {}
    for req, ids in by_req.items():
        kinds = chaos.kinds.get(req, [])
        if len(kinds) == len(ids):
            kind_of.update(zip(sorted(ids), kinds, strict=True))
    for task_id, kind in kind_of.items():
        if kind.name == "cancel":
            stub.Cancel(pb.CancelRequest(id=task_id), timeout=5)
    all_ids = sorted(t.id for t in existing)
    stuck = wait_terminal(stub, all_ids, timeout=45)
    final = {i: stub.Get(pb.GetRequest(id=i), timeout=5) for i in all_ids}
    rss_end = rss_kib(d.proc.pid) if d.proc is not None else 0

    # ---- acknowledged, lost and refused requests against what exists
    for req, ids in chaos.acked.items():
        if sorted(by_req.get(req, [])) != sorted(ids):
            problems.append(f"request {req} was answered {ids}; the journal has {by_req.get(req)}")
    lost_journaled = 0
    for req, size in chaos.lost.items():
        found = len(by_req.get(req, []))
        lost_journaled += found == size
        if found not in (0, size):
            problems.append(f"request {req} of {size} tasks (answer lost) left {found}: not all "
                            "or nothing")  # fmt: skip
    for req, status in chaos.refused.items():
        if req in by_req:
            problems.append(f"request {req} was refused ({status}) yet has tasks {by_req[req]}")
    known = set(chaos.acked) | set(chaos.lost) | set(chaos.refused)
    for req in set(by_req) - known:
        problems.append(f"tasks {by_req[req]} belong to no request a client made ({req!r})")
    for req in set(chaos.lost) | set(chaos.refused):  # the label index agrees with the full list
        found_ids = [t.id for t in list_run(stub, {"run": mark, "req": req})]
        if sorted(found_ids) != sorted(by_req.get(req, [])):
            problems.append(f"List by req={req} gives {found_ids}, not {by_req.get(req)}")

    # ---- each task: one terminal state, what watchers saw, its runs
    if stuck:
        names = {i: pb.TaskState.Name(final[i].state) for i in sorted(stuck)}
        problems.append(f"not terminal after the drain: {names}")
    overlapped: list[str] = []
    for task_id, task in final.items():
        if task.state not in TERMINAL:
            continue  # reported above
        seen = chaos.seen.get(task_id, set())
        if seen - {task.state}:
            seen_names = sorted(pb.TaskState.Name(s) for s in seen)
            problems.append(f"task {task_id} is {pb.TaskState.Name(task.state)}; watchers saw "
                            f"it finish as {seen_names}")  # fmt: skip
        if task.state == pb.TASK_STATE_LOST and not task.spec.once:
            problems.append(f"task {task_id} is LOST but not an at-most-once task")
        path = runs / str(task_id)
        text = path.read_text() if path.exists() else ""
        starts = sum(line.startswith("start ") for line in text.splitlines())
        if "OVERLAP" in text:
            overlapped.append(f"task {task_id} ({task.spec.labels['kind']}, "
                              f"{pb.TaskState.Name(task.state)}): {text.split()}")  # fmt: skip
        if task.spec.once and starts > 1:
            problems.append(f"at-most-once task {task_id} ran {starts} times: {text.split()}")
        if task.state == pb.TASK_STATE_SUCCEEDED and starts == 0:
            problems.append(f"task {task_id} SUCCEEDED without running its body")
    if overlapped:
        problems.append(f"{len(overlapped)} tasks had two attempts at once:\n    "
                        + "\n    ".join(overlapped[:20]))  # fmt: skip
    for seen_id in set(chaos.seen) - set(final):
        problems.append(f"watchers saw task {seen_id} finish, but no request has it")

    # ---- memory, then a graceful stop that leaves nothing behind
    rss_max = max([chaos.rss_max, idle_rss, rss_end, *round_rss])
    if rss_max > RSS_BOUND_MIB * 1024:
        problems.append(f"daemon RSS reached {rss_max / 1024:.0f} MiB (bound {RSS_BOUND_MIB})")
    assert d.stop() == 0, d.log()
    deadline = time.monotonic() + 5
    while processes_with_env(MARK_VAR, mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = processes_with_env(MARK_VAR, mark)
    if left:
        problems.append(f"{len(left)} task processes still run after the final stop:\n    "
                        + "\n    ".join(p.describe() for p in left[:20]))  # fmt: skip

    states = Counter(pb.TaskState.Name(t.state)[11:] for t in final.values())
    acked_tasks = sum(len(ids) for ids in chaos.acked.values())
    print(
        f"\nchaos seed {SEED}: {ROUNDS} kill -9 rounds, load {load_seconds:.1f} s, "
        f"total {time.monotonic() - started:.1f} s\n"
        f"  requests: {len(chaos.kinds)} ({len(chaos.acked)} answered, {acked_tasks} tasks "
        f"accepted; {len(chaos.lost)} answers lost, {lost_journaled} of them journaled; "
        f"{len(chaos.refused)} refused)\n"
        f"  tasks: {len(final)}; terminal: "
        + ", ".join(f"{name} {n}" for name, n in sorted(states.items()))
        + f"\n  cancels sent {chaos.cancelled}; finished events seen {chaos.finished_events}; "
        f"streams dropped for falling behind {chaos.dropped}; overlaps {len(overlapped)}; "
        f"processes left {len(left)}\n"
        f"  daemon RSS: idle {idle_rss / 1024:.0f} MiB, max {rss_max / 1024:.0f} MiB, per round "
        f"{[round(r / 1024) for r in round_rss]} MiB (bound {RSS_BOUND_MIB} MiB)"
    )
    assert acked_tasks >= 100, "too little load to mean anything"
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
