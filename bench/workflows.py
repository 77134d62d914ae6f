"""Workflow benchmarks (issue 12): dependencies at scale, each figure beside a baseline measured
in the same run, at N = 10,000 tasks (``--quick``: 1,000) and at N/10 (per-task costs at both
sizes show whether the work grows linearly; goal: per-task at N <= 1.5x per-task at N/10).

Specs are built as the clients build them (``submit_requests``: argv, cwd, the client's
environment once per request), then given their dependency fields; every call carries the
clients' API metadata. Times of the daemon's own (``started_at``, ``ended_at``) come from the
tasks' records, read once they have all ended.

On a daemon with 2 workers and a group ``serial`` of 1 slot:

1. a chain: N ``true`` tasks in one Submit, task i ``after_tasks=[i-1]``, in ``serial``: the
   accept time vs N independent ``true`` tasks in one Submit (goal: within 2x at 10,000; median
   of 3, with the group paused, each batch then cancelled: that Cancel is shown too), and the
   run time (first start to last end) vs those N independent tasks run one at a time in the
   same 1-slot group (the same work without dependencies);
2. a fan-in: N independent ``true`` tasks (submitted with ``default`` paused, so that every
   accept below is timed on an idle daemon), then one task ``after`` all N ids (a second
   Submit): its accept time, and the time from the last of the N ending to its start, vs the
   same for a task ``after`` one id (median of 5).

On a daemon with 4 workers, which runs first (in trials, drains right after the other daemon
had stopped ran at half speed):

3. a fan-out: a parent task (held on a gate file), then N ``true`` tasks each ``after`` it, in
   one Submit; the gate opens: from then to the parent's end, the first and the last dependant
   started and the last ended (the drain of N at the 4 slots), vs N independent tasks queued
   behind 4 gate tasks (all slots), from the same opening.

At each size the two sides run in the order ABBA (N/10: baseline first; N: the workflow
first).

Run: ``.venv/bin/python bench/workflows.py [--quick]``. Prints figures and a summary; asserts
nothing about speed (only that every task ran, in order where it must).
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchDaemon, Row, cpu_seconds, rate, sized_main, verdict
from daemon import GATE

from tasker.api import METADATA
from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerctl import _core as core
from taskerctl.models import SpecLike

SERIAL = "serial"  # the 1-slot group of section 1
DEFAULT = "default"
CHAIN_ACCEPT_GOAL = 2.0  # chain accept <= 2x the accept of as many independent tasks
SCALING_GOAL = 1.5  # per-task cost at N <= 1.5x the one at N/10
BASELINE_REPS = 5  # one-dependency tasks (section 2)
ACCEPT_REPS = 3  # accept-only Submits per kind and size (section 1)
SUCCEEDED = pb.TASK_STATE_SUCCEEDED

Stub = pb_grpc.TaskerStub


@dataclass(frozen=True)
class Sizes:
    """How much work each section does (full run or ``--quick``)."""

    big: int  # N
    small: int  # N/10


FULL = Sizes(10_000, 1_000)
QUICK = Sizes(1_000, 100)


def ms(seconds: float) -> str:
    """Seconds as milliseconds text."""
    return f"{seconds * 1e3:.2f} ms"


def us(seconds: float) -> str:
    """Seconds as microseconds text."""
    return f"{seconds * 1e6:.1f} us"


def at(stamp: Timestamp) -> float:
    """A record's Timestamp as epoch seconds."""
    return stamp.ToNanoseconds() / 1e9


def connect(d: BenchDaemon) -> tuple[grpc.Channel, Stub]:
    """A sync channel and stub to ``d`` with the clients' channel options (64 MiB messages)."""
    chan = grpc.insecure_channel(d.target, options=list(core.CHANNEL_OPTIONS))
    return chan, pb_grpc.TaskerStub(chan)


