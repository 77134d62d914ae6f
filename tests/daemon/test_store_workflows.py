"""The journal's part of workflows (issue 12), on real SQLite files: schema v4 and the migrations
from v2 and v3, dependencies, WAITING and SCHEDULED tasks, Restart and Edit, schedules, and
retention that keeps what a waiting task depends on."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import taskerd.store as store_mod
from tasker.v1 import tasker_pb2 as pb
from taskerd.store import SCHEMA_VERSION, UNFINISHED_STATES, JournalOpenError, ScheduleRow, Store

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "data" / "journal-v2.sqlite3"
T0 = 1_700_000_000.0
Q, R, STASHED = pb.TASK_STATE_QUEUED, pb.TASK_STATE_RUNNING, pb.TASK_STATE_STASHED
WAITING, SCHEDULED = pb.TASK_STATE_WAITING, pb.TASK_STATE_SCHEDULED
OK, FAIL, CANCELLED = pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED


def spec(*argv: str, **fields: object) -> pb.TaskSpec:
    return pb.TaskSpec(argv=list(argv) or ["true"], **fields)  # type: ignore[arg-type]


def at(seconds: float, *argv: str, **fields: object) -> pb.TaskSpec:
    """A spec with start_at."""
    s = spec(*argv, **fields)
    s.start_at.FromNanoseconds(round(seconds * 1e9))
    return s


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows read through a separate plain sqlite3 connection (what is committed)."""
    with sqlite3.connect(path) as db:
        return db.execute(sql, params).fetchall()


