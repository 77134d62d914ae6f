"""Start-up cost of ``taskerctl submit`` and throughput of ``taskerctl submit --batch``.

Starts a private taskerd, then measures (interleaved, so machine noise hits both alike):

* the median wall time of 50 ``taskerctl submit -- true``;
* the median wall time of 50 runs of a minimal Python script that imports grpc and the stubs
  and makes one unary call (the floor for any Python gRPC client);
* ``tsp true`` beside them when task-spooler is installed;
* ``taskerctl submit --batch`` of 10,000 lines, in tasks/s.

Goal: submit <= 1.3x the minimal script. Usage: ``python bench/cli.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

MINIMAL = """\
import sys
import grpc
from tasker.v1 import tasker_pb2 as pb, tasker_pb2_grpc as pb_grpc
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    pb_grpc.TaskerStub(ch).Stats(pb.StatsRequest(), timeout=10)
"""


def start_daemon(tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    sock = tmp / "taskerd.sock"
    log = open(tmp / "taskerd.log", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [PY, "-m", "taskerd", "--socket", str(sock), "--state-dir", str(tmp / "state"),
         "--workers", "2", "--max-queue", "100000"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
    )  # fmt: skip
    log.close()
    from taskerctl import Client, DaemonUnavailable

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"taskerd exited {proc.returncode}: {(tmp / 'taskerd.log').read_text()}")
        try:
            with Client(sock, rpc_timeout=2) as c:
                c.stats()
            return proc, sock
        except DaemonUnavailable:
            time.sleep(0.05)
    proc.kill()
    sys.exit("taskerd did not start")


def wall(cmd: list[str], env: dict[str, str], stdin: bytes | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, input=stdin, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10_000)
    opts = parser.parse_args()
    exe = shutil.which("taskerctl", path=str(Path(PY).parent)) or ""
    submit = [exe] if exe else [PY, "-m", "taskerctl"]
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as d:
        tmp = Path(d)
        proc, sock = start_daemon(tmp)
        env = dict(os.environ, TASKER_SOCKET=str(sock))
        script = tmp / "minimal.py"
        script.write_text(MINIMAL)
        tsp = shutil.which("tsp")
        try:
            times: dict[str, list[float]] = {"submit": [], "minimal": [], "tsp": []}
            for _ in range(3):  # warm the page cache
                wall([*submit, "submit", "--", "true"], env)
                wall([PY, str(script), str(sock)], env)
            for _ in range(opts.runs):
                times["submit"].append(wall([*submit, "submit", "--", "true"], env))
                times["minimal"].append(wall([PY, str(script), str(sock)], env))
                if tsp:
                    times["tsp"].append(wall([tsp, "true"], env))
            sub = statistics.median(times["submit"])
            base = statistics.median(times["minimal"])
            print(f"taskerctl submit -- true    median {sub * 1000:7.1f} ms  ({opts.runs} runs)")
            print(f"minimal grpc client         median {base * 1000:7.1f} ms")
            if tsp:
                tsp_ms = statistics.median(times["tsp"]) * 1000
                print(f"tsp true                    median {tsp_ms:7.1f} ms")
            else:
                print("tsp true                    (tsp not installed)")
            ratio = sub / base
            verdict = "met" if ratio <= 1.3 else "NOT met"
            print(f"ratio submit/minimal        {ratio:.2f}x  (goal <= 1.30x: {verdict})")

            lines = b"true\n" * opts.batch
            t = wall([*submit, "submit", "--batch", "-"], env, stdin=lines)
            print(
                f"submit --batch of {opts.batch} lines  {t:.2f} s  = {opts.batch / t:,.0f} tasks/s"
            )
        finally:
            from taskerctl import Client

            try:
                with Client(sock) as c:
                    c.shutdown("kill")
                proc.wait(30)
            except Exception:
                proc.kill()


if __name__ == "__main__":
    main()