def request_of(
    cmds: Sequence[SpecLike], group: str = DEFAULT, shell: bool = False
) -> pb.SubmitRequest:
    """One Submit of ``cmds`` as ``Client.submit_many`` builds it (at most 10,000 tasks)."""
    options: dict[str, object] = {} if group == DEFAULT else {"group": group}
    if shell:
        options["shell"] = True
    [request] = core.submit_requests(list(cmds), options, core.MAX_IDS)
    return request


def trues(n: int, group: str = DEFAULT) -> pb.SubmitRequest:
    """``n`` independent ``true`` tasks in one Submit."""
    return request_of([["true"]] * n, group)


def submit(stub: Stub, request: pb.SubmitRequest) -> tuple[list[int], float]:
    """The ids of one Submit, and its wall seconds."""
    t0 = time.perf_counter()
    ids = list(stub.Submit(request, timeout=300, metadata=METADATA).ids)
    return ids, time.perf_counter() - t0


def wait_ended(stub: Stub, task_id: int, timeout: float = 300.0) -> None:
    """Until ``task_id`` ended, as ``taskerctl wait`` waits (a ``finished_only`` stream)."""
    request = pb.StreamResultsRequest(ids=[task_id], finished_only=True)
    for _ in stub.StreamResults(request, timeout=timeout, metadata=METADATA):
        pass


def records(stub: Stub, ids: Sequence[int], timeout: float = 300.0) -> dict[int, pb.Task]:
    """The final records of ``ids`` (waiting for those not ended yet), read as the clients read
    many ends: ``finished_only`` and ``batch`` streams of at most 10,000 ids."""
    got: dict[int, pb.Task] = {}
    for i in range(0, len(ids), core.MAX_IDS):
        request = pb.StreamResultsRequest(
            ids=ids[i : i + core.MAX_IDS], finished_only=True, batch=True
        )
        for event in stub.StreamResults(request, timeout=timeout, metadata=METADATA):
            kind = event.WhichOneof("kind")
            if kind == "finished":
                got[event.task_id] = event.finished.task
            elif kind == "finished_many":
                got.update((t.id, t) for t in event.finished_many.tasks)
    expect("records read", len(got), len(set(ids)))
    return got


def expect(what: str, got: int, want: int) -> None:
    """The bench is wrong, not slow: stop it."""
    if got != want:
        raise RuntimeError(f"{what}: {got:,}, expected {want:,}")


def all_succeeded(tasks: Iterable[pb.Task], what: str) -> None:
    """Every task SUCCEEDED, else the bench is wrong."""
    bad = [t for t in tasks if t.state != SUCCEEDED]
    if bad:
        raise RuntimeError(f"{what}: {len(bad):,} did not succeed, e.g. task {bad[0].id} "
                           f"{pb.TaskState.Name(bad[0].state)} {bad[0].error!r}")  # fmt: skip


def span(tasks: Iterable[pb.Task]) -> tuple[float, float, float, float]:
    """(first start, last start, first end, last end) of ended tasks."""
    starts, ends = zip(*((at(t.started_at), at(t.ended_at)) for t in tasks), strict=True)
    return min(starts), max(starts), min(ends), max(ends)


def pause(stub: Stub, group: str) -> None:
    """Pause a group (nothing of it starts until :func:`resume`)."""
    stub.Pause(pb.PauseRequest(groups=[group]), timeout=60, metadata=METADATA)


def resume(stub: Stub, group: str) -> None:
    """Resume a paused group."""
    stub.Resume(pb.ResumeRequest(groups=[group]), timeout=60, metadata=METADATA)


def scaling_row(figure: str, big: float, small: float, sizes: Sizes, goal: bool = True) -> Row:
    """A per-task cost at N beside the one at N/10; with ``goal``, <= SCALING_GOAL x."""
    ratio = big / small
    return Row(f"  {figure} per task at {sizes.big:,}", us(big), f"at {sizes.small:,} {us(small)}",
               ratio, f"<= {SCALING_GOAL}x" if goal else "",
               ratio <= SCALING_GOAL if goal else None)  # fmt: skip


