"""Start-up cost of ``taskerctl submit``, throughput of ``submit --batch``, and ``taskerctl wait``
on many tasks.

Starts a private taskerd, then measures (interleaved, so machine noise hits both alike):

* the median wall time of 50 ``taskerctl submit -- true``;
* the median wall time of 50 runs of a minimal Python script that imports grpc and the stubs
  and makes one unary call (the floor for any Python gRPC client);
* ``tsp true`` beside them when task-spooler is installed;
* ``taskerctl submit --batch`` of 10,000 lines, in tasks/s;
* ``taskerctl wait`` on 10,000 finished ids, beside its baseline in the same run: a minimal
  script that reads one raw StreamResults stream of the same ids (``finished_only``), and, in
  process, ``Client.wait_many`` beside that raw stream;
* the user path: ``seq 900 | taskerctl submit --batch -`` + ``taskerctl wait`` against one
  ``tsp -n true`` per job + a wait, both with 2 slots (goal >= 1.5x);
* ``taskerctl wait --all`` with 100,000 live tasks (a daemon of one worker that a gate task holds,
  the tasks ending TIMED_OUT one after the other as their ``queue_timeout`` passes): its time,
  and whether it reported every task.

Goals: submit <= 1.3x the minimal script; ``wait`` on 10,000 finished ids < 0.5 s; ``wait --all``
correct at 100,000 live tasks. Usage: ``python bench/cli.py [--runs N] [--wait-ids N] [--live N]``
(``--live 0`` skips the last part).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PY, BenchDaemon, verdict

from tasker.v1 import tasker_pb2 as pb
from tasker.v1 import tasker_pb2_grpc as pb_grpc
from taskerctl import Client

MINIMAL = """\
import sys
import grpc
from tasker.v1 import tasker_pb2 as pb, tasker_pb2_grpc as pb_grpc
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    pb_grpc.TaskerStub(ch).Stats(pb.StatsRequest(), timeout=10)
"""

#: The floor of ``taskerctl wait`` on finished ids: one raw stream, nothing done with its events.
RAW_STREAM = """\
import sys
import grpc
from tasker.v1 import tasker_pb2 as pb, tasker_pb2_grpc as pb_grpc
ids = [int(i) for i in open(sys.argv[2]).read().split()]
options = [("grpc.max_receive_message_length", 64 << 20)]
with grpc.insecure_channel("unix:" + sys.argv[1], options=options) as ch:
    request = pb.StreamResultsRequest(ids=ids, finished_only=True)
    n = sum(1 for _ in pb_grpc.TaskerStub(ch).StreamResults(request))