def shape(path: Path) -> tuple[list[str], object, object]:
    with sqlite3.connect(path) as c:
        tables = [
            r[0]
            for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith("sqlite_stat")  # PRAGMA optimize's, when it chose to
        ]
        columns = {t: c.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
        indexes = {
            r[0]: (r[1], c.execute(f"PRAGMA index_info({r[0]})").fetchall())
            for r in c.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
        }
    return sorted(tables), columns, indexes


def make_v3(path: Path) -> None:
    """A journal as taskerd wrote it at schema v3: 1 succeeded, 1 stashed (enqueue planned),
    1 queued in group gpu, the group."""
    with sqlite3.connect(path, isolation_level=None) as c:
        c.execute("PRAGMA auto_vacuum = INCREMENTAL")
        c.executescript(
            store_mod._SCHEMA + store_mod._MIGRATIONS[2] + store_mod._MIGRATIONS[3]
            + "PRAGMA user_version = 3;"
        )  # fmt: skip
        rows = [
            (OK, 2, T0, 0, spec("done").SerializeToString(), "default", None, T0 + 1),
            (STASHED, 2, T0, 0, spec("st").SerializeToString(), "default", T0 + 60, None),
            (Q, 3, T0, 1, spec("q", group="gpu").SerializeToString(), "gpu", None, None),
        ]
        c.executemany(
            "INSERT INTO tasks (state, priority, queued_at, once, spec, grp, enqueue_at, "
            "ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        c.execute("INSERT INTO groups VALUES ('gpu', 2, 4, 1, NULL)")
        c.execute("PRAGMA journal_mode = WAL")


# ---- schema ----------------------------------------------------------------------------------


async def test_v2_journal_migrates_to_v4(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    shutil.copy(FIXTURE, path)
    assert raw(path, "PRAGMA user_version") == [(2,)]
    s = await Store.open(path)
    try:
        assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(SCHEMA_VERSION,)]
        rows = [(u.id, u.state, u.start_at, u.restarted_from, u.schedule_id)
                for u in await s.unfinished()]  # fmt: skip
        assert rows == [(5, R, None, 0, 0), (6, Q, None, 0, 0), (7, Q, None, 0, 0),
                        (9, Q, None, 0, 0)]  # fmt: skip
        first = await s.get(1, output=True)
        assert first is not None and first.stdout == b"hello\n" and first.restarted_from == 0
        assert list(first.spec.argv) == ["echo", "hello"] and first.schedule_id == 0
        assert await s.deps_of(range(1, 10)) == {} and await s.schedules() == []
        assert await s.failed_ids(10) == [2]
        # The migrated journal takes the new writes: a task waiting on 1 (finished) and 9.
        (new,) = await s.queue_add([spec("w")], now=T0, states=[WAITING], deps=[[1, 9]])
        assert new == 10 and await s.deps_of([10]) == {10: [1, 9]}
        assert await s.dependents_waiting(range(1, 11)) == {1, 9}
        assert await s.remove([1, 2]) == 1  # 1 is kept for 10
    finally:
        await s.close()
    assert raw(path, "PRAGMA integrity_check") == [("ok",)]


async def test_v3_journal_migrates_to_v4(tmp_path: Path) -> None:
    v3, fresh = tmp_path / "v3.db", tmp_path / "fresh.db"
    make_v3(v3)
    await (await Store.open(fresh)).close()
    s = await Store.open(v3)
    try:
        assert raw(v3, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        got = [(u.id, u.state, u.group, u.enqueue_at, u.start_at) for u in await s.unfinished()]
        assert got == [(2, STASHED, "default", T0 + 60, None), (3, Q, "gpu", None, None)]
        assert [g.name for g in await s.groups()] == ["gpu"]
        done = await s.get(1)
        assert done is not None and done.state == OK and done.restarted_from == 0
        ids = await s.queue_add([spec("r")], now=T0, restarted_from=[1], states=[SCHEDULED])
        assert ids == [4] and (await s.get(4)).restarted_from == 1  # type: ignore[union-attr]
    finally:
        await s.close()
    assert shape(v3) == shape(fresh)
    assert {"deps", "schedules"} <= set(shape(fresh)[0])
    assert raw(v3, "PRAGMA integrity_check") == [("ok",)]


async def test_v4_journal_without_deps_is_refused(db: Path) -> None:
    await (await Store.open(db)).close()
    with sqlite3.connect(db) as c:
        c.execute("DROP TABLE deps")
    with pytest.raises(JournalOpenError, match="not a taskerd journal"):
        await Store.open(db)


def test_new_states_are_unfinished() -> None:
    assert {WAITING, SCHEDULED} <= UNFINISHED_STATES
    assert not {WAITING, SCHEDULED} & store_mod.TERMINAL_STATES


# ---- queue_add -------------------------------------------------------------------------------


async def test_states_start_at_origin_and_schedule(store: Store, db: Path) -> None:
    specs = [spec("q"), spec("s"), spec("w"), at(T0 + 30.25, "sch", env={"E": "1"}, stdin=b"in")]
    ids = await store.queue_add(
        specs, now=T0, states=[Q, STASHED, WAITING, SCHEDULED], restarted_from=[0, 0, 7, 0],
        schedule_id=3,
    )  # fmt: skip
    assert ids == [1, 2, 3, 4]
    got = {u.id: u for u in await store.unfinished()}
    assert {i: u.state for i, u in got.items()} == {1: Q, 2: STASHED, 3: WAITING, 4: SCHEDULED}
    assert got[4].start_at == pytest.approx(T0 + 30.25) and got[1].start_at is None
    assert got[3].restarted_from == 7 and {u.schedule_id for u in got.values()} == {3}
    rec = await store.get(4)
    assert rec is not None and rec.spec == specs[3] and rec.schedule_id == 3
    assert rec.spec.start_at.ToNanoseconds() == round((T0 + 30.25) * 1e9)
    light = await store.get_many([3], light=True)
    assert light[3].restarted_from == 7 and light[3].state == WAITING
    page = await store.list_page(states=[WAITING], labels={}, limit=10, before_id=None, ids=[4])
    assert [t.id for t in page.terminal] == [3] and page.by_id[4].schedule_id == 3
    assert [t.id for t in await store.list(states=[SCHEDULED])] == [4]
    # the hot path is unchanged: no deps, default state, nothing in the new columns
    plain = await store.queue_add([spec("p")], now=T0)
    assert raw(db, "SELECT state, start_at, restarted_from, schedule_id FROM tasks WHERE id = ?",
               (plain[0],)) == [(Q, None, 0, 0)]  # fmt: skip


async def test_deps_resolve_within_each_call(store: Store, db: Path) -> None:
    (first,) = await store.add([spec("first")], now=T0)
    # Queued together: the writer merges them into one insert, each resolving its own -(k+1).
    a = store.queue_add(
        [spec("a0"), spec("a1"), spec("a2")], now=T0, states=[Q, WAITING, WAITING],
        deps=[None, [-1, first], [-1, -2, -1]],
    )  # fmt: skip
    b = store.queue_add([spec("b0"), spec("b1")], now=T0, states=[Q, WAITING], deps=[[], [-1]])
    c = store.queue_add([spec("c0")], now=T0, deps=[[first]])
    ids_a, ids_b, ids_c = await asyncio.gather(a, b, c)
    assert ids_a == [2, 3, 4] and ids_b == [5, 6] and ids_c == [7]
    assert await store.deps_of(range(1, 9)) == {3: [1, 2], 4: [2, 3], 6: [5], 7: [1]}
    assert raw(db, "SELECT count(*) FROM deps") == [(6,)]
    assert await store.states_of([1, 3, 6, 99]) == {1: Q, 3: WAITING, 6: WAITING}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deps": [[-1]]}, "deps\\[0\\]"),  # itself
        ({"deps": [[-2]]}, "deps\\[0\\]"),  # past the call
        ({"deps": [[0]]}, "deps\\[0\\]"),
        ({"deps": [[2**63]]}, "deps\\[0\\]"),
        ({"deps": [None, None]}, "deps: must have one item per spec"),
        ({"states": [R]}, "states"),
        ({"states": [OK]}, "states"),
        ({"restarted_from": [1, 2]}, "restarted_from"),
        ({"restarted_from": [-1]}, "restarted_from"),
        ({"schedule_next_at": 5.0}, "schedule_next_at"),
    ],
)
async def test_queue_add_refuses_bad_arguments(
    store: Store, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.queue_add([spec()], now=T0, **kwargs)  # type: ignore[arg-type]
    assert await store.last_id() == 0


async def test_repeated_deps_are_stored_once(store: Store) -> None:
    await store.add([spec()], now=T0)
    await store.queue_add([spec(), spec()], now=T0, deps=[[1, 1], [-1, 1, -1]])
    assert await store.deps_of([2, 3]) == {2: [1], 3: [1, 2]}


async def test_10000_chain_and_fan_in_in_one_call(store: Store, db: Path) -> None:
    n = 10_000
    chain = [spec("c", str(i)) for i in range(n)]
    t0 = time.perf_counter()
    ids = await store.queue_add(
        chain, now=T0, states=[Q] + [WAITING] * (n - 1), deps=[None] + [[-i] for i in range(1, n)]
    )
    chain_s = time.perf_counter() - t0
    assert ids == list(range(1, n + 1))
    fan = [spec("f", str(i)) for i in range(n)] + [spec("join")]
    t0 = time.perf_counter()
    fan_ids = await store.queue_add(
        fan, now=T0, states=[Q] * n + [WAITING], deps=[None] * n + [[-(k + 1) for k in range(n)]]
    )
    fan_s = time.perf_counter() - t0
    join = fan_ids[-1]
    assert join == 2 * n + 1
    t0 = time.perf_counter()
    chain_deps = await store.deps_of(ids)
    fan_deps = await store.deps_of([join])
    states = await store.states_of([*ids, *fan_ids])
    read_s = time.perf_counter() - t0
    assert len(chain_deps) == n - 1 and all(chain_deps[i] == [i - 1] for i in ids[1:])
    assert fan_deps == {join: list(range(n + 1, 2 * n + 1))}
    assert len(states) == 2 * n + 1 and sum(s == WAITING for s in states.values()) == n
    assert raw(db, "SELECT count(*) FROM deps") == [(2 * n - 1,)]
    waiting = await store.dependents_waiting([*ids, *fan_ids])
    assert waiting == set(ids[:-1]) | set(fan_ids[:-1])
    print(f"chain {chain_s:.3f} s, fan-in {fan_s:.3f} s, reads {read_s:.3f} s")
    assert chain_s < 2 and fan_s < 2 and read_s < 2  # linear: each well under 0.5 s here


# ---- set_state, Edit, Restart --------------------------------------------------------------


async def test_set_state(store: Store, db: Path) -> None:
    ids = await store.queue_add(
        [spec(), spec(), spec(), spec(), spec(), at(T0 + 9)],
        now=T0, states=[WAITING, SCHEDULED, STASHED, Q, Q, SCHEDULED],
    )  # fmt: skip
    w, sch, st, run, done, sch2 = ids
    await store.enqueue([st], enqueue_at=T0 + 60)
    store.mark_started(run, attempt=1, pid=1, worker=1, started_at=T0)
    await store.mark_finished(done, state=OK, ended_at=T0)
    assert await store.set_state([w, sch, run, done, 999], Q) == 2  # not the running, finished
    assert await store.set_state([w, sch], Q) == 0  # already there
    assert await store.set_state([st], WAITING) == 1
    assert raw(db, "SELECT state, enqueue_at FROM tasks WHERE id = ?", (st,)) == [(WAITING, None)]
    assert await store.set_state([sch2], WAITING, start_at=None) == 1
    assert await store.set_state([w], SCHEDULED, start_at=T0 + 5) == 1
    assert await store.set_state([w], SCHEDULED, start_at=T0 + 5) == 0
    assert await store.set_state([w], SCHEDULED, start_at=T0 + 6) == 1  # a new time is a change
    got = {u.id: (u.state, u.start_at) for u in await store.unfinished()}
    assert got == {w: (SCHEDULED, T0 + 6), sch: (Q, None), st: (WAITING, None), run: (R, None),
                   sch2: (WAITING, None)}  # fmt: skip
    assert await store.set_state([], Q) == 0
    for bad in (R, OK, pb.TASK_STATE_PAUSED):
        with pytest.raises(ValueError, match="state"):
            store.set_state([w], bad)


async def test_replace_spec(store: Store, db: Path) -> None:
    shared = {"SHARED": "1"}
    ids = await store.queue_add(
        [spec("a", labels={"k": "old"}, stdin=b"old"), spec("b"), spec("c")],
        now=T0, env=shared, states=[WAITING, Q, Q],
    )  # fmt: skip
    a, b, c = ids
    store.mark_started(c, attempt=1, pid=1, worker=1, started_at=T0)
    assert raw(db, "SELECT count(*) FROM envs") == [(1,)]
    new = spec("a2", env={"OWN": "2"}, labels={"k": "new", "x": "y"}, priority=pb.PRIORITY_HIGH,
               once=True, max_retries=4, on_finish="echo done")  # fmt: skip
    assert await store.replace_spec(a, new) is True
    got = await store.get(a)
    assert got is not None and got.spec == new and got.state == WAITING and got.queued_at.seconds
    assert raw(db, "SELECT priority, once, max_retries FROM tasks WHERE id = ?", (a,)) == [
        (pb.PRIORITY_HIGH, 1, 4)
    ]
    assert raw(db, "SELECT count(*) FROM stdins") == [(0,)]
    assert [t.id for t in await store.list(labels={"k": "new"})] == [a]
    assert await store.list(labels={"k": "old"}) == []
    assert raw(db, "SELECT count(*) FROM envs") == [(2,)]  # the shared one is still b's
    # back to the shared env (given as queue_add takes it): the own env goes, unused
    assert await store.replace_spec(a, spec("a3", stdin=b"new"), env=shared) is True
    assert (await store.full_specs([a]))[a] == spec("a3", stdin=b"new", env=shared)
    assert raw(db, "SELECT count(*) FROM envs") == [(1,)]
    assert await store.replace_spec(c, spec("no")) is False  # running
    await store.mark_finished(b, state=OK, ended_at=T0)
    assert await store.replace_spec(b, spec("no")) is False  # finished
    assert await store.replace_spec(999, spec("no")) is False
    assert await store.replace_spec(0, spec("no")) is False
    assert list((await store.full_specs([b]))[b].argv) == ["b"]


async def test_full_specs_and_failed_ids(store: Store) -> None:
    env = {"E": "v"}
    full = spec("x", env=env, stdin=b"\x00in", labels={"a": "b"}, on_finish="true", group="g")
    ids = await store.add([full, spec("shared"), spec("f1"), spec("f2"), spec("ok")], now=T0,
                          env={"S": "1"})  # fmt: skip
    for i, state in zip(ids, [FAIL, OK, FAIL, CANCELLED, FAIL], strict=True):
        await store.mark_finished(i, state=state, ended_at=T0)
    got = await store.full_specs([*ids, 999, 0])
    assert sorted(got) == ids and got[ids[0]] == full
    assert dict(got[ids[1]].env) == {"S": "1"}
    assert await store.full_specs([]) == {}
    assert await store.failed_ids(10) == [ids[0], ids[2], ids[4]]
    assert await store.failed_ids(2) == [ids[0], ids[2]]


# ---- schedules -------------------------------------------------------------------------------


async def test_schedules(store: Store, db: Path) -> None:
    task = spec("backup", env={"A": "1"}, stdin=b"x", labels={"k": "v"})
    first = await store.add_schedule(task, every=60.0, cron="", overlap=False, next_at=T0 + 60,
                                     now=T0)  # fmt: skip
    second = await store.add_schedule(spec("cron"), every=None, cron="*/5 * * * *", overlap=True,
                                      next_at=T0 + 300, now=T0, env={"SHARED": "1"})  # fmt: skip
    assert (first, second) == (1, 2)
    rows = await store.schedules()
    assert rows[0] == ScheduleRow(1, task, {}, 60.0, "", False, T0 + 60, 0, 0, 0, T0)
    assert rows[1] == ScheduleRow(2, spec("cron"), {"SHARED": "1"}, None, "*/5 * * * *", True,
                                  T0 + 300, 0, 0, 0, T0)  # fmt: skip
    # An occurrence: its task and the schedule's count, in one transaction.
    ids = await store.queue_add([task], now=T0 + 60, schedule_id=first, schedule_next_at=T0 + 120)
    assert (await store.get(ids[0])).schedule_id == first  # type: ignore[union-attr]
    assert await store.update_schedule(first, next_at=T0 + 180, skipped_inc=1) is True
    assert await store.update_schedule(second, next_at=T0 + 600, last_task=ids[0],
                                       submitted_inc=2) is True  # fmt: skip
    got = {r.id: (r.next_at, r.last_task, r.submitted, r.skipped) for r in await store.schedules()}
    assert got == {1: (T0 + 180, ids[0], 1, 1), 2: (T0 + 600, ids[0], 2, 0)}
    assert await store.update_schedule(99, next_at=T0) is False
    assert await store.delete_schedule(first) is True
    assert await store.delete_schedule(first) is False
    assert await store.delete_schedule(0) is False
    assert [r.id for r in await store.schedules()] == [2]
    assert await store.get(ids[0]) is not None  # its tasks stay
    third = await store.add_schedule(spec(), every=1.0, cron="", overlap=False, next_at=T0, now=T0)
    assert third == 3  # never reused
    for every, cron in ((None, ""), (60.0, "* * * * *"), (0.0, ""), (-1.0, "")):
        with pytest.raises(ValueError):
            store.add_schedule(spec(), every=every, cron=cron, overlap=False, next_at=T0, now=T0)


# ---- retention keeps what waiting tasks need -------------------------------------------------


async def test_retention_keeps_dependencies_of_waiting_tasks(
    store: Store, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "DELETE_CHUNK", 2)  # protected ones fill whole chunks
    deps = await store.add([spec(str(i)) for i in range(6)], now=T0)
    for i in deps:
        await store.mark_finished(i, state=OK, ended_at=T0)
    # 7 waits on 1..4; 8 (scheduled) on 5; 9 is queued (its deps were met) on 6: not kept
    waiters = await store.queue_add(
        [spec("w"), spec("s"), spec("q")], now=T0, states=[WAITING, SCHEDULED, Q],
        deps=[deps[:4], [deps[4]], [deps[5]]],
    )  # fmt: skip
    assert await store.dependents_waiting([*deps, *waiters, 99]) == set(deps[:5])
    assert await store.remove(deps) == 1  # only 6
    assert await store.prune(keep_finished=0, keep_for=None, now=T0) == 0
    assert await store.clean(now=T0 + 100) == 0
    assert await store.clean(older_than=10, now=T0 + 100) == 0
    kept = sorted(int(r[0]) for r in raw(db, "SELECT id FROM tasks"))  # type: ignore[call-overload]
    assert kept == [*deps[:5], *waiters]
    # Once 7 is queued and 8 cancelled, nothing holds them.
    assert await store.set_state([waiters[0]], Q) == 1
    await store.mark_finished_many([waiters[1]], state=CANCELLED, ended_at=T0, error="x")
    assert await store.dependents_waiting(deps) == set()
    assert await store.clean(now=T0 + 100) == 6  # 1..5 and 8
    assert raw(db, "SELECT task_id, dep_id FROM deps ORDER BY 1") == [
        (waiters[0], d) for d in deps[:4]
    ] + [(waiters[2], deps[5])]  # the deleted task's own deps rows went with it
    await store.mark_finished(waiters[0], state=OK, ended_at=T0)
    assert await store.remove([waiters[0]]) == 1
    assert raw(db, "SELECT task_id, dep_id FROM deps") == [(waiters[2], deps[5])]


async def test_discard_drops_deps(store: Store, db: Path) -> None:
    ids = await store.queue_add([spec(), spec()], now=T0, states=[Q, WAITING], deps=[None, [-1]])
    await store.discard(ids)
    assert raw(db, "SELECT count(*) FROM deps") == [(0,)]


# ---- durability across kill -9 ---------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from tasker.v1 import tasker_pb2 as pb
    from taskerd.store import Store

    async def main():
        s = await Store.open(Path(sys.argv[1]))
        specs = [pb.TaskSpec(argv=[a]) for a in "abc"]
        ids = await s.queue_add(specs, now=1.0, states=[1, 10, 10], deps=[None, [-1], [-1, -2]],
                                restarted_from=[0, 0, 42])
        sid = await s.add_schedule(pb.TaskSpec(argv=["s"]), every=60.0, cron="", overlap=False,
                                   next_at=2.0, now=1.0)
        occ = await s.queue_add([pb.TaskSpec(argv=["s"])], now=2.0, schedule_id=sid,
                                schedule_next_at=62.0)
        changed = await s.set_state([ids[1]], 11, start_at=100.0)
        edited = await s.replace_spec(ids[2], pb.TaskSpec(argv=["c2"], stdin=b"in"))
        assert changed == 1 and edited
        print(" ".join(map(str, [*ids, sid, *occ])), flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def test_workflow_writes_survive_sigkill(db: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, cwd=ROOT, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, f"child exited {child.poll()}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    a, b, c, sid, occ = map(int, line.split())

    async def check() -> None:
        s = await Store.open(db)
        try:
            got = {u.id: u for u in await s.unfinished()}
            assert got[b].state == SCHEDULED and got[b].start_at == 100.0
            assert got[c].state == WAITING and got[c].restarted_from == 42
            assert got[occ].schedule_id == sid
            assert await s.deps_of([a, b, c]) == {b: [a], c: [a, b]}
            assert (await s.full_specs([c]))[c] == pb.TaskSpec(argv=["c2"], stdin=b"in")
            (row,) = await s.schedules()
            assert (row.id, row.next_at, row.last_task, row.submitted) == (sid, 62.0, occ, 1)
        finally:
            await s.close()

    asyncio.run(check())