# ---------------------------------------------------------------------------------- 1. chain


@dataclass
class Serial:
    """One batch of N tasks run in the 1-slot group: chained or independent."""

    accept: float  # the Submit's seconds
    run: float  # first start to last end, by the daemon's clock
    cpu: float  # the daemon's CPU seconds from the Submit to the last end (approximately)


def serial_request(n: int, chained: bool) -> pb.SubmitRequest:
    """N ``true`` tasks in the 1-slot group, in one Submit; ``chained``: each after the one
    before (``after_tasks``)."""
    request = trues(n, SERIAL)
    if chained:
        for i in range(1, n):
            request.tasks[i].after_tasks.append(i - 1)
    return request


def accepts(stub: Stub, sizes: Sizes) -> dict[tuple[int, bool], tuple[float, float]]:
    """(median Submit seconds, median Cancel seconds) of chains and of independent tasks, at
    N/10 and N, alternated, with the 1-slot group paused (so that nothing runs meanwhile); each
    batch is cancelled (one Cancel of its ids) before the next Submit."""
    times: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    requests = {
        (n, c): serial_request(n, c) for n in (sizes.small, sizes.big) for c in (False, True)
    }
    pause(stub, SERIAL)
    for rep in range(ACCEPT_REPS):
        for n in (sizes.small, sizes.big):
            for chained in (False, True) if rep % 2 == 0 else (True, False):
                ids, accept = submit(stub, requests[(n, chained)])
                t0 = time.perf_counter()
                stub.Cancel(pb.CancelRequest(ids=ids), timeout=300, metadata=METADATA)
                cancel = time.perf_counter() - t0
                times.setdefault((n, chained), []).append((accept, cancel))
    resume(stub, SERIAL)
    stats = stub.Stats(pb.StatsRequest(group=SERIAL), timeout=30, metadata=METADATA)
    expect("waiting after the Cancels", stats.waiting, 0)
    expect("queued after the Cancels", stats.queued, 0)
    for (n, chained), got in sorted(times.items()):
        kind = "chain      " if chained else "independent"
        print(f"{kind} {n:>6,} in group {SERIAL}, paused: accept p50 "
              f"{ms(statistics.median(a for a, _ in got)):>10} "
              f"({', '.join(ms(a) for a, _ in got)}); Cancel of them all p50 "
              f"{ms(statistics.median(c for _, c in got))}", flush=True)  # fmt: skip
    return {
        key: (statistics.median(a for a, _ in got), statistics.median(c for _, c in got))
        for key, got in times.items()
    }


def serial(d: BenchDaemon, stub: Stub, n: int, chained: bool) -> Serial:
    """N ``true`` tasks in the 1-slot group, in one Submit; ``chained``: each after the one
    before (``after_tasks``)."""
    request = serial_request(n, chained)
    cpu0 = cpu_seconds(d.pid)
    ids, accept = submit(stub, request)
    wait_ended(stub, ids[-1])
    cpu = cpu_seconds(d.pid) - cpu0
    got = records(stub, ids)
    tasks = [got[i] for i in ids]
    all_succeeded(tasks, "chain" if chained else "independent")
    if chained:
        for before, after in itertools.pairwise(tasks):
            if at(after.started_at) < at(before.ended_at):
                raise RuntimeError(f"task {after.id} started before {before.id} ended")
    first, _, _, last = span(tasks)
    return Serial(accept, last - first, cpu)