assert n == len(ids), n
"""

#: Finished tasks are kept, so that the waits find them all.
CONFIG = "keep_finished = 1000000\n"


def wall(cmd: list[str], stdin: bytes | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def bench_submit(taskerctl: list[str], sock: Path, tmp: Path, runs: int, batch: int) -> None:
    script = tmp / "minimal.py"
    script.write_text(MINIMAL)
    tsp = shutil.which("tsp")
    times: dict[str, list[float]] = {"submit": [], "minimal": [], "tsp": []}
    for _ in range(3):  # warm the page cache
        wall([*taskerctl, "submit", "--", "true"])
        wall([PY, str(script), str(sock)])
    for _ in range(runs):
        times["submit"].append(wall([*taskerctl, "submit", "--", "true"]))
        times["minimal"].append(wall([PY, str(script), str(sock)]))
        if tsp:
            times["tsp"].append(wall([tsp, "true"]))
    sub = statistics.median(times["submit"])
    base = statistics.median(times["minimal"])
    print(f"taskerctl submit -- true    median {sub * 1000:7.1f} ms  ({runs} runs)")
    print(f"minimal grpc client         median {base * 1000:7.1f} ms")
    if tsp:
        print(
            f"tsp true                    median {statistics.median(times['tsp']) * 1000:7.1f} ms"
        )
    else:
        print("tsp true                    (tsp not installed)")
    ratio = sub / base
    print(f"ratio submit/minimal        {ratio:.2f}x  (goal <= 1.30x: {verdict(ratio <= 1.3)})")
    t = wall([*taskerctl, "submit", "--batch", "-"], stdin=b"true\n" * batch)
    print(f"submit --batch of {batch} lines  {t:.2f} s  = {batch / t:,.0f} tasks/s")


def bench_wait(
    taskerctl: list[str], daemon: BenchDaemon, stub: pb_grpc.TaskerStub, runs: int, n: int
) -> None:
    """``taskerctl wait`` on ``n`` finished ids, and its floor: one raw stream of them."""
    sock, tmp = daemon.socket, daemon.dir
    with Client(sock) as c:
        # As `taskerctl submit --batch` sends them: with the caller's environment.
        ids = [h.id for h in c.submit_many(["true"] * n, batch_size=10_000)]
        c.wait_many(ids)
    id_file = tmp / "ids.txt"
    id_file.write_text(" ".join(map(str, ids)))
    raw = tmp / "raw_stream.py"
    raw.write_text(RAW_STREAM)
    cli = [*taskerctl, "wait", *map(str, ids)]
    times: dict[str, list[float]] = {"cli": [], "raw": [], "wait_many": [], "raw_in": []}
    wall(cli)  # warm up
    request = pb.StreamResultsRequest(ids=ids, finished_only=True)
    with Client(sock) as c:
        for _ in range(runs):
            times["cli"].append(wall(cli))
            times["raw"].append(wall([PY, str(raw), str(sock), str(id_file)]))
            t0 = time.perf_counter()
            assert len(c.wait_many(ids)) == n
            times["wait_many"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert sum(1 for _ in stub.StreamResults(request)) == n
            times["raw_in"].append(time.perf_counter() - t0)
    size = stub.Get(pb.GetRequest(id=ids[0])).ByteSize()
    cli_s, raw_s = statistics.median(times["cli"]), statistics.median(times["raw"])
    wm_s, raw_in_s = statistics.median(times["wait_many"]), statistics.median(times["raw_in"])
    print(f"taskerctl wait, {n:,} finished ids     median {cli_s:6.2f} s  ({runs} runs)")
    print(f"baseline: one raw stream (a script)  median {raw_s:6.2f} s  = {cli_s / raw_s:.2f}x")
    print(f"in process: Client.wait_many         median {wm_s:6.2f} s")
    print(
        f"in process: the raw stream           median {raw_in_s:6.2f} s  = {wm_s / raw_in_s:.2f}x"
    )
    print(f"(each finished event carries a {size:,}-byte task record)")
    print(f"goal: taskerctl wait < 0.5 s: {verdict(cli_s < 0.5)}")


def bench_wait_all(taskerctl: list[str], tmp: Path, n: int, rate: float = 3000.0) -> None:
    """``taskerctl wait --all`` with ``n`` live tasks that end one after the other."""
    with BenchDaemon(tmp / "live", workers=1, max_queue=n + 10, config=CONFIG) as d:
        d.start()
        base = 5.0 + n / 20_000  # the submission of n tasks ends well before the first ends
        with Client(d.socket) as c:
            gate = c.submit(["sleep", "600"], timeout=base + n / rate + 2.0)
            while c.get(gate.id).state.name != "RUNNING":
                time.sleep(0.02)
            specs = ({"cmd": "true", "queue_timeout": base + i / rate} for i in range(n))
            ids = [gate.id, *(h.id for h in c.submit_many(specs, batch_size=10_000, env={}))]
        out = tmp / "wait-all.json"
        env = dict(os.environ, TASKER_SOCKET=str(d.socket))
        t0 = time.perf_counter()
        with out.open("wb") as sink:
            code = subprocess.run(
                [*taskerctl, "--json", "wait", "--all"], stdout=sink, stderr=subprocess.PIPE,
                env=env,
            ).returncode  # fmt: skip
        took = time.perf_counter() - t0
        try:
            reported = [r["id"] for r in json.loads(out.read_bytes())]
        except ValueError:
            reported = []
        ok = reported == ids
        print(
            f"taskerctl wait --all, {n:,} live tasks  {took:6.1f} s (they end over "
            f"{n / rate:.0f} s), exit {code}, reported {len(reported):,} of {len(ids):,}"
        )
        print(f"goal: wait --all correct at {n:,} live tasks: {verdict(ok)}")


def bench_user_path(taskerctl: list[str], tmp: Path, n: int = 900, slots: int = 2) -> None:
    """The path users take, against task-spooler's, both with ``slots`` slots: ``n`` ``true``
    jobs as ``seq N | taskerctl submit --batch -`` then ``taskerctl wait IDS``, against one
    ``tsp -n true`` per job then a wait for the last jobs (no output files). Goal: >= 1.5x."""
    env = dict(os.environ)
    with BenchDaemon(tmp / "user-path", workers=slots, config=CONFIG) as daemon:
        daemon.start()
        env["TASKER_SOCKET"] = str(daemon.socket)
        t0 = time.perf_counter()
        out = subprocess.run([*taskerctl, "submit", "--batch", "-"], input=b"true\n" * n,
                             env=env, capture_output=True, check=True).stdout  # fmt: skip
        ids = out.decode().split()
        subprocess.run([*taskerctl, "wait", *ids], env=env, capture_output=True, check=True)
        ours = n / (time.perf_counter() - t0)
    tsp = shutil.which("tsp")
    if tsp is None or len(ids) != n:
        print(f"user path: {n} true, {slots} slots, batch + wait: {ours:,.0f} jobs/s "
              f"(task-spooler not installed; {len(ids)} ids)")  # fmt: skip
        return
    base = tmp / "user-path-tsp"
    base.mkdir()
    ts_env = dict(os.environ, TS_SOCKET=str(base / "sock"), TMPDIR=str(base))

    def ts(*args: str) -> str:
        done = subprocess.run([tsp, *args], env=ts_env, capture_output=True, check=True)
        return done.stdout.decode().strip()

    ts("-S", str(slots))
    try:
        t0 = time.perf_counter()
        jobs = [ts("-n", "true") for _ in range(n)]
        for job in jobs[-slots:]:  # FIFO: once the last `slots` jobs are done, all are
            subprocess.run([tsp, "-w", job], env=ts_env, capture_output=True, check=False)
        theirs = n / (time.perf_counter() - t0)
    finally:
        subprocess.run([tsp, "-K"], env=ts_env, capture_output=True, check=False)
    ratio = ours / theirs
    print(f"user path: {n} true, {slots} slots: submit --batch + wait {ours:,.0f} jobs/s, "
          f"tsp -n true x{n} + wait {theirs:,.0f} jobs/s = {ratio:.2f}x "
          f"(goal >= 1.5x: {verdict(ratio >= 1.5)})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--wait-ids", type=int, default=10_000)
    parser.add_argument("--live", type=int, default=100_000)
    opts = parser.parse_args()
    exe = shutil.which("taskerctl", path=str(Path(PY).parent))
    taskerctl = [exe] if exe else [PY, "-m", "taskerctl"]
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as d:
        tmp = Path(d)
        with BenchDaemon(tmp / "main", workers=2, max_queue=100_000, config=CONFIG) as daemon:
            stub = daemon.start()
            os.environ["TASKER_SOCKET"] = str(daemon.socket)  # for every taskerctl run
            bench_submit(taskerctl, daemon.socket, tmp, opts.runs, opts.batch)
            bench_wait(taskerctl, daemon, stub, max(3, opts.runs // 10), opts.wait_ids)
        bench_user_path(taskerctl, tmp)
        if opts.live:
            bench_wait_all(taskerctl, tmp, opts.live)


if __name__ == "__main__":
    main()
