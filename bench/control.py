"""Queue-control benchmarks (issue 11), each figure beside a baseline measured in the same run.

First, on a daemon with 2 workers and a group of 2 slots:

1. the drain rate of 2,000 ``true`` tasks pre-filled behind two gate tasks (as ``bench/daemon.py``
   does), in the group vs in ``default``, in the order ABBA BAAB..., median of four each; goal
   >= 0.95x. (It runs first: in trials, the first drain right after the big daemon below had
   stopped ran at half speed.)

Then one daemon with a group ``bench`` of one slot, held by a ``sleep 3600`` task, and 100,000
``true`` tasks queued in it (``--quick``: 5,000), specs as the clients build them
(``submit_requests``):

2. ``SetPriority`` of 10,000 queued ids to HIGH vs ``Cancel`` of 10,000 other queued ids (an
   existing bulk verb over as many ids), and of 1,000 ids each: the per-id cost of both at the
   two sizes shows how they scale (and a line through the two splits a call's cost into a part
   per call and a part per id); goal 10,000 ids < 1 s and a per-id cost at 10,000 no more than
   1.5x the one at 1,000. Median of three calls, each on fresh ids;
3. ``Pause`` and ``Resume`` of the group with 100,000 queued (p50 of a few calls, its running
   task stopped and continued) vs ``Stats`` on the same daemon; goal p50 < 50 ms. Also shown:
   the same calls before the fill, and on an empty group of the same daemon;
4. 1,000-task Submits ``stashed`` vs not (accept rate, alternated), and ``Enqueue`` of 10,000
   stashed ids (rate, beside the plain Submit's).

Run: ``.venv/bin/python bench/control.py [--quick]``. Prints figures and a summary; asserts
nothing about speed (only that each verb did what it was asked).
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BenchDaemon,
    Row,
    cpu_seconds,
    percentile,
    rate,
    sized_main,
    timed_sections,
    verdict,
)
from daemon import GATE, Firehose, aio_stub

from tasker.api import METADATA
from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerctl import _core as core

GROUP = "bench"  # the group of sections 2-4: one slot, held by HOLD
EMPTY = "idle"  # a group with nothing in it, on the same daemon
DRAIN_GROUP = "pair"  # the group of section 1: two slots
HOLD = ["sleep", "3600"]
SET_PRIORITY_GOAL = 1.0
SCALING_GOAL = 1.5
PAUSE_GOAL = 0.050
STASH_GOAL = 20_000.0
DRAIN_GOAL = 0.95

Stub = pb_grpc.TaskerStub


@dataclass(frozen=True)
class Sizes:
    """How much work each section does (full run or ``--quick``)."""

    queued: int  # tasks left queued in GROUP (behind its held slot)
    big: int  # ids per SetPriority / Cancel / Enqueue call
    small: int  # ids of the scaling point
    reps: int  # SetPriority / Cancel calls per size (median)
    pause_calls: int  # Pause + Resume pairs (p50)
    stats_calls: int
    batches: int  # 1,000-task Submits per mode (stashed, not)
    drain: int  # ``true`` tasks per drain
    drain_reps: int  # drains per group (median)


FULL = Sizes(100_000, 10_000, 1_000, 3, 7, 100, 10, 2000, 4)
QUICK = Sizes(5_000, 1_000, 100, 1, 3, 20, 2, 100, 1)


def ms(seconds: float) -> str:
    """Seconds as milliseconds text."""
    return f"{seconds * 1e3:.2f} ms"


def us(seconds: float) -> str:
    """Seconds as microseconds text."""
    return f"{seconds * 1e6:.1f} us"


def timed(call: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def batches(n: int, options: dict[str, object], stashed: bool = False) -> list[pb.SubmitRequest]:
    """``n`` ``true`` tasks as ``Client.submit_many`` sends them (at most 10,000 a request)."""
    return list(core.submit_requests([["true"]] * n, options, core.MAX_IDS, stashed=stashed))


def submit(stub: Stub, request: pb.SubmitRequest) -> list[int]:
    """The ids of one Submit."""
    return list(stub.Submit(request, timeout=120, metadata=METADATA).ids)


def group_record(stub: Stub, name: str) -> pb.Group:
    """One group's record, from Stats."""
    [record] = stub.Stats(pb.StatsRequest(group=name), timeout=30, metadata=METADATA).groups
    return record