def chain(d: BenchDaemon, stub: Stub, sizes: Sizes) -> list[Row]:
    """Section 1: chains vs independent tasks in the 1-slot group, at N/10 then N."""
    got: dict[tuple[int, bool], Serial] = {}
    for n, order in ((sizes.small, (False, True)), (sizes.big, (True, False))):  # ABBA
        for chained in order:
            got[(n, chained)] = s = serial(d, stub, n, chained)
            kind = "chain      " if chained else "independent"
            print(f"{kind} {n:>6,} true in group {SERIAL} (1 slot): accept {ms(s.accept):>10} "
                  f"= {us(s.accept / n):>8}/task; run {s.run:6.2f} s = {us(s.run / n):>8}/task "
                  f"({rate(n / s.run)}); daemon CPU {us(s.cpu / n)}/task", flush=True)  # fmt: skip
    medians = accepts(stub, sizes)
    big, small = sizes.big, sizes.small
    c, i = got[(big, True)], got[(big, False)]
    cs, is_ = got[(small, True)], got[(small, False)]
    (c_acc, c_cancel), (i_acc, i_cancel) = medians[(big, True)], medians[(big, False)]
    cs_acc = medians[(small, True)][0]
    accept_ratio = c_acc / i_acc
    print(f"chain {big:,}: accept p50 x{accept_ratio:.2f} of {big:,} independent (goal <= "
          f"{CHAIN_ACCEPT_GOAL}x: {verdict(accept_ratio <= CHAIN_ACCEPT_GOAL)}); run "
          f"x{c.run / i.run:.2f} of {big:,} independent one at a time; per task at {big:,} vs "
          f"{small:,}: accept x{(c_acc / big) / (cs_acc / small):.2f}, run "
          f"x{(c.run / big) / (cs.run / small):.2f}")  # fmt: skip
    size = f"{big:,}"
    return [
        Row(f"chain {size}: accept (p50 of {ACCEPT_REPS})", ms(c_acc),
            f"{size} independent {ms(i_acc)}", accept_ratio, f"<= {CHAIN_ACCEPT_GOAL:.0f}x",
            accept_ratio <= CHAIN_ACCEPT_GOAL),
        scaling_row("chain accept", c_acc / big, cs_acc / small, sizes),
        Row(f"chain {size}: run, first start to last end", f"{c.run:.2f} s",
            f"{size} independent, 1 slot {i.run:.2f} s", c.run / i.run),
        scaling_row("chain run", c.run / big, cs.run / small, sizes),
        Row("  chain daemon CPU per task", us(c.cpu / big), f"independent {us(i.cpu / big)}",
            c.cpu / i.cpu),
        scaling_row("independent run (1 slot)", i.run / big, is_.run / small, sizes, goal=False),
        Row(f"chain {size}: Cancel all, waiting", ms(c_cancel),
            f"{size} independent queued {ms(i_cancel)}", c_cancel / i_cancel),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- 2. fan-in


@dataclass
class Join:
    """One task after ``deps`` dependencies."""

    accept: float  # the dependant's Submit, seconds
    delay: float  # from the last dependency's end to the dependant's start
    drain: float  # first start to last end of the dependencies
    cpu: float  # the daemon's CPU seconds from Resume to the dependant's end


def join(d: BenchDaemon, stub: Stub, deps: int) -> Join:
    """``deps`` ``true`` tasks and one task after them all, submitted with ``default`` paused
    (so that nothing runs while the dependant is accepted), then run."""
    pause(stub, DEFAULT)
    ids, _ = submit(stub, trues(deps))
    dependant = trues(1)
    dependant.tasks[0].after.extend(ids)
    [last], accept = submit(stub, dependant)
    state = stub.Get(pb.GetRequest(id=last), timeout=30, metadata=METADATA).state
    expect("the dependant WAITING", state, pb.TASK_STATE_WAITING)
    cpu0 = cpu_seconds(d.pid)
    resume(stub, DEFAULT)
    wait_ended(stub, last)
    cpu = cpu_seconds(d.pid) - cpu0
    got = records(stub, [*ids, last])
    all_succeeded(got.values(), "fan-in")
    first, _, _, ended = span(got[i] for i in ids)
    return Join(accept, at(got[last].started_at) - ended, ended - first, cpu)


def fan_in(d: BenchDaemon, stub: Stub, sizes: Sizes) -> list[Row]:
    """Section 2: a task after N (and N/10) tasks vs a task after one, in ``default``."""
    one = [join(d, stub, 1) for _ in range(BASELINE_REPS)]
    base_accept = statistics.median(j.accept for j in one)
    base_delay = statistics.median(j.delay for j in one)
    print(f"after=[one id] x{BASELINE_REPS}: accept p50 {ms(base_accept)} "
          f"({', '.join(ms(j.accept) for j in one)}); its dependency's end to its start p50 "
          f"{ms(base_delay)} ({', '.join(ms(j.delay) for j in one)})", flush=True)  # fmt: skip
    got: dict[int, Join] = {}
    for n in (sizes.small, sizes.big):
        got[n] = j = join(d, stub, n)
        print(f"after={n:,} ids: accept {ms(j.accept):>9} = {us(j.accept / n):>7}/dependency; "
              f"the last end to its start {ms(j.delay)}; the {n:,} ran (2 workers) in "
              f"{j.drain:.2f} s = {us(j.drain / n)}/task ({rate(n / j.drain)}), daemon CPU "
              f"{us(j.cpu / n)}/task", flush=True)  # fmt: skip
    b, s = got[sizes.big], got[sizes.small]
    size = f"{sizes.big:,}"
    return [
        Row(f"fan-in {size} -> 1: accept the dependant", ms(b.accept),
            f"after=[one id] {ms(base_accept)}", b.accept / base_accept),
        scaling_row("fan-in accept", b.accept / sizes.big, s.accept / sizes.small, sizes),
        Row(f"fan-in {size} -> 1: last end to its start", ms(b.delay),
            f"after=[one id] {ms(base_delay)}", b.delay / base_delay),
        Row(f"  same, fan-in {sizes.small:,} -> 1", ms(s.delay),
            f"after=[one id] {ms(base_delay)}", s.delay / base_delay),
        scaling_row("fan-in drain of its deps", b.drain / sizes.big, s.drain / sizes.small,
                    sizes),
        scaling_row("fan-in daemon CPU", b.cpu / sizes.big, s.cpu / sizes.small, sizes),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- 3. fan-out


@dataclass
class Spread:
    """N tasks let go at once, timed from the gate's opening (the ``go`` file created)."""

    accept: float  # the Submit of the N, seconds
    opened: float  # to the parent's end (fan-out), or the first gate's (independent)
    first_start: float  # to the first of the N started
    last_start: float
    last_end: float


def gates(d: BenchDaemon, stub: Stub, go: Path, count: int) -> list[int]:
    """``count`` tasks running until the file ``go`` exists."""
    ids, _ = submit(stub, request_of([GATE.format(go)] * count, shell=True))
    deadline = time.monotonic() + 30
    while stub.Stats(pb.StatsRequest(), timeout=30, metadata=METADATA).running < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} gate tasks not running after 30 s: {d.log()}")
        time.sleep(0.005)
    return ids


def spread(d: BenchDaemon, stub: Stub, n: int, workers: int, fan: bool, run: str) -> Spread:
    """``fan``: one gate task and N tasks after it; else ``workers`` gates and N independent
    tasks queued behind them. Then the gate opens."""
    go = d.dir / f"go-{run}"
    held = gates(d, stub, go, 1 if fan else workers)
    request = trues(n)
    if fan:
        for spec in request.tasks:
            spec.after.append(held[0])
    ids, accept = submit(stub, request)
    if fan:
        waiting = stub.Stats(pb.StatsRequest(), timeout=30, metadata=METADATA).waiting
        expect("dependants WAITING", waiting, n)
    t0 = time.time()  # the daemon's timestamps are wall-clock times of this machine
    go.touch()
    wait_ended(stub, ids[-1])
    got = records(stub, [*held, *ids])
    all_succeeded(got.values(), "fan-out" if fan else "drain")
    _, _, opened, _ = span(got[i] for i in held)
    first, last, _, ended = span(got[i] for i in ids)
    return Spread(accept, opened - t0, first - t0, last - t0, ended - t0)


def fan_out(d: BenchDaemon, stub: Stub, sizes: Sizes, workers: int) -> list[Row]:
    """Section 3: N tasks after one vs N independent ones behind gates, at N/10 and N."""
    got: dict[tuple[int, bool], Spread] = {}
    for n, order in ((sizes.small, (False, True)), (sizes.big, (True, False))):  # ABBA
        for fan in order:
            got[(n, fan)] = s = spread(d, stub, n, workers, fan, f"{n}-{fan}")
            kind = "fan-out 1 ->" if fan else "independent "
            gate = "the parent ended" if fan else "the first gate ended"
            print(f"{kind} {n:>6,} true ({workers} workers): accept {ms(s.accept):>9}; from the "
                  f"gate's opening: {gate} {ms(s.opened)}, first started {ms(s.first_start)}, "
                  f"last started {s.last_start:.2f} s, last ended {s.last_end:.2f} s "
                  f"({rate(n / (s.last_end - s.opened))} from the end of the gate)",
                  flush=True)  # fmt: skip
    big, small = sizes.big, sizes.small
    f, i = got[(big, True)], got[(big, False)]
    fs = got[(small, True)]
    size = f"{big:,}"
    release, release_small = f.first_start - f.opened, fs.first_start - fs.opened
    drain, drain_small = f.last_end - f.opened, fs.last_end - fs.opened
    return [
        Row(f"fan-out 1 -> {size}: accept", ms(f.accept), f"{size} independent {ms(i.accept)}",
            f.accept / i.accept),
        Row(f"fan-out 1 -> {size}: gate open to first start", ms(f.first_start),
            f"independent {ms(i.first_start)}", f.first_start / i.first_start),
        Row("  of which parent end to first start", ms(release),
            f"at {small:,} {ms(release_small)}", release / release_small),
        Row(f"fan-out 1 -> {size}: gate open to last start", f"{f.last_start:.2f} s",
            f"independent {i.last_start:.2f} s", f.last_start / i.last_start),
        Row(f"fan-out 1 -> {size}: gate open to last end", f"{f.last_end:.2f} s",
            f"independent {i.last_end:.2f} s", f.last_end / i.last_end),
        scaling_row("fan-out drain", drain / big, drain_small / small, sizes),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- main


def with_daemon(
    tmp: Path, name: str, workers: int, body: Callable[[BenchDaemon, Stub], list[Row]]
) -> list[Row]:
    """``body`` against a fresh daemon of ``workers`` workers, after a warm-up of 100 tasks."""
    d = BenchDaemon(tmp / name, workers=workers)
    with d:
        d.start()
        chan, stub = connect(d)
        try:
            stub.AddGroup(pb.AddGroupRequest(name=SERIAL, parallel=1), timeout=30,
                          metadata=METADATA)  # fmt: skip
            ids, _ = submit(stub, trues(100))
            records(stub, ids)
            return body(d, stub)
        finally:
            chan.close()


def run(sizes: Sizes) -> list[Row]:
    """Every section, in order; the summary rows."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-workflows-") as d:
        tmp = Path(d)
        sections: Sequence[tuple[str, str, int, Callable[[BenchDaemon, Stub], list[Row]]]] = (
            ("chain, fan-in", "two", 2, lambda d, s: chain(d, s, sizes) + fan_in(d, s, sizes)),
            ("fan-out", "four", 4, lambda d, s: fan_out(d, s, sizes, 4)),
        )
        # The fan-out's drains first: in trials, drains right after the daemon of sections 1-2
        # had stopped ran at half speed.
        got: dict[str, list[Row]] = {}
        for name, home, workers, section in reversed(sections):
            started = time.perf_counter()
            got[name] = with_daemon(tmp, home, workers, section)
            print(f"  ({name}: {time.perf_counter() - started:.1f} s)", flush=True)
        for name, *_ in sections:
            rows += got[name]
    return rows


def main() -> None:
    """Command-line entry."""
    sized_main(__doc__, run, FULL, QUICK, "N = 1,000, for a smoke test")


if __name__ == "__main__":
    main()
