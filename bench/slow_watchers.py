"""taskerd's memory with slow event watchers: peak RSS with N never-read streams vs with none.

N tasks each print ``--mib`` MiB as fast as they can (``head -c``). The baseline phase runs them
with no watcher; the slow phase runs N more while N clients (a channel each) hold a
StreamResults(output=true) stream open on one task each and never read it. Both phases use one
daemon, baseline first. Prints the daemon's peak VmRSS in each and their ratio, then how the slow
streams end once read (a dropped watcher's stream ends ABORTED).

Run: ``.venv/bin/python bench/slow_watchers.py [--consumers N] [--mib M]``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchDaemon

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc

LIVE = (pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING)


def run_phase(d: BenchDaemon, stub: pb_grpc.TaskerStub, n: int, mib: int, slow: bool) -> tuple[
    int, float, list[tuple[grpc.Channel, grpc.Call]]
]:  # fmt: skip
    """Run ``n`` output tasks (gated until the streams are open, when ``slow``); return the
    peak RSS in KiB while they run, the seconds they took, and the open streams."""
    gate = d.dir / f"gate-{time.monotonic_ns()}"
    script = f"while [ ! -e {gate} ]; do sleep 0.005; done; head -c {mib}M /dev/zero"
    request = pb.SubmitRequest(tasks=[pb.TaskSpec(argv=[script], shell=True)] * n)
    ids = list(stub.Submit(request, timeout=10).ids)
    streams: list[tuple[grpc.Channel, grpc.Call]] = []
    if slow:
        for task_id in ids:
            channel = grpc.insecure_channel(d.target)
            call = pb_grpc.TaskerStub(channel).StreamResults(
                pb.StreamResultsRequest(ids=[task_id], output=True)
            )
            streams.append((channel, call))
        time.sleep(0.3)  # let the daemon subscribe them
    t0 = time.perf_counter()
    gate.touch()
    peak = d.rss_kib()
    left = set(ids)
    while left:
        peak = max(peak, d.rss_kib())
        left = {i for i in left if stub.Get(pb.GetRequest(id=i), timeout=10).state in LIVE}
        time.sleep(0.02)
    return peak, time.perf_counter() - t0, streams


def ending(call: grpc.Call, limit: float) -> str:
    """Read a stream for at most ``limit`` seconds; say how it ended and what it delivered."""
    got = 0
    stop = time.monotonic() + limit
    try:
        for event in call:
            got += len(event.output.data)
            if time.monotonic() > stop:
                call.cancel()
                return f"still streaming after {got / 2**20:.1f} MiB (never dropped)"
    except grpc.RpcError as err:
        return f"{err.code().name} after {got / 2**20:.1f} MiB: {err.details()}"
    return f"OK after {got / 2**20:.1f} MiB (every byte)"


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--consumers", type=int, default=3, help="slow streams (and tasks)")
    parser.add_argument("--mib", type=int, default=700, help="output of each task, MiB")
    opts = parser.parse_args()
    n, mib = opts.consumers, opts.mib
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, BenchDaemon(Path(tmp), workers=n) as d:
        stub = d.start()
        idle = d.rss_kib()
        base, base_s, _ = run_phase(d, stub, n, mib, slow=False)
        peak, slow_s, streams = run_phase(d, stub, n, mib, slow=True)
        after = d.rss_kib()
        print(f"{n} tasks x {mib} MiB of output; daemon idle RSS {idle / 1024:.0f} MiB")
        print(f"  baseline, no watcher:        peak RSS {base / 1024:7.0f} MiB ({base_s:.1f} s)")
        print(f"  {n} never-read streams:       peak RSS {peak / 1024:7.0f} MiB ({slow_s:.1f} s), "
              f"{after / 1024:.0f} MiB after the tasks ended")  # fmt: skip
        print(f"  ratio slow/baseline: {peak / base:.2f}x")
        for i, (channel, call) in enumerate(streams):
            print(f"  slow stream {i + 1}: {ending(call, 3.0)}")
            channel.close()
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