def wait_running(stub: Stub, name: str, n: int, timeout: float = 30.0) -> None:
    """Until group ``name`` runs ``n`` tasks."""
    deadline = time.monotonic() + timeout
    while group_record(stub, name).running < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"group {name}: {n} tasks not running after {timeout} s")
        time.sleep(0.01)


def expect(what: str, got: int, want: int) -> None:
    """The bench is wrong, not slow: stop it."""
    if got != want:
        raise RuntimeError(f"{what}: {got:,}, expected {want:,}")


# ---------------------------------------------------------------------------------- 2. priority


def priority_vs_cancel(stub: Stub, ids: list[int], sizes: Sizes) -> list[Row]:
    """SetPriority to HIGH vs Cancel, each of ``big`` and ``small`` fresh queued ids per call."""
    pool = list(ids)
    random.Random(11).shuffle(pool)
    times: dict[tuple[str, int], list[float]] = {}
    queue_sizes: list[int] = []
    high = 0
    md = METADATA
    for _ in range(sizes.reps):
        for k in (sizes.small, sizes.big):
            chosen, pool = pool[:k], pool[k:]
            request = pb.SetPriorityRequest(ids=chosen, priority=pb.PRIORITY_HIGH)
            queue_sizes.append(group_record(stub, GROUP).queued)
            t = timed(lambda r=request: stub.SetPriority(r, timeout=120, metadata=md))
            times.setdefault(("SetPriority", k), []).append(t)
            high += k
            victims, pool = pool[:k], pool[k:]
            cancel = pb.CancelRequest(ids=victims)
            t = timed(lambda r=cancel: stub.Cancel(r, timeout=120, metadata=md))
            times.setdefault(("Cancel", k), []).append(t)
    stats = stub.Stats(pb.StatsRequest(group=GROUP), timeout=30, metadata=md)
    expect("queued HIGH after SetPriority", stats.queued_high, high)
    expect("queued after the Cancels", stats.queued, sizes.queued)
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"SetPriority / Cancel with {min(queue_sizes):,} to {max(queue_sizes):,} queued in the "
          f"group (median of {sizes.reps}, fresh ids each call):")  # fmt: skip
    for verb in ("SetPriority", "Cancel"):
        for k in (sizes.small, sizes.big):
            t = med[(verb, k)]
            every = ", ".join(ms(x) for x in times[(verb, k)])
            print(f"  {verb:<11} {k:>7,} ids: {ms(t):>10} = {us(t / k):>9}/id  ({every})")
    sp_big, sp_small = med[("SetPriority", sizes.big)], med[("SetPriority", sizes.small)]
    ca_big, ca_small = med[("Cancel", sizes.big)], med[("Cancel", sizes.small)]
    scale_sp = (sp_big / sizes.big) / (sp_small / sizes.small)
    scale_ca = (ca_big / sizes.big) / (ca_small / sizes.small)
    print(f"  time x{sizes.big // sizes.small} ids: SetPriority x{sp_big / sp_small:.1f}, Cancel "
          f"x{ca_big / ca_small:.1f} (linear: x{sizes.big // sizes.small})")  # fmt: skip
    fits = {verb: fit(sizes.small, med[(verb, sizes.small)], sizes.big, med[(verb, sizes.big)])
            for verb in ("SetPriority", "Cancel")}  # fmt: skip
    for verb, (per_call, per_id) in fits.items():
        print(f"  {verb}: {ms(per_call)} per call + {us(per_id)} per id (a line through both "
              f"sizes)")  # fmt: skip
    big = f"{sizes.big:,}"
    return [
        Row(f"SetPriority {big} queued -> HIGH", ms(sp_big), f"Cancel {big} {ms(ca_big)}",
            sp_big / ca_big, f"< {SET_PRIORITY_GOAL:.0f} s", sp_big < SET_PRIORITY_GOAL),
        Row(f"  SetPriority per id at {big}", us(sp_big / sizes.big),
            f"at {sizes.small:,} {us(sp_small / sizes.small)}", scale_sp,
            f"<= {SCALING_GOAL}x", scale_sp <= SCALING_GOAL),
        Row(f"  Cancel per id at {big}", us(ca_big / sizes.big),
            f"at {sizes.small:,} {us(ca_small / sizes.small)}", scale_ca),
        Row("  SetPriority cost (line fit)", line(*fits["SetPriority"]),
            f"Cancel {line(*fits['Cancel'])}", None),
    ]  # fmt: skip


