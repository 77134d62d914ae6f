"""This machine's raw SQLite committed-insert rate, the floor to compare the journal against.

``raw_insert_rate(path, sync, rows_per_txn)`` is what the daemon benchmark imports. Run as a script,
it prints the raw rate next to ``Store.add`` throughput (64 concurrent 1-row callers, and 1,000-row
batches) for both sync modes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

Sync = Literal["normal", "full"]
SYNCS: tuple[Sync, ...] = ("normal", "full")

_ROW = os.urandom(120)  # about the size of a task's spec without env


def _fresh(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def raw_insert_rate(path: Path, sync: Sync, rows_per_txn: int, *, seconds: float = 1.0) -> float:
    """Rows per second committed by plain stdlib sqlite3 (WAL, one connection, ``rows_per_txn``
    rows per transaction, executemany) into a fresh database at ``path`` during ``seconds``."""
    _fresh(path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {sync.upper()}")
        db.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, state INTEGER, "
            "queued_at REAL, spec BLOB)"
        )
        rows = [(1, time.time(), _ROW)] * rows_per_txn
        done = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO t (state, queued_at, spec) VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
            done += rows_per_txn
        return done / elapsed
    finally:
        db.close()
        _fresh(path)


async def store_add_rate(
    path: Path, sync: Sync, *, callers: int, rows_per_call: int, seconds: float = 1.0
) -> tuple[float, float]:
    """(rows per second, rows per commit) of ``Store.add`` with ``callers`` concurrent callers
    each adding ``rows_per_call`` tasks (with a 3 KB env) per call, into a fresh journal."""
    from tasker.v1 import tasker_pb2 as pb
    from taskerd.store import Store

    _fresh(path)
    env = {f"VAR_{i}": f"value-{i}-" + "x" * 50 for i in range(50)}
    store = await Store.open(path, sync=sync)
    try:
        specs = [pb.TaskSpec(argv=["echo", str(n)], env=env) for n in range(rows_per_call)]
        stop = time.perf_counter() + seconds
        done = 0

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await store.add(specs, now=time.time())
                done += rows_per_call

        commits = store.commits
        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - start
        return done / elapsed, done / max(1, store.commits - commits)
    finally:
        await store.close()
        _fresh(path)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        print(f"{'sync':<7}{'workload':<28}{'raw sqlite3 rows/s':>20}{'Store.add rows/s':>18}"
              f"{'rows/commit':>13}")  # fmt: skip
        workloads = [("64 callers x 1 row", 64, 1), ("1 caller x 1,000 rows", 1, 1000)]
        for sync in SYNCS:
            for label, callers, rows in workloads:
                raw = raw_insert_rate(path, sync, rows)
                rate, per_commit = asyncio.run(
                    store_add_rate(path, sync, callers=callers, rows_per_call=rows)
                )
                print(f"{sync:<7}{label:<28}{raw:>20,.0f}{rate:>18,.0f}{per_commit:>13,.0f}")


if __name__ == "__main__":
    main()
