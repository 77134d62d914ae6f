"""What remote access costs (issue 13): the same calls over the Unix socket and over a TCP
listener with TLS and a token, on one daemon, in the same run.

A daemon with 2 workers and a TLS listener on 127.0.0.1 (certificates made by ``openssl``, as
in the tests), and a ``submit`` token. Through the Python client, as users call it:

1. ``Stats`` one after the other (2,000; ``--quick``: 200): p50 and p99 latency, Unix vs TCP;
2. ``submit_many`` of 20,000 ``true`` specs in the client's 1,000-task requests (``--quick``:
   2,000) into a paused group: tasks accepted per second, Unix vs TCP;
3. 1,000 ``true`` tasks submitted and waited for (``submit_many`` + ``wait_many``), end to end
   (``--quick``: 200): tasks per second, Unix vs TCP.

The two sides alternate (A B A B), after one unrecorded round of each; the figure of each side
is its better round. Run: ``.venv/bin/python bench/remote.py [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BenchDaemon, Row, rate, sized_main, timed_sections  # noqa: E402
from taskerctl import Client, TaskState  # noqa: E402
from tests.daemon.test_prometheus import free_port  # noqa: E402
from tests.pki import make_pki, remote_config  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    stats: int
    accept: int
    e2e: int


FULL = Sizes(2_000, 20_000, 1_000)
QUICK = Sizes(200, 2_000, 200)


def best_of(ways: dict[str, Callable[[], float]], rounds: int = 2) -> dict[str, float]:
    """Each way's best figure (the lowest: seconds) over ``rounds``, alternated, after a warm-up."""
    best: dict[str, float] = {}
    for r in range(rounds + 1):
        for name, way in ways.items():
            took = way()
            if r:
                best[name] = min(best.get(name, took), took)
    return best


def measure(sizes: Sizes) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        (Path(tmp) / "pki").mkdir()
        pki = make_pki(Path(tmp) / "pki", {"bench": "admin"})
        port = free_port()
        config = remote_config(pki, port)
        with BenchDaemon(Path(tmp) / "d", workers=2, config=config) as d:
            d.start()
            unix = Client(d.socket)
            tcp = Client(address=f"127.0.0.1:{port}", tls_ca=pki.ca_pem, token=pki.tokens["bench"])
            sides = {"unix": unix, "tcp": tcp}
            unix.add_group("held", parallel=1)
            unix.pause(groups=["held"])
            p50: dict[str, float] = {}
            p99: dict[str, float] = {}

            def stats(c: Client, name: str) -> float:
                took = []
                for _ in range(sizes.stats):
                    t0 = time.perf_counter()
                    c.stats()
                    took.append(time.perf_counter() - t0)
                q = statistics.quantiles(took, n=100)
                p50[name] = min(p50.get(name, q[49]), q[49])
                p99[name] = min(p99.get(name, q[98]), q[98])
                return q[49]

            def accept(c: Client) -> float:
                t0 = time.perf_counter()
                handles = c.submit_many([["true"]] * sizes.accept, group="held")
                took = time.perf_counter() - t0
                c.cancel_many(group="held")
                assert len(handles) == sizes.accept
                return took

            def e2e(c: Client) -> float:
                t0 = time.perf_counter()
                handles = c.submit_many([["true"]] * sizes.e2e)
                results = c.wait_many([h.id for h in handles], timeout=300)
                assert {r.state for r in results} == {TaskState.SUCCEEDED}
                return time.perf_counter() - t0

            best_of({k: (lambda c=c, k=k: stats(c, k)) for k, c in sides.items()})
            acc = best_of({k: (lambda c=c: accept(c)) for k, c in sides.items()})
            run = best_of({k: (lambda c=c: e2e(c)) for k, c in sides.items()})
            for c in sides.values():
                c.close()
    return [
        Row("`Stats` p50 over TCP with TLS and a token", f"{p50['tcp'] * 1000:.2f} ms",
            f"Unix socket: {p50['unix'] * 1000:.2f} ms", p50["tcp"] / p50["unix"]),
        Row("  p99", f"{p99['tcp'] * 1000:.2f} ms", f"Unix socket: {p99['unix'] * 1000:.2f} ms",
            p99["tcp"] / p99["unix"]),
        Row(f"accept {sizes.accept:,} `true` in 1,000-task requests over TCP with TLS",
            rate(sizes.accept / acc["tcp"]), f"Unix socket: {rate(sizes.accept / acc['unix'])}",
            acc["unix"] / acc["tcp"]),
        Row(f"{sizes.e2e:,} `true` submitted and waited for over TCP with TLS",
            rate(sizes.e2e / run["tcp"]), f"Unix socket: {rate(sizes.e2e / run['unix'])}",
            run["unix"] / run["tcp"]),
    ]  # fmt: skip


def run(sizes: Sizes) -> list[Row]:
    return timed_sections([("remote access", lambda: measure(sizes))])


if __name__ == "__main__":
    sized_main(__doc__, run, FULL, QUICK, "fewer calls and tasks, for a smoke test")
