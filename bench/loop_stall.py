"""How long taskerd's event loop stalls while a batch of tasks with big outputs finishes.

A real taskerd keeps every byte (``output_limit`` = the output size). 200 tasks each write 2 MiB to
stdout (``head -c 2097152 /dev/zero``). Throughout, a separate thread sends a Stats RPC every ~5 ms
and times each round-trip. Stats does no I/O and costs O(1), so a slow answer means the loop was
busy elsewhere (journal writes and reads of the outputs). Phases, all in one run:

1. idle: the baseline;
2. finishing: the batch is submitted and runs while a client waits for it (StreamResults,
   finished only), then 3 s more (the journal's deferred work, such as its WAL checkpoint);
3. collecting: the client then fetches every result with its output in one StreamResults (the
   outputs come back from the journal); should the daemon drop that stream for falling behind,
   the rest with Get, as the contract says.

The stall is the longest round-trip over the idle p50. Goal: no stall over 50 ms.

Run: ``.venv/bin/python bench/loop_stall.py [--tasks 200] [--size 2097152] [--workers 4]``.
Prints figures; exits non-zero only on errors, not for missing the goal. Takes ~15 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchDaemon, percentile, verdict

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc

GOAL = 0.050  # seconds: the longest acceptable stall
INTERVAL = 0.005  # seconds between two Stats probes
BASELINE_SECONDS = 2.0
#: After the last task finished, the probe goes on this long: the journal's deferred work (e.g.
#: the WAL checkpoint, 2 s after the last write) is part of finishing.
TAIL_SECONDS = 3.0


class Probe(threading.Thread):
    """Sends Stats every ``INTERVAL`` on its own channel; records (send time, round-trip)."""

    def __init__(self, target: str) -> None:
        super().__init__(name="stats-probe", daemon=True)
        self.target = target
        self.samples: list[tuple[float, float]] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        channel = grpc.insecure_channel(self.target)
        stub = pb_grpc.TaskerStub(channel)
        try:
            while not self._halt.is_set():
                sent = time.perf_counter()
                stub.Stats(pb.StatsRequest(), timeout=120)
                took = time.perf_counter() - sent
                self.samples.append((sent, took))
                pause = sent + INTERVAL - time.perf_counter()
                if pause > 0:
                    self._halt.wait(pause)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            channel.close()

    def finish(self) -> None:
        """Stop; raise what went wrong in the thread."""
        self._halt.set()
        self.join(130)
        if self.error is not None:
            raise RuntimeError(f"Stats probe failed: {self.error!r}")
        if self.is_alive():
            raise RuntimeError("Stats probe hung")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


def line(label: str, samples: list[float], seconds: float) -> str:
    return (
        f"{label:<24} p50 {ms(percentile(samples, 0.5)):>12}  p99 "
        f"{ms(percentile(samples, 0.99)):>12}  max {ms(max(samples)):>12}  "
        f"({len(samples):,} calls in {seconds:.1f} s)"
    )


def run(tasks: int, size: int, workers: int) -> int:
    """The measurement; returns the exit status."""
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        d = BenchDaemon(Path(tmp) / "d", workers=workers, config=f"output_limit = {size}")
        with d:
            stub = d.start()
            for _ in range(20):  # warm up
                stub.Stats(pb.StatsRequest(), timeout=10)
            probe = Probe(d.target)
            probe.start()
            time.sleep(BASELINE_SECONDS)
            rss_idle = d.rss_kib()
            channel = grpc.insecure_channel(
                d.target, options=[("grpc.max_receive_message_length", 1 << 30)]
            )
            client = pb_grpc.TaskerStub(channel)

            # 1. finishing: the batch runs while a client waits for it
            t_submit = time.perf_counter()
            task = pb.TaskSpec(argv=["head", "-c", str(size), "/dev/zero"])
            request = pb.SubmitRequest(env=dict(os.environ), tasks=[task] * tasks)
            ids = list(client.Submit(request, timeout=60).ids)
            states: dict[int, pb.TaskState.ValueType] = {}
            wait = pb.StreamResultsRequest(ids=ids, finished_only=True)
            for event in client.StreamResults(wait, timeout=300):
                states[event.task_id] = event.finished.task.state
            t_done = time.perf_counter()
            time.sleep(TAIL_SECONDS)

            # 2. collecting: every result with its output, after the fact (journal reads)
            t_collect = time.perf_counter()
            kept: dict[int, pb.Task] = {}
            collect = pb.StreamResultsRequest(ids=ids, finished_only=True, output=True)
            try:
                for event in client.StreamResults(collect, timeout=300):
                    kept[event.task_id] = event.finished.task
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.ABORTED:  # "stream fell behind"
                    raise
                dropped = len(ids) - len(kept)
            else:
                dropped = 0
            for task_id in ids:
                if task_id not in kept:
                    kept[task_id] = client.Get(pb.GetRequest(id=task_id, output=True), timeout=60)
            t_collected = time.perf_counter()
            time.sleep(1.0)
            t_end = time.perf_counter()
            probe.finish()
            rss_busy = d.rss_kib()
            channel.close()

    bad = {i: pb.TaskState.Name(s) for i, s in states.items() if s != pb.TASK_STATE_SUCCEEDED}
    if len(states) != len(ids) or bad:
        print(f"error: {len(states)}/{len(ids)} finished; not SUCCEEDED: {bad}")
        return 1
    short = [t.id for t in kept.values() if len(t.stdout) != size or t.stdout_truncated]
    if len(kept) != len(ids) or short:
        print(f"error: {len(kept)} results collected; output not kept whole for {short[:10]} "
              f"(is output_limit = {size} applied?)")  # fmt: skip
        return 1

    def phase(lo: float, hi: float) -> list[float]:
        return [took for sent, took in probe.samples if lo <= sent < hi]

    idle = phase(0.0, t_submit)
    finishing = phase(t_submit, t_collect)
    collecting = phase(t_collect, t_end)
    base = percentile(idle, 0.5)
    mib = size / (1 << 20)
    took = t_done - t_submit
    how = f" ({dropped} with Get: the stream fell behind)" if dropped else ""
    print(f"loop stall: {tasks} tasks x {mib:.1f} MiB of stdout, all kept (output_limit "
          f"{size:,}), {workers} workers: finished in {took:.1f} s "
          f"({tasks * mib / took:,.1f} MiB/s), collected in {t_collected - t_collect:.1f} s{how};"
          f" RSS {rss_idle / 1024:.0f} MiB idle, {rss_busy / 1024:.0f} MiB after")  # fmt: skip
    print("Stats round-trip every ~5 ms from another thread:")
    print(line("  idle (baseline)", idle, t_submit - probe.samples[0][0]))
    print(line("  running, finishing", finishing, t_collect - t_submit))
    print(line("  collecting results", collecting, t_end - t_collect))
    worst = max(max(finishing), max(collecting))
    for name, samples in (("finishing", finishing), ("collecting", collecting)):
        print(f"stall {name:<10} (max - idle p50) {ms(max(samples) - base):>12}  "
              f"(p99 - idle p50 {ms(percentile(samples, 0.99) - base)});  ratio to idle: max "
              f"{max(samples) / max(idle):,.0f}x, p99 "
              f"{percentile(samples, 0.99) / percentile(idle, 0.99):,.1f}x")  # fmt: skip
    print(f"longest stall {ms(worst - base)} (goal < {GOAL * 1e3:.0f} ms: "
          f"{verdict(worst - base < GOAL)})")  # fmt: skip
    return 0


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks in the batch (200)")
    parser.add_argument("--size", type=int, default=2 << 20, help="stdout bytes per task (2 MiB)")
    parser.add_argument("--workers", type=int, default=4, help="daemon workers (4)")
    opts = parser.parse_args()
    t0 = time.perf_counter()
    try:
        status = run(opts.tasks, opts.size, opts.workers)
    except (grpc.RpcError, RuntimeError, OSError) as exc:
        print(f"error: {exc!r}", file=sys.stderr)
        status = 1
    print(f"total {time.perf_counter() - t0:.1f} s")
    raise SystemExit(status)


if __name__ == "__main__":
    main()