def fit(k1: int, t1: float, k2: int, t2: float) -> tuple[float, float]:
    """(seconds per call, seconds per id) of the line through (k1, t1) and (k2, t2)."""
    per_id = (t2 - t1) / (k2 - k1)
    return t1 - k1 * per_id, per_id


def line(per_call: float, per_id: float) -> str:
    """A fitted cost as text."""
    return f"{per_call * 1e3:.1f} ms/call + {us(per_id)}/id"


# ---------------------------------------------------------------------------------- 3. pause


def pause_resume(stub: Stub, name: str, calls: int) -> tuple[list[float], list[float]]:
    """Wall seconds of ``calls`` Pause and Resume of group ``name``, alternated."""
    md = METADATA
    pause, resume = pb.PauseRequest(groups=[name]), pb.ResumeRequest(groups=[name])
    paused: list[float] = []
    resumed: list[float] = []
    for _ in range(calls):
        paused.append(timed(lambda: stub.Pause(pause, timeout=60, metadata=md)))
        resumed.append(timed(lambda: stub.Resume(resume, timeout=60, metadata=md)))
    return paused, resumed


def stats_times(stub: Stub, calls: int) -> list[float]:
    """Wall seconds of ``calls`` sequential Stats calls (after 10 unrecorded ones)."""
    request = pb.StatsRequest()
    for _ in range(10):
        stub.Stats(request, timeout=30, metadata=METADATA)
    return [timed(lambda: stub.Stats(request, timeout=30, metadata=METADATA))
            for _ in range(calls)]  # fmt: skip


def pause_rows(stub: Stub, sizes: Sizes, before: tuple[list[float], list[float]]) -> list[Row]:
    """Pause/Resume of the held group with the queue full, vs Stats, the same group before the
    fill, and an empty group now."""
    queued = group_record(stub, GROUP).queued
    stats = stats_times(stub, sizes.stats_calls)
    paused, resumed = pause_resume(stub, GROUP, sizes.pause_calls)
    held = stub.Pause(pb.PauseRequest(groups=[GROUP]), timeout=60, metadata=METADATA)
    record = group_record(stub, GROUP)
    expect("tasks paused with the group", len(held.paused), 1)
    expect("group paused", int(record.paused), 1)
    stub.Resume(pb.ResumeRequest(groups=[GROUP]), timeout=60, metadata=METADATA)
    expect("group running after Resume", group_record(stub, GROUP).running, 1)
    e_paused, e_resumed = pause_resume(stub, EMPTY, sizes.pause_calls)
    s50 = statistics.median(stats)
    rows: list[Row] = []
    for verb, now, was, empty in (
        ("Pause", paused, before[0], e_paused),
        ("Resume", resumed, before[1], e_resumed),
    ):
        p50, b50, e50 = statistics.median(now), statistics.median(was), statistics.median(empty)
        print(f"{verb} group ({sizes.pause_calls} calls, its running task stopped/continued): "
              f"p50 {ms(p50)} max {ms(max(now))} at {queued:,} queued vs Stats p50 {ms(s50)} "
              f"(p99 {ms(percentile(stats, 0.99))}); the same group at 0 queued p50 {ms(b50)}; "
              f"an empty group at {queued:,} queued p50 {ms(e50)} "
              f"(goal p50 < {PAUSE_GOAL * 1e3:.0f} ms: {verdict(p50 < PAUSE_GOAL)})")  # fmt: skip
        rows.append(Row(f"{verb} group p50, {queued:,} queued", ms(p50), f"Stats p50 {ms(s50)}",
                        p50 / s50, f"< {PAUSE_GOAL * 1e3:.0f} ms", p50 < PAUSE_GOAL))  # fmt: skip
        rows.append(Row(f"  {verb} p50, an empty group", ms(e50), f"before the fill {ms(b50)}",
                        e50 / b50))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------- 4. stash


