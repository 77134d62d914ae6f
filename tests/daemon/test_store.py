"""The journal (taskerd.store) on real SQLite files: round trips, filters, retention, group
commit and durability across a SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import taskerd.store as store_mod
from tasker.v1 import tasker_pb2 as pb
from taskerd.store import JournalOpenError, Store

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
ENV = {f"VAR_{i}": f"value-{i}-" + "x" * 50 for i in range(50)}  # ~3 KB, like a real client
Q, R = pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING
OK, FAIL, CANCELLED = pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED


def spec(*argv: str, **fields: object) -> pb.TaskSpec:
    return pb.TaskSpec(argv=list(argv) or ["true"], **fields)  # type: ignore[arg-type]


def count(path: Path, table: str) -> int:
    """Rows in a table, read through a separate plain sqlite3 connection."""
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def finish(s: Store, *ids: int, at: float, state: int = OK) -> None:
    for i in ids:
        await s.mark_finished(i, state=state, ended_at=at)


async def test_round_trip_and_env_dedup(store: Store, db: Path) -> None:
    full = spec(
        "echo",
        "hi",
        shell=True,
        env=ENV,
        cwd="/tmp",
        stdin=b"\x00input",
        priority=pb.PRIORITY_HIGH,
        once=True,
        max_retries=3,
        labels={"team": "a", "kind": "x"},
    )
    full.timeout.FromSeconds(5)
    other = spec("ls", env=ENV)
    bare = spec("true")
    a, b, c = await store.add([full, other, bare], now=T0)
    assert (a, b, c) == (1, 2, 3)
    assert count(db, "envs") == 1  # one row for the shared environment
    assert count(db, "stdins") == 1  # only the non-empty stdin
    assert count(db, "labels") == 2
    await store.add([spec("again", env=ENV)], now=T0)
    assert count(db, "envs") == 1

    got = await store.get(a)
    assert got is not None
    assert got.spec == full
    assert got.id == a and got.state == Q and got.attempts == 0
    assert got.queued_at.ToNanoseconds() == int(T0 * 1e9)
    assert not got.HasField("started_at") and not got.HasField("ended_at")
    assert not got.HasField("exit_code") and not got.HasField("signal")
    assert (await store.spec(a)) == full
    assert (await store.spec(b)) == other and (await store.spec(c)) == bare
    assert (await store.get(999)) is None and (await store.spec(999)) is None
    # light records: no env, no stdin, everything else
    light = (await store.list(limit=10))[-1]
    assert light.id == a and not light.spec.env and not light.spec.stdin
    assert light.spec.labels == full.labels and light.spec.max_retries == 3
    assert light.spec.timeout.seconds == 5
    # the spec column itself does not carry the environment
    with sqlite3.connect(db) as raw:
        blob = raw.execute("SELECT spec FROM tasks WHERE id = ?", (a,)).fetchone()[0]
    assert b"VAR_1" not in blob and len(blob) < 200


async def test_different_envs_are_kept_apart(store: Store, db: Path) -> None:
    ids = await store.add(
        [spec(env={"A": "1"}), spec(env={"A": "2"}), spec(env={"A": "1"})], now=T0
    )
    assert count(db, "envs") == 2
    specs = [await store.spec(i) for i in ids]
    envs = [s.env for s in specs if s is not None]
    assert [dict(e) for e in envs] == [{"A": "1"}, {"A": "2"}, {"A": "1"}]


async def test_ids_increase_and_are_never_reused(store: Store) -> None:
    assert (await store.last_id()) == 0
    first = await store.add([spec() for _ in range(5)], now=T0)
    assert first == [1, 2, 3, 4, 5]
    await finish(store, *first, at=T0 + 1)
    assert await store.clean(now=T0 + 2) == 5
    assert (await store.list()) == []
    assert (await store.last_id()) == 5
    assert await store.add([spec(), spec()], now=T0) == [6, 7]
    assert await store.add([], now=T0) == []
    assert (await store.last_id()) == 7


async def test_started_and_finished(store: Store, db: Path) -> None:
    (i,) = await store.add([spec()], now=T0)
    store.mark_started(i, attempt=1, pid=4242, worker=3, started_at=T0 + 2)
    await store.mark_finished(
        i,
        state=FAIL,
        ended_at=T0 + 5.5,
        error="exited 7",
        exit_code=7,
        stdout=b"out",
        stderr=b"err" * 10,
        stderr_truncated=True,
    )
    t = await store.get(i)
    assert t is not None
    assert (t.state, t.attempts, t.pid, t.worker, t.exit_code) == (FAIL, 1, 4242, 3, 7)
    assert not t.HasField("signal") and t.error == "exited 7"
    assert t.started_at.ToNanoseconds() == int((T0 + 2) * 1e9)
    assert t.ended_at.ToNanoseconds() == int((T0 + 5.5) * 1e9)
    assert t.wait.ToNanoseconds() == 2_000_000_000
    assert t.run.ToNanoseconds() == 3_500_000_000
    assert t.stdout == b"" and not t.stderr_truncated  # output only when asked
    o = await store.get(i, output=True)
    assert o is not None
    assert (o.stdout, o.stderr, o.stdout_truncated, o.stderr_truncated) == (
        b"out",
        b"err" * 10,
        False,
        True,
    )
    assert count(db, "outputs") == 1


async def test_finished_without_start_and_signal(store: Store) -> None:
    a, b = await store.add([spec(), spec()], now=T0)
    await store.mark_finished(a, state=CANCELLED, ended_at=T0 + 4, error="cancelled")
    await store.mark_finished(
        b, state=FAIL, ended_at=T0 + 9, signal=9, attempts=2, started_at=T0 + 8
    )
    ta, tb = (await store.get(a)), (await store.get(b))
    assert ta is not None and tb is not None
    assert ta.wait.ToNanoseconds() == 4_000_000_000 and not ta.HasField("run")
    assert not ta.HasField("started_at") and ta.attempts == 0
    assert tb.signal == 9 and not tb.HasField("exit_code") and tb.attempts == 2
    assert tb.run.ToNanoseconds() == 1_000_000_000 and tb.wait.ToNanoseconds() == 8_000_000_000
    with pytest.raises(ValueError, match="terminal"):
        await store.mark_finished(a, state=R, ended_at=T0)


async def test_requeue_and_finished_many(store: Store) -> None:
    a, b, c = await store.add([spec(), spec(), spec()], now=T0)
    store.mark_started(a, attempt=1, pid=10, worker=0, started_at=T0 + 1)
    store.mark_started(b, attempt=1, pid=11, worker=1, started_at=T0 + 1)
    await store.requeue([a, b], attempts=[1, 2])
    ta, tb = (await store.get(a)), (await store.get(b))
    assert ta is not None and tb is not None
    assert (ta.state, ta.attempts, tb.state, tb.attempts) == (Q, 1, Q, 2)
    await store.mark_finished(c, state=OK, ended_at=T0 + 2, exit_code=0)
    await store.mark_finished_many([a, b, c], state=CANCELLED, ended_at=T0 + 3, error="shutdown")
    states = {t.id: (t.state, t.error) for t in (await store.list())}
    assert states == {a: (CANCELLED, "shutdown"), b: (CANCELLED, "shutdown"), c: (OK, "")}
    with pytest.raises(ValueError):
        await store.requeue([a], attempts=[1, 2])


async def test_list_filters_and_paging(store: Store) -> None:
    ids = await store.add(
        [
            spec(str(i), env=ENV, stdin=b"x", labels={"par": str(i % 2), "tri": str(i % 3)})
            for i in range(30)
        ],
        now=T0,
    )
    for i in ids[:10]:
        await store.mark_finished(i, state=OK, ended_at=T0 + 1, stdout=b"out")
    for i in ids[10:15]:
        store.mark_started(i, attempt=1, pid=i, worker=0, started_at=T0 + 1)
    await store.flush()  # the fire-and-forget starts are committed

    everything = await store.list(limit=1000)
    assert [t.id for t in everything] == ids[::-1]  # newest first
    assert all(not t.stdout and not t.spec.env and not t.spec.stdin for t in everything)

    assert [t.id for t in (await store.list(states=[R]))] == ids[14:9:-1]
    assert [t.id for t in (await store.list(states=[OK, R], limit=7))] == ids[14:7:-1]
    assert (await store.list(states=[pb.TASK_STATE_LOST])) == []

    even = [t.id for t in (await store.list(labels={"par": "0"}))]
    assert even == [i for i in ids[::-1] if (i - 1) % 2 == 0]
    both = [t.id for t in (await store.list(labels={"par": "0", "tri": "0"}))]
    assert both == [i for i in ids[::-1] if (i - 1) % 6 == 0]
    assert (await store.list(labels={"par": "0", "tri": "nope"})) == []
    mixed = [t.id for t in (await store.list(labels={"par": "1"}, states=[OK]))]
    assert mixed == [i for i in ids[:10][::-1] if (i - 1) % 2 == 1]

    # paging: before_id walks down without gaps or repeats, with and without filters
    for kwargs in ({}, {"states": [Q]}, {"labels": {"tri": "1"}}):
        pages: list[int] = []
        before = None
        while True:
            page = await store.list(limit=4, before_id=before, **kwargs)
            if not page:
                break
            assert len(page) <= 4
            pages += [t.id for t in page]
            before = page[-1].id
        assert pages == [t.id for t in (await store.list(limit=1000, **kwargs))]
        assert len(pages) == len(set(pages)) > 4
    assert (await store.list(limit=0)) == []


async def test_unfinished_in_id_order(store: Store) -> None:
    ids = await store.add([spec() for _ in range(6)], now=T0)
    store.mark_started(ids[4], attempt=1, pid=1, worker=0, started_at=T0)
    store.mark_started(ids[1], attempt=1, pid=2, worker=1, started_at=T0)
    await finish(store, ids[2], ids[5], at=T0 + 1)
    live = await store.unfinished()
    assert [t.id for t in live] == [ids[0], ids[1], ids[3], ids[4]]
    assert [t.state for t in live] == [Q, R, Q, R]
    assert all(not pb.TaskSpec.FromString(t.spec).env for t in live)
    assert [t.id for t in await store.unfinished(after=ids[1], limit=1)] == [ids[3]]


async def test_clean_by_age_removes_everything_attached(store: Store, db: Path) -> None:
    old = await store.add([spec(env={"OLD": "1"}, stdin=b"a", labels={"k": "v"})], now=T0)
    new = await store.add([spec(env=ENV, stdin=b"b", labels={"k": "v"})], now=T0)
    live = await store.add([spec(env=ENV)], now=T0)
    await store.mark_finished(old[0], state=OK, ended_at=T0 + 10, stdout=b"x")
    await store.mark_finished(new[0], state=FAIL, ended_at=T0 + 100, stdout=b"y")
    assert await store.clean(older_than=60, now=T0 + 69) == 0
    assert await store.clean(older_than=60, now=T0 + 70) == 1  # ended exactly 60 s ago
    assert (await store.get(old[0])) is None and (await store.get(new[0])) is not None
    assert (count(db, "labels"), count(db, "outputs"), count(db, "stdins")) == (1, 1, 1)
    assert count(db, "envs") == 1  # {"OLD": "1"} went with its only task; ENV is still used
    assert await store.clean(now=T0 + 100) == 1
    assert count(db, "envs") == 1  # still referenced by the live task
    assert [t.id for t in (await store.list())] == live
    assert (count(db, "labels"), count(db, "outputs"), count(db, "stdins")) == (0, 0, 0)
    # an env deleted by clean is inserted again when it comes back
    again = await store.add([spec(env={"OLD": "1"})], now=T0)
    got = await store.spec(again[0])
    assert got is not None and dict(got.env) == {"OLD": "1"}


async def test_prune_bounds(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "DELETE_CHUNK", 7)  # exercise the batched loop
    ids = await store.add([spec(labels={"n": str(i)}) for i in range(60)], now=T0)
    for n, i in enumerate(ids[:50]):
        await store.mark_finished(i, state=OK, ended_at=T0 + n)
    assert await store.prune(keep_finished=None, keep_for=None, now=T0 + 1000) == 0
    # none older than 20 s at T0 + 60: ended_at <= T0 + 40 goes (41 tasks)
    assert await store.prune(keep_finished=None, keep_for=20, now=T0 + 60) == 41
    assert len(await store.list(states=[OK], limit=1000)) == 9
    assert await store.prune(keep_finished=4, keep_for=None, now=T0 + 60) == 5
    kept = [t.id for t in (await store.list(states=[OK], limit=1000))]
    assert kept == ids[46:50][::-1]  # the newest by id
    assert await store.prune(keep_finished=4, keep_for=None, now=T0 + 60) == 0
    assert await store.prune(keep_finished=0, keep_for=3600, now=T0 + 60) == 4
    assert len(await store.unfinished()) == 10  # live tasks are never pruned
    with pytest.raises(ValueError):
        await store.prune(keep_finished=-1, keep_for=None, now=T0)


async def test_disk_use_shrinks_after_clean(store: Store, db: Path) -> None:
    wal = db.with_name(db.name + "-wal")
    ids = await store.add([spec(str(i)) for i in range(400)], now=T0)
    for i in ids:
        await store.mark_finished(i, state=OK, ended_at=T0, stdout=os.urandom(20_000))
    big = db.stat().st_size + wal.stat().st_size
    assert big > 8_000_000
    assert await store.clean(now=T0 + 1) == 400
    small = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert small < big / 10, (big, small)


async def test_close_flushes_and_reopen(db: Path) -> None:
    s = await Store.open(db, sync="full")
    ids = await s.add([spec("a", env=ENV), spec("b")], now=T0)
    s.mark_started(ids[0], attempt=1, pid=99, worker=0, started_at=T0 + 1)  # not awaited
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(RuntimeError):
        await s.add([spec()], now=T0)
    with pytest.raises(RuntimeError):
        await s.get(ids[0])
    s2 = await Store.open(db)
    try:
        t = await s2.get(ids[0])
        assert t is not None and t.state == R and t.pid == 99 and dict(t.spec.env) == ENV
        assert [u.id for u in (await s2.unfinished())] == ids
        assert await s2.add([spec()], now=T0) == [3]
        await s2.mark_finished_many([1, 2, 3], state=CANCELLED, ended_at=T0, error="x")
        assert await s2.clean(now=T0) == 3
    finally:
        await s2.close()
    s3 = await Store.open(db)
    try:  # ids are not reused after a clean, across a restart either
        assert (await s3.last_id()) == 3 and await s3.add([spec()], now=T0) == [4]
    finally:
        await s3.close()


async def test_newer_schema_is_refused(db: Path) -> None:
    await (await Store.open(db)).close()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(JournalOpenError, match="newer"):
        await Store.open(db)
    with pytest.raises(ValueError, match="sync"):
        await Store.open(db, sync="sometimes")  # type: ignore[arg-type]


async def test_concurrent_adds_share_commits(store: Store) -> None:
    before = store.commits
    results = await asyncio.gather(
        *(store.add([spec(str(n), env=ENV)], now=T0) for n in range(200))
    )
    ids = [r[0] for r in results]
    assert sorted(ids) == list(range(1, 201))
    commits = store.commits - before
    assert 1 <= commits <= 50, commits  # group commit: 200 adds, far fewer transactions
    for n, i in enumerate(ids):  # each caller got the id of its own task
        got = await store.spec(i)
        assert got is not None and got.argv == [str(n)]


async def test_a_failing_write_does_not_sink_its_batch(store: Store) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO tasks (id, state) VALUES (1, 1)")  # NOT NULL constraints

    adds = [store.add([spec(str(n))], now=T0) for n in range(20)]
    results = await asyncio.gather(
        *adds[:10], store._write(bad), *adds[10:], return_exceptions=True
    )
    assert isinstance(results[10], sqlite3.IntegrityError)
    oks = [r for n, r in enumerate(results) if n != 10]
    assert all(isinstance(r, list) for r in oks)
    assert len(await store.list(limit=100)) == 20


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from tasker.v1 import tasker_pb2 as pb
    from taskerd.store import JournalOpenError, Store

    async def main() -> None:
        store = await Store.open(Path(sys.argv[1]), sync=sys.argv[2])
        n = 0
        while True:
            specs = [pb.TaskSpec(argv=["t", str(n + k)], env={"E": "1"}) for k in range(1 + n % 3)]
            ids = await store.add(specs, now=time.time())
            print(" ".join(map(str, ids)), flush=True)
            n += len(specs)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_committed_adds_survive_sigkill(db: Path, sync: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), sync],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    told: list[int] = []
    try:
        assert child.stdout is not None
        while len(told) < 300:
            line = child.stdout.readline()
            assert line, f"child exited {child.poll()}"
            told += [int(x) for x in line.split()]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)

    async def check() -> None:
        s = await Store.open(db)
        try:
            for n, i in enumerate(told):
                got = await s.spec(i)
                assert got is not None, f"task {i} was acknowledged but is gone"
                assert list(got.argv) == ["t", str(n)] and dict(got.env) == {"E": "1"}
            assert (await s.last_id()) >= told[-1]
        finally:
            await s.close()

    asyncio.run(check())