def stash(stub: Stub, sizes: Sizes) -> list[Row]:
    """1,000-task Submits stashed vs not (alternated), then Enqueue of the stashed ids."""
    options: dict[str, object] = {"group": GROUP}
    [plain] = batches(1000, options)
    [stashed] = batches(1000, options, stashed=True)
    spent = {False: 0.0, True: 0.0}
    kept: list[int] = []
    before = group_record(stub, GROUP)
    for _ in range(sizes.batches):
        for hidden, request in ((True, stashed), (False, plain)):
            t0 = time.perf_counter()
            ids = submit(stub, request)
            spent[hidden] += time.perf_counter() - t0
            if hidden:
                kept += ids
    n = sizes.batches * 1000
    after = group_record(stub, GROUP)
    expect("stashed in the group", after.stashed - before.stashed, n)
    expect("queued in the group", after.queued - before.queued, n)
    hidden_rate, plain_rate = n / spent[True], n / spent[False]
    k = min(sizes.big, len(kept))
    request = pb.EnqueueRequest(ids=kept[:k])
    t = timed(lambda: stub.Enqueue(request, timeout=120, metadata=METADATA))
    enqueue_rate = k / t
    expect("queued after Enqueue", group_record(stub, GROUP).queued - after.queued, k)
    print(f"Submit 1,000-task batches x{sizes.batches} each, alternated, {before.queued:,}+ "
          f"queued: stashed {rate(hidden_rate)} vs queued {rate(plain_rate)}, ratio "
          f"{hidden_rate / plain_rate:.2f} (goal >= {STASH_GOAL:,.0f}/s: "
          f"{verdict(hidden_rate >= STASH_GOAL)})")  # fmt: skip
    print(f"Enqueue {k:,} stashed ids: {ms(t)} = {rate(enqueue_rate)} "
          f"(the plain Submit: {rate(plain_rate)})")  # fmt: skip
    return [
        Row("Submit 1k batches stashed", rate(hidden_rate), f"not stashed {rate(plain_rate)}",
            hidden_rate / plain_rate, f">= {STASH_GOAL:,.0f}/s", hidden_rate >= STASH_GOAL),
        Row(f"Enqueue {k:,} stashed ids", rate(enqueue_rate), f"Submit {rate(plain_rate)}",
            enqueue_rate / plain_rate),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- 2-4


def control(tmp: Path, sizes: Sizes) -> list[Row]:
    """Sections 2-4 on one daemon: the held group, filled."""
    cancelled = sizes.reps * (sizes.small + sizes.big)
    fill_n = sizes.queued + cancelled
    d = BenchDaemon(tmp / "control", workers=1, max_queue=fill_n + 4 * sizes.batches * 1000 + 100)
    with d:
        d.start()
        chan = grpc.insecure_channel(d.target, options=list(core.CHANNEL_OPTIONS))
        try:
            stub = pb_grpc.TaskerStub(chan)
            for name, slots in ((GROUP, 1), (EMPTY, 1)):
                request = pb.AddGroupRequest(name=name, parallel=slots)
                stub.AddGroup(request, timeout=30, metadata=METADATA)
            [hold] = core.submit_requests([HOLD], {"group": GROUP}, 1)
            submit(stub, hold)
            wait_running(stub, GROUP, 1)
            before = pause_resume(stub, GROUP, sizes.pause_calls)

            requests = batches(fill_n, {"group": GROUP})
            t0 = time.perf_counter()
            ids = [i for request in requests for i in submit(stub, request)]
            fill = time.perf_counter() - t0
            expect("queued in the group", group_record(stub, GROUP).queued, fill_n)
            print(f"fill: {fill_n:,} tasks in group {GROUP} (1 slot, held) in {fill:.1f} s = "
                  f"{rate(fill_n / fill)}", flush=True)  # fmt: skip

            rows = priority_vs_cancel(stub, ids, sizes)
            rows += pause_rows(stub, sizes, before)
            rows += stash(stub, sizes)
            print(f"daemon RSS at the end: {d.rss_kib() / 1024:.0f} MiB", flush=True)
        finally:
            chan.close()
    return rows


# ---------------------------------------------------------------------------------- 1. drain


async def drain(
    d: BenchDaemon, stub: pb_grpc.TaskerStub, hose: Firehose, group: str, n: int, run: int
) -> tuple[float, float]:
    """(tasks/s, daemon CPU s per task) of ``n`` ``true`` tasks pre-filled in ``group`` behind
    two gate tasks holding its two slots, timed from the gates' opening."""
    go = d.dir / f"go-{group}-{run}"
    gate = pb.TaskSpec(argv=[GATE.format(go)], shell=True, env=dict(os.environ), group=group)
    gates = (await stub.Submit(pb.SubmitRequest(tasks=[gate] * 2))).ids
    while (await stub.Stats(pb.StatsRequest(group=group))).running < 2:
        await asyncio.sleep(0.01)
    options = {} if group == "default" else {"group": group}  # as clients build it
    [fill] = core.submit_requests([["true"]] * n, options, n)
    filled = await stub.Submit(fill)
    cpu0 = cpu_seconds(d.pid)
    go.touch()
    t0 = time.perf_counter()
    end = await hose.finish_count({*gates, *filled.ids})
    return n / (end - t0), (cpu_seconds(d.pid) - cpu0) / n


async def drains(tmp: Path, sizes: Sizes) -> list[Row]:
    """The drain in a 2-slot group vs in ``default`` with 2 workers, on one daemon."""
    d = BenchDaemon(tmp / "drain", workers=2)
    got: dict[str, list[tuple[float, float]]] = {"default": [], DRAIN_GROUP: []}
    with d:
        d.start()
        channel, stub = aio_stub(d)
        async with channel:
            await stub.AddGroup(pb.AddGroupRequest(name=DRAIN_GROUP, parallel=2))
            hose = Firehose(stub)
            await hose.ready(stub)
            for run in range(sizes.drain_reps):
                pair = ("default", DRAIN_GROUP)  # ABBA BAAB ...: no side always goes first
                for group in pair if run % 4 in (0, 3) else pair[::-1]:
                    got[group].append(await drain(d, stub, hose, group, sizes.drain, run))
            hose.close()
    (base, base_cpu), (mine, mine_cpu) = (
        (statistics.median(r for r, _ in got[g]), statistics.median(c for _, c in got[g]))
        for g in ("default", DRAIN_GROUP)
    )
    ratio = mine / base
    every = {g: ", ".join(rate(r) for r, _ in got[g]) for g in got}
    print(f"drain {sizes.drain:,} pre-filled true (cwd+env), median of {sizes.drain_reps}: group "
          f"{DRAIN_GROUP} (2 slots) {rate(mine)} ({every[DRAIN_GROUP]}), daemon CPU "
          f"{mine_cpu * 1e3:.3f} ms/task; default (2 workers) {rate(base)} ({every['default']}), "
          f"{base_cpu * 1e3:.3f} ms/task; ratio {ratio:.2f} (goal >= {DRAIN_GOAL}x: "
          f"{verdict(ratio >= DRAIN_GOAL)})")  # fmt: skip
    return [
        Row(f"drain {sizes.drain:,} true, group of 2 slots", rate(mine),
            f"default 2 workers {rate(base)}", ratio, f">= {DRAIN_GOAL}x default",
            ratio >= DRAIN_GOAL),
        Row("  daemon CPU per task, group drain", f"{mine_cpu * 1e3:.3f} ms",
            f"default {base_cpu * 1e3:.3f} ms", mine_cpu / base_cpu),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------- main


def run(sizes: Sizes) -> list[Row]:
    """Every section, in order; the summary rows."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-control-") as d:
        tmp = Path(d)
        sections: Sequence[tuple[str, Callable[[], list[Row]]]] = (
            ("drain", lambda: asyncio.run(drains(tmp, sizes))),
            ("control", lambda: control(tmp, sizes)),
        )
        rows += timed_sections(sections)
    return rows


def main() -> None:
    """Command-line entry."""
    sized_main(__doc__, run, FULL, QUICK, "small sizes, for a smoke test")


if __name__ == "__main__":
    main()
